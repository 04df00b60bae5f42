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
