"""Preference-pair losses at token level: DPO and SparsePO (token masks on reward and KL).

Inputs are *per-token* log-probabilities ``[B, T]`` of the response tokens (the target
token's log-probability under the policy or the reference model, already shifted), with
response masks ``[B, T]`` (1 on the response tokens, 0 on the prompt and padding). The
chosen and rejected responses may have different lengths ``T_c`` and ``T_r``. Every loss
here returns one value per *pair* ``[B]``, so it composes with `reweight.weighted` (a
`Weighting` then reweights preference pairs) and reduces with the global-batch rules of
`reweight.parallel`.

Notation: ``r^pi_t = log pi(y_t | x, y_<t) - log ref(y_t | x, y_<t)``, ``m_t`` the response
mask, ``w_t`` a token weight; for a response ``y``

.. math::

  R(y) = \\sum_t w_t\\, m_t\\, r^\\pi_t .

`dpo` is ``-log sigma(beta (R(y_w) - R(y_l)))``; with ``w = 1`` this *is* DPO (sequence
log-probabilities are sums of token log-probabilities over the response mask).

`sparse_po` follows SparsePO: one mask on the reward terms and one on the token-level KL
terms of the TDPO-style objective; the masks are either computed from the reference model's
activations (`activation_token_masks`, no parameters) or produced by a small learned head
on the policy's hidden states (`TokenMaskHead`) with an L1 sparsity term.

Examples:
  >>> import jax.numpy as jnp
  >>> from reweight import preference
  >>> pc, pr = jnp.array([[-1.0, -2.0]]), jnp.array([[-3.0, -1.0]])
  >>> rc, rr = jnp.array([[-1.5, -2.0]]), jnp.array([[-2.0, -1.0]])
  >>> m = jnp.ones((1, 2))
  >>> loss = preference.dpo(pc, pr, rc, rr, beta=1.0, chosen_mask=m, rejected_mask=m)
  >>> round(float(loss[0]), 4)  # -log sigmoid(0.5 - (-1.0))
  0.2014
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from reweight._checks import check_positive

Array = jax.Array

__all__ = [
    "TokenMaskHead", "activation_token_masks", "dpo", "dpo_rewards", "mask_l1", "sparse_po",
    "sparse_po_rewards",
]


# ----------------------------------------------------------------------------- helpers


def _as_tokens(x, name: str) -> Array:
  """``x`` as ``[B, T]`` float32; a ``[B]`` sequence-level value becomes ``[B, 1]``."""
  x = jnp.asarray(x)
  if x.ndim == 1:
    x = x[:, None]
  chex.assert_rank(x, 2, exception_type=ValueError,
                   custom_message=f"{name} must have shape [B, T] (or [B]), got {x.shape}")
  return x.astype(jnp.float32)


def _mask_like(mask, x: Array, name: str) -> Array:
  if mask is None:
    return jnp.ones_like(x)
  mask = _as_tokens(mask, name)
  chex.assert_shape(mask, x.shape, exception_type=ValueError,
                    custom_message=f"{name} has shape {mask.shape}, expected {x.shape}")
  return mask


def _pair(value, name: str):
  """``(chosen, rejected)`` from a pair (or ``None`` -> ``(None, None)``)."""
  if value is None:
    return None, None
  if not isinstance(value, tuple | list) or len(value) != 2:
    raise ValueError(f"{name} must be a pair (chosen, rejected) of [B, T] arrays or None")
  return value[0], value[1]


def _masked_sum(values: Array, mask: Array, weights) -> Array:
  """``sum_t w_t m_t v_t`` (masked entries never propagate NaN/inf)."""
  w = mask if weights is None else mask * weights
  return jnp.sum(jnp.where(mask > 0, w * values, 0.0), axis=-1)


def _check_beta(beta) -> None:
  check_positive("beta", beta)


# -------------------------------------------------------------------------------- DPO


def dpo_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                ref_rejected_logps, *, beta, chosen_mask=None, rejected_mask=None,
                token_weights=None) -> tuple[Array, Array]:
  """DPO's implicit rewards ``beta * sum_t w_t m_t (log pi_t - log ref_t)`` per response.

  Args: as `dpo`.

  Returns:
    ``(chosen_rewards, rejected_rewards)``, each ``[B]``; ``chosen > rejected`` is the
    usual "reward accuracy". The DPO logit is their difference.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight import preference
    >>> c, r = preference.dpo_rewards(jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]),
    ...                               jnp.array([-2.0]), beta=0.1)
    >>> [round(float(c[0]), 4), round(float(r[0]), 4)]
    [0.1, -0.1]
  """
  _check_beta(beta)
  pc = _as_tokens(policy_chosen_logps, "policy_chosen_logps")
  pr = _as_tokens(policy_rejected_logps, "policy_rejected_logps")
  rc = _as_tokens(ref_chosen_logps, "ref_chosen_logps")
  rr = _as_tokens(ref_rejected_logps, "ref_rejected_logps")
  chex.assert_equal_shape([pc, rc], exception_type=ValueError,
                          custom_message="policy/ref chosen log-probs differ in shape")
  chex.assert_equal_shape([pr, rr], exception_type=ValueError,
                          custom_message="policy/ref rejected log-probs differ in shape")
  mc = _mask_like(chosen_mask, pc, "chosen_mask")
  mr = _mask_like(rejected_mask, pr, "rejected_mask")
  wc, wr = _pair(token_weights, "token_weights")
  if wc is not None:
    wc = _mask_like(wc, pc, "token_weights[0]")
    wr = _mask_like(wr, pr, "token_weights[1]")
  chosen = beta * _masked_sum(pc - rc, mc, wc)
  rejected = beta * _masked_sum(pr - rr, mr, wr)
  return chosen, rejected


def dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
        beta, chosen_mask=None, rejected_mask=None, token_weights=None) -> Array:
  """Direct Preference Optimization at token level, one loss per preference pair.

  .. math::

    \\ell_i = -\\log \\sigma\\Big(\\beta \\Big[\\sum_t w^c_{it} m^c_{it}
        (\\log\\pi^c_{it} - \\log\\mathrm{ref}^c_{it})
      - \\sum_t w^r_{it} m^r_{it} (\\log\\pi^r_{it} - \\log\\mathrm{ref}^r_{it})\\Big]\\Big)

  With ``token_weights=None`` (``w = 1``) the sums are the sequence log-ratios and this is
  the published DPO loss ``-log sigma(beta [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) -
  log ref(y_l))])``. Token weights are used as given (no normalisation, no stop-gradient:
  pass ``jax.lax.stop_gradient(w)`` for weights computed from the model).

  Args:
    policy_chosen_logps: ``[B, T_c]`` per-token log-probabilities of the chosen response
      under the policy (a ``[B]`` array is read as sequence-level log-probabilities).
    policy_rejected_logps: ``[B, T_r]``, the rejected response under the policy.
    ref_chosen_logps: ``[B, T_c]``, the chosen response under the reference model.
    ref_rejected_logps: ``[B, T_r]``, the rejected response under the reference model.
    beta: the KL strength ``beta > 0`` (0.1 is the common default).
    chosen_mask: ``[B, T_c]`` response mask of the chosen tokens (None: all ones).
    rejected_mask: ``[B, T_r]`` response mask of the rejected tokens (None: all ones).
    token_weights: None, or a pair ``(chosen_weights [B, T_c], rejected_weights [B, T_r])``.

  Returns:
    ``[B]`` per-pair losses (reduce with `reweight.weighted`, or a mean over valid pairs).
    `dpo_rewards` gives the implicit rewards.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight import preference
    >>> loss = preference.dpo(jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]),
    ...                       jnp.array([-2.0]), beta=0.1)
    >>> round(float(loss[0]), 4)  # -log sigmoid(0.1 * 2)
    0.5981

  References:
    Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", NeurIPS 2023.
  """
  chosen, rejected = dpo_rewards(
      policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
      beta=beta, chosen_mask=chosen_mask, rejected_mask=rejected_mask,
      token_weights=token_weights)
  return -jax.nn.log_sigmoid(chosen - rejected)


# ---------------------------------------------------------------------------- SparsePO


def activation_token_masks(activations: Array | Sequence[Array], mask=None) -> Array:
  """SparsePO's activation-based token masks from the reference model's hidden states.

  For each activation tensor ``A^k`` (``[B, T, H]``: a layer's hidden states, MLP
  activations or logits of the *reference* model on the response), the per-token feature
  mean ``a^k_t = mean_h A^k_{t,h}`` is standardised and rescaled to ``[0, 1]`` over the
  valid tokens of its sequence, and the masks of the tensors are averaged:

  .. math::

    m_t = \\frac{1}{K} \\sum_k \\frac{a^k_t - \\min_{s} a^k_s}{\\max_s a^k_s - \\min_s a^k_s}
          \\; [t \\text{ valid}]

  (the authors' code z-normalises then min-max rescales; min-max rescaling is invariant to
  the affine z-normalisation, so the two agree). A sequence whose ``a^k`` is constant over
  its valid tokens gets mask one there (the authors' code would divide by zero). The result
  carries no gradient.

  Args:
    activations: one ``[B, T, H]`` (or ``[B, T]``, already reduced) array or a sequence of
      them (e.g. every layer's output); K = their number.
    mask: ``[B, T]`` response mask (None: all tokens valid).

  Returns:
    ``[B, T]`` masks in ``[0, 1]``, zero outside ``mask``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight import preference
    >>> acts = jnp.array([[[1.0, 3.0], [0.0, 0.0], [4.0, 6.0], [9.0, 9.0]]])  # [1, 4, 2]
    >>> preference.activation_token_masks(acts, jnp.array([[1, 1, 1, 0]])).tolist()
    [[0.4000000059604645, 0.0, 1.0, 0.0]]

  References:
    Christopoulou et al., "SparsePO: Controlling Preference Alignment of LLMs via Sparse
    Token Masks", 2024 (arXiv:2410.05102), the "MaPO" model-activation masks.
  """
  if not isinstance(activations, list | tuple):
    activations = [activations]
  if not activations:
    raise ValueError("activations must hold at least one array")
  out = []
  for k, a in enumerate(activations):
    a = jnp.asarray(a, jnp.float32)
    if a.ndim == 3:
      a = a.mean(-1)
    chex.assert_rank(a, 2, exception_type=ValueError,
                     custom_message=f"activations[{k}] must be [B, T, H] or [B, T], got "
                     f"{a.shape}")
    valid = jnp.ones(a.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    chex.assert_shape(valid, a.shape, exception_type=ValueError,
                      custom_message=f"mask has shape {valid.shape}, expected {a.shape}")
    lo = jnp.min(jnp.where(valid, a, jnp.inf), axis=-1, keepdims=True)
    hi = jnp.max(jnp.where(valid, a, -jnp.inf), axis=-1, keepdims=True)
    span = hi - lo
    ok = jnp.isfinite(span) & (span > 0)
    m = jnp.where(ok, (a - jnp.where(ok, lo, 0.0)) / jnp.where(ok, span, 1.0), 1.0)
    out.append(jnp.where(valid, m, 0.0))
  return jax.lax.stop_gradient(jnp.mean(jnp.stack(out), axis=0))


class TokenMaskHead(nnx.Module):
  """SparsePO's learned token-mask head over per-layer hidden states (``simple_all``).

  .. math::

    m_t = \\mathrm{relu}\\Big(\\sum_l v_l\\, \\mathrm{relu}(u_l^\\top \\mathrm{LN}(h^l_t) + b_l)
          \\Big)

  One shared LayerNorm, one linear unit per layer and a bias-free linear mixer over the
  layers. ReLU makes exact zeros possible: with `mask_l1` in the loss the masks become
  sparse. The authors' head also applies dropout (0.1) to the per-layer and mixed outputs;
  apply `nnx.Dropout` yourself if wanted. Use one head for a mask shared by the reward and
  the KL terms, or two heads for independent masks. The head is trained jointly with the
  policy on the `sparse_po` loss.

  Args:
    num_layers: L, the number of hidden-state tensors given to ``__call__``.
    hidden_size: H.
    rngs: `nnx.Rngs`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from reweight import preference
    >>> head = preference.TokenMaskHead(2, 8, rngs=nnx.Rngs(0))
    >>> head([jnp.ones((3, 5, 8)), jnp.zeros((3, 5, 8))]).shape
    (3, 5)
  """

  def __init__(self, num_layers: int, hidden_size: int, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(hidden_size, rngs=rngs)
    self.per_layer = nnx.List([nnx.Linear(hidden_size, 1, rngs=rngs)
                               for _ in range(num_layers)])
    self.mixer = nnx.Linear(num_layers, 1, use_bias=False, rngs=rngs)
    self.num_layers = num_layers

  def __call__(self, hidden_states: Sequence[Array], mask=None) -> Array:
    if len(hidden_states) != self.num_layers:
      raise ValueError(f"expected {self.num_layers} hidden-state arrays, got "
                       f"{len(hidden_states)}")
    h = jnp.concatenate([jax.nn.relu(lin(self.norm(x))) for lin, x in
                         zip(self.per_layer, hidden_states, strict=True)], axis=-1)
    m = jax.nn.relu(self.mixer(h))[..., 0]
    if mask is not None:
      m = m * jnp.asarray(mask, m.dtype)
    return m


def mask_l1(token_masks, mask=None) -> Array:
  """SparsePO's sparsity term ``sum_t |m_t|`` over the valid tokens of each sequence, ``[B]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight import preference
    >>> preference.mask_l1(jnp.array([[0.5, -1.0, 2.0]]), jnp.array([[1, 1, 0]])).tolist()
    [1.5]
  """
  m = _as_tokens(token_masks, "token_masks")
  valid = _mask_like(mask, m, "mask")
  return jnp.sum(jnp.where(valid > 0, jnp.abs(m * valid), 0.0), axis=-1)


def sparse_po_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                      ref_rejected_logps, *, beta, chosen_mask=None, rejected_mask=None,
                      reward_masks=None, kl_masks=None, token_kls=None
                      ) -> tuple[Array, Array]:
  """SparsePO's per-response rewards ``beta (U(y) + D(y))`` (see `sparse_po`), ``[B]`` each."""
  _check_beta(beta)
  uc, ur = dpo_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                       ref_rejected_logps, beta=1.0, chosen_mask=chosen_mask,
                       rejected_mask=rejected_mask, token_weights=reward_masks)
  if token_kls is None:
    return beta * uc, beta * ur
  kc, kr = _pair(token_kls, "token_kls")
  mc = _mask_like(chosen_mask, _as_tokens(policy_chosen_logps, "policy_chosen_logps"),
                  "chosen_mask")
  mr = _mask_like(rejected_mask, _as_tokens(policy_rejected_logps, "policy_rejected_logps"),
                  "rejected_mask")
  kc = _mask_like(kc, mc, "token_kls[0]")
  kr = _mask_like(kr, mr, "token_kls[1]")
  dc_w, dr_w = _pair(kl_masks if kl_masks is not None else reward_masks, "kl_masks")
  if dc_w is not None:
    dc_w = _mask_like(dc_w, mc, "kl_masks[0]")
    dr_w = _mask_like(dr_w, mr, "kl_masks[1]")
  dc = _masked_sum(kc, mc, dc_w)
  dr = _masked_sum(kr, mr, dr_w)
  return beta * (uc + dc), beta * (ur + dr)


def sparse_po(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
              ref_rejected_logps, *, beta, chosen_mask=None, rejected_mask=None,
              reward_masks=None, kl_masks=None, token_kls=None, sparsity_reward=0.0,
              sparsity_kl=0.0) -> Array:
  """SparsePO: DPO (TDPO form) with token masks on the reward and on the KL terms.

  With ``r_t = log pi_t - log ref_t``, token-level KLs ``k_t = KL(ref(.|x, y_<t) ||
  pi(.|x, y_<t))`` and masks ``m^u`` (reward), ``m^d`` (KL), for each response

  .. math::

    U(y) = \\sum_t m_t\\, m^u_t\\, r_t, \\qquad D(y) = \\sum_t m_t\\, m^d_t\\, k_t,

  .. math::

    \\ell_i = -\\log\\sigma\\big(\\beta\\,[U(y_w) - U(y_l) + D(y_w) - D(y_l)]\\big)
      + \\lambda_u (\\|m^u(y_w)\\|_1 + \\|m^u(y_l)\\|_1)
      + \\lambda_d (\\|m^d(y_w)\\|_1 + \\|m^d(y_l)\\|_1).

  This is the authors' code's sign convention (theirs passes ``-k_t``, the reference-weighted
  log-ratio, and subtracts the difference), i.e. TDPO's ``u - delta`` with
  ``delta = beta (D(y_l) - D(y_w))``. Without ``token_kls`` the KL term is dropped and, with
  all masks one, this is `dpo`.

  The two mask variants of the paper:

  * **reference activations** ("MaPO"): ``reward_masks = (activation_token_masks(ref
    activations on y_w, chosen_mask), activation_token_masks(..., rejected_mask))``, the
    same masks on the KL (``kl_masks=None``), no sparsity term. The masks carry no gradient.
  * **learned** (SparsePO proper): masks from `TokenMaskHead` on the policy's hidden states,
    either one head for both terms ("common": ``kl_masks=None``) or a second head for
    ``kl_masks`` ("independent"); ``sparsity_reward`` / ``sparsity_kl`` (``lambda_u``,
    ``lambda_d``; the authors use 0.001 on HH, 0 elsewhere) add the L1 terms of `mask_l1`
    to each pair's loss. The authors' code halves both lambdas in the common setting;
    here they are used as given (so a common mask gets ``lambda_u + lambda_d``). An L1
    term is added only for masks that are given (``lambda_d`` only with ``token_kls``).

  Args:
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
      beta, chosen_mask, rejected_mask: as in `dpo`.
    reward_masks: None (all ones) or a pair ``(m^u(y_w) [B, T_c], m^u(y_l) [B, T_r])``.
    kl_masks: None (use ``reward_masks``) or a pair of KL-term masks.
    token_kls: None (no KL term) or a pair of ``[B, T]`` token-level
      ``KL(ref || pi)`` values (``sum_v ref_v (log ref_v - log pi_v)``, with the gradient
      through ``pi``).
    sparsity_reward: ``lambda_u >= 0``.
    sparsity_kl: ``lambda_d >= 0``.

  Returns:
    ``[B]`` per-pair losses (including the sparsity terms). `sparse_po_rewards` gives the
    rewards ``beta (U + D)`` of each response.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight import preference
    >>> pc, pr = jnp.array([[-1.0, -2.0]]), jnp.array([[-3.0, -1.0]])
    >>> rc, rr = jnp.array([[-1.5, -2.0]]), jnp.array([[-2.0, -1.0]])
    >>> masks = (jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]))  # ignore r = -1 token
    >>> loss = preference.sparse_po(pc, pr, rc, rr, beta=1.0, reward_masks=masks)
    >>> round(float(loss[0]), 4)  # -log sigmoid(0.5 - 0)
    0.4741

  References:
    Christopoulou et al., "SparsePO: Controlling Preference Alignment of LLMs via Sparse
    Token Masks", 2024 (arXiv:2410.05102). Zeng et al., "Token-level Direct Preference
    Optimization" (TDPO), ICML 2024.
  """
  for name, lam in (("sparsity_reward", sparsity_reward), ("sparsity_kl", sparsity_kl)):
    if not isinstance(lam, jax.core.Tracer) and not lam >= 0:
      raise ValueError(f"{name}={lam!r} must be >= 0")
  chosen, rejected = sparse_po_rewards(
      policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
      beta=beta, chosen_mask=chosen_mask, rejected_mask=rejected_mask,
      reward_masks=reward_masks, kl_masks=kl_masks, token_kls=token_kls)
  loss = -jax.nn.log_sigmoid(chosen - rejected)
  mc = None if chosen_mask is None else _as_tokens(chosen_mask, "chosen_mask")
  mr = None if rejected_mask is None else _as_tokens(rejected_mask, "rejected_mask")
  if reward_masks is not None:
    uc, ur = _pair(reward_masks, "reward_masks")
    loss = loss + sparsity_reward * (mask_l1(uc, mc) + mask_l1(ur, mr))
  d_masks = kl_masks if kl_masks is not None else reward_masks
  if d_masks is not None and token_kls is not None:
    dc, dr = _pair(d_masks, "kl_masks")
    loss = loss + sparsity_kl * (mask_l1(dc, mc) + mask_l1(dr, mr))
  return loss
