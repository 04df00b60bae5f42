"""Token-level weighting: `weighted_tokens` and the `per_sequence` combinator.

A language model's loss is a sum over *tokens*. `weighted_tokens` is `reweight.weighted` one
level down: the weighting sees the valid tokens of the global batch, flattened to one loss
per token, and the loss is

.. math::

  L(\\theta) = \\frac{\\sum_{b,t} \\text{sg}(w_{bt})\\, m_{bt}\\, \\ell_{bt}(\\theta)}
                    {\\sum_{b,t} m_{bt}}

over the *global* batch, with ``m = token_mask & isfinite(l)``. It is never a mean of
per-sequence means (which weights the tokens of short sequences up) nor a mean of
per-device means (which weights the tokens of lightly filled shards up), whatever the
sharding: the numerator and the denominator are summed over the whole batch first.

Examples:
  >>> import jax.numpy as jnp, reweight
  >>> def per_token_loss(params, batch):
  ...   return (batch["x"] - params) ** 2          # [B, T]
  >>> batch = {"x": jnp.array([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]]),
  ...          "token_mask": jnp.array([[1, 1, 1, 1], [1, 0, 0, 0]], bool)}
  >>> fn = reweight.weighted_tokens(per_token_loss, reweight.uniform())
  >>> loss, (state, info) = fn(jnp.float32(0.0), batch, reweight.uniform().init())
  >>> round(float(loss), 4)  # (4 * 1 + 9) / 5 tokens, not the mean of sequence means 5
  2.6
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp

from reweight import parallel
from reweight.base import (
    Weighting,
    _check_batch_axes,
    check_loss_array,
    diagnostics,
    group_info,
    loss_caller,
    normalize,
    scoped_to_axis,
    update_weights,
    valid_mask,
    weighted_mean,
)
from reweight.parallel import AxisName

Array = jax.Array

# Per-sequence fields of a mapping batch, broadcast to the sequence's tokens.
_SEQUENCE_FIELDS = (("group", "groups"), ("id", "example_ids"))


def _check_token_losses(losses) -> None:
  check_loss_array(losses, 2, "per_token_loss_fn", "token losses",
                   "token losses of shape [batch, tokens]")


def _token_mask(batch: Any, aux: dict, shape: tuple[int, int]) -> Array:
  """``token_mask`` (aux first, then the batch) ``& mask[:, None]`` (a per-sequence mask)."""
  token_mask = aux.pop("token_mask", None)
  if token_mask is None and isinstance(batch, Mapping):
    token_mask = batch.get("token_mask")
  token_mask = (jnp.ones(shape, bool) if token_mask is None
                else jnp.asarray(token_mask).astype(bool))
  chex.assert_shape(
      token_mask, shape, exception_type=ValueError,
      custom_message=f"token_mask has shape {token_mask.shape} but the token losses have "
      f"shape {shape}")
  if isinstance(batch, Mapping) and "mask" in batch:
    seq_mask = jnp.asarray(batch["mask"]).astype(bool)
    chex.assert_shape(
        seq_mask, shape[:1], exception_type=ValueError,
        custom_message=f"batch['mask'] (one flag per sequence) has shape {seq_mask.shape}, "
        f"expected {shape[:1]}")
    token_mask = token_mask & seq_mask[:, None]
  return token_mask


def _flatten_tokens(x: Any, shape: tuple[int, int]) -> Any:
  """``[B, T, ...] -> [B*T, ...]``; ``[B, ...]`` (per sequence) is repeated over tokens;
  anything else is returned as is."""
  if not hasattr(x, "shape"):
    return x
  b, t = shape
  if x.shape[:2] == (b, t):
    return jnp.reshape(x, (b * t,) + x.shape[2:])
  if x.ndim >= 1 and x.shape[0] == b:
    return jnp.reshape(jnp.repeat(x[:, None], t, axis=1), (b * t,) + x.shape[1:])
  return x


def weighted_tokens(per_token_loss_fn: Callable, weighting: Weighting, *,
                    axis_name: AxisName = None) -> Callable:
  """Turns a per-token loss function into a token-weighted scalar loss.

  .. math::

    w, s' = \\text{weighting.update}(\\text{flat}(\\ell), s, \\text{mask}=\\text{flat}(m),
            \\text{sequence\\_ids}=\\ldots) \\qquad
    L(\\theta) = \\frac{\\sum_{b,t} \\text{sg}(w_{bt})\\, m_{bt}\\, \\ell_{bt}(\\theta)}
                      {\\sum_{b,t} m_{bt}}

  with ``m = token_mask & isfinite(l)`` (``& batch["mask"][:, None]`` when the batch has a
  per-sequence ``mask``) and both sums over the **global** batch: the loss is the
  (weighted) mean over the valid tokens of the whole batch, never a mean of per-sequence
  or per-device means. With `reweight.uniform` it is the plain token mean.

  The token mask is the per-token function's aux ``token_mask`` if it returns one, else
  ``batch["token_mask"]``, else every token. The weighting sees the ``[B*T]`` flattened
  token losses (so its contract, mean one over valid entries, is over the valid tokens of
  the global batch) and, as extras: ``sequence_ids`` (``[B*T]``, the row of each token in
  this device's batch), ``num_sequences`` (this device's ``B``, a Python int), every aux
  entry (those of shape ``[B, T, ...]``, e.g. ``logits [B, T, V]`` and ``labels [B, T]``,
  flattened to ``[B*T, ...]``; those of shape ``[B, ...]`` repeated over the tokens), the
  batch's per-sequence ``group`` / ``id`` fields as ``groups=`` / ``example_ids=`` repeated
  over the tokens, every keyword passed to the loss, ``params`` (no gradient), ``batch``,
  ``loss_fn`` (the per-token function, flattened) and ``step``, as in `reweight.weighted`.

  **Data parallelism** is that of `reweight.weighted`: under `jax.jit` with the batch
  sharded on a `Mesh`, no ``axis_name``; inside `jax.shard_map` (``check_vma=True``,
  batch on ``P("data")``) ``axis_name="data"``, and the loss is the global one, replicated,
  whose gradient of replicated parameters is the global gradient (no ``psum`` to write);
  under `jax.pmap` ``psum`` the gradients. Sequences are never split across devices (the
  batch is sharded over ``B``).

  Args:
    per_token_loss_fn: ``f(params, batch, **kw) -> losses[B, T] | (losses[B, T], aux)``.
    weighting: a `Weighting` over tokens (e.g. `reweight.sample.token_probability`, or
      `per_sequence` of a per-example weighting).
    axis_name: inside `shard_map`/`pmap`, the batch axis name(s) (inherited by the
      weighting, as in `reweight.weighted`).

  Returns:
    ``loss_fn(params, batch, weighting_state, *, step=None, **kw) -> (loss, (new_state,
    info))``, the convention of `reweight.weighted`; ``info`` holds ``weights`` and
    ``losses`` (``[B, T]``; zero weight outside the mask), ``token_mask`` (``[B, T]``, the
    valid tokens: mask and finite loss),
    ``loss`` (the unweighted token mean) and the `reweight.diagnostics` over tokens
    (``num_valid`` counts valid tokens).

  Raises:
    ValueError: on losses that are not ``[B, T]``, a mask of another shape, weights of
      another shape than the flattened losses, or (inside `jax.shard_map`) a missing
      ``axis_name`` while the losses vary over a mesh axis.

  Examples:
    >>> import jax, jax.numpy as jnp, reweight
    >>> def per_token_loss(params, batch):
    ...   logits = params[batch["inputs"]]                 # [B, T, V] bigram model
    ...   lp = jax.nn.log_softmax(logits)
    ...   return -jnp.take_along_axis(lp, batch["targets"][..., None], -1)[..., 0]
    >>> batch = {"inputs": jnp.array([[0, 1, 2], [2, 0, 0]]),
    ...          "targets": jnp.array([[1, 2, 0], [1, 0, 0]]),
    ...          "token_mask": jnp.array([[1, 1, 1], [1, 0, 0]], bool)}
    >>> w = reweight.sample.token_probability()
    >>> fn = reweight.weighted_tokens(per_token_loss, w)
    >>> (loss, (state, info)), g = jax.value_and_grad(fn, has_aux=True)(
    ...     jnp.zeros((3, 3)), batch, w.init())
    >>> round(float(loss), 4), float(info["weights"].sum())   # log 3; four valid tokens
    (1.0986, 4.0)

  References:
    The gradient-accumulation loss-scaling bug: huggingface/transformers#19494 and the
    "Fixing gradient accumulation" note (Unsloth / Hugging Face, 2024).
  """
  call = loss_caller(per_token_loss_fn)

  def _loss(axis_name, params, batch, weighting_state, step, kwargs):
    losses, aux = call(params, batch, kwargs)
    _check_token_losses(losses)
    shape = tuple(losses.shape)
    b, t = shape
    token_mask = _token_mask(batch, aux, shape)
    flat = jnp.reshape(losses, (b * t,))
    flat_mask = jnp.reshape(token_mask, (b * t,))
    _check_batch_axes(flat, axis_name)

    def losses_only(p, bt):
      return jnp.reshape(call(p, bt, kwargs)[0], (-1,))

    extras: dict[str, Any] = {}
    if isinstance(batch, Mapping):
      for field, name in _SEQUENCE_FIELDS:
        if field in batch:
          extras[name] = _flatten_tokens(jnp.asarray(batch[field]), shape)
    extras.update({k: _flatten_tokens(v, shape) for k, v in aux.items()})
    extras.update(kwargs)
    extras["sequence_ids"] = jnp.repeat(jnp.arange(b, dtype=jnp.int32), t)
    extras["num_sequences"] = b
    extras["params"] = jax.lax.stop_gradient(params)
    extras["batch"] = batch
    extras["loss_fn"] = losses_only
    extras["step"] = step

    sg_flat = jax.lax.stop_gradient(flat)
    weights, new_state = update_weights(weighting, flat, weighting_state, flat_mask, extras,
                                        f"{b * t} flattened token losses (shape {(b * t,)})")
    valid = valid_mask(flat, flat_mask)
    loss = weighted_mean(flat, weights, valid, axis_name)
    info = {
        "weights": jnp.reshape(weights, shape),
        "losses": jax.lax.stop_gradient(losses),
        "token_mask": jnp.reshape(valid, shape),
        "loss": parallel.batch_mean(sg_flat, axis_name, valid),
        **diagnostics(weights, sg_flat, flat_mask, axis_name),
        **group_info(new_state, weights, sg_flat, extras.get("groups"), valid, axis_name),
    }
    return loss, (new_state, info)

  return scoped_to_axis(axis_name, _loss)


def per_sequence(weighting: Weighting, *, axis_name: AxisName = None) -> Weighting:
  """Token weights from a per-example weighting of per-sequence mean losses.

  .. math::

    \\bar\\ell_s = \\frac{\\sum_{t \\in s} m_t \\ell_t}{\\sum_{t \\in s} m_t}, \\qquad
    u, s' = \\text{weighting.update}(\\bar\\ell, s), \\qquad
    w_t = \\frac{N\\, u_{s(t)}}{\\sum_{t'} m_{t'} u_{s(t')}}

  over the valid tokens ``N`` of the global batch: the inner weighting sees one loss per
  sequence (the mean over its valid tokens; sequences without a valid token are masked
  out), and each token gets its sequence's weight, rescaled so that the token weights have
  mean one over the valid tokens. A sequence's total weight is therefore ``∝ u_s n_s``
  (its weight times its length): with `reweight.uniform` inside, every token weighs one and
  `weighted_tokens` gives the plain token mean.

  It reads ``sequence_ids`` (``[N]`` ints in ``[0, num_sequences)``, the local sequence of
  each token) and ``num_sequences`` (a Python int), which `weighted_tokens` passes. A
  sequence must lie on one device (true when the batch is sharded over sequences). The
  inner weighting gets ``mask=`` (sequences with a valid token), ``step=`` and the other
  extras except those with one entry per token (``logits``, ``labels``, ``groups``, ...,
  which have no per-sequence meaning here); ``groups=`` / ``example_ids=`` are passed per
  sequence (the value of the sequence's first token).

  Args:
    weighting: a per-example `Weighting` (any of `reweight.sample`, `reweight.group`).
    axis_name: the batch axis name(s) inside `shard_map` / `pmap` (inherited from
      `weighted_tokens` when None).

  Returns:
    A `Weighting` over tokens whose state is the inner weighting's.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> w = reweight.per_sequence(reweight.sample.loss_based("upper", r=1.0))
    >>> losses = jnp.array([1.0, 3.0, 0.0, 0.0])        # sequence 0: 2 tokens, mean 2
    >>> ids = jnp.array([0, 0, 1, 1])                     # sequence 1: 1 token, loss 0
    >>> mask = jnp.array([True, True, True, False])
    >>> weights, _ = w.update(losses, w.init(), mask=mask, sequence_ids=ids,
    ...                       num_sequences=2)
    >>> # sequences: u = 2 (e, 1) / (e + 1); tokens: 3 (u0, u0, u1) / (2 u0 + u1)
    >>> [round(x, 4) for x in weights.tolist()]
    [1.267, 1.267, 0.4661, 0.0]
  """

  def init(key=None):
    return weighting.init(key)

  def update(losses, state, *, mask=None, sequence_ids=None, num_sequences=None, **extras):
    if sequence_ids is None or num_sequences is None:
      raise ValueError(
          "per_sequence needs the sequence_ids= and num_sequences= extras (which "
          "reweight.weighted_tokens passes); use it inside weighted_tokens")
    valid = valid_mask(losses, mask)
    n_tok = losses.shape[0]
    ids = jnp.asarray(sequence_ids)
    chex.assert_shape(ids, (n_tok,), exception_type=ValueError,
                      custom_message=f"sequence_ids has shape {ids.shape}, expected {(n_tok,)}")
    s = int(num_sequences)
    vf = valid.astype(jnp.float32)
    seq_sum = jax.ops.segment_sum(jnp.where(valid, losses, 0.0), ids, num_segments=s)
    seq_count = jax.ops.segment_sum(vf, ids, num_segments=s)
    seq_valid = seq_count > 0
    seq_loss = seq_sum / jnp.maximum(seq_count, 1.0)
    inner_extras = {}
    first = jax.ops.segment_min(jnp.arange(n_tok), ids, num_segments=s)
    first = jnp.clip(first, 0, max(n_tok - 1, 0))
    for k, v in extras.items():
      if k in ("groups", "example_ids") and hasattr(v, "shape") and v.shape[:1] == (n_tok,):
        inner_extras[k] = jnp.asarray(v)[first]
      elif hasattr(v, "shape") and getattr(v, "ndim", 0) >= 1 and v.shape[0] == n_tok:
        continue
      else:
        inner_extras[k] = v
    u, state = weighting.update(jax.lax.stop_gradient(seq_loss), state, mask=seq_valid,
                                **inner_extras)
    per_token = jnp.where(valid, jnp.asarray(u)[ids], 0.0)
    return normalize(per_token, valid, axis_name), state

  return Weighting(init, update)


__all__ = ["per_sequence", "weighted_tokens"]
