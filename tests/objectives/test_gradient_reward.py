"""linear, mgda, hypervolume_weights, gradient_reward_weights, combine, objective_grads:
each against an independent NumPy computation."""

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


def test_gradient_reward_weights_numpy():
  rng = np.random.default_rng(2)
  k, eta = 3, 0.7
  scheme = obj.gradient_reward_weights(k, step_size=lambda t: eta * (t + 1))
  state, w = scheme.init(), np.full(k, 1 / k)
  for t in range(3):
    grads = _np_grads(rng, k)
    grads[2] = {n: np.zeros_like(v) for n, v in grads[2].items()} if t == 1 else grads[2]
    flat = np.stack([_flat(g) for g in grads])
    norms = np.linalg.norm(flat, axis=1)
    unit = np.where(norms[:, None] > 0, flat / np.where(norms > 0, norms, 1)[:, None], 0)
    infl = (unit @ unit.T).sum(1)
    w = w * np.exp(eta * (t + 1) * infl)
    w = w / w.sum()
    state = scheme.update(state, grads=grads, losses=np.zeros(k, np.float32))
    np.testing.assert_allclose(state.influence, infl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.weights, w, rtol=1e-5)
