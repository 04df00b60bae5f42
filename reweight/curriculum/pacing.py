"""Curriculum pacing functions: how much of the (easiest-first) data is available at a step.

Every pacing function returns a schedule ``step -> value`` built from `jax.numpy` ops, so
it jits with a traced step and composes with LR schedules (see `reweight.schedules`).
The families of Wu et al. (2021) return the *fraction* g(t) in [b, 1] of the data sorted
by difficulty that may be sampled at step t (a sampler draws from the first
``g(t) * N`` examples of the order of `reweight.curriculum.scoring.order`); the
Hacohen & Weinshall pacing returns a count; the DeepSpeed schedules return a difficulty
level (e.g. a sequence length).

References:
  Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021.
  Hacohen & Weinshall, "On The Power of Curriculum Learning in Training Deep Networks",
  ICML 2019.
  Li, Zhang & He, "The Stability-Efficiency Dilemma: Investigating Sequence Length
  Warmup for Training GPT Models", NeurIPS 2022 (DeepSpeed curriculum learning).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import jax.numpy as jnp

from reweight._checks import check_choice, check_int

Schedule = Callable[..., jnp.ndarray]

PacingKind = Literal["linear", "quad", "root", "step", "exp", "log"]
PACING_KINDS = get_args(PacingKind)
_C = 10.0  # the growth constant of the exp / log families (Wu et al. use 10)


def _check_ab(a, b):
  try:
    a, b = float(a), float(b)
  except (TypeError, ValueError):
    raise ValueError(f"a={a!r} and b={b!r} must be real numbers") from None
  if not (math.isfinite(a) and a > 0):
    raise ValueError(f"a={a!r} must be > 0 (fraction of training at which all data is in)")
  if not (math.isfinite(b) and 0.0 <= b <= 1.0):
    raise ValueError(f"b={b!r} must be in [0, 1] (fraction of data at step 0)")
  return a, b


def _family(kind: str, total_steps: int, a: float, b: float,
            shape: Callable[[jnp.ndarray], jnp.ndarray]) -> Schedule:
  total_steps = check_int("total_steps", total_steps, minimum=1)
  a, b = _check_ab(a, b)
  horizon = a * total_steps

  def schedule(step):
    x = jnp.maximum(jnp.asarray(step).astype(jnp.float32), 0.0) / horizon
    s = shape(x)
    # Every family has shape(x) >= 1 for x >= 1; pin that so g(aT) == 1 exactly in float32.
    full = (x >= 1.0) | (s >= 1.0)
    return jnp.where(full, 1.0, jnp.clip(b + (1.0 - b) * s, b, 1.0))

  schedule.__name__ = f"{kind}_pacing"
  return schedule


def linear(total_steps: int, a: float = 0.8, b: float = 0.2) -> Schedule:
  r"""Linear pacing g(t) = b + (1 - b) t / (aT), clipped to [b, 1].

  Args:
    total_steps: T, the length of training.
    a: fraction of training at which all data is available (a > 0; a > 1 never reaches
      the full data).
    b: fraction of the data available at step 0.

  Returns:
    A schedule ``step -> fraction`` (float32).

  Examples:
    >>> from reweight.curriculum import pacing
    >>> g = pacing.linear(total_steps=100, a=0.5, b=0.2)
    >>> [round(float(g(t)), 3) for t in (0, 25, 50, 100)]
    [0.2, 0.6, 1.0, 1.0]

  References:
    Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021.
  """
  return _family("linear", total_steps, a, b, lambda x: x)


def quad(total_steps: int, a: float = 0.8, b: float = 0.2) -> Schedule:
  r"""Quadratic pacing g(t) = b + (1 - b) (t / (aT))^2, clipped to [b, 1].

  Args as in `linear`.

  Examples:
    >>> from reweight.curriculum import pacing
    >>> g = pacing.quad(total_steps=100, a=0.5, b=0.2)
    >>> [round(float(g(t)), 3) for t in (0, 25, 50)]
    [0.2, 0.4, 1.0]

  References:
    Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021.
  """
  return _family("quad", total_steps, a, b, lambda x: x * x)


def root(total_steps: int, a: float = 0.8, b: float = 0.2) -> Schedule:
  r"""Square-root pacing g(t) = b + (1 - b) sqrt(t / (aT)), clipped to [b, 1].

  Args as in `linear`.

  Examples:
    >>> from reweight.curriculum import pacing
    >>> g = pacing.root(total_steps=100, a=1.0, b=0.0)
    >>> [round(float(g(t)), 3) for t in (0, 25, 100)]
    [0.0, 0.5, 1.0]

  References:
    Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021.
  """
  return _family("root", total_steps, a, b, jnp.sqrt)


def step(total_steps: int, a: float = 0.8, b: float = 0.2, num_stages: int = 1) -> Schedule:
  r"""Step pacing: the available fraction grows in ``num_stages`` equal jumps.

  g(t) = b + (1 - b) floor(K t / (aT)) / K, clipped to [b, 1], with K = ``num_stages``.
  The default K = 1 is the step family of Wu et al. (their code:
  ``N floor(t / (aT)) + bN``): fraction b until step aT, then all the data. K > 1 is our
  generalization (staircase with K jumps at multiples of aT / K).

  Args:
    total_steps: T.
    a: fraction of training at which all data is available.
    b: fraction of the data available at step 0.
    num_stages: number of jumps K (>= 1).

  Returns:
    A schedule ``step -> fraction``.

  Examples:
    >>> from reweight.curriculum import pacing
    >>> g = pacing.step(total_steps=100, a=0.5, b=0.2)
    >>> [round(float(g(t)), 3) for t in (0, 49, 50, 99)]
    [0.2, 0.2, 1.0, 1.0]

  References:
    Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021.
  """
  k = check_int("num_stages", num_stages, minimum=1)
  return _family("step", total_steps, a, b, lambda x: jnp.floor(k * x) / k)


def exp(total_steps: int, a: float = 0.8, b: float = 0.2) -> Schedule:
  r"""Exponential pacing g(t) = b + (1 - b) (e^{10 t / (aT)} - 1) / (e^10 - 1), in [b, 1].

  Slow at first, fast near t = aT (where it reaches 1 exactly).

  Args as in `linear`.

  Examples:
    >>> from reweight.curriculum import pacing
    >>> g = pacing.exp(total_steps=100, a=0.5, b=0.2)
    >>> [round(float(g(t)), 3) for t in (0, 25, 50)]
    [0.2, 0.205, 1.0]

  References:
    Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021.
  """
  denom = math.expm1(_C)
  return _family("exp", total_steps, a, b,
                 lambda x: jnp.expm1(_C * jnp.minimum(x, 1.0)) / denom)


def log(total_steps: int, a: float = 0.8, b: float = 0.2) -> Schedule:
  r"""Logarithmic pacing g(t) = b + (1 - b)(1 + log(t / (aT) + e^{-10}) / 10), in [b, 1].

  Fast at first, slow near t = aT. g(0) = b exactly (log e^-10 = -10); at t = aT the
  unclipped value is 1 + (1 - b) log(1 + e^-10) / 10, slightly above 1, so the clip
  makes it 1.

  Args as in `linear`.

  Examples:
    >>> from reweight.curriculum import pacing
    >>> g = pacing.log(total_steps=100, a=0.5, b=0.2)
    >>> [round(float(g(t)), 3) for t in (0, 5, 50)]
    [0.2, 0.816, 1.0]

  References:
    Wu, Dyer & Neyshabur, "When Do Curricula Work?", ICLR 2021.
  """
  eps = math.exp(-_C)
  # log(x + e^-10) + 10 = log1p(x e^10): exact 0 at x = 0 in float32.
  return _family("log", total_steps, a, b,
                 lambda x: jnp.log1p(jnp.minimum(x, 1.0) / eps) / _C)


def pacing_function(kind: PacingKind, total_steps: int, a: float = 0.8, b: float = 0.2) -> Schedule:
  """The Wu et al. pacing family ``kind`` (one of `PACING_KINDS`), by name.

  Examples:
    >>> from reweight.curriculum import pacing as p
    >>> float(p.pacing_function("linear", 10, a=1.0, b=0.0)(5))
    0.5
  """
  fns = {"linear": linear, "quad": quad, "root": root, "step": step, "exp": exp,
         "log": log}
  check_choice("kind", kind, fns)
  return fns[kind](total_steps, a, b)


def hacohen_exponential(num_examples: int, s: float = 0.04, inc: float = 1.9,
                        step_length: int = 100, as_fraction: bool = False) -> Schedule:
  r"""Fixed exponential pacing of Hacohen & Weinshall: g(i) = N min(s inc^floor(i / L), 1).

  Returns the *number of examples* available at step i (int32), floor of
  N min(s inc^k, 1) with k = floor(i / L); or, with ``as_fraction=True``, that count
  divided by N. The few distinct values are tabulated in float64 on the host when the
  schedule is built (so e.g. N = 1000, s = 0.04 gives exactly 40), and looked up by k
  with jnp ops.

  Args:
    num_examples: N, the dataset size.
    s: starting fraction (0 < s <= 1).
    inc: the growth factor per stage (> 1).
    step_length: L, steps per stage.
    as_fraction: return count / N instead of the count.

  Returns:
    A schedule ``step -> count`` (int32) or ``step -> fraction`` (float32).

  Examples:
    >>> from reweight.curriculum import pacing
    >>> g = pacing.hacohen_exponential(1000, s=0.04, inc=1.9, step_length=100)
    >>> [int(g(i)) for i in (0, 99, 100, 250, 10000)]
    [40, 40, 76, 144, 1000]

  References:
    Hacohen & Weinshall, "On The Power of Curriculum Learning in Training Deep Networks",
    ICML 2019.
  """
  n = check_int("num_examples", num_examples, minimum=1)
  step_length = check_int("step_length", step_length, minimum=1)
  s, inc = float(s), float(inc)
  if not (math.isfinite(s) and 0.0 < s <= 1.0):
    raise ValueError(f"s={s!r} must be in (0, 1]")
  if not (math.isfinite(inc) and inc > 1.0):
    raise ValueError(f"inc={inc!r} must be > 1")
  counts = []
  k = 0
  while True:
    frac = min(s * inc**k, 1.0)
    counts.append(int(math.floor(n * frac)))
    if frac >= 1.0:
      break
    k += 1
  table = jnp.asarray(counts, jnp.int32)
  last = len(counts) - 1

  def schedule(i):
    stage = jnp.floor_divide(jnp.maximum(jnp.asarray(i).astype(jnp.int32), 0), step_length)
    count = table[jnp.minimum(stage, last)]
    return count.astype(jnp.float32) / n if as_fraction else count

  return schedule


def _ds_root_value(t: int, lo: int, hi: int, total: int, root_degree: float,
                   difficulty_step: int) -> int:
  """DeepSpeed's fixed_root difficulty at step t, in Python float64 arithmetic."""
  d = (float(t) / total) ** (1.0 / root_degree)
  d = math.floor(d * (hi - lo) + lo)
  d -= d % difficulty_step
  return min(d, hi)


def deepspeed_fixed_root(min_difficulty: int, max_difficulty: int, total_steps: int,
                         root: float = 2, difficulty_step: int = 8) -> Schedule:
  r"""DeepSpeed's ``fixed_root`` curriculum: a difficulty (e.g. sequence length) per step.

  .. math::
    d(t) = \min\left(r_s\!\left(\left\lfloor d_{min} + (d_{max} - d_{min})
    (t/T)^{1/\mathrm{root}} \right\rfloor\right),\ d_{max}\right)

  where r_s(x) = x - (x mod s) rounds *down* to a multiple of s = ``difficulty_step``
  (as DeepSpeed's ``CurriculumScheduler``; so d(0) may be below ``min_difficulty`` when
  that is not a multiple of s, and d(T) may be below ``max_difficulty`` when that is
  not one either — d keeps growing after T until it reaches ``max_difficulty``).
  ``root=1`` is DeepSpeed's ``fixed_linear``. The change points are computed exactly
  (Python float64, as DeepSpeed) when the schedule is built; the returned function looks
  the step up with ``jnp.searchsorted``.

  Args:
    min_difficulty: d_min.
    max_difficulty: d_max (>= d_min).
    total_steps: T, DeepSpeed's ``total_curriculum_step``.
    root: the root degree (2 = square root; 1 = linear).
    difficulty_step: s (8 or 16 for tensor-core friendly sequence lengths).

  Returns:
    A schedule ``step -> difficulty`` (int32).

  Examples:
    >>> from reweight.curriculum import pacing
    >>> d = pacing.deepspeed_fixed_root(64, 1024, total_steps=1000, root=2)
    >>> [int(d(t)) for t in (0, 10, 250, 1000)]
    [64, 160, 544, 1024]

  References:
    Li, Zhang & He, "The Stability-Efficiency Dilemma: Investigating Sequence Length
    Warmup for Training GPT Models", NeurIPS 2022; DeepSpeed curriculum learning
    tutorial (``fixed_root`` / ``fixed_linear`` schedules).
  """
  lo = check_int("min_difficulty", min_difficulty)
  hi = check_int("max_difficulty", max_difficulty)
  if hi < lo:
    raise ValueError(f"max_difficulty={hi} must be >= min_difficulty={lo}")
  total = check_int("total_steps", total_steps, minimum=1)
  ds = check_int("difficulty_step", difficulty_step, minimum=1)
  root = float(root)
  if not (math.isfinite(root) and root > 0):
    raise ValueError(f"root={root!r} must be > 0")
  value = lambda t: _ds_root_value(t, lo, hi, total, root, ds)

  # d(t) is non-decreasing in t and reaches hi; find its change points by bisection.
  t_end = total
  while hi > lo and value(t_end) < hi:
    t_end *= 2
  change_steps, levels = [], [value(0)]
  t = 0
  while hi > lo and levels[-1] < hi:
    lo_t, hi_t = t, t_end  # value(lo_t) == levels[-1] < value(hi_t)
    while hi_t - lo_t > 1:
      mid = (lo_t + hi_t) // 2
      if value(mid) > levels[-1]:
        hi_t = mid
      else:
        lo_t = mid
    change_steps.append(hi_t)
    levels.append(value(hi_t))
    t = hi_t
  steps_arr = jnp.asarray(change_steps, jnp.int32)
  levels_arr = jnp.asarray(levels, jnp.int32)

  def schedule(step_):
    t = jnp.asarray(step_).astype(jnp.int32)
    return levels_arr[jnp.searchsorted(steps_arr, t, side="right")]

  return schedule


def deepspeed_fixed_discrete(difficulties: Sequence[int], max_steps: Sequence[int]
                             ) -> Schedule:
  r"""DeepSpeed's ``fixed_discrete`` curriculum: piecewise-constant difficulty.

  d(t) = difficulties[i] for max_steps[i-1] < t <= max_steps[i] (with max_steps[-1] =
  -inf), and difficulties[-1] after the last max step; ``max_steps`` has one entry fewer
  than ``difficulties``, as in DeepSpeed's config
  (``{"difficulty": [1, 2, 3], "max_step": [5, 10]}``).

  Args:
    difficulties: the difficulty levels, in order.
    max_steps: strictly increasing last steps of each level but the final one.

  Returns:
    A schedule ``step -> difficulty`` (int32).

  Examples:
    >>> from reweight.curriculum import pacing
    >>> d = pacing.deepspeed_fixed_discrete([1, 2, 3], [5, 10])
    >>> [int(d(t)) for t in (0, 5, 6, 10, 11)]
    [1, 1, 2, 2, 3]

  References:
    DeepSpeed curriculum learning tutorial (``fixed_discrete`` schedule).
  """
  diffs = [check_int(f"difficulties[{i}]", d) for i, d in enumerate(difficulties)]
  steps_ = [check_int(f"max_steps[{i}]", s) for i, s in enumerate(max_steps)]
  if len(diffs) != len(steps_) + 1:
    raise ValueError(
        f"max_steps must have one entry fewer than difficulties, got {len(steps_)} and "
        f"{len(diffs)}")
  if any(b <= a for a, b in zip(steps_, steps_[1:], strict=False)):
    raise ValueError(f"max_steps={list(max_steps)!r} must be strictly increasing")
  steps_arr = jnp.asarray(steps_, jnp.int32)
  diffs_arr = jnp.asarray(diffs, jnp.int32)

  def schedule(step_):
    t = jnp.asarray(step_).astype(jnp.int32)
    return diffs_arr[jnp.searchsorted(steps_arr, t, side="left")]

  return schedule


__all__ = [
    "PACING_KINDS",
    "deepspeed_fixed_discrete",
    "deepspeed_fixed_root",
    "exp",
    "hacohen_exponential",
    "linear",
    "log",
    "pacing_function",
    "quad",
    "root",
    "step",
]
