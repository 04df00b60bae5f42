"""The federated simulation: splits, padding, vmapped rounds against a NumPy loop, digits."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import reweight
import reweight.data
from reweight.group import fedau
from reweight.train import federated
from reweight.train.federated import (
    ClientData,
    coefficients,
    dirichlet_split,
    federated_round,
    local_sgd,
    simulate,
    stack_clients,
)

NUM_CLIENTS = 8


@pytest.fixture(scope="module")
def digits():
  train = reweight.data.load("digits", "train")
  test = reweight.data.load("digits", "test")
  splits = dirichlet_split(train["label"], NUM_CLIENTS, alpha=0.5, seed=0, min_size=8)
  return stack_clients(train["x"], train["label"], splits), test, splits


@pytest.fixture(scope="module")
def linear():
  return reweight.train.split_model(
      reweight.train.make_model("mlp", in_features=64, hidden=(), num_classes=10, seed=0))


def test_dirichlet_split_partitions_and_is_non_iid():
  labels = np.repeat(np.arange(10), 50)
  parts = dirichlet_split(labels, 8, alpha=0.1, seed=1)
  assert len(parts) == 8 and min(p.size for p in parts) >= 1
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))
  # Small alpha: most clients are dominated by one class; large alpha: close to uniform.
  top = [np.bincount(labels[p], minlength=10).max() / p.size for p in parts]
  wide = dirichlet_split(labels, 8, alpha=1000.0, seed=1)
  top_wide = [np.bincount(labels[p], minlength=10).max() / p.size for p in wide]
  assert np.median(top) > 0.5 > 0.2 > np.max(top_wide)
  with pytest.raises(ValueError, match="alpha=0 must be > 0"):
    dirichlet_split(labels, 8, alpha=0)
  with pytest.raises(ValueError, match="cannot give 8 clients 100 each"):
    dirichlet_split(labels, 8, min_size=100)
  with pytest.raises(ValueError, match="labels must be 1-D integers"):
    dirichlet_split(labels.astype(float), 8)


def test_stack_clients_pads_with_mask():
  x = np.arange(12, dtype=np.float32).reshape(6, 2)
  d = stack_clients(x, np.arange(6), [np.array([5, 0]), np.array([1, 2, 3])])
  assert d.x.shape == (2, 3, 2)
  np.testing.assert_array_equal(d.mask, [[True, True, False], [True, True, True]])
  np.testing.assert_array_equal(d.sizes, [2, 3])
  np.testing.assert_array_equal(d.x[0, :2], x[[5, 0]])
  np.testing.assert_array_equal(d.label[1], [1, 2, 3])
  with pytest.raises(ValueError, match="client 1 has no examples"):
    stack_clients(x, np.arange(6), [np.array([0]), np.array([], int)])
  with pytest.raises(ValueError, match=r"client 0 has indices out of range \[0, 6\)"):
    stack_clients(x, np.arange(6), [np.array([6])])


def test_local_sgd_never_reads_padding(linear):
  apply_fn, params = linear
  x = jnp.concatenate([jnp.ones((3, 64)), jnp.full((5, 64), jnp.nan)])
  y = jnp.zeros(8, jnp.int32)
  mask = jnp.arange(8) < 3
  out = local_sgd(apply_fn, params, x, y, mask, jax.random.key(0), steps=4, batch_size=16,
                  lr=0.1)
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(out))


def test_round_equals_numpy_loop(digits, linear):
  """One round, fixed participation: vmapped round == per-client training + NumPy sum."""
  data, _, _ = digits
  apply_fn, params = linear
  q = np.array([True, False, True, True, False, False, True, False])
  omega = np.array([1.0, 3.0, 2.5, 1.0, 7.0, 4.0, 1.5, 2.0], np.float32)
  sizes = np.asarray(data.sizes, np.float64)
  kw = dict(batch_size=16, lr=0.1)
  key = jax.random.key(7)
  round_fn = jax.jit(functools.partial(federated_round, apply_fn, local_steps=3,
                                       global_lr=0.5, **kw))
  client_fn = jax.jit(functools.partial(local_sgd, apply_fn, steps=3, **kw))

  keys = jax.random.split(key, NUM_CLIENTS)
  flat0 = np.asarray(jax.flatten_util.ravel_pytree(params)[0], np.float64)
  deltas = {}
  for i in np.flatnonzero(q):  # the participants' updates, one client at a time
    local = client_fn(params, data.x[i], data.label[i], data.mask[i], keys[i])
    deltas[i] = np.asarray(jax.flatten_util.ravel_pytree(local)[0], np.float64) - flat0

  for method in ("fedau", "fedavg"):
    c = coefficients(method, jnp.asarray(q), sizes=data.sizes,
                     fedau_weights=jnp.asarray(omega))
    got = round_fn(params, data, c, key)
    total = np.zeros_like(flat0)
    for i, delta in deltas.items():
      if method == "fedau":  # sum_{i in S} omega_i Delta_i / N
        total += omega[i] * delta / NUM_CLIENTS
      else:  # sum_{i in S} n_i Delta_i / sum_{j in S} n_j
        total += sizes[i] * delta / sizes[q].sum()
    want = flat0 + 0.5 * total
    np.testing.assert_allclose(np.asarray(jax.flatten_util.ravel_pytree(got)[0]), want,
                               rtol=1e-4, atol=1e-5, err_msg=method)


def test_coefficients():
  q = jnp.array([True, False, True])
  np.testing.assert_allclose(coefficients("uniform", q), [0.5, 0, 0.5])
  np.testing.assert_allclose(coefficients("known", q, probs=jnp.array([0.5, 0.2, 0.25])),
                             [2 / 3, 0, 4 / 3], rtol=1e-6)
  np.testing.assert_allclose(coefficients("fedavg", q, sizes=jnp.array([1, 5, 3])),
                             [0.25, 0, 0.75])
  np.testing.assert_array_equal(coefficients("uniform", jnp.zeros(3, bool)), np.zeros(3))
  with pytest.raises(ValueError, match="method='avg' is not one of"):
    coefficients("avg", q)
  with pytest.raises(ValueError, match="needs fedau_weights="):
    coefficients("fedau", q)


def test_simulate_digits_eight_clients(digits, linear):
  data, test, _ = digits
  apply_fn, params = linear
  probs = np.linspace(0.2, 0.9, NUM_CLIENTS)
  h = simulate(apply_fn, params, data, test["x"], test["label"], probs, rounds=6,
               method="fedau", cutoff=10, local_steps=5, lr=1.0, seed=1)
  np.testing.assert_array_equal(h.rounds, np.arange(7))
  assert np.all(np.isfinite(h.accuracy)) and np.all((h.accuracy >= 0) & (h.accuracy <= 1))
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(h.params))
  assert h.accuracy[1:].max() > h.accuracy[0] + 0.3  # it learns
  assert h.participation.shape == (6, NUM_CLIENTS) and h.participation.any()
  # The returned FedAU state is the one the recorded participation gives.
  au = fedau(NUM_CLIENTS, cutoff=10)
  state = au.init()
  for row in h.participation:
    state = au.update(state, jnp.asarray(row))
  np.testing.assert_allclose(state.weights, h.fedau_state.weights)


def test_simulate_bad_inputs(linear):
  apply_fn, params = linear
  data = ClientData(jnp.zeros((2, 3, 64)), jnp.zeros((2, 3), jnp.int32),
                    jnp.ones((2, 3), bool), jnp.array([3, 3]))
  x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int32)
  with pytest.raises(ValueError, match="probs must be 2 participation probabilities"):
    simulate(apply_fn, params, data, x, y, [0.5], rounds=1)
  with pytest.raises(ValueError, match="probs must be 2 participation probabilities"):
    simulate(apply_fn, params, data, x, y, [0.0, 1.0], rounds=1)
  with pytest.raises(ValueError, match="rounds=0 must be an integer >= 1"):
    simulate(apply_fn, params, data, x, y, [0.5, 0.5], rounds=0)
  with pytest.raises(ValueError, match="cutoff=0 must be a positive integer"):
    simulate(apply_fn, params, data, x, y, [0.5, 0.5], rounds=1, cutoff=0)
  assert set(federated.METHODS) == {"fedau", "fedavg", "uniform", "known"}
