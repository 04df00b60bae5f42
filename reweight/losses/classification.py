"""Per-example (unreduced) classification losses with integer labels.

Every loss takes ``logits [..., C]`` and integer ``labels [...]`` and returns one value per
example ``[...]`` in float32 (inputs in bfloat16/float16 are upcast before any exp/log), with
zeros where ``mask`` is False. Reduce token losses to one value per sequence with
`sequence_mean`. Labels are checked against ``C`` when they are concrete (outside `jit`).

Examples:
  >>> import jax.numpy as jnp
  >>> from reweight import losses
  >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
  >>> [round(x, 4) for x in losses.softmax_cross_entropy(logits, jnp.array([0, 0])).tolist()]
  [0.1269, 2.1269]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _prepare(logits, labels, mask=None):
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim < 1 or logits.shape[:-1] != labels.shape:
    raise ValueError(
        f"logits of shape {logits.shape} need labels of shape {logits.shape[:-1]} "
        f"(one integer class per example), got labels of shape {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  num_classes = logits.shape[-1]
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    lab = np.asarray(labels)
    bad = (lab < 0) | (lab >= num_classes)
    if bad.any():
      raise ValueError(
          f"label {int(lab[bad].flat[0])} is out of range: valid labels are 0..{num_classes - 1} "
          f"for logits with {num_classes} classes")
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != labels.shape:
      raise ValueError(f"mask has shape {mask.shape} but labels have shape {labels.shape}")
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  log_p_true = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  return logits.astype(jnp.float32), log_probs, log_p_true, mask


def log_likelihood(logits: Array, labels: Array) -> Array:
  """``log p_y`` per example in float32, with the label checks of every loss here.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import log_likelihood
    >>> round(float(log_likelihood(jnp.zeros((1, 4)), jnp.array([2]))[0]), 4)  # log 1/4
    -1.3863
  """
  return _prepare(logits, labels)[2]


def _masked(values, mask):
  return values if mask is None else jnp.where(mask, values, 0.0)


def z_loss(logits: Array, coeff: float = 1e-4, mask: Array | None = None) -> Array:
  """PaLM's auxiliary z-loss ``coeff * logsumexp(logits)^2`` per example."""
  lse = jax.nn.logsumexp(jnp.asarray(logits).astype(jnp.float32), axis=-1)
  return _masked(coeff * lse**2, mask)


def softmax_cross_entropy(logits: Array, labels: Array, *, label_smoothing: float = 0.0,
                          z_loss_coeff: float = 0.0, mask: Array | None = None) -> Array:
  """Cross-entropy with optional label smoothing and PaLM z-loss.

  .. math::  \\ell = -\\sum_k q_k \\log p_k + c \\log^2 Z, \\quad
             q = (1-\\epsilon)\\, \\text{onehot}(y) + \\epsilon / C

  Args:
    logits: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)``.
    label_smoothing: ``epsilon`` in ``[0, 1]``.
    z_loss_coeff: ``c``; PaLM uses ``1e-4``.
    mask: optional ``[...]`` booleans; masked entries are 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import softmax_cross_entropy
    >>> float(softmax_cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))[0])  # log 4
    1.3862943649291992
  """
  if not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1]")
  logits32, log_probs, log_p_true, mask = _prepare(logits, labels, mask)
  loss = -log_p_true
  if label_smoothing:
    loss = (1.0 - label_smoothing) * loss - label_smoothing * jnp.mean(log_probs, axis=-1)
  if z_loss_coeff:
    loss = loss + z_loss(logits32, z_loss_coeff)
  return _masked(loss, mask)


def focal(logits: Array, labels: Array, *, gamma: float = 2.0, mask: Array | None = None):
  """Softmax focal loss ``-(1 - p_y)^gamma log p_y`` (Lin et al. 2017).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import focal
    >>> round(float(focal(jnp.zeros((1, 2)), jnp.array([0]), gamma=2.0)[0]), 5)  # .25 log 2
    0.17329

  References:
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
  """
  if gamma < 0:
    raise ValueError(f"gamma={gamma!r} must be >= 0")
  _, _, log_p_true, mask = _prepare(logits, labels, mask)
  # (1 - p)^gamma with 1 - p = -expm1(log p), accurate when p is close to one.
  one_minus_p = -jnp.expm1(log_p_true)
  return _masked(-(one_minus_p**gamma) * log_p_true, mask)


def generalized_cross_entropy(logits: Array, labels: Array, *, q: float = 0.7,
                              mask: Array | None = None) -> Array:
  """Generalized cross-entropy ``(1 - p_y^q) / q`` (Zhang & Sabuncu 2018).

  ``q -> 0`` recovers cross-entropy, ``q = 1`` the MAE.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import generalized_cross_entropy
    >>> float(generalized_cross_entropy(jnp.zeros((1, 2)), jnp.array([0]), q=1.0)[0])
    0.5

  References:
    Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with
    Noisy Labels", NeurIPS 2018.
  """
  if not 0.0 < q <= 1.0:
    raise ValueError(f"q={q!r} must be in (0, 1]")
  _, _, log_p_true, mask = _prepare(logits, labels, mask)
  return _masked(-jnp.expm1(q * log_p_true) / q, mask)


def symmetric_cross_entropy(logits: Array, labels: Array, *, alpha: float = 0.1,
                            beta: float = 1.0, log_clip: float = 1e-4,
                            mask: Array | None = None) -> Array:
  """Symmetric cross-entropy ``alpha * CE + beta * RCE`` (Wang et al. 2019).

  The reverse cross-entropy with the one-hot label clamped at ``log_clip`` is
  ``RCE = -sum_k p_k log max(y_k, log_clip) = -log(log_clip) * (1 - p_y)``.
  Defaults are the paper's CIFAR-10 setting.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import symmetric_cross_entropy
    >>> round(float(symmetric_cross_entropy(jnp.zeros((1, 2)), jnp.array([0]))[0]), 4)
    4.6745

  References:
    Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy Labels", ICCV 2019.
  """
  if not 0.0 < log_clip < 1.0:
    raise ValueError(f"log_clip={log_clip!r} must be in (0, 1)")
  _, _, log_p_true, mask = _prepare(logits, labels, mask)
  rce = -math.log(log_clip) * (-jnp.expm1(log_p_true))
  return _masked(alpha * (-log_p_true) + beta * rce, mask)


def poly1(logits: Array, labels: Array, *, epsilon: float = 1.0,
          mask: Array | None = None) -> Array:
  """Poly-1 loss ``CE + epsilon * (1 - p_y)`` (Leng et al. 2022).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import poly1
    >>> round(float(poly1(jnp.zeros((1, 2)), jnp.array([0]))[0]), 4)  # log 2 + 0.5
    1.1931

  References:
    Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions", ICLR 2022.
  """
  _, _, log_p_true, mask = _prepare(logits, labels, mask)
  return _masked(-log_p_true + epsilon * (-jnp.expm1(log_p_true)), mask)


def sequence_mean(token_losses: Array, token_mask: Array | None = None) -> Array:
  """Reduces ``[B, T]`` token losses to ``[B]`` per-sequence means over valid tokens.

  Sequences with no valid token get 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import sequence_mean
    >>> sequence_mean(jnp.array([[1.0, 3.0], [2.0, 9.0]]),
    ...               jnp.array([[1, 1], [1, 0]])).tolist()
    [2.0, 2.0]
  """
  token_losses = jnp.asarray(token_losses).astype(jnp.float32)
  if token_losses.ndim != 2:
    raise ValueError(f"token_losses must have shape [batch, tokens], got {token_losses.shape}")
  if token_mask is None:
    return jnp.mean(token_losses, axis=-1)
  token_mask = jnp.asarray(token_mask)
  if token_mask.shape != token_losses.shape:
    raise ValueError(
        f"token_mask has shape {token_mask.shape} but token_losses have shape "
        f"{token_losses.shape}")
  m = token_mask.astype(bool)
  total = jnp.sum(jnp.where(m, token_losses, 0.0), axis=-1)
  return total / jnp.maximum(jnp.sum(m, axis=-1), 1)



LOSSES = {
    "ce": softmax_cross_entropy,
    "focal": focal,
    "gce": generalized_cross_entropy,
    "sce": symmetric_cross_entropy,
    "poly1": poly1,
}


def get(name: str):
  """A loss by its short name: one of ``ce``, ``focal``, ``gce``, ``sce``, ``poly1``."""
  if name not in LOSSES:
    raise ValueError(f"loss {name!r} is not one of {sorted(LOSSES)}")
  return LOSSES[name]
