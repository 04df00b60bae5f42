"""Tests for reweight.reparam.eva against NumPy SVD and scikit-learn's IncrementalPCA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import IncrementalPCA

from reweight.reparam.eva import (
    capture_inputs,
    collect_inputs,
    eva,
    eva_fit,
    ipca_init,
    ipca_update,
    redistribute_ranks,
)


def _spectrum_data(rng, n, d, scales, mean_scale=1.0):
  """Rows with independent directions of variances ``scales**2`` plus a mean offset."""
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  z = rng.normal(size=(n, len(scales))) * np.asarray(scales)
  return (z @ q[:, :len(scales)].T + mean_scale * rng.normal(size=d)).astype(np.float32)


def _projector(rows):
  rows = np.asarray(rows, np.float64)
  return rows.T @ np.linalg.solve(rows @ rows.T, rows)


def test_ipca_matches_sklearn_incremental_pca():
  rng = np.random.default_rng(0)
  x = _spectrum_data(rng, 100, 10, [6.0, 4.0, 2.5, 1.5, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1])
  ref = IncrementalPCA(n_components=4)
  state = ipca_init(4, 10)
  for i in range(5):
    batch = x[20 * i:20 * (i + 1)]
    ref.partial_fit(batch.astype(np.float64))
    state, evr, sim = ipca_update(state, jnp.asarray(batch))
    np.testing.assert_allclose(state.singular_values, ref.singular_values_, rtol=1e-4)
    np.testing.assert_allclose(evr, ref.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(state.components, ref.components_, atol=1e-4)
    np.testing.assert_allclose(state.mean, ref.mean_, atol=1e-5)
    if i == 0:
      np.testing.assert_array_equal(sim, 0.0)


@pytest.mark.parametrize("center", [True, False])
def test_low_rank_inputs_give_the_full_svd_subspace(center):
  # Centered data of rank 3 (rank 4 uncentered, with the mean): the truncated incremental
  # update with 4 components is then exact, so the top-3 subspace must equal the one of
  # numpy's SVD of all batches concatenated.
  rng = np.random.default_rng(1)
  x = _spectrum_data(rng, 120, 8, [5.0, 3.0, 1.5], mean_scale=2.0)
  state = ipca_init(4, 8)
  for i in range(6):
    state, _, _ = ipca_update(state, jnp.asarray(x[20 * i:20 * (i + 1)]), center=center)
  full = x.astype(np.float64) - (x.mean(0) if center else 0.0)
  _, s, vt = np.linalg.svd(full, full_matrices=False)
  np.testing.assert_allclose(state.singular_values[:3], s[:3], rtol=1e-5)
  np.testing.assert_allclose(_projector(state.components[:3]), _projector(vt[:3]), atol=1e-5)
  cos = np.abs(np.sum(np.asarray(state.components[:3], np.float64) * vt[:3], axis=1))
  np.testing.assert_allclose(cos, 1.0, atol=1e-5)


def test_redistribute_ranks_matches_numpy():
  rng = np.random.default_rng(2)
  evr = {"a": rng.uniform(size=4), "b": rng.uniform(size=4) * 0.5, "c": rng.uniform(size=3)}
  # Independent derivation: sort (value, layer) pairs with Python and count the best 6.
  pairs = sorted(((v, k) for k, vals in evr.items() for v in vals), key=lambda t: -t[0])[:6]
  expected = {k: sum(1 for _, kk in pairs if kk == k) for k in evr}
  assert redistribute_ranks(evr, 6) == expected
  assert sum(redistribute_ranks(evr, 6).values()) == 6


def _np_eva(batches, in_features, rank, rho, tau):
  """PEFT's EVA loop re-derived with scikit-learn's IncrementalPCA (float64)."""
  n_max = {p: min(round(rank * rho), d) for p, d in in_features.items()}
  budget = rank * len(in_features)
  pcas = {p: IncrementalPCA(n_components=n) for p, n in n_max.items()}
  conv = {p: np.zeros(n, bool) for p, n in n_max.items()}
  ranks, stopped = dict(n_max), {p: False for p in n_max}
  used = {p: 0 for p in n_max}
  margins = []
  for batch in batches:
    for p in n_max:
      done = bool(np.all(conv[p][:ranks[p]]))
      if not stopped[p] and done:
        stopped[p] = True
      elif stopped[p] and not done:
        stopped[p] = False
    if all(stopped.values()):
      break
    for p in n_max:
      if stopped[p]:
        continue
      prev = getattr(pcas[p], "components_", None)
      prev = None if prev is None else prev.copy()
      pcas[p].partial_fit(np.asarray(batch[p], np.float64))
      used[p] += 1
      if prev is not None:
        sim = np.sum(pcas[p].components_ * prev, axis=1) / (
            np.linalg.norm(pcas[p].components_, axis=1) * np.linalg.norm(prev, axis=1))
        margins.extend(np.abs(sim - tau))
        conv[p] = sim >= tau
    vals = [(v, p) for p in n_max for v in pcas[p].explained_variance_ratio_]
    order = sorted(range(len(vals)), key=lambda i: -vals[i][0])[:budget]
    ranks = {p: sum(1 for i in order if vals[i][1] == p) for p in n_max}
  return pcas, ranks, used, min(margins)


def test_eva_fit_matches_numpy_rederivation_with_early_stopping():
  rng = np.random.default_rng(3)
  in_features = {"a/kernel": 8, "b/kernel": 6, "c/kernel": 5}
  # a: a strong 2-D signal (converges quickly); b: isotropic noise (does not converge);
  # c: a decaying spectrum.
  xa = _spectrum_data(rng, 400, 8, [8.0, 4.0, 0.05, 0.05, 0.05])
  xb = rng.normal(size=(400, 6)).astype(np.float32)
  xc = _spectrum_data(rng, 400, 5, [3.0, 2.0, 1.0, 0.5, 0.2])
  batches = [{"a/kernel": xa[40 * i:40 * (i + 1)], "b/kernel": xb[40 * i:40 * (i + 1)],
              "c/kernel": xc[40 * i:40 * (i + 1)]} for i in range(10)]
  pcas, ranks, used, margin = _np_eva(batches, in_features, rank=2, rho=2.0, tau=0.99)
  assert margin > 1e-3  # no similarity is close enough to tau for float32 to flip it
  assert used["a/kernel"] < 10 and used["b/kernel"] == 10  # early stopping happened

  res = eva_fit(batches, in_features, 2, rho=2.0, tau=0.99)
  assert res.ranks == ranks and sum(ranks.values()) == 6
  assert res.num_batches == used
  assert not res.converged["b/kernel"] and res.converged["a/kernel"]
  for p in in_features:
    np.testing.assert_allclose(res.explained_variance_ratio[p],
                               pcas[p].explained_variance_ratio_, rtol=1e-4, atol=1e-6)
    r = ranks[p]
    if r:
      np.testing.assert_allclose(_projector(res.components[p][:r]),
                                 _projector(pcas[p].components_[:r]), atol=1e-4)


def _model_params(rng):
  return {
      "l1": {"kernel": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
             "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)},
      "l2": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)},
  }


@pytest.mark.parametrize("adjust_scaling", [True, False])
def test_eva_reparam_init_apply_unapply(adjust_scaling):
  rng = np.random.default_rng(4)
  params = _model_params(rng)
  # rank 1, rho 2: two candidates per layer and a budget of 2. l1 inputs have two strong
  # directions (ratios ~0.5 each): they take the whole budget; l2 inputs are isotropic
  # (ratios ~0.2): rank 0, no adapter.
  x1 = _spectrum_data(rng, 200, 8, [10.0, 9.0, 0.1])
  x2 = rng.normal(size=(200, 5)).astype(np.float32)
  data = [{"l1/kernel": x1[50 * i:50 * (i + 1)], "l2/kernel": x2[50 * i:50 * (i + 1)]}
          for i in range(4)]
  rp = eva(1, 6.0, r".*kernel", adjust_scaling=adjust_scaling, tau=0.0)
  trainable, frozen = rp.init(params, jax.random.key(0), data=data)
  res = eva_fit(data, {"l1/kernel": 8, "l2/kernel": 5}, 1, tau=0.0)
  assert res.ranks == {"l1/kernel": 2, "l2/kernel": 0}
  assert set(trainable) == {"l1/kernel"}
  a, b = trainable["l1/kernel"]["lora_a"], trainable["l1/kernel"]["lora_b"]
  assert a.shape == (8, 2) and b.shape == (2, 5) and not np.any(np.asarray(b))
  np.testing.assert_allclose(a, np.asarray(res.components["l1/kernel"][:2]).T, atol=1e-6)
  out = rp.apply(trainable, frozen)
  for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(x, y)
  b = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
  t2 = {"l1/kernel": {"lora_a": a, "lora_b": b}}
  s = 6.0 / 1 if adjust_scaling else 6.0 / 2
  merged = jax.jit(rp.apply)(t2, frozen)
  expected = np.asarray(params["l1"]["kernel"]) + s * np.asarray(a) @ np.asarray(b)
  np.testing.assert_allclose(merged["l1"]["kernel"], expected, atol=1e-5)
  back = rp.unapply(t2, merged)
  np.testing.assert_allclose(back["l1"]["kernel"], params["l1"]["kernel"], atol=1e-5)


def test_eva_whiten():
  rng = np.random.default_rng(5)
  params = _model_params(rng)
  x1 = _spectrum_data(rng, 100, 8, [5.0, 3.0, 2.0, 1.0, 0.5])
  x2 = _spectrum_data(rng, 100, 5, [4.0, 2.0, 1.0])
  data = [{"l1/kernel": x1[:50], "l2/kernel": x2[:50]},
          {"l1/kernel": x1[50:], "l2/kernel": x2[50:]}]
  res = eva_fit(data, {"l1/kernel": 8, "l2/kernel": 5}, 2, tau=0.0)
  trainable, _ = eva(2, 1.0, r".*kernel", whiten=True, tau=0.0).init(params, None, data=data)
  for p, t in trainable.items():
    r = t["lora_a"].shape[1]
    expected = np.asarray(res.components[p][:r]).T / np.sqrt(np.asarray(
        res.singular_values[p][:r]))
    np.testing.assert_allclose(t["lora_a"], expected, rtol=1e-5, atol=1e-7)


def test_capture_inputs_plain_function_and_nnx():
  rng = np.random.default_rng(6)
  params = _model_params(rng)
  x = rng.normal(size=(2, 3, 8)).astype(np.float32)

  def apply_fn(p, x):
    h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    return h @ p["l2"]["kernel"]

  got = capture_inputs(apply_fn, params, jnp.asarray(x), r".*kernel")
  h = np.maximum(x @ np.asarray(params["l1"]["kernel"]) + np.asarray(params["l1"]["bias"]), 0)
  np.testing.assert_allclose(got["l1/kernel"], x.reshape(-1, 8), atol=1e-6)
  np.testing.assert_allclose(got["l2/kernel"], h.reshape(-1, 5), atol=1e-5)

  from flax import nnx

  class MLP(nnx.Module):

    def __init__(self, rngs):
      self.l1 = nnx.Linear(8, 5, rngs=rngs)
      self.l2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(jax.nn.tanh(self.l1(x)))

  graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
  fn = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
  data = list(collect_inputs(fn, state, [jnp.asarray(x[0]), jnp.asarray(x[1])], r".*kernel.*"))
  k1 = np.asarray(state["l1"]["kernel"][...])
  b1 = np.asarray(state["l1"]["bias"][...])
  assert len(data) == 2
  np.testing.assert_allclose(data[1]["l1/kernel/value"], x[1], atol=1e-6)
  np.testing.assert_allclose(data[1]["l2/kernel/value"], np.tanh(x[1] @ k1 + b1), atol=1e-5)


def test_bad_arguments():
  with pytest.raises(ValueError, match="tau=1.5"):
    eva(2, 1.0, ".*", tau=1.5)
  with pytest.raises(ValueError, match="rho=0.5"):
    eva(2, 1.0, ".*", rho=0.5)
  params = _model_params(np.random.default_rng(0))
  with pytest.raises(ValueError, match="needs data"):
    eva(2, 1.0, r".*kernel").init(params, None)
  with pytest.raises(ValueError, match="no inputs for layer 'l2/kernel'"):
    eva(2, 1.0, r".*kernel").init(params, None, data=[{"l1/kernel": np.ones((8, 8))}])
  with pytest.raises(ValueError, match="one-shot iterator"):
    eva_fit(iter([]), {"l": 3}, 1, max_passes=2)
