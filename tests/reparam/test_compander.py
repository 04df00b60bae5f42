"""Tests for reweight.reparam.compander."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reweight.reparam.compander import compand, compand_inverse, compander

_floats = st.floats(-50.0, 50.0, allow_nan=False, width=32)
_p = st.sampled_from([0.25, 0.5, 0.75, 1.0])
_settings = settings(max_examples=40, deadline=None)
# Compiled once per (p, eps) so that hypothesis examples do not retrace.
_compand = jax.jit(compand, static_argnames=("p", "eps"))
_slope = jax.jit(jax.grad(compand), static_argnames=("p", "eps"))
_inverse = jax.jit(compand_inverse, static_argnames=("p", "eps"))


def _np_compand(v, w_max, k, p, eps):
  v = np.asarray(v, np.float64)
  e = np.sign(v) * ((np.abs(v) + eps) ** p - eps**p)
  return w_max * np.tanh(k * e)


@_settings
@given(v=_floats, p=_p)
def test_odd(v, p):
  x = jnp.array([v, -v], jnp.float32)
  w = _compand(x, 1.5, 0.7, p=p)
  assert float(w[0]) == -float(w[1])


@_settings
@given(a=_floats, b=_floats, p=_p)
def test_monotone_and_bounded(a, b, p):
  lo, hi = min(a, b), max(a, b)
  w = np.asarray(_compand(jnp.array([lo, hi], jnp.float32), 1.5, 0.7, p=p, eps=1e-2))
  assert w[0] <= w[1]
  assert np.all(np.abs(w) <= 1.5)


@_settings
@given(a=st.floats(-1.0, 1.0, width=32), b=st.floats(-1.0, 1.0, width=32), p=_p)
def test_strictly_increasing_before_saturation(a, b, p):
  # For |v| <= 1 the map is far from saturation; distinct float32 inputs a < b - 1e-3 give
  # distinct outputs, and the slope matches the closed-form derivative (> 0).
  if abs(a - b) < 1e-3:
    return
  lo, hi = min(a, b), max(a, b)
  w = np.asarray(_compand(jnp.array([lo, hi], jnp.float32), 1.5, 0.7, p=p))
  assert w[0] < w[1]
  slope = float(_slope(jnp.float32(lo), 1.5, 0.7, p=p))
  e = (abs(lo) + 1e-2) ** p - 1e-2**p
  expected = 1.5 * 0.7 * (1 - np.tanh(0.7 * e) ** 2) * p * (abs(lo) + 1e-2) ** (p - 1)
  np.testing.assert_allclose(slope, expected, rtol=1e-4)
  assert slope > 0


def test_matches_numpy_and_pushes_small_weights_away_from_zero():
  v = np.linspace(-3, 3, 61).astype(np.float32)
  w = compand(jnp.asarray(v), 2.0, 0.8, p=0.5, eps=1e-2)
  np.testing.assert_allclose(w, _np_compand(v, 2.0, 0.8, 0.5, 1e-2), rtol=1e-5, atol=1e-6)
  # Expander: near 0 the slope is steeper than at |v| = 1 (and than the p = 1 compressor).
  g = jax.vmap(jax.grad(lambda x: compand(x, 2.0, 0.8, p=0.5)))(jnp.array([0.0, 1.0]))
  g1 = jax.grad(lambda x: compand(x, 2.0, 0.8, p=1.0))(0.0)
  assert g[0] > 3 * g[1] and g[0] > 3 * g1
  # Bound: strictly below w_max for moderate latents.
  assert float(jnp.max(jnp.abs(w))) < 2.0


@_settings
@given(w=st.floats(-0.9375, 0.9375, width=32), p=_p)
def test_inverse_round_trip(w, p):
  x = jnp.float32(w)
  v = _inverse(x, 1.0, 1.3, p=p)
  np.testing.assert_allclose(_compand(v, 1.0, 1.3, p=p), w, atol=2e-6)


def test_gradients_finite_everywhere():
  v = jnp.array([-1e3, -1.0, -1e-8, 0.0, 1e-8, 1.0, 1e3], jnp.float32)

  def f(v, lw, lk):
    return jnp.sum(compand(v, jnp.exp(lw), jnp.exp(lk), p=0.5) ** 2)

  grads = jax.grad(f, argnums=(0, 1, 2))(v, jnp.float32(0.3), jnp.float32(-0.2))
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))


def _params(rng):
  return {
      "dense": {"kernel": jnp.asarray(rng.normal(size=(5, 4)) * 0.3, jnp.float32),
                "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
      "head": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)},
  }


@pytest.mark.parametrize("learn_hparams", [True, False])
def test_reparam_equals_original_at_init(learn_hparams):
  params = _params(np.random.default_rng(0))
  rp = compander(r".*kernel", learn_hparams=learn_hparams)
  trainable, frozen = rp.init(params, jax.random.key(0))
  assert set(trainable) == {"dense/kernel", "head/kernel"}
  assert ("log_k" in trainable["dense/kernel"]) == learn_hparams
  out = jax.jit(rp.apply)(trainable, frozen)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert jax.tree.structure(out) == jax.tree.structure(params)


def test_reparam_gradients_through_hparams():
  params = _params(np.random.default_rng(1))
  rp = compander(r"dense/kernel")
  trainable, frozen = rp.init(params, None)

  def loss(t):
    p = rp.apply(t, frozen)
    return jnp.sum(p["dense"]["kernel"] ** 2)

  g = jax.grad(loss)(trainable)["dense/kernel"]
  # d/d log_w_max sum(w^2) = 2 sum(w^2) since w is proportional to w_max.
  w = np.asarray(params["dense"]["kernel"], np.float64)
  np.testing.assert_allclose(g["log_w_max"], 2 * np.sum(w**2), rtol=1e-4)
  assert np.all(np.isfinite(np.asarray(g["v"]))) and np.isfinite(float(g["log_k"]))


def test_bad_arguments():
  with pytest.raises(ValueError, match="p=1.5"):
    compand(jnp.zeros(2), p=1.5)
  with pytest.raises(ValueError, match="bound=0.5"):
    compander(bound=0.5)
  with pytest.raises(ValueError, match="matches no parameter"):
    compander(r"nothing").init(_params(np.random.default_rng(0)), None)
