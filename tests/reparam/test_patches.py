"""Tests for reweight.reparam.patches against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight.reparam.patches import (
    apply_patches,
    patch,
    patch_add,
    patch_remove,
    patch_scale,
    project_off,
)


def _tree(rng):
  return {
      "dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                "bias": rng.normal(size=(3,)).astype(np.float32)},
      "out": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)},
  }


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def test_patch_add_scale_remove():
  rng = np.random.default_rng(0)
  base, ft = _tree(rng), _tree(rng)
  tau = patch(jax.tree.map(jnp.asarray, base), jax.tree.map(jnp.asarray, ft))
  np.testing.assert_allclose(_flat(tau), _flat(ft) - _flat(base), atol=1e-6)
  np.testing.assert_allclose(_flat(patch_scale(tau, -0.3)), -0.3 * (_flat(ft) - _flat(base)),
                             atol=1e-6)
  added = patch_add(base, tau, scale=0.7)
  np.testing.assert_allclose(_flat(added), _flat(base) + 0.7 * (_flat(ft) - _flat(base)),
                             atol=1e-6)
  np.testing.assert_allclose(_flat(patch_add(base, tau)), _flat(ft), atol=1e-6)
  np.testing.assert_allclose(_flat(patch_remove(ft, tau)), _flat(base), atol=1e-6)


def test_project_off_global_matches_numpy():
  rng = np.random.default_rng(1)
  tau, other = _tree(rng), _tree(rng)
  t, o = _flat(tau), _flat(other)
  expected = t - (t @ o) / (o @ o) * o
  out = jax.jit(project_off)(tau, other)
  np.testing.assert_allclose(_flat(out), expected, atol=1e-5)
  assert abs(_flat(out) @ o) < 1e-4


def test_project_off_per_leaf_matches_numpy():
  rng = np.random.default_rng(2)
  tau, other = _tree(rng), _tree(rng)
  out = project_off(tau, other, per_leaf=True)
  leaves = (jax.tree.leaves(tau), jax.tree.leaves(other), jax.tree.leaves(out))
  for t, o, r in zip(*leaves, strict=True):
    t, o = np.asarray(t, np.float64).ravel(), np.asarray(o, np.float64).ravel()
    np.testing.assert_allclose(np.asarray(r).ravel(), t - (t @ o) / (o @ o) * o, atol=1e-5)


def test_project_off_zero_other_is_identity():
  rng = np.random.default_rng(3)
  tau = _tree(rng)
  zero = jax.tree.map(np.zeros_like, tau)
  np.testing.assert_allclose(_flat(project_off(tau, zero)), _flat(tau))
  np.testing.assert_allclose(_flat(project_off(tau, zero, per_leaf=True)), _flat(tau))


def test_apply_patches_matches_numpy():
  rng = np.random.default_rng(4)
  base = _tree(rng)
  taus = [_tree(rng) for _ in range(3)]
  w = np.array([0.5, -1.0, 2.0], np.float32)
  expected = _flat(base) + sum(wc * _flat(t) for wc, t in zip(w, taus, strict=True))
  out = jax.jit(apply_patches)(base, taus, jnp.asarray(w))
  np.testing.assert_allclose(_flat(out), expected, atol=1e-5)
  # Gradient with respect to the coefficients is the inner product <tau_c, g>.
  g = rng.normal(size=_flat(base).shape)

  def f(wv):
    return jnp.dot(jnp.concatenate([x.ravel() for x in jax.tree.leaves(
        apply_patches(base, taus, wv))]), jnp.asarray(g, jnp.float32))

  grad = jax.grad(f)(jnp.asarray(w))
  np.testing.assert_allclose(grad, [_flat(t) @ g for t in taus], rtol=1e-5, atol=1e-4)


def test_bad_inputs():
  rng = np.random.default_rng(5)
  base = _tree(rng)
  with pytest.raises(ValueError, match="len\\(weights\\)=1"):
    apply_patches(base, [base, base], [1.0])
  with pytest.raises(ValueError, match="same tree structure"):
    patch(base, {"dense": base["dense"]})
