"""Load-balancing loss and router z-loss: NumPy re-derivation over the global batch, every
layout (1 device, jit-sharded, shard_map, pmap), the two-pass micro-batched form, and the
top-k MoE block of the Transformer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reweight import testing
from reweight.load_balancing import (
    LoadBalancingStats,
    add_stats,
    load_balancing,
    load_balancing_from_stats,
    load_balancing_stats,
    router_z_loss,
)
from reweight.train import models


def numpy_lbl(probs, index, num_experts, mask=None):
  """``N_E sum_i f_i p_i`` over the (valid) tokens, f_i = slot fraction, p_i = mean prob."""
  probs = np.asarray(probs, np.float64).reshape(-1, num_experts)
  index = np.asarray(index).reshape(probs.shape[0], -1)
  keep = np.ones(len(probs), bool) if mask is None else np.asarray(mask, bool).reshape(-1)
  probs, index = probs[keep], index[keep]
  counts = np.array([(index == i).sum() for i in range(num_experts)], np.float64)
  f = counts / index.size
  p = probs.mean(axis=0)
  return num_experts * float(np.sum(f * p))


def numpy_z(logits, mask=None):
  logits = np.asarray(logits, np.float64)
  logits = logits.reshape(-1, logits.shape[-1])
  keep = np.ones(len(logits), bool) if mask is None else np.asarray(mask, bool).reshape(-1)
  m = logits.max(-1, keepdims=True)
  z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
  return float(np.mean(z[keep] ** 2))


def route(logits, k):
  probs = jax.nn.softmax(logits, axis=-1)
  return probs, jax.lax.top_k(probs, k)[1]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_numpy(k, masked):
  rng = np.random.default_rng(k)
  e = 5
  logits = jnp.asarray(rng.normal(size=(4, 7, e)) * 2, jnp.float32)  # [B, T, E] tokens
  mask = jnp.asarray(rng.random((4, 7)) > 0.3) if masked else None
  probs, index = route(logits, k)
  value = load_balancing(probs, index, e, mask=mask)
  np.testing.assert_allclose(value, numpy_lbl(probs, index, e, mask), rtol=1e-5)
  # jit, the micro scope without an axis (one device: the same tokens), and the stats.
  jitted = jax.jit(lambda p, i, m: load_balancing(p, i, e, mask=m))(probs, index, mask)
  np.testing.assert_allclose(jitted, value, rtol=1e-6)
  np.testing.assert_allclose(load_balancing(probs, index, e, mask=mask, scope="micro"),
                             value, rtol=1e-6)
  stats = load_balancing_stats(probs, index, e, mask=mask)
  np.testing.assert_allclose(stats.counts.sum(), k * stats.tokens)
  np.testing.assert_allclose(load_balancing_from_stats(stats, e), value, rtol=1e-6)


def test_top1_index_without_k_axis_and_even_load():
  probs = jnp.full((6, 3), 1 / 3)
  index = jnp.array([0, 1, 2, 0, 1, 2])
  assert abs(float(load_balancing(probs, index, 3)) - 1.0) < 1e-6
  # All tokens on one expert with probability one: N_E.
  assert abs(float(load_balancing(jax.nn.one_hot(jnp.zeros(4, int), 3), jnp.zeros(4, int),
                                  3)) - 3.0) < 1e-6


def test_masked_tokens_do_not_matter_even_if_non_finite():
  rng = np.random.default_rng(0)
  probs, index = route(jnp.asarray(rng.normal(size=(8, 4)), jnp.float32), 2)
  mask = jnp.arange(8) < 5
  bad = probs.at[6].set(jnp.nan)
  g = jax.grad(lambda p: load_balancing(p, index, 4, mask=mask))(bad)
  np.testing.assert_allclose(load_balancing(bad, index, 4, mask=mask),
                             load_balancing(probs[:5], index[:5], 4), rtol=1e-6)
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[5:] == 0)
  # No valid tokens: zero, finite.
  assert float(load_balancing(probs, index, 4, mask=jnp.zeros(8, bool))) == 0.0
  assert float(router_z_loss(jnp.full((3, 4), jnp.inf), mask=jnp.zeros(3, bool))) == 0.0


def test_gradient_flows_through_probabilities_only():
  """``f`` is a constant: the gradient w.r.t. probs is ``N_E f_i / T`` for every token."""
  rng = np.random.default_rng(1)
  probs, index = route(jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), 1)
  g = jax.grad(lambda p: load_balancing(p, index, 3))(probs)
  f = np.bincount(np.asarray(index[:, 0]), minlength=3) / 6
  np.testing.assert_allclose(g, np.broadcast_to(3 * f / 6, (6, 3)), rtol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_z_loss_equals_numpy(masked):
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(3, 5, 4)) * 3, jnp.float32)
  mask = jnp.asarray(rng.random((3, 5)) > 0.4) if masked else None
  np.testing.assert_allclose(router_z_loss(logits, mask=mask), numpy_z(logits, mask),
                             rtol=1e-5)


def test_bad_arguments():
  probs, index = jnp.full((4, 3), 1 / 3), jnp.zeros((4, 1), int)
  with pytest.raises(ValueError, match="scope"):
    load_balancing(probs, index, 3, scope="local")
  with pytest.raises(ValueError, match="num_experts=4"):
    load_balancing(probs, index, 4)
  with pytest.raises(ValueError, match="expert_index has shape"):
    load_balancing(probs, jnp.zeros((3, 1), int), 3)
  with pytest.raises(ValueError, match="integer"):
    load_balancing(probs, jnp.zeros((4, 1)), 3)
  with pytest.raises(ValueError, match="mask has shape"):
    load_balancing(probs, index, 3, mask=jnp.ones(3, bool))
  with pytest.raises(ValueError, match="mask has shape"):
    router_z_loss(probs, mask=jnp.ones(3, bool))
  with pytest.raises(ValueError, match=r"expected \(2,\)"):
    load_balancing_from_stats(load_balancing_stats(probs, index, 3), 2)
  with pytest.raises(ValueError, match="at least one"):
    add_stats()


def _domain_batch(num_micro=8, per_micro=2, t=6, d=6, e=4, seed=0):
  """Token features whose domain (one per micro-batch) decides the preferred expert."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(e, d)) * 3
  domain = np.arange(num_micro) % e
  x = centers[domain][:, None, None, :] + rng.normal(size=(num_micro, per_micro, t, d))
  mask = rng.random((num_micro, per_micro, t)) > 0.25  # uneven valid tokens per micro-batch
  w = rng.normal(size=(d, e)) * 0.3 + centers.T * 0.2
  return (jnp.asarray(x, jnp.float32), jnp.asarray(mask), jnp.asarray(w, jnp.float32))


def test_two_pass_microbatched_step_equals_global_and_micro_differs():
  """Summed statistics (two passes) give the global loss and gradient exactly; the mean of
  per-micro-batch losses (what frameworks compute) is a different, larger loss."""
  xs, masks, w = _domain_batch()
  e, k = w.shape[1], 2

  def router(w, x):
    return route(x @ w, k)

  def global_loss(w):  # the whole global batch at once
    probs, index = router(w, xs)
    return load_balancing(probs, index, e, mask=masks)

  ref, ref_grad = jax.value_and_grad(global_loss)(w)
  np.testing.assert_allclose(ref, numpy_lbl(*router(w, xs), e, masks), rtol=1e-5)

  # Pass 1: statistics of every micro-batch (forward only), summed.
  stats = jax.lax.map(lambda a: load_balancing_stats(*router(w, a[0]), e, mask=a[1]),
                      (xs, masks))
  total = LoadBalancingStats(*(s.sum(0) for s in stats))
  np.testing.assert_allclose(load_balancing_from_stats(total, e), ref, rtol=1e-5)
  manual = add_stats(*(jax.tree.map(lambda s, i=i: s[i], stats) for i in range(len(xs))))
  np.testing.assert_allclose(manual.counts, total.counts, rtol=1e-6)

  # Pass 2: per micro-batch, the gradient of its share; accumulated.
  def share(w, x, mask):
    return load_balancing_from_stats(load_balancing_stats(*router(w, x), e, mask=mask), e,
                                     total=total)

  share_grad = jax.jit(jax.value_and_grad(share))
  value, grad = 0.0, jnp.zeros_like(w)
  for x, mask in zip(xs, masks, strict=True):
    v, g = share_grad(w, x, mask)
    value, grad = value + v, grad + g
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)

  # The frameworks' form: mean over micro-batches of per-micro-batch losses.
  micro = float(jnp.mean(jax.lax.map(
      lambda a: load_balancing(*router(w, a[0]), e, mask=a[1], scope="micro"), (xs, masks))))
  assert micro > float(ref) + 0.1, (micro, float(ref))


def test_moe_block_outputs_and_routing():
  moe = models.MoEFeedForward(8, num_experts=4, k=2, hidden=16, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (3, 5, 8))
  graphdef, state = nnx.split(moe)
  y, r = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
  assert y.shape == (3, 5, 8)
  assert r.logits.shape == r.probs.shape == (3, 5, 4)
  assert r.expert_index.shape == r.gates.shape == (3, 5, 2)
  # y = sum_j g_j FFN_{e_j}(x), checked token by token against a direct computation.
  x0 = np.asarray(x[1, 2], np.float64)
  want = np.zeros(8)
  erf = np.vectorize(math.erf)
  for g, i in zip(np.asarray(r.gates[1, 2]), np.asarray(r.expert_index[1, 2]), strict=True):
    h = x0 @ np.asarray(moe.w1[i]) + np.asarray(moe.b1[i])
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # exact GELU
    want += g * (h @ np.asarray(moe.w2[i]) + np.asarray(moe.b2[i]))
  np.testing.assert_allclose(y[1, 2], want, rtol=1e-4, atol=1e-5)
  probs = np.asarray(r.probs)
  np.testing.assert_allclose(r.gates, -np.sort(-probs, -1)[..., :2], rtol=1e-6)
  np.testing.assert_allclose(np.take_along_axis(probs, np.asarray(r.expert_index), -1),
                             r.gates, rtol=1e-6)
  normalized = models.MoEFeedForward(8, 4, 2, normalize_gates=True, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(normalized.route(x).gates.sum(-1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="k=5"):
    models.MoEFeedForward(8, 4, 5, rngs=nnx.Rngs(0))


def _functional(**kw):
  """`models.functional` of a Transformer, initialised under jit (eager init is slow)."""
  make = lambda: models.make_model("transformer", seed=0, **kw)  # noqa: E731
  abstract = models.functional(nnx.eval_shape(make))
  return abstract._replace(params=jax.jit(lambda: models.functional(make()).params)())


def test_transformer_moe_option_trains_router():
  kw = dict(vocab_size=13, d_model=8, num_heads=2, num_layers=2, max_len=6)
  dense = models.functional(nnx.eval_shape(lambda: models.make_model("transformer", **kw)))
  assert "router" not in str(jax.tree_util.tree_structure(dense.params))
  tokens = jax.random.randint(jax.random.key(1), (4, 6), 0, 13)
  _, none = jax.eval_shape(models.apply_with_routing, dense, dense.params, tokens)
  assert none == ()
  fn = _functional(num_experts=4, experts_per_token=2, expert_hidden=16, **kw)
  assert fn.params["blocks"][0]["mlp"]["router"]["kernel"].shape == (8, 4)
  assert fn.params["blocks"][1]["mlp"]["w1"].shape == (4, 8, 16)
  mask = jnp.arange(6)[None, :] < jnp.array([6, 3, 5, 2])[:, None]

  def loss(params, aux_weight):
    logits, routing = models.apply_with_routing(fn, params, tokens)
    ce = jnp.mean(optax_ce(logits[:, :-1], tokens[:, 1:]))
    aux = sum(load_balancing(r.probs, r.expert_index, 4, mask=mask)
              + 1e-3 * router_z_loss(r.logits, mask=mask) for r in routing)
    return ce + aux_weight * aux, (logits, routing)

  @jax.jit
  def run(params):
    (value, (logits, routing)), grads = jax.value_and_grad(loss, has_aux=True)(params, 0.01)
    # The task loss alone reaches the router through the gates, and the aux loss alone too.
    task = jax.grad(lambda p: loss(p, 0.0)[0])(params)
    aux = jax.grad(lambda p: loss(p, 1.0)[0] - loss(p, 0.0)[0])(params)
    return value, logits, routing, grads, task, aux, fn.apply(params, tokens)

  value, logits, routing, grads, task, aux, plain = run(fn.params)
  assert logits.shape == (4, 6, 13) and len(routing) == 2 and np.isfinite(value)
  np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-6)
  for i in range(2):
    assert np.abs(grads["blocks"][i]["mlp"]["router"]["kernel"]).max() > 0
    assert np.abs(grads["blocks"][i]["mlp"]["w1"]).max() > 0
  for g in (task, aux):
    assert np.abs(g["blocks"][0]["mlp"]["router"]["kernel"]).max() > 1e-8
  with pytest.raises(ValueError, match="experts_per_token"):
    models.make_model("transformer", num_experts=2, experts_per_token=3, **kw)


def optax_ce(logits, labels):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)[..., 0]


SHARDING_CODE = '''
import json, numpy as np, jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from reweight import parallel, testing
from reweight.load_balancing import (load_balancing, load_balancing_from_stats,
                                     load_balancing_stats, router_z_loss)

rng = np.random.default_rng(0)
B, T, D, E, K = 16, 5, 6, 4, 2
batch = {"x": rng.normal(size=(B, T, D)).astype(np.float32),
         "mask": rng.random((B, T)) > 0.2}
params = {"w": jnp.asarray(rng.normal(size=(D, E)), jnp.float32)}

def router(p, b):
  logits = b["x"] @ p["w"]
  probs = jax.nn.softmax(logits, -1)
  return logits, probs, jax.lax.top_k(probs, K)[1]

def make(kind):
  def make_loss(axis_name):
    def f(p, b):
      logits, probs, index = router(p, b)
      if kind == "lbl":
        loss = load_balancing(probs, index, E, mask=b["mask"], axis_name=axis_name)
      elif kind == "lbl_nomask":
        loss = load_balancing(probs, index, E, axis_name=axis_name)
      elif kind == "stats":
        loss = load_balancing_from_stats(load_balancing_stats(
            probs, index, E, mask=b["mask"], axis_name=axis_name), E)
      else:
        loss = router_z_loss(logits, mask=b["mask"], axis_name=axis_name)
      return loss, probs
    return f
  return make_loss

res = {k: testing.differences(testing.loss_layouts(make(k), params, batch))
       for k in ("lbl", "lbl_nomask", "stats", "z")}
logits, probs, index = router(params, batch)
res["values"] = {"lbl": float(make("lbl")(None)(params, batch)[0]),
                 "z": float(make("z")(None)(params, batch)[0])}
res["probs"] = np.asarray(probs).tolist()
res["index"] = np.asarray(index).tolist()
res["logits"] = np.asarray(logits).tolist()
res["mask"] = batch["mask"].tolist()

# scope="micro": per device inside shard_map (averaged over devices); global view under jit.
mesh = parallel.make_mesh()
def micro(p, b):
  _, probs, index = router(p, b)
  return load_balancing(probs, index, E, mask=b["mask"], axis_name="data", scope="micro")
res["micro_shard_map"] = float(jax.jit(jax.shard_map(
    micro, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))(params, batch))
sharded = parallel.shard_batch(batch, mesh)
res["micro_jit"] = float(jax.jit(lambda p, b: load_balancing(
    *router(p, b)[1:], E, mask=b["mask"], scope="micro"))(params, sharded))
res["devices"] = len(jax.devices())
print(json.dumps(res))
'''


@pytest.fixture(scope="module")
def sharding_results():
  return testing.run_with_devices(SHARDING_CODE, num_devices=8)


@pytest.mark.multidevice
def test_equal_on_every_layout_and_equal_to_numpy(sharding_results):
  res = dict(sharding_results)
  assert res.pop("devices") == 8
  values = res.pop("values")
  probs, index = np.asarray(res.pop("probs")), np.asarray(res.pop("index"))
  logits, mask = np.asarray(res.pop("logits")), np.asarray(res.pop("mask"))
  micro_shard_map, micro_jit = res.pop("micro_shard_map"), res.pop("micro_jit")
  # Value, gradient and router probabilities agree (1e-6) on 1 device, jit over 8 devices,
  # shard_map (check_vma=True) and pmap.
  testing.assert_layouts_agree(res)
  np.testing.assert_allclose(values["lbl"], numpy_lbl(probs, index, 4, mask), rtol=1e-5)
  np.testing.assert_allclose(values["z"], numpy_z(logits, mask), rtol=1e-5)
  # The frameworks' micro form: the mean of the 8 devices' own losses, not the global one.
  per_device = [numpy_lbl(probs[s:s + 2], index[s:s + 2], 4, mask[s:s + 2])
                for s in range(0, 16, 2)]
  np.testing.assert_allclose(micro_shard_map, np.mean(per_device), rtol=1e-5)
  np.testing.assert_allclose(micro_jit, values["lbl"], rtol=1e-5)
  assert abs(micro_shard_map - values["lbl"]) > 1e-3
