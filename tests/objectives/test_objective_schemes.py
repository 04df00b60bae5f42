"""linear, mgda, hypervolume_weights, gradient_reward_weights, combine, objective_grads:
each against an independent NumPy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.mark.parametrize("seed", range(5))
def test_mgda_two_objectives_is_the_closed_form(seed):
  rng = np.random.default_rng(seed)
  grads = _np_grads(rng, 2)
  if seed == 0:  # one clipped case: g2 "inside" g1's direction
    grads[1] = {k: 3.0 * v for k, v in grads[0].items()}
  g1, g2 = _flat(grads[0]), _flat(grads[1])
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
  grads = _np_grads(rng, 3)
  flat = np.stack([_flat(g) for g in grads])
  m = flat @ flat.T
  # Re-derivation of the iterations.
  for iters in (1, 5, 40):
    state = obj.mgda(3, max_iters=iters).update(obj.mgda(3).init(), grads=grads)
    np.testing.assert_allclose(state.weights, _np_frank_wolfe(m, iters), atol=1e-4)
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


def test_everything_jits():
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(jnp.asarray, g) for g in _np_grads(rng, 3)]
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

