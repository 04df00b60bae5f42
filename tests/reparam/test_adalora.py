"""Parity of AdaLoRA's SVD-form update and orthogonal penalty with PEFT (torch, CPU, float32).

Layout conversion: PEFT ``lora_A`` (r, in) -> ``lora_a = A.T``; ``lora_E`` (r, 1) ->
``lora_e = E[:, 0]``; ``lora_B`` (out, r) -> ``lora_b = B.T``; torch ``W`` -> ``W.T``.
"""

from __future__ import annotations

import copy
import types

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import scipy.stats
import torch

from reweight.reparam.adalora import adalora, find_triplets, orthogonal_penalty

TOL = dict(rtol=1e-5, atol=1e-5)
INIT_R, ALPHA, ORTH = 4, 8.0, 0.3


class Net(torch.nn.Module):
  """Returns an object with a ``loss`` so that PEFT adds its orthogonal regularizer."""

  def __init__(self):
    super().__init__()
    self.fc1 = torch.nn.Linear(12, 8)
    self.fc2 = torch.nn.Linear(8, 6)

  def forward(self, x, c):
    out = self.fc2(torch.tanh(self.fc1(x)))
    return types.SimpleNamespace(out=out, loss=(out * c).sum())


def jax_forward(params, x):
  h = jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
  return h @ params["fc2"]["kernel"] + params["fc2"]["bias"]


def to_jax_params(net):
  return {name: {"kernel": jnp.asarray(getattr(net, name).weight.detach().numpy().T),
                 "bias": jnp.asarray(getattr(net, name).bias.detach().numpy())}
          for name in ("fc1", "fc2")}


def make_peft(net, **kw):
  config = peft.AdaLoraConfig(
      init_r=INIT_R, target_r=2, lora_alpha=ALPHA, target_modules=["fc1", "fc2"],
      total_step=20, orth_reg_weight=ORTH, **kw)
  return peft.get_peft_model(copy.deepcopy(net), config)


def layer(model, name):
  return getattr(model.base_model.model, name)


def test_adalora_matches_peft():
  torch.manual_seed(0)
  net = Net()
  params = to_jax_params(net)
  model = make_peft(net)
  rng = np.random.default_rng(0)
  trainable = {}
  with torch.no_grad():
    for name in ("fc1", "fc2"):
      lay = layer(model, name)
      for p in (lay.lora_A["default"], lay.lora_E["default"], lay.lora_B["default"]):
        p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32) * 0.3))
      trainable[f"{name}/kernel"] = {
          "lora_a": jnp.asarray(lay.lora_A["default"].numpy().T),
          "lora_e": jnp.asarray(lay.lora_E["default"].numpy()[:, 0]),
          "lora_b": jnp.asarray(lay.lora_B["default"].numpy().T),
      }
  rp = adalora(INIT_R, ALPHA, r"fc[12]/kernel")
  _, frozen = rp.init(params, jax.random.key(0))
  x = rng.normal(size=(5, 12)).astype(np.float32)
  c = rng.normal(size=(5, 6)).astype(np.float32)
  # AdaLoraModel.forward (model.base_model) adds the regularizer; PeftModel.forward without a
  # task type bypasses it.
  outputs = model.base_model(torch.from_numpy(x), torch.from_numpy(c))
  task = float((outputs.out * torch.from_numpy(c)).sum().detach())
  outputs.loss.backward()

  def loss(t):
    task = jnp.sum(jnp.asarray(c) * jax_forward(rp.apply(t, frozen), jnp.asarray(x)))
    return task + ORTH * orthogonal_penalty(t)

  eff = rp.apply(trainable, frozen)
  np.testing.assert_allclose(
      np.asarray(jax_forward(eff, jnp.asarray(x))), outputs.out.detach().numpy(), **TOL)
  # PEFT's forward added ORTH * regu_loss to the loss.
  np.testing.assert_allclose(
      float(orthogonal_penalty(trainable)), (float(outputs.loss.detach()) - task) / ORTH, rtol=1e-5)
  grads = jax.jit(jax.grad(loss))(trainable)
  merged = copy.deepcopy(model).merge_and_unload()
  for name in ("fc1", "fc2"):
    lay = layer(model, name)
    g = grads[f"{name}/kernel"]
    np.testing.assert_allclose(np.asarray(g["lora_a"]), lay.lora_A["default"].grad.numpy().T, **TOL)
    np.testing.assert_allclose(
        np.asarray(g["lora_e"]), lay.lora_E["default"].grad.numpy()[:, 0], **TOL)
    np.testing.assert_allclose(np.asarray(g["lora_b"]), lay.lora_B["default"].grad.numpy().T, **TOL)
    np.testing.assert_allclose(
        np.asarray(eff[name]["kernel"]), getattr(merged, name).weight.detach().numpy().T, **TOL)


def test_orthogonal_penalty_numpy():
  rng = np.random.default_rng(0)
  t = {f"l{i}": {"lora_a": rng.normal(size=(5, 3)), "lora_e": rng.normal(size=3),
                 "lora_b": rng.normal(size=(3, 7))} for i in range(2)}
  terms = []
  for e in t.values():
    q, p = e["lora_a"].T, e["lora_b"].T  # Q (r, in), P (out, r)
    terms += [np.linalg.norm(q @ q.T - np.eye(3)), np.linalg.norm(p.T @ p - np.eye(3))]
  np.testing.assert_allclose(
      float(orthogonal_penalty(jax.tree.map(jnp.asarray, t))), np.mean(terms), rtol=1e-5)


def test_init_matches_peft_distribution():
  torch.manual_seed(0)
  lin = torch.nn.Sequential(torch.nn.Linear(64, 32))
  model = peft.get_peft_model(lin, peft.AdaLoraConfig(
      init_r=8, target_r=4, lora_alpha=ALPHA, target_modules=["0"], total_step=10))
  lay = model.base_model.model[0]
  params = {"0": {"kernel": jnp.zeros((64, 32))}}
  trainable, frozen = adalora(8, ALPHA, r"0/kernel").init(params, jax.random.key(0))
  e = trainable["0/kernel"]
  np.testing.assert_array_equal(np.asarray(e["lora_e"]), 0.0)
  np.testing.assert_array_equal(lay.lora_E["default"].detach().numpy(), 0.0)
  for ours, ref in ((e["lora_a"], lay.lora_A["default"]), (e["lora_b"], lay.lora_B["default"])):
    assert ours.shape == tuple(ref.shape)[::-1]
    ref = ref.detach().numpy().ravel()
    assert scipy.stats.ks_2samp(np.asarray(ours).ravel(), ref).pvalue > 1e-3
  # Zero lambda: the effective weight is the base weight.
  np.testing.assert_array_equal(np.asarray(adalora(8, ALPHA, r"0/kernel").apply(
      trainable, frozen)["0"]["kernel"]), 0.0)


def test_find_triplets_and_bad_arguments():
  t = {"a": {"lora_a": jnp.ones((2, 1)), "lora_e": jnp.ones(1), "lora_b": jnp.ones((1, 2))},
       "head": jnp.ones(3)}
  assert find_triplets(t) == ["a"]
  with pytest.raises(ValueError, match="no lora_b"):
    find_triplets({"a": {"lora_a": jnp.ones((2, 1)), "lora_e": jnp.ones(1)}})
  with pytest.raises(ValueError, match="no AdaLoRA triplet"):
    orthogonal_penalty({"w": jnp.ones(2)})
  with pytest.raises(ValueError, match="init_rank=0"):
    adalora(0, 1.0, ".*")
  with pytest.raises(ValueError, match="alpha=0"):
    adalora(2, 0, ".*")
