"""The group-shift experiment at a tiny size: it runs end to end, its data follow the marker
rule, its choice is the validation argmax, and its table's numbers are the runs'.

The data are rebuilt here from the raw digits with the documented recipes, the test metrics
with a NumPy forward pass of the saved parameters, and the selection from the saved
validation curves.
"""

import json
import os

import numpy as np
import pytest
from experiment_checks import table_row

from configs import group_shift as config_lib
from experiments import group_shift as exp
from reweight.data import corruptions, datasets
from reweight.train import report

METHODS = ("erm", "group_dro", "group_balanced")
METRIC_KEYS = ("test_worst_group_accuracy", "test_average_accuracy", "test_balanced_accuracy",
               "test_flipped_accuracy")


def tiny_config():
  c = config_lib.get_config()
  c.seeds = (0,)
  c.model_kwargs.hidden = (16,)
  c.weight_decays = (1e-3, 1e-1)
  c.steps = 40
  c.eval_every = 10
  c.batch_size = 32
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("group_shift"))
  config = tiny_config()
  out = exp.run(config, workdir, progress=False)
  return config, workdir, out


def expected_data(config, seed):
  """Train / val / test rebuilt from the raw digits with the recipes of the docstrings."""
  raw = datasets.load("digits", "train")
  y = (raw["label"] >= config.threshold).astype(int)
  u = np.random.default_rng([corruptions.SPURIOUS_MARKER_SALT, seed]).random(len(y))
  m = np.where(u < config.agreement, y, 1 - y)
  g = 2 * y + m
  rng = np.random.default_rng([exp.VAL_SALT, seed])
  val = np.sort(np.concatenate([
      rng.permutation(np.flatnonzero(g == k))[:int(round(config.val_fraction * np.sum(g == k)))]
      for k in range(4)]))
  train = np.setdiff1d(np.arange(len(y)), val)
  test = datasets.load("digits", "test")
  ty = (test["label"] >= config.threshold).astype(int)
  return {"x": raw["x"], "y": y, "m": m, "g": g, "train": train, "val": val,
          "test_x": np.concatenate([test["x"], test["x"]]),
          "test_y": np.concatenate([ty, ty]), "test_m": np.concatenate([ty, 1 - ty])}


def stamp(x, m, pixels, value):
  x = np.array(x, np.float64)
  x[:, list(pixels)] = value * np.asarray(m, np.float64)[:, None]
  return x


def mlp_predict(path, x):
  """``argmax(relu(x W0 + b0) Wh + bh)`` in float64 from the saved ``params.npz``."""
  with np.load(path) as p:
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  h = np.maximum(x @ p["hidden/0/kernel"] + p["hidden/0/bias"], 0.0)
  return np.argmax(h @ p["head/kernel"] + p["head/bias"], 1)


def accuracy_by_group(pred, y, g):
  return np.array([np.mean(pred[g == k] == y[g == k]) for k in range(4)])


def load_result(workdir, method, wd, seed=0):
  with open(os.path.join(exp.run_dir(workdir, method, wd, seed), "result.json")) as f:
    return json.load(f)


def test_outputs_are_written(finished):
  _, workdir, out = finished
  with open(os.path.join(workdir, "table.md")) as f:
    assert f.read() == out["table"]
  with open(os.path.join(workdir, "summary.json")) as f:
    assert set(json.load(f)["summary"]["methods"]) == set(METHODS)
  for name in ("val_worst_group.png", "test_groups.png", "q_trajectory.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert len(out["plots"]) == 3  # q is plotted for group_dro only: frozen q is not a curve
  assert "cannot be judged at n = 1 seed" in out["table"]


def test_restart_reuses_the_finished_runs(finished):
  config, workdir, out = finished
  path = os.path.join(exp.run_dir(workdir, "group_dro", config.weight_decays[0], 0),
                      "result.json")
  before = os.stat(path).st_mtime_ns
  again = exp.run(config, workdir, progress=False)
  assert again["table"] == out["table"]
  assert os.stat(path).st_mtime_ns == before  # not trained again


def test_marker_construction_follows_its_rule():
  config = tiny_config()
  data = exp.prepare_data(config, seed=0)
  want = expected_data(config, seed=0)
  pixels, value = config.marker_pixels, config.marker_value
  for split in ("train", "val"):
    rows = want[split]
    got = data[split]
    np.testing.assert_array_equal(got["id"], rows)  # the original train ids
    np.testing.assert_array_equal(got["label"], want["y"][rows])
    np.testing.assert_array_equal(got["marker"], want["m"][rows])
    np.testing.assert_array_equal(got["group"], want["g"][rows])
    np.testing.assert_allclose(got["x"], stamp(want["x"][rows], want["m"][rows], pixels, value))
  assert len(set(data["train"]["id"]) | set(data["val"]["id"])) == len(want["y"])
  counts = np.bincount(data["train"]["group"], minlength=4)
  assert counts[1] + counts[2] < 0.2 * counts.sum()  # two minority groups
  test = data["test"]
  np.testing.assert_array_equal(test["label"], want["test_y"])
  np.testing.assert_array_equal(test["marker"], want["test_m"])
  np.testing.assert_array_equal(test["group"], 2 * want["test_y"] + want["test_m"])
  np.testing.assert_allclose(test["x"], stamp(want["test_x"], want["test_m"], pixels, value))


def test_choice_is_the_validation_argmax(finished):
  config, workdir, out = finished
  want = expected_data(config, seed=0)
  val_x = stamp(want["x"][want["val"]], want["m"][want["val"]], config.marker_pixels,
                config.marker_value)
  for method in METHODS:
    candidates = []  # (worst, average, -L2 position, -step): the documented tie-break
    for i, wd in enumerate(config.weight_decays):
      saved = load_result(workdir, method, wd)
      assert [r["step"] for r in saved["curve"]] == [10, 20, 30, 40]
      for r in saved["curve"]:
        assert r["val_worst_group_accuracy"] == min(r["val_group_accuracy"])
        candidates.append((r["val_worst_group_accuracy"], r["val_accuracy"], -i, -r["step"]))
      # The saved parameters are those of the run's best step: their validation accuracy
      # recomputed in NumPy is what the curve says there.
      best = next(r for r in saved["curve"] if r["step"] == saved["best_step"])
      pred = mlp_predict(os.path.join(exp.run_dir(workdir, method, wd, 0), "params.npz"),
                         val_x)
      np.testing.assert_allclose(
          accuracy_by_group(pred, want["y"][want["val"]], want["g"][want["val"]]),
          best["val_group_accuracy"], atol=1e-9)
    row = table_row(out["table"], "Validation worst-group accuracy per L2 (mean over seeds)",
                    method)
    expected = []
    for wd in config.weight_decays:
      curve = load_result(workdir, method, wd)["curve"]
      best = max(r["val_worst_group_accuracy"] for r in curve)
      expected.append(f"{100 * best:.1f} / {100 * curve[-1]['val_worst_group_accuracy']:.1f}")
    assert row[1:] == expected
    worst, _, neg_i, neg_step = max(candidates)
    chosen = out["selected"][method][0]
    assert (chosen["weight_decay"], chosen["step"]) == (config.weight_decays[-neg_i], -neg_step)
    assert chosen["val_worst_group_accuracy"] == worst


def test_table_numbers_are_the_chosen_models_on_test(finished):
  config, workdir, out = finished
  want = expected_data(config, seed=0)
  test_x = stamp(want["test_x"], want["test_m"], config.marker_pixels, config.marker_value)
  y, m = want["test_y"], want["test_m"]
  train_counts = np.bincount(want["g"][want["train"]], minlength=4)
  for method in METHODS:
    chosen = out["selected"][method][0]
    pred = mlp_predict(os.path.join(exp.run_dir(workdir, method, chosen["weight_decay"], 0),
                                    "params.npz"), test_x)
    groups = accuracy_by_group(pred, y, 2 * y + m)
    metrics = [groups.min(), np.sum(train_counts / train_counts.sum() * groups),
               np.mean(pred == y), np.mean(pred[m != y] == y[m != y])]
    for key, value in zip(METRIC_KEYS, metrics):
      assert chosen[key] == pytest.approx(value, abs=1e-9), key
    train_x = stamp(want["x"][want["train"]], want["m"][want["train"]],
                    config.marker_pixels, config.marker_value)
    train_pred = mlp_predict(os.path.join(exp.run_dir(workdir, method, chosen["weight_decay"],
                                                      0), "params.npz"), train_x)
    train_worst = accuracy_by_group(train_pred, want["y"][want["train"]],
                                    want["g"][want["train"]]).min()
    row = table_row(out["table"], "Test accuracy", method)
    assert row[1:6] == [f"{100 * v:.1f}" for v in metrics + [train_worst]]
    assert row[6:] == [f"{chosen['weight_decay']:g}", str(chosen["step"])]
    row = table_row(out["table"], "Per-group test accuracy", method)
    assert row[1:] == [f"{100 * v:.1f}" for v in groups]
  erm, dro = (out["selected"][k][0] for k in METHODS[:2])
  row = table_row(out["table"], "Paired: group_dro − erm", "worst-group")
  diff = dro["test_worst_group_accuracy"] - erm["test_worst_group_accuracy"]
  assert row[1:] == [f"{100 * diff:+.1f}", f"{100 * diff:+.1f}", "n/a"]


def test_paired_interval_and_verdict():
  a, b = [0.80, 0.85, 0.90], [0.70, 0.78, 0.76]
  d = np.array(a) - np.array(b)  # 0.10, 0.07, 0.14
  half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t_{0.975, df=2}
  p = report.paired_difference(a, b)
  np.testing.assert_allclose(p["ci95"], [d.mean() - half, d.mean() + half], rtol=1e-9)
  assert exp.verdict(p, "group_dro", "erm").startswith(
      "group_dro beats erm on worst-group accuracy (points) (group_dro − erm = +10.3, 95% CI")
  p = report.paired_difference([0.8, 0.7, 0.9], [0.75, 0.8, 0.85])
  assert exp.verdict(p, "group_dro", "erm").startswith("no clear difference at 3 seeds")
  assert report.mean_std([0.8, 0.7, 0.9])[1] == pytest.approx(0.1)  # sample std, ddof=1


def test_select_breaks_ties_by_average_then_order():
  curve = lambda *rows: [{"step": s, "val_worst_group_accuracy": w, "val_accuracy": a}
                         for s, w, a in rows]
  curves = {1e-3: curve((10, 0.5, 0.9), (20, 0.7, 0.8)),
            1e-1: curve((10, 0.7, 0.8), (20, 0.7, 0.85), (30, 0.7, 0.85))}
  assert exp.select(curves) == (1e-1, 20)
