"""Parameter paths: '/'-joined key paths of pytree leaves, and selecting leaves by regex.

Shared by `reweight.reparam` (which kernels a reparameterization targets) and
`reweight.optim` (per-parameter budgets and masks). A path joins the keys of a leaf with
'/', e.g. ``{"dense": {"kernel": w}}`` has the leaf path ``"dense/kernel"``; Flax NNX state
leaves end in ``/value``, which `select` lets a regex leave out.

Examples:
  >>> import jax.numpy as jnp
  >>> from reweight import tree_paths
  >>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
  >>> list(tree_paths.flatten_with_paths(params))
  ['dense/bias', 'dense/kernel']
  >>> tree_paths.select(params, ".*kernel")
  ['dense/kernel']
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax

from reweight._types import PyTree


def path_str(path) -> str:
  """'/'-joined string of a `jax.tree_util` key path: ``('dense', 'kernel') -> 'dense/kernel'``."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def flatten_with_paths(tree: PyTree) -> dict[str, Any]:
  """Flat ``{path: leaf}`` dict of a pytree (insertion order = tree order)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): leaf for p, leaf in leaves}


def unflatten_like(tree: PyTree, flat: Mapping[str, Any]) -> PyTree:
  """Inverse of `flatten_with_paths` given a tree of the original structure."""
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return jax.tree_util.tree_unflatten(treedef, [flat[path_str(p)] for p, _ in paths_leaves])


def _matches(pattern: re.Pattern, path: str) -> bool:
  """``pattern.fullmatch`` on ``path`` or, for Flax NNX state, on it without ``/value``.

  ``nnx.state(model)`` flattens to paths such as ``"linear/kernel/value"``; stripping the
  trailing ``/value`` component lets ``targets=".*kernel"`` select them as it does in linen.
  """
  if pattern.fullmatch(path):
    return True
  return path.endswith("/value") and pattern.fullmatch(path[: -len("/value")]) is not None


def select(params: PyTree, targets: str, *, ndim: int | None = 2) -> list[str]:
  """Paths of the leaves whose path matches ``targets`` (``re.fullmatch``).

  A trailing ``/value`` component (Flax NNX ``State`` leaves) may be left out of the
  regex: ``".*kernel"`` matches ``"dense/kernel/value"``.

  Args:
    params: a parameter pytree.
    targets: a regular expression over '/'-joined leaf paths.
    ndim: if not None, only leaves with this number of dimensions are selected.

  Raises:
    ValueError: if nothing matches, naming the regex and the available paths.
  """
  flat = flatten_with_paths(params)
  pattern = re.compile(targets)
  hits = [
      p for p, v in flat.items()
      if _matches(pattern, p) and (ndim is None or getattr(v, "ndim", None) == ndim)
  ]
  if not hits:
    raise ValueError(
        f"targets={targets!r} matches no parameter"
        + (f" with ndim={ndim}" if ndim is not None else "")
        + f"; available paths: {sorted(flat)}"
    )
  return hits


def replace_at(tree: PyTree, new: Mapping[str, Any]) -> PyTree:
  """Copy of ``tree`` with the leaves at the '/'-joined paths in ``new`` replaced.

  Raises:
    ValueError: if a path of ``new`` is not a leaf path of ``tree``.
  """
  flat = flatten_with_paths(tree)
  missing = sorted(set(new) - set(flat))
  if missing:
    raise ValueError(f"paths {missing} are not leaves of the tree; available: {sorted(flat)}")
  flat.update(new)
  return unflatten_like(tree, flat)
