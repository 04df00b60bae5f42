"""What every group method shares: a distribution ``probs`` over groups, and its checks.

A group method changes either **how much each group's loss counts** (a `reweight.Weighting`
that reads ``groups=``, e.g. `reweight.group.group_dro`) or **how often each group is
drawn** (a `MixturePolicy` whose state a sampler reads, e.g. `reweight.group.temperature`).
Both keep their current distribution over groups in a NamedTuple state with a field
``probs`` (``[num_groups]``, sums to one), so the same state drives loss weights, a sampler
(`reweight.data.online_mixture_sampler`), logs, plots and orbax checkpoints.

Examples:
  >>> import reweight
  >>> policy = reweight.group.stratified(4)
  >>> state = policy.update(policy.init(), step=0)
  >>> state.probs.tolist()
  [0.25, 0.25, 0.25, 0.25]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from reweight import parallel
from reweight._checks import check_int, is_traced
from reweight._types import PyTree
from reweight.parallel import AxisName

Array = jax.Array


class MixturePolicy(NamedTuple):
  """A pure rule that moves a distribution over groups (what a sampler draws).

  Attributes:
    init: ``init() -> state``; the state is a NamedTuple with a ``probs`` field.
    update: ``update(state, *, step=None, **inputs) -> state``; inputs a policy does not
      use are ignored (eval losses, rewards, ...).
  """

  init: Callable[[], PyTree]
  update: Callable[..., PyTree]


class MixtureState(NamedTuple):
  """State of a policy that needs nothing but its proportions and an update count."""

  probs: Array
  count: Array


def probs_of(state: PyTree) -> Array:
  """The ``probs`` of a group method's state (a policy's, `group_dro`'s or `doremi`'s)."""
  probs = getattr(state, "probs", None)
  if probs is None:
    raise ValueError(f"a {type(state).__name__} has no `probs` field; pass the state of a "
                     "reweight.group weighting or mixture policy")
  return probs


def check_num_groups(num_groups) -> int:
  """``num_groups`` as an int >= 1, or a ValueError naming it."""
  return check_int("num_groups", num_groups, 1, whole_floats=True)


def check_probs(probs, num_groups: int | None = None, name: str = "probs",
                atol: float = 1e-5) -> np.ndarray:
  """Host-side check that ``probs`` is a distribution over ``num_groups`` groups.

  Returns:
    ``probs`` as float64 NumPy.

  Raises:
    ValueError: naming the bad value if ``probs`` is not 1-D, has the wrong length, holds a
      negative or non-finite entry, or does not sum to 1 within ``atol``.
  """
  p = np.asarray(probs, np.float64)
  if p.ndim != 1 or p.size == 0:
    raise ValueError(f"{name} must be a 1-D array over groups, got shape {p.shape}")
  if num_groups is not None and p.shape[0] != num_groups:
    raise ValueError(f"{name} has {p.shape[0]} entries but num_groups={num_groups}")
  if not np.all(np.isfinite(p)) or p.min() < 0:
    raise ValueError(f"{name}={p.tolist()} must be finite and non-negative")
  if abs(p.sum() - 1.0) > atol:
    raise ValueError(f"{name}={p.tolist()} sums to {p.sum():.6g}, not 1")
  return p


def check_sizes(sizes, name: str = "sizes") -> np.ndarray:
  """Host-side check of per-group sizes (non-negative, finite, positive sum)."""
  n = np.asarray(sizes, np.float64)
  if n.ndim != 1 or n.size == 0:
    raise ValueError(f"{name} must be a 1-D array with one size per group, got shape {n.shape}")
  if not np.all(np.isfinite(n)) or n.min() < 0 or n.sum() <= 0:
    raise ValueError(f"{name}={n.tolist()} must be finite, non-negative, with a positive sum")
  return n


def check_groups(groups, num_groups: int, shape=None) -> Array:
  """``groups`` as an int array; a ValueError when concrete ids fall outside the range.

  Under `jax.jit` the ids are traced and cannot be checked here: callers then treat an id
  outside ``[0, num_groups)`` as invalid (weight 0), and the data side checks them on the
  host (`reweight.data.online_mixture_sampler` does).
  """
  if groups is None:
    raise ValueError("this group weighting needs the groups= extra: put a 'group' field in "
                     "the batch (or pass groups= to update)")
  groups = jnp.asarray(groups)
  if shape is not None:
    chex.assert_shape(
        groups, tuple(shape), exception_type=ValueError,
        custom_message=f"groups has shape {groups.shape} but losses have shape {tuple(shape)}")
  chex.assert_type(
      groups, int, exception_type=ValueError,
      custom_message=f"groups must hold integer group ids, got dtype {groups.dtype}")
  if not is_traced(groups) and groups.size:
    lo, hi = int(groups.min()), int(groups.max())
    if lo < 0 or hi >= num_groups:
      raise ValueError(f"group ids span [{lo}, {hi}], outside [0, num_groups={num_groups})")
  return groups


def in_range(groups: Array, valid: Array, num_groups: int) -> tuple[Array, Array]:
  """``(inside, ids)``: the valid examples whose id is in ``[0, num_groups)``, and the ids
  with every other example's set to 0 (safe to index with; mask with ``inside``)."""
  inside = valid & (groups >= 0) & (groups < num_groups)
  return inside, jnp.where(inside, groups, 0)


def group_sums(values: Array, groups: Array, valid: Array, num_groups: int,
               axis_name: AxisName = None) -> tuple[Array, Array]:
  """Per-group ``(sum of values, count)`` over the valid examples of the global batch.

  Examples whose id is outside ``[0, num_groups)`` count nowhere.
  """
  inside, ids = in_range(groups, valid, num_groups)
  sums = parallel.segment_sum(jnp.where(inside, values, 0.0).astype(jnp.float32), ids,
                              num_groups, axis_name)
  counts = parallel.segment_sum(inside.astype(jnp.float32), ids, num_groups, axis_name)
  return sums, counts


def group_diagnostics(weights: Array, losses: Array, groups: Array, valid: Array,
                      num_groups: int, axis_name: AxisName = None) -> dict[str, Array]:
  """Per-group mean loss, example count and share of the total weight, for logs and plots.

  Examples:
    >>> import jax.numpy as jnp
    >>> d = group_diagnostics(jnp.array([1.0, 1.0, 2.0]), jnp.array([1.0, 3.0, 5.0]),
    ...                       jnp.array([0, 0, 1]), jnp.array([True, True, True]), 2)
    >>> d["group_loss"].tolist(), d["group_weight_share"].tolist()
    ([2.0, 5.0], [0.5, 0.5])
  """
  loss_sum, count = group_sums(losses, groups, valid, num_groups, axis_name)
  weight_sum, _ = group_sums(weights, groups, valid, num_groups, axis_name)
  total = jnp.sum(weight_sum)
  return {
      "group_loss": loss_sum / jnp.maximum(count, 1.0),
      "group_count": count,
      "group_weight_share": weight_sum / jnp.where(total > 0, total, 1.0),
  }
