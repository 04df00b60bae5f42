"""Tests for reweight.optim.grad_norms against NumPy norms and plain optax chains."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reweight import schedules
from reweight.optim import grad_norms


def random_grads(rng, n):
  return [{"a": rng.normal(size=(3, 2)).astype(np.float32),
           "b": {"c": rng.normal(size=4).astype(np.float32)}} for _ in range(n)]


def np_norm(g, ord_):
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]).astype(np.float64)
  return np.sqrt(np.sum(flat**2)) if ord_ == 2 else np.sum(np.abs(flat))


@pytest.mark.parametrize("norm, ord_", [("l2", 2), ("l1", 1)])
def test_records_global_norms_and_is_identity(norm, ord_):
  rng = np.random.default_rng(0)
  grads = random_grads(rng, 5)
  params = jax.tree.map(jnp.zeros_like, grads[0])
  rec = optax.chain(optax.clip_by_global_norm(1e9), grad_norms.record_grad_norms(8, norm),
                    optax.adam(1e-2))
  plain = optax.chain(optax.clip_by_global_norm(1e9), optax.adam(1e-2))
  s_rec, s_plain = rec.init(params), plain.init(params)
  upd_rec, upd_plain = jax.jit(rec.update), jax.jit(plain.update)
  for g in grads:
    u1, s_rec = upd_rec(g, s_rec, params)
    u2, s_plain = upd_plain(g, s_plain, params)
    chex.assert_trees_all_equal(u1, u2)
    params = optax.apply_updates(params, u1)
  np.testing.assert_allclose(grad_norms.recorded_norms(s_rec),
                             [np_norm(g, ord_) for g in grads], rtol=1e-6)
  state = grad_norms.find_grad_norms_state(s_rec)
  assert int(state.count) == 5 and state.norms.shape == (8,)
  np.testing.assert_array_equal(np.asarray(state.norms[5:]), 0.0)


def test_capacity_keeps_the_first_norms():
  rng = np.random.default_rng(1)
  grads = random_grads(rng, 6)
  t = grad_norms.record_grad_norms(3)
  state = t.init(grads[0])
  for g in grads:
    _, state = t.update(g, state)
  assert int(state.count) == 6
  np.testing.assert_allclose(grad_norms.recorded_norms(state),
                             [np_norm(g, 2) for g in grads[:3]], rtol=1e-6)


def test_found_inside_multisteps_and_feeds_refined():
  # Constant gradients => constant norms => the refined schedule is linear decay to zero.
  opt = optax.MultiSteps(optax.chain(grad_norms.record_grad_norms(10), optax.sgd(0.1)),
                         every_k_schedule=2)
  params = {"w": jnp.zeros(3)}
  state = opt.init(params)
  update = jax.jit(opt.update)
  for _ in range(12):
    _, state = update({"w": jnp.array([1.0, 2.0, 2.0])}, state, params)
  norms = grad_norms.recorded_norms(state)
  np.testing.assert_allclose(norms, np.full(6, 3.0), rtol=1e-6)
  s = schedules.refined(norms, peak=1.0)
  np.testing.assert_allclose(np.asarray(s(jnp.arange(6))), 1 - np.arange(6) / 5, atol=1e-6)


def test_errors():
  with pytest.raises(ValueError, match="capacity=0"):
    grad_norms.record_grad_norms(0)
  with pytest.raises(ValueError, match=r"norm='linf' is not one of \['l1', 'l2'\]"):
    grad_norms.record_grad_norms(4, "linf")
  with pytest.raises(ValueError, match="found 0"):
    grad_norms.recorded_norms(optax.sgd(0.1).init({"w": jnp.zeros(2)}))
  two = optax.chain(grad_norms.record_grad_norms(2), grad_norms.record_grad_norms(2))
  with pytest.raises(ValueError, match="found 2"):
    grad_norms.recorded_norms(two.init({"w": jnp.zeros(2)}))
