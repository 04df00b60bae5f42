"""Tests for reweight.reparam.modules_to_save against NumPy re-derivations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight.reparam import dora, lora, merge, modules_to_save, unmerge


def _params(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
  return {"body": {"kernel": f(5, 4), "bias": f(4)}, "head": {"kernel": f(4, 3), "bias": f(3)}}


def _np_loss_and_head_grads(p, x, y):
  """0.5 * ||tanh(x W1 + b1) W2 + b2 - y||^2 and its gradients in W2, b2 (by hand)."""
  h = np.tanh(x @ p["body/kernel"] + p["body/bias"])
  r = h @ p["head/kernel"] + p["head/bias"] - y
  return 0.5 * np.sum(r ** 2), {"head/kernel": h.T @ r, "head/bias": r.sum(0)}


def _loss(params, x, y):
  h = jnp.tanh(x @ params["body"]["kernel"] + params["body"]["bias"])
  return 0.5 * jnp.sum((h @ params["head"]["kernel"] + params["head"]["bias"] - y) ** 2)


def _flat_np(params):
  return {f"{a}/{b}": np.asarray(v, np.float64) for a, d in params.items() for b, v in d.items()}


def test_linear_probe_trains_only_the_head_with_the_full_gradient():
  params = _params()
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(7, 5)), rng.normal(size=(7, 3))
  rp = modules_to_save(None, "head/.*")
  trainable, frozen = rp.init(params, jax.random.key(0))
  assert trainable["adapter"] == {} and sorted(trainable["modules"]) == ["head/bias",
                                                                         "head/kernel"]
  value, grads = jax.value_and_grad(lambda t: _loss(rp.apply(t, frozen), x, y))(trainable)
  ref_value, ref_grads = _np_loss_and_head_grads(_flat_np(params), x, y)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for path, g in ref_grads.items():
    np.testing.assert_allclose(grads["modules"][path], g, rtol=1e-4, atol=1e-5)
  # One SGD step moves the head by -lr * grad and nothing else.
  stepped = jax.tree.map(lambda t, g: t - 0.1 * g, trainable, grads)
  new = rp.apply(stepped, frozen)
  np.testing.assert_allclose(new["head"]["kernel"], np.asarray(params["head"]["kernel"]) -
                             0.1 * ref_grads["head/kernel"], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(new["body"]["kernel"], params["body"]["kernel"])


def test_with_lora_base_applies_both():
  params = _params(2)
  rank, alpha = 2, 3.0
  rp = modules_to_save(lora(rank, alpha, "body/kernel"), "head/.*")
  trainable, frozen = rp.init(params, jax.random.key(0))
  assert sorted(trainable["adapter"]) == ["body/kernel"]
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(5, rank)), rng.normal(size=(rank, 4))
  head = rng.normal(size=(4, 3))
  trainable["adapter"]["body/kernel"] = {"lora_a": jnp.asarray(a, jnp.float32),
                                         "lora_b": jnp.asarray(b, jnp.float32)}
  trainable["modules"]["head/kernel"] = jnp.asarray(head, jnp.float32)
  merged = merge(rp, trainable, frozen)
  p = _flat_np(params)
  np.testing.assert_allclose(merged["body"]["kernel"], p["body/kernel"] + alpha / rank * a @ b,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(merged["head"]["kernel"], head, rtol=1e-6)
  np.testing.assert_array_equal(merged["body"]["bias"], params["body"]["bias"])
  np.testing.assert_array_equal(merged["head"]["bias"], params["head"]["bias"])
  # unmerge: frozen = merged - delta on the LoRA target, apply(unmerge(merged)) == merged.
  back = unmerge(rp, trainable, merged)
  np.testing.assert_allclose(back["body"]["kernel"], p["body/kernel"], rtol=1e-5, atol=1e-5)
  again = merge(rp, trainable, back)
  for leaf, ref in zip(jax.tree.leaves(again), jax.tree.leaves(merged), strict=True):
    np.testing.assert_allclose(leaf, ref, rtol=1e-5, atol=1e-5)


def test_nnx_value_paths_and_errors():
  params = {"head": {"kernel": {"value": jnp.ones((2, 2))}}, "body": {"kernel": {"value":
                                                                               jnp.ones(2)}}}
  trainable, _ = modules_to_save(None, "head/kernel").init(params, jax.random.key(0))
  assert list(trainable["modules"]) == ["head/kernel/value"]
  with pytest.raises(ValueError, match="targets='nothing' matches no parameter; available"):
    modules_to_save(None, "nothing").init(params, jax.random.key(0))
  with pytest.raises(ValueError, match="modules=3 must be a regex"):
    modules_to_save(None, 3)
  # DoRA has no inverse, so neither has DoRA + saved modules; no base is invertible.
  assert modules_to_save(dora(1, 1.0, "body/kernel"), "head/.*").unapply is None
  assert modules_to_save(None, "head/.*").unapply is not None
