"""fedau against a NumPy re-derivation of the authors' estimator, its limit, fedavg_weights, errors.

`reference_weights` re-states the ``adaptive`` weighting of github IBM/fedau (``main.py``)
in NumPy: per client a list of recorded intervals and a counter of rounds without
participation; on participation the update's weight is the mean of the intervals recorded
so far (unweighted, i.e. 1, before the first), then the interval ``counter + 1`` is
recorded; otherwise the counter grows and, once it reaches K, is recorded and reset.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reweight
from reweight.group import FedAUState, fedau, fedavg_weights


def reference_weights(participation: np.ndarray, cutoff: int | None) -> np.ndarray:
  """``[T, N]``: the weight each client would get in round t (from rounds < t)."""
  k = np.inf if cutoff is None else cutoff
  rounds, n = participation.shape
  intervals = [[] for _ in range(n)]
  counter = [0] * n
  out = np.zeros((rounds, n))
  for t in range(rounds):
    for i in range(n):
      out[t, i] = np.mean(intervals[i]) if intervals[i] else 1.0
      if participation[t, i]:
        intervals[i].append(counter[i] + 1)
        counter[i] = 0
      else:
        counter[i] += 1
        if counter[i] >= k:
          intervals[i].append(counter[i])
          counter[i] = 0
  return out


def _sequence(rounds=300, probs=(0.05, 0.2, 0.5, 0.9, 1.0, 0.0), seed=0):
  rng = np.random.default_rng(seed)
  return rng.random((rounds, len(probs))) < np.asarray(probs)


@pytest.mark.parametrize("cutoff", [None, 1, 4, 25])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_numpy_reference(cutoff, jit):
  q = _sequence()
  au = fedau(q.shape[1], cutoff=cutoff)
  update = jax.jit(au.update) if jit else au.update
  want = reference_weights(q, cutoff)
  state = au.init()
  for t in range(q.shape[0]):
    np.testing.assert_allclose(np.asarray(au.weights(state)), want[t], rtol=1e-5,
                               err_msg=f"round {t}")
    state = update(state, jnp.asarray(q[t]))
  assert int(state.count) == q.shape[0]
  # Intervals are in [1, K] and the counts add up: sum of intervals + open counter = T.
  if cutoff is not None:
    assert float(jnp.max(state.mean_interval)) <= cutoff
  total = np.asarray(state.mean_interval) * np.asarray(state.num_intervals)
  np.testing.assert_allclose(total + np.asarray(state.since), q.shape[0], rtol=1e-5)


def test_state_shapes_and_client_ids():
  au = fedau(5, cutoff=3)
  state = au.init()
  chex.assert_shape([state.weights, state.mean_interval, state.num_intervals, state.since],
                    (5,))
  chex.assert_type([state.weights, state.num_intervals, state.count],
                   [jnp.float32, jnp.int32, jnp.int32])
  np.testing.assert_array_equal(state.weights, np.ones(5))
  assert isinstance(state, FedAUState)
  q = _sequence(50, (0.3, 0.6, 0.1, 0.9, 0.5), seed=3)
  by_mask, by_ids = state, state
  for row in q:
    by_mask = au.update(by_mask, jnp.asarray(row))
    by_ids = au.update(by_ids, client_ids=np.flatnonzero(row))
  chex.assert_trees_all_close(by_mask, by_ids)
  # Traced ids work under jit (range is checked only for concrete ids).
  jitted = jax.jit(lambda s, ids: au.update(s, client_ids=ids))(state, jnp.array([0, 4]))
  np.testing.assert_array_equal(jitted.num_intervals, [1, 0, 0, 0, 1])


@pytest.mark.parametrize("cutoff", [5, 50])
def test_bernoulli_estimates_approach_inverse_probability(cutoff):
  """omega_i -> E[min(G, K)] = (1 - (1 - p)^K) / p, which is 1/p up to the cutoff bias."""
  p = np.array([0.1, 0.25, 0.5, 0.9])
  rounds = 20_000
  au = fedau(p.size, cutoff=cutoff)

  def body(state, key):
    return au.update(state, jax.random.bernoulli(key, jnp.asarray(p, jnp.float32))), None

  state, _ = jax.lax.scan(body, au.init(), jax.random.split(jax.random.key(0), rounds))
  est = np.asarray(state.weights, np.float64)
  limit = (1 - (1 - p) ** cutoff) / p
  # Sampling error of a mean of M i.i.d. intervals min(G, K): std(min(G, K)) / sqrt(M).
  j = np.arange(1, cutoff + 1)
  pmf = np.where(j[None] < cutoff, (1 - p[:, None]) ** (j - 1) * p[:, None],
                 (1 - p[:, None]) ** (cutoff - 1))
  std = np.sqrt((pmf * j**2).sum(1) - (pmf * j).sum(1) ** 2)
  tol = 5 * std / np.sqrt(np.asarray(state.num_intervals)) + 1e-4
  np.testing.assert_array_less(np.abs(est - limit), tol)
  # Against 1/p: the relative bias of the cutoff is (1 - p)^K, plus the sampling error.
  np.testing.assert_array_less(np.abs(est * p - 1), (1 - p) ** cutoff + tol * p)
  if cutoff == 50:  # the bias is negligible: the estimate is 1/p within a few percent
    np.testing.assert_allclose(est, 1 / p, rtol=0.05)
  else:  # K = 5 caps the rare client's weight well below 1/p = 10
    assert est[0] < 5 < 1 / p[0]


def test_fedavg_weights_equal_numpy():
  sizes = np.array([10, 0, 30, 60, 5])
  np.testing.assert_allclose(fedavg_weights(sizes), sizes / sizes.sum(), rtol=1e-6)
  q = np.array([True, True, False, True, False])
  want = sizes * q / (sizes * q).sum()
  np.testing.assert_allclose(fedavg_weights(sizes, q), want, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(fedavg_weights)(jnp.asarray(sizes), jnp.asarray(q)),
                             want, rtol=1e-6)
  np.testing.assert_array_equal(fedavg_weights(sizes, np.zeros(5, bool)), np.zeros(5))
  assert reweight.group.fedavg_weights is fedavg_weights


@pytest.mark.parametrize("cutoff, match", [
    (0, "cutoff=0 must be a positive integer"),
    (-3, "cutoff=-3 must be a positive integer"),
    (2.5, "cutoff=2.5 must be an integer >= 1"),
])
def test_bad_cutoff(cutoff, match):
  with pytest.raises(ValueError, match=match):
    fedau(3, cutoff=cutoff)


def test_bad_inputs():
  with pytest.raises(ValueError, match="num_clients=0 must be an integer >= 1"):
    fedau(0)
  au = fedau(3, cutoff=2)
  state = au.init()
  with pytest.raises(ValueError, match=r"participated has shape \(4,\), expected \(3,\)"):
    au.update(state, jnp.ones(4, bool))
  with pytest.raises(ValueError, match=r"participated has shape \(3, 1\)"):
    au.update(state, np.ones((3, 1), bool))
  with pytest.raises(TypeError, match="must be a bool mask, got dtype int"):
    au.update(state, np.array([0, 1, 1]))
  with pytest.raises(ValueError, match=r"client ids \[3\] out of range \[0, 3\)"):
    au.update(state, client_ids=[0, 3])
  with pytest.raises(ValueError, match=r"client ids \[-1\] out of range"):
    au.update(state, client_ids=[-1])
  with pytest.raises(ValueError, match="1-D array of integer ids"):
    au.update(state, client_ids=[0.5])
  with pytest.raises(ValueError, match="exactly one of participated="):
    au.update(state)
  with pytest.raises(ValueError, match="exactly one of participated="):
    au.update(state, np.ones(3, bool), client_ids=[0])
  with pytest.raises(ValueError, match="must be finite, >= 0 and not all zero"):
    fedavg_weights([1, -1])
  with pytest.raises(ValueError, match="must be finite, >= 0 and not all zero"):
    fedavg_weights([0, 0])
  with pytest.raises(ValueError, match="must be a 1-D array of client sizes"):
    fedavg_weights([[1, 2]])
  with pytest.raises(ValueError, match=r"participated has shape \(3,\), expected \(2,\)"):
    fedavg_weights([1, 2], [True, False, True])


def test_exports_are_not_loss_weightings():
  assert {"fedau", "fedavg_weights", "FedAUState", "FedAU"} <= set(reweight.group.__all__)
  assert "fedau" not in reweight.group.WEIGHTINGS
