"""Per-token losses for token-weighted fine-tuning (re-exported by `reweight.losses`).

Every function returns unreduced token losses ``[..., T]`` (zero outside the mask), to be
reduced over the valid tokens of the global batch by `reweight.weighted_tokens` (with
`reweight.uniform`), never by a mean of per-sequence means. This module must not import
`reweight.losses` (which re-exports it).
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp

from reweight._checks import check_choice

Array = jax.Array

KLDirection = Literal["forward", "reverse"]


def anchored_token_probability(logits: Array, labels: Array, ref_logits: Array, *,
                               kl_coeff: float = 0.1, power: float = 1.0,
                               kl_direction: KLDirection = "forward",
                               mask: Array | None = None) -> Array:
  """Anchored DFT token loss: ``-sg(p_t)^power log p_t + kl_coeff * KL`` per token.

  .. math::

    \\ell_t = -\\text{sg}(p_\\theta(y_t))^{\\gamma}\\, \\log p_\\theta(y_t)
              + \\lambda\\, \\mathrm{KL}\\big(p_\\text{ref}(\\cdot \\mid x_{<t}) \\,\\|\\,
                p_\\theta(\\cdot \\mid x_{<t})\\big)

  with ``p_theta = softmax(logits)``, ``p_ref = softmax(ref_logits)`` (the reference model,
  under stop-gradient) and the KL over the whole vocabulary at each position. Reduced with
  ``reweight.weighted_tokens(f, reweight.uniform())`` it is
  ``L_ASFT = L_DFT + lambda * mean_t KL_t`` over the valid tokens of the global batch.

  **What is known** (ALGORITHMS.md H, from the abstract and the authors' summary): Anchored
  SFT adds to Dynamic Fine-Tuning's token reweighting (``-sg(p_t) log p_t``, unnormalised) a
  "lightweight" KL regulariser toward the reference (initial) model's token distribution,
  to stop the drift that makes DFT unstable on knowledge-heavy tasks. The KL direction and
  the coefficient used in the authors' code were not checked here.

  **What we chose.** The DFT part is the paper's unnormalised form (the weights are
  ``p_t^power``, not rescaled to mean one; ``power=0`` gives SFT + KL). The KL is taken per
  token over the full vocabulary (exact, not a sampled estimate), in the direction
  ``KL(p_ref || p_theta)`` by default (``kl_direction="forward"``, as written in
  ALGORITHMS.md): mass-covering, its gradient w.r.t. the logits is ``p_theta - p_ref`` (as
  cheap as cross-entropy with soft targets), and it is the direction that keeps the
  model from dropping tokens the reference assigns mass to (forgetting). ``"reverse"``
  gives ``KL(p_theta || p_ref)`` (mode-seeking, the RLHF / PPO penalty). ``kl_coeff=0.1``
  is our default, not a value from the paper: tune it.

  Args:
    logits: the model's logits ``[..., T, V]``.
    labels: integer target tokens ``[..., T]``.
    ref_logits: the reference model's logits, same shape as ``logits`` (no gradient flows
      into them).
    kl_coeff: ``lambda >= 0``.
    power: the DFT exponent ``gamma >= 0`` (1 is DFT).
    kl_direction: ``"forward"`` for ``KL(p_ref || p_theta)``, ``"reverse"`` for
      ``KL(p_theta || p_ref)``.
    mask: optional ``[..., T]`` token mask; masked-out tokens get loss 0.

  Returns:
    Token losses ``[..., T]``.

  Raises:
    ValueError: on mismatched shapes or a negative ``kl_coeff`` / ``power``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.token_losses import anchored_token_probability
    >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]]]))   # [B=1, T=2, V=2]
    >>> labels = jnp.array([[0, 1]])
    >>> l = anchored_token_probability(logits, labels, logits, kl_coeff=1.0)
    >>> [round(x, 4) for x in l[0].tolist()]  # -p log p; KL(p || p) = 0
    [0.3466, 0.2158]

  References:
    Zhu et al., "Anchored Supervised Fine-Tuning", arXiv:2509.23753, 2025 (ICLR 2026).
    Wu et al., "On the Generalization of SFT: A Reinforcement Learning Perspective with
    Reward Rectification", arXiv:2508.05629, 2025.
  """
  check_choice("kl_direction", kl_direction, get_args(KLDirection))
  if not (kl_coeff >= 0 and power >= 0):
    raise ValueError(f"kl_coeff={kl_coeff!r} and power={power!r} must be non-negative floats")
  logits = jnp.asarray(logits).astype(jnp.float32)
  ref_logits = jnp.asarray(ref_logits).astype(jnp.float32)
  labels = jnp.asarray(labels)
  if ref_logits.shape != logits.shape:
    raise ValueError(f"ref_logits has shape {ref_logits.shape} but logits have shape "
                     f"{logits.shape}")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"labels of shape {labels.shape} do not match logits of shape "
                     f"{logits.shape} (expected {logits.shape[:-1]})")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
  logp = jax.nn.log_softmax(logits, axis=-1)
  ref_logp = jax.lax.stop_gradient(jax.nn.log_softmax(ref_logits, axis=-1))
  logp_t = jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  dft = -jnp.exp(power * jax.lax.stop_gradient(logp_t)) * logp_t
  if kl_direction == "forward":
    kl = jnp.sum(jnp.exp(ref_logp) * (ref_logp - logp), axis=-1)
  else:
    kl = jnp.sum(jnp.exp(logp) * (logp - ref_logp), axis=-1)
  loss = dft + kl_coeff * kl
  if mask is None:
    return loss
  mask = jnp.asarray(mask)
  if mask.shape != loss.shape:
    raise ValueError(f"mask has shape {mask.shape} but the token losses have shape "
                     f"{loss.shape}")
  return jnp.where(mask.astype(bool), loss, 0.0)


__all__ = ["anchored_token_probability"]
