"""Add the gradient of a penalty on the parameters to the updates.

Regularizers that depend only on the parameters (AdaLoRA's orthogonality penalty, an l2 pull
towards the pretrained weights, ...) can be added to the loss, but the loss function of a
trainer is often fixed. `add_penalty_gradient` adds the same term inside the optimizer: put
it first in the chain and the optimizer behind it sees the gradient of ``L + weight * R``,

  opt = optax.chain(add_penalty_gradient(R, weight), optax.adam(lr))

like `optax.add_decayed_weights`, which is the special case ``R = ||theta||^2 / 2``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from reweight._types import PyTree


def add_penalty_gradient(penalty: Callable[[PyTree], jax.Array], weight: float
                         ) -> optax.GradientTransformationExtraArgs:
  r"""Adds ``weight * grad penalty(params)`` to the incoming updates.

  .. math::

    u_t \leftarrow u_t + \lambda\, \nabla_\theta R(\theta_t)

  with ``R = penalty`` a scalar function of the parameter tree and ``lambda = weight``.
  Chained before an optimizer that receives raw gradients ``g = grad L``, the optimizer
  sees ``grad (L + lambda R)``, exactly as if ``lambda R`` had been added to the loss.

  Args:
    penalty: ``penalty(params) -> scalar``, differentiable in ``params`` (e.g.
      `reweight.reparam.orthogonal_penalty` on an AdaLoRA trainable tree). Under
      `optax.partition` / `optax.masked` it receives the tree with the other leaves
      replaced by ``optax.MaskedNode()``, so write it over ``jax.tree.leaves``.
    weight: ``lambda`` (a float, or a traced scalar under `optax.inject_hyperparams`).

  Returns:
    An `optax.GradientTransformationExtraArgs` with `optax.EmptyState`; ``update`` needs
    ``params``.

  Raises:
    ValueError: at ``update`` if ``params`` is not given.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.optim import add_penalty_gradient
    >>> l2 = lambda p: 0.5 * sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))
    >>> tx = add_penalty_gradient(l2, 0.1)  # = optax.add_decayed_weights(0.1)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> u, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    >>> u["w"].tolist()
    [0.10000000149011612, -0.20000000298023224]

  References:
    Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR
    2023 (the orthogonality penalty that PEFT adds to the loss with ``orth_reg_weight``).
  """
  if not callable(penalty):
    raise ValueError(f"penalty={penalty!r} must be a function params -> scalar")

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("add_penalty_gradient needs params: call update(updates, state, params)")
    grad = jax.grad(penalty)(params)
    return jax.tree.map(lambda u, d: (u + weight * d).astype(u.dtype), updates, grad), state

  return optax.GradientTransformationExtraArgs(init, update)
