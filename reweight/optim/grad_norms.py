"""Record the global gradient norm of every step inside the optimizer state.

The refined schedule of Defazio et al. (`reweight.schedules.refined`) needs the per-step
gradient norms of a previous run. `record_grad_norms` is an identity gradient
transformation that writes the norm of the incoming updates into a fixed-size buffer
in its state, so it costs one reduction per step, jits, and is checkpointed with the
rest of the optimizer state. Put it first in the chain to record raw gradients:

  opt = optax.chain(record_grad_norms(total_steps), optax.sgd(lr))

References:
  Defazio et al., "When, Why and How Much? Adaptive Learning Rate Scheduling by
  Refinement", 2023.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reweight._checks import check_choice, check_int

Norm = Literal["l2", "l1"]
_ORDS = {"l2": 2, "l1": 1}


class GradNormsState(NamedTuple):
  """State of `record_grad_norms`.

  Attributes:
    norms: float32 [capacity], the norm at step i in ``norms[i]`` (0 until written).
    count: int32 scalar, the number of updates seen (including dropped ones).
  """
  norms: jax.Array
  count: jax.Array


def record_grad_norms(capacity: int, norm: Norm = "l2"
                      ) -> optax.GradientTransformationExtraArgs:
  r"""Identity transformation that stores ``||g_t||`` of each step's updates.

  At the t-th call (t = 0, 1, ...): ``norms[t] = ||updates||`` over the whole pytree
  (global l2 norm ``sqrt(sum_leaves sum g^2)``, or l1 norm ``sum |g|`` with
  ``norm="l1"``), ``count = t + 1``; the updates pass through unchanged. Steps beyond
  ``capacity`` are counted but not stored (the buffer keeps the first ``capacity``
  norms), so size it to the run length.

  Args:
    capacity: how many steps to record.
    norm: ``"l2"`` (default) or ``"l1"``.

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `GradNormsState`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from reweight.optim import grad_norms
    >>> opt = optax.chain(grad_norms.record_grad_norms(8), optax.sgd(0.1))
    >>> params = {"w": jnp.zeros(2)}
    >>> state = opt.init(params)
    >>> _, state = opt.update({"w": jnp.array([3.0, 4.0])}, state, params)
    >>> grad_norms.recorded_norms(state).tolist()
    [5.0]

  References:
    Defazio et al., "When, Why and How Much? Adaptive Learning Rate Scheduling by
    Refinement", 2023.
  """
  capacity = check_int("capacity", capacity, 1)
  check_choice("norm", norm, _ORDS)
  ord_ = _ORDS[norm]

  def init_fn(params):
    del params
    return GradNormsState(norms=jnp.zeros((int(capacity),), jnp.float32),
                          count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    value = optax.tree.norm(updates, ord=ord_).astype(jnp.float32)
    norms = state.norms.at[state.count].set(value, mode="drop")
    return updates, GradNormsState(norms=norms, count=state.count + 1)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_grad_norms_state(opt_state: Any) -> GradNormsState:
  """The unique `GradNormsState` inside ``opt_state`` (searched by type)."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
      x, GradNormsState)) if isinstance(s, GradNormsState)]
  if len(found) != 1:
    raise ValueError(
        f"expected exactly one GradNormsState in the optimizer state, found {len(found)}")
  return found[0]


def recorded_norms(opt_state: Any) -> np.ndarray:
  """The norms recorded so far, ``norms[:min(count, capacity)]``, as a NumPy array.

  Searches ``opt_state`` (e.g. an `optax.chain` state, possibly nested in
  `optax.MultiSteps` or `optax.inject_hyperparams` states) for the `GradNormsState` by
  type. Host-side helper (it reads ``count``): call it outside `jax.jit`.

  Args:
    opt_state: an optimizer state containing exactly one `GradNormsState`.

  Returns:
    A float32 array of shape [min(count, capacity)].
  """
  state = find_grad_norms_state(opt_state)
  n = min(int(state.count), state.norms.shape[0])
  return np.asarray(state.norms[:n])


__all__ = ["GradNormsState", "find_grad_norms_state", "record_grad_norms",
           "recorded_norms"]
