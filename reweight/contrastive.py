"""Contrastive pairs: symmetric InfoNCE (CLIP), decoupled, weighted, global-batch; ALIP gates.

A batch of ``B`` pairs ``(a_i, b_i)`` (image i and its text i) gives the similarity matrix
``S_ij = <a_i, b_j>`` (positives on the diagonal). `info_nce` returns one loss per *pair*,
``[B]``, the mean of the two directions (a->b: row i; b->a: column i), so it composes with
`reweight.weighted` and any `Weighting` (e.g. `consistency_gate`, which down-weights pairs
whose text disagrees with a second view of it).

**Global batch.** Contrastive losses are not per-example decomposable: every pair's
denominator runs over the whole batch. Under data parallelism the global-batch form
all-gathers the embeddings (`info_nce_global`, inside `jax.shard_map`): each device gathers
``[B_global, D]`` of both views (communication ``O(B_global D)`` per device) and computes its
``b = B_global / n_devices`` rows of ``S`` and of ``S^T``, ``O(b B_global D)`` flops and
``O(b B_global)`` memory per device, ``O(B_global^2 D)`` in all. The losses equal the
one-device loss over the global batch; the transpose of the all-gather (a reduce-scatter)
brings every device's gradient contributions back to the owner of each embedding. Under
`jax.jit` with a sharded batch, ``info_nce(a @ b.T, ...)`` is already the global form (XLA
inserts the gather).

Examples:
  >>> import jax.numpy as jnp
  >>> from reweight import contrastive
  >>> s = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  >>> [round(x, 4) for x in contrastive.info_nce(s, temperature=1.0).tolist()]
  [0.3133, 0.3133]
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

from reweight import parallel
from reweight._checks import check_open_unit, check_positive
from reweight.base import Weighting, normalize, valid_mask
from reweight.parallel import AxisName

Array = jax.Array

__all__ = [
    "GateState", "consistency_gate", "cosine_similarity", "info_nce", "info_nce_global",
]


def cosine_similarity(x, y, eps: float = 1e-8) -> Array:
  """Row-wise cosine similarity of ``x`` and ``y`` (``[B, D]`` each), ``[B]``."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  num = jnp.sum(x * y, axis=-1)
  den = jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(y, axis=-1)
  return num / jnp.maximum(den, eps)


def _temperatures(temperature, rows: int) -> Array:
  if isinstance(temperature, int | float):
    check_positive("temperature", temperature)
  t = jnp.asarray(temperature, jnp.float32)
  if t.ndim == 0:
    return jnp.full((rows,), t)
  chex.assert_shape(t, (rows,), exception_type=ValueError,
                    custom_message=f"temperature must be a scalar or have shape [{rows}], "
                    f"got {t.shape}")
  return t


def _directional(logits: Array, pos_col: Array, temps: Array, valid_cols: Array,
                 den_weights, decoupled: bool) -> Array:
  """``-logit_pos + log sum_j w_j exp(logit_j)`` of every row, ``logit = S / tau_row``."""
  z = logits / temps[:, None]
  rows = jnp.arange(z.shape[0])
  pos = z[rows, pos_col]
  keep = jnp.broadcast_to(valid_cols[None, :], z.shape)
  if decoupled:
    keep = keep & (jnp.arange(z.shape[1])[None, :] != pos_col[:, None])
  if den_weights is not None:
    keep = keep & (den_weights > 0)
    z = z + jnp.log(jnp.where(den_weights > 0, den_weights, 1.0))
  any_kept = jnp.any(keep, axis=1)
  keep = keep | ~any_kept[:, None]  # a row with an empty denominator: loss 0, no NaN
  lse = jax.nn.logsumexp(jnp.where(keep, z, -jnp.inf), axis=1)
  return jnp.where(any_kept, lse - pos, 0.0)


def _check_pair_weights(pair_weights, b: int):
  if pair_weights is None:
    return None, None
  w = jnp.asarray(pair_weights, jnp.float32)
  if w.shape == (b,):
    return w, None
  if w.shape == (b, b):
    return None, w
  raise ValueError(f"pair_weights must have shape [{b}] or [{b}, {b}], got {w.shape}")


def info_nce(similarity, *, temperature, pair_weights=None, decoupled: bool = False,
             mask=None) -> Array:
  """Symmetric InfoNCE (CLIP) over a ``[B, B]`` similarity matrix, one loss per pair.

  .. math::

    \\ell_i = \\tfrac12\\Big[-\\frac{S_{ii}}{\\tau_i}
        + \\log\\sum_{j \\in N_i} w_{ij} e^{S_{ij}/\\tau_i}\\Big]
      + \\tfrac12\\Big[-\\frac{S_{ii}}{\\tau_i}
        + \\log\\sum_{j \\in N_i} w_{ji} e^{S_{ji}/\\tau_i}\\Big]

  with ``N_i`` all valid ``j`` (``j != i`` with ``decoupled=True``: decoupled contrastive
  learning drops the positive from the denominator, so the loss can go below zero and its
  gradient no longer shrinks with the positive's own probability). ``w = 1`` without
  ``pair_weights``. The mean of ``\\ell`` over the batch is CLIP's loss (the mean of the
  image->text and text->image cross-entropies).

  Per-sample temperatures: ``tau_i`` scales row i (a_i against every b) and column i (b_i
  against every a), i.e. both directions of pair i.

  Args:
    similarity: ``[B, B]``, ``S_ij = <a_i, b_j>`` (unscaled; e.g. cosine similarities).
    temperature: ``tau > 0``, a scalar or ``[B]`` per pair.
    pair_weights: None; ``[B]`` weights multiplying each pair's loss (an ALIP-style adaptive
      contrastive loss: ``w_i l_i``); or ``[B, B]`` non-negative weights ``w_ij`` on the
      terms of the denominators (row i uses ``w_i.``, column i uses ``w_.i``; a zero drops
      the term, e.g. a known false negative). Weights are used as given.
    decoupled: drop the positive from the denominators (Yeh et al.).
    mask: ``[B]`` valid pairs (None: all). Invalid pairs get loss 0 and leave every
      denominator (padding of a global batch).

  Returns:
    ``[B]`` per-pair losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight import contrastive
    >>> s = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> [round(x, 4) for x in contrastive.info_nce(s, temperature=1.0, decoupled=True).tolist()]
    [-1.0, -1.0]

  References:
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision"
    (CLIP), ICML 2021. Yeh et al., "Decoupled Contrastive Learning", ECCV 2022.
  """
  s = jnp.asarray(similarity, jnp.float32)
  chex.assert_rank(s, 2, exception_type=ValueError,
                   custom_message=f"similarity must be [B, B], got {s.shape}")
  b = s.shape[0]
  if s.shape != (b, b):
    raise ValueError(f"similarity must be square [B, B], got {s.shape}")
  temps = _temperatures(temperature, b)
  loss_w, den_w = _check_pair_weights(pair_weights, b)
  valid = jnp.ones((b,), bool) if mask is None else jnp.asarray(mask).astype(bool)
  chex.assert_shape(valid, (b,), exception_type=ValueError,
                    custom_message=f"mask must have shape [{b}], got {valid.shape}")
  pos = jnp.arange(b)
  row = _directional(s, pos, temps, valid, den_w, decoupled)
  col = _directional(s.T, pos, temps, valid, None if den_w is None else den_w.T, decoupled)
  loss = 0.5 * (row + col)
  if loss_w is not None:
    loss = loss * loss_w
  return jnp.where(valid, loss, 0.0)


def info_nce_global(emb_a, emb_b, *, axis_name: AxisName, temperature, pair_weights=None,
                    decoupled: bool = False, mask=None, normalize_embeddings: bool = True
                    ) -> Array:
  """`info_nce` over the *global* batch from this device's shard, inside `jax.shard_map`.

  Each device holds ``b`` pairs (``emb_a``, ``emb_b``: ``[b, D]``). Both views are
  all-gathered over ``axis_name`` to ``[B_global, D]`` (``B_global = b * n``, devices in axis
  order); this device computes rows ``a_local @ b_all^T`` (its a->b terms) and
  ``b_local @ a_all^T`` (its b->a terms). Cost per device: all-gather of ``2 B_global D``
  values, ``2 b B_global D`` flops and a ``[b, B_global]`` logit block; ``O(B_global^2 D)``
  over the mesh. The per-pair losses of this shard equal the corresponding entries of the
  one-device ``info_nce(a_all @ b_all.T, ...)``. The loss of the global batch is
  ``psum(sum of losses) / B_global`` (`reweight.weighted` with ``axis_name`` does that).

  Args:
    emb_a: ``[b, D]`` this shard's first-view embeddings (e.g. images).
    emb_b: ``[b, D]`` this shard's second-view embeddings (e.g. texts).
    axis_name: the mesh axis (or axes) the batch is sharded over.
    temperature: a scalar or this shard's ``[b]`` per-pair temperatures.
    pair_weights: None or this shard's ``[b]`` per-pair loss weights (the ``[B, B]`` form of
      `info_nce` is not offered here).
    decoupled: as in `info_nce`.
    mask: None or this shard's ``[b]`` valid pairs (gathered too).
    normalize_embeddings: L2-normalise the embeddings first (``S`` = cosine similarity).

  Returns:
    ``[b]`` the per-pair losses of this shard.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from reweight import contrastive, parallel
    >>> a = jax.random.normal(jax.random.key(0), (8, 4))
    >>> b = jax.random.normal(jax.random.key(1), (8, 4))
    >>> fn = jax.jit(jax.shard_map(lambda x, y: contrastive.info_nce_global(
    ...     x, y, axis_name="data", temperature=0.1), mesh=parallel.make_mesh(),
    ...     in_specs=(P("data"), P("data")), out_specs=P("data")))
    >>> an = a / jnp.linalg.norm(a, axis=1, keepdims=True)
    >>> bn = b / jnp.linalg.norm(b, axis=1, keepdims=True)
    >>> bool(jnp.allclose(fn(a, b), contrastive.info_nce(an @ bn.T, temperature=0.1),
    ...                   atol=1e-5))
    True

  References:
    Radford et al. (CLIP), ICML 2021 (global-batch similarity by all-gather).
  """
  a = jnp.asarray(emb_a, jnp.float32)
  bb = jnp.asarray(emb_b, jnp.float32)
  chex.assert_rank([a, bb], 2, exception_type=ValueError,
                   custom_message="emb_a and emb_b must be [b, D]")
  chex.assert_equal_shape([a, bb], exception_type=ValueError,
                          custom_message="emb_a and emb_b must have the same shape")
  if normalize_embeddings:
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    bb = bb / jnp.maximum(jnp.linalg.norm(bb, axis=-1, keepdims=True), 1e-12)
  n_local = a.shape[0]
  a_all = lax.all_gather(a, axis_name, tiled=True)
  b_all = lax.all_gather(bb, axis_name, tiled=True)
  valid = jnp.ones((n_local,), bool) if mask is None else jnp.asarray(mask).astype(bool)
  chex.assert_shape(valid, (n_local,), exception_type=ValueError,
                    custom_message=f"mask must have shape [{n_local}], got {valid.shape}")
  valid_all = lax.all_gather(valid, axis_name, tiled=True)
  # this shard's offset in the gathered batch (devices in axis order)
  offset = lax.axis_index(axis_name) * n_local
  pos = offset + jnp.arange(n_local)
  temps = _temperatures(temperature, n_local)
  row = _directional(a @ b_all.T, pos, temps, valid_all, None, decoupled)
  col = _directional(bb @ a_all.T, pos, temps, valid_all, None, decoupled)
  loss = 0.5 * (row + col)
  if pair_weights is not None:
    w = jnp.asarray(pair_weights, jnp.float32)
    chex.assert_shape(w, (n_local,), exception_type=ValueError,
                      custom_message=f"pair_weights must have shape [{n_local}] in "
                      f"info_nce_global, got {w.shape}")
    loss = loss * w
  return jnp.where(valid, loss, 0.0)


# ----------------------------------------------------------------------- ALIP-style gate


class GateState(NamedTuple):
  """State of `consistency_gate`: the running mean similarity and the update count."""

  mean_similarity: Array
  count: Array


def consistency_gate(gamma: float = 2.0, momentum: float = 0.9, *,
                     similarity_key: str = "consistency",
                     embedding_keys: tuple[str, str] = ("text_embeddings", "view_embeddings"),
                     axis_name: AxisName = None) -> Weighting:
  """ALIP-style consistency gate: down-weight pairs whose text disagrees with a second view.

  Each pair i has a consistency score ``s_i``: the extra ``similarity_key`` (``[B]``), or
  the cosine similarity of the extras ``embedding_keys`` (``[B, D]`` each: e.g. the raw
  text's and a synthetic caption's embeddings, or image and text embeddings). With
  ``mu`` the running (EMA, ``momentum``) mean of the valid scores of the global batch (the
  first batch's mean at the first update, updated *before* gating),

  .. math::

    g_i = \\min\\big(1, \\max(s_i, 0) / \\mu\\big)^{\\gamma}, \\qquad
    w_i = g_i \\cdot \\frac{\\sum_j v_j}{\\sum_j v_j g_j}

  (``w_i = 1`` for every valid pair when ``mu <= 0``). Pairs at least as consistent as
  usual keep the full gate; less consistent ones are damped polynomially (``gamma = 0``:
  uniform). Weights are mean one over the valid pairs of the global batch and carry no
  gradient; the scores are read through `jax.lax.stop_gradient`; a pair with a non-finite
  score gets weight 0.

  ALIP's Language Consistency Gate weighs samples by raw-text/synthetic-caption
  consistency and its Description Consistency Gate weighs image-text and image-caption pairs
  by image consistency. Only its abstract was available here, so the gate function above
  (a running-mean threshold and a power law) is this library's choice, not ALIP's exact
  formula; chain two gates (`reweight.chain`) with different keys to gate on two
  consistencies (e.g. text-caption and image-text).

  Args:
    gamma: ``>= 0``, the sharpness of the damping.
    momentum: in ``(0, 1)``, the EMA factor of the mean similarity.
    similarity_key: the name of the extra carrying the scores ``s`` directly.
    embedding_keys: the names of two ``[B, D]`` extras whose row-wise cosine similarity
      is used when ``similarity_key`` is absent.
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.

  Returns:
    A `Weighting` with `GateState` (running mean similarity, update count).

  Raises:
    ValueError: at update, when neither the scores nor both embeddings are passed.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> from reweight import contrastive
    >>> gate = contrastive.consistency_gate(gamma=1.0)
    >>> w, state = gate.update(jnp.zeros(4), gate.init(),
    ...                        consistency=jnp.array([0.9, 0.8, 0.2, 0.5]))
    >>> [round(x, 3) for x in w.tolist()]  # mu = 0.6: gates 1, 1, 1/3, 5/6
    [1.263, 1.263, 0.421, 1.053]

  References:
    Yang et al., "ALIP: Adaptive Language-Image Pre-training with Synthetic Caption",
    ICCV 2023.
  """
  if not isinstance(gamma, jax.core.Tracer) and not gamma >= 0:
    raise ValueError(f"gamma={gamma!r} must be >= 0")
  check_open_unit("momentum", momentum)
  if len(embedding_keys) != 2:
    raise ValueError(f"embedding_keys={embedding_keys!r} must name two extras")

  def init(key=None):
    del key
    return GateState(jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32))

  def update(losses, state, *, mask=None, **extras):
    valid = valid_mask(losses, mask)
    if extras.get(similarity_key) is not None:
      s = jnp.asarray(extras[similarity_key], jnp.float32)
    elif all(extras.get(k) is not None for k in embedding_keys):
      s = cosine_similarity(extras[embedding_keys[0]], extras[embedding_keys[1]])
    else:
      raise ValueError(
          f"consistency_gate needs the extra {similarity_key!r} ([B] scores) or both "
          f"{embedding_keys!r} ([B, D] embeddings); return them in the loss function's aux "
          "dict or pass them as keyword arguments")
    chex.assert_shape(s, losses.shape, exception_type=ValueError,
                      custom_message=f"consistency scores have shape {s.shape}, expected "
                      f"{losses.shape}")
    s = jax.lax.stop_gradient(s)
    valid = valid & jnp.isfinite(s)
    total = parallel.batch_sum(jnp.where(valid, s, 0.0), axis_name)
    count = parallel.batch_sum(valid.astype(jnp.float32), axis_name)
    batch_mean = total / jnp.maximum(count, 1.0)
    mu = jnp.where(state.count == 0, batch_mean,
                   momentum * state.mean_similarity + (1.0 - momentum) * batch_mean)
    mu = jnp.where(count > 0, mu, state.mean_similarity)
    ratio = jnp.maximum(s, 0.0) / jnp.where(mu > 0, mu, 1.0)
    gate = jnp.where(mu > 0, jnp.minimum(ratio, 1.0) ** gamma, 1.0)
    weights = normalize(gate, valid, axis_name)
    return weights, GateState(mu.astype(jnp.float32), state.count + 1)

  return Weighting(init, update)
