"""Curriculum x LR decay experiment at a tiny size: runs, writes outputs, table from the runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import curriculum_lr_decay as config_lib
from experiments import curriculum_lr_decay as exp
from reweight.data import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config():
  c = config_lib.get_config()
  c.dataset = "digits"
  c.model = "mlp"
  c.model_kwargs = {"in_features": 64, "hidden": (16,)}
  c.epochs = 1  # (1438 - 144 validation) // 32 = 40 steps
  c.checkpoint_every = 5
  c.average_k = 3
  c.eval_every = 7  # the last window (steps 36-40) lies in the clean tier (the last 8)
  c.schedules = {"constant": {"kind": "constant"},
                 "wsd": {"kind": "wsd", "decay_fraction": 0.5, "final_ratio": 0.0}}
  c.seeds = (0, 1)
  return c


def test_streams_have_the_documented_order():
  rng = np.random.default_rng(0)
  domain = rng.integers(0, 4, size=103)
  rates = (0.6, 0.0, 0.4, 0.2)
  asc = exp.data_stream(domain, rates, "ascending", epochs=3, seed=5)
  rnd = exp.data_stream(domain, rates, "random", epochs=3, seed=5)
  for stream in (asc, rnd):  # the same multiset: every example exactly 3 times
    np.testing.assert_array_equal(np.bincount(stream, minlength=103), np.full(103, 3))
  levels = np.asarray(rates)[domain[asc]]
  assert np.all(np.diff(levels) <= 0)  # worst tier first, clean tier last
  assert levels[0] == 0.6 and levels[-1] == 0.0
  for e in range(3):  # random order: three shuffled epochs
    np.testing.assert_array_equal(np.sort(rnd[e * 103:(e + 1) * 103]), np.arange(103))
  np.testing.assert_array_equal(asc, exp.data_stream(domain, rates, "ascending", 3, seed=5))
  assert not np.array_equal(asc, exp.data_stream(domain, rates, "ascending", 3, seed=6))
  with pytest.raises(ValueError, match="order='sorted' is not one of"):
    exp.data_stream(domain, rates, "sorted", 1, 0)


def test_input_noise_tiers_scale_with_level():
  c = tiny_config()
  c.tier_kind = "input_noise"
  c.tier_levels = (1.0, 0.0)
  train, val, _, _ = exp.tiered_data(c, seed=0)
  full = datasets.load("digits", "train")
  clean = full["x"][train["id"]]
  diff = train["x"] - clean
  scale = clean.std()
  assert np.all(diff[train["domain"] == 1] == 0)
  assert abs(diff[train["domain"] == 0].std() / scale - 1.0) < 0.05
  np.testing.assert_array_equal(train["label"], full["label"][train["id"]])
  # The validation split: 10% of the train split, disjoint from train, clean.
  assert len(val["label"]) == round(0.1 * len(full["label"]))
  assert set(train["id"]).isdisjoint(val["id"])
  assert len(train["id"]) + len(val["id"]) == len(full["label"])
  np.testing.assert_array_equal(val["x"], full["x"][val["id"]])
  np.testing.assert_array_equal(val["label"], full["label"][val["id"]])
  c.tier_kind = "blur"
  with pytest.raises(ValueError, match="tier_kind='blur' is not one of"):
    exp.tiered_data(c, seed=0)


def _ms(values):
  v = np.asarray(values, np.float64)
  return v.mean(), v.std(ddof=1)


def _pm(values):
  m, sd = _ms(values)
  return f"{100 * m:.1f} ± {100 * sd:.1f}"


def test_runs_end_to_end_and_table_comes_from_the_runs(tmp_path):
  from scipy import stats

  c = tiny_config()
  out = exp.run(c, str(tmp_path), progress=False)
  for name in ("table.md", "summary.json", "accuracy.png", "curves.png", "schedules.png"):
    assert os.path.getsize(tmp_path / name) > 0
  runs = {(o, sched): [json.load(open(tmp_path / "runs" / o / sched / f"seed{s}" /
                                      "result.json")) for s in c.seeds]
          for o in exp.ORDERS for sched in c.schedules}
  n_val = round(0.1 * 1438)
  for sched in c.schedules:
    for w, label in (("final", "final params"), ("avg", "uniform avg of last 3"),
                     ("ema", "EMA avg of last 3")):
      row = out["summary"][sched][w]
      cells = []
      for o in exp.ORDERS:
        for split in ("val", "test"):
          vals = [r[split][w] for r in runs[o, sched]]
          np.testing.assert_allclose(row[o][split], _ms(vals), rtol=1e-12)
          cells.append(_pm(vals))
      for r in runs["random", sched]:  # an accuracy over the validation split
        assert r["val"][w] * n_val == pytest.approx(round(r["val"][w] * n_val), abs=1e-6)
      asc = [r["test"][w] for r in runs["ascending", sched]]
      rnd = [r["test"][w] for r in runs["random", sched]]
      ref = stats.ttest_rel(asc, rnd)
      lo, hi = ref.confidence_interval(0.95)
      gain = row["gain"]["test"]
      np.testing.assert_allclose(gain["mean"], np.mean(np.subtract(asc, rnd)), rtol=1e-12)
      np.testing.assert_allclose(gain["ci95"], [lo, hi], rtol=1e-9)
      np.testing.assert_allclose(gain["p"], ref.pvalue, rtol=1e-9)
      mark = " *" if lo > 0 or hi < 0 else ""
      cells.append(f"{100 * gain['mean']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{mark}")
      assert f"| {sched} | {label} | " + " | ".join(cells) + " |" in out["table"]
  for r in runs["random", "constant"]:
    assert r["val"]["final"] == r["history"][-1]["val_accuracy"]
    assert r["steps"] == (1438 - n_val) // 32 and r["num_averaged"] == 3
  # The best recipe of each order has the highest mean validation accuracy.
  for o in exp.ORDERS:
    means = {(s, w): np.mean([r["val"][w] for r in runs[o, s]])
             for s in c.schedules for w in exp.WEIGHTS}
    b = out["best"][o]
    assert means[b["schedule"], b["weights"]] == max(means.values())
    np.testing.assert_allclose(
        b["test"][0], np.mean([r["test"][b["weights"]] for r in runs[o, b["schedule"]]]))
  # The all-settings table reads the same numbers back from summary.json.
  line = exp.settings_table({"tiny": str(tmp_path)}).splitlines()[-1]
  g = out["summary"]["wsd"]["final"]["gain"]["test"]
  assert line.startswith("| tiny | ") and f"{100 * g['mean']:+.1f} [" in line
  b = out["best"]["random"]
  assert f"({b['schedule']}, {b['weights']})" in line
  # The ascending stream ends on the clean tier: the last eval window saw level 0 only.
  assert runs["ascending", "constant"][0]["history"][-1]["tier_level"] == 0.0
  # A restart finds every run on disk and reproduces the summary.
  again = exp.run(c, str(tmp_path), progress=False)
  assert again["summary"] == out["summary"]


def test_command_line(tmp_path):
  cmd = [sys.executable, "experiments/curriculum_lr_decay.py",
         "--config=configs/curriculum_lr_decay_digits.py", f"--workdir={tmp_path}",
         "--config.epochs=1", "--config.seeds=(0,)", "--config.model_kwargs.hidden=(8,)"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| moderate_cosine | final params |" in proc.stdout
  assert os.path.exists(tmp_path / "accuracy.png")


def test_lr_table_matches_optax_adamw_with_the_schedule():
  import jax.numpy as jnp
  import optax

  c = tiny_config()
  schedule = exp.make_schedule({"kind": "wsd", "decay_fraction": 0.5}, 0.1, 6, 1)
  ours = exp.make_optimizer(c, schedule(jnp.arange(6)))
  ref = optax.adamw(schedule, weight_decay=c.weight_decay)
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  p1, p2, s1, s2 = params, params, ours.init(params), ref.init(params)
  for t in range(6):  # the table's length: a run takes exactly that many steps
    g = {"w": jnp.array([0.5, -1.0, 2.0]) * (t + 1) + p1["w"]}
    u1, s1 = ours.update(g, s1, p1)
    u2, s2 = ref.update(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    np.testing.assert_allclose(p1["w"], p2["w"], rtol=1e-6, atol=1e-7)
