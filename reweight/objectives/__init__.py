"""Weights over K objectives: static, Pareto (MGDA), constrained (Lagrangian), dynamic.

Every scheme is an `ObjectiveWeighting` (``init() -> state``, ``update(state, *, losses,
grads=None, step=None, **extras) -> state``); ``state.weights`` (``[K]``, non-negative)
multiplies the objectives in `combine`. All objectives are losses (minimised).

Examples:
  >>> import jax, jax.numpy as jnp, reweight
  >>> fns = [lambda p: jnp.sum((p - 1.0) ** 2), lambda p: jnp.sum((p + 1.0) ** 2)]
  >>> obj = reweight.objectives.mgda(2)
  >>> losses, grads = reweight.objectives.objective_grads(fns, jnp.zeros(3))
  >>> state = obj.update(obj.init(), losses=losses, grads=grads)
  >>> state.weights.tolist()  # opposite gradients: the midpoint is stationary
  [0.5, 0.5]
"""

from reweight.objectives.base import ObjectiveWeighting, combine, gram, objective_grads
from reweight.objectives.gradient_reward import GradientRewardState, gradient_reward_weights
from reweight.objectives.hypervolume import HypervolumeState, hypervolume_weights
from reweight.objectives.lagrangian import LagrangianState, lagrangian
from reweight.objectives.linear import LinearState, linear
from reweight.objectives.mgda import MGDAState, mgda, min_norm_weights

__all__ = [
    "GradientRewardState", "HypervolumeState", "LagrangianState", "LinearState",
    "MGDAState", "ObjectiveWeighting", "combine", "gradient_reward_weights", "gram",
    "hypervolume_weights", "lagrangian", "linear", "mgda", "min_norm_weights",
    "objective_grads",
]
