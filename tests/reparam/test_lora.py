"""Parity of LoRA / rsLoRA / PiSSA / SoMA / DoRA with PEFT (torch, CPU, float32).

Layout conversion: torch ``W`` (out, in) -> Flax kernel ``W.T``; PEFT ``lora_A`` (r, in) ->
``lora_a = A.T``; ``lora_B`` (out, r) -> ``lora_b = B.T``.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import scipy.stats
import torch

from reweight.reparam.lora import dora, lora

TOL = dict(rtol=1e-5, atol=1e-5)
RANK, ALPHA = 4, 8.0
TARGETS = r"fc[12]/kernel"


class Net(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.fc1 = torch.nn.Linear(12, 8)
    self.fc2 = torch.nn.Linear(8, 6)

  def forward(self, x):
    return self.fc2(torch.tanh(self.fc1(x)))


def jax_forward(params, x):
  h = jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
  return h @ params["fc2"]["kernel"] + params["fc2"]["bias"]


def base_net(seed=0):
  torch.manual_seed(seed)
  return Net()


def to_jax_params(net):
  return {
      name: {"kernel": jnp.asarray(getattr(net, name).weight.detach().numpy().T),
             "bias": jnp.asarray(getattr(net, name).bias.detach().numpy())}
      for name in ("fc1", "fc2")
  }


def peft_layer(model, name):
  return getattr(model.base_model.model, name)


def randomize_adapters(model, rng, magnitude=False):
  """Writes random non-zero adapter values into the PEFT model."""
  with torch.no_grad():
    for name in ("fc1", "fc2"):
      layer = peft_layer(model, name)
      for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
        p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32) * 0.3))
      if magnitude:
        m = layer.lora_magnitude_vector["default"].weight
        m.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, size=tuple(m.shape)).astype(np.float32)))


def trainable_from_peft(model, magnitude=False):
  out = {}
  for name in ("fc1", "fc2"):
    layer = peft_layer(model, name)
    entry = {"lora_a": jnp.asarray(layer.lora_A["default"].weight.detach().numpy().T),
             "lora_b": jnp.asarray(layer.lora_B["default"].weight.detach().numpy().T)}
    if magnitude:
      entry["lora_magnitude"] = jnp.asarray(
          layer.lora_magnitude_vector["default"].weight.detach().numpy())
    out[f"{name}/kernel"] = entry
  return out


def frozen_from_peft(model):
  out = {}
  for name in ("fc1", "fc2"):
    base = peft_layer(model, name).base_layer
    out[name] = {"kernel": jnp.asarray(base.weight.detach().numpy().T),
                 "bias": jnp.asarray(base.bias.detach().numpy())}
  return out


def check_parity(model, rp, trainable, frozen, magnitude=False):
  """Effective weights, outputs and adapter gradients of PEFT vs the reparam."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 12)).astype(np.float32)
  c = rng.normal(size=(5, 6)).astype(np.float32)
  # Effective weights: PEFT's own merge on a copy.
  merged = copy.deepcopy(model).merge_and_unload()
  params = rp.apply(trainable, frozen)
  for name in ("fc1", "fc2"):
    np.testing.assert_allclose(
        np.asarray(params[name]["kernel"]), getattr(merged, name).weight.detach().numpy().T, **TOL)
  # Outputs and gradients of loss = sum(c * f(x)) w.r.t. the adapters.
  model.zero_grad()
  out = model(torch.from_numpy(x))
  (out * torch.from_numpy(c)).sum().backward()

  def loss(t):
    return jnp.sum(jnp.asarray(c) * jax_forward(rp.apply(t, frozen), jnp.asarray(x)))

  np.testing.assert_allclose(
      np.asarray(jax_forward(params, jnp.asarray(x))), out.detach().numpy(), **TOL)
  grads = jax.jit(jax.grad(loss))(trainable)
  for name in ("fc1", "fc2"):
    layer = peft_layer(model, name)
    g = grads[f"{name}/kernel"]
    np.testing.assert_allclose(
        np.asarray(g["lora_a"]), layer.lora_A["default"].weight.grad.numpy().T, **TOL)
    np.testing.assert_allclose(
        np.asarray(g["lora_b"]), layer.lora_B["default"].weight.grad.numpy().T, **TOL)
    if magnitude:
      np.testing.assert_allclose(
          np.asarray(g["lora_magnitude"]),
          layer.lora_magnitude_vector["default"].weight.grad.numpy(), **TOL)


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_matches_peft(rslora):
  net = base_net()
  params = to_jax_params(net)
  model = peft.get_peft_model(copy.deepcopy(net), peft.LoraConfig(
      r=RANK, lora_alpha=ALPHA, target_modules=["fc1", "fc2"], use_rslora=rslora,
      init_lora_weights=False))
  randomize_adapters(model, np.random.default_rng(0))
  rp = lora(RANK, ALPHA, TARGETS, rslora=rslora)
  _, frozen = rp.init(params, jax.random.key(0))
  check_parity(model, rp, trainable_from_peft(model), frozen)


@pytest.mark.parametrize("rslora", [False, True])
def test_dora_matches_peft(rslora):
  net = base_net()
  params = to_jax_params(net)
  model = peft.get_peft_model(copy.deepcopy(net), peft.LoraConfig(
      r=RANK, lora_alpha=ALPHA, target_modules=["fc1", "fc2"], use_dora=True,
      use_rslora=rslora, init_lora_weights=False))
  randomize_adapters(model, np.random.default_rng(0), magnitude=True)
  rp = dora(RANK, ALPHA, TARGETS, rslora=rslora)
  _, frozen = rp.init(params, jax.random.key(0))
  check_parity(model, rp, trainable_from_peft(model, magnitude=True), frozen, magnitude=True)


def test_dora_init_magnitude_matches_peft():
  net = base_net()
  model = peft.get_peft_model(copy.deepcopy(net), peft.LoraConfig(
      r=RANK, lora_alpha=ALPHA, target_modules=["fc1", "fc2"], use_dora=True))
  trainable, frozen = dora(RANK, ALPHA, TARGETS).init(to_jax_params(net), jax.random.key(0))
  for name in ("fc1", "fc2"):
    np.testing.assert_allclose(
        np.asarray(trainable[f"{name}/kernel"]["lora_magnitude"]),
        peft_layer(model, name).lora_magnitude_vector["default"].weight.detach().numpy(), **TOL)
    np.testing.assert_allclose(
        np.asarray(trainable[f"{name}/kernel"]["lora_magnitude"]),
        np.linalg.norm(getattr(net, name).weight.detach().numpy(), axis=1), **TOL)


def test_pissa_init_matches_peft():
  net = base_net()
  params = to_jax_params(net)
  model = peft.get_peft_model(copy.deepcopy(net), peft.LoraConfig(
      r=RANK, lora_alpha=ALPHA, target_modules=["fc1", "fc2"], init_lora_weights="pissa"))
  rp = lora(RANK, ALPHA, TARGETS, init="pissa")
  trainable, frozen = rp.init(params, jax.random.key(0))
  for name in ("fc1", "fc2"):
    layer = peft_layer(model, name)
    a_ref = layer.lora_A["default"].weight.detach().numpy()  # (r, in)
    b_ref = layer.lora_B["default"].weight.detach().numpy()  # (out, r)
    a = np.asarray(trainable[f"{name}/kernel"]["lora_a"]).T
    b = np.asarray(trainable[f"{name}/kernel"]["lora_b"]).T
    # Singular vectors are unique up to sign: compare sign-invariant products.
    np.testing.assert_allclose(b @ a, b_ref @ a_ref, **TOL)
    np.testing.assert_allclose(a.T @ a, a_ref.T @ a_ref, **TOL)
    np.testing.assert_allclose(b @ b.T, b_ref @ b_ref.T, **TOL)
    np.testing.assert_allclose(
        np.asarray(frozen[name]["kernel"]), layer.base_layer.weight.detach().numpy().T, **TOL)
    # The effective weight is unchanged at init.
    np.testing.assert_allclose(
        np.asarray(rp.apply(trainable, frozen)[name]["kernel"]),
        getattr(net, name).weight.detach().numpy().T, **TOL)
  # With PEFT's own factors, outputs and gradients agree.
  randomize_adapters(model, np.random.default_rng(0))
  check_parity(model, rp, trainable_from_peft(model), frozen_from_peft(model))


def test_soma_matches_numpy_minor_components_and_peft_lora():
  net = base_net()
  params = to_jax_params(net)
  rp = lora(RANK, ALPHA, TARGETS, init="soma")
  trainable, frozen = rp.init(params, jax.random.key(0))
  s = ALPHA / RANK
  model = peft.get_peft_model(copy.deepcopy(net), peft.LoraConfig(
      r=RANK, lora_alpha=ALPHA, target_modules=["fc1", "fc2"], init_lora_weights=False))
  for name in ("fc1", "fc2"):
    w = getattr(net, name).weight.detach().numpy().astype(np.float64)  # (out, in)
    u, sv, vt = np.linalg.svd(w, full_matrices=False)
    root = np.sqrt(sv[-RANK:] / s)
    a_ref = root[:, None] * vt[-RANK:]  # (r, in)
    b_ref = u[:, -RANK:] * root[None, :]  # (out, r)
    w_res = w - s * b_ref @ a_ref
    a = np.asarray(trainable[f"{name}/kernel"]["lora_a"]).T
    b = np.asarray(trainable[f"{name}/kernel"]["lora_b"]).T
    np.testing.assert_allclose(b @ a, b_ref @ a_ref, **TOL)
    np.testing.assert_allclose(a.T @ a, a_ref.T @ a_ref, **TOL)
    np.testing.assert_allclose(b @ b.T, b_ref @ b_ref.T, **TOL)
    np.testing.assert_allclose(np.asarray(frozen[name]["kernel"]), w_res.T, **TOL)
    # Emulate SoMA in PEFT: a plain LoRA layer holding the minor-component factors.
    layer = peft_layer(model, name)
    with torch.no_grad():
      layer.lora_A["default"].weight.copy_(torch.from_numpy(a_ref.astype(np.float32)))
      layer.lora_B["default"].weight.copy_(torch.from_numpy(b_ref.astype(np.float32)))
      layer.base_layer.weight.copy_(torch.from_numpy(w_res.astype(np.float32)))
  check_parity(model, rp, trainable_from_peft(model), frozen_from_peft(model))


@pytest.mark.parametrize("init", ["default", "gaussian"])
def test_random_init_distribution_matches_peft(init):
  fan_in, fan_out, r = 256, 4, 8
  torch.manual_seed(0)
  model = peft.get_peft_model(
      torch.nn.Sequential(torch.nn.Linear(fan_in, fan_out)),
      peft.LoraConfig(r=r, lora_alpha=16, target_modules=["0"],
                      init_lora_weights=True if init == "default" else "gaussian"))
  ref = model.base_model.model[0].lora_A["default"].weight.detach().numpy().ravel()
  params = {"0": {"kernel": jnp.zeros((fan_in, fan_out))}}
  trainable, _ = lora(r, 16, r"0/kernel", init=init).init(params, jax.random.key(0))
  ours = np.asarray(trainable["0/kernel"]["lora_a"]).ravel()
  np.testing.assert_array_equal(np.asarray(trainable["0/kernel"]["lora_b"]), 0.0)
  assert scipy.stats.ks_2samp(ours, ref).pvalue > 1e-3
  if init == "default":
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(ours).max() <= bound and np.abs(ref).max() <= bound
    assert np.abs(ours).max() > 0.98 * bound
  else:
    assert abs(ours.std() - 1 / r) < 0.05 / r


def test_only_targets_and_dtype():
  params = {"fc1": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
            "fc2": {"kernel": jnp.ones((2, 2))}}
  trainable, frozen = lora(1, 1.0, r"fc1/kernel", dtype=jnp.bfloat16).init(
      params, jax.random.key(0))
  assert list(trainable) == ["fc1/kernel"]
  assert trainable["fc1/kernel"]["lora_a"].dtype == jnp.bfloat16
  assert frozen is params


def test_bad_arguments():
  with pytest.raises(ValueError, match="init='svd'"):
    lora(2, 1.0, ".*", init="svd")
  with pytest.raises(ValueError, match="rank=0"):
    dora(0, 1.0, ".*")
  with pytest.raises(ValueError, match="matches no parameter"):
    lora(2, 1.0, "nope").init({"w": jnp.ones((2, 2))}, jax.random.key(0))
  with pytest.raises(ValueError, match="rank=3 exceeds"):
    lora(3, 1.0, "w", init="pissa").init({"w": jnp.ones((2, 5))}, jax.random.key(0))
