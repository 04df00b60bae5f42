r"""Group shift: does Group DRO beat ERM on the worst group of a spurious-feature task?

Task (digits, `reweight.data.corruptions.spurious_marker`): the label is ``y = 1`` iff the
digit is ``>= config.threshold`` (5), a split of the ten digits that no single stroke gives
away. The marker ``m`` is the top-left 2x2 pixel block lit (1) or dark (0), a feature a
network reads off at once. Groups ``g = 2 y + m``: 0 = (digit < 5, dark), 1 = (digit < 5,
lit), 2 = (digit >= 5, dark), 3 = (digit >= 5, lit).

* TRAIN is stamped with ``P(m = y) = config.agreement`` (0.9), so groups 1 and 2 are the
  minorities, then ``config.val_fraction`` of every group is carved out as VALIDATION (the
  training distribution, with group labels, as in Sagawa et al.).
* TEST holds every test image twice, once with each marker: the four groups are measured
  on the same images, and the per-group accuracies give the test accuracy under any mix of
  the groups. Reported: worst-group accuracy; the average accuracy under the TRAINING mix
  of the groups (the paper's "average"); the balanced accuracy (this doubled set: the
  marker independent of the label); and the FLIPPED accuracy (the images whose marker
  disagrees with their label: the training correlation reversed).

Methods (``config.methods``): ERM (uniform weights), online Group DRO
(`reweight.group.group_dro`, step size 0.01 for q, no adjustment) and, as a control, the
same weighting with q frozen at uniform (step size 0: static group-balanced reweighting,
every group's mean loss counts 1/4), each with SGD + momentum and an L2 penalty. For every
method and seed, the L2 strength (``config.weight_decays``) and the early-stopping step
(every ``config.eval_every`` steps) are chosen together on VALIDATION worst-group accuracy
(ties: the higher validation accuracy, then the earlier L2 of the grid, then the earlier
step). The test split is evaluated once, with the chosen parameters. Then per method mean
± sample std (ddof=1) over the seeds, and the paired per-seed differences of
``config.comparisons`` (Group DRO − ERM first) with 95% t-intervals: "beats" is written only
when the interval of the worst-group difference excludes zero.

Outputs in ``workdir``: ``table.md`` (the report, also printed), ``summary.json``,
``val_worst_group.png`` (validation worst-group accuracy along training, per L2 strength),
``q_trajectory.png`` (Group DRO's q at the chosen L2), ``test_groups.png`` (per-group test
accuracy). Each run lives in ``runs/<method>/wd<lambda>/seed<k>`` (``result.json`` with the
validation curve, ``params.npz`` with the parameters at its best validation step); finished
runs are not run again.

  python experiments/group_shift.py --config=configs/group_shift.py \
      --workdir=workdir/group_shift

References:
  Sagawa, Koh, Hashimoto, Liang, "Distributionally Robust Neural Networks for Group Shifts:
  On the Importance of Regularization for Worst-Case Generalization", ICLR 2020.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import reweight  # noqa: E402
from reweight.data import corruptions, datasets, pipeline, samplers  # noqa: E402
from reweight.reparam._core import flatten_with_paths, unflatten_like  # noqa: E402
from reweight.train import experiment, report  # noqa: E402
from reweight.train.models import functional, make_model  # noqa: E402
from reweight.train.state import create  # noqa: E402
from reweight.train.step import classification_loss, make_train_step  # noqa: E402

NUM_GROUPS = 4
GROUP_NAMES = ("digit<5, dark", "digit<5, lit", "digit>=5, dark", "digit>=5, lit")
VAL_SALT = 0x76616C67

# ---------------------------------------------------------------------------------- data


def binary_task(ds: Mapping[str, np.ndarray], threshold: int) -> dict[str, np.ndarray]:
  """``label = 1`` iff the digit is ``>= threshold``; the digit is kept in ``digit``."""
  out = dict(ds)
  out["digit"] = np.asarray(ds["label"])
  out["label"] = (out["digit"] >= threshold).astype(np.int32)
  return out


def split_validation(ds: Mapping[str, np.ndarray], fraction: float, seed: int):
  """``(train, val)``: ``round(fraction * n_g)`` random examples of every group g go to val.

  With ``rng = np.random.default_rng([VAL_SALT, seed])``, for g = 0..3 in turn the members
  of group g (ascending) are permuted with ``rng.permutation``; the first ones go to val.
  """
  rng = np.random.default_rng([VAL_SALT, seed])
  val = []
  for g in range(NUM_GROUPS):
    members = np.flatnonzero(ds["group"] == g)
    val.append(rng.permutation(members)[:int(round(fraction * len(members)))])
  val = np.sort(np.concatenate(val))
  rest = np.setdiff1d(np.arange(len(ds["group"])), val)
  return pipeline.take(ds, rest), pipeline.take(ds, val)


def both_markers(ds: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
  """Every example twice: first with the marker equal to its label, then the opposite."""
  kw = {"pixels": tuple(config.marker_pixels), "value": config.marker_value}
  same = corruptions.spurious_marker(ds, 1.0, seed=0, **kw)
  flipped = corruptions.spurious_marker(ds, 0.0, seed=0, **kw)
  return {k: np.concatenate([same[k], flipped[k]]) for k in same}


def prepare_data(config: ml_collections.ConfigDict, seed: int) -> dict[str, dict]:
  """``{"train", "val", "test"}``: TRAIN stamped with ``config.agreement`` then split; TEST
  with both markers."""
  train = binary_task(datasets.load(config.dataset, "train"), config.threshold)
  train = corruptions.spurious_marker(train, config.agreement, seed,
                                      pixels=tuple(config.marker_pixels),
                                      value=config.marker_value)
  train, val = split_validation(train, config.val_fraction, seed)
  test = both_markers(binary_task(datasets.load(config.dataset, "test"), config.threshold),
                      config)
  return {"train": train, "val": val, "test": test}


def group_accuracy(pred: np.ndarray, ds: Mapping[str, np.ndarray]) -> np.ndarray:
  """Accuracy within each group, ``[4]`` (NaN for an empty group)."""
  correct = np.asarray(pred) == ds["label"]
  return np.array([np.mean(correct[ds["group"] == g]) if np.any(ds["group"] == g)
                   else np.nan for g in range(NUM_GROUPS)])


# -------------------------------------------------------------------------------- models


def make_weighting(spec: Mapping[str, Any]) -> reweight.Weighting:
  """``"uniform"`` or a group weighting of `reweight.group` over the four groups."""
  kwargs = dict(spec.get("weighting_kwargs", {}))
  if spec["weighting"] in reweight.group.WEIGHTINGS:
    kwargs["num_groups"] = NUM_GROUPS
  return experiment.make_weighting(spec["weighting"], **kwargs)


def make_optimizer(config: ml_collections.ConfigDict,
                   weight_decay: float) -> optax.GradientTransformation:
  """SGD with momentum on the loss plus ``weight_decay / 2 * |theta|^2``."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(config.learning_rate, momentum=config.momentum))


# ------------------------------------------------------------------------------ training


def train_run(config, data, fn, train_step, optimizer, weighting, predict, seed: int, *,
              progress: bool, desc: str):
  """One run; returns its validation curve, the best step and the parameters there.

  Every ``config.eval_every`` steps: per-group validation accuracy, the worst of them, the
  validation accuracy, the last batch's mean loss and (Group DRO) ``q``. The best step is
  the first maximum of (worst-group, average) validation accuracy.
  """
  params = jax.tree.map(jnp.copy, fn.params)  # the step donates its state
  state = create(params, optimizer, weighting, jax.random.PRNGKey(seed))
  train, val = data["train"], data["val"]
  fields = {k: train[k] for k in ("x", "label", "group")}
  sampler = samplers.epoch_sampler(len(train["label"]), config.batch_size, seed)
  curve, best_key, best_step, best_params = [], None, None, None
  for step in tqdm(range(config.steps), desc=desc, disable=not progress, leave=False):
    idx = sampler.indices(step)
    state, metrics = train_step(state, {k: v[idx] for k, v in fields.items()})
    if (step + 1) % config.eval_every:
      continue
    pred = np.asarray(predict(state.trainable, val["x"]))
    acc = group_accuracy(pred, val)
    record = {"step": step + 1, "val_group_accuracy": acc.tolist(),
              "val_worst_group_accuracy": float(np.min(acc)),
              "val_accuracy": float(np.mean(pred == val["label"])),
              "train_loss": float(metrics["mean_loss"])}
    probs = getattr(state.weighting_state, "probs", None)
    if probs is not None:
      record["q"] = np.asarray(probs).tolist()
    curve.append(record)
    key = (record["val_worst_group_accuracy"], record["val_accuracy"])
    if best_key is None or key > best_key:
      best_key, best_step = key, step + 1
      best_params = flatten_with_paths(jax.device_get(state.trainable))
  return curve, best_step, best_params


def select(curves: Mapping[float, list[dict]]) -> tuple[float, int]:
  """``(weight_decay, step)`` of the first maximum of (worst-group, average) validation
  accuracy, weight decays in the given order, steps ascending."""
  best, choice = None, None
  for wd, curve in curves.items():
    for r in curve:
      key = (r["val_worst_group_accuracy"], r["val_accuracy"])
      if best is None or key > best:
        best, choice = key, (wd, r["step"])
  return choice


def chosen_metrics(pred_test, pred_train, data) -> dict[str, Any]:
  """Worst-group, average (training mix), balanced and flipped test accuracy, per group."""
  test, train = data["test"], data["train"]
  acc = group_accuracy(pred_test, test)
  counts = np.bincount(train["group"], minlength=NUM_GROUPS)
  correct = np.asarray(pred_test) == test["label"]
  return {
      "test_group_accuracy": acc.tolist(),
      "test_worst_group_accuracy": float(np.min(acc)),
      "test_average_accuracy": float(np.sum(counts / counts.sum() * acc)),
      "test_balanced_accuracy": float(np.mean(correct)),
      "test_flipped_accuracy": float(np.mean(correct[test["marker"] != test["label"]])),
      "train_group_counts": counts.tolist(),
      "train_group_accuracy": group_accuracy(pred_train, train).tolist(),
      "train_worst_group_accuracy": float(np.min(group_accuracy(pred_train, train))),
  }


# -------------------------------------------------------------------------------- report

METRICS = (("test_worst_group_accuracy", "worst-group"),
           ("test_average_accuracy", "average (training mix)"),
           ("test_balanced_accuracy", "balanced"),
           ("test_flipped_accuracy", "flipped (m ≠ y)"))


TRAIN_METRICS = (("train_worst_group_accuracy", "train worst-group"),)


def summarize(selected: Mapping[str, list[dict]], curves: Mapping[str, Mapping[float, list]],
              comparisons: Sequence[tuple[str, str]]) -> dict[str, Any]:
  """Per method: mean ± std of every metric and per group, and per L2 the mean over seeds of
  the best and the last validation worst-group accuracy; the paired differences ``a - b``
  of every ``(a, b)`` in ``comparisons`` (seeds matched)."""
  out: dict[str, Any] = {"methods": {}, "paired": {}}
  for method, rows in selected.items():
    s = {key: report.mean_std([r[key] for r in rows]) for key, _ in METRICS + TRAIN_METRICS}
    groups = np.asarray([r["test_group_accuracy"] for r in rows])
    s["test_group_accuracy"] = [report.mean_std(groups[:, g]) for g in range(NUM_GROUPS)]
    s["weight_decay"] = [r["weight_decay"] for r in rows]
    s["step"] = [r["step"] for r in rows]
    s["n"] = len(rows)
    s["val_by_l2"] = [
        (float(np.mean([max(r["val_worst_group_accuracy"] for r in c) for c in runs])),
         float(np.mean([c[-1]["val_worst_group_accuracy"] for c in runs])))
        for runs in curves[method].values()]
    out["methods"][method] = s
  for a, b in comparisons:
    assert [r["seed"] for r in selected[a]] == [r["seed"] for r in selected[b]]
    out["paired"][f"{a} − {b}"] = {
        key: report.paired_difference([r[key] for r in selected[a]], [r[key] for r in selected[b]])
        for key, _ in METRICS[:2]}
  return out


def _pm(stat) -> str:
  return report.format_mean_std(stat, 1, 100.0)


def _describe(spec) -> str:
  kwargs = ", ".join(f"{k}={v}" for k, v in dict(spec.get("weighting_kwargs", {})).items())
  return f"{spec['weighting']}({kwargs})"


def verdict(p: Mapping[str, Any], method: str, reference: str) -> str:
  """The sentence about worst-group accuracy (`report.verdict`, in points)."""
  points = {**p, "mean": 100 * p["mean"],
            "ci95": None if p["ci95"] is None else [100 * x for x in p["ci95"]]}
  return report.verdict(points, method, reference, "worst-group accuracy (points)",
                        higher_is_better=True, digits=1)


def markdown_report(summary: Mapping[str, Any], config: ml_collections.ConfigDict) -> str:
  """The Markdown report: main table, per-group table, paired comparison."""
  methods = summary["methods"]
  n = next(iter(methods.values()))["n"]
  lines = [
      "# Group shift: ERM vs Group DRO (digits with a spurious marker)", "",
      f"y = 1 iff digit >= {config.threshold}; marker = top-left 2x2 block lit; groups "
      f"g = 2y + m. Train/validation: P(m = y) = {config.agreement}; test: every test "
      f"image with both markers. {config.model} {tuple(config.model_kwargs.hidden)}, SGD "
      f"lr {config.learning_rate} momentum {config.momentum}, batch {config.batch_size}, "
      f"{config.steps} steps; L2 in {tuple(config.weight_decays)} and the early-stopping "
      f"step (every {config.eval_every}) chosen per method and seed on validation "
      f"worst-group accuracy; test evaluated once. Test accuracy in %, mean ± sample std "
      f"(ddof=1) over n = {n} seeds {tuple(config.seeds)}.", "",
      "Methods: " + ", ".join(f"{m} ({_describe(spec)})" for m, spec in
                              config.methods.items()) + ".", "",
      "## Test accuracy", "",
      "Train worst-group: the chosen model on its own training split (did it fit the "
      "minority groups?).", "",
      "| method | " + " | ".join(t for _, t in METRICS) + " | train worst-group | chosen L2 |"
      " chosen step |", "|---|" + "---|" * (len(METRICS) + 3)]
  for method, s in methods.items():
    cells = [_pm(s[key]) for key, _ in METRICS + TRAIN_METRICS]
    cells += [", ".join(f"{w:g}" for w in s["weight_decay"]),
              ", ".join(str(t) for t in s["step"])]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  lines += ["", "## Per-group test accuracy", "",
            "| method | " + " | ".join(f"g{g} ({name})" for g, name in enumerate(GROUP_NAMES))
            + " |", "|---|" + "---|" * NUM_GROUPS]
  for method, s in methods.items():
    lines.append(f"| {method} | " + " | ".join(_pm(x) for x in s["test_group_accuracy"])
                 + " |")
  lines += ["", "## Validation worst-group accuracy per L2 (mean over seeds)", "",
            "Best step / last step of each run; what the selection sees (no test data).", "",
            "| method | " + " | ".join(f"L2 = {wd:g}" for wd in config.weight_decays) + " |",
            "|---|" + "---|" * len(config.weight_decays)]
  for method, s in methods.items():
    cells = [f"{100 * best:.1f} / {100 * last:.1f}" for best, last in s["val_by_l2"]]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  for (a, b), p in zip(config.comparisons, summary["paired"].values()):
    lines += ["", f"## Paired: {a} − {b}", "",
              "| metric | per seed (points) | mean (points) | 95% t-interval (points) |",
              "|---|---|---|---|"]
    for key, title in METRICS[:2]:
      q = p[key]
      seeds = ", ".join(f"{100 * d:+.1f}" for d in q["differences"])
      ci = ("n/a" if q["ci95"] is None
            else f"[{100 * q['ci95'][0]:+.1f}, {100 * q['ci95'][1]:+.1f}]")
      lines.append(f"| {title} | {seeds} | {100 * q['mean']:+.1f} | {ci} |")
    lines += ["", f"**{verdict(p['test_worst_group_accuracy'], a, b)}**"
              f" (paired over n = {n} seeds)."]
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- plots


def plot_val_worst_group(curves, selected, config, path: str) -> str:
  """Validation worst-group accuracy along training, mean ± std over seeds, per L2."""
  wds = list(config.weight_decays)
  fig, axes = plt.subplots(1, len(wds), figsize=(4.2 * len(wds), 3.6), squeeze=False,
                           sharey=True)
  for ax, wd in zip(axes[0], wds):
    for i, method in enumerate(curves):
      rows = np.array([[r["val_worst_group_accuracy"] for r in c]
                       for c in curves[method][wd]])
      steps = [r["step"] for r in curves[method][wd][0]]
      mean, std = 100 * rows.mean(0), 100 * rows.std(0)
      color = f"C{i}"
      ax.plot(steps, mean, color=color, label=method)
      ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
      for r in selected[method]:  # the chosen (L2, step) of each seed
        if r["weight_decay"] == wd:
          ax.plot(r["step"], 100 * r["val_worst_group_accuracy"], "*", color=color, ms=11,
                  mec="k")
    ax.set_title(f"L2 = {wd:g}")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("validation worst-group accuracy (%)")
  axes[0, 0].legend(fontsize=8, title="mean ± std; ★ chosen", title_fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_q(curves: Sequence[list[dict]], chosen: Sequence[dict], path: str) -> str:
  """Group DRO's q along training at the chosen L2, one panel per seed."""
  fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False,
                           sharey=True)
  for ax, curve, r in zip(axes[0], curves, chosen):
    steps = [c["step"] for c in curve]
    q = np.array([c["q"] for c in curve])
    for g in range(NUM_GROUPS):
      ax.plot(steps, q[:, g], label=f"g{g} ({GROUP_NAMES[g]})")
    ax.axvline(r["step"], color="k", ls="--", lw=1)
    ax.set_title(f"seed {r['seed']}, L2 = {r['weight_decay']:g} (-- chosen step)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("q (Group DRO's weight per group)")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_test_groups(summary: Mapping[str, Any], path: str) -> str:
  """Per-group test accuracy of the chosen models, mean ± std over seeds."""
  methods = summary["methods"]
  fig, ax = plt.subplots(figsize=(7, 3.8))
  width = 0.8 / len(methods)
  for i, (method, s) in enumerate(methods.items()):
    mean = [100 * m for m, _ in s["test_group_accuracy"]]
    std = [0.0 if sd is None else 100 * sd for _, sd in s["test_group_accuracy"]]
    ax.bar(np.arange(NUM_GROUPS) + i * width, mean, width, yerr=std, label=method, capsize=3)
  ax.set_xticks(np.arange(NUM_GROUPS) + 0.4 - width / 2,
                [f"g{g}\n{name}" for g, name in enumerate(GROUP_NAMES)], fontsize=8)
  ax.set_ylabel("test accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------- main


def run_dir(workdir: str, method: str, weight_decay: float, seed: int) -> str:
  return os.path.join(workdir, "runs", method, f"wd{weight_decay:g}", f"seed{seed}")


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Trains every (method, L2, seed), selects on validation, tests once, writes the report.

  Returns:
    ``{"summary", "table", "plots", "selected"}``; ``selected[method]`` is the list over
    seeds of the chosen setting and its test metrics.
  """
  os.makedirs(workdir, exist_ok=True)
  methods = dict(config.methods)
  wds = [float(w) for w in config.weight_decays]
  curves = {m: {wd: [] for wd in wds} for m in methods}
  selected = {m: [] for m in methods}
  steps_cache: dict[tuple[str, float], Any] = {}
  bar = tqdm(total=len(methods) * len(wds) * len(config.seeds), desc="runs",
             disable=not progress)
  for seed in config.seeds:
    data = prepare_data(config, seed)
    fn = functional(make_model(config.model, seed=seed, num_classes=2,
                               **dict(config.model_kwargs)))
    predict = jax.jit(lambda p, x, fn=fn: jnp.argmax(fn.apply(p, x), -1))
    for method, spec in methods.items():
      chosen_path = os.path.join(workdir, "runs", method, f"seed{seed}_selected.json")
      for wd in wds:
        path = os.path.join(run_dir(workdir, method, wd, seed), "result.json")
        if not os.path.exists(path):
          weighting, optimizer = make_weighting(spec), make_optimizer(config, wd)
          if (method, wd) not in steps_cache:  # one compiled step per (method, L2)
            per_example = classification_loss(fn.apply, "ce")
            steps_cache[method, wd] = jax.jit(
                make_train_step(per_example, weighting, optimizer), donate_argnums=0)
          curve, best_step, best_params = train_run(
              config, data, fn, steps_cache[method, wd], optimizer, weighting, predict, seed,
              progress=progress, desc=f"{method}/wd{wd:g}/seed{seed}")
          os.makedirs(os.path.dirname(path), exist_ok=True)
          np.savez(os.path.join(os.path.dirname(path), "params.npz"), **best_params)
          report.write_json(path, {"curve": curve, "best_step": best_step, "weight_decay": wd,
                            "seed": seed})
        curves[method][wd].append(report.read_json(path)["curve"])
        bar.update()
      if not os.path.exists(chosen_path):  # the test split, once, at the chosen setting
        wd, step = select({w: curves[method][w][-1] for w in wds})
        saved = report.read_json(os.path.join(run_dir(workdir, method, wd, seed), "result.json"))
        assert saved["best_step"] == step, (saved["best_step"], step)
        with np.load(os.path.join(run_dir(workdir, method, wd, seed), "params.npz")) as f:
          params = unflatten_like(fn.params, dict(f))
        record = next(r for r in saved["curve"] if r["step"] == step)
        out = {"method": method, "seed": seed, "weight_decay": wd, "step": step,
               "val_worst_group_accuracy": record["val_worst_group_accuracy"],
               "val_accuracy": record["val_accuracy"],
               **chosen_metrics(predict(params, data["test"]["x"]),
                              predict(params, data["train"]["x"]), data)}
        report.write_json(chosen_path, out)
      selected[method].append(report.read_json(chosen_path))
  bar.close()

  summary = summarize(selected, curves, config.comparisons)
  table = markdown_report(summary, config)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"summary": summary, "selected": selected}, f, indent=1)
  paths = [plot_val_worst_group(curves, selected, config,
                                os.path.join(workdir, "val_worst_group.png")),
           plot_test_groups(summary, os.path.join(workdir, "test_groups.png"))]
  dro = [m for m, spec in methods.items() if spec["weighting"] == "group_dro"
         and spec["weighting_kwargs"].get("step_size", 0.01) != 0]  # q moves
  for method in dro:
    chosen = selected[method]
    paths.append(plot_q([curves[method][r["weight_decay"]][i] for i, r in enumerate(chosen)],
                        chosen, os.path.join(workdir, f"q_trajectory_{method}.png"
                                             if len(dro) > 1 else "q_trajectory.png")))
  return {"summary": summary, "table": table, "plots": paths, "selected": selected}


def main(argv):
  del argv
  start = time.time()
  out = run(_CONFIG.value, _WORKDIR.value)
  print(out["table"])
  print("plots: " + ", ".join(out["plots"]))
  print(f"wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":  # flags only here, so that tests can import this module
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/group_shift.py",
                                            "Path to an ml_collections config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "workdir/group_shift",
                                 "Where runs, tables and plots go.")
  app.run(main)
