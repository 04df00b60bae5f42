"""The noisy-labels experiment at a tiny size: it runs end to end and its report's numbers
are the runs'.

The final test and validation accuracy of each run are recomputed with a NumPy forward pass
of the saved parameters, the weight share on noisy labels from the saved weights and noise
flags, and the gap closed from its formula; the report must show exactly those numbers, and
its best method must be the one with the highest validation accuracy.
"""

import json
import os

import numpy as np
import pytest
from experiment_checks import mlp_predictions, table_row

from configs import noisy_labels as noisy_config
from experiments import noisy_labels as noisy
from reweight.data import datasets
from reweight.train import experiment

METHODS = ("ce", "gce", "l2rw", "ce_clean")
SETTING = "digits_symmetric40"




def tiny_config():
  c = noisy_config.get_config("digits")
  c.noise_settings = (("symmetric", 0.4),)
  c.seeds = (0,)
  c.training.digits.model_kwargs.hidden = (16,)
  c.training.digits.steps = 30
  c.training.digits.eval_every = 10
  for name in list(c.methods):
    if name not in METHODS:
      del c.methods[name]
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("noisy"))
  config = tiny_config()
  text = noisy.run(config, workdir, progress=False)
  return config, workdir, text


def run_dir(workdir, method):
  return os.path.join(workdir, SETTING, "runs", method, "seed0")


def numpy_test_accuracy(workdir, method):
  """Accuracy of the saved final MLP on the test split, recomputed in NumPy."""
  test = datasets.load("digits", "test")
  return float(np.mean(mlp_predictions(run_dir(workdir, method), test["x"]) == test["label"]))


def test_report_is_written_and_printed(finished):
  config, workdir, text = finished
  with open(os.path.join(workdir, "report.md")) as f:
    assert f.read() == text
  for path in ("final_accuracy.png", f"{SETTING}/table.md", f"{SETTING}/curves.png"):
    assert os.path.getsize(os.path.join(workdir, path)) > 0, path


def test_numbers_come_from_the_runs(finished):
  config, workdir, text = finished
  val = experiment.prepare_splits(
      noisy.setting_config(config, "digits", "symmetric", 0.4), seed=0).val
  final, val_acc = {}, {}
  for method in METHODS:
    with open(os.path.join(run_dir(workdir, method), "result.json")) as f:
      saved = json.load(f)
    history = saved["history"]
    assert [r["step"] for r in history] == [10, 20, 30]
    final[method] = numpy_test_accuracy(workdir, method)
    assert history[-1]["test_accuracy"] == pytest.approx(final[method], abs=1e-9)
    # Validation: the held-out (noisy) labels, scored with the saved parameters.
    pred = mlp_predictions(run_dir(workdir, method), val["x"])
    val_acc[method] = float(np.mean(pred == val["label"]))
    assert history[-1]["val_accuracy"] == pytest.approx(val_acc[method], abs=1e-9)
    row = table_row(text, SETTING, method)
    assert row[1:3] == [f"{100 * val_acc[method]:.1f}", f"{100 * final[method]:.1f}"]
    assert row[3] == ("–" if method == "ce" else
                      f"{100 * (final[method] - final['ce']):+.1f} (n = 1)")
    w = np.asarray(saved["final_weights"]["weights"], np.float64)
    is_noisy = np.asarray(saved["final_weights"]["is_noisy"], bool)
    if method == "ce_clean":
      assert row[5] == "–"
    else:
      assert row[5] == f"{100 * np.sum(w[is_noisy]) / np.sum(w):.1f}"
  # The train split: 1438 digits minus the 10-per-class meta set and 15% validation, about
  # 40% noisy labels; the validation labels are as noisy.
  assert 0.25 < np.mean(is_noisy) < 0.55
  assert 0.25 < np.mean(val["is_noisy"]) < 0.55
  assert len(val["label"]) == pytest.approx(0.15 * (1438 - 100), abs=10)
  gap = {m: (final[m] - final["ce"]) / (final["ce_clean"] - final["ce"])
         for m in ("gce", "l2rw")}
  for method, g in gap.items():
    assert table_row(text, SETTING, method)[4] == f"{100 * g:.0f}%"
  best = max(("gce", "l2rw"), key=lambda m: val_acc[m])  # on validation, never on test
  summary = table_row(text, "Gap closed by the best method on validation", SETTING)
  assert summary[1:8] == [f"{100 * final['ce']:.1f}", f"{100 * final['ce_clean']:.1f}", best,
                          f"{100 * val_acc[best]:.1f}", f"{100 * final[best]:.1f}",
                          f"{100 * (final[best] - final['ce']):+.1f} (n = 1)",
                          f"{100 * gap[best]:.0f}%"]
  assert summary[9:] == [f"{100 * final['gce']:.1f}",  # gce: the only one without clean data
                         f"{100 * (final['gce'] - final['ce']):+.1f} (n = 1)",
                         f"{100 * gap['gce']:.0f}%"]
  assert summary[8] == "gce"
  # One seed: the verdict line says so instead of claiming a winner.
  assert (f"* {SETTING}: {best} vs ce on test accuracy: cannot be judged at n = 1 seed"
          in text)


def test_best_method_is_chosen_on_validation():
  """A hand-made summary where validation and test disagree: validation decides."""
  summary = {"ce": {"val_accuracy": (0.50, 0.01), "final_accuracy": (0.60, 0.01)},
             "gce": {"val_accuracy": (0.70, 0.02), "final_accuracy": (0.65, 0.01)},
             "l2rw": {"val_accuracy": (0.68, 0.02), "final_accuracy": (0.90, 0.01)}}
  assert noisy.best_method(summary, ["gce", "l2rw"]) == "gce"
  assert noisy.best_method(summary, ["l2rw"]) == "l2rw"


def test_weights_favour_clean_labels_for_l2rw(finished):
  """L2RW's weights come from the clean meta set: less weight on noisy labels than uniform."""
  _, workdir, _ = finished
  with open(os.path.join(run_dir(workdir, "l2rw"), "result.json")) as f:
    fw = json.load(f)["final_weights"]
  w, is_noisy = np.asarray(fw["weights"]), np.asarray(fw["is_noisy"], bool)
  assert np.sum(w[is_noisy]) / np.sum(w) < np.mean(is_noisy)


def test_setting_config_rejects_unknown_dataset():
  with pytest.raises(ValueError, match="dataset='cifar10' is not one of"):
    noisy.setting_config(tiny_config(), "cifar10", "symmetric", 0.4)


def test_validation_split_is_a_partition_of_train():
  train = {"x": np.arange(50.0)[:, None], "label": np.arange(50) % 5,
           "id": np.arange(50, dtype=np.int32)}
  fit, val = noisy.validation_split(train, 0.2, seed=3)
  assert len(val["label"]) == 10 and len(fit["label"]) == 40
  assert sorted(np.concatenate([fit["x"][:, 0], val["x"][:, 0]]).tolist()) == list(range(50))
  assert fit["id"].tolist() == list(range(40))
