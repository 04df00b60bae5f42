"""Hypervolume-guided objective weights for online multi-objective alignment.

The dynamic reward weighting of Lu et al. (2025) adapts the objective weights during online
RL "guided by hypervolume" instead of fixing a linear scalarisation. ALGORITHMS.md has only
the abstract ([abs]): it fixes that the weights change during training and that the
hypervolume (the volume dominated by the current objective values, relative to a reference
point) guides the change. The rule here is our choice: weight each objective by how much
improving it would grow the hypervolume.

With objectives as losses (smaller is better), ``ŷ`` an exponential moving average of the
objective values and ``ρ`` a reference point worse than every value of interest, the
hypervolume dominated by ``ŷ`` is ``HV = Π_k (ρ_k − ŷ_k)``, and

.. math::

  \\hat y \\leftarrow \\beta \\hat y + (1 - \\beta)\\, l, \\qquad
  w_k = \\frac{\\partial HV / \\partial(-\\hat y_k)}{\\sum_j \\partial HV / \\partial(-\\hat y_j)}
      = \\frac{1 / \\max(\\rho_k - \\hat y_k, \\epsilon)}
              {\\sum_j 1 / \\max(\\rho_j - \\hat y_j, \\epsilon)}

(the first update sets ``ŷ = l``). The objective closest to its reference point, the one
whose improvement adds the most hypervolume, gets the largest weight; an objective at or
beyond its reference point gets weight ``∝ 1/ε``. The weights sum to one. A single point
(not a Pareto archive of past policies) is used, so the rule needs no memory beyond
``[K]``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reweight._checks import check_positive
from reweight.objectives.base import ObjectiveWeighting, as_losses


class HypervolumeState(NamedTuple):
  """State of `hypervolume_weights`.

  Attributes:
    weights: ``[K]`` normalised hypervolume gradient (sums to one).
    mean: ``[K]`` ``ŷ``, the moving average of the objective values.
    hypervolume: ``Π_k max(ρ_k − ŷ_k, 0)``.
    count: number of updates made.
  """

  weights: jax.Array
  mean: jax.Array
  hypervolume: jax.Array
  count: jax.Array


def hypervolume_weights(reference, *, ema: float = 0.9, eps: float = 1e-6
                        ) -> ObjectiveWeighting:
  """Hypervolume-guided weights: ``w_k ∝ 1 / (ρ_k − ŷ_k)``, ``ŷ`` an EMA of the losses.

  Args:
    reference: ``[K]`` the reference point ``ρ`` (a loss value each objective should stay
      below, e.g. the objectives at initialisation plus a margin).
    ema: ``β`` in ``[0, 1)``, the moving-average decay of the objective values.
    eps: floor on the gaps ``ρ − ŷ`` (> 0).

  Returns:
    An `ObjectiveWeighting` with state `HypervolumeState`.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> obj = reweight.objectives.hypervolume_weights([2.0, 2.0])
    >>> state = obj.update(obj.init(), losses=jnp.array([1.0, 1.5]))  # gaps 1, 0.5
    >>> [round(w, 4) for w in state.weights.tolist()]  # [1, 2] / 3
    [0.3333, 0.6667]

  References:
    Lu et al., "Learning to Optimize Multi-Objective Alignment Through Dynamic Reward
    Weighting", arXiv 2509.11452, 2025 (abstract).
    Emmerich & Deutz, "Time complexity and zeros of the hypervolume indicator gradient
    field", EVOLVE 2012 (the hypervolume gradient).
  """
  ref = np.asarray(reference, np.float64)
  if ref.ndim != 1 or ref.size == 0 or not np.all(np.isfinite(ref)):
    raise ValueError(f"reference={reference!r} must be a non-empty 1-D sequence of finite "
                     "floats (one per objective)")
  if not 0.0 <= ema < 1.0:
    raise ValueError(f"ema={ema!r} must be in [0, 1)")
  check_positive("eps", eps)
  k = ref.size
  ref = jnp.asarray(ref, jnp.float32)

  def init():
    return HypervolumeState(jnp.full(k, 1.0 / k, jnp.float32), jnp.zeros(k, jnp.float32),
                            jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32))

  def update(state, *, losses, grads=None, step=None, **extras):
    del grads, step, extras
    values = as_losses(losses, k, "hypervolume_weights").astype(jnp.float32)
    mean = jnp.where(state.count == 0, values, ema * state.mean + (1 - ema) * values)
    gaps = ref - mean
    inv = 1.0 / jnp.maximum(gaps, eps)
    hv = jnp.prod(jnp.maximum(gaps, 0.0))
    return HypervolumeState(inv / jnp.sum(inv), mean, hv, state.count + 1)

  return ObjectiveWeighting(init, update)
