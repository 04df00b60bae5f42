r"""Two conflicting objectives on digits: linear scalarisation vs MGDA vs a Lagrangian.

Data (``prepare_data``): the digits TRAIN split loses ``config.val_fraction`` of its
examples to VALIDATION (``rng = default_rng([VAL_SALT, seed])``, ``rng.permutation``: the
first ones). Every image of TRAIN and of TEST is put in the DEGRADED group (g = 1) with
probability ``config.degraded_fraction`` and then rendered at a lower resolution: every
``block × block`` block of the 8×8 image is replaced by its mean (``block = 4``: a 2×2
thumbnail blown up to 8×8); the others (g = 0, CLEAN) are left as they are. With
``rng = default_rng([GROUP_SALT, seed, s])`` (s = 0 for TRAIN before the validation split,
1 for TEST): ``g = rng.random(n) < degraded_fraction``. The degraded rendering is
deterministic (nothing image-specific to memorise), so the gap measured on the training
split carries over to validation and test.

Objectives (both losses, computed on the whole split, ``objectives``):

* ``ce``: the mean cross-entropy;
* ``gap``: ``|mean CE(g = 1) - mean CE(g = 0)|``, a fairness gap between the two groups'
  mean losses. The degraded group is harder, so the gap is closed only by fitting the
  degraded images better than the model otherwise would, or the clean ones worse: it
  conflicts with ``ce``.

Methods (`reweight.objectives`), all trained with the same full-batch gradient descent with
momentum (``config.learning_rate``, ``config.momentum``, ``config.steps``) on the whole
training split, from the same initialisation per seed:

* ``linear_w<w>``: `linear` ``[1 - w, w]`` for every ``w`` of ``config.linear_weights``:
  the Pareto front that static scalarisation traces;
* ``mgda``: `mgda` (K = 2, closed form) on the two objectives' gradients
  (`objective_grads`) at every step, then the step along ``α_1 g_ce + α_2 g_gap``;
* ``lagrangian``: `lagrangian` ``([θ], η)``: minimise ``ce`` subject to ``gap <= θ`` on the
  training split by dual ascent. The TARGET is ``τ = config.target_fraction`` × the
  VALIDATION gap of the ``linear_w0`` run of the same seed. The training threshold
  ``θ = factor × τ`` (``factor`` in ``config.threshold_factors``: the gap generalises
  imperfectly) and ``η`` (``config.dual_step_sizes``) are chosen together per seed on
  VALIDATION: the lowest validation ``ce`` among the runs whose validation gap is ``<= τ``,
  or, if none is, the lowest validation gap (``choose_lagrangian``; ties: the earlier
  setting, factors outer, step sizes inner). Test: does the chosen run meet ``τ``?

Every run ends after ``config.steps`` steps (no early stopping); validation and test are
evaluated once, at the end. Reported per method: validation and test ``ce`` and ``gap``,
test accuracy (overall and per group), mean ± sample std (ddof=1) over the seeds; whether
the Lagrangian run meets ``θ`` on test; paired per-seed differences (``mgda − linear_w0``,
``lagrangian − linear_w0``) with 95% t-intervals and the verdict of `report.verdict`.

Outputs in ``workdir``: ``table.md`` (also printed), ``summary.json``, ``front.png`` (the
front traced by the linear weights on validation and on test, mean over seeds with each
seed faint, and where ``mgda`` and ``lagrangian`` land), ``weights.png`` (the weight on the
gap along training: MGDA's ``α_2`` and the Lagrange multiplier ``λ``, with the training gap).
Each run lives in ``runs/<method>/seed<k>/`` (``result.json``, ``params.npz``: the final
parameters); finished runs are not run again.

  python experiments/conflicting_objectives.py --config=configs/conflicting_objectives.py \
      --workdir=workdir/conflicting_objectives

References:
  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (MGDA).
  Moskovitz et al., "Confronting Reward Model Overoptimization with Constrained RLHF", ICLR
  2024 (Lagrange multipliers by dual ascent).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping
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

from reweight import objectives as objs  # noqa: E402
from reweight.data import datasets, pipeline  # noqa: E402
from reweight.train import report  # noqa: E402
from reweight.train.models import functional, make_model  # noqa: E402

VAL_SALT = 0x636F6E66
GROUP_SALT = 0x67726F75
OBJECTIVES = ("ce", "gap")

# ---------------------------------------------------------------------------------- data


def block_mean(x: np.ndarray, block: int) -> np.ndarray:
  """``[n, 64]`` 8×8 images with every ``block × block`` block replaced by its mean."""
  if 8 % block:
    raise ValueError(f"block={block!r} must divide 8 (valid: 1, 2, 4, 8)")
  m = x.reshape(-1, 8 // block, block, 8 // block, block).mean((2, 4), keepdims=True)
  return np.broadcast_to(m, (len(x), 8 // block, block, 8 // block, block)).reshape(-1, 64)


def degrade(ds: Mapping[str, np.ndarray], config, seed: int, split: int) -> dict:
  """Adds ``group`` (1 = degraded) and renders the degraded images at low resolution."""
  rng = np.random.default_rng([GROUP_SALT, seed, split])
  x = np.asarray(ds["x"], np.float32)
  g = rng.random(len(x)) < config.degraded_fraction
  out = dict(ds)
  out["x"] = np.where(g[:, None], block_mean(x, config.block), x).astype(np.float32)
  out["group"] = g.astype(np.int32)
  return out


def prepare_data(config: ml_collections.ConfigDict, seed: int) -> dict[str, dict]:
  """``{"train", "val", "test"}`` with ``x``, ``label``, ``group`` (see the module doc)."""
  train = degrade(datasets.load(config.dataset, "train"), config, seed, 0)
  n = len(train["label"])
  val = np.sort(np.random.default_rng([VAL_SALT, seed]).permutation(n)[
      :int(round(config.val_fraction * n))])
  rest = np.setdiff1d(np.arange(n), val)
  test = degrade(datasets.load(config.dataset, "test"), config, seed, 1)
  return {"train": pipeline.take(train, rest), "val": pipeline.take(train, val),
          "test": test}


# ---------------------------------------------------------------------------- objectives


def objectives(logits: jax.Array, label: jax.Array, group: jax.Array) -> jax.Array:
  """``[ce, gap]``: mean cross-entropy and ``|mean CE(g=1) - mean CE(g=0)|``."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, label)
  g = group.astype(ce.dtype)
  gap = jnp.sum(ce * g) / jnp.sum(g) - jnp.sum(ce * (1 - g)) / jnp.sum(1 - g)
  return jnp.stack([jnp.mean(ce), jnp.abs(gap)])


@functools.partial(jax.jit, static_argnums=0)
def _predict_and_objectives(apply_fn, params, x, label, group):
  logits = apply_fn(params, x)
  return jnp.argmax(logits, -1), objectives(logits, label, group)


def evaluate(apply_fn, params, ds: Mapping[str, np.ndarray]) -> dict[str, float]:
  """``ce``, ``gap``, accuracy, per-group accuracy of ``params`` on a split."""
  pred, values = _predict_and_objectives(apply_fn, params, jnp.asarray(ds["x"]),
                                         jnp.asarray(ds["label"]), jnp.asarray(ds["group"]))
  ce, gap = (float(v) for v in values)
  correct = np.asarray(pred) == ds["label"]
  return {"ce": ce, "gap": gap, "accuracy": float(correct.mean()),
          "accuracy_clean": float(correct[ds["group"] == 0].mean()),
          "accuracy_degraded": float(correct[ds["group"] == 1].mean())}


def make_weighting(spec: Mapping[str, Any]) -> objs.ObjectiveWeighting:
  """The `reweight.objectives` scheme of a method spec (``kind`` and its arguments)."""
  if spec["kind"] == "linear":
    return objs.linear([1.0 - spec["w"], spec["w"]])
  if spec["kind"] == "mgda":
    return objs.mgda(2)
  if spec["kind"] == "lagrangian":
    return objs.lagrangian([spec["threshold"]], spec["step_size"], kind="upper")
  raise ValueError(f"kind={spec['kind']!r}; valid: 'linear', 'mgda', 'lagrangian'")


def train_run(config, fn, data, spec) -> tuple[Any, dict[str, np.ndarray]]:
  """Full-batch training of one method; returns the final parameters and the trajectory.

  Each step: the two objectives on the whole training split (and, for ``mgda``, their
  gradients via `objective_grads`), the scheme's ``update``, then one optimizer step on the
  gradient of ``combine(objectives, state)``. Recorded every step: the train objectives
  (before the step) and the scheme's weights.
  """
  weighting = make_weighting(spec)
  optimizer = optax.sgd(config.learning_rate, momentum=config.momentum)
  train = {k: jnp.asarray(data["train"][k]) for k in ("x", "label", "group")}
  obj_fn = lambda p: objectives(fn.apply(p, train["x"]), train["label"], train["group"])

  def step(carry, _):
    params, opt_state, wstate = carry
    if spec["kind"] == "mgda":
      losses, grads = objs.objective_grads(obj_fn, params)
      wstate = weighting.update(wstate, losses=losses, grads=grads)
    else:
      losses = obj_fn(params)
      wstate = weighting.update(wstate, losses=losses)
    grad = jax.grad(lambda p: objs.combine(obj_fn(p), wstate)[0])(params)
    updates, opt_state = optimizer.update(grad, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, wstate), (losses, wstate.weights)

  @jax.jit
  def run(params):
    carry = (params, optimizer.init(params), weighting.init())
    (params, _, _), (losses, weights) = jax.lax.scan(step, carry, None, length=config.steps)
    return params, losses, weights

  params, losses, weights = run(fn.params)
  every = config.record_every
  keep = np.arange(0, config.steps, every)
  return params, {"step": keep.tolist(), "train_ce": np.asarray(losses)[keep, 0].tolist(),
                  "train_gap": np.asarray(losses)[keep, 1].tolist(),
                  "weights": np.asarray(weights)[keep].tolist()}


# ------------------------------------------------------------------------------ selection


def choose_lagrangian(runs: Mapping[Any, Mapping[str, Any]], target: float):
  """The key of ``runs`` (``(factor, η)``) with the lowest validation ``ce`` among the runs
  whose validation gap is ``<= target``; if none is, the lowest validation gap (ties: the
  earlier key of the mapping)."""
  feasible = [k for k, r in runs.items() if r["val"]["gap"] <= target]
  if feasible:
    return min(feasible, key=lambda k: runs[k]["val"]["ce"])
  return min(runs, key=lambda k: runs[k]["val"]["gap"])


# -------------------------------------------------------------------------------- report

METRICS = (("val", "ce", "val CE"), ("val", "gap", "val gap"), ("test", "ce", "test CE"),
           ("test", "gap", "test gap"), ("test", "accuracy", "test acc (%)"),
           ("test", "accuracy_clean", "test acc clean (%)"),
           ("test", "accuracy_degraded", "test acc degraded (%)"))


def linear_name(w: float) -> str:
  return f"linear_w{w:g}"


def summarize(results: Mapping[str, list[dict]], comparisons) -> dict[str, Any]:
  """Per method mean ± std of every metric; the Lagrangian's thresholds; paired diffs."""
  out: dict[str, Any] = {"methods": {}, "paired": {}}
  for method, rows in results.items():
    s = {f"{split}_{key}": report.mean_std([r[split][key] for r in rows])
         for split, key, _ in METRICS}
    s["n"] = len(rows)
    s["seeds"] = [r["seed"] for r in rows]
    if method == "lagrangian":
      s["target"] = [r["target"] for r in rows]
      s["threshold"] = [r["threshold"] for r in rows]
      s["step_size"] = [r["step_size"] for r in rows]
      s["seed_val_gap"] = [r["val"]["gap"] for r in rows]
      s["seed_test_gap"] = [r["test"]["gap"] for r in rows]
      s["meets_val"] = [bool(r["val"]["gap"] <= r["target"]) for r in rows]
      s["meets_test"] = [bool(r["test"]["gap"] <= r["target"]) for r in rows]
      s["final_multiplier"] = [r["trajectory"]["weights"][-1][1] for r in rows]
    if method == "mgda":
      s["final_alpha_gap"] = [r["trajectory"]["weights"][-1][1] for r in rows]
    out["methods"][method] = s
  for a, b in comparisons:
    assert [r["seed"] for r in results[a]] == [r["seed"] for r in results[b]]
    out["paired"][f"{a} − {b}"] = {
        key: report.paired_difference([r["test"][key] for r in results[a]],
                                      [r["test"][key] for r in results[b]])
        for key in OBJECTIVES}
  return out


def _pm(stat, scale: float = 1.0, digits: int = 3) -> str:
  return report.format_mean_std(stat, digits, scale)


def markdown_report(summary: Mapping[str, Any], config) -> str:
  methods = summary["methods"]
  n = next(iter(methods.values()))["n"]
  lines = [
      "# Two conflicting objectives on digits: linear vs MGDA vs Lagrangian", "",
      f"Objectives: CE (mean cross-entropy) and gap = |mean CE(degraded) − mean CE(clean)|; "
      f"{100 * config.degraded_fraction:g}% of the images degraded (each {config.block}×"
      f"{config.block} block replaced by its mean). {config.model} "
      f"{tuple(config.model_kwargs.hidden)}, full-batch GD lr {config.learning_rate} "
      f"momentum {config.momentum}, {config.steps} steps. "
      f"Lagrangian: target τ = {config.target_fraction} × validation gap of linear_w0; "
      f"training threshold θ = factor × τ, factor ∈ {tuple(config.threshold_factors)}, and "
      f"dual step size η ∈ {tuple(config.dual_step_sizes)} chosen on validation (lowest "
      "validation CE with validation gap ≤ τ). Mean ± sample std "
      f"(ddof=1) over n = {n} seeds {tuple(config.seeds)}; validation and test at the end of "
      "training.", "",
      "## Objectives and accuracy", "",
      "| method | " + " | ".join(t for _, _, t in METRICS) + " |",
      "|---|" + "---|" * len(METRICS)]
  for method, s in methods.items():
    cells = [_pm(s[f"{split}_{key}"], 100.0, 1) if key.startswith("accuracy")
             else _pm(s[f"{split}_{key}"]) for split, key, _ in METRICS]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  if "lagrangian" in methods:
    s = methods["lagrangian"]
    lines += ["", "## Lagrangian: target per seed", "",
              "| seed | target τ | chosen θ (train) | chosen η | val gap | meets τ (val) | "
              "test gap | meets τ (test) | final λ |", "|---|---|---|---|---|---|---|---|---|"]
    for i, seed in enumerate(s["seeds"]):
      lines.append(
          f"| {seed} | {s['target'][i]:.3f} | {s['threshold'][i]:.3f} | "
          f"{s['step_size'][i]:g} | {s['seed_val_gap'][i]:.3f} | "
          f"{'yes' if s['meets_val'][i] else 'no'} | {s['seed_test_gap'][i]:.3f} | "
          f"{'yes' if s['meets_test'][i] else 'no'} | {s['final_multiplier'][i]:.3f} |")
    lines += ["", f"Meets τ on test in {sum(s['meets_test'])} of {n} seeds."]
  if "mgda" in methods:
    lines += ["", "MGDA's final weight on the gap (α_2) per seed: "
              + ", ".join(f"{a:.3f}" for a in methods["mgda"]["final_alpha_gap"]) + "."]
  for name, p in summary["paired"].items():
    a, b = name.split(" − ")
    lines += ["", f"## Paired (test): {name}", "",
              "| objective | per seed | mean | 95% t-interval |", "|---|---|---|---|"]
    for key in OBJECTIVES:
      q = p[key]
      ci = "n/a" if q["ci95"] is None else f"[{q['ci95'][0]:+.3f}, {q['ci95'][1]:+.3f}]"
      lines.append(f"| {key} | " + ", ".join(f"{d:+.3f}" for d in q["differences"])
                   + f" | {q['mean']:+.3f} | {ci} |")
    lines.append("")
    for key in OBJECTIVES:
      sentence = report.verdict(p[key], a, b, f"test {key}", higher_is_better=False, digits=3)
      lines.append(f"**{sentence}**.")
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- plots

MARKERS = {"mgda": ("s", "C3"), "lagrangian": ("D", "C2")}


def plot_front(results: Mapping[str, list[dict]], weights, path: str) -> str:
  """CE vs gap on validation and on test: the linear front (mean line, seeds faint) and the
  points where mgda and lagrangian land."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
  names = [linear_name(w) for w in weights]
  for ax, split in zip(axes, ("val", "test")):
    pts = np.array([[[r[split]["ce"], r[split]["gap"]] for r in results[m]] for m in names])
    for s in range(pts.shape[1]):
      ax.plot(pts[:, s, 0], pts[:, s, 1], "o-", color="C0", alpha=0.2, ms=3, lw=0.8)
    mean = pts.mean(1)
    ax.plot(mean[:, 0], mean[:, 1], "o-", color="C0", lw=2, label="linear (mean over seeds)")
    for w, (x, y) in zip(weights, mean):
      ax.annotate(f"w={w:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    for m, (marker, color) in MARKERS.items():
      if m not in results:
        continue
      p = np.array([[r[split]["ce"], r[split]["gap"]] for r in results[m]])
      ax.scatter(p[:, 0], p[:, 1], marker=marker, color=color, alpha=0.3, s=25)
      ax.scatter(*p.mean(0), marker=marker, color=color, s=80, edgecolor="k", label=m)
    if "lagrangian" in results:
      tau = np.mean([r["target"] for r in results["lagrangian"]])
      ax.axhline(tau, color="C2", ls="--", lw=1, label=f"target τ (mean {tau:.3f})")
    ax.set_xlabel(f"{split} CE (objective 1)")
    ax.set_ylabel(f"{split} gap |CE(degraded) − CE(clean)| (objective 2)")
    ax.set_title(f"{split}: big = mean over seeds, faint = seeds")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_weights(results: Mapping[str, list[dict]], path: str) -> str:
  """The weight on the gap along training (MGDA's α_2, the multiplier λ) and the train gap."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for m, (_, color) in MARKERS.items():
    for i, r in enumerate(results.get(m, [])):
      t = r["trajectory"]
      label = m if i == 0 else None
      axes[0].plot(t["step"], np.array(t["weights"])[:, 1], color=color, alpha=0.7, label=label)
      axes[1].plot(t["step"], t["train_gap"], color=color, alpha=0.7, label=label)
  for i, r in enumerate(results.get("linear_w0", [])):
    axes[1].plot(r["trajectory"]["step"], r["trajectory"]["train_gap"], color="C0", alpha=0.7,
                 label="linear_w0" if i == 0 else None)
  for i, r in enumerate(results.get("lagrangian", [])):
    axes[1].axhline(r["threshold"], color="C2", ls="--", lw=0.8,
                    label="chosen θ (train) per seed" if i == 0 else None)
  axes[0].set_ylabel("weight on the gap (mgda: α_2, lagrangian: λ)")
  axes[0].set_title("chosen runs, every seed")
  axes[1].set_ylabel("train gap")
  for ax, loc in zip(axes, ("upper right", "center right")):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=loc, framealpha=0.9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------- main


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, "runs", method, f"seed{seed}")


def run_one(config, fn, data, spec, path: str, seed: int, extra=None) -> dict:
  """Trains (unless ``path`` holds a finished run) and returns the run's record."""
  result = os.path.join(path, "result.json")
  if not os.path.exists(result):
    params, trajectory = train_run(config, fn, data, spec)
    report.save_params(os.path.join(path, "params.npz"), params)
    report.write_json(result, {
        "seed": seed, "spec": dict(spec), "trajectory": trajectory, **(extra or {}),
        "val": evaluate(fn.apply, params, data["val"]),
        "test": evaluate(fn.apply, params, data["test"])})
  return report.read_json(result)


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Every method and seed; writes ``table.md``, ``summary.json`` and the plots.

  Returns:
    ``{"summary", "table", "plots", "results"}``; ``results[method]`` lists the seeds' run
    records (for ``lagrangian``: the chosen run, with its ``target``, ``threshold`` and
    ``step_size``; every setting's run is under ``runs/lagrangian_f<factor>_eta<η>/``).
  """
  os.makedirs(workdir, exist_ok=True)
  weights = [float(w) for w in config.linear_weights]
  etas = [float(e) for e in config.dual_step_sizes]
  factors = [float(f) for f in config.threshold_factors]
  results: dict[str, list[dict]] = {linear_name(w): [] for w in weights}
  results["mgda"], results["lagrangian"] = [], []
  bar = tqdm(total=len(config.seeds) * (len(weights) + 1 + len(etas) * len(factors)),
             desc="runs",
             disable=not progress)
  for seed in config.seeds:
    data = prepare_data(config, seed)
    fn = functional(make_model(config.model, seed=seed, num_classes=10,
                               **dict(config.model_kwargs)))
    for w in weights:
      name = linear_name(w)
      results[name].append(run_one(config, fn, data, {"kind": "linear", "w": w},
                                   run_dir(workdir, name, seed), seed))
      bar.update()
    results["mgda"].append(run_one(config, fn, data, {"kind": "mgda"},
                                   run_dir(workdir, "mgda", seed), seed))
    bar.update()
    if 0.0 not in weights:
      raise ValueError("config.linear_weights must contain 0 (θ is set from linear_w0)")
    tau = config.target_fraction * results[linear_name(0.0)][-1]["val"]["gap"]
    runs = {}
    for factor in factors:
      for eta in etas:
        runs[factor, eta] = run_one(
            config, fn, data,
            {"kind": "lagrangian", "threshold": factor * tau, "step_size": eta},
            run_dir(workdir, f"lagrangian_f{factor:g}_eta{eta:g}", seed), seed,
            {"target": tau, "factor": factor, "threshold": factor * tau, "step_size": eta})
        bar.update()
    results["lagrangian"].append(runs[choose_lagrangian(runs, tau)])
  bar.close()
  comparisons = [("mgda", linear_name(0.0)), ("lagrangian", linear_name(0.0))]
  summary = summarize(results, comparisons)
  table = markdown_report(summary, config)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"summary": summary}, f, indent=1)
  plots = [plot_front(results, weights, os.path.join(workdir, "front.png")),
           plot_weights(results, os.path.join(workdir, "weights.png"))]
  return {"summary": summary, "table": table, "plots": plots, "results": results}


def main(argv):
  del argv
  start = time.time()
  out = run(_CONFIG.value, _WORKDIR.value)
  print(out["table"])
  print("plots: " + ", ".join(out["plots"]))
  print(f"wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":  # flags only here, so that tests can import this module
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/conflicting_objectives.py",
                                            "Path to an ml_collections config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "workdir/conflicting_objectives",
                                 "Where runs, tables and plots go.")
  app.run(main)
