"""`reweight.sample.token_probability`: the DFT weights, normalised and not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reweight
from tests.token_batches import bigram_setup, np_per_token_ce, per_token_ce


@pytest.fixture
def setup():
  return bigram_setup()


def test_normalize_false_is_dft_exactly(setup):
  params, batch = setup
  m = batch["token_mask"]
  w = reweight.sample.token_probability(normalize=False)
  fn = reweight.weighted_tokens(per_token_ce, w)
  (loss, (_, info)), grads = jax.value_and_grad(fn, has_aux=True)(params, batch, w.init())

  def dft(p):  # L = -(1/N) sum_t sg(p_t) log p_t over valid tokens
    logp_t = -per_token_ce(p, batch)
    return -jnp.sum(jnp.where(m, jax.lax.stop_gradient(jnp.exp(logp_t)) * logp_t, 0.0)) / m.sum()

  ce = np_per_token_ce(params, batch)
  np.testing.assert_allclose(loss, -(np.exp(-ce) * -ce)[m].sum() / m.sum(), rtol=1e-5)
  np.testing.assert_allclose(loss, dft(params), rtol=1e-6)
  np.testing.assert_allclose(grads, jax.grad(dft)(params), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(info["weights"], np.where(m, np.exp(-ce), 0), rtol=1e-5)
  # The normalised loss is the DFT loss over the batch mean of p_t (same direction).
  wn = reweight.sample.token_probability()
  loss_n = reweight.weighted_tokens(per_token_ce, wn)(params, batch, wn.init())[0]
  np.testing.assert_allclose(loss_n, loss / np.exp(-ce)[m].mean(), rtol=1e-5)
