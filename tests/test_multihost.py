"""Two processes x 4 CPU devices train exactly like one process x 8 devices.

`reweight.main` with ``--coordinator_address/--num_processes/--process_id`` on loopback
(gloo collectives), against the same command on one process with 8 forced CPU devices:
the metrics trajectory and the final train state of a sample (loss-based), a meta (L2RW)
and a group (Group DRO) weighting agree to 1e-5 relative, the runs end (no hang: every
process is killed after a time limit and the test fails with its log), and only process 0
prints the table.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import scaling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40
ARGS = ["--config=configs/scaling.py", f"--config.steps={STEPS}", "--config.eval_every=20",
        "--config.checkpoint_every=20"]
TIMEOUT = 300  # seconds per job; a hang fails the test instead of blocking CI


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def _main(workdir, extra=()) -> list[str]:
  return [sys.executable, "-m", "reweight.main", *ARGS, f"--workdir={workdir}", *extra]


def _finish(procs, logs):
  """Waits for every process; kills all and fails with the logs on a hang or an error."""
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail("a process did not finish in time (hang?):\n" +
                "\n".join(open(f).read()[-3000:] for f in logs))
  for p, f in zip(procs, logs):
    assert p.returncode == 0, open(f).read()[-5000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("multihost")
  one, two = base / "one", base / "two"
  log_one = str(base / "one.log")
  procs = [subprocess.Popen(_main(one), cwd=ROOT, env=_env(8), stdout=open(log_one, "w"),
                            stderr=subprocess.STDOUT)]
  _finish(procs, [log_one])
  port = _free_port()
  logs = [str(base / f"two{k}.log") for k in range(2)]
  procs = [subprocess.Popen(
      _main(two, [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                  f"--process_id={k}"]),
      cwd=ROOT, env=_env(4), stdout=open(logs[k], "w"), stderr=subprocess.STDOUT)
      for k in range(2)]
  _finish(procs, logs)
  return one, two, [open(f).read() for f in [log_one, *logs]]


def _rows(workdir, method):
  with open(workdir / "runs" / method / "seed0" / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def _state(workdir, method):
  path = str(workdir / "runs" / method / "seed0" / "checkpoints" / str(STEPS) / "state")
  checkpointer = ocp.StandardCheckpointer()
  meta = checkpointer.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        meta)
  return jax.tree.map(np.asarray, checkpointer.restore(path, target))


def _assert_close(a, b, path=""):
  """Equal structure, equal ints, floats within 1e-5 relative (to the leaf's scale)."""
  if isinstance(a, dict):
    assert a.keys() == b.keys(), (path, a.keys(), b.keys())
    for k in a:
      _assert_close(a[k], b[k], f"{path}/{k}")
    return
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, path
  scale = max(float(np.max(np.abs(a), initial=0.0)), 1e-6)
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale, err_msg=path)


@pytest.mark.multidevice
@pytest.mark.parametrize("method", list(scaling.get_config().methods))
def test_two_processes_match_one(runs, method):
  one, two, _ = runs
  rows_one, rows_two = _rows(one, method), _rows(two, method)
  assert [r["step"] for r in rows_one] == [20, 40] == [r["step"] for r in rows_two]
  for r1, r2 in zip(rows_one, rows_two):
    _assert_close(r1, r2, f"{method} step {r1['step']}")
  s1, s2 = _state(one, method), _state(two, method)
  assert jax.tree.structure(s1) == jax.tree.structure(s2)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s1), jax.tree.leaves(s2)):
    _assert_close(a, b, f"{method} {jax.tree_util.keystr(path)}")


@pytest.mark.multidevice
def test_only_process_zero_reports(runs):
  one, two, (log_single, log_p0, log_p1) = runs
  for log in (log_single, log_p0):
    assert "| method |" in log
  assert "| method |" not in log_p1
  assert sorted(os.listdir(two)) == sorted(os.listdir(one))
  assert open(one / "table.md").read() == open(two / "table.md").read()
