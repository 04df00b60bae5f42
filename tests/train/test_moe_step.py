"""The MoE step with global-batch load balancing (`reweight.train.moe_step`): micro-batched
two-pass loss and gradients equal the single-batch computation (NumPy value, JAX gradient of
an independently written full-batch objective), the micro scope is the mean of
per-micro-batch losses (its value in NumPy; its gradient in the 8-device test), and 8 CPU
devices (jit sharding, shard_map) agree."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import reweight
from reweight import testing
from reweight.load_balancing import load_balancing, router_z_loss
from reweight.train import models
from reweight.train.moe_step import make_moe_train_step, moe_value_and_grad
from reweight.train.state import create

E, K, ALPHA, BETA = 4, 2, 0.5, 0.01


class TwoLayerMoE(nnx.Module):
  """Token embedding, two residual top-2 MoE layers (the second routes on the first's
  output), a linear head: the routing of a Transformer's MoE blocks at a tiny compile cost."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(13, 8, rngs=rngs)
    self.moe1 = models.MoEFeedForward(8, 4, 2, 16, rngs=rngs)
    self.moe2 = models.MoEFeedForward(8, 4, 2, 16, rngs=rngs)
    self.head = nnx.Linear(8, 13, rngs=rngs)

  def __call__(self, x, *, train=False, rngs=None):
    h = self.embed(x)
    y1, r1 = self.moe1(h)
    y2, r2 = self.moe2(h + y1)
    return self.head(h + y1 + y2), (r1, r2)


def make_problem(seed):
  fn = models.functional(nnx.eval_shape(lambda: TwoLayerMoE(nnx.Rngs(seed))))
  params = jax.jit(lambda: models.functional(TwoLayerMoE(nnx.Rngs(seed))).params)()
  apply = fn.apply  # (initialised under jit: eager initialisation is slower)

  def loss_fn(p, b, *, key=None):
    logits, routing = apply(p, b["x"])
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, b["y"][..., None], -1)[..., 0], routing

  return apply, params, loss_fn


MODEL_CODE = inspect.getsource(TwoLayerMoE) + "\n\n" + inspect.getsource(make_problem)


def numpy_lbl(probs, index, mask):
  probs = np.asarray(probs, np.float64).reshape(-1, E)
  index = np.asarray(index).reshape(len(probs), -1)
  keep = np.asarray(mask, bool).reshape(-1)
  counts = np.array([(index[keep] == i).sum() for i in range(E)], np.float64)
  return E * float(np.sum(counts / counts.sum() * probs[keep].mean(0)))


def numpy_objective(logits, routing, y, mask, micro_groups=None):
  """Token-mean CE + ALPHA * sum_l LBL_l + BETA * sum_l z_l in float64 NumPy. With
  ``micro_groups`` (lists of sequence rows), LBL_l is the mean of the groups' own LBLs."""
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, np.asarray(y)[..., None], -1)[..., 0]
  mask = np.asarray(mask, bool)
  value = ce[mask].mean()
  for r in routing:
    probs, index = np.asarray(r.probs), np.asarray(r.expert_index)
    if micro_groups is None:
      value += ALPHA * numpy_lbl(probs, index, mask)
    else:
      value += ALPHA * np.mean([numpy_lbl(probs[g], index[g], mask[g]) for g in micro_groups])
    z = np.asarray(r.logits, np.float64)
    lse = z.max(-1) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))
    value += BETA * np.mean(lse[mask] ** 2)
  return value


@pytest.fixture(scope="module")
def problem():
  apply, params, loss_fn = make_problem(0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 13, (8, 7))
  lengths = np.array([6, 2, 5, 6, 1, 3, 6, 4])  # very different valid lengths
  batch = {"x": jnp.asarray(tokens[:, :-1], jnp.int32), "y": jnp.asarray(tokens[:, 1:]),
           "token_mask": jnp.asarray(np.arange(6)[None] < lengths[:, None])}
  return apply, params, batch, loss_fn


def reference_grad(apply, params, batch):
  """jax.grad of the objective written directly over the full batch (no micro-batching)."""
  def objective(params):
    logits, routing = apply(params, batch["x"])
    mask = batch["token_mask"]
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][..., None], -1)[..., 0]
    value = jnp.sum(jnp.where(mask, ce, 0)) / jnp.sum(mask)
    for r in routing:
      value += ALPHA * load_balancing(r.probs, r.expert_index, E, mask=mask)
      value += BETA * router_z_loss(r.logits, mask=mask)
    return value

  return jax.jit(jax.grad(objective))(params)


def run(loss_fn, params, batch, **kw):
  f = jax.jit(moe_value_and_grad(loss_fn, E, balance_coef=ALPHA, z_coef=BETA, **kw))
  (value, metrics), grads = f(params, batch)
  return float(value), jax.device_get(metrics), grads


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def numpy_counts(routing, mask):
  mask = np.asarray(mask, bool)
  return np.stack([[np.sum(np.asarray(r.expert_index)[mask] == i) for i in range(E)]
                   for r in routing])


def test_global_scope_microbatched_equals_single_batch(problem):
  """M = 4 (`make_moe_train_step`, SGD with lr 1: the update is minus the gradient): the
  NumPy value, the gradient of the directly written full-batch objective, the global expert
  counts. (M = 1 is checked in the 8-device test and the module's doctest.)"""
  apply, params, batch, loss_fn = problem
  logits, routing = jax.jit(apply)(params, batch["x"])
  want = numpy_objective(logits, routing, batch["y"], batch["token_mask"])
  want_grad = reference_grad(apply, params, batch)
  opt = optax.sgd(1.0)
  step = jax.jit(make_moe_train_step(loss_fn, opt, E, balance_coef=ALPHA, z_coef=BETA,
                                     microbatches=4))
  new, metrics = step(create(params, opt, reweight.uniform(), jax.random.key(0)), batch)
  assert int(new.step) == 1
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
  np.testing.assert_allclose(metrics["expert_counts"], numpy_counts(routing,
                                                                    batch["token_mask"]))
  assert float(metrics["tokens"]) == float(np.sum(batch["token_mask"]))
  assert_trees_close(jax.tree.map(jnp.subtract, params, new.trainable), want_grad)
  # The router really gets a balancing gradient (the check is not vacuous).
  assert np.abs(want_grad["moe2"]["router"]["kernel"]).max() > 1e-4


def test_micro_scope_is_the_mean_of_per_microbatch_losses_and_differs(problem):
  apply, params, batch, loss_fn = problem
  logits, routing = jax.jit(apply)(params, batch["x"])
  groups = [slice(i, i + 1) for i in range(8)]  # microbatches=8: one sequence each
  want = numpy_objective(logits, routing, batch["y"], batch["token_mask"], groups)
  value, metrics, _ = run(loss_fn, params, batch, microbatches=8, scope="micro")
  np.testing.assert_allclose(value, want, rtol=1e-5)
  mask = np.asarray(batch["token_mask"])
  global_lbl = sum(numpy_lbl(r.probs, r.expert_index, mask) for r in routing)
  assert metrics["balance_loss"] > global_lbl + 0.1


def test_bad_arguments(problem):
  _, params, batch, loss_fn = problem
  with pytest.raises(ValueError, match="scope"):
    moe_value_and_grad(loss_fn, E, scope="local")
  with pytest.raises(ValueError, match="microbatches"):
    moe_value_and_grad(loss_fn, E, microbatches=0)
  with pytest.raises(ValueError, match="balance_coef=-1"):
    moe_value_and_grad(loss_fn, E, balance_coef=-1.0)
  with pytest.raises(ValueError, match="split"):
    moe_value_and_grad(loss_fn, E, microbatches=3)(params, batch)


SHARDING_CODE = '''
import json, numpy as np, jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from flax import nnx
from reweight import parallel
from reweight.train import models
from reweight.train.moe_step import moe_value_and_grad

E = 4
''' + MODEL_CODE + '''
apply, params, loss_fn = make_problem(0)
rng = np.random.default_rng(1)
tokens = rng.integers(0, 13, (16, 7))
lengths = rng.integers(1, 7, 16)
batch = {"x": jnp.asarray(tokens[:, :-1], jnp.int32), "y": jnp.asarray(tokens[:, 1:]),
         "token_mask": jnp.asarray(np.arange(6)[None] < lengths[:, None])}

def pack(out):
  (value, metrics), grads = out
  flat = {"loss": value, "counts": metrics["expert_counts"], "balance": metrics["balance_loss"]}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    flat["grad" + jax.tree_util.keystr(path)] = g
  return {k: np.asarray(v).tolist() for k, v in flat.items()}

def vg(scope, m, axis_name=None):
  return moe_value_and_grad(loss_fn, E, balance_coef=0.5, z_coef=0.01, scope=scope,
                            microbatches=m, axis_name=axis_name)

mesh = parallel.make_mesh()
res = {"devices": len(jax.devices())}
res["single_m1"] = pack(jax.jit(vg("global", 1))(params, batch))
sharded = parallel.shard_batch(batch, mesh)
replicated = parallel.replicate(params, mesh)
res["jit_sharded_m2"] = pack(jax.jit(vg("global", 2))(replicated, sharded))
for scope in ("global", "micro"):
  f = jax.shard_map(vg(scope, 2, "data"), mesh=mesh, in_specs=(P(), P("data")),
                    out_specs=P())
  res[f"shard_map_{scope}_m2"] = pack(jax.jit(f)(params, batch))
# The same micro-batches (one sequence each) on one device.
res["single_micro_m16"] = pack(jax.jit(vg("micro", 16))(params, batch))
logits, routing = jax.jit(apply)(params, batch["x"])
res["probs"] = [np.asarray(r.probs).tolist() for r in routing]
res["index"] = [np.asarray(r.expert_index).tolist() for r in routing]
res["mask"] = np.asarray(batch["token_mask"]).tolist()
print(json.dumps(res))
'''


@pytest.mark.multidevice
def test_eight_devices_jit_sharded_and_shard_map_agree():
  res = testing.run_with_devices(SHARDING_CODE, num_devices=8)
  assert res["devices"] == 8
  ref = res["single_m1"]
  for layout in ("jit_sharded_m2", "shard_map_global_m2"):
    for key, want in ref.items():
      np.testing.assert_allclose(res[layout][key], want, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{layout} {key}")
  # shard_map, micro scope: 8 devices x 2 micro-batches of one sequence each; the balancing
  # term is the mean of the 16 sequences' own LBLs (NumPy), unlike the global one.
  mask = np.asarray(res["mask"], bool)
  micro = sum(np.mean([numpy_lbl(np.asarray(p)[b:b + 1], np.asarray(i)[b:b + 1], mask[b:b + 1])
                       for b in range(16)]) for p, i in zip(res["probs"], res["index"]))
  glob = sum(numpy_lbl(p, i, mask) for p, i in zip(res["probs"], res["index"]))
  np.testing.assert_allclose(res["shard_map_micro_m2"]["balance"], micro, rtol=1e-5)
  for key, want in res["single_micro_m16"].items():  # value, counts and gradient
    np.testing.assert_allclose(res["shard_map_micro_m2"][key], want, rtol=1e-5, atol=1e-6,
                               err_msg=f"micro {key}")
  np.testing.assert_allclose(ref["balance"], glob, rtol=1e-5)
  assert micro > glob + 0.1
