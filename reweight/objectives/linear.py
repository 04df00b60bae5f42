"""Static linear scalarisation: ``L = sum_k w_k l_k`` with fixed weights (the baseline)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reweight.objectives.base import ObjectiveWeighting, as_losses


class LinearState(NamedTuple):
  """State of `linear`.

  Attributes:
    weights: ``[K]`` the fixed weights.
  """

  weights: jax.Array


def linear(weights) -> ObjectiveWeighting:
  """Fixed objective weights: ``L = sum_k w_k l_k`` (linear scalarisation).

  .. math::

    w_{t+1} = w_t = w

  ``update`` only checks that ``losses`` has K entries. Linear scalarisation reaches only
  the convex part of a Pareto front; the dynamic schemes in `reweight.objectives` adapt
  ``w`` instead.

  Args:
    weights: K finite non-negative floats (not normalised).

  Returns:
    An `ObjectiveWeighting` with state `LinearState`.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> obj = reweight.objectives.linear([1.0, 0.1])
    >>> state = obj.update(obj.init(), losses=jnp.array([2.0, 3.0]))
    >>> loss, info = reweight.objectives.combine(jnp.array([2.0, 3.0]), state)
    >>> round(float(loss), 4)
    2.3

  References:
    Miettinen, "Nonlinear Multiobjective Optimization", Springer 1999 (weighted-sum method).
  """
  w = np.asarray(weights, np.float64)
  if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError(f"weights={weights!r} must be a non-empty 1-D sequence of finite "
                     "floats >= 0")
  k = w.size
  w = jnp.asarray(w, jnp.float32)

  def init():
    return LinearState(w)

  def update(state, *, losses, grads=None, step=None, **extras):
    del grads, step, extras
    as_losses(losses, k, "linear")
    return state

  return ObjectiveWeighting(init, update)
