"""Merging, unmerging and optimizer set-up for reparameterized training.

Training a `Reparam` differentiates only ``trainable``, which is its own pytree, so the
optimizer is initialized on it directly (no ``optax.masked`` needed) and allocates state only
for the adapter parameters.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

from reweight._types import PyTree
from reweight.reparam._core import Reparam


def merge(reparam: Reparam, trainable: PyTree, frozen: PyTree) -> PyTree:
  """Effective parameters of the original structure: ``reparam.apply(trainable, frozen)``.

  Args:
    reparam: the reparameterization.
    trainable: its trainable tree.
    frozen: its frozen tree.

  Returns:
    The merged parameters, usable by the original model.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.reparam.lora import lora
    >>> rp = lora(1, 1.0, "w")
    >>> merge(rp, {"w": {"lora_a": jnp.ones((2, 1)), "lora_b": jnp.ones((1, 2))}},
    ...       {"w": jnp.zeros((2, 2))})["w"]
    Array([[1., 1.],
           [1., 1.]], dtype=float32)
  """
  return reparam.apply(trainable, frozen)


def unmerge(reparam: Reparam, trainable: PyTree, params: PyTree) -> PyTree:
  """The frozen tree that `merge` maps to ``params``: ``reparam.unapply(trainable, params)``.

  Exact for additive reparameterizations (LoRA family: ``frozen = merged - delta``, AdaLoRA,
  MiSS default/mini) and for MiSS "bat" (inverts ``I + B_i``).

  Args:
    reparam: the reparameterization.
    trainable: its trainable tree.
    params: merged parameters.

  Returns:
    The frozen tree.

  Raises:
    ValueError: if the reparameterization is not invertible (e.g. DoRA: the merged kernel only
      fixes the direction ``V / ||V||`` and the magnitude, not ``||V||``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.reparam.lora import lora
    >>> rp = lora(1, 1.0, "w")
    >>> t = {"w": {"lora_a": jnp.ones((2, 1)), "lora_b": jnp.ones((1, 2))}}
    >>> unmerge(rp, t, {"w": jnp.ones((2, 2))})["w"]
    Array([[0., 0.],
           [0., 0.]], dtype=float32)
  """
  if reparam.unapply is None:
    raise ValueError(
        "this reparameterization has no inverse (unapply is None); unmerge is defined for "
        "invertible ones such as lora, adalora and bone")
  return reparam.unapply(trainable, params)


def init_train(
    reparam: Reparam,
    params: PyTree,
    key: jax.Array,
    optimizer: optax.GradientTransformation,
    **data,
) -> tuple[PyTree, PyTree, optax.OptState]:
  """Splits ``params`` and initializes ``optimizer`` on the trainable part only.

  Args:
    reparam: the reparameterization.
    params: the pretrained parameters.
    key: PRNG key for the adapter initialization.
    optimizer: any optax transformation; its state covers ``trainable`` only.
    **data: passed to ``reparam.init`` (e.g. activations for data-driven inits).

  Returns:
    ``(trainable, frozen, opt_state)``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from reweight.reparam.lora import lora
    >>> params = {"w": jnp.zeros((8, 8))}
    >>> t, f, s = init_train(lora(1, 1.0, "w"), params, jax.random.key(0), optax.adam(1e-3))
    >>> tree_bytes(s), tree_bytes(optax.adam(1e-3).init(params))
    (132, 516)
  """
  trainable, frozen = reparam.init(params, key, **data)
  return trainable, frozen, optimizer.init(trainable)


def tree_bytes(tree: PyTree) -> int:
  """Total bytes of the array leaves of a pytree (arrays, NumPy arrays, ``ShapeDtypeStruct``).

  Useful for optimizer-state sizes, also on ``jax.eval_shape`` outputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> tree_bytes({"a": jnp.zeros((2, 3)), "b": jnp.zeros(4, jnp.int8)})
    28
  """
  total = 0
  for leaf in jax.tree.leaves(tree):
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      total += int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    else:
      total += np.asarray(leaf).nbytes
  return total
