r"""Class imbalance: which weightings recover the minority classes of a long-tailed split?

Settings: digits, subsampled to a long tail with each imbalance ratio of
``config.imbalance_ratios`` (10, 100): class c keeps ``floor(n_max * ratio ** (-c / 9))``
examples (`reweight.data.corruptions.class_imbalance`). Methods (``config.methods``): CE, the
focal loss, class-balanced weights from the training class counts (Cui et al.), the four
loss-based weightings (Sow et al.), and L2RW and Meta-Weight-Net with a BALANCED meta set of
``config.meta_per_class`` examples per class. The meta set is taken out of TRAIN before the
subsampling, for every method, so all methods train on the same long-tailed examples. The
test split is the usual (nearly balanced) one.

Each setting is one `reweight.train.experiment.run` (methods x seeds) in
``workdir/<dataset>_ratio<r>``, with its ``table.md`` and ``curves.png``. Then one report,
``workdir/report.md`` (also printed), has a table per setting (final accuracy, final and best
balanced accuracy, read from the runs' histories) and a summary: the method with the best
final balanced accuracy and its gain over CE. The best balanced accuracy along training is
reported, never used to choose anything. ``workdir/balanced_accuracy.png`` plots the
balanced accuracy along training.

  python experiments/class_imbalance.py --config=configs/class_imbalance.py \
      --workdir=/tmp/class_imbalance

References:
  Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of Samples",
  CVPR 2019.

  Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017.

  Ren, Zeng, Yang, Urtasun, "Learning to Reweight Examples for Robust Deep Learning",
  ICML 2018.

  Shu et al., "Meta-Weight-Net: Learning an Explicit Mapping For Sample Weighting",
  NeurIPS 2019.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from reweight.train import experiment, plots  # noqa: E402

# ------------------------------------------------------------------------------ settings


def setting_name(dataset: str, ratio: float) -> str:
  """``"digits_ratio10"``: the folder of one setting."""
  return f"{dataset}_ratio{ratio:g}"


def setting_config(config: ml_collections.ConfigDict, ratio: float) -> ml_collections.ConfigDict:
  """The `experiment.run` config of one imbalance ratio (clean labels)."""
  c = ml_collections.ConfigDict()
  for key in ("dataset", "meta_per_class", "seeds", "model", "model_kwargs", "optimizer",
              "learning_rate", "weight_decay", "steps", "batch_size", "microbatches",
              "eval_every", "methods"):
    c[key] = config[key]
  c.imbalance_ratio = float(ratio)
  c.noise_kind = "symmetric"
  c.noise_rate = 0.0
  c.checkpoint_every = c.steps  # one checkpoint at the end: runs are short
  return c


def train_class_counts(config: ml_collections.ConfigDict, seed: int) -> list[int]:
  """Examples per class of the training split the methods see (the meta set removed)."""
  train, _, _, num_classes = experiment.prepare_data(config, seed)
  return np.bincount(train["label"], minlength=num_classes).tolist()


def histories(workdir: str, config: ml_collections.ConfigDict) -> dict[str, list[list[dict]]]:
  """``{method: [history of seed k, ...]}`` read back from the finished runs."""
  out = {}
  for method in config.methods:
    out[method] = []
    for seed in config.seeds:
      with open(os.path.join(workdir, "runs", method, f"seed{seed}", "result.json")) as f:
        out[method].append(json.load(f)["history"])
  return out


def balanced_accuracy(runs: Mapping[str, list[list[dict]]]) -> dict[str, dict]:
  """Mean and std over seeds of the final and the best test balanced accuracy."""
  out = {}
  for method, hs in runs.items():
    final = np.array([h[-1]["test_balanced_accuracy"] for h in hs])
    best = np.array([max(r["test_balanced_accuracy"] for r in h) for h in hs])
    out[method] = {"final_balanced_accuracy": (final.mean(), final.std()),
                   "best_balanced_accuracy": (best.mean(), best.std())}
  return out


# -------------------------------------------------------------------------------- report


def _pm(stat) -> str:
  return f"{100 * stat[0]:.1f} ± {100 * stat[1]:.1f}"


def setting_table(summary: Mapping[str, Mapping], balanced: Mapping[str, Mapping]) -> str:
  """One row per method: final accuracy, final and best balanced accuracy."""
  lines = ["| method | final test acc | final balanced acc | best balanced acc |",
           "|---|---|---|---|"]
  for method, s in summary.items():
    b = balanced[method]
    lines.append(f"| {method} | {_pm(s['final_accuracy'])} | "
                 f"{_pm(b['final_balanced_accuracy'])} | {_pm(b['best_balanced_accuracy'])} |")
  return "\n".join(lines)


def summary_table(results: Mapping[str, Mapping], config: ml_collections.ConfigDict) -> str:
  """Per setting: CE's balanced accuracy, the best method's and the difference."""
  ref = config.reference
  lines = [f"| setting | {ref} final balanced acc | best method | its final balanced acc | "
           f"gain over {ref} (points) |", "|---|---|---|---|---|"]
  for name, r in results.items():
    bal = r["balanced"]
    others = [m for m in bal if m != ref]
    best = max(others, key=lambda m: bal[m]["final_balanced_accuracy"][0])
    gain = bal[best]["final_balanced_accuracy"][0] - bal[ref]["final_balanced_accuracy"][0]
    lines.append(f"| {name} | {_pm(bal[ref]['final_balanced_accuracy'])} | {best} | "
                 f"{_pm(bal[best]['final_balanced_accuracy'])} | {100 * gain:+.1f} |")
  return "\n".join(lines)


def report(results: Mapping[str, Mapping], config: ml_collections.ConfigDict) -> str:
  """The combined Markdown report: the summary, then one table per setting."""
  parts = [
      "# Class imbalance",
      "",
      f"{config.dataset}, {config.model}, {config.steps} steps, lr {config.learning_rate}, "
      f"seeds {tuple(config.seeds)}; mean ± std over seeds, in %. Balanced accuracy = mean "
      "over classes of the per-class test accuracy. Final = after the last step; best = the "
      "highest along training (reported, never used to choose anything). The best method is "
      "picked by its final balanced accuracy; l2rw and mw_net use a balanced meta set of "
      f"{config.meta_per_class} examples per class, taken out of TRAIN for every method.",
      "",
      "## Best method per setting",
      "",
      summary_table(results, config),
  ]
  for name, r in results.items():
    parts += ["", f"## {name}", "",
              f"Training examples per class (seed {config.seeds[0]}): {r['class_counts']}; "
              f"plots: `{name}/curves.png`.", "",
              setting_table(r["summary"], r["balanced"])]
  return "\n".join(parts) + "\n"


def plot_balanced_accuracy(results: Mapping[str, Mapping], path: str) -> str:
  """Test balanced accuracy along training (mean ± std over seeds), a panel per setting."""
  fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.5), squeeze=False)
  for ax, (name, r) in zip(axes[0], results.items(), strict=True):
    for method, (steps, mean, std) in plots.curve_data(r["runs"],
                                                       "test_balanced_accuracy").items():
      ax.plot(steps, 100 * mean, label=method)
      ax.fill_between(steps, 100 * (mean - std), 100 * (mean + std), alpha=0.15)
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.set_ylabel("test balanced accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0, -1].legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------- main


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> str:
  """Runs every ratio, writes ``report.md`` and ``balanced_accuracy.png``; returns the report."""
  results = {}
  for ratio in config.imbalance_ratios:
    name = setting_name(config.dataset, ratio)
    setting = setting_config(config, ratio)
    out = experiment.run(setting, os.path.join(workdir, name), progress=progress)
    runs = histories(os.path.join(workdir, name), setting)
    results[name] = {"summary": out["summary"], "runs": runs,
                     "balanced": balanced_accuracy(runs),
                     "class_counts": train_class_counts(setting, config.seeds[0])}
  text = report(results, config)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(text)
  plot_balanced_accuracy(results, os.path.join(workdir, "balanced_accuracy.png"))
  return text


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  # The settings compile the same train steps: compile each once.
  jax.config.update("jax_compilation_cache_dir", os.path.join(_WORKDIR.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  print(run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":  # flags only here, so that tests can import this module
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/class_imbalance.py",
                                            "Path to an ml_collections config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "workdir/class_imbalance",
                                 "Where runs, tables and plots go.")
  app.run(main)
