"""Class-balanced weights from the effective number of samples (Cui et al., CVPR 2019).

A class with ``n_c`` training examples has effective number ``E_c = (1 - beta^n_c) / (1 -
beta)``; example ``i`` of class ``y_i`` gets weight ``w_i ∝ 1 / E_{y_i}``, scaled to mean one
over the valid examples of the batch. ``beta = 0`` is uniform, ``beta -> 1`` is inverse
class frequency.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reweight.base import EmptyState, Weighting, normalize, valid_mask
from reweight.parallel import AxisName


def class_balanced(class_counts, beta: float = 0.999, *, axis_name: AxisName = None) -> Weighting:
  """Weights ``∝ (1 - beta) / (1 - beta^{n_y})`` from the ``labels`` extra.

  Args:
    class_counts: ``[C]`` number of training examples per class (all positive).
    beta: in ``[0, 1)``; the paper uses 0.9-0.9999.
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> w = reweight.sample.class_balanced([90, 10], beta=0.0)  # beta = 0: uniform
    >>> w.update(jnp.zeros(2), w.init(), labels=jnp.array([0, 1]))[0].tolist()
    [1.0, 1.0]

  References:
    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019.
  """
  counts = np.asarray(class_counts, np.float64)
  if counts.ndim != 1 or counts.size == 0 or np.any(counts <= 0):
    raise ValueError(f"class_counts={class_counts!r} must be a non-empty list of positive "
                     "counts, one per class")
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"beta={beta!r} must be in [0, 1)")
  per_class = jnp.asarray((1.0 - beta) / (1.0 - beta**counts), jnp.float32)

  def init(key=None):
    del key
    return EmptyState()

  def update(losses, state, *, mask=None, labels=None, **extras):
    del extras
    if labels is None:
      raise ValueError("class_balanced needs the labels= extra; return it in the per-example "
                       "loss function's aux dict")
    valid = valid_mask(losses, mask)
    raw = per_class[jnp.clip(labels, 0, per_class.shape[0] - 1)]
    return jax.lax.stop_gradient(normalize(raw, valid, axis_name)), state

  return Weighting(init, update)
