"""skill_it against a NumPy re-derivation of Skill-it's online rule, and under sharding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight import testing
from reweight.group.skill_it import skill_it


def reference(graph, eta, window, rounds):
  """p_t = softmax(eta * A @ sum of the last `window` rounds' losses), float64."""
  a = np.asarray(graph, np.float64)
  out = []
  for t in range(len(rounds)):
    summed = np.sum(np.asarray(rounds[max(0, t - window + 1): t + 1], np.float64), axis=0)
    z = eta(t) * (a @ summed) if callable(eta) else eta * (a @ summed)
    e = np.exp(z - z.max())
    out.append(e / e.sum())
  return np.array(out)


def paper_graph(k, seed):
  """Diagonal 1, random edges 0.5 (as the paper builds its graphs)."""
  rng = np.random.default_rng(seed)
  return np.eye(k) + 0.5 * ((rng.random((k, k)) < 0.4) & ~np.eye(k, dtype=bool))


@pytest.mark.parametrize("k,window,eta", [(4, 3, 0.5), (3, 1, 2.0), (5, 7, 0.3)])
def test_matches_numpy_over_rounds(k, window, eta):
  graph = paper_graph(k, k)
  rounds = np.random.default_rng(1).uniform(0.5, 4.0, (8, k))
  policy = skill_it(graph, eta, window)
  update = jax.jit(policy.update)
  state = policy.init()
  np.testing.assert_allclose(state.probs, np.full(k, 1 / k), rtol=1e-6)
  got = []
  for losses in rounds:
    state = update(state, eval_losses=jnp.asarray(losses, jnp.float32))
    got.append(np.asarray(state.probs))
  np.testing.assert_allclose(np.array(got), reference(graph, eta, window, rounds),
                             rtol=1e-5, atol=1e-7)
  assert int(state.count) == len(rounds)
  # the ring buffer holds exactly the last `window` rounds
  kept = min(window, len(rounds))
  np.testing.assert_allclose(np.sort(np.asarray(state.losses)[:kept].sum(0)),
                             np.sort(rounds[-kept:].sum(0)), rtol=1e-5)


def test_schedule_step_size_and_explicit_step():
  graph = paper_graph(3, 0)
  rounds = np.random.default_rng(2).uniform(0, 2, (5, 3))
  eta = lambda t: 0.2 * (t + 1)
  policy = skill_it(graph, eta, 2)
  state = policy.init()
  got = []
  for losses in rounds:
    state = policy.update(state, eval_losses=losses)
    got.append(np.asarray(state.probs))
  np.testing.assert_allclose(np.array(got), reference(graph, eta, 2, rounds), rtol=1e-5)
  # an explicit step overrides the round count for the schedule
  s = policy.update(policy.init(), eval_losses=rounds[0], step=4)
  np.testing.assert_allclose(s.probs, reference(graph, lambda t: 1.0, 2, rounds[:1])[0],
                             rtol=1e-5)


def test_properties():
  policy = skill_it(np.eye(3), 1.0, 3)
  state = policy.update(policy.init(), eval_losses=jnp.array([1.0, 2.0, 3.0]))
  p = np.asarray(state.probs)
  assert abs(p.sum() - 1) < 1e-6 and p[0] < p[1] < p[2]  # higher loss, more data
  # equal losses give uniform; extra inputs are ignored
  s = policy.update(policy.init(), eval_losses=jnp.ones(3), reward=3.0, group=1)
  np.testing.assert_allclose(s.probs, np.full(3, 1 / 3), rtol=1e-6)
  # an edge 0 -> 1 (skill 0 helps skill 1): a high loss on skill 1 also draws skill 0
  graph = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  s = skill_it(graph, 1.0).update(skill_it(graph).init(), eval_losses=jnp.array([1.0, 3, 1]))
  q = np.asarray(s.probs)
  assert q[1] > q[0] > q[2]


def test_nonfinite_round_is_skipped():
  policy = skill_it(np.eye(2), 1.0, 2)
  state = policy.update(policy.init(), eval_losses=jnp.array([1.0, 0.0]))
  skipped = jax.jit(policy.update)(state, eval_losses=jnp.array([jnp.nan, 1.0]))
  chex.assert_trees_all_equal(state, skipped)


def test_bad_input():
  with pytest.raises(ValueError, match=r"square 2-D \[k, k\] skills graph, got shape \(2, 3\)"):
    skill_it(np.ones((2, 3)))
  with pytest.raises(ValueError, match=r"got shape \(3,\)"):
    skill_it(np.ones(3))
  with pytest.raises(ValueError, match="must hold finite entries"):
    skill_it(np.array([[1.0, np.nan], [0.0, 1.0]]))
  with pytest.raises(ValueError, match=r"has a negative entry \(-0.5\)"):
    skill_it(np.array([[1.0, -0.5], [0.0, 1.0]]))
  with pytest.raises(ValueError, match="step_size=0.0 must be a positive"):
    skill_it(np.eye(2), 0.0)
  with pytest.raises(ValueError, match="window=0 must be an integer >= 1"):
    skill_it(np.eye(2), window=0)
  policy = skill_it(np.eye(2))
  with pytest.raises(ValueError, match=r"eval_losses has shape \(3,\), expected \(2,\)"):
    policy.update(policy.init(), eval_losses=jnp.ones(3))
  with pytest.raises(ValueError, match="needs eval_losses="):
    policy.update(policy.init(), losses=jnp.ones(2))


CODE = """
import json, numpy as np
from reweight import testing
from reweight.group.skill_it import skill_it
graph = np.eye(4) + 0.5 * np.eye(4, k=1)
rounds = np.random.default_rng(0).uniform(0, 3, (5, 4)).astype(np.float32)
out = testing.policy_layouts(lambda: skill_it(graph, 0.5, 3),
                             [{"eval_losses": r} for r in rounds])
print(json.dumps({m: testing.max_difference(out, "single", m) for m in out}))
"""


@pytest.mark.multidevice
def test_sharding_layouts_agree():
  testing.assert_layouts_agree({"skill_it": testing.run_with_devices(CODE, 8)})
