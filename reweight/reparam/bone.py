"""Bone / MiSS: block-shared updates of a weight matrix (PEFT's ``MissConfig``).

Layout. A Flax kernel is ``K = W^T`` of shape ``(in, out)``; PEFT's ``W`` is ``(out, in)``.
The trainable ``miss_block`` is stored exactly in PEFT's layout (no transpose needed):

* ``mode="default"`` (PEFT ``init_weights=True``): ``miss_block`` of shape ``(r, out)``. The
  input dimension is cut into ``ceil(in / r)`` chunks of ``r`` (the last one truncated when
  ``r`` does not divide ``in``, which is PEFT's zero-padding of the input) and every chunk
  gets the same block: ``K' = K + tile(B, (ceil(in/r), 1))[:in]``. In PEFT's forward,
  ``y += (sum over chunks of x_chunk) @ B``.
* ``mode="mini"``: ``miss_block`` of shape ``(r, mini_r)``, first tiled along ``out``
  (``tile(B, (1, out / mini_r))``), then used as in default. Requires ``out % mini_r == 0``.
* ``mode="bat"``: ``miss_block`` of shape ``(out / r, r, r)``; with ``W_ij`` the ``r x r`` block
  of PEFT's ``W`` at output block ``i`` and input block ``j``,
  ``W'_ij = W_ij (I + B_i) + B_i`` (a nonlinear update across blocks). Requires ``r`` to
  divide both ``in`` and ``out``. In the Flax layout ``K'_ji = (I + B_i)^T K_ji + B_i^T``.

All modes start from ``miss_block = 0`` (PEFT's ``init_weights`` True / "bat" / "mini") and have
no scaling factor.

References:
  Kang and Yin, "Bone: Block-Affine Adaptation of Large Language Models", 2024
  (later "MiSS: Balancing LoRA Performance and Efficiency with Simple Shard Sharing").
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp

from reweight._checks import check_choice
from reweight._types import PyTree
from reweight.reparam._core import Reparam, flatten_with_paths, replace_at, select

Mode = Literal["default", "bat", "mini"]
MODES = get_args(Mode)


def _tiled(block, fan_in: int, fan_out: int, mode: str, mini_r: int | None):
  """The additive ``(in, out)`` update of default / mini modes."""
  if mode == "mini":
    block = jnp.tile(block, (1, fan_out // mini_r))
  r = block.shape[0]
  reps = -(-fan_in // r)
  return jnp.tile(block, (reps, 1))[:fan_in]


def _bat_apply(kernel, block):
  fan_in, fan_out = kernel.shape
  r = block.shape[-1]
  # k4[j, b, i, a] = K[j r + b, i r + a] = W_ij[a, b].
  k4 = kernel.reshape(fan_in // r, r, fan_out // r, r)
  # (W_ij B_i)[a, c] = sum_b W_ij[a, b] B_i[b, c], stored at K'[j r + c, i r + a].
  prod = jnp.einsum("jbia,ibc->jcia", k4, block)
  shift = jnp.transpose(block, (2, 0, 1))[None]  # [c, i, a] -> B_i[a, c]
  return kernel + (prod + shift).reshape(fan_in, fan_out)


def _bat_unapply(kernel, block):
  fan_in, fan_out = kernel.shape
  r = block.shape[-1]
  k4 = kernel.reshape(fan_in // r, r, fan_out // r, r)
  shifted = k4 - jnp.transpose(block, (2, 0, 1))[None]  # K'_ji - B_i^T, [j, c, i, a]
  # K_ji = (I + B_i)^{-T} (K'_ji - B_i^T); as rows of W: W_ij = (W'_ij - B_i)(I + B_i)^{-1}.
  inv = jnp.linalg.inv(jnp.eye(r, dtype=block.dtype) + block)  # [i, b, c]
  orig = jnp.einsum("jcia,icb->jbia", shifted, inv)
  return orig.reshape(fan_in, fan_out)


def bone(rank: int, targets: str, *, mode: Mode = "default", mini_r: int | None = None) -> Reparam:
  r"""Bone / MiSS block-shared adaptation of the targeted ``(in, out)`` kernels.

  ``default``: ``K' = K + tile(B, (ceil(in/r), 1))[:in]``, ``B`` of shape ``(r, out)``.
  ``mini``: as default with ``B`` of shape ``(r, mini_r)`` tiled ``out / mini_r`` times along
  the output dimension. ``bat``: ``W'_ij = W_ij (I + B_i) + B_i`` per ``r x r`` block, ``B``
  of shape ``(out/r, r, r)``. ``B = 0`` at init. The maths and the parameter layout
  (``miss_block``) are those of PEFT's MiSS (see the module docstring).

  Args:
    rank: the block size ``r`` (PEFT's ``r``); ``0 < r <= in``.
    targets: regex over '/'-joined paths of 2-D kernels.
    mode: ``"default"``, ``"bat"`` or ``"mini"`` (PEFT's ``init_weights`` True/"bat"/"mini").
    mini_r: output-dimension block of ``"mini"`` (must divide ``out``); only for that mode.

  Returns:
    A `Reparam` with trainable ``{path: {"miss_block": ...}}`` and an ``unapply``
    (``bat`` inverts ``I + B_i``, as PEFT's unmerge).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"dense": {"kernel": jnp.zeros((5, 4))}}
    >>> rp = bone(2, r"dense/kernel")
    >>> trainable, frozen = rp.init(params, jax.random.key(0))
    >>> trainable = {"dense/kernel": {"miss_block": jnp.arange(8.0).reshape(2, 4)}}
    >>> rp.apply(trainable, frozen)["dense"]["kernel"][:, 0]
    Array([0., 4., 0., 4., 0.], dtype=float32)

  References:
    Kang and Yin, "Bone: Block-Affine Adaptation of Large Language Models", 2024; PEFT
    ``MissConfig``.
  """
  if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
    raise ValueError(f"rank={rank!r} must be a positive int")
  check_choice("mode", mode, MODES)
  if mode == "mini":
    if not isinstance(mini_r, int) or mini_r <= 0:
      raise ValueError(f"mini_r={mini_r!r} must be a positive int for mode='mini'")
  elif mini_r is not None:
    raise ValueError(f"mini_r={mini_r!r} is only used by mode='mini', not mode={mode!r}")

  def init_fn(params: PyTree, key: jax.Array, **data) -> tuple[PyTree, PyTree]:
    del key, data  # MiSS starts from zeros.
    flat = flatten_with_paths(params)
    trainable = {}
    for path in select(params, targets):
      fan_in, fan_out = flat[path].shape
      if rank > fan_in:
        raise ValueError(f"rank={rank} must be <= in_features={fan_in} of {path!r}")
      if mode == "bat":
        if fan_in % rank or fan_out % rank:
          raise ValueError(
              f"mode='bat' needs rank={rank} to divide in={fan_in} and out={fan_out} of {path!r}")
        shape = (fan_out // rank, rank, rank)
      elif mode == "mini":
        if fan_out % mini_r:
          raise ValueError(f"mini_r={mini_r} must divide out={fan_out} of {path!r}")
        shape = (rank, mini_r)
      else:
        shape = (rank, fan_out)
      trainable[path] = {"miss_block": jnp.zeros(shape, flat[path].dtype)}
    return trainable, params

  def apply_fn(trainable: PyTree, frozen: PyTree) -> PyTree:
    flat = flatten_with_paths(frozen)
    new = {}
    for p, e in trainable.items():
      k, blk = flat[p], e["miss_block"].astype(flat[p].dtype)
      if mode == "bat":
        new[p] = _bat_apply(k, blk)
      else:
        new[p] = k + _tiled(blk, *k.shape, mode, mini_r)
    return replace_at(frozen, new)

  def unapply_fn(trainable: PyTree, params: PyTree) -> PyTree:
    flat = flatten_with_paths(params)
    new = {}
    for p, e in trainable.items():
      k, blk = flat[p], e["miss_block"].astype(flat[p].dtype)
      if mode == "bat":
        new[p] = _bat_unapply(k, blk)
      else:
        new[p] = k - _tiled(blk, *k.shape, mode, mini_r)
    return replace_at(params, new)

  return Reparam(init_fn, apply_fn, unapply_fn)
