"""EXP3-FLAD, UCB1-FLAD and gradient alignment against NumPy re-derivations."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight import testing
from reweight.group.flad import exp3, gradient_alignment, ucb1

# --------------------------------------------------------------------------- alignment


def test_gradient_alignment_matches_numpy():
  rng = np.random.default_rng(0)
  g = 5
  target = {"dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)},
            "scale": rng.normal(size=())}
  groups = jax.tree.map(lambda t: rng.normal(size=(g,) + np.shape(t)), target)
  groups["dense"]["kernel"][3] = -target["dense"]["kernel"]  # group 3: exactly opposite
  groups["dense"]["bias"][3] = -target["dense"]["bias"]
  groups["scale"][3] = -target["scale"]
  for leaf in jax.tree.leaves(groups):
    leaf[4] = 0.0  # group 4: zero gradient
  flat_t = np.concatenate([np.ravel(x) for x in jax.tree.leaves(target)])
  flat_g = np.concatenate([np.reshape(x, (g, -1)) for x in jax.tree.leaves(groups)], axis=1)
  norms = np.linalg.norm(flat_g, axis=1) * np.linalg.norm(flat_t)
  want = np.where(norms > 0, flat_g @ flat_t / np.where(norms > 0, norms, 1), 0.0)
  cast = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  got = np.asarray(jax.jit(gradient_alignment)(cast(groups), cast(target)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert got[3] == pytest.approx(-1.0, abs=1e-6) and got[4] == 0.0
  # a list of G pytrees is stacked first (the documented recipe); bf16 is accumulated wide
  per_group = [jax.tree.map(lambda x, i=i: x[i], cast(groups)) for i in range(g)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x).astype(jnp.bfloat16), *per_group)
  np.testing.assert_allclose(gradient_alignment(stacked, cast(target)), want, atol=2e-2)
  # a zero target gradient aligns with nothing
  zero = jax.tree.map(jnp.zeros_like, cast(target))
  np.testing.assert_array_equal(gradient_alignment(cast(groups), zero), np.zeros(g))


def test_gradient_alignment_bad_input():
  t = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="group_grads has structure"):
    gradient_alignment({"v": jnp.ones((2, 3))}, t)
  with pytest.raises(ValueError, match=r"leaf 0 of group_grads has shape \(3,\), expected"):
    gradient_alignment({"w": jnp.ones(3)}, t)
  with pytest.raises(ValueError, match=r"disagree on the number of groups: \[2, 4\]"):
    gradient_alignment({"a": jnp.ones((2, 3)), "b": jnp.ones((4,))},
                       {"a": jnp.ones(3), "b": jnp.ones(())})


# --------------------------------------------------------------------------- EXP3


def np_exp3(k, plays, gamma, beta=1.0):
  """EXP3(-FLAD) written out in float64; gamma(t) for t = number of rewards seen."""
  g_prev = gamma(0)
  p = np.full(k, 1 / k)
  r_hat, r_bar, n, out = np.zeros(k), np.zeros(k), np.zeros(k), []
  for t, (a, r) in enumerate(plays, start=1):
    r_bar[a] = r if n[a] == 0 else (1 - beta) * r_bar[a] + beta * r
    n[a] += 1
    r_hat[a] += r_bar[a] / p[a]
    g = gamma(t)
    z = g_prev / k * r_hat
    w = np.exp(z - z.max())
    p = (1 - g) * w / w.sum() + g / k
    g_prev = g
    out.append(p.copy())
  return np.array(out), r_hat


def random_plays(k, steps, seed, good=0):
  rng = np.random.default_rng(seed)
  arms = rng.integers(0, k, steps)
  rewards = np.where(arms == good, 0.8, rng.uniform(-0.5, 0.5, steps))
  return list(zip(arms.tolist(), rewards.tolist()))


@pytest.mark.parametrize("gamma,beta", [(0.3, 1.0), (None, 1.0), (None, 0.5)])
def test_exp3_matches_numpy(gamma, beta):
  k = 4
  plays = random_plays(k, 12, 1)
  flad = lambda t: min(1.0, math.sqrt(k * math.log(k) / max(t, 1)))
  ref_gamma = flad if gamma is None else (lambda t: gamma)
  want, r_hat = np_exp3(k, plays, ref_gamma, beta)
  policy = exp3(k, gamma=gamma, reward_smoothing=beta)
  update = jax.jit(policy.update)
  state = policy.init()
  np.testing.assert_allclose(state.probs, np.full(k, 1 / k), rtol=1e-6)
  got = []
  for a, r in plays:
    state = update(state, group=jnp.int32(a), reward=jnp.float32(r))
    got.append(np.asarray(state.probs))
  np.testing.assert_allclose(np.array(got), want, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(state.reward_sums, r_hat, rtol=2e-5, atol=1e-6)
  np.testing.assert_array_equal(state.plays, np.bincount([a for a, _ in plays], minlength=k))
  assert np.all(np.asarray(got) >= ref_gamma(len(plays)) / k - 1e-7)


def test_exp3_gamma_schedule_and_step():
  k = 3
  plays = random_plays(k, 6, 2)
  sched = lambda t: 1.0 / (1.0 + t)
  want, _ = np_exp3(k, plays, sched)
  policy = exp3(k, gamma=sched)
  state = policy.init()
  for a, r in plays:
    state = policy.update(state, group=a, reward=r, params={"ignored": 1})
  np.testing.assert_allclose(state.probs, want[-1], rtol=2e-5)
  # an explicit step is the t the schedule sees
  s = policy.update(policy.init(), group=0, reward=1.0, step=9)
  assert float(s.gamma) == pytest.approx(0.1)


def test_exp3_learns_the_best_source():
  k = 5
  policy = exp3(k, gamma=0.1)
  update = jax.jit(policy.update)
  state, rng = policy.init(), np.random.default_rng(0)
  for _ in range(300):
    p = np.asarray(state.probs, np.float64)
    a = int(rng.choice(k, p=p / p.sum()))
    state = update(state, group=a, reward=0.9 if a == 2 else 0.1)
  p = np.asarray(state.probs)
  assert np.argmax(p) == 2 and p[2] > 0.5 and abs(p.sum() - 1) < 1e-5


# --------------------------------------------------------------------------- UCB1


def np_ucb1(k, plays, c=1.0, beta=None):
  mean, n, out = np.zeros(k), np.zeros(k), []
  for a, r in plays:
    if n[a] == 0:
      mean[a] = r
    elif beta is None:
      mean[a] += (r - mean[a]) / (n[a] + 1)
    else:
      mean[a] = (1 - beta) * mean[a] + beta * r
    n[a] += 1
    unplayed = np.flatnonzero(n == 0)
    if unplayed.size:
      choice = unplayed[0]
    else:
      index = mean + c * np.sqrt(2 * np.log(n.sum()) / n)
      choice = int(np.argmax(index))
    out.append(np.eye(k)[choice])
  return np.array(out), mean


@pytest.mark.parametrize("c,beta", [(1.0, None), (0.3, 1.0), (0.5, 0.4)])
def test_ucb1_matches_numpy(c, beta):
  k = 4
  plays = random_plays(k, 15, 3, good=1)
  want, mean = np_ucb1(k, plays, c, beta)
  policy = ucb1(k, exploration=c, reward_smoothing=beta)
  update = jax.jit(policy.update)
  state = policy.init()
  np.testing.assert_array_equal(state.probs, np.eye(k)[0])
  got = []
  for a, r in plays:
    state = update(state, group=jnp.int32(a), reward=jnp.float32(r))
    got.append(np.asarray(state.probs))
  np.testing.assert_array_equal(np.array(got), want)
  np.testing.assert_allclose(state.rewards, mean, rtol=1e-5, atol=1e-6)


def test_ucb1_plays_every_source_then_exploits():
  k = 4
  policy = ucb1(k)
  update = jax.jit(policy.update)
  state, order = policy.init(), []
  for _ in range(40):
    a = int(np.argmax(state.probs))
    order.append(a)
    state = update(state, group=a, reward=0.9 if a == 3 else 0.2)
  assert order[:k] == [0, 1, 2, 3]
  assert np.bincount(order, minlength=k)[3] > 20


def test_invalid_plays_leave_state_unchanged():
  for policy in (exp3(3, gamma=0.2), ucb1(3)):
    state = policy.update(policy.init(), group=1, reward=0.5)
    update = jax.jit(policy.update)
    for group, reward in [(5, 0.5), (-1, 0.5), (0, float("nan"))]:
      same = update(state, group=jnp.int32(group), reward=jnp.float32(reward))
      chex.assert_trees_all_equal(state, same)


def test_bad_input():
  with pytest.raises(ValueError, match=r"gamma=0.0 must be in \(0, 1\]"):
    exp3(3, gamma=0.0)
  with pytest.raises(ValueError, match=r"reward_smoothing=0 must be in \(0, 1\]"):
    exp3(3, reward_smoothing=0)
  with pytest.raises(ValueError, match=r"reward_smoothing=2.0 must be in \(0, 1\] or None"):
    ucb1(3, reward_smoothing=2.0)
  with pytest.raises(ValueError, match="exploration=-1.0 must be >= 0"):
    ucb1(3, exploration=-1.0)
  with pytest.raises(ValueError, match="num_groups=0 must be an integer >= 1"):
    exp3(0)
  for policy in (exp3(3), ucb1(3)):
    s = policy.init()
    with pytest.raises(ValueError, match=r"group=3 is outside \[0, num_groups=3\)"):
      policy.update(s, group=3, reward=0.1)
    with pytest.raises(ValueError, match="needs group="):
      policy.update(s, reward=0.1)
    with pytest.raises(ValueError, match=r"reward must be a scalar, got shape \(3,\)"):
      policy.update(s, group=0, reward=jnp.ones(3))
    with pytest.raises(ValueError, match="group must be a scalar int source id"):
      policy.update(s, group=0.5, reward=0.1)


CODE = """
import json, numpy as np
from reweight import testing
from reweight.group.flad import exp3, ucb1
rng = np.random.default_rng(0)
steps = [{"group": np.int32(a), "reward": np.float32(r)}
         for a, r in zip(rng.integers(0, 4, 4), rng.uniform(-1, 1, 4))]
res = {}
for name, make in [("exp3", lambda: exp3(4)), ("ucb1", lambda: ucb1(4, reward_smoothing=0.5))]:
  out = testing.policy_layouts(make, steps)
  res[name] = {m: testing.max_difference(out, "single", m) for m in out}
print(json.dumps(res))
"""


@pytest.mark.multidevice
def test_sharding_layouts_agree():
  testing.assert_layouts_agree(testing.run_with_devices(CODE, 8))
