"""One training step and one evaluation step, jit-compiled over a `Mesh`.

The train step is ``losses -> weights -> weighted gradient -> optax update``. With
``microbatches > 1`` the global-batch weights are kept exactly: a forward pass over every
microbatch gives all per-example losses first, the weighting sees the whole batch, then
weighted gradients are accumulated microbatch by microbatch (DESIGN 3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from reweight import losses as losses_lib
from reweight import parallel
from reweight.base import (
  Weighting,
  diagnostics,
  group_info,
  split_loss_output,
  valid_mask,
  weighted,
  weighted_mean,
  weighting_inputs,
)
from reweight.reparam._core import Reparam
from reweight.reparam.factored import NotFactorableError, factored

PyTree = Any


def classification_loss(apply_fn: Callable, loss: str = "ce", **loss_kwargs) -> Callable:
  """Per-example classification loss of a model: ``f(params, batch, *, key=None)``.

  Returns ``(losses [B], {"logits", "labels"})``; the batch holds ``x`` and ``label``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.train.step import classification_loss
    >>> f = classification_loss(lambda p, x, train=False, key=None: x @ p)
    >>> losses, aux = f(jnp.zeros((2, 3)), {"x": jnp.ones((4, 2)), "label": jnp.zeros(4, int)})
    >>> losses.shape, sorted(aux)
    ((4,), ['labels', 'logits'])
  """
  loss_fn = losses_lib.get(loss)

  def per_example(params, batch, *, key=None):
    logits = apply_fn(params, batch["x"], train=key is not None, key=key)
    labels = batch["label"]
    return loss_fn(logits, labels, **loss_kwargs), {"logits": logits, "labels": labels}

  return per_example


def _reparam_loss(per_example_loss: Callable, reparam: Reparam | None) -> Callable:
  """The per-example loss as a function of ``(trainable, frozen)``.

  With a low-rank additive ``reparam`` (LoRA, AdaLoRA, EVA, ...) the loss is evaluated by
  `reweight.reparam.factored` (``x @ K + s (x @ A) @ B``, no full kernel or kernel gradient);
  where that raises `NotFactorableError` (another reparam, or a model using a targeted kernel
  other than in a contraction) it falls back to ``per_example_loss(reparam.apply(...))``.
  """
  fast = None if reparam is None else factored(per_example_loss, reparam)
  use_fast = [fast is not None]

  def fn(trainable, batch, *, frozen, key=None):
    if reparam is None:
      return per_example_loss(trainable, batch, key=key)
    if use_fast[0]:
      try:
        return fast(trainable, frozen, batch, key=key)
      except NotFactorableError:
        use_fast[0] = False
    return per_example_loss(reparam.apply(trainable, frozen), batch, key=key)

  return fn


def _split_microbatches(batch, microbatches: int):
  def split(x):
    if x.shape[0] % microbatches:
      raise ValueError(f"batch of size {x.shape[0]} does not split into "
                       f"microbatches={microbatches} equal parts")
    return x.reshape((microbatches, x.shape[0] // microbatches) + x.shape[1:])
  return jax.tree.map(split, batch)


def _count_nonfinite(tree) -> jax.Array:
  """How many entries of a pytree's float leaves are NaN or infinite (int32)."""
  counts = [jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return sum(counts, jnp.zeros((), jnp.int32)).astype(jnp.int32)


def _check_input_shapes(batch) -> None:
  """Trace-time shape checks of a classification batch (``x``, ``label``, ``mask``)."""
  if not isinstance(batch, dict) or "label" not in batch:
    return
  label = batch["label"]
  if label.ndim != 1:
    raise ValueError(f"batch['label'] must have shape [B]; got {tuple(label.shape)}")
  for k in ("x", "mask", "id", "group", "is_noisy"):
    if k in batch and batch[k].shape[:1] != label.shape:
      raise ValueError(f"batch[{k!r}] has shape {tuple(batch[k].shape)}: its first "
                       f"dimension must be the batch size {label.shape[0]} of batch['label']")


def make_train_step(per_example_loss: Callable, weighting: Weighting,
                    optimizer: optax.GradientTransformation, *, reparam: Reparam | None = None,
                    microbatches: int = 1, skip_nonfinite: bool = False,
                    check_inputs: bool = False, num_classes: int | None = None) -> Callable:
  """A pure ``train_step(state, batch, **loss_kwargs) -> (state, metrics)``.

  Args:
    per_example_loss: ``f(params, batch, *, key=None) -> (losses [B], aux)``; ``key`` is a
      dropout key (see `classification_loss`).
    weighting: the `Weighting`.
    optimizer: an optax transformation of the trainable part; it gets the raw gradients as
      the extra argument ``grads`` too.
    reparam: optional `Reparam`; gradients then flow to ``state.trainable`` only.
    microbatches: split the batch for gradient accumulation, keeping global-batch weights.
    skip_nonfinite: when the step's loss or gradient has a non-finite value, leave the
      trainable parameters, optimizer state and weighting state as they were (only ``step``
      and the key advance) and report ``skipped = 1``. Off: the update is applied as
      computed and the caller (`reweight.train.loop.train`) stops on the counts below.
    check_inputs: a debug option, off by default: checks the shapes of a mapping batch's
      ``label``, ``x``, ``mask``... at trace time (a `ValueError`) and, with
      ``num_classes``, counts the labels outside ``[0, num_classes)`` of valid examples
      under ``jit`` (``bad_labels``; the loop stops on it). Without it such a label is
      silently dropped by the loss under ``jit``.
    num_classes: the label range for ``check_inputs``.

  Returns:
    The step; jit it (the trainer does, with the batch sharded on a mesh). ``loss_kwargs``
    (e.g. ``meta_batch``) are passed to the weighting. Metrics: ``loss`` (the weighted loss),
    ``mean_loss``, the weighting diagnostics and ``weights``; for a group method also
    ``probs``, ``group_loss``, ``group_count`` and ``group_weight_share``; always
    ``nonfinite_loss`` (the non-finite per-example losses, or 1 when only the weighted loss
    is non-finite) and ``nonfinite_grads`` (the non-finite gradient entries), both int32
    counts; ``skipped`` with ``skip_nonfinite``; ``bad_labels`` with ``check_inputs`` and
    ``num_classes``. The counts are device values: reading them is the caller's choice (the
    loop reads them with the sums it logs, without an extra host sync per step).
  """
  if microbatches < 1:
    raise ValueError(f"microbatches={microbatches!r} must be >= 1")
  # Transforms that steer a reparameterization (e.g. `reweight.optim.adalora_budget`) read
  # the raw gradients as the extra argument ``grads``; plain transforms ignore it.
  optimizer = optax.with_extra_args_support(optimizer)
  loss_of_trainable = _reparam_loss(per_example_loss, reparam)

  def apply_update(state, grads, weighting_state, rng, loss, metrics, batch):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable, grads=grads)
    trainable = optax.apply_updates(state.trainable, updates)
    bad_loss = jnp.asarray(metrics.get("num_nonfinite", 0), jnp.int32)
    metrics["nonfinite_loss"] = jnp.where((bad_loss == 0) & ~jnp.isfinite(loss), 1, bad_loss)
    metrics["nonfinite_grads"] = _count_nonfinite(grads)
    new = (trainable, opt_state, weighting_state)
    if skip_nonfinite:  # the whole update, or none of it
      ok = (metrics["nonfinite_loss"] == 0) & (metrics["nonfinite_grads"] == 0)
      old = (state.trainable, state.opt_state, state.weighting_state)
      new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
      metrics["skipped"] = (~ok).astype(jnp.int32)
    if check_inputs and num_classes is not None and isinstance(batch, dict) and (
        "label" in batch):
      label = batch["label"]
      valid = batch.get("mask", jnp.ones(label.shape, bool))
      metrics["bad_labels"] = jnp.sum(((label < 0) | (label >= num_classes)) & valid,
                                      dtype=jnp.int32)
    trainable, opt_state, weighting_state = new
    return state._replace(step=state.step + 1, trainable=trainable, opt_state=opt_state,
                          weighting_state=weighting_state, rng=rng), metrics

  def full_batch_step(state, batch, **loss_kwargs):
    if check_inputs:
      _check_input_shapes(batch)
    rng, key = jax.random.split(state.rng)
    loss_fn = weighted(loss_of_trainable, weighting)
    (loss, (wstate, info)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.trainable, batch, state.weighting_state, step=state.step, frozen=state.frozen,
        key=key, **loss_kwargs)
    metrics = {k: v for k, v in info.items() if k != "losses"}
    metrics["mean_loss"] = metrics.pop("loss")
    metrics["loss"] = loss
    return apply_update(state, grads, wstate, rng, loss, metrics, batch)

  def microbatched_step(state, batch, **loss_kwargs):
    if check_inputs:
      _check_input_shapes(batch)
    rng, key = jax.random.split(state.rng)
    keys = jax.random.split(key, microbatches)
    mbs = _split_microbatches(batch, microbatches)

    def forward(args):
      mb, k = args
      return split_loss_output(loss_of_trainable(state.trainable, mb, frozen=state.frozen,
                                                 key=k))

    losses, aux = jax.lax.map(forward, (mbs, keys))
    merge = lambda x: x.reshape((-1,) + x.shape[2:])
    losses, aux = merge(losses), jax.tree.map(merge, aux)

    def losses_only(p, b):
      return split_loss_output(loss_of_trainable(p, b, frozen=state.frozen))[0]

    extras = weighting_inputs(batch, aux, state.trainable, state.step, loss_kwargs,
                              losses_only)
    mask = extras.pop("mask", None)
    weights, wstate = weighting.update(jax.lax.stop_gradient(losses), state.weighting_state,
                                       mask=mask, **extras)
    weights = jax.lax.stop_gradient(weights)
    valid = valid_mask(losses, mask)
    n_valid = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    mb_w = _split_microbatches(weights, microbatches)
    mb_valid = _split_microbatches(valid, microbatches)

    def accumulate(grads, args):
      mb, k, w, v = args

      def mb_loss(p):
        l = split_loss_output(loss_of_trainable(p, mb, frozen=state.frozen, key=k))[0]
        return jnp.sum(jnp.where(v, w * jnp.where(v, l, 0.0), 0.0)) / n_valid

      g = jax.grad(mb_loss)(state.trainable)
      return jax.tree.map(jnp.add, grads, g), None

    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    grads, _ = jax.lax.scan(accumulate, zeros, (mbs, keys, mb_w, mb_valid))
    metrics = {"weights": weights, "loss": weighted_mean(losses, weights, valid),
               "mean_loss": parallel.batch_mean(losses, where=valid),
               **diagnostics(weights, losses, mask),
               **group_info(wstate, weights, losses, extras.get("groups"), valid)}
    return apply_update(state, grads, wstate, rng, metrics["loss"], metrics, batch)

  return full_batch_step if microbatches == 1 else microbatched_step


def make_eval_step(apply_fn: Callable, num_classes: int, *,
                   reparam: Reparam | None = None) -> Callable:
  """``eval_step(state, batch) -> sums`` of correct predictions, loss, and per-class counts.

  Sums (not means) so that batches and devices add up exactly; padded examples
  (``mask == False``) count for nothing.
  """

  def eval_step(state, batch):
    params = state.trainable if reparam is None else reparam.apply(state.trainable,
                                                                   state.frozen)
    logits = apply_fn(params, batch["x"])
    labels = batch["label"]
    mask = batch.get("mask", jnp.ones(labels.shape, bool))
    correct = (jnp.argmax(logits, -1) == labels) & mask
    loss = losses_lib.softmax_cross_entropy(logits, labels, mask=mask)
    onehot = jax.nn.one_hot(labels, num_classes) * mask[:, None]
    return {
        "correct": jnp.sum(correct),
        "count": jnp.sum(mask),
        "loss_sum": jnp.sum(loss),
        "class_correct": jnp.sum(onehot * correct[:, None], axis=0),
        "class_count": jnp.sum(onehot, axis=0),
    }

  return eval_step
