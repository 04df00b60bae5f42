"""GRPO: group-relative advantages and the clipped-ratio policy loss (Shao et al., 2024).

For every prompt, ``n`` rollouts are sampled from the old policy and scored; rollout ``i``
of group ``g`` (the rollouts of one prompt) gets the group-relative advantage

.. math::

  A_i = \\frac{r_i - \\mathrm{mean}_g(r)}{\\mathrm{std}_g(r) + \\epsilon}

and each of its tokens (or the whole response, for sequence log-probabilities) the PPO
clipped-ratio loss plus an optional KL penalty to a reference policy (the ``k3`` estimator):

.. math::

  \\rho = e^{\\log\\pi - \\log\\pi_{old}}, \\qquad
  \\ell = -\\min\\big(\\rho A,\\ \\mathrm{clip}(\\rho, 1-\\varepsilon, 1+\\varepsilon) A\\big)
    + \\beta \\big(e^{\\log\\pi_{ref} - \\log\\pi} - (\\log\\pi_{ref} - \\log\\pi) - 1\\big).

Conventions (chosen here; the DeepSeekMath paper fixes the equations, not these):

* ``std_g`` is the sample standard deviation (``ddof=1``, what ``torch.std`` and TRL's
  ``GRPOTrainer`` use) and ``eps=1e-4`` (TRL's value); a group with ``count <= ddof`` valid
  rollouts has ``std = 0``, so its advantages are 0 (``r - mean = 0`` for one rollout).
* A rollout counts in its group's mean and std when it is valid: every rollout without
  ``mask``; with a per-token ``mask``, a rollout with at least one valid token.
* ``old_logps`` and ``ref_logps`` are constants (`jax.lax.stop_gradient`), the rewards
  and advantages carry no gradient.
* The loss is returned unreduced (per rollout, or per token), masked entries 0: reduce it
  with `reweight.losses.sequence_mean` then a mean over rollouts (the paper), with a mean
  over all valid tokens (DAPO), or with `reweight.weighted` / a prompt-GDRO weighting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reweight._checks import check_int, is_traced

Array = jax.Array


def _check_nonneg(name: str, value) -> float:
  if is_traced(value):
    return value
  if not np.isfinite(value) or value < 0:
    raise ValueError(f"{name}={value!r} must be a finite float >= 0")
  return value


def _flat_groups(rewards, group_ids, num_groups):
  """``(rewards [B] float32, ids [B] int, num_groups, shape)`` for either layout."""
  rewards = jnp.asarray(rewards)
  if not jnp.issubdtype(rewards.dtype, jnp.floating) and not jnp.issubdtype(
      rewards.dtype, jnp.integer) and rewards.dtype != jnp.bool_:
    raise ValueError(f"rewards must be numeric, got dtype {rewards.dtype}")
  rewards = rewards.astype(jnp.float32)
  if group_ids is None:
    if rewards.ndim != 2:
      raise ValueError(f"without group_ids rewards must be [G, n] (n rollouts of each of G "
                       f"prompts), got shape {rewards.shape}")
    g, n = rewards.shape
    ids = jnp.repeat(jnp.arange(g, dtype=jnp.int32), n)
    return rewards.reshape(-1), ids, g, rewards.shape
  group_ids = jnp.asarray(group_ids)
  if rewards.ndim != 1 or group_ids.shape != rewards.shape:
    raise ValueError(f"with group_ids, rewards and group_ids must both be [B]; got shapes "
                     f"{rewards.shape} and {group_ids.shape}")
  if not jnp.issubdtype(group_ids.dtype, jnp.integer):
    raise ValueError(f"group_ids must hold integer group ids, got dtype {group_ids.dtype}")
  concrete = not is_traced(group_ids) and group_ids.size > 0
  if num_groups is None:
    if not concrete:
      raise ValueError("num_groups= is needed when group_ids are traced (under jax.jit)")
    num_groups = int(group_ids.max()) + 1
  num_groups = check_int("num_groups", num_groups, 1)
  if concrete:
    lo, hi = int(group_ids.min()), int(group_ids.max())
    if lo < 0 or hi >= num_groups:
      raise ValueError(f"group ids span [{lo}, {hi}], outside [0, num_groups={num_groups})")
  return rewards, group_ids, num_groups, rewards.shape


def group_advantages(rewards: Array, group_ids: Array | None = None, *,
                     num_groups: int | None = None, valid: Array | None = None,
                     eps: float = 1e-4, ddof: int = 1) -> Array:
  """GRPO's group-relative advantages ``(r - mean_g) / (std_g + eps)``, of ``rewards``' shape.

  Args:
    rewards: ``[G, n]`` (``n`` rollouts of each of ``G`` prompts) or ``[B]`` with
      ``group_ids``.
    group_ids: None, or ``[B]`` int, the prompt (group) of each rollout, in
      ``[0, num_groups)``. Concrete ids outside the range raise; under `jax.jit` such a
      rollout counts nowhere and gets advantage 0.
    num_groups: the number of groups for ``group_ids`` (default ``max(group_ids) + 1``;
      required under jit).
    valid: optional bool of ``rewards``' shape: the rollouts that count (others get 0).
    eps: ``epsilon >= 0`` added to the std.
    ddof: 1 (sample std, the default) or 0 (population std).

  Returns:
    float32 advantages of ``rewards``' shape (no gradient).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.grpo import group_advantages
    >>> a = group_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]), eps=0.0)
    >>> [round(x, 4) for x in a[0].tolist()], a[1].tolist()   # std = sqrt(1/3)
    ([0.866, -0.866, -0.866, 0.866], [0.0, 0.0, 0.0, 0.0])
  """
  _check_nonneg("eps", eps)
  if ddof not in (0, 1):
    raise ValueError(f"ddof={ddof!r} must be 0 or 1")
  r, ids, g, shape = _flat_groups(rewards, group_ids, num_groups)
  if valid is None:
    ok = jnp.ones(r.shape, bool)
  elif jnp.shape(valid) == tuple(shape):
    ok = jnp.asarray(valid, bool).reshape(-1)
  else:
    raise ValueError(f"valid has shape {jnp.shape(valid)} but rewards {tuple(shape)}")
  ok = ok & (ids >= 0) & (ids < g)
  safe = jnp.where(ok, ids, 0)
  count = jax.ops.segment_sum(ok.astype(jnp.float32), safe, g)
  total = jax.ops.segment_sum(jnp.where(ok, r, 0.0), safe, g)
  mean = total / jnp.maximum(count, 1.0)
  dev = jnp.where(ok, r - mean[safe], 0.0)
  sq = jax.ops.segment_sum(dev * dev, safe, g)
  var = jnp.where(count > ddof, sq / jnp.maximum(count - ddof, 1.0), 0.0)
  std = jnp.sqrt(var)
  den = std[safe] + eps
  adv = jnp.where(ok & (den > 0), dev / jnp.where(den > 0, den, 1.0), 0.0)
  adv = jnp.where(ok & (count[safe] > ddof), adv, 0.0)
  return jax.lax.stop_gradient(adv.reshape(shape))


def grpo(logps: Array, old_logps: Array, rewards: Array, group_ids: Array | None = None, *,
         num_groups: int | None = None, clip_eps: float = 0.2, kl_coeff: float = 0.0,
         ref_logps: Array | None = None, mask: Array | None = None, eps: float = 1e-4,
         ddof: int = 1) -> Array:
  """GRPO's clipped-ratio loss with group-relative advantages, per rollout or per token.

  .. math::

    \\ell = -\\min(\\rho A, \\mathrm{clip}(\\rho, 1 - \\varepsilon, 1 + \\varepsilon) A)
      + \\beta\\,(e^{\\log\\pi_{ref} - \\log\\pi} - (\\log\\pi_{ref} - \\log\\pi) - 1),
    \\quad \\rho = e^{\\log\\pi - \\log\\pi_{old}},\\quad
    A = \\frac{r - \\mathrm{mean}_g r}{\\mathrm{std}_g r + \\epsilon}

  (module docstring for the conventions). The shapes follow the layout of ``rewards``:

  * ``[G, n]`` rewards (no ``group_ids``): ``logps`` is ``[G, n]`` (sequence log-probs,
    one loss per rollout) or ``[G, n, T]`` (token log-probs, one loss per token);
  * ``[B]`` rewards with ``group_ids [B]``: ``logps`` is ``[B]`` or ``[B, T]``.

  Args:
    logps: log-probabilities of the sampled responses under the policy being trained.
    old_logps: the same under the policy that sampled them (``logps``' shape).
    rewards: scalar reward per rollout (``[G, n]`` or ``[B]``).
    group_ids: None for the ``[G, n]`` layout, else ``[B]`` int prompt ids in
      ``[0, num_groups)`` (out of range: ValueError when concrete).
    num_groups: for ``group_ids`` (default ``max(group_ids) + 1``; required under jit).
    clip_eps: ``epsilon >= 0`` of the ratio clip (0.2).
    kl_coeff: ``beta >= 0`` of the KL penalty (0: none); ``> 0`` needs ``ref_logps``.
    ref_logps: the responses' log-probabilities under the reference policy.
    mask: bool of ``logps``' shape (response tokens, or valid rollouts); masked entries get
      loss 0 and a rollout without a valid entry does not count in its group's statistics.
    eps: added to the group std (``1e-4``, TRL's value).
    ddof: 1 (sample std, default) or 0.

  Returns:
    float32 losses of ``logps``' shape, masked entries 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.grpo import grpo
    >>> logps = jnp.log(jnp.array([[0.5, 0.5]]))
    >>> loss = grpo(logps, logps, jnp.array([[1.0, 0.0]]), eps=0.0)   # ratio 1: -A
    >>> [round(x, 4) for x in loss[0].tolist()]                      # A = +-1/sqrt(2)
    [-0.7071, 0.7071]

  References:
    Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
    Language Models", 2024. Schulman et al., "Proximal Policy Optimization Algorithms",
    2017. Schulman, "Approximating KL Divergence" (the k3 estimator), 2020.
  """
  _check_nonneg("clip_eps", clip_eps)
  _check_nonneg("kl_coeff", kl_coeff)
  logps = jnp.asarray(logps)
  old_logps = jnp.asarray(old_logps)
  rshape = jnp.shape(rewards)
  if logps.shape != old_logps.shape:
    raise ValueError(f"logps has shape {logps.shape} but old_logps {old_logps.shape}")
  if logps.shape[:len(rshape)] != tuple(rshape) or logps.ndim not in (len(rshape),
                                                                       len(rshape) + 1):
    raise ValueError(f"logps has shape {logps.shape}; with rewards of shape {tuple(rshape)} "
                     f"it must be {tuple(rshape)} (per rollout) or {tuple(rshape)} + (T,) "
                     "(per token)")
  per_token = logps.ndim == len(rshape) + 1
  if mask is None:
    m = jnp.ones(logps.shape, bool)
  else:
    m = jnp.asarray(mask)
    if m.shape != logps.shape:
      raise ValueError(f"mask has shape {m.shape} but logps {logps.shape}")
    m = m.astype(bool)
  valid = jnp.any(m, axis=-1) if per_token else m
  adv = group_advantages(rewards, group_ids, num_groups=num_groups, valid=valid, eps=eps,
                         ddof=ddof)
  if per_token:
    adv = adv[..., None]
  lp = logps.astype(jnp.float32)
  ratio = jnp.exp(lp - jax.lax.stop_gradient(old_logps.astype(jnp.float32)))
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = -jnp.minimum(ratio * adv, clipped * adv)
  if ref_logps is not None:
    ref = jnp.asarray(ref_logps)
    if ref.shape != logps.shape:
      raise ValueError(f"ref_logps has shape {ref.shape} but logps {logps.shape}")
    d = jax.lax.stop_gradient(ref.astype(jnp.float32)) - lp
    loss = loss + kl_coeff * (jnp.exp(d) - d - 1.0)
  elif not is_traced(kl_coeff) and kl_coeff > 0:
    raise ValueError(f"kl_coeff={kl_coeff!r} > 0 needs ref_logps= (the reference policy's "
                     "log-probabilities)")
  return jnp.where(m, loss, 0.0)


__all__ = ["group_advantages", "grpo"]
