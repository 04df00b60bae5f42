"""AdaLoRA: SVD-shaped low-rank updates whose rank is pruned by importance during training.

Layout. A Flax kernel is ``K = W^T`` of shape ``(in, out)``. PEFT's AdaLoRA stores
``lora_A = Q`` ``(r, in)`` (right singular vectors), ``lora_E = lambda`` ``(r, 1)`` and
``lora_B = P`` ``(out, r)`` with ``W' = W + s * P diag(lambda) Q``. Here

    lora_a = Q^T (in, r),   lora_e = lambda (r,),   lora_b = P^T (r, out),
    K' = K + s * (lora_a * lora_e) @ lora_b,

and ``s = alpha / (r_init + 1e-5)`` exactly as PEFT (``scaling / (ranknum + 1e-5)`` with
``ranknum = r_init``, never changed during training). The rank budget is allocated by the
optax transform `reweight.optim.adalora_budget`, which zeroes entries of ``lora_e``.

References:
  Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from reweight._types import PyTree
from reweight.reparam._core import Reparam, additive, flatten_with_paths, select

# PEFT divides by ``ranknum + 1e-5``.
_RANKNUM_EPS = 1e-5
TRIPLET = ("lora_a", "lora_e", "lora_b")


def _delta(entry, scale: float, dtype):
  return (scale * ((entry["lora_a"] * entry["lora_e"][None, :]) @ entry["lora_b"])).astype(dtype)


def adalora(init_rank: int, alpha: float, targets: str, *, dtype: Any = None) -> Reparam:
  r"""AdaLoRA's SVD-form update ``dW = s * P diag(lambda) Q`` on every targeted kernel.

  ``K' = K + s * (lora_a * lora_e) @ lora_b`` with ``s = alpha / (r_init + 1e-5)`` (PEFT's
  ``lora_alpha / (ranknum + 1e-5)``). Init as PEFT: ``P, Q ~ N(0, 0.02^2)``, ``lambda = 0``.
  Train with `orthogonal_penalty` added to the loss and `reweight.optim.adalora_budget` after
  the optimizer.

  Args:
    init_rank: initial rank ``r_init`` of every triplet (> 0).
    alpha: the LoRA alpha (> 0).
    targets: regex over '/'-joined paths of 2-D ``(in, out)`` kernels.
    dtype: dtype of the triplets; defaults to each kernel's dtype.

  Returns:
    A `Reparam` with trainable ``{path: {"lora_a": (in, r), "lora_e": (r,),
    "lora_b": (r, out)}}`` and an ``unapply`` (``frozen = params - delta``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"dense": {"kernel": jnp.ones((4, 3))}}
    >>> rp = adalora(2, 8.0, r"dense/kernel")
    >>> trainable, frozen = rp.init(params, jax.random.key(0))
    >>> {k: v.shape for k, v in sorted(trainable["dense/kernel"].items())}
    {'lora_a': (4, 2), 'lora_b': (2, 3), 'lora_e': (2,)}

  References:
    Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023.
  """
  if not isinstance(init_rank, int) or isinstance(init_rank, bool) or init_rank <= 0:
    raise ValueError(f"init_rank={init_rank!r} must be a positive int")
  if not alpha > 0:
    raise ValueError(f"alpha={alpha!r} must be > 0")
  scale = alpha / (init_rank + _RANKNUM_EPS)

  def init_fn(params: PyTree, key: jax.Array, **data) -> tuple[PyTree, PyTree]:
    del data
    paths = select(params, targets)
    flat = flatten_with_paths(params)
    keys = jax.random.split(key, len(paths))
    trainable = {}
    for path, k in zip(paths, keys, strict=True):
      fan_in, fan_out = flat[path].shape
      dt = flat[path].dtype if dtype is None else dtype
      ka, kb = jax.random.split(k)
      trainable[path] = {
          "lora_a": 0.02 * jax.random.normal(ka, (fan_in, init_rank), dt),
          "lora_e": jnp.zeros((init_rank,), dt),
          "lora_b": 0.02 * jax.random.normal(kb, (init_rank, fan_out), dt),
      }
    return trainable, params

  return additive(init_fn, lambda entry, dtype: _delta(entry, scale, dtype))


def triplet_path(prefix: str, name: str) -> str:
  """'/'-joined path of member ``name`` of the triplet at ``prefix``."""
  return f"{prefix}/{name}" if prefix else name


def find_triplets(tree: PyTree) -> list[str]:
  """Paths (prefixes) of the AdaLoRA triplets in a tree: nodes holding ``lora_e``.

  Raises:
    ValueError: if a node has ``lora_e`` but lacks ``lora_a`` or ``lora_b``, or if the tree
      holds no triplet.
  """
  flat = flatten_with_paths(tree)
  prefixes = []
  for path in flat:
    parts = path.split("/")
    if parts[-1] == "lora_e":
      prefix = "/".join(parts[:-1])
      for name in ("lora_a", "lora_b"):
        if triplet_path(prefix, name) not in flat:
          raise ValueError(f"AdaLoRA triplet {prefix!r} has lora_e but no {name}")
      prefixes.append(prefix)
  if not prefixes:
    raise ValueError(f"no AdaLoRA triplet (lora_a, lora_e, lora_b) in paths {sorted(flat)}")
  return prefixes


def orthogonal_penalty(trainable: PyTree) -> jax.Array:
  r"""AdaLoRA's orthogonality regularizer, as PEFT's ``regu_loss``.

      R = (1 / (2 n)) * sum over the n triplets of
          ||Q Q^T - I||_F + ||P^T P - I||_F,

  i.e. the mean Frobenius norm (not squared) over all ``2 n`` matrices ``Q = lora_a^T``
  and ``P = lora_b^T``. (The paper writes a sum per triplet; PEFT, followed here, averages
  over matrices, which is half the mean over triplets.) Add ``weight * R`` to the loss
  (PEFT's ``orth_reg_weight``, default 0.5).

  Args:
    trainable: a tree containing AdaLoRA triplets (as made by `adalora`).

  Returns:
    The scalar penalty.

  Examples:
    >>> import jax.numpy as jnp
    >>> t = {"k": {"lora_a": jnp.eye(3, 2), "lora_e": jnp.zeros(2), "lora_b": jnp.eye(2, 4)}}
    >>> float(orthogonal_penalty(t))
    0.0

  References:
    Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023.
  """
  flat = flatten_with_paths(trainable)
  terms = []
  for prefix in find_triplets(trainable):
    a = flat[triplet_path(prefix, "lora_a")]  # (in, r): Q Q^T = a^T a
    b = flat[triplet_path(prefix, "lora_b")]  # (r, out): P^T P = b b^T
    eye = jnp.eye(a.shape[1], dtype=a.dtype)
    # safe_norm: zero gradient at a zero residual, as torch.norm's backward.
    terms.append(optax.safe_norm(a.T @ a - eye, 0.0))
    terms.append(optax.safe_norm(b @ b.T - eye, 0.0))
  return sum(terms) / len(terms)
