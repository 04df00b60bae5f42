"""Tests for reweight.reparam.with_data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reweight.reparam import Reparam, eva, init_train, with_data


def test_bound_data_reaches_init_and_caller_data_is_ignored():
  seen = []

  def init(params, key, *, data=None):
    seen.append(data)
    return {"mean": jnp.mean(jnp.asarray(data), axis=0)}, params

  rp = Reparam(init, lambda t, f: {"w": f["w"] + t["mean"]}, lambda t, p: {"w": p["w"] - t["mean"]})
  x = np.random.default_rng(0).normal(size=(9, 3))
  bound = with_data(rp, data=x)
  trainable, frozen = bound.init({"w": jnp.zeros(3)}, None, data="ignored")
  np.testing.assert_allclose(trainable["mean"], x.mean(0), rtol=1e-6)
  assert seen[-1] is x
  assert bound.apply is rp.apply and bound.unapply is rp.unapply
  with pytest.raises(ValueError, match="must be a reweight.reparam.Reparam"):
    with_data(lambda p, k: p, data=x)


@pytest.mark.filterwarnings("ignore:EVA components did not converge")  # one batch of inputs
def test_eva_through_init_train_without_data_matches_numpy_svd():
  """EVA's ``lora_a`` spans the top right singular vectors of the bound layer inputs, also
  when the caller (here `init_train`) passes no data."""
  rng = np.random.default_rng(1)
  scales = np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
  x = rng.normal(size=(64, 6)) * scales
  params = {"l": {"kernel": jnp.ones((6, 4))}}
  rp = with_data(eva(2, 2.0, "l/kernel", rho=1.0, center=False),
                 data=[{"l/kernel": jnp.asarray(x, jnp.float32)}])
  trainable, _, _ = init_train(rp, params, jax.random.key(0), optax.sgd(0.1))
  a = np.asarray(trainable["l/kernel"]["lora_a"], np.float64)  # (in, r)
  v = np.linalg.svd(x, full_matrices=False)[2][:2].T            # (in, r), NumPy
  np.testing.assert_allclose(np.abs(a.T @ v), np.eye(2), atol=1e-3)
  with pytest.raises(ValueError, match="needs data"):
    init_train(eva(2, 2.0, "l/kernel"), params, jax.random.key(0), optax.sgd(0.1))
