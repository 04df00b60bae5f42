r"""The LR-annealing scaling law: predict a loss curve from its learning-rate schedule.

Tissue et al. (2024) model the loss after s steps of a schedule eta_1, eta_2, ... as

.. math::
  L(s) = L_0 + A\, S_1(s)^{-\alpha} - C\, S_2(s), \qquad
  S_1(s) = \sum_{i \le s} \eta_i, \qquad S_2(s) = \sum_{i \le s} m_i, \qquad
  m_i = \lambda\, m_{i-1} + (\eta_{i-1} - \eta_i)

with m_0 = 0 and lambda ~ 0.999: S_1 is the "forward area" (how far the parameters have
travelled) and S_2 the "annealing area", a momentum of the LR decrements that credits a
decay with a delayed loss drop. Fitting (L0, A, alpha, C) on one or two runs (say
constant and cosine) predicts the curve of any other schedule, e.g. to pick a WSD decay
length without running it.

Indexing: ``lrs[i]`` is the LR of step i (0-based), and the loss "at step s" is predicted
from ``S1[s] = sum(lrs[:s + 1])`` and ``S2[s]``, as in the authors' code. Following the
paper (its Sec. 3.4), the LRs of the warmup steps may be replaced by the peak LR before
computing the areas (``warmup_steps=...``); this also avoids S_1 = 0 at step 0 when the
warmup starts from zero.

This is offline analysis code: NumPy/SciPy in float64 (the areas are a linear filter,
``scipy.signal.lfilter``, not a Python loop), fitted with L-BFGS-B.

References:
  Tissue et al., "Scaling Law with Learning Rate Annealing", 2024.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from reweight._checks import check_int

# scipy (about 0.7 s to import) is imported inside `areas` and `fit`, on first use, so that
# ``import reweight`` does not pay for it.


class AnnealingLawParams(NamedTuple):
  """Parameters of L(s) = L0 + A * S1^-alpha - C * S2."""
  L0: float
  A: float
  alpha: float
  C: float


def _lrs_array(lrs, warmup_steps: int) -> np.ndarray:
  eta = np.array(lrs, dtype=np.float64)
  if eta.ndim != 1 or eta.shape[0] == 0:
    raise ValueError(f"lrs must be a non-empty 1-D sequence, got shape {eta.shape}")
  if not np.all(np.isfinite(eta)) or np.any(eta < 0):
    raise ValueError("lrs must be finite and non-negative")
  warmup_steps = check_int("warmup_steps", warmup_steps, 0)
  if warmup_steps:
    eta[:warmup_steps] = eta.max()
  return eta


def areas(lrs, lam: float = 0.999, warmup_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
  r"""The forward area S1 and the annealing area S2 of a schedule, at every step.

  S1[s] = sum_{i<=s} eta_i; m_0 = 0, m_i = lam m_{i-1} + (eta_{i-1} - eta_i);
  S2[s] = sum_{i<=s} m_i. m is computed as one linear filter (``scipy.signal.lfilter``).

  Args:
    lrs: the per-step learning rates, shape [T].
    lam: the decay factor lambda of the annealing momentum, in [0, 1).
    warmup_steps: if > 0, ``lrs[:warmup_steps]`` are replaced by ``max(lrs)`` (the paper
      treats the warmup as if it ran at the peak LR).

  Returns:
    ``(S1, S2)``, two float64 arrays of shape [T].

  Examples:
    >>> from reweight import annealing_law
    >>> s1, s2 = annealing_law.areas([1.0, 1.0, 0.5, 0.5], lam=0.5)
    >>> s1.tolist(), s2.tolist()
    ([1.0, 2.0, 2.5, 3.0], [0.0, 0.0, 0.5, 0.75])
  """
  if not 0.0 <= lam < 1.0:
    raise ValueError(f"lam={lam!r} must be in [0, 1)")
  import scipy.signal  # deferred: see the imports at the top

  eta = _lrs_array(lrs, warmup_steps)
  d = np.zeros_like(eta)
  d[1:] = eta[:-1] - eta[1:]
  m = scipy.signal.lfilter([1.0], [1.0, -lam], d)
  return np.cumsum(eta), np.cumsum(m)


def _curves(steps, losses, lrs):
  """Normalizes (steps, losses, lrs) to lists of per-run arrays."""
  multi = isinstance(lrs, (list, tuple)) and len(lrs) > 0 and np.ndim(lrs[0]) == 1
  if not multi:
    return [steps], [losses], [lrs]
  if not (isinstance(steps, (list, tuple)) and isinstance(losses, (list, tuple))
          and len(steps) == len(lrs) == len(losses)):
    raise ValueError(
        "with several runs, steps, losses and lrs must be sequences of the same length "
        f"(got {type(steps).__name__}, {type(losses).__name__}, {len(lrs)} schedules)")
  return list(steps), list(losses), list(lrs)


def _huber(r, delta):
  a = np.abs(r)
  return np.where(a < delta, 0.5 * r * r, delta * a - 0.5 * delta * delta)


def _huber_grad(r, delta):
  return np.clip(r, -delta, delta)


def fit(steps, losses, lrs, lam: float = 0.999, warmup_steps: int = 0,
        huber_delta: float = 1e-3) -> AnnealingLawParams:
  r"""Fits (L0, A, alpha, C) of the LR-annealing law to observed losses.

  Minimizes sum_k Huber_delta(log L_hat(s_k) - log L(s_k)) over all observations (of
  all runs) with L-BFGS-B under L0, A, alpha, C >= 0, from a grid of starting points
  (best final objective wins). Internally S1 and S2 are rescaled to max 1 for
  conditioning, and A is solved by least squares for each starting (L0, alpha, C).

  Args:
    steps: integer indices into ``lrs`` at which the losses were measured, shape [K];
      or a sequence of such arrays, one per run.
    losses: the observed losses, shape [K] (positive); or one array per run.
    lrs: the per-step learning rates of the run, shape [T]; or one array per run.
    lam: lambda of the annealing momentum.
    warmup_steps: as in `areas` (same for every run).
    huber_delta: delta of the Huber loss on log-losses (1e-3 as in the paper).

  Returns:
    The fitted `AnnealingLawParams` (floats).

  Examples:
    >>> import numpy as np
    >>> from reweight import annealing_law
    >>> lrs = np.concatenate([np.full(600, 1e-3), np.linspace(1e-3, 0, 400)])
    >>> true = annealing_law.AnnealingLawParams(L0=2.0, A=0.3, alpha=0.5, C=0.5)
    >>> steps = np.arange(20, 1000, 20)
    >>> losses = annealing_law.predict(true, lrs, steps)
    >>> fitted = annealing_law.fit(steps, losses, lrs)
    >>> np.allclose(fitted, true, rtol=1e-2)
    True

  References:
    Tissue et al., "Scaling Law with Learning Rate Annealing", 2024.
  """
  if huber_delta <= 0:
    raise ValueError(f"huber_delta={huber_delta!r} must be > 0")
  import scipy.optimize  # deferred: see the imports at the top

  steps_l, losses_l, lrs_l = _curves(steps, losses, lrs)
  s1_all, s2_all, y_all = [], [], []
  for st, lo, lr in zip(steps_l, losses_l, lrs_l, strict=True):
    s1, s2 = areas(lr, lam, warmup_steps)
    st = np.asarray(st)
    lo = np.asarray(lo, np.float64)
    if st.ndim != 1 or lo.shape != st.shape:
      raise ValueError(f"steps {st.shape} and losses {lo.shape} must be 1-D of equal length")
    if not np.issubdtype(st.dtype, np.integer) or st.min() < 0 or st.max() >= len(s1):
      raise ValueError(f"steps must be integer indices into lrs (in [0, {len(s1) - 1}])")
    if not np.all(np.isfinite(lo)) or np.any(lo <= 0):
      raise ValueError("losses must be finite and positive")
    if np.any(s1[st] <= 0):
      raise ValueError(
          "S1 is 0 at some fitted step (the LR is 0 up to there); drop those steps or "
          "pass warmup_steps")
    s1_all.append(s1[st])
    s2_all.append(s2[st])
    y_all.append(lo)
  s1 = np.concatenate(s1_all)
  s2 = np.concatenate(s2_all)
  y = np.concatenate(y_all)
  if y.size < 4:
    raise ValueError(f"need at least 4 observations to fit 4 parameters, got {y.size}")

  s1_scale = float(s1.max())
  s2_scale = float(np.abs(s2).max()) or 1.0
  x1 = s1 / s1_scale
  x2 = s2 / s2_scale
  log_x1 = np.log(x1)
  log_y = np.log(y)
  norm = 1.0 / (y.size * huber_delta**2)
  eps = 1e-12

  def objective(theta):
    l0, a, alpha, c = theta
    pw = np.exp(-alpha * log_x1)
    pred = l0 + a * pw - c * x2
    safe = np.maximum(pred, eps)
    log_pred = np.where(pred > eps, np.log(safe), np.log(eps) + (pred - eps) / eps)
    dlog = np.where(pred > eps, 1.0 / safe, 1.0 / eps)
    r = log_pred - log_y
    g = _huber_grad(r, huber_delta) * dlog
    grad = np.array([g.sum(), (g * pw).sum(), (g * (-a * pw * log_x1)).sum(),
                     (g * -x2).sum()])
    return norm * _huber(r, huber_delta).sum(), norm * grad

  y_min, y_range = float(y.min()), float(np.ptp(y))
  best = None
  for f0, alpha0, fc in itertools.product((0.0, 0.5, 0.9), (0.2, 0.5, 1.0), (0.0, 0.5)):
    l0 = f0 * y_min
    c = fc * y_range
    basis = x1 ** -alpha0
    target = y - l0 + c * x2
    a = max(float(basis @ target / (basis @ basis)), 1e-6)
    res = scipy.optimize.minimize(
        objective, np.array([l0, a, alpha0, c]), jac=True, method="L-BFGS-B",
        bounds=[(0, None), (0, None), (0, None), (0, None)],
        options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-12})
    if best is None or res.fun < best.fun:
      best = res
  l0, a, alpha, c = (float(v) for v in best.x)
  return AnnealingLawParams(L0=l0, A=a * s1_scale**alpha, alpha=alpha, C=c / s2_scale)


def predict(params: AnnealingLawParams | Sequence[float], lrs, steps=None,
            lam: float = 0.999, warmup_steps: int = 0) -> np.ndarray:
  r"""Predicted loss L(s) = L0 + A S1(s)^-alpha - C S2(s) for the schedule ``lrs``.

  Args:
    params: `AnnealingLawParams` (or a 4-sequence in the order L0, A, alpha, C).
    lrs: the per-step learning rates, shape [T].
    steps: integer indices into ``lrs`` to predict at (all T steps if None).
    lam: lambda of the annealing momentum.
    warmup_steps: as in `areas`.

  Returns:
    A float64 array of predicted losses (``inf`` where S1 = 0).

  Examples:
    >>> from reweight import annealing_law
    >>> p = annealing_law.AnnealingLawParams(L0=1.0, A=1.0, alpha=1.0, C=0.0)
    >>> annealing_law.predict(p, [0.5, 0.5, 1.0]).tolist()
    [3.0, 2.0, 1.5]
  """
  l0, a, alpha, c = (float(v) for v in params)
  s1, s2 = areas(lrs, lam, warmup_steps)
  if steps is not None:
    steps = np.asarray(steps)
    s1, s2 = s1[steps], s2[steps]
  with np.errstate(divide="ignore"):
    return l0 + a * np.power(s1, -alpha) - c * s2


__all__ = ["AnnealingLawParams", "areas", "fit", "predict"]
