"""GRPO: group-relative advantages and the clipped-ratio loss against NumPy re-derivations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight.grpo import group_advantages, grpo


def np_advantages(rewards, ids, valid, num_groups, eps=1e-4, ddof=1):
  r = np.asarray(rewards, np.float64)
  adv = np.zeros_like(r)
  for g in range(num_groups):
    sel = (ids == g) & valid
    c = sel.sum()
    if c <= ddof:
      continue
    mean = r[sel].mean()
    std = r[sel].std(ddof=ddof)
    if std + eps > 0:
      adv[sel] = (r[sel] - mean) / (std + eps)
  return adv


def np_grpo(logps, old, adv, mask, clip_eps, kl_coeff=0.0, ref=None):
  lp, old = np.asarray(logps, np.float64), np.asarray(old, np.float64)
  a = adv if lp.ndim == adv.ndim else adv[..., None]
  ratio = np.exp(lp - old)
  loss = -np.minimum(ratio * a, np.clip(ratio, 1 - clip_eps, 1 + clip_eps) * a)
  if ref is not None:
    d = np.asarray(ref, np.float64) - lp
    loss = loss + kl_coeff * (np.exp(d) - d - 1)
  return np.where(mask, loss, 0.0)


@pytest.mark.parametrize("ddof", [0, 1])
def test_advantages_grid_layout_match_numpy(ddof):
  rng = np.random.default_rng(0)
  r = rng.integers(0, 2, size=(4, 6)).astype(np.float32)
  r[1] = 1.0  # a group whose rollouts all agree: advantages 0
  got = np.asarray(group_advantages(jnp.asarray(r), ddof=ddof))
  ids = np.repeat(np.arange(4), 6)
  want = np_advantages(r.reshape(-1), ids, np.ones(24, bool), 4, ddof=ddof).reshape(4, 6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[1], 0.0)


def test_advantages_flat_layout_and_valid_match_numpy():
  rng = np.random.default_rng(1)
  ids = rng.integers(0, 5, size=30)
  r = rng.normal(size=30).astype(np.float32)
  valid = rng.random(30) > 0.3
  got = group_advantages(jnp.asarray(r), jnp.asarray(ids), num_groups=6,
                         valid=jnp.asarray(valid))
  np.testing.assert_allclose(np.asarray(got), np_advantages(r, ids, valid, 6), rtol=1e-5,
                             atol=1e-6)
  # the same rows in the [G, n] layout give the same numbers
  grid = rng.normal(size=(3, 5)).astype(np.float32)
  flat = group_advantages(jnp.asarray(grid.reshape(-1)), jnp.repeat(jnp.arange(3), 5))
  np.testing.assert_allclose(np.asarray(group_advantages(jnp.asarray(grid))).reshape(-1),
                             np.asarray(flat), rtol=1e-6)


@pytest.mark.parametrize("clip_eps", [0.2, 10.0])  # active, inactive
def test_sequence_level_loss_matches_numpy(clip_eps):
  rng = np.random.default_rng(2)
  r = rng.integers(0, 2, size=(3, 4)).astype(np.float32)
  old = rng.normal(size=(3, 4)).astype(np.float32)
  lp = old + rng.normal(scale=0.5, size=(3, 4)).astype(np.float32)
  got = np.asarray(grpo(jnp.asarray(lp), jnp.asarray(old), jnp.asarray(r), clip_eps=clip_eps))
  adv = np_advantages(r.reshape(-1), np.repeat(np.arange(3), 4), np.ones(12, bool),
                      3).reshape(3, 4)
  want = np_grpo(lp, old, adv, np.ones((3, 4), bool), clip_eps)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  ratio = np.exp(lp - old)
  clipped = (np.abs(ratio - 1) > clip_eps) & (adv != 0)
  if clip_eps == 0.2:
    assert clipped.any()  # the test does exercise the clip
  else:
    np.testing.assert_allclose(got, -ratio * adv, rtol=1e-5, atol=1e-6)


def test_token_level_loss_with_mask_and_kl_matches_numpy():
  rng = np.random.default_rng(3)
  b, t = 8, 5
  ids = np.array([0, 0, 0, 1, 1, 1, 2, 2])
  r = rng.integers(0, 2, size=b).astype(np.float32)
  old = rng.normal(size=(b, t)).astype(np.float32)
  lp = old + rng.normal(scale=0.4, size=(b, t)).astype(np.float32)
  ref = old + rng.normal(scale=0.3, size=(b, t)).astype(np.float32)
  mask = rng.random((b, t)) > 0.3
  mask[2] = False  # a rollout without tokens: not in its group's statistics
  got = grpo(jnp.asarray(lp), jnp.asarray(old), jnp.asarray(r), jnp.asarray(ids),
             clip_eps=0.2, kl_coeff=0.05, ref_logps=jnp.asarray(ref), mask=jnp.asarray(mask))
  valid = mask.any(axis=1)
  adv = np_advantages(r, ids, valid, 3)
  want = np_grpo(lp, old, adv, mask, 0.2, 0.05, ref)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(got)[~mask] == 0)


def test_jit_and_gradients_finite():
  rng = np.random.default_rng(4)
  old = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
  r = jnp.asarray(rng.integers(0, 2, size=(2, 4)), jnp.float32)
  ref = old + 0.1

  def loss(lp):
    return jnp.mean(grpo(lp, old, r, kl_coeff=0.1, ref_logps=ref))

  lp = old + 0.3
  g = jax.jit(jax.grad(loss))(lp)
  assert np.all(np.isfinite(np.asarray(g)))
  eager = np.asarray(grpo(lp, old, r, kl_coeff=0.1, ref_logps=ref))
  jitted = np.asarray(jax.jit(lambda x: grpo(x, old, r, kl_coeff=0.1, ref_logps=ref))(lp))
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
  # at ratio 1 the policy-gradient part is -A * grad(logp) / N; the KL part vanishes at ref
  g0 = jax.grad(lambda x: jnp.sum(grpo(x, old, r)))(old)
  adv = np.asarray(group_advantages(r))
  np.testing.assert_allclose(np.asarray(g0), -np.broadcast_to(adv[..., None], old.shape),
                             rtol=1e-5, atol=1e-6)
  # under jit with traced ids an out-of-range rollout counts nowhere
  ids = jnp.array([0, 0, 5, 1, 1])
  adv = jax.jit(lambda i: group_advantages(jnp.arange(5.0), i, num_groups=2))(ids)
  assert float(adv[2]) == 0.0


def test_bad_inputs_raise():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="clip_eps=-0.1"):
    grpo(x, x, x, clip_eps=-0.1)
  with pytest.raises(ValueError, match="kl_coeff=-1"):
    grpo(x, x, x, kl_coeff=-1.0)
  with pytest.raises(ValueError, match="kl_coeff=0.1 > 0 needs ref_logps"):
    grpo(x, x, x, kl_coeff=0.1)
  with pytest.raises(ValueError, match=r"group ids span \[0, 7\]"):
    grpo(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), jnp.array([0, 1, 7]), num_groups=3)
  with pytest.raises(ValueError, match=r"group ids span \[-1, 1\]"):
    group_advantages(jnp.zeros(3), jnp.array([0, 1, -1]))
  with pytest.raises(ValueError, match="mask has shape"):
    grpo(x, x, x, mask=jnp.ones((2, 4), bool))
  with pytest.raises(ValueError, match="logps has shape"):
    grpo(jnp.zeros((3, 2)), jnp.zeros((3, 2)), x)
  with pytest.raises(ValueError, match="must be \\[G, n\\]"):
    grpo(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3))
  with pytest.raises(ValueError, match="num_groups= is needed"):
    jax.jit(lambda i: group_advantages(jnp.zeros(3), i))(jnp.array([0, 1, 2]))
  with pytest.raises(ValueError, match="ddof=2"):
    group_advantages(x, ddof=2)
