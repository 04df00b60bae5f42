"""Gradient-based objective weight optimisation for online multi-objective alignment.

The second dynamic reward weighting scheme of Lu et al. (2025) optimises the objective
weights with gradients during online RL. ALGORITHMS.md has only the abstract ([abs]): it
fixes that the weights are optimised by a gradient method during training, over the
objectives' rewards. The rule here is our choice: exponentiated-gradient (mirror) ascent on
the simplex of the total first-order improvement that a step along the weighted direction
brings to all objectives.

With unit-normalised objective gradients ``ĝ_k = g_k / |g_k|`` (0 for a zero gradient) and
``d(w) = Σ_k w_k ĝ_k``, a small step along ``−d`` lowers objective ``j`` by
``<ĝ_j, d(w)>`` (per unit of gradient norm). The utility is the sum over objectives,
``U(w) = Σ_j <ĝ_j, d(w)> = 1^T C w`` with ``C_jk = cos(g_j, g_k)``, so

.. math::

  \\nabla_w U = C \\mathbf{1}, \\qquad
  w \\leftarrow \\frac{w \\odot e^{\\eta\\, C \\mathbf{1}}}
                  {\\sum_k w_k e^{\\eta (C \\mathbf{1})_k}} .

An objective whose gradient agrees with the others' gains weight; one that conflicts with
them loses it (so training is steered towards directions that improve many objectives at
once). The weights stay on the simplex (sum one, positive); ``step_size = 0`` keeps them
fixed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from reweight._types import ScalarOrSchedule
from reweight.base import check_hyperparameter, resolve
from reweight.objectives.base import (
  ObjectiveWeighting,
  as_losses,
  check_grads,
  check_num_objectives,
  gram,
)


class GradientRewardState(NamedTuple):
  """State of `gradient_reward_weights`.

  Attributes:
    weights: ``[K]`` the weights (on the simplex).
    influence: ``[K]`` ``C 1`` at the last update, the gradient of ``U``.
    count: number of updates made (the step when none is passed).
  """

  weights: jax.Array
  influence: jax.Array
  count: jax.Array


def cosine_matrix(grads) -> jax.Array:
  """``[K, K]`` cosines between the gradients (0 where a gradient is zero)."""
  m = gram(grads)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(m), 0.0))
  inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
  return m * inv[:, None] * inv[None, :]


def gradient_reward_weights(num_objectives: int, step_size: ScalarOrSchedule = 1.0
                            ) -> ObjectiveWeighting:
  """Mirror ascent on the total first-order improvement: ``w <- w e^{η C 1} / Z``.

  ``update(state, *, grads, losses=None)`` reads K gradient pytrees
  (`reweight.objectives.objective_grads`); ``losses``, when given, is checked for K.

  Args:
    num_objectives: K.
    step_size: ``η >= 0``, a float or a schedule ``step -> η``.

  Returns:
    An `ObjectiveWeighting` with state `GradientRewardState`.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> obj = reweight.objectives.gradient_reward_weights(3, step_size=1.0)
    >>> g = [jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0]), jnp.array([-1.0, 0.0])]
    >>> state = obj.update(obj.init(), grads=g)
    >>> state.influence.tolist()  # C 1: the third gradient conflicts with the other two
    [1.0, 1.0, -1.0]
    >>> [round(w, 4) for w in state.weights.tolist()]  # softmax([1, 1, -1])
    [0.4683, 0.4683, 0.0634]

  References:
    Lu et al., "Learning to Optimize Multi-Objective Alignment Through Dynamic Reward
    Weighting", arXiv 2509.11452, 2025 (abstract).
  """
  k = check_num_objectives(num_objectives)
  check_hyperparameter(step_size, "step_size")

  def init():
    return GradientRewardState(jnp.full(k, 1.0 / k, jnp.float32), jnp.zeros(k, jnp.float32),
                               jnp.zeros([], jnp.int32))

  def update(state, *, losses=None, grads=None, step=None, **extras):
    del extras
    if losses is not None:
      as_losses(losses, k, "gradient_reward_weights")
    c = cosine_matrix(check_grads(grads, k, "gradient_reward_weights"))
    influence = jnp.sum(c, axis=1)
    eta = resolve(step_size, state.count if step is None else step, "step_size")
    weights = jax.nn.softmax(jnp.log(state.weights) + eta * influence)
    return GradientRewardState(weights, influence, state.count + 1)

  return ObjectiveWeighting(init, update)
