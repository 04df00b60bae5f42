"""The noisy-labels experiment at a tiny size: it runs end to end and its report's numbers
are the runs'.

The final test accuracy of each run is recomputed with a NumPy forward pass of the saved
parameters, the weight share on noisy labels from the saved weights and noise flags, and
the gap closed from its formula; the report must show exactly those numbers.
"""

import json
import os

import numpy as np
import pytest
from experiment_checks import mlp_predictions, table_row

from configs import noisy_labels as noisy_config
from experiments import noisy_labels as noisy
from reweight.data import datasets

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
  final = {}
  for method in METHODS:
    with open(os.path.join(run_dir(workdir, method), "result.json")) as f:
      saved = json.load(f)
    history = saved["history"]
    assert [r["step"] for r in history] == [10, 20, 30]
    final[method] = numpy_test_accuracy(workdir, method)
    assert history[-1]["test_accuracy"] == pytest.approx(final[method], abs=1e-9)
    best = max(r["test_accuracy"] for r in history)
    row = table_row(text, SETTING, method)
    assert row[1] == f"{100 * final[method]:.1f} ± 0.0"
    assert row[2] == f"{100 * best:.1f} ± 0.0"
    w = np.asarray(saved["final_weights"]["weights"], np.float64)
    is_noisy = np.asarray(saved["final_weights"]["is_noisy"], bool)
    if method == "ce_clean":
      assert row[4] == "–"
    else:
      assert row[4] == f"{100 * np.sum(w[is_noisy]) / np.sum(w):.1f} ± 0.0"
  # The train split: 1438 digits minus the 10-per-class meta set, about 40% noisy labels.
  assert 0.25 < np.mean(is_noisy) < 0.55
  gap = {m: (final[m] - final["ce"]) / (final["ce_clean"] - final["ce"])
         for m in ("gce", "l2rw")}
  for method, g in gap.items():
    assert table_row(text, SETTING, method)[3] == f"{100 * g:.0f}%"
  best = max(gap, key=lambda m: final[m])
  summary = table_row(text, "Gap closed by the best method", SETTING)
  assert summary[1:6] == [f"{100 * final['ce']:.1f} ± 0.0", f"{100 * final['ce_clean']:.1f} ± 0.0",
                          best, f"{100 * final[best]:.1f} ± 0.0", f"{100 * gap[best]:.0f}%"]
  assert summary[6] == ("yes" if gap[best] >= 0.5 else "no")
  assert summary[7:] == ["gce", f"{100 * gap['gce']:.0f}%"]  # the only one without clean data


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
