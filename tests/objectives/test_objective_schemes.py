"""`reweight.objectives.objective_grads` against separate gradients; every scheme under `jit`;
bad input to every scheme."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight import objectives as obj
from tests.objectives.objective_checks import np_grads


@pytest.mark.parametrize("k", [2, 3])
def test_objective_grads_equal_separate_grads(k):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=3), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  fns = [lambda p, x, i=i: jnp.mean((x @ p["w"] + p["b"] - i) ** (i + 2)) for i in range(k)]
  losses, grads = obj.objective_grads(fns, params, x)
  assert len(grads) == k
  for i, f in enumerate(fns):
    np.testing.assert_allclose(losses[i], f(params, x), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads[i]), jax.tree.leaves(jax.grad(f)(params, x))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # A single function returning [K] gives the same.
  stacked = lambda p, x: jnp.stack([f(p, x) for f in fns])
  losses2, grads2 = obj.objective_grads(stacked, params, x)
  np.testing.assert_allclose(losses2, losses, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads2), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_everything_jits():
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(jnp.asarray, g) for g in np_grads(rng, 3)]
  losses = jnp.array([0.5, 1.0, 1.5])
  schemes = [obj.linear([1.0, 2.0, 3.0]), obj.mgda(3, max_iters=20),
             obj.lagrangian([0.1, 2.0], 0.5), obj.hypervolume_weights([2.0, 2.0, 2.0]),
             obj.gradient_reward_weights(3)]
  for s in schemes:
    eager = s.update(s.init(), losses=losses, grads=grads)
    jitted = jax.jit(s.update)(jax.jit(s.init)(), losses=losses, grads=grads)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    loss, _ = jax.jit(obj.combine)(losses, jitted)
    assert np.isfinite(loss)
    assert np.all(np.asarray(jitted.weights) >= 0)


def test_bad_input_errors():
  with pytest.raises(ValueError, match="weights=.*>= 0"):
    obj.linear([1.0, -1.0])
  with pytest.raises(ValueError, match=r"shape \(3,\), expected \[2\]"):
    obj.linear([1.0, 1.0]).update(obj.linear([1.0, 1.0]).init(), losses=jnp.ones(3))
  with pytest.raises(ValueError, match="got 3 gradients, expected 2"):
    obj.mgda().update(obj.mgda().init(), grads=[jnp.ones(2)] * 3)
  with pytest.raises(ValueError, match="mgda needs grads="):
    obj.mgda().update(obj.mgda().init(), losses=jnp.ones(2))
  with pytest.raises(ValueError, match=r"grads\[1\] has structure"):
    obj.mgda().update(obj.mgda().init(), grads=[{"a": jnp.ones(2)}, {"b": jnp.ones(2)}])
  with pytest.raises(ValueError, match="max_iters=0"):
    obj.mgda(3, max_iters=0)
  with pytest.raises(ValueError, match="num_objectives=0"):
    obj.gradient_reward_weights(0)
  with pytest.raises(ValueError, match="step_size=-0.5"):
    obj.gradient_reward_weights(2, step_size=-0.5)
  with pytest.raises(ValueError, match="ema=1.0"):
    obj.hypervolume_weights([1.0], ema=1.0)
  with pytest.raises(ValueError, match=r"combine: losses has shape \(2,\), expected \[3\]"):
    obj.combine(jnp.ones(2), obj.linear([1.0, 1.0, 1.0]).init())
  with pytest.raises(ValueError, match="must have a `weights` field"):
    obj.combine(jnp.ones(2), (1.0, 2.0))
