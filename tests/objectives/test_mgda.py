"""`reweight.objectives.mgda` against the K = 2 closed form and a NumPy Frank–Wolfe."""

import jax.numpy as jnp
import numpy as np
import pytest

from reweight import objectives as obj
from tests.objectives.objective_checks import flat_grad, np_frank_wolfe, np_grads


@pytest.mark.parametrize("seed", range(5))
def test_mgda_two_objectives_is_the_closed_form(seed):
  rng = np.random.default_rng(seed)
  grads = np_grads(rng, 2)
  if seed == 0:  # one clipped case: g2 "inside" g1's direction
    grads[1] = {k: 3.0 * v for k, v in grads[0].items()}
  g1, g2 = flat_grad(grads[0]), flat_grad(grads[1])
  alpha = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0, 1)
  scheme = obj.mgda()
  state = scheme.update(scheme.init(), grads=grads, losses=jnp.zeros(2))
  np.testing.assert_allclose(state.weights, [alpha, 1 - alpha], atol=1e-5)
  d = alpha * g1 + (1 - alpha) * g2
  np.testing.assert_allclose(state.min_norm, d @ d, rtol=1e-4)
  if seed == 0:
    np.testing.assert_allclose(state.weights, [1.0, 0.0])


def test_mgda_identical_gradients_is_finite():
  g = {"w": jnp.ones(3)}
  state = obj.mgda().update(obj.mgda().init(), grads=[g, g])
  np.testing.assert_allclose(state.weights, [0.5, 0.5])


@pytest.mark.parametrize("seed", range(3))
def test_mgda_frank_wolfe_matches_numpy_and_approaches_the_qp_solution(seed):
  rng = np.random.default_rng(seed)
  grads = np_grads(rng, 3)
  flat = np.stack([flat_grad(g) for g in grads])
  m = flat @ flat.T
  # Re-derivation of the iterations.
  for iters in (1, 5, 40):
    state = obj.mgda(3, max_iters=iters).update(obj.mgda(3).init(), grads=grads)
    np.testing.assert_allclose(state.weights, np_frank_wolfe(m, iters), atol=1e-4)
  # Brute force over a simplex grid (step 1/400).
  n = 400
  grid = np.array([(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]) / n
  values = np.einsum("ak,kl,al->a", grid, m, grid)
  best = grid[np.argmin(values)]
  state = obj.mgda(3, max_iters=500).update(obj.mgda(3).init(), grads=grads)
  a = np.asarray(state.weights, np.float64)
  assert abs(a.sum() - 1) < 1e-5 and a.min() >= 0
  assert a @ m @ a <= values.min() + 1e-3 * max(values.min(), 1.0)
  np.testing.assert_allclose(a, best, atol=0.02)


def test_mgda_four_objectives_dominated_direction():
  """g1 + g2 + g3 + 3 g4 = 0: the origin is in the hull, at weights (1, 1, 1, 3) / 6."""
  rng = np.random.default_rng(3)
  gs = [rng.normal(size=5) for _ in range(3)]
  gs.append(-(gs[0] + gs[1] + gs[2]) / 3)
  state = obj.mgda(4, max_iters=300).update(obj.mgda(4).init(),
                                               grads=[jnp.float32(g) for g in gs])
  assert float(state.min_norm) < 1e-3
  np.testing.assert_allclose(state.weights, np.array([1, 1, 1, 3]) / 6, atol=0.02)
