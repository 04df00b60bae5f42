"""Token-probability weights: Dynamic Fine-Tuning's rescaling of supervised fine-tuning.

Supervised fine-tuning minimises ``-log p_t`` per target token. Dynamic Fine-Tuning (DFT)
multiplies each token's loss by its own probability under stop-gradient,
``-sg(p_t) log p_t``, which damps the gradient of tokens the model finds unlikely (the
"implicit reward" of SFT is ``1 / p_t``; DFT cancels it). `token_probability` is that factor
as a `reweight.Weighting` over tokens, for `reweight.weighted_tokens`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reweight._types import ScalarOrSchedule
from reweight.base import (
    CountState,
    Weighting,
    check_hyperparameter,
    current_step,
    resolve,
    valid_mask,
)
from reweight.base import normalize as _normalize
from reweight.parallel import AxisName

Array = jax.Array


def token_probability(power: ScalarOrSchedule = 1.0, *, normalize: bool = True,
                      axis_name: AxisName = None) -> Weighting:
  """Token weights ``∝ sg(p_t)^power``, with ``p_t = exp(-l_t)`` the target token's probability.

  .. math::

    u_t = \\text{sg}(p_t)^{\\gamma} = e^{-\\gamma\\, \\ell_t}, \\qquad
    w_t = \\begin{cases} N\\, u_t / \\sum_{t'} u_{t'} & \\text{normalize=True} \\\\
                         u_t & \\text{normalize=False} \\end{cases}

  over the ``N`` valid tokens of the global batch, where ``l_t`` is the token's
  cross-entropy (so ``exp(-l_t)`` is the model's probability of the target token). With
  `reweight.weighted_tokens` the loss is ``L = sum_t w_t l_t / N``.

  **Relation to DFT.** The paper's loss is ``L_DFT = -(1/N) sum_t sg(p_t) log p_t``: the
  unnormalised weights ``u_t = p_t`` (``power=1``). ``normalize=False`` reproduces it
  exactly (``w_t = p_t^power``, no rescaling). The default ``normalize=True`` divides by the
  global batch's mean ``m = (1/N) sum_t sg(p_t)^power``, a positive scalar under
  stop-gradient: ``L = L_DFT / m``, so the gradient is DFT's times ``1 / m`` and points in
  the same direction; only its scale differs, by a factor that changes from batch to
  batch (large while the model is unsure, tending to one as ``p_t → 1``). Normalised
  weights keep the loss on the scale of SFT's token mean, as every `reweight` weighting
  does; use ``normalize=False`` to match DFT's effective learning rate (the paper's
  hyperparameters were tuned for it).

  ``power = 0`` is plain SFT (uniform weights); ``power > 1`` damps unlikely tokens more.
  Tokens with a non-finite loss or outside the mask get weight 0. The losses must be
  token cross-entropies (natural log); for another loss ``exp(-l)`` is not a probability.
  Applied to per-example cross-entropies with `reweight.weighted` it is the same rescaling
  per example.

  Args:
    power: the exponent ``gamma >= 0``, a float or a schedule ``step -> gamma``.
    normalize: rescale to mean one over the valid tokens of the global batch (default), or
      return ``p_t^power`` as is (the paper's unnormalised form).
    axis_name: the batch axis name(s) inside `shard_map` / `pmap` (inherited from
      `reweight.weighted_tokens` when None).

  Returns:
    A `Weighting` whose state counts updates (used as the step when none is passed).

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> losses = -jnp.log(jnp.array([0.5, 0.25, 0.25]))       # p_t = .5, .25, .25
    >>> w = reweight.sample.token_probability(normalize=False)
    >>> [round(x, 4) for x in w.update(losses, w.init())[0].tolist()]
    [0.5, 0.25, 0.25]
    >>> w = reweight.sample.token_probability()                # mean one
    >>> [round(x, 4) for x in w.update(losses, w.init())[0].tolist()]
    [1.5, 0.75, 0.75]

  References:
    Wu et al., "On the Generalization of SFT: A Reinforcement Learning Perspective with
    Reward Rectification" (Dynamic Fine-Tuning), arXiv:2508.05629, 2025.
  """
  check_hyperparameter(power, "power")

  def init(key=None):
    del key
    return CountState(jnp.zeros([], jnp.int32))

  def update(losses, state, *, mask=None, step=None, **extras):
    del extras
    valid = valid_mask(losses, mask)
    gamma = resolve(power, current_step(state.count, step), "power")
    safe = jnp.where(valid, jax.lax.stop_gradient(losses).astype(jnp.float32), 0.0)
    raw = jnp.where(valid, jnp.exp(-gamma * safe), 0.0)
    if normalize:
      weights = _normalize(raw, valid, axis_name)
    else:
      weights = jax.lax.stop_gradient(raw)
    return weights, CountState(state.count + 1)

  return Weighting(init, update)


__all__ = ["token_probability"]
