"""aioli against a NumPy re-derivation of LearnParams + the exponentiated update."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight import testing
from reweight.group.aioli import aioli, learn_params_mixtures, mixing_matrix


def np_mixtures(g, f):
  m = np.empty((g, g))
  for j in range(g):
    m[j] = (1 - f) / (g - 1) if g > 1 else 0.0
    m[j, j] = f
  return m


def np_matrix(drops, f, normalize=True, diagonal=False):
  """A = mean(B) S^{-1} by a linear solve, then the shift-and-scale normalization."""
  b = np.asarray(drops, np.float64)
  b = b.mean(0) if b.ndim == 3 else b
  s = np_mixtures(b.shape[0], f).T  # column j = the mixture trained for column j of B
  a = np.diag(np.diag(b) / f) if diagonal else np.linalg.solve(s.T, b.T).T  # A S = B
  if normalize:
    low = a.min()
    if low < 0:
      a = a - low
    a = a / a.sum() if a.sum() > 0 else np.zeros_like(a)
  return a


def np_policy(drops_per_round, eta, f, ema=None, **kw):
  g = drops_per_round[0].shape[-1]
  p = np.full(g, 1 / g)
  avg, out = None, []
  for t, drops in enumerate(drops_per_round):
    a = np_matrix(drops, f, **kw)
    e = eta(t) if callable(eta) else eta
    if ema is None:
      p = p * np.exp(e * a.sum(0))
    else:
      avg = a if avg is None else (1 - ema) * a + ema * avg
      p = np.exp(e * avg.sum(0))
    p = p / p.sum()
    out.append(p)
  return np.array(out)


@pytest.mark.parametrize("g,f", [(1, 0.625), (2, 0.625), (3, 0.5), (5, 0.9), (4, 1.0)])
def test_mixtures(g, f):
  m = np.asarray(learn_params_mixtures(g, f))
  np.testing.assert_allclose(m, np_mixtures(g, f) if g > 1 else [[1.0]], rtol=1e-6)
  np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)
  assert np.all(np.argmax(m, 1) == np.arange(g))


@pytest.mark.parametrize("g,f", [(2, 0.625), (3, 0.625), (6, 0.4), (4, 1.0)])
def test_mixing_matrix_matches_solve(g, f):
  rng = np.random.default_rng(g)
  drops = rng.normal(0.1, 0.2, (3, g, g))
  for normalize in (False, True):
    np.testing.assert_allclose(mixing_matrix(drops, f, normalize=normalize),
                               np_matrix(drops, f, normalize), rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(mixing_matrix(drops[0], f, diagonal=True, normalize=False),
                             np_matrix(drops[0], f, False, diagonal=True), rtol=1e-5)


def test_mixing_matrix_recovers_a_linear_law():
  # drops produced by the linear law through the smoothed mixtures give back A exactly
  rng = np.random.default_rng(0)
  for g, f in [(2, 0.625), (4, 0.625), (3, 0.8)]:
    a_true = rng.normal(0, 1, (g, g))
    b = a_true @ np_mixtures(g, f).T
    np.testing.assert_allclose(mixing_matrix(b, f, normalize=False), a_true, atol=2e-5)
    a = np.asarray(mixing_matrix(np.stack([b, b]), f))
    assert a.min() >= 0 and abs(a.sum() - 1) < 1e-5
    np.testing.assert_allclose(a, np_matrix(b, f), atol=1e-6)


def test_normalize_edge_cases():
  np.testing.assert_array_equal(mixing_matrix(-np.ones((2, 2)), 1.0), np.zeros((2, 2)))
  np.testing.assert_array_equal(mixing_matrix(np.zeros((3, 3)), 0.625), np.zeros((3, 3)))
  # a non-negative A is only rescaled (no shift)
  b = np.array([[2.0, 1.0], [0.0, 1.0]])
  np.testing.assert_allclose(mixing_matrix(b, 1.0), b / 4, rtol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"normalize": False}, {"diagonal": True}])
def test_policy_matches_numpy(kw):
  g, f, eta = 3, 0.625, 0.5
  rng = np.random.default_rng(7)
  rounds = [rng.normal(0.05, 0.1, (4, g, g)) for _ in range(5)]
  policy = aioli(g, eta, lp_rounds=4, smoothing=f, **kw)
  update = jax.jit(policy.update)
  state = policy.init()
  np.testing.assert_allclose(state.probs, np.full(g, 1 / g), rtol=1e-6)
  got = []
  for drops in rounds:
    state = update(state, loss_drops=jnp.asarray(drops, jnp.float32))
    got.append(np.asarray(state.probs))
  np.testing.assert_allclose(np.array(got), np_policy(rounds, eta, f, **kw), rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(np.exp(state.logits), state.probs, rtol=1e-6)
  assert int(state.count) == 5


def test_policy_ema_and_schedule():
  g, f = 4, 0.625
  rng = np.random.default_rng(3)
  rounds = [rng.normal(0.05, 0.1, (g, g)) for _ in range(5)]
  eta = lambda t: 0.1 * (t + 1)
  policy = aioli(g, eta, smoothing=f, ema=0.1)
  state, got = policy.init(), []
  for drops in rounds:
    state = policy.update(state, loss_drops=drops, eval_losses=jnp.ones(g))  # extras ignored
    got.append(np.asarray(state.probs))
  np.testing.assert_allclose(np.array(got), np_policy(rounds, eta, f, ema=0.1), rtol=1e-5)


def test_policy_follows_the_helpful_group():
  # group 2 lowers every group's loss: its column sum is the largest, so it gains mass
  g, f = 3, 0.625
  a_true = np.array([[0.2, 0.0, 0.3], [0.0, 0.1, 0.3], [0.0, 0.0, 0.4]])
  drops = a_true @ np_mixtures(g, f).T
  policy = aioli(g, 0.5, smoothing=f)
  state = policy.init()
  for _ in range(3):
    state = policy.update(state, loss_drops=drops)
  p = np.asarray(state.probs)
  assert np.argmax(p) == 2 and p[2] > p[0] > p[1]


def test_nonfinite_round_is_skipped():
  policy = aioli(2, 0.5)
  state = policy.update(policy.init(), loss_drops=jnp.array([[0.3, 0.1], [0.0, 0.2]]))
  skipped = jax.jit(policy.update)(state, loss_drops=jnp.array([[jnp.inf, 0.1], [0.0, 0.2]]))
  chex.assert_trees_all_equal(state, skipped)


def test_bad_input():
  with pytest.raises(ValueError, match=r"smoothing=0.5 must be in \(0.5, 1\] for num_groups=2"):
    learn_params_mixtures(2, 0.5)
  with pytest.raises(ValueError, match=r"smoothing=1.5 must be in"):
    aioli(3, smoothing=1.5)
  with pytest.raises(ValueError, match="num_groups=0 must be an integer >= 1"):
    learn_params_mixtures(0)
  with pytest.raises(ValueError, match=r"loss_drops has shape \(2, 3\), expected"):
    mixing_matrix(np.ones((2, 3)))
  with pytest.raises(ValueError, match="step_size=-0.1 must be a positive"):
    aioli(2, -0.1)
  with pytest.raises(ValueError, match="lp_rounds=0 must be an integer >= 1"):
    aioli(2, lp_rounds=0)
  with pytest.raises(ValueError, match=r"ema=1.0 must be None or in \[0, 1\)"):
    aioli(2, ema=1.0)
  policy = aioli(2, lp_rounds=4)
  with pytest.raises(ValueError, match=r"loss_drops has shape \(3, 2, 2\), expected \(4, 2, 2\)"):
    policy.update(policy.init(), loss_drops=np.ones((3, 2, 2)))
  with pytest.raises(ValueError, match="needs loss_drops="):
    policy.update(policy.init(), eval_losses=np.ones(2))


CODE = """
import json, numpy as np
from reweight import testing
from reweight.group.aioli import aioli
rng = np.random.default_rng(0)
steps = [{"loss_drops": rng.normal(0.05, 0.1, (4, 3, 3)).astype(np.float32)} for _ in range(3)]
out = testing.policy_layouts(lambda: aioli(3, 0.5, lp_rounds=4), steps)
print(json.dumps({"aioli": {m: testing.max_difference(out, "single", m) for m in out}}))
"""


@pytest.mark.multidevice
def test_sharding_layouts_agree():
  testing.assert_layouts_agree(testing.run_with_devices(CODE, 8))
