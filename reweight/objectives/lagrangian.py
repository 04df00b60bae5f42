"""Constrained objectives with Lagrange multipliers learned by dual ascent (constrained RLHF).

Objective 0 is the main loss ``l_0`` (for a reward ``r_0``, ``l_0 = -r_0``); objectives
``1..m`` are constraint values ``c_i`` with thresholds ``θ_i``. With ``s = +1`` for
``kind="upper"`` (``c_i <= θ_i``) and ``s = -1`` for ``kind="lower"`` (``c_i >= θ_i``):

.. math::

  \\lambda_i \\leftarrow \\max\\big(0, \\lambda_i + \\eta\\, s (c_i - \\theta_i)\\big),
  \\qquad
  L = l_0 + \\sum_i \\lambda_i\\, s (c_i - \\theta_i),

the Lagrangian, minimised over the parameters while the multipliers ascend. The state's
``weights`` are ``[1, λ_1, ..., λ_m]`` (non-negative) and it carries ``offsets = [0, θ]``
and ``signs = [1, s, ..., s]`` so that `reweight.objectives.combine` returns ``L`` itself.
In reward form (maximise ``r_0`` with component rewards ``c_i`` kept below their
thresholds of usefulness) this is ``r_0 - Σ λ_i (c_i - θ_i)`` of constrained RLHF.

Choices: the multipliers are updated with this step's constraint values **before** they
weight this step's objectives (as `reweight.group.group_dro` updates ``q``); the paper's
gradient-free search for the thresholds is not part of this function (pass them in).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reweight._checks import check_choice
from reweight._types import ScalarOrSchedule
from reweight.base import check_hyperparameter, resolve
from reweight.objectives.base import ObjectiveWeighting, as_losses


class LagrangianState(NamedTuple):
  """State of `lagrangian`.

  Attributes:
    weights: ``[K] = [1, λ_1, ..., λ_m]``.
    offsets: ``[K] = [0, θ_1, ..., θ_m]``.
    signs: ``[K] = [1, s, ..., s]`` (``s = +1`` upper, ``-1`` lower constraints).
    violation: ``[m]`` ``s (c_i - θ_i)`` at the last update (> 0: violated).
    count: number of updates made (the step when none is passed).
  """

  weights: jax.Array
  offsets: jax.Array
  signs: jax.Array
  violation: jax.Array
  count: jax.Array

  @property
  def multipliers(self) -> jax.Array:
    """``[m]`` the Lagrange multipliers ``λ``."""
    return self.weights[1:]


def lagrangian(thresholds, step_size: ScalarOrSchedule,
               *, kind: Literal["upper", "lower"] = "upper",
               init_multipliers=0.0) -> ObjectiveWeighting:
  """Lagrange multipliers by dual ascent: ``λ_i <- max(0, λ_i + η s (c_i − θ_i))``.

  ``update(state, *, losses)`` reads ``losses = [l_0, c_1, ..., c_m]`` (``K = m + 1``).

  Args:
    thresholds: ``[m]`` finite thresholds ``θ``, one per constrained objective.
    step_size: the dual step size ``η >= 0``, a float or a schedule ``step -> η``.
    kind: ``"upper"`` for ``c_i <= θ_i`` (a loss or a reward that must not exceed its
      threshold), ``"lower"`` for ``c_i >= θ_i``.
    init_multipliers: initial ``λ``, a float or ``[m]`` floats, all >= 0.

  Returns:
    An `ObjectiveWeighting` with state `LagrangianState`.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> obj = reweight.objectives.lagrangian([1.0], step_size=0.5)
    >>> state = obj.update(obj.init(), losses=jnp.array([3.0, 3.0]))  # c_1 = 3 > θ_1 = 1
    >>> state.weights.tolist()  # λ = max(0, 0 + 0.5 * (3 - 1))
    [1.0, 1.0]
    >>> float(reweight.objectives.combine(jnp.array([3.0, 3.0]), state)[0])  # 3 + 1 * 2
    5.0

  References:
    Moskovitz, Singh, Strouse, Sandholm, Salakhutdinov, Dragan, McAleer, "Confronting Reward
    Model Overoptimization with Constrained RLHF", ICLR 2024.
  """
  theta = np.asarray(thresholds, np.float64)
  if theta.ndim != 1 or theta.size == 0 or not np.all(np.isfinite(theta)):
    raise ValueError(f"thresholds={thresholds!r} must be a non-empty 1-D sequence of finite "
                     "floats (one per constrained objective)")
  m = theta.size
  check_hyperparameter(step_size, "step_size")
  check_choice("kind", kind, ("upper", "lower"))
  lam0 = np.asarray(init_multipliers, np.float64)
  if lam0.ndim == 0:
    lam0 = np.full(m, float(lam0))
  if lam0.shape != (m,) or not np.all(np.isfinite(lam0)) or np.any(lam0 < 0):
    raise ValueError(f"init_multipliers={init_multipliers!r} must be a float or {m} floats, "
                     "all finite and >= 0")
  sign = 1.0 if kind == "upper" else -1.0
  offsets = jnp.asarray(np.concatenate([[0.0], theta]), jnp.float32)
  signs = jnp.asarray(np.concatenate([[1.0], np.full(m, sign)]), jnp.float32)
  theta = jnp.asarray(theta, jnp.float32)

  def init():
    weights = jnp.asarray(np.concatenate([[1.0], lam0]), jnp.float32)
    return LagrangianState(weights, offsets, signs, jnp.zeros(m, jnp.float32),
                           jnp.zeros([], jnp.int32))

  def update(state, *, losses, grads=None, step=None, **extras):
    del grads, extras
    values = as_losses(losses, None, "lagrangian")
    if values.shape[0] != m + 1:
      raise ValueError(f"lagrangian: losses has {values.shape[0]} objectives but "
                       f"thresholds has {m} entries; expected K = 1 + len(thresholds) = "
                       f"{m + 1} (objective 0 is the main loss, objectives 1.. the "
                       "constraint values)")
    eta = resolve(step_size, state.count if step is None else step, "step_size")
    violation = sign * (values[1:] - theta)
    lam = jnp.maximum(0.0, state.weights[1:] + eta * violation)
    weights = jnp.concatenate([jnp.ones(1, lam.dtype), lam])
    return LagrangianState(weights, state.offsets, state.signs, violation, state.count + 1)

  return ObjectiveWeighting(init, update)
