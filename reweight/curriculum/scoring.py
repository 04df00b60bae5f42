"""Per-example difficulty scores for curricula, and orderings / tiers built from them.

A score is a float per example, **higher = harder** (or lower quality). Sources:

* `init_loss_ema` / `update_loss_ema`: a running EMA of each example's training loss,
  updated from the (global) batch by scatter; the state is a `LossEmaState` NamedTuple
  of [N] arrays, so it jits, shards and checkpoints like any other training state. It
  costs 8 bytes per example (float32 EMA + int32 count); ``init_loss_ema(N, mesh=mesh)``
  shards it by example id over the mesh's data axis (``8 N / D`` bytes on each of ``D``
  devices) with the same values under `jax.jit`, or inside `jax.shard_map` (on
  ``P("data")``, with ``axis_name``).
* `from_reference`: losses of a reference model (or the excess over them).
* `from_external`: any precomputed score (length, quality classifier, ...).

`order` turns scores into an easiest-first permutation (stable), `quality_tiers` into
equal-size tiers; `reweight.curriculum.pacing` decides how much of the order is
available at each step.

References:
  Bengio et al., "Curriculum Learning", ICML 2009. Wu, Dyer & Neyshabur, "When Do
  Curricula Work?", ICLR 2021 (loss-based and reference-model scoring). Luo et al., "How
  Learning Rate Decay Wastes Your Best Data in Curriculum-Based LLM Pretraining", 2025
  (quality-ordered curricula).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from reweight import parallel
from reweight._checks import check_int


class LossEmaState(NamedTuple):
  """Per-example loss EMA.

  Attributes:
    ema: float32 [N], the EMA of each example's loss (0 for never-seen examples).
    count: int32 [N], how many losses of each example were folded in (0 = never seen).
  """
  ema: jax.Array
  count: jax.Array


def init_loss_ema(num_examples: int, *, mesh: Mesh | None = None,
                  axis_name: str | tuple[str, ...] | None = None) -> LossEmaState:
  """An empty `LossEmaState` for ``num_examples`` examples (8 bytes per example).

  Args:
    num_examples: N, the dataset size (ids in [0, N)).
    mesh: optional `Mesh`: the state is placed on it sharded by example id over
      ``axis_name`` (`reweight.parallel.shard_examples`), so that each of the D devices holds
      N / D examples (8 N / D bytes); N must be a multiple of D (round it up). Under
      `jax.jit`, `update_loss_ema` is then a partitioned gather / scatter with the same
      values as on a replicated state, and the output keeps the sharding; inside
      `jax.shard_map` pass the state with ``in_specs=P("data")`` and ``axis_name``.
    axis_name: the mesh axis (or axes) to shard over; None: the mesh's batch axes.

  Examples:
    >>> from reweight import parallel
    >>> from reweight.curriculum import scoring
    >>> scoring.init_loss_ema(3).count.tolist()
    [0, 0, 0]
    >>> tuple(scoring.init_loss_ema(8, mesh=parallel.make_mesh(1)).ema.sharding.spec)
    ('data',)
  """
  num_examples = check_int("num_examples", num_examples, 1)
  n = int(num_examples)
  state = LossEmaState(ema=jnp.zeros((n,), jnp.float32), count=jnp.zeros((n,), jnp.int32))
  if mesh is not None:
    state = parallel.shard_examples(state, mesh, axis_name)
  return state


def update_loss_ema(state: LossEmaState, example_ids: jax.Array, losses: jax.Array,
                    decay: float = 0.9, mask: jax.Array | None = None, *,
                    axis_name: parallel.AxisName = None) -> LossEmaState:
  r"""Folds a batch of per-example losses into the per-example EMA.

  For each distinct id i in the batch, with l_i the mean of its valid losses in the
  batch (an id may appear several times):

  .. math::
    \mathrm{ema}_i \leftarrow \begin{cases} l_i & \text{first time } i \text{ is seen} \\
      d\, \mathrm{ema}_i + (1 - d)\, l_i & \text{otherwise} \end{cases}, \qquad
    \mathrm{count}_i \leftarrow \mathrm{count}_i + n_i

  Losses that are masked out, non-finite, or whose id is outside [0, N) are ignored.
  Duplicates are merged with ``jnp.unique(size=B)`` and a segment sum, so the update is
  deterministic, jit-able, O(B log B) in the batch and touches only the batch's rows of
  the [N] state. Under `jax.jit` with a batch sharded over a mesh the ids and losses are
  global arrays, so every device's examples are folded in; the state may be replicated or
  sharded by example id (``init_loss_ema(N, mesh=mesh)``), with the same result. Inside
  `jax.shard_map` / `jax.pmap` pass ``axis_name``: the batch's ids and losses are
  all-gathered, and every device folds in the global batch (a replicated state, ``P()``)
  or only the ids it holds (a state sharded by example id, ``in_specs=P(axis_name)``,
  recognized by its type under ``check_vma=True``).

  Args:
    state: the current `LossEmaState`.
    example_ids: int [B], dataset indices of the batch's examples.
    losses: float [B], their (already reduced) losses.
    decay: d in [0, 1).
    mask: optional bool [B]; False entries (padding) are ignored.
    axis_name: inside `shard_map` / `pmap`, the batch axis name(s).

  Returns:
    The new `LossEmaState` (replicated or sharded like ``state``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.curriculum import scoring
    >>> s = scoring.init_loss_ema(4)
    >>> s = scoring.update_loss_ema(s, jnp.array([1, 2]), jnp.array([1.0, 2.0]), decay=0.5)
    >>> s = scoring.update_loss_ema(s, jnp.array([1, 1]), jnp.array([3.0, 5.0]), decay=0.5)
    >>> s.ema.tolist(), s.count.tolist()
    ([0.0, 2.5, 2.0, 0.0], [0, 3, 1, 0])
  """
  if isinstance(decay, (int, float)) and not 0.0 <= decay < 1.0:
    raise ValueError(f"decay={decay!r} must be in [0, 1)")
  ids = jnp.asarray(example_ids)
  losses = jnp.asarray(losses, jnp.float32)
  if ids.ndim != 1 or losses.shape != ids.shape:
    raise ValueError(
        f"example_ids {ids.shape} and losses {losses.shape} must be 1-D of equal length")
  n_local = n = state.ema.shape[0]
  axis_name = parallel.resolve_axis_name(axis_name)
  sharded = axis_name is not None and parallel.is_typed(state.count, axis_name)
  if sharded:  # this device holds the ids [k n_local, (k + 1) n_local)
    n = n_local * jax.lax.axis_size(axis_name)
  ids = ids.astype(jnp.int32)
  valid = jnp.isfinite(losses) & (ids >= 0) & (ids < n)
  if mask is not None:
    valid = valid & jnp.asarray(mask, bool)
  if axis_name is not None:  # the global batch on every device
    ids = _gather_batch(ids, axis_name)
    losses = _gather_batch(jnp.where(valid, losses, 0.0), axis_name)
    valid = _gather_batch(valid.astype(jnp.int32), axis_name) > 0
  b = ids.shape[0]
  keys = jnp.where(valid, ids, n)  # invalid entries share the out-of-range key n
  uniq, inverse = jnp.unique(keys, return_inverse=True, size=b, fill_value=n)
  inverse = inverse.reshape(-1)
  sums = jax.ops.segment_sum(jnp.where(valid, losses, 0.0), inverse, num_segments=b)
  counts = jax.ops.segment_sum(valid.astype(jnp.int32), inverse, num_segments=b)
  batch_mean = sums / jnp.maximum(counts, 1)
  target = jnp.where(counts > 0, uniq, n)  # n is out of bounds: dropped below
  if sharded:
    target = target - jax.lax.axis_index(axis_name) * n_local
    target = jnp.where((target >= 0) & (target < n_local), target, n_local)
  old = state.ema.at[target].get(mode="fill", fill_value=0.0)
  seen = state.count.at[target].get(mode="fill", fill_value=0) > 0
  new = jnp.where(seen, decay * old + (1.0 - decay) * batch_mean, batch_mean)
  ema = state.ema.at[target].set(new.astype(state.ema.dtype), mode="drop")
  count = state.count.at[target].add(counts, mode="drop")
  return LossEmaState(ema=ema, count=count)


def _gather_batch(x: jax.Array, axis_name: parallel.AxisName) -> jax.Array:
  """The global batch of a per-device ``x`` on every device, typed replicated (a ``psum`` of
  zero-padded buffers, exact)."""
  local = x.shape[0]
  buffer = jnp.zeros((jax.lax.axis_size(axis_name) * local,) + x.shape[1:], x.dtype)
  offset = jax.lax.axis_index(axis_name) * local
  return jax.lax.psum(jax.lax.dynamic_update_slice_in_dim(buffer, x, offset, 0), axis_name)


def loss_ema_scores(state: LossEmaState, unseen_value: float = math.nan) -> jax.Array:
  """Scores from a `LossEmaState`: the EMA, with ``unseen_value`` for unseen examples.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.curriculum import scoring
    >>> s = scoring.update_loss_ema(scoring.init_loss_ema(3), jnp.array([0]), jnp.array([2.0]))
    >>> scoring.loss_ema_scores(s, unseen_value=-1.0).tolist()
    [2.0, -1.0, -1.0]
  """
  return jnp.where(state.count > 0, state.ema, jnp.asarray(unseen_value, state.ema.dtype))


def _scores_1d(name, x) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"{name} must be 1-D (one value per example), got shape {x.shape}")
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def from_reference(ref_losses, losses=None) -> jax.Array:
  r"""Difficulty from a reference model: its loss, or the excess loss over it.

  With only ``ref_losses`` (losses of a reference / proxy model on every example), the
  score is that loss (hard for the reference = hard). With ``losses`` too (the current
  model's), the score is ``losses - ref_losses``, the excess loss (the part not explained
  by the reference, as in reducible-loss selection).

  Args:
    ref_losses: float [N].
    losses: optional float [N].

  Returns:
    Scores, float [N] (higher = harder).

  Examples:
    >>> from reweight.curriculum import scoring
    >>> scoring.from_reference([1.0, 3.0], losses=[2.0, 3.5]).tolist()
    [1.0, 0.5]
  """
  ref = _scores_1d("ref_losses", ref_losses)
  if losses is None:
    return ref
  cur = _scores_1d("losses", losses)
  if cur.shape != ref.shape:
    raise ValueError(f"losses {cur.shape} and ref_losses {ref.shape} must have equal shapes")
  return cur - ref


def from_external(scores, higher_is_harder: bool = True) -> jax.Array:
  """Scores from any external per-example measure, oriented so that higher = harder.

  Args:
    scores: float [N] (e.g. sequence length, a quality classifier's output).
    higher_is_harder: False for measures where higher means easier / better (quality);
      they are negated.

  Returns:
    Scores, float [N].

  Examples:
    >>> from reweight.curriculum import scoring
    >>> scoring.from_external([0.5, 0.25], higher_is_harder=False).tolist()
    [-0.5, -0.25]
  """
  x = _scores_1d("scores", scores)
  return x if higher_is_harder else -x


def order(scores, ascending: bool = True) -> jax.Array:
  """A stable ordering of the examples by score: easiest first when ``ascending``.

  Ties keep the index order in both directions; NaN scores go last.

  Args:
    scores: float [N].
    ascending: True for lowest score (easiest) first, False for highest first.

  Returns:
    int32 [N], a permutation of ``range(N)``.

  Examples:
    >>> from reweight.curriculum import scoring
    >>> scoring.order([0.3, 0.1, 0.3, 0.2]).tolist()
    [1, 3, 0, 2]
    >>> scoring.order([0.3, 0.1, 0.3, 0.2], ascending=False).tolist()
    [0, 2, 3, 1]
  """
  x = _scores_1d("scores", scores)
  key = x if ascending else -x
  return jnp.argsort(key, stable=True).astype(jnp.int32)


def quality_tiers(scores, num_tiers: int) -> jax.Array:
  r"""Splits the examples into ``num_tiers`` equal-size tiers by score rank.

  tier_i = floor(rank_i K / N) with rank_i the position of example i in the stable
  ascending `order` (K = ``num_tiers``): tier 0 holds the lowest scores, tier K-1 the
  highest; tier sizes differ by at most one. The boundaries ceil(j N / K) are integers
  computed on the host, so there is no overflow for large N.

  Args:
    scores: float [N].
    num_tiers: K, 1 <= K <= N.

  Returns:
    int32 [N], the tier of each example.

  Examples:
    >>> from reweight.curriculum import scoring
    >>> scoring.quality_tiers([5.0, 1.0, 3.0, 2.0, 4.0, 0.0], 3).tolist()
    [2, 0, 1, 1, 2, 0]
  """
  x = _scores_1d("scores", scores)
  n = x.shape[0]
  if isinstance(num_tiers, bool) or not isinstance(num_tiers, (int, np.integer)) \
      or not 1 <= num_tiers <= n:
    raise ValueError(f"num_tiers={num_tiers!r} must be an integer in [1, {n}]")
  k = int(num_tiers)
  perm = jnp.argsort(x, stable=True)
  ranks = jnp.zeros((n,), jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32))
  bounds = jnp.asarray([-(-j * n // k) for j in range(1, k)], jnp.int32)
  return jnp.searchsorted(bounds, ranks, side="right").astype(jnp.int32)


__all__ = [
    "LossEmaState",
    "from_external",
    "from_reference",
    "init_loss_ema",
    "loss_ema_scores",
    "order",
    "quality_tiers",
    "update_loss_ema",
]
