"""The main job at reduced size: runs end to end, resumes finished runs, writes table and plots."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from reweight.train import experiment


def small_config():
  c = default.get_config()
  c.steps = 30
  c.eval_every = 10
  c.checkpoint_every = 15
  c.seeds = (0, 1)
  for spec in c.methods.values():
    if "weighting_kwargs" in spec:
      spec.weighting_kwargs.warmup_steps = 10
  return c


def test_default_config_runs_and_writes_table_and_plots(tmp_path, count_compiles):
  with count_compiles() as counts:
    out = experiment.run(small_config(), str(tmp_path), progress=False)
  methods = list(default.get_config().methods)
  # One train step per method, shared by its seeds; one eval step for the whole experiment.
  assert counts["full_batch_step"] == len(methods), counts
  assert counts["eval_step"] == 1, counts
  assert list(out["summary"]) == methods
  for line in methods:
    assert f"| {line} |" in out["table"]
  for name in ["curves.png", "weights.png", "table.md", "summary.json"]:
    assert os.path.getsize(tmp_path / name) > 0
  # The table's numbers are the mean/std of the runs' own histories.
  runs = [json.load(open(tmp_path / "runs" / "ce" / f"seed{s}" / "result.json"))
          for s in (0, 1)]
  finals = [r["history"][-1]["test_accuracy"] for r in runs]
  np.testing.assert_allclose(out["summary"]["ce"]["final_accuracy"],
                             [np.mean(finals), np.std(finals)], rtol=1e-9)
  # Uniform weighting: the noisy share of the weight is the noisy share of the examples seen.
  fw = runs[0]["final_weights"]
  np.testing.assert_allclose(np.sum(np.multiply(fw["weights"], fw["is_noisy"])) /
                             np.sum(fw["weights"]), np.mean(fw["is_noisy"]), rtol=1e-6)
  # A second run finds every result on disk and reproduces the same summary.
  again = experiment.run(small_config(), str(tmp_path), progress=False)
  assert again["summary"] == out["summary"]


def test_bad_names():
  with pytest.raises(ValueError, match="weighting='nope' is not one of \\['uniform'"):
    experiment.make_weighting("nope")
  c = small_config()
  c.optimizer = "lbfgs"
  with pytest.raises(ValueError, match="optimizer='lbfgs' is not one of"):
    experiment.make_optimizer(c)


def test_main_command_line(tmp_path):
  cmd = [sys.executable, "-m", "reweight.main", "--config=configs/default.py",
         f"--workdir={tmp_path}", "--config.steps=10", "--config.eval_every=5",
         "--config.seeds=(0,)"]
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| loss_based/extremes |" in proc.stdout
  assert os.path.exists(tmp_path / "curves.png")
  assert os.path.exists(tmp_path / "runs" / "ce" / "seed0" / "tensorboard")
  # The same workdir with another step count: one line, exit 2, nothing trained...
  cmd[-3] = "--config.steps=5"
  proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      f"reweight.main: {tmp_path} holds 7 run(s) made with a different config: steps (10 "
      "then, 5 now); use a new --workdir, or --overwrite to delete those runs"]
  # ... and with --overwrite the stale runs are run again.
  proc = subprocess.run(cmd + ["--overwrite"], cwd=root, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.load(open(tmp_path / "runs" / "ce" / "seed0" / "result.json"))
  assert [r["step"] for r in saved["history"]] == [5]


def tiny_config(**changes):
  c = small_config()
  c.steps, c.seeds = 10, (0,)
  c.methods = {"ce": c.methods["ce"], "sce": c.methods["sce"]}
  for k, v in changes.items():
    c[k] = v
  return c


def test_a_workdir_of_another_config_is_refused_or_overwritten(tmp_path):
  first = experiment.run(tiny_config(), str(tmp_path), progress=False)
  saved = json.load(open(tmp_path / "runs" / "sce" / "seed0" / "config.json"))
  assert saved["steps"] == 10 and saved["method.loss_kwargs.alpha"] == 0.1
  assert "seeds" not in saved and "checkpoint_every" not in saved
  assert not any(k.startswith("methods") for k in saved)
  # Only a field that changes nothing (checkpoint_every) differs: resumed, not refused.
  again = experiment.run(tiny_config(checkpoint_every=5), str(tmp_path), progress=False)
  assert again["summary"] == first["summary"]
  with pytest.raises(experiment.StaleWorkdirError,
                     match=r"holds 2 run\(s\) made with a different config: steps \(10 then, "
                           r"12 now\); use a new --workdir, or --overwrite"):
    experiment.run(tiny_config(steps=12), str(tmp_path), progress=False)
  c = tiny_config()
  c.methods.sce.loss_kwargs.beta = 0.5  # only the sce runs are stale
  with pytest.raises(experiment.StaleWorkdirError, match=r"1 run\(s\).*method\.loss_kwargs"
                     r"\.beta \(1\.0 then, 0\.5 now\)"):
    experiment.run(c, str(tmp_path), progress=False)
  out = experiment.run(c, str(tmp_path), progress=False, overwrite=True)
  assert out["summary"]["ce"] == first["summary"]["ce"]  # kept
  assert out["summary"]["sce"] != first["summary"]["sce"]  # run again
  # A run directory from before runs recorded their config is refused too.
  os.remove(tmp_path / "runs" / "ce" / "seed0" / "config.json")
  with pytest.raises(experiment.StaleWorkdirError, match="config.json"):
    experiment.run(c, str(tmp_path), progress=False)


@pytest.mark.parametrize("method,message", [
    ({"loss": "cee"}, r"loss='cee' is not one of .* \(did you mean 'ce'\?\)"),
    ({"weighting": "loss_base"}, r"weighting='loss_base' is not one of .*did you mean "
                                 r"'loss_based'"),
    ({"weighting": "loss_based", "weighting_kwargs": {"strategy": "linupper", "rr": 1.0}},
     r"weighting 'loss_based' takes no argument 'rr' \(did you mean 'r'\?\)"),
    ({"loss": "gce", "loss_kwargs": {"qq": 0.7}}, r"loss 'gce' takes no argument 'qq'"),
    ({"los": "ce"}, r"has no field 'los' \(did you mean 'loss'\?\)"),
])
def test_unknown_names_fail_before_anything_trains(tmp_path, method, message):
  c = tiny_config()
  c.methods = {"ce": c.methods["ce"], "bad": method}
  with pytest.raises(experiment.ConfigError, match=message):
    experiment.run(c, str(tmp_path), progress=False)
  assert not os.path.exists(tmp_path / "runs")
