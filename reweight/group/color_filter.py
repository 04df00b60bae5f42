"""CoLoR-Filter: keep the candidates a target-tuned model finds most improved (Brandfonbrener
et al., 2024).

Conditional Loss Reduction Filtering scores every candidate example ``x`` with two small
auxiliary models: a *prior* model trained on generic data and a *conditional* model, the
prior fine-tuned on a little target-domain data. The score

.. math::  s(x) = \\ell_{cond}(x) - \\ell_{prior}(x)

is low where conditioning on the target data lowers the loss the most (the log-likelihood
ratio of a Bayesian selection rule). From ``tau * n`` candidates the ``n`` lowest are kept
and the large model is trained on them. Selection is offline: one pass of the two small
models over the candidates, then a fixed subset.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def color_filter(prior_losses, conditional_losses, keep: int) -> Array:
  """Indices of the ``keep`` candidates with the lowest ``l_cond - l_prior``.

  The indices come sorted by score, lowest (most selected) first; equal scores are broken
  by the lower index, so the result is deterministic. A NaN score ranks last. Works under
  `jax.jit` with ``keep`` static.

  For the cheaper random alternative (a fresh random subset of the data each epoch, RS2),
  see `reweight.data.random_subset_per_epoch`.

  Args:
    prior_losses: ``[n]`` per-candidate losses of the prior model (summed or mean over the
      sequence's tokens, the same reduction for both models).
    conditional_losses: ``[n]`` losses of the prior fine-tuned on target data.
    keep: how many to keep, ``1 <= keep <= n`` (``n / tau`` for a selection ratio tau).

  Returns:
    ``[keep]`` int32 indices into the candidates.

  Raises:
    ValueError: if the two loss arrays are not 1-D with the same shape, or ``keep`` is not an
      int in ``[1, n]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.group.color_filter import color_filter
    >>> prior = jnp.array([2.0, 3.0, 1.0, 4.0])
    >>> cond = jnp.array([1.0, 3.0, 1.5, 2.0])     # scores [-1, 0, 0.5, -2]
    >>> color_filter(prior, cond, keep=2).tolist()
    [3, 0]

  References:
    Brandfonbrener, Zhang, Kirsch, Schwarz and Kakade, "CoLoR-Filter: Conditional Loss
    Reduction Filtering for Targeted Language Model Pre-training", NeurIPS 2024.
  """
  prior = jnp.asarray(prior_losses)
  cond = jnp.asarray(conditional_losses)
  if prior.ndim != 1 or prior.shape != cond.shape:
    raise ValueError(f"prior_losses and conditional_losses must be 1-D with the same shape "
                     f"(one loss per candidate), got {prior.shape} and {cond.shape}")
  n = prior.shape[0]
  if isinstance(keep, bool) or not isinstance(keep, int | np.integer) or not 1 <= keep <= n:
    raise ValueError(f"keep={keep!r} must be an int in [1, n={n}]")
  dtype = jnp.promote_types(jnp.result_type(prior, cond), jnp.float32)
  scores = cond.astype(dtype) - prior.astype(dtype)
  return jnp.argsort(scores, stable=True)[: int(keep)].astype(jnp.int32)
