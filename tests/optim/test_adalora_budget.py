"""AdaLoRA budget allocation: closed-form schedule, NumPy re-derivation, and PEFT parity."""

from __future__ import annotations

import copy
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import torch

from reweight.optim.adalora_budget import adalora_budget, budget_table
from reweight.reparam.adalora import adalora, orthogonal_penalty

TOL = dict(rtol=1e-5, atol=1e-6)


def closed_form_budget(t, total, b0, bt, tinit, tfinal):
  if t <= tinit:
    return b0
  if t >= total - tfinal:
    return bt
  return math.floor(bt + (b0 - bt) * (1 - (t - tinit) / (total - tfinal - tinit)) ** 3)


@pytest.mark.parametrize("total,b0,bt,tinit,tfinal", [(40, 24, 8, 5, 7), (300, 96, 0, 0, 0)])
def test_budget_table_closed_form(total, b0, bt, tinit, tfinal):
  table = budget_table(total, b0, bt, tinit, tfinal)
  assert table.shape == (total - tfinal + 1,)
  ref = [closed_form_budget(t, total, b0, bt, tinit, tfinal) for t in range(total - tfinal + 1)]
  # The closed form is evaluated in float64 like PEFT; the exact rational value may differ by
  # rounding only where the cubic term is an integer.
  np.testing.assert_array_equal(table, ref)
  assert table[0] == b0 and table[-1] == bt and np.all(np.diff(table) <= 0)


def random_tree(rng, r):
  tree = {f"l{i}/kernel": {"lora_a": rng.normal(size=(5, r)), "lora_e": rng.normal(size=r),
                           "lora_b": rng.normal(size=(r, 3))} for i in range(3)}
  tree["head"] = rng.normal(size=(3,))
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def test_matches_numpy_rederivation():
  total, r0, rt, tinit, tfinal, dt, lr, b1, b2 = 14, 4, 2, 2, 3, 2, 0.1, 0.85, 0.8
  rng = np.random.default_rng(0)
  params = random_tree(rng, r0)
  tx = optax.chain(optax.sgd(lr), adalora_budget(total, r0, rt, tinit, tfinal, dt, b1, b2))
  state = tx.init(params)
  # NumPy mirror.
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  names = [k for k in p if k != "head"]
  ema = {k: {n: np.zeros_like(p[k][n]) for n in p[k]} for k in names}
  unc = copy.deepcopy(ema)
  b0, bt, end = r0 * len(names), rt * len(names), total - tfinal
  keep = {k: np.ones(r0, bool) for k in names}
  masked_steps = 0
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, grads=g))
  for t in range(total):
    g = random_tree(rng, r0)
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    gn = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
    p = jax.tree.map(lambda x, y: x - lr * y, p, gn)
    if t < end:
      for k in names:
        for n in ("lora_a", "lora_e", "lora_b"):
          ipt = np.abs(p[k][n] * gn[k][n])
          ema[k][n] = b1 * ema[k][n] + (1 - b1) * ipt
          unc[k][n] = b2 * unc[k][n] + (1 - b2) * np.abs(ipt - ema[k][n])
    budget = closed_form_budget(t, total, b0, bt, tinit, tfinal)
    if (tinit < t < end and t % dt == 0) or t == end:
      scores = np.concatenate([
          ema[k]["lora_e"] * unc[k]["lora_e"]
          + (ema[k]["lora_a"] * unc[k]["lora_a"]).mean(axis=0)
          + (ema[k]["lora_b"] * unc[k]["lora_b"]).mean(axis=1) for k in names])
      drop = np.zeros(b0, bool)
      drop[np.argsort(scores)[:b0 - budget]] = True
      keep = dict(zip(names, np.split(~drop, len(names)), strict=True))
      masked_steps += 1
      assert sum(int(np.sum(np.asarray(state[1].keep[k]))) for k in names) == budget
    if (tinit < t < end and t % dt == 0) or t >= end:
      for k in names:
        p[k]["lora_e"] = np.where(keep[k], p[k]["lora_e"], 0.0)
    if t == end:
      ema = jax.tree.map(np.zeros_like, ema)
      unc = jax.tree.map(np.zeros_like, unc)
    assert int(state[1].budget) == budget
    for k in names:
      np.testing.assert_array_equal(np.asarray(state[1].keep[k]), keep[k])
      for n in ("lora_a", "lora_e", "lora_b"):
        np.testing.assert_allclose(np.asarray(params[k][n]), p[k][n], **TOL)
        np.testing.assert_allclose(np.asarray(state[1].exp_avg_ipt[k][n]), ema[k][n], **TOL)
        np.testing.assert_allclose(np.asarray(state[1].exp_avg_unc[k][n]), unc[k][n], **TOL)
    np.testing.assert_allclose(np.asarray(params["head"]), p["head"], **TOL)
  assert masked_steps == 5  # t = 4, 6, 8, 10 and the final allocation at t = 11.
  # The final phase keeps exactly target_rank * n triplets with lambda = 0 elsewhere.
  assert sum(int(np.sum(np.asarray(params[k]["lora_e"]) != 0)) for k in names) == bt


class Net(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.fc1 = torch.nn.Linear(12, 8)
    self.fc2 = torch.nn.Linear(8, 6)

  def forward(self, x, c):
    out = self.fc2(torch.tanh(self.fc1(x)))
    return types.SimpleNamespace(loss=(out * c).sum())


def jax_forward(params, x):
  h = jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
  return h @ params["fc2"]["kernel"] + params["fc2"]["bias"]


def test_matches_peft_rank_allocator_training():
  total, r0, rt, tinit, tfinal, dt, alpha, orth, lr = 12, 4, 2, 2, 3, 2, 8.0, 0.3, 0.05
  torch.manual_seed(0)
  net = Net()
  model = peft.get_peft_model(copy.deepcopy(net), peft.AdaLoraConfig(
      init_r=r0, target_r=rt, lora_alpha=alpha, target_modules=["fc1", "fc2"], total_step=total,
      tinit=tinit, tfinal=tfinal, deltaT=dt, orth_reg_weight=orth))
  tuner = model.base_model
  opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
  names = ("fc1", "fc2")
  layers = {n: getattr(tuner.model, n) for n in names}
  # Budget schedule of PEFT's RankAllocator.
  np.testing.assert_array_equal(
      budget_table(total, 2 * r0, 2 * rt, tinit, tfinal),
      [tuner.rankallocator.budget_schedule(t)[0] for t in range(total - tfinal + 1)])

  frozen = {n: {"kernel": jnp.asarray(getattr(net, n).weight.detach().numpy().T),
                "bias": jnp.asarray(getattr(net, n).bias.detach().numpy())} for n in names}
  rp = adalora(r0, alpha, r"fc[12]/kernel")

  def peft_trainable():
    return {f"{n}/kernel": {"lora_a": layers[n].lora_A["default"].detach().numpy().T,
                            "lora_e": layers[n].lora_E["default"].detach().numpy()[:, 0],
                            "lora_b": layers[n].lora_B["default"].detach().numpy().T}
            for n in names}

  trainable = jax.tree.map(jnp.asarray, peft_trainable())
  tx = optax.chain(optax.sgd(lr), adalora_budget(total, r0, rt, tinit, tfinal, dt))
  state = tx.init(trainable)

  def loss_fn(t, x, c):
    task = jnp.sum(c * jax_forward(rp.apply(t, frozen), x))
    return task + orth * orthogonal_penalty(t)

  @jax.jit
  def step(t, state, x, c):
    g = jax.grad(loss_fn)(t, x, c)
    updates, state = tx.update(g, state, t, grads=g)
    return optax.apply_updates(t, updates), state

  rng = np.random.default_rng(0)
  for t in range(total):
    x = rng.normal(size=(4, 12)).astype(np.float32)
    c = rng.normal(size=(4, 6)).astype(np.float32)
    tuner(torch.from_numpy(x), torch.from_numpy(c)).loss.backward()
    opt.step()
    tuner.update_and_allocate(t)
    opt.zero_grad()
    trainable, state = step(trainable, state, jnp.asarray(x), jnp.asarray(c))

    ref = peft_trainable()
    for k in ref:
      for n in ref[k]:
        np.testing.assert_allclose(np.asarray(trainable[k][n]), ref[k][n], rtol=1e-4, atol=1e-5)
    pattern = model.peft_config["default"].rank_pattern
    if pattern:
      for n in names:
        np.testing.assert_array_equal(
            np.asarray(state[1].keep[f"{n}/kernel"]),
            pattern[f"{n}.lora_E.default"])
    if t < total - tfinal:
      for n in names:
        np.testing.assert_allclose(
            np.asarray(state[1].exp_avg_ipt[f"{n}/kernel"]["lora_e"]),
            tuner.rankallocator.exp_avg_ipt[f"{n}.lora_E.default"]
            .numpy()[:, 0], rtol=1e-4, atol=1e-7)
  assert model.peft_config["default"].rank_pattern is not None
  assert sum(int(np.sum(np.asarray(state[1].keep[f"{n}/kernel"]))) for n in names) == 2 * rt


def test_bad_arguments_and_missing_grads():
  with pytest.raises(ValueError, match="tinit=5 must be < total_steps - tfinal"):
    adalora_budget(10, 4, 2, tinit=5, tfinal=5, delta_t=1)
  with pytest.raises(ValueError, match="target_rank=5 must be <= init_rank=4"):
    adalora_budget(10, 4, 5, tinit=0, tfinal=0, delta_t=1)
  with pytest.raises(ValueError, match="beta1=1.0"):
    adalora_budget(10, 4, 2, tinit=0, tfinal=0, delta_t=1, beta1=1.0)
  with pytest.raises(ValueError, match="delta_t=0"):
    adalora_budget(10, 4, 2, tinit=0, tfinal=0, delta_t=0)
  tx = adalora_budget(10, 2, 1, tinit=0, tfinal=0, delta_t=1)
  params = {"k": {"lora_a": jnp.ones((3, 2)), "lora_e": jnp.ones(2), "lora_b": jnp.ones((2, 3))}}
  state = tx.init(params)
  with pytest.raises(ValueError, match="keyword grads"):
    tx.update(params, state, params)
  with pytest.raises(ValueError, match="expected \\(3,\\) = init_rank"):
    adalora_budget(10, 3, 1, tinit=0, tfinal=0, delta_t=1).init(params)
