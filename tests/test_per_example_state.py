"""Per-example state sharded by example id: same numbers as replicated, N / D rows per device.

The tables indexed by example id (SAF's logit memory, the curriculum loss EMAs, an easiness
table) are placed with `reweight.parallel.shard_examples` (or the ``mesh=`` of their
constructors) on a mesh of 8 forced CPU devices and driven under `jax.jit` for several steps;
every value must equal the one-device run with a replicated table.
"""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from reweight import parallel, testing
from reweight.curriculum import scoring
from reweight.losses.saf import read_memory, saf_memory, update_memory

N, C, B, E, SPE, STEPS = 64, 5, 16, 2, 4, 12

CODE = f"""
import json
import jax, jax.numpy as jnp, numpy as np
import reweight
from jax.sharding import PartitionSpec as P
from reweight import parallel
from reweight.curriculum import scoring
from reweight.sample import hardness
from reweight.losses.saf import read_memory, saf_loss, saf_memory_writer

N, C, B, E, SPE, STEPS = {N}, {C}, {B}, {E}, {SPE}, {STEPS}
rng = np.random.default_rng(0)
x = rng.normal(size=(N, 4)).astype(np.float32)
y = rng.integers(0, C, N).astype(np.int32)
w0 = rng.normal(size=(4, C)).astype(np.float32)
plan = []  # each example once per epoch, a few rows masked
for epoch in range(STEPS // SPE):
  order = rng.permutation(N).astype(np.int32)
  for k in range(SPE):
    ids = order[k * B:(k + 1) * B]
    plan.append({{"x": x[ids], "y": y[ids], "id": ids, "mask": rng.random(B) > 0.1}})
losses = [rng.exponential(size=B).astype(np.float32) for _ in range(STEPS)]
mesh = parallel.make_mesh()
dev0 = jax.devices()[0]
res = {{"devices": len(jax.devices())}}


def per_example(w, batch, past, active):
  z = batch["x"] @ w
  return saf_loss(z, batch["y"], past, 5.0, 0.3, active, mask=batch["mask"]), {{"logits": z}}


def saf_run(sharded):
  writer = saf_memory_writer(N, C, steps_per_epoch=SPE, epochs_ago=E,
                             mesh=mesh if sharded else None)
  loss_fn = reweight.weighted(per_example, writer)

  @jax.jit
  def step(w, memory, batch, t):
    past, has_past = read_memory(memory, batch["id"], t // SPE)
    (loss, (memory, info)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        w, batch, memory, step=t, past=past, active=has_past)
    return w - 0.5 * g, memory, loss, jnp.sum(has_past)

  w, memory = jnp.asarray(w0), writer.init()
  if sharded:
    w = parallel.replicate(w, mesh)
  else:
    w, memory = jax.device_put((w, memory), dev0)
  trace = []
  for t, batch in enumerate(plan):
    batch = parallel.shard_batch(batch, mesh) if sharded else jax.device_put(batch, dev0)
    w, memory, loss, n_past = step(w, memory, batch, jnp.int32(t))
    trace.append([float(loss), int(n_past)])
  return trace, np.asarray(w), memory


def saf_shard_map_run():
  writer = saf_memory_writer(N, C, steps_per_epoch=SPE, epochs_ago=E, mesh=mesh)
  loss_fn = reweight.weighted(per_example, writer, axis_name="data")  # the writer inherits it

  def local(w, memory, batch, t):
    past, has_past = read_memory(memory, batch["id"], t // SPE, axis_name="data")
    (loss, (memory, info)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        w, batch, memory, step=t, past=past, active=has_past)
    return w - 0.5 * g, memory, loss, jax.lax.psum(jnp.sum(has_past), "data")

  rows = P(None, "data")
  step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), rows, P("data"), P()),
                               out_specs=(P(), rows, P(), P())))
  w, memory = parallel.replicate(jnp.asarray(w0), mesh), writer.init()
  trace = []
  for t, batch in enumerate(plan):
    w, memory, loss, n_past = step(w, memory, parallel.shard_batch(batch, mesh), jnp.int32(t))
    trace.append([float(loss), int(n_past)])
  return trace, np.asarray(w), memory


def compare(trace1, w1, mem1, trace8, w8, mem8):
  return {{
    "loss": float(np.max(np.abs(np.array(trace1)[:, 0] - np.array(trace8)[:, 0]))),
    "has_past_counts": [row[1] for row in trace8],
    "same_has_past": [row[1] for row in trace1] == [row[1] for row in trace8],
    "params": float(np.max(np.abs(w1 - w8))),
    "logits": float(np.max(np.abs(np.asarray(mem1.logits) - np.asarray(mem8.logits)))),
    "written_equal": bool(np.array_equal(np.asarray(mem1.written), np.asarray(mem8.written))),
    "filled": int((np.asarray(mem8.written) >= 0).sum()),
    "spec": [str(mem8.logits.sharding.spec), str(mem8.written.sharding.spec)],
    "shard_shape": list(mem8.logits.addressable_shards[0].data.shape),
    "shard_bytes": int(mem8.logits.addressable_shards[0].data.nbytes
                       + mem8.written.addressable_shards[0].data.nbytes),
  }}


single = saf_run(False)
res["saf"] = compare(*single, *saf_run(True))
res["saf_shard_map"] = compare(*single, *saf_shard_map_run())

update = jax.jit(lambda s, i, l, m: scoring.update_loss_ema(s, i, l, 0.8, m))
s1 = jax.device_put(scoring.init_loss_ema(N), dev0)
s8 = scoring.init_loss_ema(N, mesh=mesh)
for batch, l in zip(plan, losses):
  s1 = update(s1, *jax.device_put((batch["id"], l, batch["mask"]), dev0))
  s8 = update(s8, *parallel.shard_batch((batch["id"], l, batch["mask"]), mesh))


def ema_shard_map_run(spec):
  local = lambda s, i, l, m: scoring.update_loss_ema(s, i, l, 0.8, m, axis_name="data")
  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, P("data"), P("data"),
                                                           P("data")), out_specs=spec))
  state = scoring.init_loss_ema(N, mesh=mesh) if spec == P("data") else parallel.replicate(
      scoring.init_loss_ema(N), mesh)
  for batch, l in zip(plan, losses):
    state = fn(state, *parallel.shard_batch((batch["id"], l, batch["mask"]), mesh))
  return state


def compare_ema(s8):
  return {{
    "ema": float(np.max(np.abs(np.asarray(s1.ema) - np.asarray(s8.ema)))),
    "count_equal": bool(np.array_equal(np.asarray(s1.count), np.asarray(s8.count))),
    "seen": int((np.asarray(s8.count) > 0).sum()),
    "spec": [str(s8.ema.sharding.spec), str(s8.count.sharding.spec)],
    "shard_shape": list(s8.ema.addressable_shards[0].data.shape),
  }}


res["ema"] = compare_ema(s8)
res["ema_shard_map"] = compare_ema(ema_shard_map_run(P("data")))
res["ema_shard_map_replicated"] = compare_ema(ema_shard_map_run(P()))

table = rng.random(N).astype(np.float32)
constant = hardness.ease_curriculum(steps_per_epoch=SPE, m=3, easiness_table=table)
looked_up = hardness.ease_curriculum(steps_per_epoch=SPE, m=3)
ref = jax.jit(lambda l, i, m, t: constant.update(l, constant.init(), mask=m, step=t,
                                                 example_ids=i)[0])
run = jax.jit(lambda tab, l, i, m, t: looked_up.update(l, looked_up.init(), mask=m, step=t,
                                                       easiness=tab[i])[0])
sharded_table = parallel.shard_examples(table, mesh)
worst = 0.0
for t, (batch, l) in enumerate(zip(plan, losses)):
  a = ref(*jax.device_put((l, batch["id"], batch["mask"]), dev0), t)
  b = run(sharded_table, *parallel.shard_batch((l, batch["id"], batch["mask"]), mesh), t)
  worst = max(worst, float(np.max(np.abs(np.asarray(a) - np.asarray(b)))))
res["easiness"] = {{"weights": worst, "spec": str(sharded_table.sharding.spec),
                    "shard_shape": list(sharded_table.addressable_shards[0].data.shape)}}

try:
  parallel.shard_examples(jnp.zeros(N - 4), mesh)
  res["uneven"] = "no error"
except ValueError as e:
  res["uneven"] = str(e)
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def results():
  return testing.run_with_devices(CODE, num_devices=8)


@pytest.mark.multidevice
@pytest.mark.parametrize("layout", ["saf", "saf_shard_map"])
def test_saf_memory_sharded_by_id_matches_replicated(results, layout):
  """Under jax.jit (global view), and inside jax.shard_map with the memory on P(None, "data")."""
  assert results["devices"] == 8
  res = results[layout]
  # Each device holds N / 8 example ids of every ring slot: E (4 C + 4) N / 8 bytes.
  assert all(spec.endswith("(None, 'data')") for spec in res["spec"])
  assert res["shard_shape"] == [E, N // 8, C]
  assert res["shard_bytes"] == E * (4 * C + 4) * N // 8
  # The trajectory term is active from epoch E on, for every example seen E epochs ago.
  assert res["same_has_past"]
  assert res["has_past_counts"][:E * SPE] == [0] * (E * SPE)
  assert min(res["has_past_counts"][E * SPE:]) > 0
  assert res["written_equal"] and res["filled"] > N
  assert res["loss"] <= 1e-6 and res["params"] <= 1e-6 and res["logits"] <= 1e-6


@pytest.mark.multidevice
@pytest.mark.parametrize("layout", ["ema", "ema_shard_map"])
def test_loss_ema_sharded_by_id_matches_replicated(results, layout):
  """Under jax.jit (global view), and inside jax.shard_map with the state on P("data")."""
  res = results[layout]
  assert "'data'" in res["spec"][0] and "'data'" in res["spec"][1]
  assert res["shard_shape"] == [N // 8]
  assert res["count_equal"] and res["seen"] > N // 2  # a few rows are masked
  assert res["ema"] <= 1e-7


@pytest.mark.multidevice
def test_loss_ema_replicated_inside_shard_map_folds_in_the_global_batch(results):
  res = results["ema_shard_map_replicated"]
  assert res["shard_shape"] == [N]
  assert res["count_equal"] and res["seen"] > N // 2  # a few rows are masked
  assert res["ema"] <= 1e-7


@pytest.mark.multidevice
def test_sharded_easiness_table_matches_constant_table(results):
  res = results["easiness"]
  assert "'data'" in res["spec"] and res["shard_shape"] == [N // 8]
  assert res["weights"] <= 1e-6


@pytest.mark.multidevice
def test_uneven_table_is_a_clear_error(results):
  assert "round the number of examples" in results["uneven"]


def test_sharded_paths_on_a_one_device_mesh():
  """In this process (one device): the sharded read / write paths inside shard_map."""
  mesh = parallel.make_mesh(1)
  ids = jnp.array([3, 0, 5, 3], jnp.int32)
  logits = jnp.arange(8.0).reshape(4, 2)

  def step(memory, ema, ids, logits):
    memory = update_memory(memory, ids[:2], logits[:2], epoch=0, axis_name="data")
    past, has_past = read_memory(memory, ids, 1, axis_name="data")
    ema = scoring.update_loss_ema(ema, ids, logits[:, 0], 0.5, axis_name="data")
    return memory, ema, past, has_past

  memory = saf_memory(6, 2, mesh=mesh)
  ema = scoring.init_loss_ema(6, mesh=mesh)
  fn = jax.jit(jax.shard_map(step, mesh=mesh,
                             in_specs=(P(None, "data"), P("data"), P("data"), P("data")),
                             out_specs=(P(None, "data"), P("data"), P("data"), P("data"))))
  memory, ema, past, has_past = fn(memory, ema, ids, logits)
  ref_memory = update_memory(saf_memory(6, 2), ids[:2], logits[:2], epoch=0)
  ref_past, ref_has = read_memory(ref_memory, ids, 1)
  ref_ema = scoring.update_loss_ema(scoring.init_loss_ema(6), ids, logits[:, 0], 0.5)
  assert past.tolist() == ref_past.tolist() and has_past.tolist() == ref_has.tolist()
  assert has_past.tolist() == [True, True, False, True]
  assert memory.logits.tolist() == ref_memory.logits.tolist()
  assert ema.ema.tolist() == ref_ema.ema.tolist() and ema.count.tolist() == ref_ema.count.tolist()
