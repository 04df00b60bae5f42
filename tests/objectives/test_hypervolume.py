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


def test_hypervolume_weights_numpy_and_hv_gradient():
  ref = np.array([3.0, 2.0, 5.0])
  ema = 0.7
  scheme = obj.hypervolume_weights(ref, ema=ema)
  rng = np.random.default_rng(1)
  state, mean = scheme.init(), None
  update = jax.jit(scheme.update)
  for t in range(4):
    l = rng.uniform(0.5, 1.8, 3)
    state = update(state, losses=jnp.float32(l))
    mean = l if t == 0 else ema * mean + (1 - ema) * l
    inv = 1 / (ref - mean)
    np.testing.assert_allclose(state.weights, inv / inv.sum(), rtol=1e-5)
    np.testing.assert_allclose(state.hypervolume, np.prod(ref - mean), rtol=1e-5)
  # The weights are the normalised gradient of HV(y) = prod(ref - y) w.r.t. -y.
  hv_grad = -jax.grad(lambda y: jnp.prod(jnp.float32(ref) - y))(state.mean)
  np.testing.assert_allclose(state.weights, hv_grad / hv_grad.sum(), rtol=1e-5)
  # Beyond the reference point: weight dominated by 1/eps, still finite.
  s = scheme.update(scheme.init(), losses=jnp.array([3.5, 1.0, 1.0]))
  assert np.all(np.isfinite(s.weights)) and float(s.weights[0]) > 0.99
