"""Models of the reference trainer: an MLP, a small CNN and a small decoder-only Transformer.

The models are Flax NNX modules used functionally. `functional` splits a module once into a
static graph definition and two pytrees of plain arrays (nested ``dict``s: ``params`` and
``rest``); `Functional.apply` merges them back inside the traced function, so it is pure,
jit-able, differentiable w.r.t. ``params`` and `jax.vmap`-able over a stacked ``params``
(e.g. a seed axis)::

    model = make_model("transformer", seed=0, vocab_size=256)
    fn = functional(model)                     # Functional(graphdef, params, rest)
    logits = jax.jit(fn.apply)(fn.params, tokens)

``params`` is a *pure* nested dict (``nnx.State.to_pure_dict``), not an ``nnx.State``: its
leaves are arrays, so `jax.tree_util` key paths read ``blocks/0/attn/query/kernel`` (an
``nnx.State`` would add a trailing ``value`` attribute to every path), `optax`, `jax.grad`
and orbax see ordinary pytrees, and regexes such as ``r".*(query|value)/kernel"`` select
leaves directly. Keys of ``nnx.List`` children are ``int`` (``0, 1, ...``); an orbax restore
*with a target* (``ocp.StandardCheckpointer().restore(path, abstract_params)``) keeps them,
a restore without a target returns strings (fix with ``nnx.restore_int_paths``).
`Functional.apply` checks the tree structure and raises on a mismatch rather than merging
leaves in a wrong order.

Parameter paths ('/'-joined `jax.tree_util` key paths of ``params``):

* ``MLP``: ``hidden/{i}/kernel`` ``[d_i, d_{i+1}]``, ``hidden/{i}/bias``, ``head/kernel``,
  ``head/bias``.
* ``CNN``: ``convs/{i}/kernel`` ``[*window, c_in, c_out]``, ``convs/{i}/bias``,
  ``head/kernel``, ``head/bias``.
* ``Transformer``: ``embed/embedding`` ``[V, D]``, ``pos_embed`` ``[max_len, D]`` (learned
  positions only), and for every block ``i``: ``blocks/{i}/ln1/{scale,bias}``,
  ``blocks/{i}/attn/{query,key,value,out}/{kernel,bias}`` (each kernel ``[D, D]``),
  ``blocks/{i}/ln2/{scale,bias}``, ``blocks/{i}/mlp/fc1/{kernel,bias}`` (``[D, 4D]``),
  ``blocks/{i}/mlp/fc2/{kernel,bias}`` (``[4D, D]``); then ``ln_f/{scale,bias}`` and
  ``head/{kernel,bias}`` (``[D, V]`` or ``[D, num_classes]``).

The attention projections are 2-D ``nnx.Linear`` kernels ``[D, D]`` (heads are the column
blocks ``[:, h*Dh:(h+1)*Dh]``), not ``nnx.MultiHeadAttention``'s 3-D ``[D, H, Dh]`` kernels,
so that LoRA-style reparameterizations apply to them as ordinary matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PyTree = Any

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "Functional",
    "MoEBlock",
    "MoEFeedForward",
    "Routing",
    "Transformer",
    "apply_with_routing",
    "functional",
    "make_model",
    "split_model",
]


def _check_dropout(rate: float) -> float:
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout={rate!r} must be in [0, 1)")
  return float(rate)


def _check_rngs(module: nnx.Module, train: bool, rngs: nnx.Rngs | None) -> None:
  if train and module.dropout > 0.0 and rngs is None:
    raise ValueError(
        f"train=True with dropout={module.dropout} needs a PRNG key (Functional.apply(..., "
        "key=...)) or rngs=nnx.Rngs(dropout=key)"
    )


class MLP(nnx.Module):
  """ReLU multi-layer perceptron on flattened inputs.

  ``h_0 = flatten(x)``, ``h_{i+1} = dropout(relu(h_i W_i + b_i))``,
  ``logits = h_L W_head + b_head``.

  Parameter paths: ``hidden/{i}/kernel``, ``hidden/{i}/bias``, ``head/kernel``, ``head/bias``.

  Args:
    in_features: number of input features (or an example shape, whose product is used).
      Inputs ``[B, ...]`` are flattened to ``[B, in_features]``.
    hidden: widths of the hidden layers (may be empty: a linear model).
    num_classes: number of output logits.
    rngs: NNX random streams for initialization (``nnx.Rngs(seed)``).
    dropout: dropout rate after every hidden ReLU (active only with ``train=True``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = MLP(4, (8,), 3, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 4))).shape
    (2, 3)
  """

  def __init__(
      self,
      in_features: int | Sequence[int],
      hidden: Sequence[int],
      num_classes: int,
      *,
      rngs: nnx.Rngs,
      dropout: float = 0.0,
  ):
    if not isinstance(in_features, int):
      in_features = math.prod(in_features)
    widths = [in_features, *hidden]
    if any(w < 1 for w in widths) or num_classes < 1:
      raise ValueError(
          f"in_features={in_features!r}, hidden={tuple(hidden)!r}, num_classes={num_classes!r}"
          " must all be positive"
      )
    self.in_features = in_features
    self.dropout = _check_dropout(dropout)
    self.hidden = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    )
    self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)
    self.drop = nnx.Dropout(self.dropout)

  def __call__(
      self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """Logits ``[B, num_classes]`` for inputs ``[B, ...]`` with ``in_features`` per example."""
    _check_rngs(self, train, rngs)
    x = jnp.reshape(x, (x.shape[0], -1))
    if x.shape[1] != self.in_features:
      raise ValueError(
          f"input has {x.shape[1]} features per example, expected in_features={self.in_features}"
      )
    for layer in self.hidden:
      x = self.drop(jax.nn.relu(layer(x)), deterministic=not train, rngs=rngs)
    return self.head(x)


class CNN(nnx.Module):
  """Small convolutional network for 1-D signals or 2-D images.

  Each stage is ``conv (SAME padding, stride 1) -> relu -> max_pool(pool, stride pool)``;
  the result is flattened, dropped out and mapped to logits by a linear ``head``.

  Parameter paths: ``convs/{i}/kernel`` (``[*window, c_in, c_out]``), ``convs/{i}/bias``,
  ``head/kernel``, ``head/bias``.

  Inputs: any ``[B, ...]`` with ``prod(in_shape)`` elements per example; they are reshaped
  to ``[B, *spatial, channels]``. So 8x8 digits may come as ``[B, 8, 8, 1]``, ``[B, 8, 8]``
  or ``[B, 64]``, and MNIST-1D signals as ``[B, 40]`` or ``[B, 40, 1]``.

  Args:
    in_shape: shape of one example: ``spatial`` or ``(*spatial, channels)``, where
      ``len(spatial) == ndim``. A missing channel axis means one channel.
    num_classes: number of output logits.
    rngs: NNX random streams for initialization.
    channels: output channels of the convolution stages.
    kernel_size: convolution window length along every spatial axis.
    pool: max-pool window and stride after every stage (1 disables pooling).
    ndim: number of spatial axes, 1 or 2. If None, inferred from ``in_shape``: length 1
      means 1-D, length 3 means 2-D; a length-2 ``in_shape`` is ambiguous and needs ``ndim``.
    dropout: dropout rate before the head (active only with ``train=True``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> CNN((8, 8, 1), 10, rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 1))).shape
    (2, 10)
    >>> CNN((40,), 10, rngs=nnx.Rngs(0))(jnp.ones((2, 40))).shape
    (2, 10)
  """

  def __init__(
      self,
      in_shape: Sequence[int],
      num_classes: int,
      *,
      rngs: nnx.Rngs,
      channels: Sequence[int] = (16, 32),
      kernel_size: int = 3,
      pool: int = 2,
      ndim: int | None = None,
      dropout: float = 0.0,
  ):
    in_shape = tuple(int(s) for s in in_shape)
    if ndim is None:
      inferred = {1: 1, 3: 2}
      if len(in_shape) not in inferred:
        raise ValueError(
            f"in_shape={in_shape!r} is ambiguous: pass ndim=1 ((length, channels)) or ndim=2 "
            "((height, width))"
        )
      ndim = inferred[len(in_shape)]
    if ndim not in (1, 2):
      raise ValueError(f"ndim={ndim!r} is not one of [1, 2]")
    if len(in_shape) not in (ndim, ndim + 1) or min(in_shape, default=0) < 1:
      raise ValueError(
          f"in_shape={in_shape!r} must be {ndim} spatial sizes, optionally followed by channels"
      )
    if len(in_shape) == ndim:
      in_shape = (*in_shape, 1)
    if kernel_size < 1 or pool < 1 or not channels or min(channels) < 1 or num_classes < 1:
      raise ValueError(
          f"kernel_size={kernel_size!r}, pool={pool!r}, channels={tuple(channels)!r},"
          f" num_classes={num_classes!r} must be positive (channels non-empty)"
      )
    spatial = list(in_shape[:-1])
    for _ in channels:
      spatial = [s // pool for s in spatial]
    if min(spatial) < 1:
      raise ValueError(
          f"in_shape={in_shape!r} is too small for {len(channels)} stages of pool={pool}"
      )
    self.in_shape = in_shape
    self.ndim = ndim
    self.pool = pool
    self.dropout = _check_dropout(dropout)
    chans = [in_shape[-1], *channels]
    self.convs = nnx.List(
        [
            nnx.Conv(a, b, (kernel_size,) * ndim, padding="SAME", rngs=rngs)
            for a, b in zip(chans[:-1], chans[1:], strict=True)
        ]
    )
    self.head = nnx.Linear(math.prod(spatial) * chans[-1], num_classes, rngs=rngs)
    self.drop = nnx.Dropout(self.dropout)

  def __call__(
      self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """Logits ``[B, num_classes]`` for inputs ``[B, ...]`` of ``prod(in_shape)`` elements."""
    _check_rngs(self, train, rngs)
    per_example = math.prod(x.shape[1:])
    if per_example != math.prod(self.in_shape):
      raise ValueError(
          f"input shape {tuple(x.shape)!r} has {per_example} elements per example, expected "
          f"in_shape={self.in_shape!r}"
      )
    x = jnp.reshape(x, (x.shape[0], *self.in_shape))
    window = (self.pool,) * self.ndim
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
      if self.pool > 1:
        x = nnx.max_pool(x, window, strides=window, padding="VALID")
    x = jnp.reshape(x, (x.shape[0], -1))
    x = self.drop(x, deterministic=not train, rngs=rngs)
    return self.head(x)


class SelfAttention(nnx.Module):
  """Multi-head self-attention with 2-D projections ``query``, ``key``, ``value``, ``out``.

  ``q = x W_q + b_q`` (likewise k, v), split into ``H`` heads of size ``D/H``;
  ``A_h = softmax(q_h k_h^T / sqrt(D/H) + M)`` with ``M_ts = -inf`` for ``s > t`` when
  causal; ``y = concat_h(A_h v_h) W_o + b_o``.
  """

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, causal: bool = True):
    self.num_heads = num_heads
    self.causal = causal
    self.query = nnx.Linear(d_model, d_model, rngs=rngs)
    self.key = nnx.Linear(d_model, d_model, rngs=rngs)
    self.value = nnx.Linear(d_model, d_model, rngs=rngs)
    self.out = nnx.Linear(d_model, d_model, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    h = self.num_heads
    q = self.query(x).reshape(b, t, h, d // h)
    k = self.key(x).reshape(b, t, h, d // h)
    v = self.value(x).reshape(b, t, h, d // h)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(d // h)
    if self.causal:
      mask = jnp.tril(jnp.ones((t, t), dtype=bool))
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1)
    y = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, d)
    return self.out(y)


class FeedForward(nnx.Module):
  """Position-wise MLP ``fc2(gelu(fc1(x)))`` (exact, erf-based GELU), hidden width ``4 D``."""

  def __init__(self, d_model: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
    self.fc2 = nnx.Linear(4 * d_model, d_model, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """Pre-LN Transformer block: ``x += attn(ln1(x))``; ``x += mlp(ln2(x))`` (with dropout)."""

  def __init__(
      self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, causal: bool, dropout: float
  ):
    self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.attn = SelfAttention(d_model, num_heads, causal=causal, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.mlp = FeedForward(d_model, rngs=rngs)
    self.drop = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    x = x + self.drop(self.attn(self.ln1(x)), deterministic=not train, rngs=rngs)
    return x + self.drop(self.mlp(self.ln2(x)), deterministic=not train, rngs=rngs)


class Routing(NamedTuple):
  """What a top-k router did with its tokens (one `MoEFeedForward` call).

  Attributes:
    logits: ``[..., N_E]`` float32 router logits ``z = x W_router`` (for `router_z_loss`).
    probs: ``[..., N_E]`` ``softmax(z)`` (for `reweight.load_balancing.load_balancing`).
    expert_index: ``[..., k]`` int32 ids of the chosen experts, most probable first.
    gates: ``[..., k]`` the weights of the chosen experts' outputs.
  """

  logits: jax.Array
  probs: jax.Array
  expert_index: jax.Array
  gates: jax.Array


class MoEFeedForward(nnx.Module):
  """Top-k mixture-of-experts feed-forward layer (Switch / GShard style router).

  ``P = softmax(x W_router)`` over ``N_E`` experts; the ``k`` most probable experts
  ``e_1..e_k`` of each token get gates ``g_j = P_{e_j}`` (renormalised to sum to one with
  ``normalize_gates=True``, as in Mixtral), and
  ``y = sum_j g_j FFN_{e_j}(x)`` with ``FFN_e(x) = gelu(x W1_e + b1_e) W2_e + b2_e``.
  The gates carry the task loss's gradient to the router (with ``k = 1`` and renormalised
  gates they are 1 and only auxiliary losses train it). Pair it with
  `reweight.load_balancing.load_balancing` on ``Routing.probs`` / ``Routing.expert_index``
  and `reweight.load_balancing.router_z_loss` on ``Routing.logits``.

  Written for small models: every expert runs on every token and the outputs are combined
  with the (sparse) gates, so a step costs ``N_E`` dense feed-forward layers, with no
  capacity limit and no dropped tokens; the numbers are those of a sparse dispatch.

  Parameter paths: ``router/kernel`` ``[D, N_E]`` (no bias), ``w1`` ``[N_E, D, H]``,
  ``b1`` ``[N_E, H]``, ``w2`` ``[N_E, H, D]``, ``b2`` ``[N_E, D]``.

  Args:
    d_model: input and output width ``D``.
    num_experts: ``N_E >= 1``.
    k: experts per token, ``1 <= k <= N_E``.
    hidden: each expert's hidden width ``H`` (default ``4 D``).
    rngs: NNX random streams for initialization.
    normalize_gates: renormalise the ``k`` gates of a token to sum to one.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> moe = MoEFeedForward(8, num_experts=4, k=2, rngs=nnx.Rngs(0))
    >>> y, routing = moe(jnp.ones((2, 5, 8)))
    >>> y.shape, routing.probs.shape, routing.expert_index.shape
    ((2, 5, 8), (2, 5, 4), (2, 5, 2))

  References:
    Shazeer et al., "Outrageously Large Neural Networks: The Sparsely-Gated
    Mixture-of-Experts Layer", ICLR 2017.
    Fedus, Zoph and Shazeer, "Switch Transformers: Scaling to Trillion Parameter Models with
    Simple and Efficient Sparsity", JMLR 2022.
  """

  def __init__(
      self,
      d_model: int,
      num_experts: int,
      k: int = 1,
      hidden: int | None = None,
      *,
      rngs: nnx.Rngs,
      normalize_gates: bool = False,
  ):
    hidden = 4 * d_model if hidden is None else hidden
    if min(d_model, num_experts, hidden) < 1 or not 1 <= k <= num_experts:
      raise ValueError(
          f"d_model={d_model!r}, num_experts={num_experts!r}, hidden={hidden!r} must be "
          f"positive and k={k!r} in [1, num_experts]"
      )
    self.num_experts = num_experts
    self.k = k
    self.normalize_gates = bool(normalize_gates)
    self.router = nnx.Linear(d_model, num_experts, use_bias=False, rngs=rngs)
    init = nnx.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0,)
    )
    self.w1 = nnx.Param(init(rngs.params(), (num_experts, d_model, hidden), jnp.float32))
    self.b1 = nnx.Param(jnp.zeros((num_experts, hidden), jnp.float32))
    self.w2 = nnx.Param(init(rngs.params(), (num_experts, hidden, d_model), jnp.float32))
    self.b2 = nnx.Param(jnp.zeros((num_experts, d_model), jnp.float32))

  def route(self, x: jax.Array) -> Routing:
    """The `Routing` of tokens ``x [..., D]``."""
    logits = self.router(x).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    gates, index = jax.lax.top_k(probs, self.k)
    if self.normalize_gates:
      gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    return Routing(logits, probs, index.astype(jnp.int32), gates)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, Routing]:
    """``(y [..., D], Routing)`` for tokens ``x [..., D]``."""
    routing = self.route(x)
    combine = jnp.sum(
        routing.gates[..., None] * jax.nn.one_hot(routing.expert_index, self.num_experts),
        axis=-2,
    ).astype(x.dtype)  # [..., N_E], k non-zeros per token
    h = jax.nn.gelu(jnp.einsum("...d,edh->...eh", x, self.w1[...]) + self.b1[...],
                    approximate=False)
    out = jnp.einsum("...eh,ehd->...ed", h, self.w2[...]) + self.b2[...]
    return jnp.einsum("...e,...ed->...d", combine, out), routing


class MoEBlock(nnx.Module):
  """Pre-LN Transformer block with a `MoEFeedForward` in place of the MLP.

  ``x += attn(ln1(x))``; ``y, routing = mlp(ln2(x))``; ``x += y`` (with dropout). Returns
  ``(x, routing)``.
  """

  def __init__(
      self,
      d_model: int,
      num_heads: int,
      *,
      rngs: nnx.Rngs,
      causal: bool,
      dropout: float,
      num_experts: int,
      k: int,
      hidden: int | None,
      normalize_gates: bool,
  ):
    self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.attn = SelfAttention(d_model, num_heads, causal=causal, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.mlp = MoEFeedForward(d_model, num_experts, k, hidden, normalize_gates=normalize_gates,
                              rngs=rngs)
    self.drop = nnx.Dropout(dropout)

  def __call__(
      self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None
  ) -> tuple[jax.Array, Routing]:
    x = x + self.drop(self.attn(self.ln1(x)), deterministic=not train, rngs=rngs)
    y, routing = self.mlp(self.ln2(x))
    return x + self.drop(y, deterministic=not train, rngs=rngs), routing


def sinusoidal_positions(length: int, d_model: int) -> np.ndarray:
  """Sinusoidal position table ``[length, d_model]`` (Vaswani et al., 2017).

  ``P[p, 2i] = sin(p / 10000^(2i/D))``, ``P[p, 2i+1] = cos(p / 10000^(2i/D))``.
  """
  pos = np.arange(length, dtype=np.float64)[:, None]
  freq = 10000.0 ** (-np.arange(0, d_model, 2, dtype=np.float64) / d_model)
  table = np.zeros((length, d_model), dtype=np.float64)
  table[:, 0::2] = np.sin(pos * freq)
  table[:, 1::2] = np.cos(pos * freq[: d_model // 2])
  return table.astype(np.float32)


class Transformer(nnx.Module):
  """Small decoder-only (by default causal) pre-LN Transformer.

  ``h_0 = E[x] + P[:T]``; per block ``h += attn(ln1(h))``, ``h += fc2(gelu(fc1(ln2(h))))``;
  then ``z = ln_f(h)``. Language modeling (``num_classes=None``): per-token logits
  ``z W_head + b_head`` of shape ``[B, T, vocab_size]``. Classification: logits
  ``mean_t(z_t) W_head + b_head`` of shape ``[B, num_classes]``.

  Parameter paths: ``embed/embedding``, ``pos_embed`` (learned positions),
  ``blocks/{i}/ln1/{scale,bias}``, ``blocks/{i}/attn/{query,key,value,out}/{kernel,bias}``,
  ``blocks/{i}/ln2/{scale,bias}``, ``blocks/{i}/mlp/fc1/{kernel,bias}``,
  ``blocks/{i}/mlp/fc2/{kernel,bias}``, ``ln_f/{scale,bias}``, ``head/{kernel,bias}``.
  ``r".*(query|value)/kernel"`` selects the ``[D, D]`` query and value kernels of all blocks.
  With ``num_experts > 0`` every block's MLP is a top-k `MoEFeedForward`
  (``blocks/{i}/mlp/router/kernel`` ``[D, N_E]``, ``blocks/{i}/mlp/{w1,b1,w2,b2}``), and
  ``return_routing=True`` (or `apply_with_routing`) also returns each block's `Routing`
  for the load-balancing and z-losses of `reweight.load_balancing`.

  Args:
    vocab_size: number of token ids; inputs are int arrays ``[B, T]`` with ``T <= max_len``.
    num_classes: if set, classify mean-pooled tokens into this many classes instead of
      predicting tokens.
    rngs: NNX random streams for initialization.
    d_model: width ``D``; must be divisible by ``num_heads``.
    num_heads: attention heads ``H``.
    num_layers: number of blocks.
    max_len: longest sequence.
    causal: mask attention to earlier positions (``s <= t``).
    positions: ``"learned"`` (a ``pos_embed`` parameter, init N(0, 0.02^2)) or
      ``"sinusoidal"`` (fixed, no parameter).
    dropout: dropout rate on the embeddings and on each residual branch (``train=True``).
    num_experts: 0 (default) for the dense MLP; ``N_E > 0`` for a mixture-of-experts MLP
      (`MoEFeedForward`) in every block.
    experts_per_token: ``k`` of the top-k router (with ``num_experts > 0``).
    expert_hidden: each expert's hidden width (default ``4 D``).
    normalize_gates: renormalise each token's ``k`` gates to sum to one.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = Transformer(11, d_model=8, num_heads=2, num_layers=1, max_len=5,
    ...                     rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 5), jnp.int32)).shape
    (2, 5, 11)
    >>> moe = Transformer(11, d_model=8, num_heads=2, num_layers=2, max_len=5,
    ...                   num_experts=4, experts_per_token=2, rngs=nnx.Rngs(0))
    >>> logits, routing = moe(jnp.zeros((2, 5), jnp.int32), return_routing=True)
    >>> logits.shape, len(routing), routing[0].expert_index.shape
    ((2, 5, 11), 2, (2, 5, 2))

  References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020.
  """

  def __init__(
      self,
      vocab_size: int,
      num_classes: int | None = None,
      *,
      rngs: nnx.Rngs,
      d_model: int = 64,
      num_heads: int = 4,
      num_layers: int = 2,
      max_len: int = 128,
      causal: bool = True,
      positions: str = "learned",
      dropout: float = 0.0,
      num_experts: int = 0,
      experts_per_token: int = 1,
      expert_hidden: int | None = None,
      normalize_gates: bool = False,
  ):
    if num_experts < 0 or (num_experts > 0 and not 1 <= experts_per_token <= num_experts):
      raise ValueError(
          f"num_experts={num_experts!r} must be >= 0 (0: dense MLP) and experts_per_token="
          f"{experts_per_token!r} in [1, num_experts]"
      )
    if min(vocab_size, d_model, num_heads, max_len) < 1 or num_layers < 0:
      raise ValueError(
          f"vocab_size={vocab_size!r}, d_model={d_model!r}, num_heads={num_heads!r}, "
          f"max_len={max_len!r} must be positive and num_layers={num_layers!r} non-negative"
      )
    if d_model % num_heads:
      raise ValueError(f"d_model={d_model!r} is not divisible by num_heads={num_heads!r}")
    if num_classes is not None and num_classes < 1:
      raise ValueError(f"num_classes={num_classes!r} must be None or positive")
    if positions not in ("learned", "sinusoidal"):
      raise ValueError(f"positions={positions!r} is not one of ['learned', 'sinusoidal']")
    self.vocab_size = vocab_size
    self.num_classes = num_classes
    self.max_len = max_len
    self.positions = positions
    self.dropout = _check_dropout(dropout)
    self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
    if positions == "learned":
      self.pos_embed = nnx.Param(
          nnx.initializers.normal(0.02)(rngs.params(), (max_len, d_model), jnp.float32)
      )
    self.num_experts = num_experts
    if num_experts:
      self.blocks = nnx.List(
          [
              MoEBlock(d_model, num_heads, causal=causal, dropout=self.dropout,
                       num_experts=num_experts, k=experts_per_token, hidden=expert_hidden,
                       normalize_gates=normalize_gates, rngs=rngs)
              for _ in range(num_layers)
          ]
      )
    else:
      self.blocks = nnx.List(
          [
              Block(d_model, num_heads, causal=causal, dropout=self.dropout, rngs=rngs)
              for _ in range(num_layers)
          ]
      )
    self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
    self.head = nnx.Linear(d_model, num_classes or vocab_size, rngs=rngs)
    self.drop = nnx.Dropout(self.dropout)

  def __call__(
      self,
      x: jax.Array,
      *,
      train: bool = False,
      rngs: nnx.Rngs | None = None,
      return_routing: bool = False,
  ) -> jax.Array | tuple[jax.Array, tuple[Routing, ...]]:
    """Logits ``[B, T, vocab_size]`` (or ``[B, num_classes]``) for token ids ``[B, T]``.

    With ``return_routing=True``: ``(logits, routing)``, the `Routing` of every
    mixture-of-experts block in order (an empty tuple for a dense model).
    """
    _check_rngs(self, train, rngs)
    if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(
          f"tokens must be an integer array [batch, length], got {x.dtype}{list(x.shape)}"
      )
    t = x.shape[1]
    if t > self.max_len:
      raise ValueError(f"sequence length {t} exceeds max_len={self.max_len}")
    h = self.embed(x)
    if self.positions == "learned":
      h = h + self.pos_embed[:t]
    else:
      h = h + jnp.asarray(sinusoidal_positions(t, h.shape[-1]), h.dtype)
    h = self.drop(h, deterministic=not train, rngs=rngs)
    routing = []
    for block in self.blocks:
      if isinstance(block, MoEBlock):
        h, r = block(h, train=train, rngs=rngs)
        routing.append(r)
      else:
        h = block(h, train=train, rngs=rngs)
    h = self.ln_f(h)
    if self.num_classes is not None:
      h = jnp.mean(h, axis=1)
    logits = self.head(h)
    return (logits, tuple(routing)) if return_routing else logits


MODELS = {"mlp": MLP, "cnn": CNN, "transformer": Transformer}


def _as_key(seed: int | jax.Array) -> jax.Array:
  """A typed PRNG key from an int, an integer array (possibly traced) or a key."""
  if isinstance(seed, jax.Array | np.ndarray):
    if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
      return seed
    if seed.shape == (2,) and seed.dtype == jnp.uint32:  # raw `jax.random.PRNGKey`
      return jax.random.wrap_key_data(seed)
    if seed.shape == () and jnp.issubdtype(seed.dtype, jnp.integer):
      return jax.random.key(seed)
    raise ValueError(
        f"seed of dtype {seed.dtype} and shape {seed.shape} is not an integer scalar or a key"
    )
  if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
    return jax.random.key(int(seed))
  raise ValueError(f"seed={seed!r} is not an integer or a PRNG key")


def make_model(
    name: str, *, seed: int | jax.Array = 0, rngs: nnx.Rngs | None = None, **kwargs
) -> nnx.Module:
  """Builds a model by name, initialized deterministically from ``seed`` (or ``rngs``).

  Args:
    name: one of ``"mlp"``, ``"cnn"``, ``"transformer"``.
    seed: integer seed or PRNG key; the model is built with ``nnx.Rngs(seed)``. The same
      seed gives the same parameters. May be a traced value, so
      ``jax.vmap(lambda s: functional(make_model(name, seed=s, **kw)).params)(seeds)``
      initializes a stack of models, one per seed.
    rngs: explicit NNX random streams (overrides ``seed``).
    **kwargs: constructor arguments of `MLP`, `CNN` or `Transformer`.

  Returns:
    The NNX module.

  Raises:
    ValueError: if ``name`` is not a known model.

  Examples:
    >>> model = make_model("mlp", seed=0, in_features=4, hidden=(8,), num_classes=3)
    >>> type(model).__name__
    'MLP'
  """
  if name not in MODELS:
    raise ValueError(f"name={name!r} is not one of {sorted(MODELS)}")
  if rngs is None:
    rngs = nnx.Rngs(_as_key(seed))
  return MODELS[name](rngs=rngs, **kwargs)


class Functional(NamedTuple):
  """A module split into a static graph and pure-dict pytrees, with a pure ``apply``.

  Attributes:
    graphdef: the static ``nnx.GraphDef`` of the module.
    params: the ``nnx.Param`` leaves as a nested ``dict`` of arrays (what is trained).
    rest: every other state leaf as a nested ``dict`` (empty for the models here).
  """

  graphdef: Any
  params: PyTree
  rest: PyTree

  def apply(
      self,
      params: PyTree,
      x: jax.Array,
      *,
      train: bool = False,
      key: jax.Array | None = None,
  ) -> jax.Array:
    """Logits of the model with parameters ``params`` on the batch ``x``.

    Pure: no state is mutated and nothing is read from ``self.params``, so it can be
    jitted, differentiated w.r.t. ``params`` and vmapped over stacked ``params``.

    Args:
      params: a pytree with the structure of ``self.params``.
      x: a batch of inputs (leading batch axis); logits are per example (or per token).
      train: enables dropout.
      key: PRNG key for dropout; required when ``train=True`` and the model's dropout
        rate is positive.

    Returns:
      The model's logits.

    Raises:
      ValueError: if ``params`` does not have the structure of ``self.params``.
    """
    if jax.tree.structure(params) != jax.tree.structure(self.params):
      raise ValueError(
          "params do not have the structure of Functional.params (after an orbax restore "
          "without a target, convert keys with nnx.restore_int_paths): "
          f"{jax.tree.structure(params)} != {jax.tree.structure(self.params)}"
      )
    model = nnx.merge(self.graphdef, params, self.rest)
    rngs = None if key is None else nnx.Rngs(dropout=key)
    return model(x, train=train, rngs=rngs)


def apply_with_routing(
    fn: Functional,
    params: PyTree,
    x: jax.Array,
    *,
    train: bool = False,
    key: jax.Array | None = None,
) -> tuple[jax.Array, tuple[Routing, ...]]:
  """`Functional.apply` of a `Transformer` that also returns every MoE block's `Routing`.

  Pure (jit-able, differentiable w.r.t. ``params``), as `Functional.apply`.

  Raises:
    ValueError: if ``params`` does not have the structure of ``fn.params``, or the model
      is not a `Transformer`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.load_balancing import load_balancing
    >>> fn = functional(make_model("transformer", vocab_size=11, d_model=8, num_heads=2,
    ...                            num_layers=1, max_len=5, num_experts=4))
    >>> logits, (r,) = jax.jit(apply_with_routing)(fn, fn.params, jnp.zeros((2, 5), int))
    >>> float(load_balancing(r.probs, r.expert_index, 4)) > 0
    True
  """
  if jax.tree.structure(params) != jax.tree.structure(fn.params):
    raise ValueError(
        "params do not have the structure of Functional.params: "
        f"{jax.tree.structure(params)} != {jax.tree.structure(fn.params)}"
    )
  model = nnx.merge(fn.graphdef, params, fn.rest)
  if not isinstance(model, Transformer):
    raise ValueError(f"apply_with_routing needs a Transformer, got {type(model).__name__}")
  rngs = None if key is None else nnx.Rngs(dropout=key)
  return model(x, train=train, rngs=rngs, return_routing=True)


def functional(model: nnx.Module) -> Functional:
  """Splits ``model`` into a `Functional`: ``nnx.split(model, nnx.Param, ...)`` as pure dicts.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> fn = functional(make_model("mlp", in_features=4, hidden=(8,), num_classes=3))
    >>> sorted(fn.params)
    ['head', 'hidden']
    >>> jax.jit(fn.apply)(fn.params, jnp.ones((2, 4))).shape
    (2, 3)
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return Functional(graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest))


def split_model(model: nnx.Module):
  """``(apply_fn, params)`` of ``model``: ``apply_fn(params, x, *, train=False, key=None)``.

  Same as ``fn = functional(model); (fn.apply, fn.params)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn, params = split_model(make_model("cnn", in_shape=(40,), num_classes=10))
    >>> apply_fn(params, jnp.ones((3, 40))).shape
    (3, 10)
  """
  fn = functional(model)
  return fn.apply, fn.params
