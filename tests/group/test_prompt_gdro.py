"""Prompt-GDRO, Rollout-GDRO's allocation and the difficulty classifier against NumPy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reweight
from reweight.data.online_mixture import online_mixture_sampler
from reweight.group import difficulty_groups, prompt_gdro, rollout_allocation

# ----------------------------------------------------------------------------- prompt-GDRO


def np_prompt_gdro(steps, g, eta, beta, gamma):
  """Re-derivation: per-group Adam-style debiased EMA, neutral mean for unseen groups,
  every group's log-weight moved by eta * m_hat each step."""
  m = np.zeros(g)
  n = np.zeros(g)
  logw = np.full(g, -np.log(g))
  out = []
  for losses, counts in steps:
    obs = (np.ones(g, bool) if counts is None else np.asarray(counts) > 0) & np.isfinite(losses)
    x = np.where(obs, losses, 0.0)
    m = np.where(obs, beta * m + (1 - beta) * x, m)
    n = n + obs
    m_hat = np.where(n > 0, m / np.where(n > 0, 1 - beta ** n, 1), 0.0)
    if (n > 0).any():
      m_hat = np.where(n > 0, m_hat, m_hat[n > 0].mean())
    z = logw + eta * m_hat
    logw = z - np.log(np.exp(z - z.max()).sum()) - z.max()
    out.append((1 - gamma) * np.exp(logw) + gamma / g)
  return out


def test_prompt_gdro_matches_numpy():
  rng = np.random.default_rng(0)
  g, eta, beta, gamma = 4, 0.7, 0.8, 0.1
  steps = []
  for t in range(12):
    losses = rng.random(g)
    counts = rng.integers(0, 3, size=g)
    if t == 0:
      counts[2] = 0  # group 2 unseen at first: neutral estimate
    if t == 5:
      losses[1] = np.nan  # non-finite: unobserved
    steps.append((losses, counts))
  policy = prompt_gdro(g, eta, ema=beta, exploration=gamma)
  update = jax.jit(policy.update)
  state = policy.init()
  for (losses, counts), want in zip(steps, np_prompt_gdro(steps, g, eta, beta, gamma)):
    state = update(state, group_losses=jnp.asarray(losses, jnp.float32),
                   group_counts=jnp.asarray(counts))
    np.testing.assert_allclose(np.asarray(state.probs), want, rtol=1e-5, atol=1e-7)
  assert float(jnp.sum(state.probs)) == pytest.approx(1.0, abs=1e-6)
  assert int(state.count) == 12
  assert reweight.group.probs_of(state) is state.probs


def test_prompt_gdro_per_sample_inputs_and_schedule():
  rng = np.random.default_rng(1)
  g = 3
  losses = rng.random(20).astype(np.float32)
  groups = rng.integers(0, g, size=20)
  mask = rng.random(20) > 0.2
  policy = prompt_gdro(g, lambda t: 0.5 / (1.0 + t), ema=0.5)
  s1 = policy.update(policy.init(), losses=jnp.asarray(losses), groups=jnp.asarray(groups),
                     mask=jnp.asarray(mask))
  sums = np.bincount(groups[mask], losses[mask], minlength=g)
  counts = np.bincount(groups[mask], minlength=g)
  want = np_prompt_gdro([(sums / np.maximum(counts, 1), counts)], g, 0.5, 0.5, 0.0)[0]
  np.testing.assert_allclose(np.asarray(s1.probs), want, rtol=1e-5)
  s2 = policy.update(policy.init(), group_losses=jnp.asarray(sums / np.maximum(counts, 1)),
                     group_counts=jnp.asarray(counts), step=0)
  np.testing.assert_allclose(np.asarray(s2.probs), np.asarray(s1.probs), rtol=1e-6)


def test_prompt_gdro_no_frequency_bias_and_drives_sampler():
  # Two equally hard groups, one observed 10x more often: equal weights (the debiased
  # estimates agree), while a persistently harder group gains weight.
  policy = prompt_gdro(3, 1.0, ema=0.9)
  state = policy.init()
  for _ in range(30):
    state = policy.update(state, group_losses=jnp.array([0.5, 0.5, 0.9]),
                          group_counts=jnp.array([10, 1, 3]))
  p = np.asarray(state.probs)
  assert p[0] == pytest.approx(p[1], rel=1e-5)
  assert p[2] > 0.99
  sampler = online_mixture_sampler(
      16, seed=0, num_groups=3, process_index=0, process_count=1)
  plan = sampler.plan(0, sampler.init(np.asarray(state.probs, np.float64)
                                      / np.asarray(state.probs, np.float64).sum()))
  assert np.bincount(plan, minlength=3)[2] >= 15


def test_prompt_gdro_bad_inputs():
  with pytest.raises(ValueError, match="step_size=-0.1"):
    prompt_gdro(3, -0.1)
  with pytest.raises(ValueError, match="ema=1.0"):
    prompt_gdro(3, 0.1, ema=1.0)
  with pytest.raises(ValueError, match="exploration=1.5"):
    prompt_gdro(3, 0.1, exploration=1.5)
  with pytest.raises(ValueError, match="num_groups=0"):
    prompt_gdro(0, 0.1)
  policy = prompt_gdro(3, 0.1)
  with pytest.raises(ValueError, match=r"groups span \[0, 3\], outside \[0, 3\)"):
    policy.update(policy.init(), losses=jnp.ones(2), groups=jnp.array([0, 3]))
  with pytest.raises(ValueError, match=r"group_losses has shape \(2,\)"):
    policy.update(policy.init(), group_losses=jnp.ones(2))
  with pytest.raises(ValueError, match="needs group_losses="):
    policy.update(policy.init())


# ------------------------------------------------------------------------------ allocation


def np_value(p, n, objective):
  p = np.asarray(p, np.float64)
  if objective == "variance":
    return -p * (1 - p) / n
  return 1 - p ** n - (1 - p) ** n


def brute_force(p, w, budget, n_min, n_max, objective):
  g = len(p)
  best, arg = -np.inf, None
  for n in itertools.product(range(n_min, n_max + 1), repeat=g):
    if sum(n) != g * budget:
      continue
    v = float(np.sum(w * np_value(p, np.array(n, np.float64), objective)))
    if v > best + 1e-12:
      best, arg = v, np.array(n)
  return best, arg


@pytest.mark.parametrize("objective", ["variance", "informative"])
def test_allocation_is_optimal_integer_and_budget_exact(objective):
  rng = np.random.default_rng(2)
  for _ in range(6):
    g = int(rng.integers(2, 5))
    p = rng.uniform(0.02, 0.98, size=g)
    w = rng.uniform(0.2, 3.0, size=g)
    budget = int(rng.integers(1, 5))
    n_min = int(rng.integers(0 if objective == "informative" else 1, budget + 1))
    n_max = budget + 3
    a = rollout_allocation(jnp.asarray(p), budget, weights=jnp.asarray(w),
                           min_rollouts=n_min, max_rollouts=n_max, objective=objective)
    n = np.asarray(a.rollouts)
    assert n.dtype == np.int32 and n.sum() == g * budget
    assert n.min() >= n_min and n.max() <= n_max
    best, _ = brute_force(p, w, budget, n_min, n_max, objective)
    np.testing.assert_allclose(np.sum(w * np_value(p, n.astype(float), objective)), best,
                               rtol=1e-5, atol=1e-7)
    # shadow price: every next rollout is worth <= the price
    if g * (budget - n_min):
      assert np.all(np.asarray(a.marginal_value) <= float(a.shadow_price) + 1e-7)


def test_allocation_moves_rollouts_toward_signal_and_square_root_rule():
  p = jnp.array([0.05, 0.5, 0.95, 1.0])
  a = rollout_allocation(p, 4, min_rollouts=2)
  n = np.asarray(a.rollouts)
  assert n.sum() == 16 and n[1] == n.max() and n[3] == 2  # uncertain up, solved at n_min
  # raising a group's weight (its shadow value) moves rollouts to it, at the same total
  b = rollout_allocation(p, 4, min_rollouts=2, weights=jnp.array([20.0, 1.0, 1.0, 1.0]))
  nb = np.asarray(b.rollouts)
  assert nb.sum() == 16 and nb[0] > n[0]
  # large budget: close to the square-root rule n ∝ sqrt(p (1 - p))
  q = np.array([0.1, 0.3, 0.5])
  c = np.asarray(rollout_allocation(jnp.asarray(q), 100, min_rollouts=1).rollouts)
  ideal = 300 * np.sqrt(q * (1 - q)) / np.sqrt(q * (1 - q)).sum()
  assert np.all(np.abs(c - ideal) <= 1.5)
  # a greedy-in-numpy re-derivation (ties to the lowest id) gives the same integers
  w = np.ones(3)
  nn = np.ones(3, int)
  for _ in range(300 - 3):
    gain = w * q * (1 - q) / (nn * (nn + 1.0))
    nn[np.argmax(gain)] += 1
  np.testing.assert_array_equal(c, nn)
  # nothing to learn anywhere (solved or hopeless groups): the budget is spread evenly
  flat = rollout_allocation(jnp.array([0.0, 1.0, 1.0]), 5, min_rollouts=1)
  np.testing.assert_array_equal(np.asarray(flat.rollouts), [5, 5, 5])
  # jit: same answer
  jit = jax.jit(lambda x: rollout_allocation(x, 100).rollouts)(jnp.asarray(q))
  np.testing.assert_array_equal(np.asarray(jit), c)


def test_allocation_bad_inputs():
  p = jnp.array([0.2, 0.5])
  with pytest.raises(ValueError, match="mean_budget=0 must be an integer >= 1"):
    rollout_allocation(p, 0)
  with pytest.raises(ValueError, match="mean_budget=2.5"):
    rollout_allocation(p, 2.5)
  with pytest.raises(ValueError, match="min_rollouts=5 exceeds mean_budget=4"):
    rollout_allocation(p, 4, min_rollouts=5)
  with pytest.raises(ValueError, match="max_rollouts=3 is below mean_budget=4"):
    rollout_allocation(p, 4, max_rollouts=3)
  with pytest.raises(ValueError, match=r"group_stats=\[0.2, 1.5\]"):
    rollout_allocation(jnp.array([0.2, 1.5]), 4)
  with pytest.raises(ValueError, match="weights="):
    rollout_allocation(p, 4, weights=jnp.array([1.0, -1.0]))
  with pytest.raises(ValueError, match="objective='x'"):
    rollout_allocation(p, 4, objective="x")


# ------------------------------------------------------------------------------ classifier


def test_difficulty_groups_matches_numpy():
  rng = np.random.default_rng(3)
  num_p, k, beta, prior = 10, 4, 0.6, 0.3
  clf = difficulty_groups(num_p, k, ema=beta, prior=prior)
  assert clf.num_groups == k + 1
  state = clf.init()
  rate = np.full(num_p, prior)
  seen = np.zeros(num_p, int)
  update = jax.jit(clf.update)
  for _ in range(5):
    ids = rng.integers(0, num_p, size=6)  # repeats allowed
    r = (rng.random((6, 3)) < 0.4).astype(np.float32)
    mask = rng.random((6, 3)) > 0.2
    state = update(state, prompt_ids=jnp.asarray(ids), rewards=jnp.asarray(r),
                   mask=jnp.asarray(mask))
    hits = np.zeros(num_p)
    tries = np.zeros(num_p)
    np.add.at(hits, ids, (r * mask).sum(1))
    np.add.at(tries, ids, mask.sum(1))
    obs = tries > 0
    x = hits / np.maximum(tries, 1)
    new = np.where(seen > 0, beta * rate + (1 - beta) * x, x)
    rate = np.where(obs, new, rate)
    seen = seen + obs
    np.testing.assert_allclose(np.asarray(state.pass_rate), rate, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(state.seen), seen)
  groups = np.asarray(clf.assign(state, jnp.arange(num_p)))
  np.testing.assert_array_equal(groups, np.minimum(np.floor(k * rate + 0.5), k))
  # [B] rewards (one per rollout, prompts repeated) equal the [B, n] layout
  s1 = clf.update(clf.init(), prompt_ids=jnp.array([1, 1, 1, 2]),
                  rewards=jnp.array([1.0, 0.0, 1.0, 0.0]))
  s2 = clf.update(clf.init(), prompt_ids=jnp.array([1, 2]),
                  rewards=jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
                  mask=jnp.array([[True] * 3, [True, False, False]]))
  np.testing.assert_allclose(np.asarray(s1.pass_rate), np.asarray(s2.pass_rate))


def test_difficulty_groups_bad_inputs():
  with pytest.raises(ValueError, match="num_prompts=0"):
    difficulty_groups(0)
  with pytest.raises(ValueError, match="ema=-0.5"):
    difficulty_groups(5, ema=-0.5)
  with pytest.raises(ValueError, match="prior=2"):
    difficulty_groups(5, prior=2.0)
  clf = difficulty_groups(5)
  with pytest.raises(ValueError, match=r"prompt_ids span \[0, 5\], outside \[0, 5\)"):
    clf.update(clf.init(), prompt_ids=jnp.array([0, 5]), rewards=jnp.ones(2))
  with pytest.raises(ValueError, match=r"prompt_ids span \[-1, 0\]"):
    clf.assign(clf.init(), jnp.array([-1, 0]))


def test_end_to_end_pieces_compose():
  """Classifier -> per-group failure rates -> prompt-GDRO probs and rollout budgets."""
  clf = difficulty_groups(6, k=2, ema=0.0)
  state = clf.update(clf.init(), prompt_ids=jnp.arange(6),
                     rewards=jnp.array([[0, 0], [0, 0], [0, 1], [1, 0], [1, 1], [1, 1.0]]))
  groups = clf.assign(state, jnp.arange(6))
  np.testing.assert_array_equal(np.asarray(groups), [0, 0, 1, 1, 2, 2])
  policy = prompt_gdro(clf.num_groups, 1.0)
  gs = policy.update(policy.init(), losses=1.0 - state.pass_rate, groups=groups)
  p = np.asarray(gs.probs)
  assert p[0] > p[1] > p[2]
  rates = jnp.array([0.05, 0.5, 0.95])
  alloc = rollout_allocation(rates, 4, weights=gs.probs * 3, min_rollouts=2)
  assert int(alloc.rollouts.sum()) == 12
