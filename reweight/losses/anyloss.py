"""AnyLoss: classification metrics turned into differentiable batch losses (Han et al. 2024).

A metric computed from the confusion matrix (F-beta, balanced accuracy, ...) is a step
function of the model's outputs. AnyLoss makes it differentiable by replacing each hard
prediction with an *amplified* probability that is already close to 0 or 1,

.. math::

  A(p) = \\text{sigmoid}\\big(L\\,(p - 0.5)\\big), \\qquad L = 73,

and counting a *soft* confusion matrix from it over the batch:

.. math::

  TP = \\sum_i y_i A_i,\\ FP = \\sum_i (1 - y_i) A_i,\\ FN = \\sum_i y_i (1 - A_i),\\
  TN = \\sum_i (1 - y_i)(1 - A_i).

The loss is ``1 - metric(TP, FP, FN, TN)``. As in the authors' code (binary, with a
smoothing ``s = 1e-5`` in the denominators):

* F-beta: ``F = (1 + b^2) TP / (b^2 n_pos + sum_i A_i + s)``
  (``= (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP)`` up to ``s``);
* balanced accuracy: ``(n_neg TP + n_pos TN) / (2 n_pos n_neg + s)``
  (``= (TP / n_pos + TN / n_neg) / 2``).

Binary inputs are one score per example (``logits [B]``, ``p = sigmoid(logit)``, labels in
{0, 1}). For multi-class inputs (``logits [B, C]``, integer labels) this module extends the
binary construction one-vs-rest, our choice (the paper's experiments are binary): class ``k``
is the binary problem "``k`` or not" with ``A_ik = A(p_ik)``, per-class soft counts, and the
*macro* average over the classes present in the (global) batch: macro F-beta, and balanced
accuracy as the mean per-class recall ``TP_k / (n_k + s)`` (scikit-learn's multi-class
definition, which is the binary formula above for two classes). The per-class probability is
``p_ik = sigmoid(logit_ik)`` by default (``multiclass="sigmoid"``: each class has its own
binary score, and at initialization ``p = 0.5`` where ``A`` is steepest) or
``softmax(logits)_k`` (``multiclass="softmax"``). With the softmax and ``C > 2`` classes an
unconfident model has every ``p_ik`` well below 0.5, where ``A`` is flat (``A'(1/4) ~ 1e-6``
at ``L = 73``), so training from scratch barely moves; use it to fine-tune a model that is
already confident.

These are batch-level losses (not per example): the counts are sums over the global batch.
Inside `shard_map` / `pmap` with ``axis_name`` (or inside a `reweight.weighted` that has
one) they are ``psum``-ed and the value is the global loss on every device, the convention
of `reweight.weighted` (`reweight.parallel`): inside `jax.shard_map` with its default
``check_vma=True`` the loss is typed replicated and JAX's AD sums the gradient of
replicated parameters over the devices, so write no ``psum``; under `jax.pmap` (or
``check_vma=False``) its gradient is the gradient of the global loss through this device's
examples, so ``psum`` the gradients over ``axis_name``. Without ``axis_name`` (one device,
or `jax.jit` over a sharded batch) the code is global-view. With no positives (or no
negatives) in a binary batch the balanced accuracy is 0 and the loss is 1 with zero
gradient, as in the authors' code; use batches that contain both classes.

References:
  Han, Moniz, Bhattacharya and Ferrao, "AnyLoss: Transforming Classification Metrics into
  Loss Functions", KDD 2024 (arXiv:2405.14745; code: github.com/doheonhan/AnyLoss).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np

from reweight import parallel
from reweight._checks import check_choice
from reweight.parallel import AxisName

Array = jax.Array

AMPLIFIER = 73.0
SMOOTHING = 1e-5


class SoftConfusion(NamedTuple):
  """Soft confusion counts over the global batch; ``[]`` (binary) or ``[C]`` (per class).

  ``positives = sum_i y_i`` and ``negatives = sum_i (1 - y_i)`` are the (hard) class counts,
  the authors' ``y1`` and ``y0``.
  """

  tp: Array
  fp: Array
  fn: Array
  tn: Array
  positives: Array
  negatives: Array


def amplify(probs: Array, amplifier: float = AMPLIFIER) -> Array:
  """The approximation function ``A(p) = sigmoid(L (p - 0.5))``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import amplify
    >>> [round(x, 4) for x in amplify(jnp.array([0.0, 0.45, 0.5, 0.9])).tolist()]
    [0.0, 0.0253, 0.5, 1.0]
  """
  return jax.nn.sigmoid(amplifier * (jnp.asarray(probs) - 0.5))


def _global_sum(x: Array, axis_name: AxisName, typed: bool) -> Array:
  """Sum over the batch axis: the global value (see `reweight.parallel.global_sum`)."""
  return parallel.global_sum(jnp.sum(x, axis=0), axis_name, typed)


Multiclass = Literal["sigmoid", "softmax"]
MULTICLASS = get_args(Multiclass)


def _prepare(logits, labels, mask):
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim == 2 and logits.shape[1] == 1:
    logits = logits[:, 0]
  if logits.ndim not in (1, 2) or labels.shape != logits.shape[:1]:
    raise ValueError(f"logits of shape {logits.shape} need labels of shape "
                     f"{logits.shape[:1]}; use binary logits [B] with labels in {{0, 1}} or "
                     "logits [B, C] with integer labels [B]")
  concrete = not isinstance(labels, jax.core.Tracer) and labels.size
  if logits.ndim == 1:
    if concrete:
      bad = ~np.isin(np.asarray(labels), (0, 1))
      if bad.any():
        raise ValueError(f"binary label {np.asarray(labels)[bad].flat[0].item()!r} is not one of "
                         "[0, 1]")
  else:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if concrete:
      lab = np.asarray(labels)
      bad = (lab < 0) | (lab >= logits.shape[1])
      if bad.any():
        raise ValueError(f"label {int(lab[bad].flat[0])} is out of range: valid labels are "
                         f"0..{logits.shape[1] - 1} for logits with {logits.shape[1]} classes")
  logits = logits.astype(jnp.float32)
  valid = jnp.isfinite(logits) if logits.ndim == 1 else jnp.all(jnp.isfinite(logits), -1)
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != labels.shape:
      raise ValueError(f"mask has shape {mask.shape} but labels have shape {labels.shape}")
    valid = valid & mask.astype(bool)
  logits = jnp.where(valid if logits.ndim == 1 else valid[:, None], logits, 0.0)
  return logits, labels, valid


def soft_confusion(logits: Array, labels: Array, *, amplifier: float = AMPLIFIER,
                   multiclass: Multiclass = "sigmoid", mask: Array | None = None,
                   axis_name: AxisName = None) -> SoftConfusion:
  """The amplified soft confusion matrix of a batch (binary or one-vs-rest per class).

  Args:
    logits: ``[B]`` binary scores (labels in {0, 1}) or ``[B, C]`` (integer labels).
    labels: ``[B]``.
    amplifier: ``L`` of `amplify` (the paper's 73).
    multiclass: for ``[B, C]`` logits, the per-class probability: ``"sigmoid"`` of each
      logit (one-vs-rest scores) or ``"softmax"`` over the classes.
    mask: optional ``[B]`` booleans; masked rows and rows with non-finite logits are not
      counted.
    axis_name: inside `shard_map` / `pmap`, the counts are summed over these axes (global
      values; see the module docstring for their gradients).

  Returns:
    A `SoftConfusion` of scalars (binary) or ``[C]`` arrays (multi-class).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import soft_confusion
    >>> c = soft_confusion(jnp.array([5.0, -5.0, 5.0]), jnp.array([1, 1, 0]))
    >>> [round(float(x), 3) for x in c]  # tp, fp, fn, tn, positives, negatives
    [1.0, 1.0, 1.0, 0.0, 2.0, 1.0]
  """
  check_choice("multiclass", multiclass, MULTICLASS)
  logits, labels, valid = _prepare(logits, labels, mask)
  axis_name = parallel.resolve_axis_name(axis_name)
  typed = parallel.is_typed(logits, axis_name)
  v = valid.astype(jnp.float32)
  if logits.ndim == 1:
    a = amplify(jax.nn.sigmoid(logits), amplifier)
    y = labels.astype(jnp.float32)
  else:
    probs = (jax.nn.sigmoid(logits) if multiclass == "sigmoid"
             else jax.nn.softmax(logits, axis=-1))
    a = amplify(probs, amplifier)
    y = jax.nn.one_hot(labels, logits.shape[1], dtype=jnp.float32)
    v = v[:, None]
  tp = _global_sum(v * y * a, axis_name, typed)
  fp = _global_sum(v * (1.0 - y) * a, axis_name, typed)
  fn = _global_sum(v * y * (1.0 - a), axis_name, typed)
  tn = _global_sum(v * (1.0 - y) * (1.0 - a), axis_name, typed)
  positives = _global_sum(v * y, axis_name, typed)
  negatives = _global_sum(v * (1.0 - y), axis_name, typed)
  return SoftConfusion(tp, fp, fn, tn, positives, negatives)


def _macro(per_class: Array, present: Array) -> Array:
  count = jnp.sum(present)
  return jnp.sum(jnp.where(present, per_class, 0.0)) / jnp.maximum(count, 1)


def f_beta_loss(logits: Array, labels: Array, beta: float = 1.0, *,
                amplifier: float = AMPLIFIER, multiclass: Multiclass = "sigmoid",
                mask: Array | None = None, axis_name: AxisName = None) -> Array:
  """AnyLoss F-beta: ``1 - F_beta`` of the amplified soft confusion matrix.

  .. math::

    F_\\beta = \\frac{(1 + \\beta^2)\\, TP}{\\beta^2 (TP + FN) + (TP + FP) + s}

  binary, or its macro average over the classes present in the batch (one-vs-rest) for
  ``[B, C]`` logits. See the module docstring for the sharded value convention.

  Args:
    logits: ``[B]`` binary scores (labels in {0, 1}) or ``[B, C]`` (integer labels).
    labels: ``[B]``.
    beta: ``beta > 0``; 1 is F1, larger values weigh recall more.
    amplifier: ``L`` of `amplify`.
    multiclass: ``"sigmoid"`` or ``"softmax"`` per-class probabilities for ``[B, C]`` logits
      (see the module docstring).
    mask: optional ``[B]`` booleans.
    axis_name: inside `shard_map` / `pmap`, the batch axis name(s).

  Returns:
    A scalar loss in [0, 1] (the global batch's, on every device, under ``axis_name``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import f_beta_loss
    >>> labels = jnp.array([1, 1, 0, 0])
    >>> round(float(f_beta_loss(jnp.array([4.0, 4.0, -4.0, -4.0]), labels)), 4)  # perfect
    0.0
    >>> round(float(f_beta_loss(jnp.array([4.0, -4.0, 4.0, -4.0]), labels)), 4)  # F1 = 1/2
    0.5

  References:
    Han et al., "AnyLoss: Transforming Classification Metrics into Loss Functions", KDD 2024.
  """
  if not isinstance(beta, int | float) or not beta > 0:
    raise ValueError(f"beta={beta!r} must be a positive float")
  c = soft_confusion(logits, labels, amplifier=amplifier, multiclass=multiclass, mask=mask,
                     axis_name=axis_name)
  b2 = float(beta) ** 2
  f = (1.0 + b2) * c.tp / (b2 * c.positives + (c.tp + c.fp) + SMOOTHING)
  if f.ndim:
    f = _macro(f, c.positives > 0)
  return 1.0 - f


def balanced_accuracy_loss(logits: Array, labels: Array, *, amplifier: float = AMPLIFIER,
                           multiclass: Multiclass = "sigmoid", mask: Array | None = None,
                           axis_name: AxisName = None) -> Array:
  """AnyLoss balanced accuracy: ``1 - (TP / n_pos + TN / n_neg) / 2`` from soft counts.

  .. math::

    \\text{BA} = \\frac{n_{neg}\\, TP + n_{pos}\\, TN}{2\\, n_{pos} n_{neg} + s}
    \\quad \\text{(binary)}, \\qquad
    \\text{BA} = \\operatorname{mean}_{k: n_k > 0} \\frac{TP_k}{n_k + s}
    \\quad \\text{(multi-class)}

  See the module docstring for the sharded value convention.

  Args:
    logits: ``[B]`` binary scores (labels in {0, 1}) or ``[B, C]`` (integer labels).
    labels: ``[B]``.
    amplifier: ``L`` of `amplify`.
    multiclass: ``"sigmoid"`` or ``"softmax"`` per-class probabilities for ``[B, C]`` logits
      (see the module docstring).
    mask: optional ``[B]`` booleans.
    axis_name: inside `shard_map` / `pmap`, the batch axis name(s).

  Returns:
    A scalar loss in [0, 1] (the global batch's, on every device, under ``axis_name``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import balanced_accuracy_loss
    >>> labels = jnp.array([1, 0, 0, 0])
    >>> # Predicting "negative" everywhere: accuracy 3/4, balanced accuracy 1/2.
    >>> round(float(balanced_accuracy_loss(jnp.full(4, -4.0), labels)), 4)
    0.5

  References:
    Han et al., "AnyLoss: Transforming Classification Metrics into Loss Functions", KDD 2024.
  """
  c = soft_confusion(logits, labels, amplifier=amplifier, multiclass=multiclass, mask=mask,
                     axis_name=axis_name)
  if c.tp.ndim:
    recall = c.tp / (c.positives + SMOOTHING)
    ba = _macro(recall, c.positives > 0)
  else:
    n_pos, n_neg = c.positives, c.negatives
    ba = (n_neg * c.tp + n_pos * c.tn) / (2.0 * n_pos * n_neg + SMOOTHING)
  return 1.0 - ba
