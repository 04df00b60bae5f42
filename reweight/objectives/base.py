"""The `ObjectiveWeighting` protocol, `combine` and the per-objective gradient helpers.

An objective weighting decides how much each of K **objectives** (losses, or constraint
values) counts in the scalar that is differentiated. It is a pair of pure functions::

  init() -> state
  update(state, *, losses, grads=None, step=None, **extras) -> state

``losses`` is a ``[K]`` array of objective values (global-batch means), ``grads`` a sequence
of K gradient pytrees (only the gradient-based schemes read them; see `objective_grads`),
and the state is a NamedTuple whose ``weights`` field (``[K]``, non-negative) multiplies the
objectives this step (`combine`). Unused extras are ignored.

Sign convention: every objective is a **loss**, minimised. A reward ``r`` enters as ``-r``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reweight._types import PyTree


class ObjectiveWeighting(NamedTuple):
  """Weights over K objectives: ``init() -> state``, ``update(state, *, losses, ...) -> state``.

  The state is a NamedTuple with a ``weights`` field (``[K]``, non-negative, finite) that
  `combine` uses to scalarise the objectives.
  """

  init: Callable[..., Any]
  update: Callable[..., Any]


def check_num_objectives(num_objectives: Any, minimum: int = 1) -> int:
  """``int(num_objectives)`` when it is an integer ``>= minimum``; else ValueError."""
  if (isinstance(num_objectives, bool)
      or not isinstance(num_objectives, int | np.integer) or num_objectives < minimum):
    raise ValueError(f"num_objectives={num_objectives!r} must be an integer >= {minimum}")
  return int(num_objectives)


def as_losses(losses: Any, num_objectives: int | None, who: str) -> jax.Array:
  """``losses`` as a float ``[K]`` array; a ValueError naming the shape when K differs."""
  if losses is None:
    raise ValueError(f"{who} needs losses= (a [K] array of objective values)")
  if isinstance(losses, Mapping):
    losses = list(losses.values())
  if isinstance(losses, list | tuple):
    losses = jnp.stack([jnp.asarray(l) for l in losses])
  losses = jnp.asarray(losses)
  if not jnp.issubdtype(losses.dtype, jnp.floating):
    losses = losses.astype(jnp.float32)
  if losses.ndim != 1 or (num_objectives is not None and losses.shape[0] != num_objectives):
    want = "[K]" if num_objectives is None else f"[{num_objectives}]"
    raise ValueError(f"{who}: losses has shape {tuple(losses.shape)}, expected {want} "
                     "(one value per objective)")
  return losses


def check_grads(grads: Any, num_objectives: int | None, who: str) -> list[PyTree]:
  """``grads`` as a list of K pytrees of the same structure; clear errors otherwise."""
  if grads is None:
    raise ValueError(f"{who} needs grads= (a sequence of K gradient pytrees, e.g. from "
                     "reweight.objectives.objective_grads)")
  if isinstance(grads, Mapping) or not isinstance(grads, Sequence):
    raise ValueError(f"{who}: grads must be a sequence (list or tuple) of K gradient "
                     f"pytrees, got {type(grads).__name__}")
  grads = list(grads)
  if num_objectives is not None and len(grads) != num_objectives:
    raise ValueError(f"{who}: got {len(grads)} gradients, expected {num_objectives} (one "
                     "per objective)")
  if not grads:
    raise ValueError(f"{who}: grads is empty")
  structure = jax.tree.structure(grads[0])
  for k, g in enumerate(grads[1:], 1):
    if jax.tree.structure(g) != structure:
      raise ValueError(f"{who}: grads[{k}] has structure {jax.tree.structure(g)}, but "
                       f"grads[0] has {structure}")
  return grads


def gram(grads: Sequence[PyTree]) -> jax.Array:
  """``[K, K]`` matrix of inner products ``<g_i, g_j>`` summed over all leaves (float32).

  Examples:
    >>> import jax.numpy as jnp
    >>> gram([{"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([1.0, 2.0])}]).tolist()
    [[1.0, 1.0], [1.0, 5.0]]
  """
  leaves = [jax.tree.leaves(g) for g in grads]
  k = len(grads)
  out = jnp.zeros((k, k), jnp.float32)
  for parts in zip(*leaves):
    x = jnp.stack([jnp.ravel(p).astype(jnp.float32) for p in parts])
    out = out + jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  return out


def objective_grads(loss_fns: Callable[..., jax.Array] | Sequence[Callable[..., jax.Array]],
                    params: PyTree, *args: Any, **kwargs: Any
                    ) -> tuple[jax.Array, tuple[PyTree, ...]]:
  """Objective values and one gradient pytree per objective, from a single forward pass.

  The K objectives are stacked into one function ``p -> [K]`` and differentiated with one
  `jax.vjp` (one forward pass), whose pullback is `jax.vmap`-ed over the K unit cotangents
  (the rows of a reverse-mode Jacobian, as `jax.jacrev` does).

  Args:
    loss_fns: either one function ``f(params, *args, **kwargs) -> [K]`` or a sequence of K
      functions ``f_k(params, *args, **kwargs) -> scalar``.
    params: the pytree to differentiate.
    *args: passed to every function (e.g. the batch).
    **kwargs: passed to every function.

  Returns:
    ``(losses, grads)``: ``losses`` ``[K]``, ``grads`` a tuple of K pytrees shaped like
    ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> fns = [lambda p: jnp.sum(p ** 2), lambda p: jnp.sum(p)]
    >>> losses, grads = objective_grads(fns, jnp.array([1.0, 2.0]))
    >>> losses.tolist(), [g.tolist() for g in grads]
    ([5.0, 3.0], [[2.0, 4.0], [1.0, 1.0]])
  """
  if callable(loss_fns):
    stacked = lambda p: jnp.asarray(loss_fns(p, *args, **kwargs))
  else:
    fns = list(loss_fns)
    if not fns or not all(callable(f) for f in fns):
      raise ValueError("loss_fns must be a callable returning [K] objectives or a non-empty "
                       "sequence of K callables returning scalars")
    stacked = lambda p: jnp.stack([jnp.asarray(f(p, *args, **kwargs)) for f in fns])
  losses, pullback = jax.vjp(stacked, params)
  if losses.ndim != 1:
    raise ValueError(f"the stacked objectives have shape {losses.shape}, expected [K]")
  k = losses.shape[0]
  (jac,) = jax.vmap(pullback)(jnp.eye(k, dtype=losses.dtype))
  grads = tuple(jax.tree.map(lambda x, i=i: x[i], jac) for i in range(k))
  return losses, grads


def combine(losses: Mapping[str, jax.Array] | Sequence[jax.Array] | jax.Array, state: Any
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Scalarises K objectives with the weights of an objective-weighting state.

  .. math::

    L = \\sum_k \\mathrm{sg}(w_k)\\, s_k (l_k - o_k)

  with ``w = state.weights``; ``s`` and ``o`` are ``state.signs`` and ``state.offsets``
  when the state has them (`lagrangian`: ``o = [0, θ]``, so ``L`` is the Lagrangian itself)
  and 1 and 0 otherwise. The weights are stop-gradient-ed: gradients flow through the
  losses only.

  Args:
    losses: a ``[K]`` array, a sequence of K scalars, or a dict of K scalars (taken in the
      dict's iteration order; note that a dict passed *through* `jax.jit` arguments comes
      back with its keys sorted, so name objectives so that this order is K's order, or
      pass an array).
    state: a state whose ``weights`` field is ``[K]``.

  Returns:
    ``(loss, info)``: the scalar loss and a dict with ``weights``, ``losses`` (``[K]``)
    and ``terms`` (``w_k s_k (l_k - o_k)``, ``[K]``).

  Examples:
    >>> import reweight
    >>> st = reweight.objectives.linear([1.0, 0.5]).init()
    >>> loss, info = combine({"task": 2.0, "aux": 4.0}, st)
    >>> float(loss)
    4.0
  """
  if not hasattr(state, "weights"):
    raise ValueError(f"state must have a `weights` field, got {type(state).__name__}")
  weights = jax.lax.stop_gradient(jnp.asarray(state.weights))
  values = as_losses(losses, int(weights.shape[0]), "combine")
  offsets = jnp.asarray(getattr(state, "offsets", 0.0))
  signs = jnp.asarray(getattr(state, "signs", 1.0))
  terms = weights * signs * (values - jax.lax.stop_gradient(offsets))
  return jnp.sum(terms), {"weights": weights, "losses": values, "terms": terms}


__all__ = ["ObjectiveWeighting", "as_losses", "check_grads", "check_num_objectives",
           "combine", "gram", "objective_grads"]
