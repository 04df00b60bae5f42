"""Online Group DRO (Sagawa et al., ICLR 2020): up-weight the groups with the highest loss.

Per step, over the valid examples of the global batch, with ``n_g`` examples of group g and
per-group mean loss ``l_g`` (0 for a group absent from the batch):

.. math::

  a_g = l_g + C_g / \\sqrt{N_g}, \\qquad
  q_g \\leftarrow \\frac{q_g\\, e^{\\eta a_g}}{\\sum_h q_h\\, e^{\\eta a_h}}

and the **updated** ``q`` weights this step's loss: example i of group ``g_i`` gets

.. math::

  w_i \\propto q_{g_i} / n_{g_i}, \\qquad \\text{mean one over the valid examples,}

so that with every group present ``mean(w * l) = sum_g q_g l_g``, the reference's robust
loss. ``C`` is the generalization adjustment (``adjustment``), ``N_g`` the group's size in
the training set (``group_counts``).

Conventions, checked step for step against ``LossComputer.compute_robust_loss`` of the
authors' code (github kohpangwei/group_DRO, ``loss.py``) in ``tests/group/test_group_dro.py``:

* ``q`` starts uniform and is updated with the per-group means of the *current* batch,
  before it weights that batch (as the reference does).
* The reference adds the adjustment only when every entry of ``adj`` is positive; here
  any given ``adjustment`` is added (a zero entry adds nothing, so the two agree whenever
  the reference adds it at all, and for ``adjustment=None``).
* The reference's ``adjusted_loss += ...`` modifies its ``group_loss`` in place, so its
  returned robust loss includes the (parameter-free) adjustment term; the weighted loss
  here does not. The gradients are the same.
* When a group is absent from the batch its ``q_g`` still takes part in the normalization
  (the reference multiplies it by ``e^0``), but it weights no example: the weights are
  normalized to mean one over the examples present, so the loss is
  ``sum_{g present} q_g l_g / sum_{g present} q_g`` (the reference's loss is the
  unnormalized ``sum_g q_g l_g``, i.e. smaller by the factor ``sum_{g present} q_g``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reweight._types import ScalarOrSchedule
from reweight.base import (
  Weighting,
  check_hyperparameter,
  normalize,
  resolve,
  valid_mask,
)
from reweight.group.policy import check_groups, check_num_groups, group_sums, in_range
from reweight.parallel import AxisName


class GroupDROState(NamedTuple):
  """State of `group_dro`.

  Attributes:
    probs: ``q``, ``[num_groups]``, the adversary's distribution over groups.
    group_loss: ``[num_groups]`` the per-group mean loss of the last batch (0 if absent).
    count: number of updates made (used as the step when none is passed).
  """

  probs: jax.Array
  group_loss: jax.Array
  count: jax.Array


def group_dro(num_groups: int, step_size: ScalarOrSchedule = 0.01, *, adjustment=None,
              group_counts=None, axis_name: AxisName = None) -> Weighting:
  """Online Group DRO weights: ``q <- normalize(q * exp(eta * l_g))``, ``w_i ∝ q_g / n_g``.

  Reads ``groups=`` (int ``[B]``, the batch's ``group`` field in `reweight.weighted`).

  Args:
    num_groups: G.
    step_size: ``eta_q`` (the paper: 0.01), a float or a schedule ``step -> eta``.
    adjustment: optional ``C``, a float or ``[G]`` floats >= 0 (the paper tunes a single
      value in [0, 5]); needs ``group_counts``.
    group_counts: ``[G]`` training-set sizes ``N_g`` (positive) for the adjustment.
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.

  Returns:
    A `Weighting` with state `GroupDROState`; ``state.probs`` is ``q``.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> w = reweight.group.group_dro(2, step_size=1.0)
    >>> weights, state = w.update(jnp.array([1.0, 1.0, 3.0]), w.init(),
    ...                           groups=jnp.array([0, 0, 1]))
    >>> [round(q, 4) for q in state.probs.tolist()]  # softmax([1, 3])
    [0.1192, 0.8808]
    >>> [round(x, 4) for x in weights.tolist()]  # 3 * [q0/2, q0/2, q1] / (q0 + q1)
    [0.1788, 0.1788, 2.6424]

  References:
    Sagawa, Koh, Hashimoto, Liang, "Distributionally Robust Neural Networks for Group
    Shifts: On the Importance of Regularization for Worst-Case Generalization", ICLR 2020.
  """
  g = check_num_groups(num_groups)
  check_hyperparameter(step_size, "step_size")
  if adjustment is None:
    adjust = jnp.zeros(g, jnp.float32)
  else:
    if group_counts is None:
      raise ValueError("adjustment= needs group_counts= (the training-set size of every "
                       "group), since the adjustment is C / sqrt(N_g)")
    c = np.broadcast_to(np.asarray(adjustment, np.float64), (g,)) if np.ndim(
        adjustment) == 0 else np.asarray(adjustment, np.float64)
    counts = np.asarray(group_counts, np.float64)
    if c.shape != (g,) or not np.all(np.isfinite(c)) or c.min() < 0:
      raise ValueError(f"adjustment={adjustment!r} must be a float or {g} floats, all >= 0")
    if counts.shape != (g,) or not np.all(counts > 0):
      raise ValueError(f"group_counts={group_counts!r} must be {g} positive counts")
    adjust = jnp.asarray(c / np.sqrt(counts), jnp.float32)

  def init(key=None):
    del key
    return GroupDROState(jnp.full(g, 1.0 / g, jnp.float32), jnp.zeros(g, jnp.float32),
                         jnp.zeros([], jnp.int32))

  def update(losses, state, *, mask=None, groups=None, step=None, **extras):
    del extras
    groups = check_groups(groups, g, losses.shape)
    valid = valid_mask(losses, mask)
    sums, counts = group_sums(losses, groups, valid, g, axis_name)
    group_loss = sums / jnp.maximum(counts, 1.0)
    eta = resolve(step_size, state.count if step is None else step, "step_size")
    logits = jnp.log(state.probs) + eta * (group_loss + adjust)
    probs = jax.nn.softmax(logits)
    inside, ids = in_range(groups, valid, g)
    raw = probs[ids] / jnp.maximum(counts[ids], 1.0)
    weights = normalize(raw, inside, axis_name)
    return weights, GroupDROState(probs, group_loss, state.count + 1)

  return Weighting(init, update)
