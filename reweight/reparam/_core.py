"""The `Reparam` abstraction and parameter-path utilities shared by every reparameterization.

A reparameterization splits a parameter pytree into a `trainable` part (what the optimizer
sees) and a `frozen` part, and maps them back to parameters of the original structure:

    trainable, frozen = reparam.init(params, key, **data)
    params = reparam.apply(trainable, frozen)

Targets are chosen by a regular expression matched (``re.fullmatch``) against the
'/'-joined path of each leaf, e.g. ``r".*(query|value)/kernel"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex

PyTree = Any


class Reparam(NamedTuple):
  """A pair of pure functions ``init`` and ``apply``.

  Attributes:
    init: ``init(params, key, **data) -> (trainable, frozen)``.
    apply: ``apply(trainable, frozen) -> params`` with the structure of the original
      ``params``. Merging a reparameterization is calling ``apply``.
    unapply: optional inverse, ``unapply(trainable, params) -> frozen`` such that
      ``apply(trainable, unapply(trainable, params)) == params``; None where the map is not
      invertible (used by `reweight.reparam.unmerge`).
  """

  init: Callable[..., tuple[PyTree, PyTree]]
  apply: Callable[[PyTree, PyTree], PyTree]
  unapply: Callable[[PyTree, PyTree], PyTree] | None = None


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


def sub_jaxpr(eqn) -> tuple | None:
  """``(jaxpr, consts)`` of the one sub-jaxpr of a call-like equation (``jit``,
  ``custom_jvp_call``, ``remat``, ...), or None when it has none."""
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    sub = eqn.params.get(key)
    if isinstance(sub, jex.ClosedJaxpr):
      return sub.jaxpr, sub.consts
    if isinstance(sub, jex.Jaxpr):
      return sub, ()
  return None


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


def additive(init: Callable[..., tuple[PyTree, PyTree]],
             delta: Callable[[Any, Any], Any]) -> Reparam:
  """A `Reparam` of the form ``W' = W + delta(trainable[path])`` on the targeted leaves.

  Args:
    init: the reparameterization's ``init(params, key, **data) -> (trainable, frozen)``,
      with ``trainable`` a ``{path: entry}`` dict.
    delta: ``delta(entry, dtype) -> increment`` of the leaf's shape, cast to ``dtype``.

  Returns:
    ``Reparam(init, apply, unapply)``, where ``unapply`` subtracts the same increment.
  """

  def shifted(trainable: PyTree, tree: PyTree, sign: float) -> PyTree:
    flat = flatten_with_paths(tree)
    return replace_at(tree, {p: flat[p] + sign * delta(e, flat[p].dtype)
                             for p, e in trainable.items()})

  return Reparam(init, lambda trainable, frozen: shifted(trainable, frozen, 1.0),
                 lambda trainable, params: shifted(trainable, params, -1.0))
