"""Sharded parameters (FSDP): a ``data:4,fsdp:2`` mesh gives the numbers of one device.

Params, optimizer state, weighting state and reparam state are split on ``fsdp``
(`parallel.shard_params`), the batch on ``("data", "fsdp")``; the code is global-view under
`jax.jit`, so only the layout changes. Each case runs in a subprocess with 8 CPU devices and
compares every number of the run (final state, history, last-epoch weights) with the same
run on a 1-device mesh: each value must be within 1e-6 absolute or 1e-5 relative.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from reweight import parallel, testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL, RTOL = 1e-6, 1e-5


def test_parse_mesh_spec():
  assert parallel.parse_mesh_spec("data:4,fsdp:2", 8) == (("data", 4), ("fsdp", 2))
  assert parallel.parse_mesh_spec("data,fsdp:2", 8) == (("data", 4), ("fsdp", 2))
  assert parallel.parse_mesh_spec("data:-1", 8) == (("data", 8),)
  assert parallel.parse_mesh_spec(None, 3) == (("data", 3),)
  assert parallel.parse_mesh_spec("fsdp:2", 8) == (("fsdp", 2),)
  for bad, match in [("data:4,model:2", "unknown axis 'model'"), ("data:x", "not an integer"),
                     ("data:0", "must be >= 1"), ("data,fsdp", "more than one axis"),
                     ("data:2,data:2", "appears twice"), ("data:4,fsdp:4", "needs 16 devices"),
                     ("data,fsdp:3", "do not divide")]:
    with pytest.raises(ValueError, match=match) as e:
      parallel.parse_mesh_spec(bad, 8)
    assert repr(bad) in str(e.value) and "'data:4,fsdp:2'" in str(e.value)


def test_fsdp_spec_and_single_device_mesh():
  P = jax.sharding.PartitionSpec
  assert parallel.fsdp_spec((64, 256), 2) == P(None, "fsdp")
  assert parallel.fsdp_spec((256, 64), 2) == P("fsdp")
  assert parallel.fsdp_spec((6, 6), 2) == P("fsdp")  # ties: the first
  assert parallel.fsdp_spec((3, 4), 4) == P(None, "fsdp")
  assert parallel.fsdp_spec((3, 5), 2) == P() and parallel.fsdp_spec((), 2) == P()
  assert parallel.fsdp_spec((8, 4), 1) == P()
  mesh = parallel.make_mesh_from_spec("")
  assert mesh.axis_names == ("data",) and mesh.size == len(jax.devices())
  assert parallel.batch_sharding(mesh).spec == P("data")


# One run per (case, mesh) through `loop.train` (the trainer's placement and jitted step),
# EVA through `state.create(..., data=...)` and the step directly (the loop takes no EVA data).
EQUALITY = """
import json, warnings, numpy as np, jax, jax.numpy as jnp, optax, reweight
from reweight import parallel
from reweight.train import loop, state as state_lib
from reweight.train.step import classification_loss, make_train_step
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
def data(n):
  return {"x": rng.normal(size=(n, 8)).astype(np.float32),
          "label": rng.integers(0, 4, n).astype(np.int32), "id": np.arange(n, dtype=np.int32),
          "group": rng.integers(0, 4, n).astype(np.int32)}
train, test, meta = data(96), data(64), data(16)
params = {"l1": {"kernel": rng.normal(size=(8, 16)).astype(np.float32) / 3,
                 "bias": np.zeros(16, np.float32)},
          "l2": {"kernel": rng.normal(size=(16, 4)).astype(np.float32) / 4,
                 "bias": np.zeros(4, np.float32)}}
def apply(p, x, train=False, key=None):
  return jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"]) @ p["l2"]["kernel"] + p["l2"]["bias"]
per_example = classification_loss(apply)
adam = optax.adam(1e-2)
meta_kw = {"meta_batch": {"x": meta["x"], "label": meta["label"]}}
R, O = reweight.reparam, reweight.optim
CASES = {
  "uniform": dict(weighting=reweight.uniform()),
  "loss_based": dict(weighting=reweight.sample.loss_based("linupper", 0.5)),
  "class_balanced": dict(weighting=reweight.sample.class_balanced(
      np.bincount(train["label"], minlength=4).tolist(), 0.99)),
  "group_dro": dict(weighting=reweight.group.group_dro(4, 0.1)),
  "l2rw": dict(weighting=reweight.sample.l2rw(0.1), loss_kwargs=meta_kw),
  "meta_weight_net": dict(weighting=reweight.sample.meta_weight_net(16), loss_kwargs=meta_kw),
  "lora": dict(reparam=R.lora(2, 4.0, ".*kernel")),
  "pissa": dict(reparam=R.lora(2, 4.0, ".*kernel", init="pissa")),
  "adalora": dict(reparam=R.adalora(4, 8.0, ".*kernel"), optimizer=optax.chain(
      adam, O.adalora_budget(4, 4, 2, tinit=0, tfinal=1, delta_t=1)), steps=4),
  "bone": dict(reparam=R.bone(4, ".*kernel")),
  "adamp": dict(weighting=reweight.sample.loss_based("upper", 1.0), optimizer=O.adamp(1e-2)),
  "sgdp": dict(optimizer=O.sgdp(0.1, momentum=0.9, nesterov=True)),
}
def run(case, spec):
  c = CASES[case]
  mesh = parallel.make_mesh_from_spec(spec)
  res = loop.train(apply_fn=apply, params=params, per_example_loss=per_example,
                   weighting=c.get("weighting", reweight.uniform()),
                   optimizer=c.get("optimizer", adam), train_ds=train, test_ds=test,
                   num_classes=4, steps=c.get("steps", 3), batch_size=32, seed=0,
                   eval_every=2, reparam=c.get("reparam"), loss_kwargs=c.get("loss_kwargs"),
                   mesh=mesh, progress=False)
  hist = [[v for k, v in sorted(r.items())] for r in res.history]
  return res.state, [res.state, hist, res.final_weights]
def run_eva(spec):
  mesh = parallel.make_mesh_from_spec(spec)
  xs = rng_eva.normal(size=(4, 32, 8)).astype(np.float32)
  inputs = [{"l1/kernel": x, "l2/kernel": np.tanh(x @ params["l1"]["kernel"])} for x in xs]
  rp = R.eva(2, 4.0, ".*kernel", tau=0.9)
  w = reweight.sample.loss_based("linupper", 0.5)
  st = state_lib.create(parallel.shard_params(params, mesh), adam, w, jax.random.PRNGKey(0),
                        reparam=rp, data=inputs)
  st = state_lib.place(st, mesh)
  step = loop.jit_train_step(make_train_step(per_example, w, adam, reparam=rp))
  init = jax.device_get(st.trainable)
  for _ in range(3):
    st, m = step(st, parallel.shard_batch({k: train[k][:32] for k in ("x", "label")}, mesh))
  return st, [init, st, m["weights"]]
def compare(a, b):
  la = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(a))]
  lb = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(b))]
  assert len(la) == len(lb) and all(x.shape == y.shape for x, y in zip(la, lb))
  ab = max(float(np.max(np.abs(x - y), initial=0)) for x, y in zip(la, lb))
  rel = max(float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-30), initial=0))
            for x, y in zip(la, lb))
  # worst element: within 1e-6 absolute OR 1e-5 relative <=> ratio <= 1
  ratio = max(float(np.max(np.minimum(np.abs(x - y) / 1e-6,
                                      np.abs(x - y) / np.maximum(np.abs(y), 1e-30) / 1e-5),
                           initial=0)) for x, y in zip(la, lb))
  return {"abs": ab, "rel": rel, "ratio": ratio, "leaves": len(la)}
def specs(state):
  return sorted({str(x.sharding.spec) for x in jax.tree.leaves(state)})
out = {}
for case in CASES_TO_RUN:
  if case == "eva":
    rng_eva = np.random.default_rng(1); _, one = run_eva("data:1")
    rng_eva = np.random.default_rng(1); st, two = run_eva("data:4,fsdp:2")
  else:
    _, one = run(case, "data:1")
    st, two = run(case, "data:4,fsdp:2")
  out[case] = compare(two, one)
  out[case]["trainable_specs"] = specs(st.trainable)
  out[case]["opt_specs"] = specs(st.opt_state)
  out[case]["frozen_specs"] = specs(st.frozen)
print(json.dumps(out))
"""

GROUPS = {
    "weightings": ["uniform", "loss_based", "class_balanced", "group_dro", "l2rw",
                   "meta_weight_net"],
    "reparams_and_projections": ["lora", "pissa", "eva", "adalora", "bone", "adamp", "sgdp"],
}


@pytest.mark.multidevice
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_fsdp_mesh_equals_one_device(group):
  res = testing.run_with_devices(f"CASES_TO_RUN = {GROUPS[group]!r}\n" + EQUALITY, 8)
  print(json.dumps({k: {m: v[m] for m in ("abs", "rel", "ratio")} for k, v in res.items()}))
  for case, r in res.items():
    assert r["ratio"] <= 1.0, (case, r)
    # The params (and, for an adaptive optimizer, its moments) are really split on fsdp.
    assert "P(None, 'fsdp')" in r["trainable_specs"] + r["frozen_specs"], (case, r)
    assert any("fsdp" in s for s in r["opt_specs"]) or case == "sgdp" and r["opt_specs"], (
        case, r)


# The README's main job, shortened, on 1 device and on a data:4,fsdp:2 mesh of 8 CPU devices.
CONFIG = """from configs import default


def get_config():
  c = default.get_config()
  c.methods = {k: v for k, v in c.methods.items() if k in ("ce", "loss_based/linupper")}
  c.methods["loss_based/linupper"]["weighting_kwargs"]["warmup_steps"] = 10
  return c
"""


def _main(config, workdir, devices, mesh):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  cmd = [sys.executable, "-m", "reweight.main", f"--config={config}", f"--workdir={workdir}",
         "--config.steps=40", "--config.eval_every=20", "--config.checkpoint_every=40",
         "--config.seeds=(0,)", f"--config.mesh={mesh}"]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.mark.multidevice
def test_main_job_on_fsdp_mesh_equals_one_device(tmp_path):
  from reweight.data import datasets
  datasets.load("digits", "train")  # built once here, not by both jobs at once
  config = tmp_path / "fsdp_job.py"
  config.write_text(CONFIG)
  procs = {"one": _main(config, tmp_path / "one", 1, "data"),
           "fsdp": _main(config, tmp_path / "fsdp", 8, "data:4,fsdp:2")}
  outs = {}
  try:
    for name, p in procs.items():
      out, err = p.communicate(timeout=300)
      assert p.returncode == 0, err[-3000:]
      outs[name] = out
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
  worst = 0.0
  for method in ("ce", "loss_based/linupper"):
    rows = {}
    for name in procs:
      with open(tmp_path / name / "runs" / method / "seed0" / "result.json") as f:
        rows[name] = json.load(f)
    hist_one, hist_fsdp = rows["one"]["history"], rows["fsdp"]["history"]
    assert [r["step"] for r in hist_one] == [r["step"] for r in hist_fsdp] == [20, 40]
    for a, b in zip(hist_one, hist_fsdp):
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=ATOL, err_msg=(method, k))
        worst = max(worst, float(np.max(np.abs(np.subtract(b[k], a[k])))))
    for k, v in rows["one"]["final_weights"].items():
      np.testing.assert_allclose(rows["fsdp"]["final_weights"][k], v, rtol=RTOL, atol=ATOL)
  print(f"main job: max abs difference of the metrics {worst:.3g}")
  assert outs["one"].split("\nplots: ")[0] == outs["fsdp"].split("\nplots: ")[0]
