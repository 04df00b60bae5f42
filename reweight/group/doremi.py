"""DoReMi's domain weights (Xie et al., NeurIPS 2023): Group DRO on the excess loss.

A small proxy model is trained with domain weights ``alpha`` that chase the domains where it
is furthest behind a reference model. Per step, over the valid examples of the global
batch, with ``ref_losses`` the reference model's losses on the same examples:

.. math::

  \\lambda_d = \\operatorname{mean}_{i \\in d} \\max(\\ell_i - \\ell^{ref}_i, 0)
  \\quad (\\text{previous } \\lambda_d \\text{ kept if domain } d \\text{ is absent}),

  \\alpha \\leftarrow \\operatorname{softmax}(\\log \\alpha + \\eta \\lambda), \\qquad
  \\alpha \\leftarrow (1 - c)\\, \\alpha + c / k,

and the **updated** ``alpha`` weights this step's loss, ``w_i ∝ alpha[d_i]`` with mean one
over the valid examples. DoReMi's output is the average of ``alpha`` over the updates,
``state.avg_probs``: the mixture to train the final model on (three stages: a reference
model on a base mixture, the proxy with this weighting, the final model on ``avg_probs``).

Conventions, checked step for step against ``update_domain_weights`` (``doremiv1``) and the
loss rescaling of ``training_step`` in the authors' code (github sangmichaelxie/doremi,
``doremi/trainer.py``) in ``tests/group/test_doremi.py``:

* The reference clips and averages per *token*; here a loss is one value per example (a
  sequence's mean token loss, `reweight.losses.sequence_mean`), so ``lambda_d`` is the mean
  over the domain's examples of the clipped per-example excess. With one token per example
  (or per-token losses passed as the batch) the two are the same.
* ``lambda`` starts at 0, ``alpha`` at uniform (the reference starts from the configured
  initial weights; pass ``init_probs``), and the running average counts updates only, as
  the reference's ``write_weights`` does.
* The proxy's loss is ``sum_i alpha[d_i] l_i / sum_i alpha[d_i]``, as in the reference
  (which divides by the same normalizer); it does not divide by the sampling probability.
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
from reweight.group.policy import (
  check_groups,
  check_num_groups,
  check_probs,
  group_sums,
  in_range,
)
from reweight.parallel import AxisName


class DoReMiState(NamedTuple):
  """State of `doremi`.

  Attributes:
    probs: ``alpha``, ``[k]``, the current domain weights.
    avg_probs: the mean of ``alpha`` over the updates made (DoReMi's output mixture).
    excess: ``lambda``, ``[k]``, the last clipped excess loss of every domain.
    count: number of updates made.
  """

  probs: jax.Array
  avg_probs: jax.Array
  excess: jax.Array
  count: jax.Array


def doremi(num_groups: int, step_size: ScalarOrSchedule = 1.0, smoothing: float = 1e-3, *,
           init_probs=None, axis_name: AxisName = None) -> Weighting:
  """DoReMi domain weights: ``alpha <- (1-c) softmax(log alpha + eta lambda) + c/k``.

  Reads ``groups=`` (the batch's ``group`` field) and ``ref_losses=`` (``[B]``, the
  reference model's per-example losses, passed to the loss function as a keyword).

  Args:
    num_groups: k, the number of domains.
    step_size: ``eta`` (the paper: 1), a float or a schedule.
    smoothing: ``c`` in [0, 1] (the paper: 1e-3).
    init_probs: initial ``alpha`` (default uniform).
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.

  Returns:
    A `Weighting` with state `DoReMiState`.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> w = reweight.group.doremi(2, step_size=1.0, smoothing=0.0)
    >>> weights, state = w.update(jnp.array([2.0, 1.0]), w.init(), groups=jnp.array([0, 1]),
    ...                           ref_losses=jnp.array([1.0, 1.5]))
    >>> [round(a, 4) for a in state.probs.tolist()]  # softmax([log .5 + 1, log .5 + 0])
    [0.7311, 0.2689]
    >>> [round(x, 4) for x in weights.tolist()]
    [1.4621, 0.5379]

  References:
    Xie et al., "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining",
    NeurIPS 2023.
  """
  k = check_num_groups(num_groups)
  check_hyperparameter(step_size, "step_size")
  if not (np.isscalar(smoothing) and 0.0 <= smoothing <= 1.0):
    raise ValueError(f"smoothing={smoothing!r} must be a number in [0, 1]")
  alpha0 = np.full(k, 1.0 / k) if init_probs is None else check_probs(init_probs, k,
                                                                        "init_probs")
  alpha0 = jnp.asarray(alpha0, jnp.float32)

  def init(key=None):
    del key
    return DoReMiState(alpha0, jnp.zeros(k, jnp.float32), jnp.zeros(k, jnp.float32),
                       jnp.zeros([], jnp.int32))

  def update(losses, state, *, mask=None, groups=None, ref_losses=None, step=None, **extras):
    del extras
    groups = check_groups(groups, k, losses.shape)
    if ref_losses is None:
      raise ValueError("doremi needs the ref_losses= extra: the reference model's "
                       "per-example losses on this batch, passed as a keyword to the loss")
    ref_losses = jnp.asarray(ref_losses)
    if ref_losses.shape != losses.shape:
      raise ValueError(f"ref_losses has shape {ref_losses.shape} but losses have shape "
                       f"{losses.shape}; pass one reference loss per example")
    valid = valid_mask(losses, mask) & jnp.isfinite(ref_losses)
    excess = jnp.maximum(losses - ref_losses, 0.0)
    sums, counts = group_sums(excess, groups, valid, k, axis_name)
    lam = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), state.excess)
    eta = resolve(step_size, state.count if step is None else step, "step_size")
    alpha = jax.nn.softmax(jnp.log(state.probs) + eta * lam)
    alpha = (1.0 - smoothing) * alpha + smoothing / k
    n = state.count.astype(jnp.float32) + 1.0
    avg = state.avg_probs + (alpha - state.avg_probs) / n
    inside, ids = in_range(groups, valid, k)
    weights = normalize(alpha[ids], inside, axis_name)
    return weights, DoReMiState(alpha, avg, lam, state.count + 1)

  return Weighting(init, update)
