"""Learning-rate schedules as plain ``step -> value`` functions (``optax.Schedule``).

Every function here returns a schedule: a pure function of the (possibly traced) integer
step built from `jax.numpy` operations, with no Python branching on the step. It can be
passed wherever optax takes a schedule (``optax.adamw(learning_rate=wsd(...))``), used
under `jax.jit`, and evaluated on a vector of steps at once (``schedule(jnp.arange(T))``).
LR, weight-decay and curriculum-pacing schedules are the same kind of object.

Conventions: the value at ``step`` is the learning rate of the update that turns the
parameters after ``step`` updates into the parameters after ``step + 1``. A schedule that
"ends at ``total_steps``" reaches its final value at ``step == total_steps`` and holds it
afterwards, like `optax.linear_schedule`. Every schedule takes its top value as ``peak`` and
every other level as a fraction of it, ``*_ratio`` (``init_ratio``, ``const_ratio``,
``final_ratio``).

Schedules:

* `wsd`: warmup-stable-decay with the decay shapes of Hägele et al. (2024).
* `wsd_s` / `wsd_s_boundaries`: WSD-S, several budgets in one run (Wen et al., 2024).
* `cyclic_cosine`: cosine cycles with re-warmup from zero.
* `infinite`: the infinite schedule of Ibrahim et al. (2024).
* `rewarm`: re-warming then re-decaying for continual training (Ibrahim et al., 2024).
* `linear_decay`, `moderate_decay`: full and moderate decays (Luo et al., 2025).
* `refined`: a schedule refined from a previous run's gradient norms (Defazio et al., 2023).

The LR-annealing scaling law of Tissue et al. (2024) lives in `reweight.annealing_law`
and is importable from here as ``from reweight.schedules import annealing_law``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import jax.numpy as jnp
import numpy as np

from reweight import annealing_law  # noqa: F401  (re-exported: `schedules.annealing_law`)
from reweight._checks import check_choice, check_int

# scipy.ndimage is imported inside `refined_values`, on first use, so that
# ``import reweight`` does not pay for scipy.

Schedule = Callable[..., jnp.ndarray]

DecayShape = Literal["linear", "cosine", "1-sqrt", "square", "exp", "inverse"]
DECAY_SHAPES = get_args(DecayShape)
Cooldown = Literal["cosine", "inv_sqrt"]
_COOLDOWNS = get_args(Cooldown)
Norm = Literal["l2", "l1"]
_NORMS = get_args(Norm)


# ----------------------------------------------------------------------------------------
# Validation helpers.


def _check_float(name: str, value, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}={value!r} must be a real number") from None
  if not math.isfinite(value):
    raise ValueError(f"{name}={value!r} must be finite")
  if lo is not None and (value < lo or (lo_open and value == lo)):
    bound = f"> {lo}" if lo_open else f">= {lo}"
    raise ValueError(f"{name}={value!r} must be {bound}")
  if hi is not None and value > hi:
    raise ValueError(f"{name}={value!r} must be <= {hi}")
  return value


def _as_time(step) -> jnp.ndarray:
  return jnp.asarray(step).astype(jnp.float32)


# ----------------------------------------------------------------------------------------
# Decay shapes.


def _decay_multiplier(shape: str, final_ratio: float) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """m(p) for p in [0, 1], with m(0) = 1 and m(1) = final_ratio."""
  check_choice("shape", shape, DECAY_SHAPES)
  r = final_ratio
  if shape in ("exp", "inverse") and r <= 0:
    raise ValueError(
        f"final_ratio={final_ratio!r} must be > 0 for shape={shape!r} (its decay is "
        f"r**p or 1/(1+(1/r-1)p), which needs r > 0); use another shape to decay to zero")
  if shape == "linear":
    return lambda p: r + (1 - r) * (1 - p)
  if shape == "cosine":
    return lambda p: r + (1 - r) * 0.5 * (1 + jnp.cos(jnp.pi * p))
  if shape == "1-sqrt":
    return lambda p: r + (1 - r) * (1 - jnp.sqrt(p))
  if shape == "square":
    return lambda p: r + (1 - r) * (1 - p * p)
  if shape == "exp":
    log_r = math.log(r)
    return lambda p: jnp.exp(p * log_r)
  # inverse
  return lambda p: 1 / (1 + (1 / r - 1) * p)


# ----------------------------------------------------------------------------------------
# WSD.


def wsd(peak: float, total_steps: int, warmup_steps: int = 0,
        decay_fraction: float | None = None, decay_steps: int | None = None,
        shape: DecayShape = "linear", final_ratio: float = 0.0,
        init_ratio: float = 0.0) -> Schedule:
  r"""Warmup-stable-decay: linear warmup, constant at ``peak``, decay at the end.

  With W = ``warmup_steps``, T = ``total_steps``, D the decay length, r = ``final_ratio``
  and p = clip((t - (T - D)) / D, 0, 1):

  .. math::
    \eta_t = \begin{cases}
      \eta_{peak}\,(i + (1 - i)\, t / W) & t < W \\
      \eta_{peak}\, m(p) & t \ge W
    \end{cases}

  where i = ``init_ratio`` and the decay multiplier m (m(0) = 1, m(1) = r) is

  * ``"linear"``: r + (1 - r)(1 - p)
  * ``"cosine"``: r + (1 - r)(1 + cos(pi p)) / 2
  * ``"1-sqrt"``: r + (1 - r)(1 - sqrt(p))
  * ``"square"``: r + (1 - r)(1 - p^2)
  * ``"exp"``: r^p (geometric interpolation; needs r > 0)
  * ``"inverse"``: 1 / (1 + (1/r - 1) p) (needs r > 0)

  For ``"exp"`` and ``"inverse"`` the shape phi(p) already ends at r, so m = phi itself
  (not r + (1 - r) phi); every shape therefore ends exactly at ``peak * final_ratio`` at
  ``step == total_steps`` and holds it afterwards. Between W and T - D the value is
  ``peak`` (p = 0 there).

  Args:
    peak: the stable learning rate.
    total_steps: T, the step at which the decay ends.
    warmup_steps: W, linear warmup length (0 for none).
    decay_fraction: D as a fraction of ``total_steps`` (rounded to an integer number of
      steps). Exactly one of ``decay_fraction`` and ``decay_steps`` must be given.
    decay_steps: D in steps.
    shape: one of ``"linear"``, ``"cosine"``, ``"1-sqrt"``, ``"square"``, ``"exp"``,
      ``"inverse"``.
    final_ratio: r, the final value as a fraction of ``peak``.
    init_ratio: the value at step 0 as a fraction of ``peak`` (warmup start).

  Returns:
    A schedule ``step -> learning rate`` (float32).

  Raises:
    ValueError: on an unknown shape, negative steps, both or neither of
      ``decay_fraction`` / ``decay_steps``, ``warmup_steps + decay > total_steps``, or a
      ratio out of [0, 1].

  Examples:
    >>> from reweight import schedules
    >>> s = schedules.wsd(1.0, total_steps=100, warmup_steps=10, decay_fraction=0.2)
    >>> [round(float(s(t)), 3) for t in (0, 5, 10, 50, 80, 90, 100)]
    [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]

  References:
    Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with Scalable
    Training Strategies", 2024. Hägele et al., "Scaling Laws and Compute-Optimal Training
    Beyond Fixed Training Durations", NeurIPS 2024 (the 1-sqrt cooldown).
  """
  peak = _check_float("peak", peak, lo=0.0)
  total_steps = check_int("total_steps", total_steps, minimum=1)
  warmup_steps = check_int("warmup_steps", warmup_steps)
  final_ratio = _check_float("final_ratio", final_ratio, lo=0.0, hi=1.0)
  init_ratio = _check_float("init_ratio", init_ratio, lo=0.0, hi=1.0)
  if (decay_fraction is None) == (decay_steps is None):
    raise ValueError(
        f"exactly one of decay_fraction={decay_fraction!r} and decay_steps={decay_steps!r} "
        f"must be given")
  if decay_fraction is not None:
    decay_fraction = _check_float("decay_fraction", decay_fraction, lo=0.0, hi=1.0)
    decay_steps = int(round(decay_fraction * total_steps))
  decay_steps = check_int("decay_steps", decay_steps)
  if warmup_steps + decay_steps > total_steps:
    raise ValueError(
        f"warmup_steps={warmup_steps} + decay steps={decay_steps} exceeds "
        f"total_steps={total_steps}")
  multiplier = _decay_multiplier(shape, final_ratio)
  decay_start = total_steps - decay_steps

  def schedule(step):
    t = _as_time(step)
    warm = init_ratio + (1 - init_ratio) * t / max(warmup_steps, 1)
    if decay_steps > 0:
      p = jnp.clip((t - decay_start) / decay_steps, 0.0, 1.0)
      rest = multiplier(p)
    else:
      rest = jnp.ones_like(t)
    return peak * jnp.where(t < warmup_steps, warm, rest)

  return schedule


def wsd_s_boundaries(budgets: Sequence[int], decay_fraction: float = 0.1
                     ) -> list[tuple[int, int]]:
  r"""Decay windows ``[(start_k, end_k), ...]`` of a WSD-S run over ``budgets``.

  With D_k = round(f B_k) (f = ``decay_fraction``), the decay for budget k starts at

  .. math::  s_k = B_k - D_k + \sum_{j<k} D_j \quad(= 0.9 B_k + \sum_{j<k} 0.1 B_j
     \text{ for } f = 0.1)

  and ends at e_k = s_k + D_k: each budget gets B_k steps at "stable + its own decay"
  plus the decays of the earlier budgets, which are spent on top of the stable phase.

  Args:
    budgets: strictly increasing positive step budgets B_1 < B_2 < ...
    decay_fraction: f, the decay length as a fraction of each budget.

  Returns:
    A list of ``(start, end)`` integer pairs, one per budget.

  Examples:
    >>> from reweight import schedules
    >>> schedules.wsd_s_boundaries([12500, 25000, 50000])
    [(11250, 12500), (23750, 26250), (48750, 53750)]

  References:
    Wen et al., "Understanding Warmup-Stable-Decay Learning Rates: A River Valley Loss
    Landscape Perspective", 2024.
  """
  decay_fraction = _check_float("decay_fraction", decay_fraction, lo=0.0, hi=1.0,
                                lo_open=True)
  if len(budgets) == 0:
    raise ValueError(f"budgets={budgets!r} must be a non-empty increasing sequence")
  budgets = [check_int(f"budgets[{k}]", b, minimum=1) for k, b in enumerate(budgets)]
  for k in range(1, len(budgets)):
    if budgets[k] <= budgets[k - 1]:
      raise ValueError(f"budgets={budgets!r} must be strictly increasing")
  out = []
  spent = 0  # sum of earlier decay lengths
  for b in budgets:
    d = int(round(decay_fraction * b))
    start = b - d + spent
    out.append((start, start + d))
    spent += d
  return out


def wsd_s(peak: float, budgets: Sequence[int], decay_fraction: float = 0.1,
          final_ratio: float = 0.1, warmup_steps: int = 0,
          shape: DecayShape = "linear") -> Schedule:
  r"""WSD-S: one run that produces a decayed model for each of several budgets.

  The run is stable at ``peak`` except in the windows ``[s_k, e_k)`` of
  `wsd_s_boundaries`, where it decays from ``peak`` to ``final_ratio * peak`` with
  p = (t - s_k) / (e_k - s_k) and the multiplier m(p) of `wsd` (linear by default). At
  ``e_k`` it jumps back to ``peak`` and training continues from the decayed weights; the
  parameters after ``e_k`` updates are the budget-k model. After the last window the
  value stays at ``final_ratio * peak``. An optional linear warmup from 0 runs over the
  first ``warmup_steps`` steps (it must end before the first decay).

  Args:
    peak: the stable learning rate.
    budgets: strictly increasing step budgets.
    decay_fraction: decay length as a fraction of each budget.
    final_ratio: the value at the end of each decay, as a fraction of ``peak``.
    warmup_steps: linear warmup from zero.
    shape: decay shape, as in `wsd`.

  Returns:
    A schedule ``step -> learning rate``.

  Examples:
    >>> from reweight import schedules
    >>> s = schedules.wsd_s(1.0, budgets=[100, 200])
    >>> [round(float(s(t)), 3) for t in (0, 89, 90, 95, 100, 189, 190, 200, 210, 250)]
    [1.0, 1.0, 1.0, 0.55, 1.0, 1.0, 1.0, 0.55, 0.1, 0.1]

  References:
    Wen et al., "Understanding Warmup-Stable-Decay Learning Rates: A River Valley Loss
    Landscape Perspective", 2024.
  """
  peak = _check_float("peak", peak, lo=0.0)
  final_ratio = _check_float("final_ratio", final_ratio, lo=0.0, hi=1.0)
  warmup_steps = check_int("warmup_steps", warmup_steps)
  windows = wsd_s_boundaries(budgets, decay_fraction)
  if warmup_steps > windows[0][0]:
    raise ValueError(
        f"warmup_steps={warmup_steps} must end before the first decay starts at step "
        f"{windows[0][0]}")
  multiplier = _decay_multiplier(shape, final_ratio)
  starts = np.array([s for s, _ in windows], np.float32)
  ends = np.array([e for _, e in windows], np.float32)
  lengths = np.maximum(ends - starts, 1.0)
  last_end = float(ends[-1])

  def schedule(step):
    t = _as_time(step)
    tt = t[..., None]
    inside = (tt >= starts) & (tt < ends)
    p = jnp.clip((tt - starts) / lengths, 0.0, 1.0)
    decayed = jnp.sum(jnp.where(inside, multiplier(p), 0.0), axis=-1)
    mult = jnp.where(jnp.any(inside, axis=-1), decayed, 1.0)
    mult = jnp.where(t >= last_end, final_ratio, mult)
    mult = jnp.where(t < warmup_steps, t / max(warmup_steps, 1), mult)
    return peak * mult

  return schedule


# ----------------------------------------------------------------------------------------
# Cyclic cosine.


def cyclic_cosine(peak: float, cycle_steps: int | Sequence[int], final_ratio: float = 0.1,
                  warmup_steps: int = 0) -> Schedule:
  r"""Cosine cycles: each cycle re-warms from 0 and cosine-decays to ``final_ratio * peak``.

  Within a cycle of length C, at offset tau (W = ``warmup_steps``, r = ``final_ratio``):
  eta = peak tau / W for tau < W, else
  peak (r + (1 - r)(1 + cos(pi (tau - W) / (C - W))) / 2).
  With an integer ``cycle_steps`` the cycles repeat forever; with a sequence of cycle
  lengths (e.g. ``[B_1, B_2 - B_1, B_3 - B_2]`` to end a cycle at each budget) the
  value holds at ``final_ratio * peak`` after the last cycle. With ``warmup_steps=0``
  each cycle restarts directly at ``peak``.

  Args:
    peak: the value at the top of each cycle.
    cycle_steps: the cycle length, or a sequence of cycle lengths.
    final_ratio: the value at the end of each cycle, as a fraction of ``peak``.
    warmup_steps: linear re-warmup from 0 at the start of every cycle.

  Returns:
    A schedule ``step -> learning rate``.

  Examples:
    >>> from reweight import schedules
    >>> s = schedules.cyclic_cosine(1.0, cycle_steps=100, final_ratio=0.0)
    >>> [round(float(s(t)), 3) for t in (0, 50, 99, 100, 150)]
    [1.0, 0.5, 0.0, 1.0, 0.5]

  References:
    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR
    2017. Wen et al., 2024 (cyclic cosine as the WSD-S baseline).
  """
  peak = _check_float("peak", peak, lo=0.0)
  final_ratio = _check_float("final_ratio", final_ratio, lo=0.0, hi=1.0)
  warmup_steps = check_int("warmup_steps", warmup_steps)
  periodic = np.ndim(cycle_steps) == 0
  lengths = [cycle_steps] if periodic else np.asarray(cycle_steps).tolist()
  if not lengths:
    raise ValueError(f"cycle_steps={cycle_steps!r} must be non-empty")
  lengths = [check_int("cycle_steps", c, minimum=1) for c in lengths]
  if warmup_steps >= min(lengths):
    raise ValueError(
        f"warmup_steps={warmup_steps} must be smaller than every cycle length "
        f"(cycle_steps={cycle_steps!r})")

  def cycle_value(tau, length):
    warm = tau / max(warmup_steps, 1)
    p = jnp.clip((tau - warmup_steps) / (length - warmup_steps), 0.0, 1.0)
    cos = final_ratio + (1 - final_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * p))
    return jnp.where(tau < warmup_steps, warm, cos)

  if periodic:
    c = lengths[0]

    def schedule(step):
      tau = jnp.mod(_as_time(step), c)
      return peak * cycle_value(tau, float(c))

    return schedule

  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.float32)
  lens = np.asarray(lengths, np.float32)
  end = float(np.sum(lengths))

  def schedule(step):
    t = _as_time(step)
    k = jnp.clip(jnp.searchsorted(starts, t, side="right") - 1, 0, len(lengths) - 1)
    tau = t - jnp.asarray(starts)[k]
    value = cycle_value(tau, jnp.asarray(lens)[k])
    return peak * jnp.where(t >= end, final_ratio, value)

  return schedule


# ----------------------------------------------------------------------------------------
# Infinite schedule and re-warming.


def infinite(peak: float, warmup_steps: int, cooldown_steps: int, const_ratio: float,
             anneal_start: int, total_steps: int, final_ratio: float,
             cooldown: Cooldown = "cosine", alpha: float = 8.0) -> Schedule:
  r"""The infinite LR schedule: warmup, cooldown to a constant, constant, final annealing.

  With W = ``warmup_steps``, C = ``cooldown_steps``, x = (t - W) / C, eta_max = ``peak``,
  eta_const = ``const_ratio * peak`` and eta_min = ``final_ratio * peak``:

  * t < W: eta_max t / W
  * W <= t < W + C (cooldown to eta_const):
    ``"cosine"``: eta_const + (eta_max - eta_const)(1 + cos(pi x)) / 2;
    ``"inv_sqrt"``: eta_max + (eta_const - eta_max) h(x) / h(1) with
    h(x) = 1 / sqrt(1 + alpha x) - 1, normalized by h(1) so the cooldown lands exactly on
    eta_const at x = 1 whatever ``alpha``;
  * W + C <= t < T_ann: eta_const (the phase a run can stay in indefinitely and resume
    from with new data);
  * T_ann <= t: eta_const (eta_min / eta_const)^((t - T_ann) / (T_end - T_ann)), clipped
    at eta_min after T_end.

  The exponential form of the final annealing is **[unverified]**: it is written from a
  secondary summary of the paper, not checked against the authors' code; likewise the
  default ``alpha=8.0`` is our choice.

  Args:
    peak: eta_max.
    warmup_steps: W.
    cooldown_steps: C.
    const_ratio: eta_const / eta_max, the plateau value as a fraction of ``peak``
      (0 < const_ratio <= 1).
    anneal_start: T_ann, first step of the final annealing (>= W + C).
    total_steps: T_end, where the annealing reaches ``final_ratio * peak``.
    final_ratio: eta_min / eta_max, the final value as a fraction of ``peak``
      (0 < final_ratio <= const_ratio).
    cooldown: ``"cosine"`` or ``"inv_sqrt"``.
    alpha: steepness of the inverse-sqrt cooldown.

  Returns:
    A schedule ``step -> learning rate``.

  Examples:
    >>> from reweight import schedules
    >>> s = schedules.infinite(2.0, warmup_steps=10, cooldown_steps=10, const_ratio=0.5,
    ...                        anneal_start=50, total_steps=60, final_ratio=0.05)
    >>> [round(float(s(t)), 3) for t in (5, 10, 15, 20, 49, 55, 60)]
    [1.0, 2.0, 1.5, 1.0, 1.0, 0.316, 0.1]

  References:
    Ibrahim et al., "Simple and Scalable Strategies to Continually Pre-train Large
    Language Models", TMLR 2024.
  """
  peak = _check_float("peak", peak, lo=0.0, lo_open=True)
  warmup_steps = check_int("warmup_steps", warmup_steps)
  cooldown_steps = check_int("cooldown_steps", cooldown_steps)
  anneal_start = check_int("anneal_start", anneal_start)
  total_steps = check_int("total_steps", total_steps, minimum=1)
  const_ratio = _check_float("const_ratio", const_ratio, lo=0.0, hi=1.0, lo_open=True)
  final_ratio = _check_float("final_ratio", final_ratio, lo=0.0, hi=const_ratio, lo_open=True)
  check_choice("cooldown", cooldown, _COOLDOWNS)
  alpha = _check_float("alpha", alpha, lo=0.0, lo_open=True)
  if warmup_steps + cooldown_steps > anneal_start:
    raise ValueError(
        f"warmup_steps={warmup_steps} + cooldown_steps={cooldown_steps} exceeds "
        f"anneal_start={anneal_start}")
  if anneal_start >= total_steps:
    raise ValueError(f"anneal_start={anneal_start} must be < total_steps={total_steps}")
  h1 = 1 / math.sqrt(1 + alpha) - 1
  log_ratio = math.log(final_ratio / const_ratio)
  const_value = const_ratio * peak
  cool_end = warmup_steps + cooldown_steps

  def schedule(step):
    t = _as_time(step)
    warm = peak * t / max(warmup_steps, 1)
    x = jnp.clip((t - warmup_steps) / max(cooldown_steps, 1), 0.0, 1.0)
    if cooldown == "cosine":
      cool = const_value + (peak - const_value) * 0.5 * (1 + jnp.cos(jnp.pi * x))
    else:
      h = 1 / jnp.sqrt(1 + alpha * x) - 1
      cool = peak + (const_value - peak) * h / h1
    q = jnp.clip((t - anneal_start) / (total_steps - anneal_start), 0.0, 1.0)
    anneal = const_value * jnp.exp(q * log_ratio)
    value = jnp.where(t < anneal_start, const_value, anneal)
    value = jnp.where(t < cool_end, cool, value)
    return jnp.where(t < warmup_steps, warm, value)

  return schedule


def rewarm(peak: float, total_steps: int, warmup_steps: int, init_ratio: float = 0.0,
           final_ratio: float = 0.1, shape: DecayShape = "cosine") -> Schedule:
  r"""Re-warm then re-decay, for continuing training on new data.

  The form chosen here (the "re-warming and re-decaying" baseline of Ibrahim et al.):
  linear warmup from ``init_ratio * peak`` (0, or the previous run's final LR) to ``peak``
  over ``warmup_steps``, then a decay with ``shape`` over the remaining
  ``total_steps - warmup_steps`` steps to ``final_ratio * peak``. It is
  ``wsd(peak, total_steps, warmup_steps, decay_steps=total_steps - warmup_steps, shape,
  final_ratio, init_ratio)``. Ibrahim et al. re-warm over about 1% of the new run and
  cosine-decay to 0.1x the peak. Steps count from the start of the new run.

  Args:
    peak: the re-warmed learning rate.
    total_steps: length of the new run.
    warmup_steps: re-warmup length.
    init_ratio: the value at the start of the new run as a fraction of ``peak``
      (0 <= init_ratio <= 1), e.g. the previous run's final LR divided by ``peak``.
    final_ratio: the final value as a fraction of ``peak``.
    shape: decay shape, as in `wsd`.

  Returns:
    A schedule ``step -> learning rate``.

  Examples:
    >>> from reweight import schedules
    >>> s = schedules.rewarm(2.0, total_steps=110, warmup_steps=10, init_ratio=0.1)
    >>> [round(float(s(t)), 3) for t in (0, 10, 60, 110)]
    [0.2, 2.0, 1.1, 0.2]

  References:
    Ibrahim et al., "Simple and Scalable Strategies to Continually Pre-train Large
    Language Models", TMLR 2024. Gupta et al., "Continual Pre-Training of Large Language
    Models: How to (re)warm your model?", 2023.
  """
  peak = _check_float("peak", peak, lo=0.0, lo_open=True)
  init_ratio = _check_float("init_ratio", init_ratio, lo=0.0, hi=1.0)
  total_steps = check_int("total_steps", total_steps, minimum=1)
  warmup_steps = check_int("warmup_steps", warmup_steps)
  if warmup_steps > total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} exceeds total_steps={total_steps}")
  return wsd(peak, total_steps, warmup_steps, decay_steps=total_steps - warmup_steps,
             shape=shape, final_ratio=final_ratio, init_ratio=init_ratio)


def linear_decay(peak: float, total_steps: int, warmup_steps: int = 0,
                 final_ratio: float = 0.0) -> Schedule:
  r"""Linear warmup from 0 then linear decay to ``final_ratio * peak`` at ``total_steps``.

  eta_t = peak t / W for t < W, then peak (r + (1 - r)(1 - (t - W) / (T - W))).
  With ``final_ratio=0`` this is linear decay-to-zero.

  Args:
    peak: the learning rate at the end of warmup.
    total_steps: T.
    warmup_steps: W.
    final_ratio: r.

  Returns:
    A schedule ``step -> learning rate``.

  Examples:
    >>> from reweight import schedules
    >>> s = schedules.linear_decay(2.0, total_steps=100)
    >>> [round(float(s(t)), 3) for t in (0, 25, 100, 200)]
    [2.0, 1.5, 0.0, 0.0]

  References:
    Bergsma et al., "Straight to Zero: Why Linearly Decaying the Learning Rate to Zero
    Works Best for LLMs", ICLR 2025.
  """
  total_steps = check_int("total_steps", total_steps, minimum=1)
  warmup_steps = check_int("warmup_steps", warmup_steps)
  if warmup_steps > total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} exceeds total_steps={total_steps}")
  return wsd(peak, total_steps, warmup_steps, decay_steps=total_steps - warmup_steps,
             shape="linear", final_ratio=final_ratio)


def moderate_decay(peak: float, total_steps: int, final_ratio: float = 0.3,
                   shape: DecayShape = "cosine", warmup_steps: int = 0) -> Schedule:
  r"""A decay that ends only moderately below the peak.

  Same as `linear_decay` with a configurable ``shape`` (as in `wsd`) and a final value
  ``final_ratio * peak`` that stays well above zero. Luo et al. report that with an
  ascending-quality curriculum a full decay spends the smallest steps on the best data,
  and that ending the decay moderately below the peak (together with averaging the last
  checkpoints) recovers the curriculum's gain. The default ``final_ratio=0.3`` is our
  choice, not a value from the paper (only its abstract was available to us).

  Args:
    peak: the learning rate at the end of warmup.
    total_steps: the step at which the decay ends.
    final_ratio: the final value as a fraction of ``peak`` (0 < r <= 1).
    shape: decay shape.
    warmup_steps: linear warmup from 0.

  Returns:
    A schedule ``step -> learning rate``.

  Examples:
    >>> from reweight import schedules
    >>> s = schedules.moderate_decay(1.0, total_steps=100, final_ratio=0.5)
    >>> [round(float(s(t)), 3) for t in (0, 50, 100)]
    [1.0, 0.75, 0.5]

  References:
    Luo et al., "How Learning Rate Decay Wastes Your Best Data in Curriculum-Based LLM
    Pretraining", 2025.
  """
  final_ratio = _check_float("final_ratio", final_ratio, lo=0.0, hi=1.0, lo_open=True)
  total_steps = check_int("total_steps", total_steps, minimum=1)
  warmup_steps = check_int("warmup_steps", warmup_steps)
  if warmup_steps > total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} exceeds total_steps={total_steps}")
  return wsd(peak, total_steps, warmup_steps, decay_steps=total_steps - warmup_steps,
             shape=shape, final_ratio=final_ratio)


# ----------------------------------------------------------------------------------------
# Refined schedule.


def refined_values(grad_norms, norm: Norm = "l2", median_fraction: float = 0.1
                   ) -> np.ndarray:
  r"""The per-step multipliers of `refined` (max 1, last 0) as a float64 NumPy array.

  G = median_filter(grad_norms, width = max(1, round(median_fraction * T))) with
  ``scipy.ndimage.median_filter(mode="nearest")`` (edges padded by repetition);
  w_t = G_t^-2 (``"l2"``) or G_t^-1 (``"l1"``); v_t = w_t sum_{p>t} w_p; v / max(v).

  Args:
    grad_norms: per-step gradient norms of a previous run, shape [T], T >= 2, positive.
    norm: ``"l2"`` (SGD: w = G^-2) or ``"l1"`` (Adam: w = G^-1, with G the l1 norm).
    median_fraction: median-filter width as a fraction of T (0 for no smoothing).

  Returns:
    An array of shape [T].
  """
  check_choice("norm", norm, _NORMS)
  median_fraction = _check_float("median_fraction", median_fraction, lo=0.0, hi=1.0)
  g = np.asarray(grad_norms, np.float64)
  if g.ndim != 1 or g.shape[0] < 2:
    raise ValueError(f"grad_norms must be 1-D with at least 2 steps, got shape {g.shape}")
  if not np.all(np.isfinite(g)) or np.any(g <= 0):
    raise ValueError("grad_norms must be finite and positive")
  width = max(1, int(round(median_fraction * g.shape[0])))
  if width > 1:
    import scipy.ndimage  # deferred: see the imports at the top

    g = scipy.ndimage.median_filter(g, size=width, mode="nearest")
  w = g ** (-2.0 if norm == "l2" else -1.0)
  tail = np.cumsum(w[::-1])[::-1]  # tail[t] = sum_{p >= t} w_p
  after = np.concatenate([tail[1:], [0.0]])  # sum_{p > t} w_p
  v = w * after
  return v / np.max(v)


def refined(grad_norms, norm: Norm = "l2", median_fraction: float = 0.1,
            peak: float = 1.0) -> Schedule:
  r"""A schedule refined from a previous run's per-step gradient norms.

  .. math::
    \hat G = \mathrm{median\_filter}(G), \quad w_t = \hat G_t^{-2}\ (\ell_2)
    \text{ or } \hat G_t^{-1}\ (\ell_1), \quad
    \eta_t = \eta_{peak} \frac{w_t \sum_{p>t} w_p}{\max_s w_s \sum_{p>s} w_p}

  so eta_{T-1} = 0 at the last step. Between integer steps the values are linearly
  interpolated (``jnp.interp``, jit-able); before 0 and after T - 1 they are held. A
  constant G gives exactly linear decay to zero, eta_t = peak (1 - t / (T - 1)). The
  median filter is ``scipy.ndimage.median_filter(mode="nearest")`` with width
  ``max(1, round(median_fraction * T))``. Record the norms with
  `reweight.optim.grad_norms.record_grad_norms`.

  Args:
    grad_norms: per-step gradient norms G_t of a previous run, shape [T].
    norm: ``"l2"`` (w = G^-2, for SGD) or ``"l1"`` (w = G^-1, for Adam; pass l1 norms).
    median_fraction: median-filter width as a fraction of the run.
    peak: the maximum of the schedule.

  Returns:
    A schedule ``step -> learning rate``.

  Examples:
    >>> import numpy as np
    >>> from reweight import schedules
    >>> s = schedules.refined(np.ones(11), peak=2.0)
    >>> [round(float(s(t)), 3) for t in (0, 5, 10)]
    [2.0, 1.0, 0.0]

  References:
    Defazio et al., "When, Why and How Much? Adaptive Learning Rate Scheduling by
    Refinement", 2023.
  """
  peak = _check_float("peak", peak, lo=0.0)
  values = jnp.asarray(peak * refined_values(grad_norms, norm, median_fraction), jnp.float32)
  xs = jnp.arange(values.shape[0], dtype=jnp.float32)

  def schedule(step):
    return jnp.interp(_as_time(step), xs, values)

  return schedule


__all__ = [
    "DECAY_SHAPES",
    "annealing_law",
    "cyclic_cosine",
    "infinite",
    "linear_decay",
    "moderate_decay",
    "refined",
    "refined_values",
    "rewarm",
    "wsd",
    "wsd_s",
    "wsd_s_boundaries",
]
