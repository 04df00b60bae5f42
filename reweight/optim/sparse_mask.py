"""LIFT: sparse fine-tuning of the principal weights of a low-rank approximation.

For each target matrix ``W`` (m x n), LIFT selects the ``k`` entries of largest magnitude of
its rank-``f`` approximation,

    W' = U_f S_f V_f^T,   mask = top-k(|W'|),   k = (m + n) * lora_rank  (LoRA's budget),

and updates only those entries (with AdamW in the paper). Every ``refresh_every`` steps the
mask is recomputed from the current weights; optimizer moments are kept for entries that
stay in the mask and start at zero for entries that enter it.

Implementation: for each target the state holds the ``k`` flat indices of the mask (``k`` is
fixed, so shapes are static and everything jits). The inner optimizer runs on the gathered
``[k]`` vectors (gradients and parameters), so its state is ``O(k)`` per target, not
``O(m n)``. On refresh, every parameter-shaped tree of the inner state (found with
`optax.tree_map_params`, e.g. Adam's ``mu`` and ``nu``) is re-indexed: entry ``j`` of the new
mask takes the old value of the same flat index if that index was in the old mask, else 0.
Scalars such as Adam's step count are kept (so bias correction continues with the global step
count, also for newly entered entries).

References:
  Liu et al., "LIFT the Veil for the Truth: Principal Weights Emerge after Rank Reduction for
  Reasoning-Focused Supervised Fine-Tuning", ICML 2025.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import optax

from reweight._checks import check_choice
from reweight.tree_paths import flatten_with_paths, select

Others = Literal["inner", "freeze"]
_VALID_OTHERS = get_args(Others)


class LiftState(NamedTuple):
  """State of `lift`.

  Attributes:
    count: number of updates done.
    indices: ``{path: int32[k]}`` sorted flat indices of the mask of each target.
    inner: state of the inner optimizer on the gathered tree.
  """

  count: jax.Array
  indices: dict[str, jax.Array]
  inner: optax.OptState


def principal_mask_indices(w: jax.Array, rank: int, k: int) -> jax.Array:
  """Sorted flat indices of the ``k`` largest entries of ``|U_f S_f V_f^T|`` (f = rank).

  Args:
    w: a matrix ``[m, n]``.
    rank: the rank ``f`` of the approximation (clipped to ``min(m, n)``).
    k: number of entries (``<= m n``).

  Returns:
    ``int32[k]``, sorted ascending.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.array([[3.0, 0.1], [0.2, -1.0]])
    >>> principal_mask_indices(w, rank=2, k=2)
    Array([0, 3], dtype=int32)

  References:
    Liu et al., "LIFT the Veil for the Truth", ICML 2025.
  """
  w = w.astype(jnp.float32)
  u, s, vt = jnp.linalg.svd(w, full_matrices=False)
  f = min(rank, s.shape[0])
  approx = (u[:, :f] * s[:f]) @ vt[:f]
  _, idx = jax.lax.top_k(jnp.abs(approx).reshape(-1), k)
  return jnp.sort(idx).astype(jnp.int32)


def _remap(old_idx: jax.Array, new_idx: jax.Array, old_vals: jax.Array) -> jax.Array:
  """Values for ``new_idx``: the old value where the index was in ``old_idx``, else 0."""
  pos = jnp.clip(jnp.searchsorted(old_idx, new_idx), 0, old_idx.shape[0] - 1)
  found = old_idx[pos] == new_idx
  return jnp.where(found, old_vals[pos], jnp.zeros_like(old_vals[pos]))


def lift(
    inner: optax.GradientTransformation,
    rank: int,
    *,
    lora_rank: int | None = None,
    k: int | None = None,
    refresh_every: int = 100,
    targets: str = r".*kernel",
    others: Others = "inner",
) -> optax.GradientTransformationExtraArgs:
  """LIFT: update only the principal weights (top-k of a low-rank approximation).

  For each 2-D leaf whose path matches ``targets``:

      mask = top-k |U_f S_f V_f^T|  of the current W (f = rank),
      u_W[mask] = inner update of the gathered W[mask] (inner state only on the mask),
      u_W[~mask] = 0,

  with ``k = (m + n) * lora_rank`` by default (the parameter count of a rank-``lora_rank``
  LoRA of that matrix, capped at ``m n``). The mask is recomputed from the current parameters
  every ``refresh_every`` updates; inner moments are kept on the overlap of the old and new
  masks and are zero for entries that enter the mask.

  Args:
    inner: optimizer applied to the masked entries (AdamW in the paper), e.g.
      ``optax.adamw(1e-4)``. It must be element-wise (it sees ``[k]`` vectors).
    rank: rank ``f`` of the approximation that selects the principal weights.
    lora_rank: LoRA-equivalent budget, ``k = (m + n) * lora_rank``; defaults to ``rank``.
    k: explicit number of entries per target matrix (overrides ``lora_rank``).
    refresh_every: refresh period in updates (``0`` never refreshes).
    targets: regex over '/'-joined parameter paths (``re.fullmatch``, matched by
      `reweight.tree_paths.select` as in `reweight.reparam`, so a Flax NNX state's trailing
      ``/value`` may be left out); only 2-D leaves.
    others: non-target leaves: ``"inner"`` (updated by ``inner`` as usual) or ``"freeze"``
      (zero updates, no state).

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  Raises:
    ValueError: on bad arguments, or at ``init`` if no 2-D leaf matches ``targets``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> params = {"dense": {"kernel": jax.random.normal(jax.random.key(0), (6, 4))}}
    >>> opt = lift(optax.adam(1e-2), rank=2, lora_rank=1, refresh_every=10)
    >>> state = opt.init(params)
    >>> state.indices["dense/kernel"].shape  # k = (6 + 4) * 1
    (10,)
    >>> u, state = opt.update(params, state, params)
    >>> int(jnp.sum(u["dense"]["kernel"] != 0))
    10

  References:
    Liu et al., "LIFT the Veil for the Truth: Principal Weights Emerge after Rank Reduction
    for Reasoning-Focused Supervised Fine-Tuning", ICML 2025.
  """
  check_choice("others", others, _VALID_OTHERS)
  if rank < 1:
    raise ValueError(f"rank={rank!r} must be >= 1")
  if lora_rank is not None and lora_rank < 1:
    raise ValueError(f"lora_rank={lora_rank!r} must be >= 1")
  if k is not None and k < 1:
    raise ValueError(f"k={k!r} must be >= 1")
  if refresh_every < 0:
    raise ValueError(f"refresh_every={refresh_every!r} must be >= 0")
  lora_rank = rank if lora_rank is None else lora_rank
  inner = optax.with_extra_args_support(inner)

  def target_paths(tree) -> list[tuple[str, bool]]:
    """``(path, is_target)`` of every leaf in tree order; raises if nothing matches."""
    hits = set(select(tree, targets, ndim=2))
    return [(path, path in hits) for path in flatten_with_paths(tree)]

  def num_entries(shape) -> int:
    m, n = shape
    return min(m * n, k if k is not None else (m + n) * lora_rank)

  def gather(tree, indices, info):
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for (path, is_target), x in zip(info, leaves, strict=True):
      if is_target:
        out.append(x.reshape(-1)[indices[path]])
      elif others == "inner":
        out.append(x)
      else:
        out.append(optax.MaskedNode())
    return jax.tree.unflatten(treedef, out)

  def rest_trees(treedef, info, old, new):
    """Trees shaped like the gathered tree carrying (old_idx, new_idx, is_target)."""
    olds, news = [], []
    for path, is_target in info:
      if is_target:
        olds.append(old[path])
        news.append(new[path])
      elif others == "inner":
        olds.append(jnp.zeros((0,), jnp.int32))
        news.append(jnp.zeros((0,), jnp.int32))
      else:
        olds.append(optax.MaskedNode())
        news.append(optax.MaskedNode())
    return jax.tree.unflatten(treedef, olds), jax.tree.unflatten(treedef, news)

  def init(params):
    info = target_paths(params)
    flat = dict(zip([p for p, _ in info], jax.tree.leaves(params), strict=True))
    indices = {
        path: principal_mask_indices(flat[path], rank, num_entries(flat[path].shape))
        for path, t in info if t
    }
    inner_state = inner.init(gather(params, indices, info))
    return LiftState(jnp.zeros([], jnp.int32), indices, inner_state)

  def update(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("lift needs params: call update(updates, state, params)")
    info = target_paths(params)
    leaves_p, treedef = jax.tree.flatten(params)
    flat_p = dict(zip([p for p, _ in info], leaves_p, strict=True))

    def refresh(operand):
      old_indices, inner_state = operand
      new_indices = {
          path: principal_mask_indices(flat_p[path], rank, old.shape[0])
          for path, old in old_indices.items()
      }
      olds, news = rest_trees(treedef, info, old_indices, new_indices)

      def remap(vals, old_idx, new_idx):
        if old_idx.shape[0] == 0 or vals.shape != old_idx.shape:
          return vals
        return _remap(old_idx, new_idx, vals)

      inner_state = optax.tree_map_params(inner, remap, inner_state, olds, news)
      return new_indices, inner_state

    operand = (state.indices, state.inner)
    if refresh_every:
      do_refresh = (state.count > 0) & (state.count % refresh_every == 0)
      indices, inner_state = jax.lax.cond(do_refresh, refresh, lambda x: x, operand)
    else:
      indices, inner_state = operand

    g = gather(updates, indices, info)
    p = gather(params, indices, info)
    u, inner_state = inner.update(g, inner_state, p, **extra_args)

    # The gathered tree's leaves, in order: every leaf ("inner") or only the targets.
    gathered = iter(jax.tree.leaves(u))
    out = []
    for (path, is_target), g_leaf in zip(info, treedef.flatten_up_to(updates), strict=True):
      if is_target:
        vals = next(gathered).astype(g_leaf.dtype)
        full = jnp.zeros(g_leaf.size, g_leaf.dtype).at[indices[path]].set(vals)
        out.append(full.reshape(g_leaf.shape))
      elif others == "inner":
        out.append(next(gathered))
      else:
        out.append(jnp.zeros_like(g_leaf))
    new_state = LiftState(optax.safe_increment(state.count), indices, inner_state)
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init, update)
