"""The main job at reduced size: runs end to end, resumes finished runs, writes table and plots."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

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
                             [np.mean(finals), np.std(finals, ddof=1)], rtol=1e-9)
  vals = [r["history"][-1]["val_accuracy"] for r in runs]
  np.testing.assert_allclose(out["summary"]["ce"]["val_accuracy"],
                             [np.mean(vals), np.std(vals, ddof=1)], rtol=1e-9)
  assert out["summary"]["ce"]["n"] == 2 and "best_accuracy" not in out["summary"]["ce"]
  assert "best test acc" not in out["table"] and "over n = 2 seeds" in out["table"]
  # The paired difference from ce: the mean of the per-seed differences, its t-interval.
  gce = [json.load(open(tmp_path / "runs" / "gce" / f"seed{s}" / "result.json"))
         ["history"][-1]["test_accuracy"] for s in (0, 1)]
  d = np.subtract(gce, finals)
  lo, hi = stats.t.interval(0.95, 1, loc=d.mean(), scale=d.std(ddof=1) / np.sqrt(2))
  assert (f"| gce | {100 * np.mean(gce_val(tmp_path)):.1f} ± "
          f"{100 * np.std(gce_val(tmp_path), ddof=1):.1f} | {100 * np.mean(gce):.1f} ± "
          f"{100 * np.std(gce, ddof=1):.1f} | {100 * d.mean():+.1f} [{100 * lo:+.1f}, "
          f"{100 * hi:+.1f}] |") in out["table"]
  # "Best on validation" is the method with the highest mean validation accuracy.
  val_means = {m: np.mean([json.load(open(tmp_path / "runs" / m / f"seed{s}" / "result.json"))
                           ["history"][-1]["val_accuracy"] for s in (0, 1)]) for m in methods}
  assert f"Best on validation: {max(val_means, key=val_means.get)} (val " in out["table"]
  # Uniform weighting: the noisy share of the weight is the noisy share of the examples seen.
  fw = runs[0]["final_weights"]
  np.testing.assert_allclose(np.sum(np.multiply(fw["weights"], fw["is_noisy"])) /
                             np.sum(fw["weights"]), np.mean(fw["is_noisy"]), rtol=1e-6)
  # A second run finds every result on disk and reproduces the same summary.
  again = experiment.run(small_config(), str(tmp_path), progress=False)
  assert again["summary"] == out["summary"]


def gce_val(tmp_path):
  return [json.load(open(tmp_path / "runs" / "gce" / f"seed{s}" / "result.json"))
          ["history"][-1]["val_accuracy"] for s in (0, 1)]


def _dataset(n_per_class=(30, 20, 10, 7)):
  y = np.repeat(np.arange(len(n_per_class)), n_per_class)
  y = np.random.default_rng(0).permutation(y)
  return {"x": np.arange(len(y), dtype=np.float32)[:, None] * 10, "label": y,
          "id": np.arange(len(y), dtype=np.int32)}


def test_split_validation_is_a_stratified_seeded_partition():
  ds = _dataset()
  train, val = experiment.split_validation(ds, 0.2, seed=3)
  # Disjoint, and together every example once (x identifies an example).
  assert not set(train["x"][:, 0]) & set(val["x"][:, 0])
  assert sorted(np.concatenate([train["x"], val["x"]])[:, 0]) == sorted(ds["x"][:, 0])
  # Stratified: round(0.2 * n_c) of every class c; the rest stays in train.
  np.testing.assert_array_equal(np.bincount(val["label"]), [6, 4, 2, 1])
  np.testing.assert_array_equal(np.bincount(train["label"]), [24, 16, 8, 6])
  # Rows keep their labels; ids index the returned arrays, orig_id the input.
  for part in (train, val):
    np.testing.assert_array_equal(part["id"], np.arange(len(part["label"])))
    np.testing.assert_array_equal(ds["label"][part["orig_id"]], part["label"])
    np.testing.assert_array_equal(ds["x"][part["orig_id"]], part["x"])
  # The documented recipe, re-derived: per class (ascending), permute its members.
  rng = np.random.default_rng([experiment.VALIDATION_SALT, 3])
  expected = np.sort(np.concatenate([
      rng.permutation(np.flatnonzero(ds["label"] == c))[:round(0.2 * n)]
      for c, n in enumerate((30, 20, 10, 7))]))
  np.testing.assert_array_equal(val["orig_id"], expected)
  # Deterministic given the seed, different for another seed.
  again, val_again = experiment.split_validation(ds, 0.2, seed=3)
  np.testing.assert_array_equal(val_again["orig_id"], val["orig_id"])
  _, val_other = experiment.split_validation(ds, 0.2, seed=4)
  assert not np.array_equal(val_other["orig_id"], val["orig_id"])
  with pytest.raises(ValueError, match="val_fraction=1.0 is not a number in"):
    experiment.split_validation(ds, 1.0, seed=0)


def test_prepare_splits_holds_out_noisy_validation_and_a_clean_meta_set():
  c = default.get_config()
  c.meta_per_class = 5
  s = experiment.prepare_splits(c, seed=1)
  ids = [set(part["orig_id"].tolist()) for part in (s.train, s.val, s.meta)]
  assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
  # Every class: 5 clean meta examples, then round(0.15 * rest) validation examples.
  full = np.bincount(experiment.datasets.load("digits", "train")["label"], minlength=10)
  np.testing.assert_array_equal(np.bincount(s.meta["label"], minlength=10), [5] * 10)
  assert not s.meta.get("is_noisy", np.zeros(1, bool)).any()
  np.testing.assert_array_equal(np.bincount(s.val["clean_label"], minlength=10),
                                np.round(0.15 * (full - 5)).astype(int))
  # The validation labels are as noisy as the training labels (40% symmetric).
  for part in (s.train, s.val):
    assert abs(np.mean(part["label"] != part["clean_label"]) - 0.4) < 0.08
  # val_fraction = 0: nothing held out.
  c.val_fraction = 0.0
  assert experiment.prepare_splits(c, seed=1).val is None


def test_best_on_validation_ignores_test():
  summary = {"a": {"val_accuracy": (0.80, 0.01), "final_accuracy": (0.95, 0.01)},
             "b": {"val_accuracy": (0.85, 0.01), "final_accuracy": (0.70, 0.01)},
             "c": {"val_accuracy": (0.85, 0.01), "final_accuracy": (0.99, 0.01)}}
  assert experiment.best_on_validation(summary) == "b"  # ties: the earlier candidate
  assert experiment.best_on_validation(summary, ["a", "c"]) == "c"
  with pytest.raises(ValueError, match="have no 'val_accuracy'"):
    experiment.best_on_validation({"a": {"final_accuracy": (0.9, 0.0)}})


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
