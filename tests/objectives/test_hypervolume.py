"""`reweight.objectives.hypervolume_weights` against an independent NumPy computation."""

import jax
import jax.numpy as jnp
import numpy as np

from reweight import objectives as obj


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
