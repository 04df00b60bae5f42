"""lagrangian: the dual-ascent update against NumPy; KKT on a convex toy; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight import objectives as obj


@pytest.mark.parametrize("kind", ["upper", "lower"])
def test_update_equals_numpy(kind):
  theta = np.array([0.5, 1.0, -0.2])
  eta = lambda t: 0.3 / (1.0 + t)
  scheme = obj.lagrangian(theta, eta, kind=kind, init_multipliers=[0.0, 0.4, 1.0])
  s = 1.0 if kind == "upper" else -1.0
  lam = np.array([0.0, 0.4, 1.0])
  state = scheme.init()
  rng = np.random.default_rng(0)
  update = jax.jit(scheme.update)
  for t in range(6):
    l = rng.normal(size=4)
    state = update(state, losses=jnp.float32(l))
    lam = np.maximum(0.0, lam + eta(t) * s * (l[1:] - theta))
    np.testing.assert_allclose(state.weights, np.concatenate([[1.0], lam]), atol=1e-6)
    np.testing.assert_allclose(state.multipliers, lam, atol=1e-6)
    assert np.all(np.asarray(state.weights) >= 0)
    loss, _ = obj.combine(jnp.float32(l), state)
    np.testing.assert_allclose(loss, l[0] + np.sum(lam * s * (l[1:] - theta)), rtol=1e-5,
                               atol=1e-6)


def _gda(theta, steps=1500, lr=0.1, eta=0.5):
  a, b = jnp.array([2.0, 1.0]), jnp.array([1.0, 1.0])
  scheme = obj.lagrangian([theta], eta)
  objectives = lambda x: jnp.stack([jnp.sum((x - a) ** 2), b @ x])

  def step(carry, _):
    x, st = carry
    st = scheme.update(st, losses=objectives(x))
    g = jax.grad(lambda x: obj.combine(objectives(x), st)[0])(x)
    return (x - lr * g, st), st.multipliers[0]

  (x, st), lams = jax.jit(lambda: jax.lax.scan(step, (jnp.zeros(2), scheme.init()), None,
                                               length=steps))()
  return np.asarray(x), st, np.asarray(lams), float(b @ x)


def test_complementary_slackness_on_a_convex_toy():
  """min |x - a|^2 s.t. b.x <= θ, a = (2, 1), b = (1, 1); KKT: λ* = 2 (b.a - θ) / |b|^2."""
  # Active constraint: θ = 1 < b.a = 3, so λ* = 2 and x* = a - λ* b / 2 = (1, 0).
  x, st, lams, c = _gda(1.0)
  assert lams.min() >= 0
  np.testing.assert_allclose(x, [1.0, 0.0], atol=1e-3)
  np.testing.assert_allclose(st.multipliers, [2.0], atol=1e-3)
  assert abs(float(st.multipliers[0]) * (c - 1.0)) < 1e-4  # λ (c - θ) = 0
  # Inactive constraint: θ = 5 > 3, so λ* = 0 and x* = a.
  x, st, lams, c = _gda(5.0)
  assert lams.min() >= 0
  np.testing.assert_allclose(x, [2.0, 1.0], atol=1e-3)
  assert float(st.multipliers[0]) == 0.0 and c < 5.0


def test_bad_input():
  with pytest.raises(ValueError, match=r"losses has 3 objectives but thresholds has 1 "
                                       r"entries; expected K = 1 \+ len\(thresholds\) = 2"):
    s = obj.lagrangian([1.0], 0.1)
    s.update(s.init(), losses=jnp.ones(3))
  with pytest.raises(ValueError, match="step_size=-0.1 must be a non-negative float"):
    obj.lagrangian([1.0], -0.1)
  with pytest.raises(ValueError, match="kind='both' is not one of"):
    obj.lagrangian([1.0], 0.1, kind="both")
  with pytest.raises(ValueError, match="thresholds="):
    obj.lagrangian([], 0.1)
  with pytest.raises(ValueError, match="init_multipliers="):
    obj.lagrangian([1.0, 2.0], 0.1, init_multipliers=[1.0])
  with pytest.raises(ValueError, match="init_multipliers="):
    obj.lagrangian([1.0], 0.1, init_multipliers=-1.0)
