"""linear, mgda, hypervolume_weights, gradient_reward_weights, combine, objective_grads:
each against an independent NumPy computation."""

import jax
import jax.numpy as jnp
import numpy as np

from reweight import objectives as obj


def _np_grads(rng, k, shapes=((3, 2), (4,))):
  return [{f"p{i}": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}
          for _ in range(k)]


def _flat(g):
  return np.concatenate([np.ravel(g[k]).astype(np.float64) for k in sorted(g)])


def _np_frank_wolfe(m, iters):
  """Frank–Wolfe for min_{a in simplex} a^T M a, re-derived in NumPy (float64)."""
  k = m.shape[0]
  a = np.full(k, 1.0 / k)
  for _ in range(iters):
    ma = m @ a
    t = int(np.argmin(ma))
    vv, vt, tt = a @ ma, ma[t], m[t, t]
    denom = vv - 2 * vt + tt
    gamma = np.clip((vv - vt) / denom, 0, 1) if denom > 0 else 0.0
    a = (1 - gamma) * a
    a[t] += gamma
  return a


def test_linear_is_static_and_combine_is_the_dot_product():
  w = [0.2, 1.0, 3.0]
  scheme = obj.linear(w)
  state = scheme.update(scheme.init(), losses=jnp.array([1.0, 2.0, 3.0]))
  np.testing.assert_array_equal(state.weights, np.float32(w))
  losses = {"a": 1.5, "b": -2.0, "c": 0.25}
  loss, info = obj.combine(losses, state)
  np.testing.assert_allclose(loss, 0.2 * 1.5 - 2.0 + 3.0 * 0.25, rtol=1e-6)
  np.testing.assert_allclose(info["terms"], np.float32(w) * [1.5, -2.0, 0.25], rtol=1e-6)
  # Gradients flow through the losses only.
  g = jax.grad(lambda x: obj.combine(jnp.stack([x, x ** 2, 2 * x]), state)[0])(3.0)
  np.testing.assert_allclose(g, 0.2 + 1.0 * 6.0 + 3.0 * 2.0, rtol=1e-6)
