"""The class-imbalance experiment at a tiny size: it runs end to end and its report's
numbers are the runs'.

The training class counts are re-derived from the long-tail formula, the final balanced
accuracy of each run with a NumPy forward pass of the saved parameters, and the
class-balanced weights from the effective-number formula with those counts.
"""

import json
import os

import numpy as np
import pytest
from experiment_checks import mlp_predictions, table_row

from configs import class_imbalance as imbalance_config
from experiments import class_imbalance as imbalance
from reweight.data import datasets

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


def expected_class_counts(ratio=10.0, meta_per_class=10):
  """10 per class go to the meta set, then class c keeps floor(n_min * ratio^(-c/9))."""
  rest = np.bincount(datasets.load("digits", "train")["label"], minlength=10) - meta_per_class
  return np.floor(rest.min() * ratio ** (-np.arange(10) / 9.0)).astype(int)


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
  _, workdir, text = finished
  final = {}
  for method in METHODS:
    with open(os.path.join(run_dir(workdir, method), "result.json")) as f:
      history = json.load(f)["history"]
    assert [r["step"] for r in history] == [10, 20, 30]
    final[method] = numpy_balanced_accuracy(workdir, method)
    assert history[-1]["test_balanced_accuracy"] == pytest.approx(final[method], abs=1e-6)
    best = max(r["test_balanced_accuracy"] for r in history)
    row = table_row(text, SETTING, method)
    assert row[1] == f"{100 * history[-1]['test_accuracy']:.1f} ± 0.0"
    assert row[2:] == [f"{100 * final[method]:.1f} ± 0.0", f"{100 * best:.1f} ± 0.0"]
  best = max(("class_balanced", "l2rw"), key=lambda m: final[m])
  summary = table_row(text, "Best method per setting", SETTING)
  assert summary[1:] == [f"{100 * final['ce']:.1f} ± 0.0", best,
                         f"{100 * final[best]:.1f} ± 0.0",
                         f"{100 * (final[best] - final['ce']):+.1f}"]


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
