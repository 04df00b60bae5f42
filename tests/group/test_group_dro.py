"""group_dro against a NumPy port of the authors' LossComputer, gradients, sharding, errors.

`ReferenceLossComputer` re-states ``LossComputer.compute_group_avg`` and
``compute_robust_loss`` of github kohpangwei/group_DRO (``loss.py``) in NumPy, line for line,
including its in-place ``adjusted_loss += ...`` (which also changes ``group_loss``) and its
"adjust only if every entry of adj is positive" rule.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reweight
from reweight import testing
from reweight.group import group_dro
from reweight.train import state as state_lib
from reweight.train.step import make_train_step


class ReferenceLossComputer:
  """The robust-loss part of the reference, in float64 NumPy."""

  def __init__(self, n_groups, step_size, adj=None, group_counts=None):
    self.n_groups = n_groups
    self.step_size = step_size
    self.adj = np.zeros(n_groups) if adj is None else np.asarray(adj, np.float64)
    self.group_counts = None if group_counts is None else np.asarray(group_counts, np.float64)
    self.adv_probs = np.ones(n_groups) / n_groups

  def compute_group_avg(self, losses, group_idx):
    group_map = (group_idx == np.arange(self.n_groups)[:, None]).astype(np.float64)
    group_count = group_map.sum(1)
    group_denom = group_count + (group_count == 0)
    group_loss = (group_map @ losses.reshape(-1)) / group_denom
    return group_loss, group_count

  def compute_robust_loss(self, group_loss, group_count):
    adjusted_loss = group_loss  # the same array, as in the reference
    if np.all(self.adj > 0):
      adjusted_loss += self.adj / np.sqrt(self.group_counts)
    self.adv_probs = self.adv_probs * np.exp(self.step_size * adjusted_loss)
    self.adv_probs = self.adv_probs / self.adv_probs.sum()
    return group_loss @ self.adv_probs, self.adv_probs

  def loss(self, per_sample_losses, group_idx):
    group_loss, group_count = self.compute_group_avg(per_sample_losses, group_idx)
    return self.compute_robust_loss(group_loss, group_count)


def regression_batches(steps=24, n=40, d=5, groups=4, seed=0):
  """Batches of a linear regression whose groups differ in noise; some steps miss groups."""
  rng = np.random.default_rng(seed)
  out = []
  for t in range(steps):
    g = rng.integers(0, groups, n).astype(np.int32)
    if t % 3 == 1:  # group 3 absent
      g = np.where(g == 3, 0, g)
    if t % 5 == 2:  # only groups 0 and 2
      g = np.where(g % 2 == 1, g - 1, g)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.arange(1.0, d + 1) + (1 + g) * rng.normal(size=n)).astype(np.float32)
    out.append({"x": x, "y": y, "group": g, "mask": rng.random(n) > 0.15})
  return out


def squared_losses(params, batch):
  return (batch["x"] @ params - batch["y"]) ** 2


@pytest.mark.parametrize("adjusted", [False, True])
def test_matches_reference_step_for_step(adjusted):
  """probs, weights, loss and gradient over 24 steps with absent groups and a mask."""
  counts = np.array([500.0, 300.0, 60.0, 20.0])
  adj = np.array([1.0, 2.0, 0.5, 3.0]) if adjusted else None
  eta = 0.05
  ref = ReferenceLossComputer(4, eta, adj, counts)
  weighting = group_dro(4, eta, adjustment=adj, group_counts=counts if adjusted else None)
  loss_fn = jax.jit(jax.value_and_grad(reweight.weighted(squared_losses, weighting),
                                       has_aux=True))
  theta = np.linspace(-1.0, 1.0, 5)
  state = weighting.init()
  for batch in regression_batches():
    (loss, (state, info)), grad = loss_fn(jnp.asarray(theta, jnp.float32), batch, state)
    m = batch["mask"]
    x, y, g = batch["x"][m].astype(np.float64), batch["y"][m].astype(np.float64), batch[
        "group"][m]
    per_sample = (x @ theta - y) ** 2
    robust, q = ref.loss(per_sample, g)
    np.testing.assert_allclose(state.probs, q, rtol=1e-5, atol=1e-7)
    present = np.bincount(g, minlength=4) > 0
    unadjusted = ref.compute_group_avg(per_sample, g)[0]
    # Our loss is the reference's over the groups present, renormalized (module docstring).
    np.testing.assert_allclose(loss, unadjusted @ q / q[present].sum(), rtol=1e-5)
    if present.all() and not adjusted:
      np.testing.assert_allclose(loss, robust, rtol=1e-5)
    if present.all() and adjusted:  # the reference's in-place add puts adj in its loss
      np.testing.assert_allclose(loss, robust - q @ (adj / np.sqrt(counts)), rtol=1e-4)
    # Gradient of sum_g q_g mean_{i in g} l_i, renormalized over present groups.
    n_g = np.bincount(g, minlength=4)
    dl = 2 * (x @ theta - y)[:, None] * x
    expected = sum(q[k] * dl[g == k].sum(0) / n_g[k] for k in range(4) if n_g[k])
    np.testing.assert_allclose(grad, expected / q[present].sum(), rtol=1e-4, atol=1e-4)
    # Weights: q_g / n_g, mean one over the valid examples.
    raw = q[batch["group"]] / np.maximum(np.bincount(g, minlength=4)[batch["group"]], 1)
    expected_w = np.where(m, raw, 0) / np.where(m, raw, 0).sum() * m.sum()
    np.testing.assert_allclose(info["weights"], expected_w, rtol=1e-5, atol=1e-6)
    theta = theta - 0.01 * np.asarray(grad, np.float64)


def test_loss_is_q_weighted_group_mean_when_all_present():
  losses = jnp.array([1.0, 2.0, 4.0, 8.0, 16.0, 0.5])
  groups = jnp.array([0, 0, 1, 2, 2, 2])
  w = group_dro(3, 0.3)
  weights, state = w.update(losses, w.init(), groups=groups)
  q = np.asarray(state.probs, np.float64)
  group_means = np.array([1.5, 4.0, 8.5 / 3 * 1.0 + 0.0])
  group_means[2] = (8.0 + 16.0 + 0.5) / 3
  np.testing.assert_allclose(np.mean(np.asarray(weights) * np.asarray(losses)),
                             q @ group_means, rtol=1e-6)
  assert np.argmax(q) == 2  # the worst group gains weight


def test_step_size_schedule_and_zero_step():
  losses, groups = jnp.array([1.0, 3.0]), jnp.array([0, 1])
  w = group_dro(2, step_size=0.0)
  weights, state = w.update(losses, w.init(), groups=groups)
  np.testing.assert_allclose(state.probs, [0.5, 0.5])
  np.testing.assert_allclose(weights, [1.0, 1.0])
  sched = optax.linear_schedule(0.0, 1.0, 10)
  w = group_dro(2, step_size=sched)
  _, state = w.update(losses, w.init(), groups=groups, step=5)
  e = np.exp(0.5 * np.array([1.0, 3.0]))
  np.testing.assert_allclose(state.probs, e / e.sum(), rtol=1e-6)


def test_bad_input():
  w = group_dro(3)
  with pytest.raises(ValueError, match=r"group ids span \[0, 3\], outside \[0, num_groups=3\)"):
    w.update(jnp.ones(2), w.init(), groups=jnp.array([0, 3]))
  with pytest.raises(ValueError, match="needs the groups= extra"):
    w.update(jnp.ones(2), w.init())
  with pytest.raises(ValueError, match="groups has shape"):
    w.update(jnp.ones(2), w.init(), groups=jnp.array([0, 1, 2]))
  with pytest.raises(ValueError, match="num_groups=0 must be an integer >= 1"):
    group_dro(0)
  with pytest.raises(ValueError, match="needs group_counts"):
    group_dro(2, adjustment=1.0)
  with pytest.raises(ValueError, match="must be 2 positive counts"):
    group_dro(2, adjustment=1.0, group_counts=[3, 0])
  with pytest.raises(ValueError, match="step_size=-1"):
    group_dro(2, step_size=-1)


@pytest.mark.parametrize("name", ["group_dro", "doremi"])
def test_microbatched_step_equals_full_batch(name):
  """Global-batch group weights survive gradient accumulation (DoReMi too, with ref_losses)."""
  batch = regression_batches(1, n=32)[0]
  weighting = group_dro(4, 0.5) if name == "group_dro" else reweight.group.doremi(4)
  ref_losses = np.random.default_rng(3).exponential(size=32).astype(np.float32)
  opt = optax.adam(1e-2)

  def per_example(params, b, *, key=None):
    del key
    return squared_losses(params["w"], b)

  params = {"w": jnp.linspace(-1.0, 1.0, 5)}
  full = jax.jit(make_train_step(per_example, weighting, opt))
  micro = jax.jit(make_train_step(per_example, weighting, opt, microbatches=4))
  s_full = s_micro = state_lib.create(params, opt, weighting, jax.random.PRNGKey(0))
  for _ in range(3):
    s_full, m_full = full(s_full, batch, ref_losses=ref_losses)
    s_micro, m_micro = micro(s_micro, batch, ref_losses=ref_losses)
    np.testing.assert_allclose(m_micro["weights"], m_full["weights"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m_micro["probs"], m_full["probs"], rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(s_micro, s_full, rtol=1e-5, atol=1e-6)


CODE = """
import json, numpy as np, jax, jax.numpy as jnp, reweight
from reweight import testing
from reweight.group import doremi, group_dro
rng = np.random.default_rng(0)
losses = rng.exponential(size=64).astype(np.float32)
groups = rng.integers(0, 5, 64).astype(np.int32)
groups[groups == 4] = 3  # group 4 absent
ref = (losses * rng.uniform(0.5, 1.5, 64)).astype(np.float32)
mask = rng.random(64) > 0.2
counts = [100, 50, 20, 10, 5]
makers = {
    "group_dro": lambda axis_name=None: group_dro(5, 0.3, axis_name=axis_name),
    "group_dro_adjusted": lambda axis_name=None: group_dro(
        5, 0.3, adjustment=2.0, group_counts=counts, axis_name=axis_name),
    "doremi": lambda axis_name=None: doremi(5, 1.0, 1e-3, axis_name=axis_name),
}
res = {}
for name, make in makers.items():
  out = testing.layouts(make, losses, mask=mask, steps=3,
                        per_example={"groups": groups, "ref_losses": ref})
  res[name] = testing.differences(out)
batch = {"x": rng.normal(size=(64, 5)).astype(np.float32),
         "y": rng.integers(0, 3, 64).astype(np.int32), "group": groups, "mask": mask,
         "ref": ref}
params = {"w": rng.normal(size=(5, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
def per_example(p, b):
  losses = reweight.losses.softmax_cross_entropy(b["x"] @ p["w"] + p["b"], b["y"])
  return losses, {"ref_losses": b["ref"]}
for name in ("group_dro", "doremi"):
  out = testing.gradient_layouts(makers[name], per_example, params, batch)
  res[name + "/grad"] = testing.differences(out)
# shard_map under JAX's default check_vma=True: weights and state as in one device.
from jax.sharding import PartitionSpec as P
mesh = reweight.parallel.make_mesh()
check_vma = {}
for name, make in makers.items():
  def local(l, m, g, r, state, make=make):
    return make(axis_name="data").update(l, state, mask=m, groups=g, ref_losses=r)
  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"),) * 4 + (P(),),
                             out_specs=(P("data"), P())))
  w, st = fn(losses, mask, groups, ref, make().init())
  w1, st1 = make().update(jnp.asarray(losses), make().init(), mask=jnp.asarray(mask),
                          groups=jnp.asarray(groups), ref_losses=jnp.asarray(ref))
  check_vma[name] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                        for a, b in zip(jax.tree.leaves((w, st)), jax.tree.leaves((w1, st1))))
res["check_vma"] = check_vma
print(json.dumps(res))
"""


@pytest.mark.multidevice
def test_sharding_layouts_agree():
  """group_dro and doremi: weights, state and gradients in all four layouts, and inside
  shard_map with check_vma=True."""
  res = testing.run_with_devices(CODE, 8)
  check_vma = res.pop("check_vma")
  assert sorted(check_vma) == ["doremi", "group_dro", "group_dro_adjusted"]
  assert max(check_vma.values()) <= 1e-6, check_vma
  testing.assert_layouts_agree(res)
