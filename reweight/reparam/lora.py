"""LoRA, rsLoRA, PiSSA, SoMA and DoRA: low-rank additive (and magnitude/direction) updates.

Layout. A Flax kernel is ``K = W^T`` with shape ``(in, out)`` (torch's ``nn.Linear.weight``
``W`` is ``(out, in)``). PEFT stores ``lora_A`` as ``(r, in)`` and ``lora_B`` as ``(out, r)``
with ``W' = W + s * B @ A``. Here the factors are stored in the Flax-friendly layout

    lora_a = A^T   (in, r),     lora_b = B^T   (r, out),     K' = K + s * lora_a @ lora_b,

so ``y = x @ K' = x @ K + s * (x @ lora_a) @ lora_b``. Converting to / from PEFT is a
transpose of each factor. The DoRA magnitude ``lora_magnitude`` has shape ``(out,)`` as PEFT's
``lora_magnitude_vector``.

References:
  Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
  Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023.
  Meng et al., "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large
  Language Models", NeurIPS 2024.
  Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp

from reweight._checks import check_choice
from reweight._types import PyTree
from reweight.reparam._core import Reparam, additive, flatten_with_paths, replace_at, select

Init = Literal["default", "gaussian", "pissa", "soma"]
INITS = get_args(Init)


def _check(rank: int, init: str) -> None:
  if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
    raise ValueError(f"rank={rank!r} must be a positive int")
  check_choice("init", init, INITS)


def lora_scale(rank: int, alpha: float, rslora: bool) -> float:
  """The LoRA scale ``s``: ``alpha / rank``, or ``alpha / sqrt(rank)`` for rsLoRA."""
  return alpha / math.sqrt(rank) if rslora else alpha / rank


def _init_factors(kernel, key, rank: int, scale: float, init: str, dtype):
  """Returns ``(lora_a, lora_b, frozen_kernel)`` for one ``(in, out)`` kernel."""
  if kernel.ndim != 2:
    raise ValueError(f"kernel.shape={kernel.shape!r} is not 2-D (in, out)")
  fan_in, fan_out = kernel.shape
  dtype = kernel.dtype if dtype is None else dtype
  if init == "default":
    # PEFT: kaiming_uniform_(A, a=sqrt(5)) on A (r, in): gain = sqrt(2 / (1 + 5)),
    # bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
    bound = 1.0 / math.sqrt(fan_in)
    a = jax.random.uniform(key, (fan_in, rank), dtype, -bound, bound)
    return a, jnp.zeros((rank, fan_out), dtype), kernel
  if init == "gaussian":
    # PEFT: normal_(A, std=1 / r).
    a = jax.random.normal(key, (fan_in, rank), dtype) / rank
    return a, jnp.zeros((rank, fan_out), dtype), kernel
  # PiSSA / SoMA: K = U diag(S) Vt, U (in, k), Vt (k, out), S descending.
  if rank > min(fan_in, fan_out):
    raise ValueError(
        f"rank={rank} exceeds min(in, out)={min(fan_in, fan_out)} of kernel shape "
        f"{kernel.shape} for init={init!r}")
  k32 = kernel.astype(jnp.float32)
  u, s, vt = jnp.linalg.svd(k32, full_matrices=False)
  idx = slice(0, rank) if init == "pissa" else slice(s.shape[0] - rank, s.shape[0])
  root = jnp.sqrt(s[idx] / scale)
  a32 = u[:, idx] * root[None, :]
  b32 = root[:, None] * vt[idx]
  residual = (k32 - scale * a32 @ b32).astype(kernel.dtype)
  return a32.astype(dtype), b32.astype(dtype), residual


def _delta(entry: dict[str, Any], scale: float, dtype):
  return (scale * (entry["lora_a"] @ entry["lora_b"])).astype(dtype)


def lora(
    rank: int,
    alpha: float,
    targets: str,
    *,
    rslora: bool = False,
    init: Init = "default",
    dtype: Any = None,
) -> Reparam:
  r"""Low-rank adaptation: ``K' = K + s * lora_a @ lora_b`` on every targeted kernel.

  With PEFT's ``W = K^T``, ``A = lora_a^T``, ``B = lora_b^T`` this is ``W' = W + s B A`` with
  ``s = alpha / r`` (rsLoRA: ``s = alpha / sqrt(r)``). Initializations (as PEFT's
  ``init_lora_weights``):

  * ``"default"`` (PEFT ``True``): ``A ~ U(-1/sqrt(in), 1/sqrt(in))``, which is exactly
    PEFT's ``kaiming_uniform_(A, a=sqrt(5))`` in distribution; ``B = 0``.
  * ``"gaussian"``: ``A ~ N(0, std=1/r)`` (PEFT's standard deviation ``1/r``); ``B = 0``.
  * ``"pissa"``: top-r SVD ``W = U S V^T``, ``A = diag(sqrt(S_r/s)) V_r^T``,
    ``B = U_r diag(sqrt(S_r/s))`` and the frozen kernel becomes the residual
    ``W_res = W - s B A`` (the effective weight is unchanged at init). Exact SVD in float32.
  * ``"soma"``: as PiSSA with the *smallest* r singular components (minor components).

  Trainable tree: ``{path: {"lora_a": (in, r), "lora_b": (r, out)}}`` for each targeted
  path; frozen tree: the parameters (with residual kernels for PiSSA / SoMA).

  Args:
    rank: the rank ``r`` (> 0).
    alpha: the LoRA alpha.
    targets: regex (``re.fullmatch``) over '/'-joined paths of 2-D ``(in, out)`` kernels.
    rslora: use the rank-stabilized scale ``alpha / sqrt(r)``.
    init: one of ``"default"``, ``"gaussian"``, ``"pissa"``, ``"soma"``.
    dtype: dtype of the factors; defaults to each kernel's dtype.

  Returns:
    A `Reparam` (with ``unapply``: ``frozen = params - delta``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
    >>> rp = lora(2, 4.0, r"dense/kernel")
    >>> trainable, frozen = rp.init(params, jax.random.key(0))
    >>> trainable["dense/kernel"]["lora_a"].shape, trainable["dense/kernel"]["lora_b"].shape
    ((4, 2), (2, 3))
    >>> bool(jnp.all(rp.apply(trainable, frozen)["dense"]["kernel"] == 1.0))
    True

  References:
    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
    Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023.
    Meng et al., "PiSSA: Principal Singular Values and Singular Vectors Adaptation", 2024.
  """
  _check(rank, init)
  scale = lora_scale(rank, alpha, rslora)

  def init_fn(params: PyTree, key: jax.Array, **data) -> tuple[PyTree, PyTree]:
    del data  # LoRA does not use data.
    paths = select(params, targets)
    flat = flatten_with_paths(params)
    keys = jax.random.split(key, len(paths))
    trainable, residuals = {}, {}
    for path, k in zip(paths, keys, strict=True):
      a, b, res = _init_factors(flat[path], k, rank, scale, init, dtype)
      trainable[path] = {"lora_a": a, "lora_b": b}
      residuals[path] = res
    frozen = replace_at(params, residuals) if init in ("pissa", "soma") else params
    return trainable, frozen

  return additive(init_fn, lambda entry, dtype: _delta(entry, scale, dtype))


def dora(
    rank: int,
    alpha: float,
    targets: str,
    *,
    rslora: bool = False,
    init: Init = "default",
    dtype: Any = None,
) -> Reparam:
  r"""Weight-decomposed low-rank adaptation: a trainable magnitude times a LoRA direction.

  Per output unit ``j`` (a column of the Flax kernel, a row of PEFT's ``W``):

      V = K + s * lora_a @ lora_b,     K'[:, j] = m_j * V[:, j] / sg(||V[:, j]||_2),

  the norm taken over the input dimension and under ``stop_gradient`` as in PEFT (DoRA paper
  section 4.3). ``m`` (``lora_magnitude``, shape ``(out,)``) is initialized to the column norms
  of the effective kernel at init, i.e. ``||W||`` per output unit. The factors are initialized
  as in `lora` (``init`` and ``rslora`` likewise).

  Args:
    rank: the rank ``r`` (> 0).
    alpha: the LoRA alpha.
    targets: regex over '/'-joined paths of 2-D ``(in, out)`` kernels.
    rslora: use the scale ``alpha / sqrt(r)``.
    init: one of ``"default"``, ``"gaussian"``, ``"pissa"``, ``"soma"``.
    dtype: dtype of the factors and magnitude; defaults to each kernel's dtype.

  Returns:
    A `Reparam` with trainable ``{path: {"lora_a", "lora_b", "lora_magnitude"}}``. It has no
    ``unapply``: the merged kernel does not determine the frozen one.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"dense": {"kernel": jnp.arange(12.0).reshape(4, 3)}}
    >>> rp = dora(2, 4.0, r"dense/kernel")
    >>> trainable, frozen = rp.init(params, jax.random.key(0))
    >>> trainable["dense/kernel"]["lora_magnitude"].shape
    (3,)
    >>> merged = rp.apply(trainable, frozen)["dense"]["kernel"]
    >>> bool(jnp.allclose(merged, params["dense"]["kernel"]))
    True

  References:
    Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024.
  """
  _check(rank, init)
  scale = lora_scale(rank, alpha, rslora)

  def direction(kernel, entry):
    v = kernel + _delta(entry, scale, kernel.dtype)
    norm = jax.lax.stop_gradient(jnp.linalg.norm(v, axis=0))
    return v, norm

  def init_fn(params: PyTree, key: jax.Array, **data) -> tuple[PyTree, PyTree]:
    del data
    paths = select(params, targets)
    flat = flatten_with_paths(params)
    keys = jax.random.split(key, len(paths))
    trainable, residuals = {}, {}
    for path, k in zip(paths, keys, strict=True):
      a, b, res = _init_factors(flat[path], k, rank, scale, init, dtype)
      entry = {"lora_a": a, "lora_b": b}
      _, norm = direction(res, entry)
      entry["lora_magnitude"] = norm.astype(a.dtype)
      trainable[path] = entry
      residuals[path] = res
    frozen = replace_at(params, residuals) if init in ("pissa", "soma") else params
    return trainable, frozen

  def apply_fn(trainable: PyTree, frozen: PyTree) -> PyTree:
    flat = flatten_with_paths(frozen)
    new = {}
    for p, e in trainable.items():
      v, norm = direction(flat[p], e)
      new[p] = (v * (e["lora_magnitude"] / norm)[None, :]).astype(flat[p].dtype)
    return replace_at(frozen, new)

  return Reparam(init_fn, apply_fn, None)
