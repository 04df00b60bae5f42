"""`reweight.objectives.gradient_reward_weights` against an independent NumPy computation."""

import numpy as np

from reweight import objectives as obj
from tests.objectives.objective_checks import flat_grad, np_grads


def test_gradient_reward_weights_numpy():
  rng = np.random.default_rng(2)
  k, eta = 3, 0.7
  scheme = obj.gradient_reward_weights(k, step_size=lambda t: eta * (t + 1))
  state, w = scheme.init(), np.full(k, 1 / k)
  for t in range(3):
    grads = np_grads(rng, k)
    grads[2] = {n: np.zeros_like(v) for n, v in grads[2].items()} if t == 1 else grads[2]
    flat = np.stack([flat_grad(g) for g in grads])
    norms = np.linalg.norm(flat, axis=1)
    unit = np.where(norms[:, None] > 0, flat / np.where(norms > 0, norms, 1)[:, None], 0)
    infl = (unit @ unit.T).sum(1)
    w = w * np.exp(eta * (t + 1) * infl)
    w = w / w.sum()
    state = scheme.update(state, grads=grads, losses=np.zeros(k, np.float32))
    np.testing.assert_allclose(state.influence, infl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.weights, w, rtol=1e-5)
