"""MGDA: weights = the min-norm point in the convex hull of the objectives' gradients.

Désidéri's multiple-gradient descent algorithm, as used for multi-task learning by Sener &
Koltun (2018) and as the Pareto descent direction of ParetoDA-style domain adaptation:

.. math::

  \\alpha = \\arg\\min_{\\alpha \\in \\Delta_K} \\Big\\| \\sum_k \\alpha_k g_k \\Big\\|^2

For K = 2 the exact solution (``α`` on ``g_1``, ``1 − α`` on ``g_2``) is

.. math::

  \\alpha = \\mathrm{clip}\\Big(\\frac{(g_2 - g_1)\\cdot g_2}{\\|g_1 - g_2\\|^2}, 0, 1\\Big)

(``α = 1/2`` when ``g_1 = g_2``). For K > 2, ``max_iters`` Frank–Wolfe steps on the Gram
matrix ``M_ij = <g_i, g_j>``, from the uniform point: ``t = argmin_j (Mα)_j``, then the exact
line search between ``α`` and the vertex ``e_t``

.. math::

  \\gamma = \\mathrm{clip}\\Big(\\frac{α^T M α - (Mα)_t}{α^T M α - 2 (Mα)_t + M_{tt}}, 0, 1\\Big),
  \\qquad α \\leftarrow (1-\\gamma) α + \\gamma e_t .

Choices: Sener & Koltun start Frank–Wolfe from the best pairwise (K = 2) solution and stop
at a tolerance; here it starts uniform and runs a fixed number of steps (a static loop that
jits). Gradients are not normalised (their "none" normalisation); normalise the losses
before differentiating if their scales differ wildly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from reweight._checks import check_int
from reweight.objectives.base import (
  ObjectiveWeighting,
  as_losses,
  check_grads,
  check_num_objectives,
  gram,
)


class MGDAState(NamedTuple):
  """State of `mgda`.

  Attributes:
    weights: ``[K]`` the min-norm convex weights ``α`` (on the simplex).
    min_norm: ``|sum_k α_k g_k|^2`` at those weights (0 at a Pareto-stationary point).
    count: number of updates made.
  """

  weights: jax.Array
  min_norm: jax.Array
  count: jax.Array


def min_norm_weights(m: jax.Array, max_iters: int = 100) -> jax.Array:
  """The simplex point minimising ``α^T M α`` for a ``[K, K]`` Gram matrix ``M``.

  Closed form for K = 2 (and K = 1), ``max_iters`` Frank–Wolfe steps from uniform for K > 2.

  Examples:
    >>> import jax.numpy as jnp
    >>> [round(a, 4) for a in min_norm_weights(jnp.array([[1.0, 0.0], [0.0, 4.0]])).tolist()]
    [0.8, 0.2]
  """
  m = jnp.asarray(m, jnp.float32)
  k = m.shape[0]
  if k == 1:
    return jnp.ones(1, jnp.float32)
  if k == 2:
    denom = m[0, 0] - 2 * m[0, 1] + m[1, 1]
    safe = jnp.where(denom > 0, denom, 1.0)
    alpha = jnp.where(denom > 0, jnp.clip((m[1, 1] - m[0, 1]) / safe, 0.0, 1.0), 0.5)
    return jnp.stack([alpha, 1.0 - alpha])

  def step(_, a):
    ma = m @ a
    t = jnp.argmin(ma)
    vv, vt, tt = a @ ma, ma[t], m[t, t]
    denom = vv - 2 * vt + tt
    gamma = jnp.where(denom > 0, jnp.clip((vv - vt) / jnp.where(denom > 0, denom, 1.0),
                                          0.0, 1.0), 0.0)
    return (1 - gamma) * a + gamma * jax.nn.one_hot(t, k, dtype=a.dtype)

  return jax.lax.fori_loop(0, max_iters, step, jnp.full(k, 1.0 / k, jnp.float32))


def mgda(num_objectives: int = 2, *, max_iters: int = 100) -> ObjectiveWeighting:
  """MGDA weights: ``α = argmin_{α ∈ Δ} |Σ_k α_k g_k|²`` from the objectives' gradients.

  ``update(state, *, grads, losses=None)`` reads ``grads``, a sequence of K gradient pytrees
  of the same structure (`reweight.objectives.objective_grads` computes them with one
  forward pass). ``losses``, when given, is only checked for K. Then
  ``combine(losses, state)`` (or ``Σ_k α_k g_k`` directly) is the common descent direction.
  The weights sum to one.

  Args:
    num_objectives: K (default 2).
    max_iters: Frank–Wolfe steps for K > 2 (unused for K <= 2).

  Returns:
    An `ObjectiveWeighting` with state `MGDAState`.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> obj = reweight.objectives.mgda()
    >>> g1, g2 = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 2.0])}
    >>> state = obj.update(obj.init(), grads=[g1, g2])
    >>> [round(a, 4) for a in state.weights.tolist()]  # (g2 - g1).g2 / |g1 - g2|^2 = 4 / 5
    [0.8, 0.2]

  References:
    Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization",
    Comptes Rendus Mathematique 2012.
    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
  """
  k = check_num_objectives(num_objectives)
  iters = check_int("max_iters", max_iters, 1)

  def init():
    return MGDAState(jnp.full(k, 1.0 / k, jnp.float32), jnp.zeros([], jnp.float32),
                     jnp.zeros([], jnp.int32))

  def update(state, *, losses=None, grads=None, step=None, **extras):
    del step, extras
    if losses is not None:
      as_losses(losses, k, "mgda")
    m = gram(check_grads(grads, k, "mgda"))
    alpha = min_norm_weights(m, iters)
    return MGDAState(alpha, alpha @ m @ alpha, state.count + 1)

  return ObjectiveWeighting(init, update)
