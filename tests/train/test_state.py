"""TrainState creation: with a reparameterization only the trainable part gets optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import reweight
from reweight.reparam import lora
from reweight.train.state import create, params_of


def test_plain_state():
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
  s = create(params, optax.adam(1e-3), reweight.sample.loss_based(), jax.random.PRNGKey(0))
  assert int(s.step) == 0 and s.frozen == {}
  assert jax.tree.structure(s.opt_state[0].mu) == jax.tree.structure(params)
  assert params_of(s) is s.trainable
  assert int(s.weighting_state.count) == 0


def test_reparam_state_trains_only_adapters():
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
                      "bias": jnp.zeros(4)}}
  rp = lora(rank=2, alpha=4.0, targets=r".*kernel")
  s = create(params, optax.adam(1e-3), reweight.uniform(), jax.random.PRNGKey(0), reparam=rp)
  n_trainable = sum(x.size for x in jax.tree.leaves(s.trainable))
  assert n_trainable == 2 * (6 + 4)  # A: r x in, B: out x r
  n_moments = sum(x.size for x in jax.tree.leaves(s.opt_state[0].mu))
  assert n_moments == n_trainable
  # B = 0 at init: the effective params equal the original ones.
  merged = params_of(s, rp)
  np.testing.assert_allclose(merged["dense"]["kernel"], params["dense"]["kernel"], atol=1e-7)
