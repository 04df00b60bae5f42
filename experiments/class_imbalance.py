r"""Class imbalance: which weightings recover the minority classes of a long-tailed split?

Settings: digits, subsampled to a long tail with each imbalance ratio of
``config.imbalance_ratios`` (10, 100): class c keeps ``floor(n_max * ratio ** (-c / 9))``
examples (`reweight.data.corruptions.class_imbalance`). Methods (``config.methods``): CE, the
focal loss, class-balanced weights from the training class counts (Cui et al.), the four
loss-based weightings (Sow et al.), and L2RW and Meta-Weight-Net with a BALANCED meta set of
``config.meta_per_class`` examples per class. The meta set is taken out of TRAIN before the
subsampling, for every method, so all methods train on the same long-tailed examples. Then
``config.val_fraction`` of every class of the rest is held out as VALIDATION, also before the
subsampling, so it is balanced like the test split (the usual, nearly balanced one). All
numbers are those of the last step (no checkpoint is chosen).

Each setting is one `reweight.train.experiment.run` (methods x seeds) in
``workdir/<dataset>_ratio<r>``, with its ``table.md`` and ``curves.png``. Then one report,
``workdir/report.md`` (also printed), has a table per setting (validation balanced accuracy,
test accuracy and balanced accuracy, the paired difference of test balanced accuracy from
CE with its 95% t-interval, read from the runs' histories) and a summary: the method with
the highest mean VALIDATION balanced accuracy (`best_method`; test plays no part in the
choice), its test balanced accuracy beside, and its paired difference from CE. Means ±
sample std (ddof=1) with n stated. ``workdir/balanced_accuracy.png`` plots the test
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
from reweight.train import report as stats  # noqa: E402

# ------------------------------------------------------------------------------ settings


def setting_name(dataset: str, ratio: float) -> str:
  """``"digits_ratio10"``: the folder of one setting."""
  return f"{dataset}_ratio{ratio:g}"


def setting_config(config: ml_collections.ConfigDict, ratio: float) -> ml_collections.ConfigDict:
  """The `experiment.run` config of one imbalance ratio (clean labels)."""
  c = ml_collections.ConfigDict()
  for key in ("dataset", "meta_per_class", "val_fraction", "seeds", "model", "model_kwargs",
              "optimizer", "learning_rate", "weight_decay", "steps", "batch_size", "microbatches",
              "eval_every", "methods"):
    c[key] = config[key]
  c.imbalance_ratio = float(ratio)
  c.noise_kind = "symmetric"
  c.noise_rate = 0.0
  c.checkpoint_every = c.steps  # one checkpoint at the end: runs are short
  return c


def train_class_counts(config: ml_collections.ConfigDict, seed: int) -> list[int]:
  """Examples per class of the training split the methods see (the meta set removed)."""
  splits = experiment.prepare_splits(config, seed)
  return np.bincount(splits.train["label"], minlength=splits.num_classes).tolist()


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
  """Per method, mean ± sample std (`report.mean_std`) over seeds of the last evaluation's
  validation and test balanced accuracy, with the per-seed values (``per_seed``, in the
  order of the seeds) for paired comparisons."""
  out = {}
  for method, hs in runs.items():
    per_seed = {"val_balanced_accuracy": [h[-1]["val_balanced_accuracy"] for h in hs],
                "final_balanced_accuracy": [h[-1]["test_balanced_accuracy"] for h in hs]}
    out[method] = {k: stats.mean_std(v) for k, v in per_seed.items()}
    out[method]["per_seed"] = per_seed
  return out


def best_method(balanced: Mapping[str, Mapping], candidates) -> str:
  """The candidate with the highest mean final VALIDATION balanced accuracy (ties: the
  earlier one); test accuracy plays no part."""
  return experiment.best_on_validation(balanced, candidates, "val_balanced_accuracy")


def versus(balanced: Mapping[str, Mapping], method: str, reference: str) -> dict:
  """`report.paired_difference` of the final test balanced accuracy, method - reference."""
  return stats.paired_difference(balanced[method]["per_seed"]["final_balanced_accuracy"],
                                 balanced[reference]["per_seed"]["final_balanced_accuracy"])


# -------------------------------------------------------------------------------- report


_pm = experiment.format_pm


def setting_table(summary: Mapping[str, Mapping], balanced: Mapping[str, Mapping],
                  reference: str = "ce") -> str:
  """One row per method: validation balanced accuracy, test accuracy and balanced accuracy,
  and the paired difference of test balanced accuracy from ``reference`` (95% interval)."""
  lines = [f"| method | val balanced acc | test acc | test balanced acc | test balanced acc − "
           f"{reference} (95% CI) |", "|---|---|---|---|---|"]
  for method, s in summary.items():
    b = balanced[method]
    diff = "–" if method == reference else experiment.format_difference(
        versus(balanced, method, reference))
    lines.append(f"| {method} | {_pm(b['val_balanced_accuracy'])} | "
                 f"{_pm(s['final_accuracy'])} | {_pm(b['final_balanced_accuracy'])} | "
                 f"{diff} |")
  return "\n".join(lines)


def summary_table(results: Mapping[str, Mapping], config: ml_collections.ConfigDict) -> str:
  """Per setting: CE's balanced accuracy, the method best on validation (its validation and
  test balanced accuracy) and its paired test difference from CE."""
  ref = config.reference
  lines = [f"| setting | {ref} val balanced acc | {ref} test balanced acc | best on val | "
           f"its val balanced acc | its test balanced acc | − {ref}, test (points, 95% CI) |",
           "|---|---|---|---|---|---|---|"]
  for name, r in results.items():
    bal = r["balanced"]
    best = best_method(bal, [m for m in bal if m != ref])
    lines.append(f"| {name} | {_pm(bal[ref]['val_balanced_accuracy'])} | "
                 f"{_pm(bal[ref]['final_balanced_accuracy'])} | {best} | "
                 f"{_pm(bal[best]['val_balanced_accuracy'])} | "
                 f"{_pm(bal[best]['final_balanced_accuracy'])} | "
                 f"{experiment.format_difference(versus(bal, best, ref))} |")
  return "\n".join(lines)


def verdicts(results: Mapping[str, Mapping], config: ml_collections.ConfigDict) -> list[str]:
  """One `report.verdict` line per setting: the method best on validation against the
  reference, on test balanced accuracy."""
  ref, lines = config.reference, []
  for name, r in results.items():
    bal = r["balanced"]
    best = best_method(bal, [m for m in bal if m != ref])
    lines.append(f"* {name}: " + stats.verdict(
        experiment.in_points(versus(bal, best, ref)), best, ref,
        "test balanced accuracy", higher_is_better=True, digits=1) + ".")
  return lines


def report(results: Mapping[str, Mapping], config: ml_collections.ConfigDict) -> str:
  """The combined Markdown report: the summary, then one table per setting."""
  n = len(config.seeds)
  parts = [
      "# Class imbalance",
      "",
      f"{config.dataset}, {config.model}, {config.steps} steps, lr {config.learning_rate}, "
      f"seeds {tuple(config.seeds)}: mean ± sample std (ddof=1) over n = {n} seeds, in %, at "
      "the last step (no checkpoint is chosen). Balanced accuracy = mean over classes of the "
      f"per-class accuracy. Validation: {100 * config.val_fraction:.0f}% of every class of "
      "TRAIN, held out before the long-tail subsampling (balanced, like the test split). The "
      "best method of a setting is the one with the highest mean validation balanced "
      f"accuracy among all but {config.reference}; its test balanced accuracy is reported "
      f"beside. − {config.reference}: the paired difference of test balanced accuracy over "
      "seeds (points), with its 95% t-interval. l2rw and mw_net use a balanced meta set of "
      f"{config.meta_per_class} examples per class, taken out of TRAIN for every method.",
      "",
      "## Best method on validation per setting",
      "",
      summary_table(results, config),
      "",
      "Verdicts (differences in points; \"beats\" only when the paired 95% interval excludes "
      "zero):",
      "",
      *verdicts(results, config),
  ]
  for name, r in results.items():
    parts += ["", f"## {name}", "",
              f"Training examples per class (seed {config.seeds[0]}): {r['class_counts']}; "
              f"plots: `{name}/curves.png`.", "",
              setting_table(r["summary"], r["balanced"], config.reference)]
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
