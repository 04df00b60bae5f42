"""Parity of Bone / MiSS (default, bat, mini) with PEFT's MiSS (torch, CPU, float32).

``miss_block`` is stored in PEFT's layout, so adapter values copy over unchanged; base
weights are transposed (torch ``W`` (out, in) -> Flax kernel ``W.T``).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from reweight.reparam.bone import bone

TOL = dict(rtol=1e-5, atol=1e-5)


class Net(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.fc1 = torch.nn.Linear(12, 8)
    self.fc2 = torch.nn.Linear(8, 8)

  def forward(self, x):
    return self.fc2(torch.tanh(self.fc1(x)))


def jax_forward(params, x):
  h = jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
  return h @ params["fc2"]["kernel"] + params["fc2"]["bias"]


def to_jax_params(net):
  return {name: {"kernel": jnp.asarray(getattr(net, name).weight.detach().numpy().T),
                 "bias": jnp.asarray(getattr(net, name).bias.detach().numpy())}
          for name in ("fc1", "fc2")}


CASES = [
    # (mode, r, mini_r): r=5 does not divide in=12 (PEFT pads the input); bat needs r | in, out.
    ("default", 4, None),
    ("default", 5, None),
    ("bat", 4, None),
    ("bat", 2, None),
    ("mini", 4, 2),
    ("mini", 5, 4),
]


@pytest.mark.parametrize("mode,r,mini_r", CASES)
def test_miss_matches_peft(mode, r, mini_r):
  torch.manual_seed(0)
  net = Net()
  params = to_jax_params(net)
  init_weights = {"default": True, "bat": "bat", "mini": "mini"}[mode]
  config = peft.MissConfig(r=r, target_modules=["fc1", "fc2"], init_weights=init_weights,
                           **({"mini_r": mini_r} if mini_r else {}))
  model = peft.get_peft_model(copy.deepcopy(net), config)
  rp = bone(r, r"fc[12]/kernel", mode=mode, mini_r=mini_r)
  trainable, frozen = rp.init(params, jax.random.key(0))
  # Same shapes and zero init as PEFT.
  for name in ("fc1", "fc2"):
    ref = getattr(model.base_model.model, name).miss_block["default"]
    assert trainable[f"{name}/kernel"]["miss_block"].shape == tuple(ref.shape)
    np.testing.assert_array_equal(np.asarray(trainable[f"{name}/kernel"]["miss_block"]), 0.0)
    np.testing.assert_array_equal(ref.detach().numpy(), 0.0)
  # Random non-zero blocks in both.
  rng = np.random.default_rng(0)
  with torch.no_grad():
    for name in ("fc1", "fc2"):
      ref = getattr(model.base_model.model, name).miss_block["default"]
      ref.copy_(torch.from_numpy(rng.normal(size=tuple(ref.shape)).astype(np.float32) * 0.3))
      trainable[f"{name}/kernel"]["miss_block"] = jnp.asarray(ref.detach().numpy())

  x = rng.normal(size=(5, 12)).astype(np.float32)
  c = rng.normal(size=(5, 8)).astype(np.float32)
  out = model(torch.from_numpy(x))
  (out * torch.from_numpy(c)).sum().backward()
  eff = rp.apply(trainable, frozen)
  np.testing.assert_allclose(
      np.asarray(jax_forward(eff, jnp.asarray(x))), out.detach().numpy(), **TOL)

  def loss(t):
    return jnp.sum(jnp.asarray(c) * jax_forward(rp.apply(t, frozen), jnp.asarray(x)))

  grads = jax.jit(jax.grad(loss))(trainable)
  for name in ("fc1", "fc2"):
    ref = getattr(model.base_model.model, name).miss_block["default"]
    np.testing.assert_allclose(
        np.asarray(grads[f"{name}/kernel"]["miss_block"]), ref.grad.numpy(), **TOL)
  # Effective weights: PEFT's own merge.
  merged = copy.deepcopy(model).merge_and_unload()
  for name in ("fc1", "fc2"):
    np.testing.assert_allclose(
        np.asarray(eff[name]["kernel"]), getattr(merged, name).weight.detach().numpy().T, **TOL)


def test_bat_block_formula_numpy():
  # W'_ij = W_ij (I + B_i) + B_i on r x r blocks of torch-layout W (out, in).
  rng = np.random.default_rng(0)
  r, fan_in, fan_out = 2, 4, 6
  w = rng.normal(size=(fan_out, fan_in)).astype(np.float32)
  blk = rng.normal(size=(fan_out // r, r, r)).astype(np.float32)
  ref = w.copy()
  for i in range(fan_out // r):
    for j in range(fan_in // r):
      wij = w[i * r:(i + 1) * r, j * r:(j + 1) * r]
      ref[i * r:(i + 1) * r, j * r:(j + 1) * r] = wij @ (np.eye(r) + blk[i]) + blk[i]
  rp = bone(r, "w", mode="bat")
  out = rp.apply({"w": {"miss_block": jnp.asarray(blk)}}, {"w": jnp.asarray(w.T)})["w"]
  np.testing.assert_allclose(np.asarray(out), ref.T, **TOL)


def test_bad_arguments():
  with pytest.raises(ValueError, match="mode='lora'"):
    bone(2, ".*", mode="lora")
  with pytest.raises(ValueError, match="mini_r=None"):
    bone(2, ".*", mode="mini")
  with pytest.raises(ValueError, match="mini_r=2 is only used"):
    bone(2, ".*", mini_r=2)
  with pytest.raises(ValueError, match="divide in=6 and out=4"):
    bone(4, "w", mode="bat").init({"w": jnp.ones((6, 4))}, jax.random.key(0))
  with pytest.raises(ValueError, match="mini_r=3 must divide out=4"):
    bone(2, "w", mode="mini", mini_r=3).init({"w": jnp.ones((6, 4))}, jax.random.key(0))
  with pytest.raises(ValueError, match="rank=7 must be <= in_features=6"):
    bone(7, "w").init({"w": jnp.ones((6, 4))}, jax.random.key(0))
