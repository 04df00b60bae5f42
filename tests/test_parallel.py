"""Mesh helpers and axis-aware reductions (multi-device parts run in a subprocess)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import reweight
from reweight import parallel, testing


def test_reductions_single_device():
  x = jnp.array([1.0, 5.0, -2.0, 4.0])
  where = jnp.array([True, False, True, True])
  assert float(parallel.batch_sum(x, where=where)) == 3.0
  assert float(parallel.batch_max(x, where=where)) == 4.0
  assert float(parallel.batch_min(x, where=where)) == -2.0
  assert float(parallel.batch_mean(x, where=where)) == 1.0
  assert float(parallel.batch_mean(x, where=jnp.zeros(4, bool))) == 0.0
  np.testing.assert_array_equal(parallel.segment_sum(x, jnp.array([0, 1, 0, 1]), 3),
                                [-1.0, 9.0, 0.0])


def test_make_mesh_errors():
  with pytest.raises(ValueError, match="num_devices=99 is not in"):
    parallel.make_mesh(99)
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match="cannot shard an array of shape \\(\\)"):
    parallel.shard_batch({"x": np.float32(1.0)}, mesh)


CODE = """
import json, numpy as np, jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from reweight import parallel
mesh = parallel.make_mesh()
rng = np.random.default_rng(0)
x = rng.normal(size=64).astype(np.float32)
where = rng.random(64) > 0.5
seg = rng.integers(0, 3, 64)
g = parallel.shard_batch({"x": x, "w": where, "s": seg}, mesh)
def local(b):
  return (parallel.batch_sum(b["x"], "data", where=b["w"]),
          parallel.batch_max(b["x"], "data", where=b["w"]),
          parallel.batch_min(b["x"], "data", where=b["w"]),
          parallel.batch_mean(b["x"], "data", where=b["w"]),
          parallel.segment_sum(b["x"], b["s"], 3, "data"))
out = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P()))(g)
try:
  parallel.shard_batch({"x": np.zeros(12)}, mesh)
  err = ""
except ValueError as e:
  err = str(e)
print(json.dumps({"out": [np.asarray(o).tolist() for o in out],
                  "sharding": str(g["x"].sharding.spec), "ndev": len(mesh.devices.flat),
                  "err": err}))
"""


@pytest.mark.multidevice
def test_reductions_under_shard_map_match_numpy():
  res = testing.run_with_devices(CODE, 8)
  rng = np.random.default_rng(0)
  x = rng.normal(size=64).astype(np.float32)
  where = rng.random(64) > 0.5
  seg = rng.integers(0, 3, 64)
  s, mx, mn, mean, segs = res["out"]
  np.testing.assert_allclose(s, x[where].sum(), rtol=1e-5)
  assert mx == pytest.approx(x[where].max()) and mn == pytest.approx(x[where].min())
  np.testing.assert_allclose(mean, x[where].mean(), rtol=1e-5)
  np.testing.assert_allclose(segs, [x[seg == k].sum() for k in range(3)], rtol=1e-5, atol=1e-6)
  assert res["ndev"] == 8 and "data" in res["sharding"]
  assert "divisible by 8" in res["err"]


# The shard_map convention (global-batch semantics): inside jax.shard_map with JAX's default
# check_vma=True, value_and_grad of reweight.weighted(f, w, axis_name="data") is the global
# loss and the global gradient on every device, with no psum written by the user; under pmap
# (and check_vma=False) the loss is global and the gradients are psum-ed.
RECIPE_CODE = """
import json, numpy as np, jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import reweight
from reweight import parallel
from reweight.group import group_dro
from reweight.sample.meta import l2rw

rng = np.random.default_rng(0)
B = 64
batch = {"x": rng.normal(size=(B, 5)).astype(np.float32),
         "y": rng.integers(0, 3, B).astype(np.int32), "mask": rng.random(B) > 0.2,
         "group": rng.integers(0, 4, B).astype(np.int32)}
meta = {"x": rng.normal(size=(8, 5)).astype(np.float32),
        "y": rng.integers(0, 3, 8).astype(np.int32)}
params = {"w": (rng.normal(size=(5, 3)) * 0.5).astype(np.float32),
          "b": np.zeros(3, np.float32)}

def per_example(p, b):
  logits = b["x"] @ p["w"] + p["b"]
  return reweight.losses.softmax_cross_entropy(logits, b["y"]), {"logits": logits}

makers = {
    "loss_based": lambda axis_name=None: reweight.sample.loss_based(
        "linupper", r=0.5, axis_name=axis_name),
    "l2rw": lambda axis_name=None: l2rw(0.1, axis_name=axis_name),
    "group_dro": lambda axis_name=None: group_dro(4, 0.3, axis_name=axis_name),
}
mesh = parallel.make_mesh()
n = len(jax.devices())
split = lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:])
SPECS = dict(in_specs=(P(), P("data"), P(), P()),
             out_specs=(P(), P(), P(), P("data"), P()))

def compare(ref, out):
  # loss, grads, state, weights: absolute; diagnostics (ess ~ B): relative.
  exact = lambda r: jax.tree.leaves(r[:4])
  diffs = [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
           for a, b in zip(exact(ref), exact(out)) if np.size(a)]
  rel = float(abs(float(out[4]) - float(ref[4])) / abs(float(ref[4])))
  return {"abs": max(diffs), "ess_rel": rel}

res = {}
for name, make in makers.items():
  state0 = make().init()

  def step(p, b, s, m, w_axis, axis, make=make):
    fn = reweight.weighted(per_example, make(axis_name=w_axis), axis_name=axis)
    (loss, (s, info)), g = jax.value_and_grad(fn, has_aux=True)(p, b, s, meta_batch=m)
    return loss, g, s, info["weights"], info["ess"]

  def pmap_step(p, b, s, m):  # the pmap (and check_vma=False) recipe: psum the gradients
    loss, g, s, w, ess = step(p, b, s, m, None, "data")
    return loss, jax.lax.psum(g, "data"), s, w, ess

  ref = jax.jit(lambda p, b, s, m: step(p, b, s, m, None, None))(params, batch, state0, meta)
  out = {}
  for w_axis in (None, "data"):  # the weighting inherits weighted's axis_name, or repeats it
    fn = jax.shard_map(lambda p, b, s, m, w_axis=w_axis: step(p, b, s, m, w_axis, "data"),
                       mesh=mesh, **SPECS)
    out[f"shard_map/weighting_axis={w_axis}"] = compare(
        ref, jax.jit(fn)(params, batch, state0, meta))
  fn = jax.shard_map(pmap_step, mesh=mesh, check_vma=False, **SPECS)
  out["shard_map/check_vma=False"] = compare(ref, jax.jit(fn)(params, batch, state0, meta))
  loss, g, s, w, ess = jax.pmap(lambda b: pmap_step(params, b, state0, meta),
                                axis_name="data")(jax.tree.map(split, batch))
  first = lambda t: jax.tree.map(lambda x: x[0], t)
  out["pmap"] = compare(ref, (loss[0], first(g), first(s), w.reshape(-1), ess[0]))
  res[name] = out
  if name == "loss_based":  # a user psum of the gradients under check_vma counts them n times
    def double(p, b, s, m):
      loss, g, s, w, ess = step(p, b, s, m, None, "data")
      return loss, jax.lax.psum(g, "data"), s, w, ess
    g2 = jax.jit(jax.shard_map(double, mesh=mesh, **SPECS))(params, batch, state0, meta)[1]
    res["psum_ratio"] = float(g2["b"][0] / ref[1]["b"][0])
res["devices"] = n
print(json.dumps(res))
"""


@pytest.mark.multidevice
def test_weighted_shard_map_recipe_matches_one_device():
  res = testing.run_with_devices(RECIPE_CODE, 8)
  assert res.pop("devices") == 8
  assert res.pop("psum_ratio") == pytest.approx(8.0, rel=1e-5)
  assert sorted(res) == ["group_dro", "l2rw", "loss_based"]
  for name, modes in res.items():
    assert sorted(modes) == ["pmap", "shard_map/check_vma=False",
                             "shard_map/weighting_axis=None", "shard_map/weighting_axis=data"]
    for mode, d in modes.items():
      assert d["abs"] <= 1e-6 and d["ess_rel"] <= 1e-6, (name, mode, d)


def _mesh_1d():
  return parallel.make_mesh(1)


def _per_example(p, b):
  return (b["x"] * p) ** 2


def _shard_map_loss(weighting, axis_name, mesh=None):
  mesh = mesh or _mesh_1d()
  fn = reweight.weighted(_per_example, weighting, axis_name=axis_name)

  def step(p, b, s):
    (loss, (s, _)), g = jax.value_and_grad(fn, has_aux=True)(p, b, s)
    return loss, g

  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data"), P()),
                               out_specs=(P(), P())))


def test_weighted_axis_name_inherited_or_mismatch_is_an_error():
  batch = {"x": jnp.arange(4.0)}
  lb = lambda axis_name=None: reweight.sample.loss_based("upper", r=1.0, axis_name=axis_name)
  ref = jax.value_and_grad(lambda p: reweight.weighted(_per_example, lb())(
      p, batch, lb().init())[0])(jnp.float32(0.5))
  for weighting in (lb(), lb("data"), lb(("data",))):  # inherited, same, same as a tuple
    out = _shard_map_loss(weighting, "data")(jnp.float32(0.5), batch, weighting.init())
    np.testing.assert_allclose(out, ref, rtol=1e-6)
  with pytest.raises(ValueError, match="axis_name='batch' does not match the batch axis 'data'"):
    _shard_map_loss(lb("batch"), "data")(jnp.float32(0.5), batch, lb().init())
  for weighting in (lb(), lb("data")):  # the silent 8x: axis_name on the weighting only
    with pytest.raises(ValueError, match="vary over the mesh axes \\['data'\\].*pass axis_na"):
      _shard_map_loss(weighting, None)(jnp.float32(0.5), batch, lb().init())
  with pytest.raises(ValueError, match="axis_name='data' does not match the batch axis None"):
    jax.jit(reweight.weighted(_per_example, lb("data")))(jnp.float32(0.5), batch, lb().init())
  with pytest.raises(ValueError, match="axis_name='data' does not match the batch axis None"):
    jax.pmap(lambda b: reweight.weighted(_per_example, lb("data"))(
        jnp.float32(0.5), b, lb().init())[0], axis_name="data")({"x": jnp.ones((1, 4))})
  # The batch must be sharded over every axis it is reduced over.
  mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  with pytest.raises(ValueError, match="also names \\['model'\\], over which they are replic"):
    _shard_map_loss(lb(), ("data", "model"), mesh)(jnp.float32(0.5), batch, lb().init())


def test_axis_helpers():
  assert parallel.axis_tuple(None) == () and parallel.axis_tuple("a") == ("a",)
  assert parallel.axis_tuple(["a", "b"]) == ("a", "b")
  assert parallel.varying_axes(jnp.ones(3)) == frozenset()
  assert not parallel.is_typed(jnp.ones(3), "data") and not parallel.is_typed(jnp.ones(3), None)
  tree = {"a": jnp.ones(2)}
  assert parallel.psum_partials(tree, None, typed=False) is tree
  assert parallel.global_sum(tree, None, typed=True) is tree
  with parallel.batch_axis("data"):
    assert parallel.resolve_axis_name(None) == "data"
    assert parallel.resolve_axis_name(("data",)) == ("data",)
    with parallel.batch_axis(None):
      assert parallel.resolve_axis_name(None) is None
    assert parallel.resolve_axis_name(None) == "data"
  assert parallel.resolve_axis_name(None) is None
