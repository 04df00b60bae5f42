r"""Noisy labels: which losses and weightings recover the accuracy of clean labels?

Settings: each dataset of ``config.datasets`` (digits, MNIST-1D) x each label noise of
``config.noise_settings`` (symmetric 20/40/60%, pair-flip 40%). Methods (``config.methods``):
CE, the robust losses GCE, SCE and focal, the four loss-based weightings (Sow et al.), L2RW
and Meta-Weight-Net (with a clean meta set of ``config.meta_per_class`` examples per class
taken from TRAIN, never from test), the self-taught rescaler (no clean data) and CE on the
clean labels (an upper bound). All methods of a setting train on the same examples: the
meta set is removed from the train split for every method.

Validation: ``config.val_fraction`` of every class of the rest of TRAIN is held out after the
label noise (its labels are as noisy as the training labels; the clean meta set of the meta
methods is separate and is not validation), the same examples for every method of a seed.
Every method is evaluated on validation and test at every evaluation; all numbers are those
of the last step (no checkpoint is chosen).

Each setting is one `reweight.train.experiment.run` (methods x seeds) in
``workdir/<dataset>_<kind><rate>``, with its ``table.md``, ``curves.png`` and
``weights.png``. Then one report, ``workdir/report.md`` (also printed), has a table per
setting and a summary: the method with the highest mean validation accuracy (`best_method`;
test plays no part in the choice), its test accuracy beside its validation accuracy, its
paired test-accuracy difference from CE over seeds with the 95% t-interval
(`reweight.train.report.paired_difference`), and the share of the gap between CE on noisy
labels and CE on clean labels that it closes,

.. math::

  \text{gap closed}(m) = \frac{acc(m) - acc(\text{CE, noisy})}
                              {acc(\text{CE, clean}) - acc(\text{CE, noisy})},

with ``acc`` the mean over seeds of the final test accuracy. Means ± sample std (ddof=1)
with n stated. ``workdir/final_accuracy.png`` plots the final test accuracy of every method
in every setting.

  python experiments/noisy_labels.py --config=configs/noisy_labels.py --workdir=/tmp/noisy

The learning rate per dataset was chosen once with ``--validate``: CE on the clean labels,
trained on 80% of TRAIN and evaluated on the other 20%; it prints the validation accuracy
along training (up to 1.5x the configured steps), the learning rate with the best final
accuracy and the step from which that curve has plateaued, which the configured steps
must pass.

  python experiments/noisy_labels.py --config=configs/noisy_labels.py --validate

References:
  Ren, Zeng, Yang, Urtasun, "Learning to Reweight Examples for Robust Deep Learning",
  ICML 2018.

  Shu et al., "Meta-Weight-Net: Learning an Explicit Mapping For Sample Weighting",
  NeurIPS 2019.

  Sow et al., "Dynamic Loss-Based Sample Reweighting for Improved Large Language Model
  Pretraining", ICLR 2025.

  Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with
  Noisy Labels", NeurIPS 2018. Wang et al., "Symmetric Cross Entropy for Robust Learning
  with Noisy Labels", ICCV 2019.
"""

from __future__ import annotations

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

import reweight  # noqa: E402
from reweight.data import datasets  # noqa: E402
from reweight.train import experiment, loop  # noqa: E402
from reweight.train import report as stats  # noqa: E402
from reweight.train.models import functional, make_model  # noqa: E402
from reweight.train.step import classification_loss  # noqa: E402

VALIDATION_SALT = 0x76616C69

# ------------------------------------------------------------------------------ settings


def setting_name(dataset: str, kind: str, rate: float) -> str:
  """``"digits_symmetric40"``: the folder of one setting."""
  return f"{dataset}_{kind}{round(100 * rate)}"


def setting_config(config: ml_collections.ConfigDict, dataset: str, kind: str,
                   rate: float) -> ml_collections.ConfigDict:
  """The `experiment.run` config of one setting: shared fields + the dataset's training."""
  if dataset not in config.training:
    raise ValueError(f"dataset={dataset!r} is not one of {sorted(config.training)}")
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.noise_kind = kind
  c.noise_rate = float(rate)
  c.imbalance_ratio = 1.0
  c.meta_per_class = config.meta_per_class
  c.val_fraction = config.val_fraction
  for key in ("optimizer", "weight_decay", "batch_size", "microbatches", "seeds"):
    c[key] = config[key]
  c.update(config.training[dataset])
  c.checkpoint_every = c.steps  # one checkpoint at the end: runs are short
  c.methods = config.methods
  return c


# -------------------------------------------------------------------------------- report


def gap_closed(summary: Mapping[str, Mapping], method: str, reference: str,
               upper_bound: str, key: str = "final_accuracy") -> float:
  """``(acc(method) - acc(reference)) / (acc(upper_bound) - acc(reference))``, means."""
  ref, top = summary[reference][key][0], summary[upper_bound][key][0]
  return (summary[method][key][0] - ref) / (top - ref)


def best_method(summary: Mapping[str, Mapping], candidates) -> str:
  """The candidate with the highest mean final VALIDATION accuracy (ties: the earlier one);
  test accuracy plays no part (`experiment.best_on_validation`)."""
  return experiment.best_on_validation(summary, candidates, "val_accuracy")


_pm = experiment.format_pm


def versus(summary: Mapping[str, Mapping], method: str, reference: str) -> dict:
  """`report.paired_difference` of the final test accuracy, ``method - reference``."""
  return stats.paired_difference(summary[method]["per_seed"]["final_accuracy"],
                                 summary[reference]["per_seed"]["final_accuracy"])


def setting_table(summary: Mapping[str, Mapping], config: ml_collections.ConfigDict) -> str:
  """One row per method: validation and test accuracy, the paired test difference from the
  reference (CE) with its 95% interval, gap closed, weight on noisy labels."""
  ref = config.reference
  lines = [f"| method | val acc | test acc | test acc − {ref} (95% CI) | gap closed (test) | "
           "weight on noisy (last epoch) |", "|---|---|---|---|---|---|"]
  for method, s in summary.items():
    gap = diff = "–"
    if method != ref:
      diff = experiment.format_difference(versus(summary, method, ref))
    if method not in (ref, config.upper_bound):
      gap = f"{100 * gap_closed(summary, method, ref, config.upper_bound):.0f}%"
    share = "–"  # the upper bound trains on the clean labels: no noisy ones to weigh
    if "noisy_weight_share" in s and method != config.upper_bound:
      share = _pm(s["noisy_weight_share"])
    lines.append(f"| {method} | {_pm(s['val_accuracy'])} | {_pm(s['final_accuracy'])} | "
                 f"{diff} | {gap} | {share} |")
  return "\n".join(lines)


def summary_table(results: Mapping[str, Mapping], config: ml_collections.ConfigDict) -> str:
  """Per setting: CE noisy / clean (test), the method best on validation with its validation
  and test accuracy, its paired test difference from CE and the share of the gap it
  closes; the same for the best on validation among the methods without clean data."""
  ref, top = config.reference, config.upper_bound
  others = [m for m in config.methods if m not in (ref, top)]
  no_clean = [m for m in others if m not in config.uses_clean_data]
  lines = [f"| setting | {ref} (noisy), test | {top}, test | best on val | its val acc | "
           f"its test acc | − {ref} (95% CI) | gap closed | best on val without clean data | "
           f"its test acc | − {ref} (95% CI) | gap closed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, summary in results.items():
    best = best_method(summary, others)
    cells = [name, _pm(summary[ref]["final_accuracy"]), _pm(summary[top]["final_accuracy"]),
             best, _pm(summary[best]["val_accuracy"]), _pm(summary[best]["final_accuracy"]),
             experiment.format_difference(versus(summary, best, ref)),
             f"{100 * gap_closed(summary, best, ref, top):.0f}%"]
    if no_clean:
      nc = best_method(summary, no_clean)
      cells += [nc, _pm(summary[nc]["final_accuracy"]),
                experiment.format_difference(versus(summary, nc, ref)),
                f"{100 * gap_closed(summary, nc, ref, top):.0f}%"]
    else:
      cells += ["–"] * 4
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def verdicts(results: Mapping[str, Mapping], config: ml_collections.ConfigDict) -> list[str]:
  """One `report.verdict` line per setting: the method best on validation (and the best
  without clean data, when it differs) against the reference, on test accuracy."""
  ref, top = config.reference, config.upper_bound
  others = [m for m in config.methods if m not in (ref, top)]
  no_clean = [m for m in others if m not in config.uses_clean_data]
  lines = []
  for name, summary in results.items():
    chosen = [best_method(summary, others)]
    if no_clean and best_method(summary, no_clean) not in chosen:
      chosen.append(best_method(summary, no_clean))
    said = [stats.verdict(experiment.in_points(versus(summary, m, ref)), m, ref,
                          "test accuracy", higher_is_better=True, digits=1)
            for m in chosen]
    lines.append(f"* {name}: " + "; ".join(said) + ".")
  return lines


def report(results: Mapping[str, Mapping], config: ml_collections.ConfigDict) -> str:
  """The combined Markdown report: the summary, then one table per setting."""
  n = next(iter(next(iter(results.values())).values()))["n"]
  clean = ", ".join(m for m in config.uses_clean_data if m != config.upper_bound)
  parts = [
      "# Noisy labels",
      "",
      f"Seeds {tuple(config.seeds)}: mean ± sample std (ddof=1) over n = {n} seeds, in %, "
      "at the last step (no checkpoint is chosen). Validation: "
      f"{100 * config.val_fraction:.0f}% of every class of TRAIN, held out after the label "
      "noise (as noisy as the training labels), the same for every method. The best method "
      f"of a setting is the one with the highest mean validation accuracy among all but "
      f"{config.reference} and {config.upper_bound}; its test accuracy is reported beside. "
      f"− {config.reference}: the paired difference of test accuracy over seeds (points), "
      "with its 95% t-interval. Gap closed = (acc - acc(CE noisy)) / (acc(CE clean) - "
      f"acc(CE noisy)) on mean test accuracy. {clean} use {config.meta_per_class} clean "
      "training examples per class (a meta set taken out of TRAIN for every method, "
      "separate from validation).",
      "",
      "## Gap closed by the best method on validation",
      "",
      summary_table(results, config),
      "",
      "Verdicts (differences in points; \"beats\" only when the paired 95% interval excludes "
      "zero):",
      "",
      *verdicts(results, config),
  ]
  for name, summary in results.items():
    dataset = name.split("_")[0]
    t = config.training[dataset]
    parts += ["", f"## {name}", "",
              f"{t.model}, {t.steps} steps, lr {t.learning_rate}; plots: "
              f"`{name}/curves.png`, `{name}/weights.png`.", "",
              setting_table(summary, config)]
  return "\n".join(parts) + "\n"


def plot_final_accuracy(results: Mapping[str, Mapping], path: str) -> str:
  """Final test accuracy (mean ± std) of every method in every setting, a panel per dataset."""
  by_dataset: dict[str, list[str]] = {}
  for name in results:
    by_dataset.setdefault(name.split("_")[0], []).append(name)
  fig, axes = plt.subplots(1, len(by_dataset), figsize=(7 * len(by_dataset), 4.5),
                           squeeze=False)
  for ax, (dataset, names) in zip(axes[0], by_dataset.items(), strict=True):
    methods = list(results[names[0]])
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    for j, method in enumerate(methods):
      x = np.arange(len(names)) + (j - len(methods) / 2) * 0.06
      m = [100 * results[n][method]["final_accuracy"][0] for n in names]
      s = [100 * (results[n][method]["final_accuracy"][1] or 0.0) for n in names]
      ax.errorbar(x, m, yerr=s, fmt="osD^v"[j % 5], ms=4, color=colors[j % 20], label=method)
    ax.set_xticks(np.arange(len(names)), [n[len(dataset) + 1:] for n in names])
    ax.set_title(dataset)
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------- validation


def validation_split(train: Mapping[str, np.ndarray], fraction: float, seed: int):
  """Splits TRAIN at random into (fit, validation); ``fraction`` goes to validation."""
  n = len(train["label"])
  perm = np.random.default_rng([VALIDATION_SALT, seed]).permutation(n)
  n_val = int(round(fraction * n))
  fit, val = np.sort(perm[n_val:]), np.sort(perm[:n_val])
  fit_ds = {k: v[fit] for k, v in train.items()}
  fit_ds["id"] = np.arange(len(fit), dtype=fit_ds["id"].dtype)  # the pipeline's index
  return fit_ds, {k: v[val] for k, v in train.items()}


def validate(config: ml_collections.ConfigDict) -> str:
  """CE on clean labels, validation accuracy along training, per dataset and learning rate.

  Names the learning rate with the best final validation accuracy (mean over
  ``config.validation.seeds``) and the step from which its curve stays within one point of
  its best (the configured ``steps`` should be past it: every method trains to the end).
  """
  v = config.validation
  lines = []
  for dataset in config.datasets:
    t = config.training[dataset]
    steps = int(v.max_steps_factor * t.steps)
    num_classes = datasets.num_classes(dataset)
    curves = {}
    for lr in v.learning_rates:
      accs = []
      for seed in v.seeds:
        fit, val = validation_split(datasets.load(dataset, "train"), v.fraction, seed)
        fn = functional(make_model(t.model, seed=seed, num_classes=num_classes,
                                   **dict(t.model_kwargs)))
        optimizer = experiment.make_optimizer(ml_collections.ConfigDict(
            {"optimizer": config.optimizer, "learning_rate": lr,
             "weight_decay": config.weight_decay}))
        result = loop.train(
            apply_fn=fn.apply, params=fn.params,
            per_example_loss=classification_loss(fn.apply, "ce"),
            weighting=reweight.uniform(), optimizer=optimizer, train_ds=fit, test_ds=val,
            num_classes=num_classes, steps=steps, batch_size=config.batch_size, seed=seed,
            eval_every=t.eval_every, progress=False)
        accs.append([r["test_accuracy"] for r in result.history])
        at = [r["step"] for r in result.history]
      curves[lr] = (np.asarray(at), np.mean(accs, axis=0))
    lines.append(f"{dataset} ({t.model}), CE on clean labels, validation accuracy (%):")
    for lr, (at, acc) in curves.items():
      points = (f"{s}: {100 * a:.1f}" for s, a in zip(at, acc, strict=True))
      lines.append(f"  lr {lr:g}: " + ", ".join(points))
    lr = max(curves, key=lambda k: curves[k][1][-1])
    at, acc = curves[lr]
    below = np.flatnonzero(acc < acc.max() - 0.01)
    plateau = int(at[below[-1] + 1]) if len(below) else int(at[0])
    lines.append(f"  best final: lr {lr:g}; within one point of its best "
                 f"({100 * acc.max():.1f}%) from step {plateau} on (configured: {t.steps})")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------- main


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> str:
  """Runs every setting, writes ``report.md`` and ``final_accuracy.png``; returns the report."""
  results = {}
  for dataset in config.datasets:
    for kind, rate in config.noise_settings:
      name = setting_name(dataset, kind, rate)
      out = experiment.run(setting_config(config, dataset, kind, rate),
                           os.path.join(workdir, name), progress=progress)
      results[name] = out["summary"]
  text = report(results, config)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(text)
  plot_final_accuracy(results, os.path.join(workdir, "final_accuracy.png"))
  return text


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  # The settings of a dataset compile the same train steps: compile each once.
  jax.config.update("jax_compilation_cache_dir", os.path.join(_WORKDIR.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  if _VALIDATE.value:
    print(validate(_CONFIG.value))
    return
  print(run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":  # flags only here, so that tests can import this module
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/noisy_labels.py",
                                            "Path to an ml_collections config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "workdir/noisy_labels",
                                 "Where runs, tables and plots go.")
  _VALIDATE = flags.DEFINE_bool("validate", False, "Only print the validation curves of CE "
                                "on clean labels (a split of TRAIN), to choose the training.")
  app.run(main)
