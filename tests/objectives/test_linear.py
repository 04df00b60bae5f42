"""`reweight.objectives.linear` and `combine` against an independent NumPy computation."""

import jax
import jax.numpy as jnp
import numpy as np

from reweight import objectives as obj


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
