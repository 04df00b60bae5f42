"""Batch samplers: pure functions from a training step to the indices of that step's batch.

A `Sampler` maps ``step -> indices`` (int64 array of length ``batch_size``, or shorter for
an epoch's last batch without ``drop_remainder``). The indices depend only on
``(seed, step)`` and the sampler's arguments, never on what was drawn before, so:

* the sampler's whole state is the step: resuming at step t draws the same batches as an
  uninterrupted run, and `reweight.data.pipeline.sampler_iterator` wraps it as a
  checkpointable grain iterator;
* proportions and pacing may change with the step without any stored history.

Random streams: per-step draws use ``np.random.default_rng([SALT, seed, step])``,
per-epoch permutations ``np.random.default_rng([SALT, seed, epoch])``, with one SALT
constant per sampler (below).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

EPOCH_SALT = 0x65706F63
MIXTURE_SALT = 0x6D697874
CURRICULUM_SALT = 0x63757272
RS2_SALT = 0x72733273


class Sampler(NamedTuple):
  """Batch indices as a pure function of the step.

  Attributes:
    indices: ``indices(step) -> int64 [batch_size]`` (an epoch's last batch may be shorter
      when the sampler was built with ``drop_remainder=False``).
    batch_size: the batch size.
    steps_per_epoch: batches per epoch for epoch-based samplers, else None.
  """

  indices: Callable[[int], np.ndarray]
  batch_size: int
  steps_per_epoch: int | None = None


def _check_batch_size(batch_size: int) -> int:
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
  return int(batch_size)


def _check_step(step) -> int:
  step = int(step)
  if step < 0:
    raise ValueError(f"step={step!r} must be >= 0")
  return step


def _count(fraction: float, n: int) -> int:
  """``ceil(fraction * n)`` in [1, n], ignoring float error below 1e-9 (0.7 * 10 -> 7)."""
  return min(n, max(1, math.ceil(round(fraction * n, 9))))


def _epoch_layout(m: int, batch_size: int, drop_remainder: bool) -> int:
  if drop_remainder:
    if m < batch_size:
      raise ValueError(
          f"batch_size={batch_size!r} exceeds the {m} examples per epoch with "
          "drop_remainder=True; lower it or pass drop_remainder=False"
      )
    return m // batch_size
  return -(-m // batch_size)


def epoch_sampler(
    num_examples: int, batch_size: int, seed: int, *, drop_remainder: bool = True
) -> Sampler:
  """Shuffled epochs: epoch e visits the permutation ``perm_e`` fixed by ``(seed, e)``.

  ``perm_e = np.random.default_rng([EPOCH_SALT, seed, e]).permutation(n)``.

  Step ``t`` is batch ``b = t mod S`` of epoch ``e = t // S`` (``S = steps_per_epoch``):
  positions ``[b B, (b + 1) B)`` of that epoch's permutation. With ``drop_remainder`` the
  last ``n mod B`` positions of each epoch are skipped; without, the last batch is short.

  Examples:
    >>> s = epoch_sampler(10, batch_size=4, seed=0)
    >>> s.steps_per_epoch
    2
    >>> import numpy as np
    >>> epoch0 = np.concatenate([s.indices(0), s.indices(1)])
    >>> len(set(epoch0.tolist()))
    8

  Args:
    num_examples: dataset size n.
    batch_size: B.
    seed: non-negative int.
    drop_remainder: skip each epoch's incomplete last batch.

  Returns:
    A `Sampler`.
  """
  n = int(num_examples)
  if n < 1:
    raise ValueError(f"num_examples={num_examples!r} must be >= 1")
  batch_size = _check_batch_size(batch_size)
  steps_per_epoch = _epoch_layout(n, batch_size, drop_remainder)
  seed = int(seed)

  @functools.lru_cache(maxsize=2)
  def permutation(epoch: int) -> np.ndarray:
    return np.random.default_rng([EPOCH_SALT, seed, epoch]).permutation(n)

  def indices(step: int) -> np.ndarray:
    epoch, b = divmod(_check_step(step), steps_per_epoch)
    return permutation(epoch)[b * batch_size : (b + 1) * batch_size].copy()

  return Sampler(indices, batch_size, steps_per_epoch)


def mixture_sampler(
    group_ids: np.ndarray,
    proportions_fn: Callable[[int], Sequence[float]] | Sequence[float],
    batch_size: int,
    seed: int,
    *,
    num_groups: int | None = None,
) -> Sampler:
  """Each batch draws from groups in proportions ``p(step)`` (which may change over training).

  With ``rng = np.random.default_rng([MIXTURE_SALT, seed, step])`` and
  ``p = proportions_fn(step) / sum(proportions_fn(step))``: group g gets
  ``floor(p_g B)`` slots, and the ``r = B - sum_g floor(p_g B)`` remaining slots are
  assigned by ``rng.multinomial(r, frac / sum(frac))`` with ``frac_g = p_g B - floor(p_g B)``,
  so ``E[count_g] = p_g B`` exactly and counts never stray by more than r. Within group g,
  ``count_g`` members are drawn uniformly by ``rng.choice`` (without replacement when the
  group is large enough, else with), groups in ascending order; the batch is then shuffled
  with ``rng.permutation``.

  Examples:
    >>> import numpy as np
    >>> groups = np.repeat([0, 1], [50, 50])
    >>> s = mixture_sampler(groups, lambda step: [1.0, 0.0] if step < 10 else [0.5, 0.5], 8, 0)
    >>> np.bincount(groups[s.indices(0)], minlength=2).tolist()
    [8, 0]
    >>> np.bincount(groups[s.indices(10)], minlength=2).tolist()
    [4, 4]

  Args:
    group_ids: int array ``[n]``, the group of each example, in ``[0, num_groups)``.
    proportions_fn: ``step -> [G]`` non-negative weights with a positive sum (normalised),
      or a constant ``[G]`` sequence.
    batch_size: B.
    seed: non-negative int.
    num_groups: G; default ``max(group_ids) + 1``.

  Returns:
    A `Sampler` (``steps_per_epoch=None``). ``indices(step)`` raises ValueError if
    ``proportions_fn(step)`` is malformed or puts weight on an empty group.

  References:
    Xie et al., "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining",
    NeurIPS 2023 (mixture proportions over domains).
  """
  group_ids = np.asarray(group_ids)
  if group_ids.ndim != 1 or not np.issubdtype(group_ids.dtype, np.integer):
    raise ValueError(f"group_ids must be a 1-D int array, got {group_ids.dtype}{group_ids.shape}")
  if group_ids.size and group_ids.min() < 0:
    raise ValueError(f"group_ids has a negative entry {group_ids.min()}")
  inferred = int(group_ids.max()) + 1 if group_ids.size else 0
  num_groups = inferred if num_groups is None else int(num_groups)
  if num_groups < 1 or num_groups < inferred:
    raise ValueError(f"num_groups={num_groups!r} must be >= max(group_ids) + 1 = {inferred}")
  batch_size = _check_batch_size(batch_size)
  seed = int(seed)
  order = np.argsort(group_ids, kind="stable")
  sizes = np.bincount(group_ids, minlength=num_groups)
  starts = np.concatenate([[0], np.cumsum(sizes)])
  members = [order[starts[g] : starts[g + 1]] for g in range(num_groups)]
  fn = proportions_fn if callable(proportions_fn) else (lambda step: proportions_fn)

  def proportions(step: int) -> np.ndarray:
    raw = fn(step)
    p = np.asarray(raw, dtype=np.float64)
    if (
        p.shape != (num_groups,)
        or not np.all(np.isfinite(p))
        or p.min() < 0
        or p.sum() <= 0
    ):
      raise ValueError(
          f"proportions_fn({step}) = {raw!r} must be {num_groups} finite non-negative numbers "
          "with a positive sum"
      )
    empty = np.flatnonzero((p > 0) & (sizes == 0))
    if empty.size:
      raise ValueError(
          f"proportions_fn({step}) = {raw!r} puts weight on empty groups {empty.tolist()}"
      )
    return p / p.sum()

  def indices(step: int) -> np.ndarray:
    step = _check_step(step)
    p = proportions(step)
    rng = np.random.default_rng([MIXTURE_SALT, seed, step])
    target = p * batch_size
    counts = np.floor(target).astype(np.int64)
    remaining = batch_size - int(counts.sum())
    if remaining > 0:
      frac = target - counts
      counts += rng.multinomial(remaining, frac / frac.sum())
    picks = [
        members[g][rng.choice(sizes[g], counts[g], replace=bool(counts[g] > sizes[g]))]
        for g in range(num_groups)
        if counts[g] > 0
    ]
    return rng.permutation(np.concatenate(picks)).astype(np.int64)

  return Sampler(indices, batch_size)


def curriculum_sampler(
    order: np.ndarray,
    pacing: Callable[[int], float],
    batch_size: int,
    seed: int,
    num_examples: int | None = None,
) -> Sampler:
  """Each batch is drawn uniformly from the ``ceil(g(step) N)`` easiest examples.

  ``order`` lists example indices easiest first and ``g = pacing`` returns the fraction of
  it available at ``step`` (in (0, 1]; float error above 1 up to 1e-6 is clipped). With
  ``k = clip(ceil(g(step) N), 1, N)`` and ``rng = np.random.default_rng([CURRICULUM_SALT,
  seed, step])``: positions ``rng.choice(k, B, replace=k < B)`` of ``order``.

  Examples:
    >>> import numpy as np
    >>> order = np.arange(100)[::-1]          # example 99 is the easiest
    >>> s = curriculum_sampler(order, lambda step: min(1.0, 0.1 + step / 100), 8, seed=0)
    >>> bool(np.all(s.indices(0) >= 90))      # only the 10 easiest at step 0
    True

  Args:
    order: int array ``[N]`` of example indices, easiest first (e.g. argsort of a
      difficulty score).
    pacing: ``step -> fraction`` in (0, 1], e.g. a `reweight.schedules` pacing schedule.
    batch_size: B.
    seed: non-negative int.
    num_examples: size of the dataset ``order`` indexes; if given, entries of ``order``
      must lie in ``[0, num_examples)``. Default: unchecked.

  Returns:
    A `Sampler` (``steps_per_epoch=None``).

  References:
    Hacohen & Weinshall, "On The Power of Curriculum Learning in Training Deep Networks",
    ICML 2019 (pacing functions).
  """
  order = np.asarray(order)
  if order.ndim != 1 or order.size == 0 or not np.issubdtype(order.dtype, np.integer):
    raise ValueError(f"order must be a non-empty 1-D int array, got {order.dtype}{order.shape}")
  if num_examples is not None and (order.min() < 0 or order.max() >= num_examples):
    raise ValueError(
        f"order spans [{order.min()}, {order.max()}], outside [0, num_examples={num_examples})"
    )
  order = order.astype(np.int64)
  n = len(order)
  batch_size = _check_batch_size(batch_size)
  seed = int(seed)

  def indices(step: int) -> np.ndarray:
    step = _check_step(step)
    raw = pacing(step)
    g = float(raw)
    if not (np.isfinite(g) and 0.0 < g <= 1.0 + 1e-6):
      raise ValueError(f"pacing({step}) = {raw!r} is not a fraction in (0, 1]")
    k = _count(min(g, 1.0), n)
    rng = np.random.default_rng([CURRICULUM_SALT, seed, step])
    return order[rng.choice(k, batch_size, replace=k < batch_size)]

  return Sampler(indices, batch_size)


def random_subset_per_epoch(
    n: int,
    fraction: float,
    seed: int,
    *,
    batch_size: int,
    drop_remainder: bool = True,
) -> Sampler:
  """RS2 without replacement: each epoch trains on a fresh random ``fraction`` of the data.

  The examples are laid out as a stream ``perm_0 ++ perm_1 ++ ...`` of permutations
  ``perm_r = np.random.default_rng([RS2_SALT, seed, r]).permutation(n)``; epoch e uses the
  ``m = ceil(fraction n)`` stream positions ``[e m, (e + 1) m)``, in stream order, cut into
  batches as in `epoch_sampler` (with ``drop_remainder`` the last ``m mod B`` are skipped).
  So no example repeats until all n have been used (an epoch that straddles two
  permutations can hold an example twice, once from each). Pair it with an LR schedule over
  the reduced step count ``steps_per_epoch * epochs``.

  Examples:
    >>> import numpy as np
    >>> s = random_subset_per_epoch(100, 0.25, seed=0, batch_size=5)
    >>> s.steps_per_epoch
    5
    >>> seen = np.concatenate([s.indices(t) for t in range(4 * s.steps_per_epoch)])
    >>> len(set(seen.tolist()))               # 4 epochs x 25 = every example once
    100

  Args:
    n: dataset size.
    fraction: r in (0, 1].
    seed: non-negative int.
    batch_size: B.
    drop_remainder: skip each epoch's incomplete last batch.

  Returns:
    A `Sampler` with ``steps_per_epoch = m // B`` (or ``ceil(m / B)``).

  References:
    Okanovic et al., "Repeated Random Sampling for Minimizing the Time-to-Accuracy of
    Learning", ICLR 2024.
  """
  n = int(n)
  if n < 1:
    raise ValueError(f"n={n!r} must be >= 1")
  if not np.isscalar(fraction) or not 0.0 < float(fraction) <= 1.0:
    raise ValueError(f"fraction={fraction!r} is not a number in (0, 1]")
  batch_size = _check_batch_size(batch_size)
  m = _count(float(fraction), n)
  steps_per_epoch = _epoch_layout(m, batch_size, drop_remainder)
  seed = int(seed)

  @functools.lru_cache(maxsize=3)
  def permutation(r: int) -> np.ndarray:
    return np.random.default_rng([RS2_SALT, seed, r]).permutation(n)

  def indices(step: int) -> np.ndarray:
    epoch, b = divmod(_check_step(step), steps_per_epoch)
    start = epoch * m + b * batch_size
    stop = epoch * m + min((b + 1) * batch_size, m)
    pos = np.arange(start, stop)
    rounds, offsets = np.divmod(pos, n)
    out = np.empty(len(pos), dtype=np.int64)
    for r in np.unique(rounds):
      sel = rounds == r
      out[sel] = permutation(int(r))[offsets[sel]]
    return out

  return Sampler(indices, batch_size, steps_per_epoch)
