"""Mixture policies whose proportions are fixed by the data sizes or by the step.

* `stratified`: every group equally often, ``p_g = 1 / G``;
* `proportional`: as often as the group is large, ``p_g = n_g / sum n``;
* `temperature`: ``p_g ∝ n_g^(1 / tau)`` (``tau = 1`` proportional, ``tau -> inf``
  stratified), the multilingual-LM sampling rule;
* `upsample_at_end`: a base mixture until step ``(1 - f) T``, then a target mixture (a small
  high-quality domain upsampled for the last fraction ``f`` of training).

Each is a `reweight.group.MixturePolicy` whose state (`MixtureState`) holds ``probs``, so a
sampler, a plot or a checkpoint treats them like the adaptive policies.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from reweight._checks import check_int
from reweight.group.policy import (
  MixturePolicy,
  MixtureState,
  check_num_groups,
  check_probs,
  check_sizes,
)


def _constant(probs: np.ndarray) -> MixturePolicy:
  probs = jnp.asarray(probs, jnp.float32)

  def init():
    return MixtureState(probs, jnp.zeros([], jnp.int32))

  def update(state, *, step=None, **unused):
    del step, unused
    return MixtureState(probs, state.count + 1)

  return MixturePolicy(init, update)


def stratified(num_groups: int) -> MixturePolicy:
  """Every group equally often: ``p_g = 1 / G``.

  Examples:
    >>> import reweight
    >>> reweight.group.stratified(2).init().probs.tolist()
    [0.5, 0.5]
  """
  g = check_num_groups(num_groups)
  return _constant(np.full(g, 1.0 / g))


def proportional(sizes) -> MixturePolicy:
  """Each group as often as it is large: ``p_g = n_g / sum_h n_h``.

  Args:
    sizes: ``[G]`` group sizes (examples, tokens or bytes), non-negative.

  Examples:
    >>> import reweight
    >>> reweight.group.proportional([30, 10]).init().probs.tolist()
    [0.75, 0.25]
  """
  n = check_sizes(sizes)
  return _constant(n / n.sum())


def temperature(sizes, tau: float) -> MixturePolicy:
  """Temperature sampling: ``p_g ∝ n_g^(1 / tau)``.

  ``tau = 1`` is `proportional`; large ``tau`` tends to `stratified` over the non-empty
  groups (an empty group keeps probability 0).

  Args:
    sizes: ``[G]`` group sizes, non-negative.
    tau: the temperature, > 0.

  Examples:
    >>> import reweight
    >>> [round(p, 4) for p in reweight.group.temperature([90, 10], tau=2.0).init().probs.tolist()]
    [0.75, 0.25]

  References:
    Arivazhagan et al., "Massively Multilingual Neural Machine Translation in the Wild", 2019
    (temperature-based sampling over languages).
  """
  n = check_sizes(sizes)
  if not (np.isscalar(tau) and np.isfinite(tau) and tau > 0):
    raise ValueError(f"tau={tau!r} must be a positive finite number")
  # n^(1/tau) / sum, computed in log space so that large sizes and small tau do not overflow.
  with np.errstate(divide="ignore"):
    logits = np.where(n > 0, np.log(np.where(n > 0, n, 1.0)) / tau, -np.inf)
  p = np.exp(logits - logits.max())
  return _constant(p / p.sum())


class UpsampleState(NamedTuple):
  """State of `upsample_at_end`: the proportions of the last step seen."""

  probs: jnp.ndarray
  count: jnp.ndarray


def upsample_at_end(base_probs, target_probs, fraction: float, total_steps: int
                    ) -> MixturePolicy:
  """``base_probs`` until step ``(1 - fraction) * total_steps``, ``target_probs`` after.

  .. math::

    p(t) = p_{base} \\text{ if } t < \\lceil (1 - f) T \\rceil \\text{ else } p_{target}

  Args:
    base_probs: ``[G]`` the mixture of most of training.
    target_probs: ``[G]`` the mixture of the last ``fraction`` of the steps (usually the
      base with a small high-quality domain upsampled).
    fraction: ``f`` in [0, 1]; the reported best is 10-20%.
    total_steps: ``T``.

  Examples:
    >>> import reweight
    >>> policy = reweight.group.upsample_at_end([0.9, 0.1], [0.5, 0.5], 0.2, 100)
    >>> [round(p, 4) for p in policy.update(policy.init(), step=79).probs.tolist()]
    [0.9, 0.1]
    >>> policy.update(policy.init(), step=80).probs.tolist()
    [0.5, 0.5]

  References:
    Blakeney et al., "Does your data spark joy? Performance gains from domain upsampling
    at the end of training", 2024.
  """
  base = check_probs(base_probs, name="base_probs")
  target = check_probs(target_probs, base.shape[0], name="target_probs")
  if not (np.isscalar(fraction) and 0.0 <= fraction <= 1.0):
    raise ValueError(f"fraction={fraction!r} must be a number in [0, 1]")
  total_steps = check_int("total_steps", total_steps, 1, whole_floats=True)
  switch = int(np.ceil(round((1.0 - fraction) * total_steps, 9)))
  base, target = jnp.asarray(base, jnp.float32), jnp.asarray(target, jnp.float32)

  def init():
    return UpsampleState(base, jnp.zeros([], jnp.int32))

  def update(state, *, step=None, **unused):
    del unused
    t = state.count if step is None else jnp.asarray(step)
    return UpsampleState(jnp.where(t >= switch, target, base), state.count + 1)

  return MixturePolicy(init, update)
