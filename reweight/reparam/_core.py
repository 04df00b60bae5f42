"""The `Reparam` abstraction shared by every reparameterization.

A reparameterization splits a parameter pytree into a `trainable` part (what the optimizer
sees) and a `frozen` part, and maps them back to parameters of the original structure:

    trainable, frozen = reparam.init(params, key, **data)
    params = reparam.apply(trainable, frozen)

Targets are chosen by a regular expression matched (``re.fullmatch``) against the
'/'-joined path of each leaf, e.g. ``r".*(query|value)/kernel"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.extend.core as jex

from reweight._types import PyTree

# The path helpers live in `reweight.tree_paths` (``reweight.optim`` uses them too).
from reweight.tree_paths import (  # noqa: F401
  flatten_with_paths,
  path_str,
  replace_at,
  select,
  unflatten_like,
)


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
