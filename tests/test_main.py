"""`python -m reweight.main` end to end: SIGTERM saves the run in progress and exits 143 with one
line; the same command then resumes and prints exactly the table of an uninterrupted run."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

from reweight.data import datasets
from reweight.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
METHODS = ("ce", "loss_based/extremes", "sce")
# configs/default.py with three of its methods (flags cannot remove entries of a dict field).
CONFIG = f"""from configs import default


def get_config():
  c = default.get_config()
  c.methods = {{k: v for k, v in c.methods.items() if k in {METHODS!r}}}
  return c
"""


def command(config, workdir):
  """The README's main job, shortened: 60 steps, one seed, three methods."""
  return [sys.executable, "-m", "reweight.main", f"--config={config}", f"--workdir={workdir}",
          f"--config.steps={STEPS}", "--config.eval_every=20", "--config.checkpoint_every=30",
          "--config.seeds=(0,)"]


def start(config, workdir):
  return subprocess.Popen(command(config, workdir), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(proc):
  """Waits for a job that should end by itself; its stdout."""
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return out


def table_of(stdout):
  """The printed header and table (before: dataset messages; after: the plots' paths)."""
  start = re.search(rf"^.*, {STEPS} steps, seeds \(0,\)$", stdout, re.M).start()
  return stdout[start:].split("\nplots: ")[0]


def read(path):
  with open(path) as f:
    return f.read()


def test_sigterm_saves_the_run_in_progress_and_the_rerun_ends_like_an_uninterrupted_one(
    tmp_path):
  datasets.load("digits", "train")  # built once here, not by both jobs at once
  config = tmp_path / "main_job.py"
  config.write_text(CONFIG)
  workdir = tmp_path / "preempted"
  uninterrupted = start(config, tmp_path / "straight")  # side by side, to save time
  proc = start(config, workdir)
  try:
    deadline = time.monotonic() + 240
    # Wait for the first checkpoint (orbax renames a finished one to its step number).
    while not glob.glob(str(workdir / "runs" / "*" / "seed0" / "checkpoints" / "[0-9]*")):
      assert proc.poll() is None, "the job ended before its first checkpoint"
      assert time.monotonic() < deadline, "no checkpoint appeared"
      time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    straight = finish(uninterrupted)
  finally:
    for p in (proc, uninterrupted):
      if p.poll() is None:
        p.kill()
  assert proc.returncode == loop.PREEMPTED_EXIT_CODE == 143, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  last = err.strip().splitlines()[-1]
  m = re.fullmatch(r"reweight\.main: preempted \(SIGTERM\) during (\S+)/seed0: saved at step "
                   rf"(\d+) of {STEPS} in (\S+); run the same command again to resume", last)
  assert m, last
  method, step, run_dir = m.group(1), int(m.group(2)), m.group(3)
  assert run_dir == str(workdir / "runs" / method / "seed0")
  # The run in progress was saved at the step it stopped at, and is not marked finished.
  assert os.path.isdir(os.path.join(run_dir, "checkpoints", str(step)))
  assert not os.path.exists(os.path.join(run_dir, "result.json"))
  assert "| ce |" not in out  # no table

  resumed = finish(start(config, workdir))
  assert table_of(resumed) == table_of(straight)
  for name in ["table.md", "summary.json"]:
    assert read(workdir / name) == read(tmp_path / "straight" / name)
  results = sorted(glob.glob(str(tmp_path / "straight" / "runs" / "**" / "result.json"),
                             recursive=True))
  assert len(results) == len(METHODS)
  for path in results:
    rel = os.path.relpath(path, tmp_path / "straight")
    assert read(workdir / rel) == read(path), rel  # histories and last-epoch weights
    metrics = os.path.join(os.path.dirname(rel), "metrics.jsonl")
    assert read(workdir / metrics) == read(tmp_path / "straight" / metrics), metrics


def test_a_bad_override_or_name_is_one_line_and_exit_status_2(tmp_path):
  cases = [
      ("--config.stepz=5", r"--config\.stepz: the config has no field 'stepz'; did you mean "
                           r"'steps'\? valid: batch_size, .*steps"),
      ("--config.model_kwargs.hiden=(8,)", r".*config\.model_kwargs has no field 'hiden'; did "
                                          r"you mean 'hidden'\? valid: hidden, in_features"),
      ("--config.steps=abc", r"--config\.steps: bad value .*'abc'.*config\.steps is a int"),
      ("--config.methods.ce.loss=cee", r"config\.methods\['ce'\]: loss='cee' is not one of"),
  ]
  for arg, message in cases:
    proc = subprocess.run([sys.executable, "-m", "reweight.main", "--config=configs/default.py",
                           f"--workdir={tmp_path}", arg], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, (arg, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, (arg, proc.stderr[-3000:])
    assert re.fullmatch(r"reweight\.main: " + message + ".*", lines[0]), (arg, lines[0])
  assert not os.path.exists(tmp_path / "runs")  # nothing trained
