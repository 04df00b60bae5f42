"""Tests for reweight.optim.add_penalty_gradient against closed forms and NumPy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reweight.optim import add_penalty_gradient
from reweight.reparam import adalora, orthogonal_penalty


def _params():
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}


class L2PenaltyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_l2_penalty_is_optax_add_decayed_weights(self):
    params = _params()
    grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
    l2 = lambda p: 0.5 * sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))  # noqa: E731
    tx = add_penalty_gradient(l2, 0.3)
    got, _ = self.variant(tx.update)(grads, tx.init(params), params)
    ref = optax.add_decayed_weights(0.3)
    want, _ = ref.update(grads, ref.init(params), params)
    chex.assert_trees_all_close(got, want, rtol=1e-6)


def test_quartic_penalty_matches_numpy_and_loss_term():
  """u + lam * 4 theta^3 (NumPy), and chained before SGD the step of L + lam R."""
  params = _params()
  lam = 0.05
  quartic = lambda p: sum(jnp.sum(x ** 4) for x in jax.tree.leaves(p))  # noqa: E731
  grads = jax.tree.map(jnp.ones_like, params)
  tx = add_penalty_gradient(quartic, lam)
  got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for k in params:
    np.testing.assert_allclose(got[k], 1.0 + lam * 4 * np.asarray(params[k], np.float64) ** 3,
                               rtol=1e-5)
  loss = lambda p: jnp.sum(p["w"]) + jnp.sum(p["b"])  # noqa: E731  (its gradient is ones)
  opt = optax.chain(add_penalty_gradient(quartic, lam), optax.sgd(0.1))
  u, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
  ref = jax.tree.map(lambda p: -0.1 * (1.0 + lam * 4 * np.asarray(p, np.float64) ** 3), params)
  chex.assert_trees_all_close(u, ref, rtol=1e-5)


def test_adalora_orthogonal_penalty_gradient_matches_numpy():
  """AdaLoRA's use: R = mean over the 2n matrices of ||Q Q^T - I||_F (PEFT's regu_loss)."""
  params = {"k": jnp.zeros((4, 5))}
  trainable, _ = adalora(2, 1.0, "k").init(params, jax.random.key(0))
  rng = np.random.default_rng(2)
  a = rng.normal(size=trainable["k"]["lora_a"].shape)
  b = rng.normal(size=trainable["k"]["lora_b"].shape)
  trainable["k"]["lora_a"] = jnp.asarray(a, jnp.float32)
  trainable["k"]["lora_b"] = jnp.asarray(b, jnp.float32)
  zeros = jax.tree.map(jnp.zeros_like, trainable)
  tx = add_penalty_gradient(orthogonal_penalty, 0.5)
  got, _ = jax.jit(tx.update)(zeros, tx.init(trainable), trainable)

  def fro_grad(m):  # d ||m^T m - I||_F / dm = 2 m (m^T m - I) / ||m^T m - I||_F
    d = m.T @ m - np.eye(m.shape[1])
    return 2 * m @ d / np.linalg.norm(d)

  # Q Q^T = a^T a with a: (in, r); P^T P = b b^T with b: (r, out); mean over 2 matrices.
  np.testing.assert_allclose(got["k"]["lora_a"], 0.5 * fro_grad(a) / 2, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["k"]["lora_b"], 0.5 * fro_grad(b.T).T / 2, rtol=1e-4,
                             atol=1e-6)


def test_needs_params_and_a_function():
  tx = add_penalty_gradient(lambda p: 0.0, 1.0)
  with pytest.raises(ValueError, match="needs params"):
    tx.update({"w": jnp.ones(2)}, tx.init(None))
  with pytest.raises(ValueError, match="penalty=2.0 must be a function"):
    add_penalty_gradient(2.0, 1.0)
