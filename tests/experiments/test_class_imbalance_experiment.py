"""The class-imbalance experiment at a tiny size: it runs end to end and its report's
numbers are the runs'.

The training class counts are re-derived from the long-tail formula, the final test and
validation balanced accuracy of each run with a NumPy forward pass of the saved parameters,
and the class-balanced weights from the effective-number formula with those counts; the
best method must be the one with the highest validation balanced accuracy.
"""

import json
import os

import numpy as np
import pytest
from experiment_checks import mlp_predictions, table_row

from configs import class_imbalance as imbalance_config
from experiments import class_imbalance as imbalance
from reweight.data import datasets
from reweight.train import experiment

METHODS = ("ce", "class_balanced", "l2rw")
SETTING = "digits_ratio10"
BATCH = 32




def tiny_config():
  c = imbalance_config.get_config()
  c.imbalance_ratios = (10.0,)
  c.seeds = (0,)
  c.model_kwargs.hidden = (16,)
  c.steps = 30
  c.eval_every = 10
  c.batch_size = BATCH
  for name in list(c.methods):
    if name not in METHODS:
      del c.methods[name]
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("imbalance"))
  config = tiny_config()
  text = imbalance.run(config, workdir, progress=False)
  return config, workdir, text


def expected_class_counts(ratio=10.0, meta_per_class=10, val_fraction=0.15):
  """10 per class go to the meta set, round(15%) of the rest of each class to validation,
  then class c keeps floor(n_min * ratio^(-c/9))."""
  rest = np.bincount(datasets.load("digits", "train")["label"], minlength=10) - meta_per_class
  rest = rest - np.round(val_fraction * rest).astype(int)
  return np.floor(rest.min() * ratio ** (-np.arange(10) / 9.0)).astype(int)


def balanced(pred, y):
  return float(np.mean([np.mean(pred[y == c] == c) for c in range(10)]))


def run_dir(workdir, method):
  return os.path.join(workdir, SETTING, "runs", method, "seed0")


def numpy_balanced_accuracy(workdir, method):
  """Mean per-class test accuracy of the saved final MLP, recomputed in NumPy."""
  test = datasets.load("digits", "test")
  pred, y = mlp_predictions(run_dir(workdir, method), test["x"]), test["label"]
  return float(np.mean([np.mean(pred[y == c] == c) for c in range(10)]))


def test_report_is_written_and_printed(finished):
  _, workdir, text = finished
  with open(os.path.join(workdir, "report.md")) as f:
    assert f.read() == text
  for path in ("balanced_accuracy.png", f"{SETTING}/table.md", f"{SETTING}/curves.png"):
    assert os.path.getsize(os.path.join(workdir, path)) > 0, path


def test_class_counts_are_the_long_tail_after_the_meta_split(finished):
  _, _, text = finished
  assert f"Training examples per class (seed 0): {expected_class_counts().tolist()}" in text


def test_numbers_come_from_the_runs(finished):
  config, workdir, text = finished
  val = experiment.prepare_splits(imbalance.setting_config(config, 10.0), seed=0).val
  # Validation is held out before the long tail: balanced, round(15%) of every class.
  rest = np.bincount(datasets.load("digits", "train")["label"], minlength=10) - 10
  np.testing.assert_array_equal(np.bincount(val["label"], minlength=10),
                                np.round(0.15 * rest).astype(int))
  final, val_bal = {}, {}
  for method in METHODS:
    with open(os.path.join(run_dir(workdir, method), "result.json")) as f:
      history = json.load(f)["history"]
    assert [r["step"] for r in history] == [10, 20, 30]
    final[method] = numpy_balanced_accuracy(workdir, method)
    assert history[-1]["test_balanced_accuracy"] == pytest.approx(final[method], abs=1e-6)
    val_bal[method] = balanced(mlp_predictions(run_dir(workdir, method), val["x"]),
                               val["label"])
    assert history[-1]["val_balanced_accuracy"] == pytest.approx(val_bal[method], abs=1e-6)
    row = table_row(text, SETTING, method)
    assert row[1:4] == [f"{100 * val_bal[method]:.1f}",
                        f"{100 * history[-1]['test_accuracy']:.1f}",
                        f"{100 * final[method]:.1f}"]
    assert row[4] == ("–" if method == "ce" else
                      f"{100 * (final[method] - final['ce']):+.1f} (n = 1)")
  best = max(("class_balanced", "l2rw"), key=lambda m: val_bal[m])  # never on test
  summary = table_row(text, "Best method on validation per setting", SETTING)
  assert summary[1:] == [f"{100 * val_bal['ce']:.1f}", f"{100 * final['ce']:.1f}", best,
                         f"{100 * val_bal[best]:.1f}", f"{100 * final[best]:.1f}",
                         f"{100 * (final[best] - final['ce']):+.1f} (n = 1)"]
  assert (f"* {SETTING}: {best} vs ce on test balanced accuracy: cannot be judged at n = 1 "
          "seed." in text)


def test_best_method_is_chosen_on_validation():
  """A hand-made summary where validation and test disagree: validation decides."""
  bal = {"focal": {"val_balanced_accuracy": (0.9, 0.01), "final_balanced_accuracy": (0.5, 0.1)},
         "l2rw": {"val_balanced_accuracy": (0.8, 0.01), "final_balanced_accuracy": (0.95, 0.1)}}
  assert imbalance.best_method(bal, ["focal", "l2rw"]) == "focal"


def test_class_balanced_weights_use_the_training_counts(finished):
  """Within each batch, w_i is proportional to (1 - beta) / (1 - beta^n_{y_i})."""
  config, workdir, _ = finished
  beta = config.methods.class_balanced.weighting_kwargs.beta
  with open(os.path.join(run_dir(workdir, "class_balanced"), "result.json")) as f:
    fw = json.load(f)["final_weights"]
  per_class = (1 - beta) / (1 - beta ** expected_class_counts().astype(np.float64))
  w = np.asarray(fw["weights"]).reshape(-1, BATCH)
  expected = per_class[np.asarray(fw["label"])].reshape(-1, BATCH)
  expected = expected / expected.mean(axis=1, keepdims=True)  # mean one per batch
  np.testing.assert_allclose(w, expected, rtol=1e-5)
