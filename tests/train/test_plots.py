"""Plot data against NumPy, and the figures are written."""

import matplotlib.image
import numpy as np

from reweight.train import plots


def histories(seed, n):
  rng = np.random.default_rng(seed)
  return [{"step": 10 * (i + 1), "test_accuracy": float(rng.random()),
           "train_loss": float(rng.random())} for i in range(n)]


def test_curve_data_is_mean_and_std_over_seeds():
  runs = {"a": [histories(0, 5), histories(1, 4)], "b": [histories(2, 3)]}
  data = plots.curve_data(runs, "test_accuracy")
  acc = np.array([[r["test_accuracy"] for r in h[:4]] for h in runs["a"]])
  steps, mean, std = data["a"]
  np.testing.assert_array_equal(steps, [10, 20, 30, 40])
  np.testing.assert_allclose(mean, acc.mean(0))
  np.testing.assert_allclose(std, acc.std(0))
  assert len(data["b"][0]) == 3


def test_figures_are_written(tmp_path):
  runs = {"a": [histories(0, 5)], "b": [histories(1, 5)]}
  path = plots.curves(runs, str(tmp_path / "c.png"))
  assert matplotlib.image.imread(path).shape[0] > 100
  rng = np.random.default_rng(0)
  fw = {"a": {"weights": rng.random(50), "is_noisy": rng.random(50) > 0.5},
        "no_noise_field": {"weights": rng.random(50)}}
  path = plots.weight_histograms(fw, str(tmp_path / "w.png"))
  assert matplotlib.image.imread(path).shape[0] > 100
  assert plots.weight_histograms({"x": {"weights": np.ones(3)}}, str(tmp_path / "n.png")) == ""


def test_every_curves_panel_has_a_legend_and_a_loss_of_another_scale_is_on_log(tmp_path,
                                                                                monkeypatch):
  runs = {"ce": [histories(0, 5)], "sce": [histories(1, 5)]}
  for r in runs["sce"][0]:
    r["train_loss"] = 40 + 10 * r["train_loss"]  # SCE's scale: CE's would be flat on linear
  figures = []
  plt = plots._pyplot()
  monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
  plots.curves(runs, str(tmp_path / "c.png"))
  (fig,) = figures
  acc, loss = fig.axes
  for ax in (acc, loss):
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ce", "sce"]
    assert ax.get_xlabel() == "step" and ax.get_ylabel()
  assert acc.get_yscale() == "linear" and loss.get_yscale() == "log"
  plt.close(fig)
  rng = np.random.default_rng(0)
  fw = {"a": {"weights": rng.random(50), "is_noisy": rng.random(50) > 0.5}}
  plots.weight_histograms(fw, str(tmp_path / "w.png"))
  ax = figures[-1].axes[0]
  assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
  plt.close(figures[-1])
