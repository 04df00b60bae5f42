r"""LR schedules on a small Transformer LM, and the LR-annealing law fitted on two of them.

A small decoder-only Transformer (`reweight.train.make_model("transformer")`) is trained
for the same number of steps on byte-level Python source (the interpreter's standard
library, `reweight.data.text.stdlib_corpus`; split by file into train and held-out files,
and the held-out files alternately into VALIDATION and TEST, see `held_out_splits`) with
each learning-rate schedule of ``config.schedules``:

* ``constant`` (warmup then flat), ``cosine`` and ``linear`` decays over the whole run;
* WSD (`reweight.schedules.wsd`) with each decay shape of `reweight.schedules.DECAY_SHAPES`
  (linear, cosine, 1-sqrt, square, exp, inverse) over the last ``decay_fraction``;
* ``refined`` (`reweight.schedules.refined`): the schedule refined from the per-step
  gradient norms that `reweight.optim.grad_norms.record_grad_norms` recorded during the
  run named by its ``source`` (Defazio et al., 2023).

The loss is the per-sequence mean token cross-entropy (`reweight.losses.sequence_mean`),
trained with `reweight.train.make_train_step` (uniform weighting) and AdamW. The
schedule's values are precomputed into a table held in the optimizer state, so one
compiled step serves every schedule. The validation loss (mean token CE on fixed
non-overlapping windows of the validation files) is measured every ``eval_every`` steps;
the test loss (every window of the test files) once, after the last step.

Selection. The peak learning rate is chosen on validation: every ``config.lr_grid`` peak
is run with the schedules ``config.lr_select_schedules`` for seed ``config.lr_select_seed``,
and the peak with the lowest mean final validation loss over them is used for every run.
The best schedule is the one with the lowest mean final validation loss; the test loss is
reported beside it. Every "±" is the sample std (ddof=1) over seeds; differences between
schedules are paired over seeds with their 95% t-interval
(`reweight.train.report.paired_difference`). The test split is never used for a choice.

Then the LR-annealing scaling law of Tissue et al. (2024),
L(s) = L0 + A S1(s)^-alpha - C S2(s) (`reweight.annealing_law`), is fitted on the
validation curves of the runs in ``config.annealing_fit`` (e.g. constant + cosine) and
used to predict the curves of all the others from their schedules alone; the table
reports the error of the predicted final loss and the mean absolute error over the curve.

  python experiments/lm_schedules.py --config=configs/lm_schedules.py \
      --workdir=workdir/lm_schedules

Each run is stored in ``workdir/runs/lr<peak>/<schedule>/seed<k>/result.json`` (schedule
names with '/' become nested directories); a restarted experiment skips finished runs.
``table.md``, ``summary.json``, ``curves.png``, ``schedules.png`` and ``annealing_law.png``
are written to the workdir.

References:
  Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
  Durations", NeurIPS 2024. Defazio et al., "When, Why and How Much? Adaptive Learning
  Rate Scheduling by Refinement", 2023. Tissue et al., "Scaling Law with Learning Rate
  Annealing", 2024.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm.auto import tqdm

import reweight
from reweight import annealing_law, losses, parallel, schedules
from reweight.data import text
from reweight.optim import grad_norms
from reweight.optim.lr_table import scale_by_lr_table
from reweight.train import report
from reweight.train.models import functional, make_model
from reweight.train.state import create
from reweight.train.step import make_train_step

SCHEDULE_KINDS = ("constant", "cosine", "linear", "wsd", "refined")
# The paired-difference columns of the table: the baseline, the two full-run decays, and the
# usual WSD cooldown (for the comparison of cooldown shapes).
REFERENCES = ("constant", "cosine", "linear", "wsd/linear")


def held_out_splits(corpus: text.TextCorpus) -> dict[str, np.ndarray | tuple[str, ...]]:
  """The held-out files of ``corpus`` split alternately: file j (in corpus order) goes to
  validation if j is even, to test if j is odd.

  Returns:
    ``{"validation": uint8 tokens, "test": uint8 tokens, "validation_files": names,
    "test_files": names}``.
  """
  files, off = corpus.validation_files, corpus.validation_offsets
  if len(files) < 2:
    raise ValueError(f"the corpus holds {len(files)} held-out file(s); validation and test "
                     "need at least 2: raise corpus_bytes or lower validation_every")
  out = {}
  for name, parity in (("validation", 0), ("test", 1)):
    idx = range(parity, len(files), 2)
    out[name] = np.concatenate([corpus.validation[off[j]:off[j + 1]] for j in idx])
    out[name + "_files"] = tuple(files[j] for j in idx)
  return out


def make_optimizer(config, lrs) -> optax.GradientTransformation:
  """Gradient-norm recording, then AdamW whose step ``t`` is scaled by ``lrs[t]``."""
  return optax.chain(
      grad_norms.record_grad_norms(config.steps, norm=config.grad_norm),
      optax.adamw(1.0, b1=0.9, b2=0.95, weight_decay=config.weight_decay),
      scale_by_lr_table(lrs))


def make_schedule(spec: Mapping, config, norms_of: Mapping[str, np.ndarray],
                  peak: float | None = None):
  """The schedule of a config entry; ``norms_of[name]`` are a finished run's grad norms.

  ``peak`` defaults to ``config.learning_rate``.
  """
  kind, total = spec["kind"], config.steps
  peak = config.learning_rate if peak is None else peak
  warmup, final = config.warmup_steps, config.final_ratio
  if kind == "constant":
    return schedules.wsd(peak, total, warmup, decay_steps=0)
  if kind == "cosine":
    return schedules.wsd(peak, total, warmup, decay_steps=total - warmup, shape="cosine",
                         final_ratio=final)
  if kind == "linear":
    return schedules.linear_decay(peak, total, warmup, final_ratio=final)
  if kind == "wsd":
    return schedules.wsd(peak, total, warmup, decay_fraction=config.decay_fraction,
                         shape=spec["shape"], final_ratio=final)
  if kind == "refined":
    return schedules.refined(norms_of[spec["source"]], norm=config.grad_norm,
                             median_fraction=config.median_fraction, peak=peak)
  raise ValueError(f"kind={kind!r} is not one of {list(SCHEDULE_KINDS)}")


def _run_order(specs: Mapping[str, Mapping]) -> list[str]:
  """Schedule names with every ``refined`` run after the run it refines."""
  names = [n for n, s in specs.items() if s["kind"] != "refined"]
  for n, s in specs.items():
    if s["kind"] == "refined":
      if s["source"] not in names:
        raise ValueError(f"refined schedule {n!r} has source={s['source']!r}, which is not "
                         f"a non-refined schedule of the config ({names})")
      names.append(n)
  return names


def train_one(config, *, corpus, fn, train_step, val_loss, test_loss, lrs, seed, mesh,
              progress=True, desc="train") -> dict:
  """One LM run; the validation-loss curve, the final test loss, the gradient norms."""
  params = jax.tree.map(jnp.copy, fn.params)  # the step donates its state
  optimizer = make_optimizer(config, lrs)
  state = create(params, optimizer, reweight.uniform(), jax.random.PRNGKey(seed))
  history, pending = [], []
  for step in tqdm(range(config.steps), desc=desc, disable=not progress, leave=False):
    host = text.lm_batch(corpus.train, step, seq_len=config.seq_len,
                         batch_size=config.batch_size, seed=seed)
    state, metrics = train_step(state, parallel.shard_batch(host, mesh))
    pending.append(metrics["mean_loss"])
    done = step + 1
    if done % config.eval_every == 0 or done == config.steps:
      history.append({"step": done, "val_loss": float(val_loss(state.trainable)),
                      "train_loss": float(np.mean(jax.device_get(pending)))})
      pending = []
  norms = grad_norms.recorded_norms(state.opt_state)
  return {"history": history, "final_val_loss": history[-1]["val_loss"],
          "final_test_loss": float(test_loss(state.trainable)),
          "grad_norms": norms.tolist()}


def fit_annealing_law(results: Mapping[str, dict], lrs: Mapping[str, np.ndarray],
                      fit_names, config) -> dict:
  """Fits the law on ``fit_names`` (one seed) and predicts every run's curve.

  The loss measured after n updates is the law's step index n - 1; points before
  ``config.annealing_fit_from`` updates are left out of the fit and of the errors.

  Returns:
    ``{"params": AnnealingLawParams, "per_run": {name: {"pred_final", "final",
    "final_abs_error", "curve_mae", "pred_curve", "steps"}}}``.
  """
  def points(name):
    h = results[name]["history"]
    n = np.array([r["step"] for r in h])
    keep = n >= config.annealing_fit_from
    return n[keep] - 1, np.array([r["val_loss"] for r in h])[keep]

  kw = {"lam": config.annealing_lam, "warmup_steps": config.warmup_steps}
  steps_l, losses_l, lrs_l = [], [], []
  for name in fit_names:
    idx, measured = points(name)
    steps_l.append(idx)
    losses_l.append(measured)
    lrs_l.append(lrs[name])
  params = annealing_law.fit(steps_l, losses_l, lrs_l, **kw)
  per_run = {}
  for name in results:
    idx, measured = points(name)
    pred = annealing_law.predict(params, lrs[name], idx, **kw)
    per_run[name] = {"pred_final": float(pred[-1]), "final": float(measured[-1]),
                     "final_abs_error": float(abs(pred[-1] - measured[-1])),
                     "curve_mae": float(np.mean(np.abs(pred - measured))),
                     "pred_curve": pred.tolist(), "steps": (idx + 1).tolist()}
  return {"params": params, "per_run": per_run}


def summarize(results: Mapping[str, list[dict]], fits: list[dict]) -> dict:
  """Per schedule: final validation and test loss, and the law's numbers, as
  ``[mean, sample std]`` over seeds; ``vs_<ref>``: the paired difference over seeds of the
  final test loss, schedule − ``ref`` (`REFERENCES` present in ``results``)."""
  out = {}
  for name, runs in results.items():
    row = {key: list(report.mean_std([r[key] for r in runs]))
           for key in ("final_val_loss", "final_test_loss")}
    for key in ("pred_final", "final_abs_error", "curve_mae"):
      row[key] = list(report.mean_std([f["per_run"][name][key] for f in fits]))
    for ref in REFERENCES:
      if ref in results and ref != name:
        row[f"vs_{ref}"] = report.paired_difference(
            [r["final_test_loss"] for r in runs],
            [r["final_test_loss"] for r in results[ref]])
    out[name] = row
  return out


def _ms(ms, digits: int = 4) -> str:
  std = "–" if ms[1] is None else f"{ms[1]:.{digits}f}"
  return f"{ms[0]:.{digits}f} ± {std}"


def _diff(p) -> str:
  """``+m [lo, hi]``; ``*`` when the paired 95% interval excludes zero."""
  if p["ci95"] is None:
    return f"{p['mean']:+.4f}"
  lo, hi = p["ci95"]
  mark = " *" if lo > 0 or hi < 0 else ""
  return f"{p['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}"


def format_table(summary: Mapping[str, Mapping], fit_names) -> str:
  """Markdown tables: final validation / test loss and the annealing law's errors (sorted by
  validation loss; the best on validation in bold), then the paired test-loss differences."""
  lines = ["| schedule | final val loss | final test loss | law: predicted final val | "
           "law: abs error of final | law: curve MAE |", "|---|---|---|---|---|---|"]
  best = min(s["final_val_loss"][0] for s in summary.values())
  order = sorted(summary.items(), key=lambda kv: kv[1]["final_val_loss"][0])
  for name, s in order:
    label = name + (" (fit)" if name in fit_names else "")
    if s["final_val_loss"][0] == best:
      label = f"**{label}**"
    cells = [_ms(s[k]) for k in ("final_val_loss", "final_test_loss", "pred_final",
                                 "final_abs_error", "curve_mae")]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  refs = [r for r in REFERENCES if r in summary]
  if refs:
    lines += ["", "Final test loss, schedule − reference, paired over seeds: mean [95% CI]; "
              "* = the interval excludes zero (negative = lower loss than the reference).", "",
              "| schedule | " + " | ".join(f"− {r}" for r in refs) + " |",
              "|---|" + "---|" * len(refs)]
    for name, s in order:
      cells = [_diff(s[f"vs_{r}"]) if f"vs_{r}" in s else "" for r in refs]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def select_peak(results: Mapping[float, Mapping[str, dict]], names) -> float:
  """The peak LR whose runs ``names`` have the lowest mean final validation loss."""
  return min(results, key=lambda lr: (np.mean([results[lr][n]["final_val_loss"]
                                               for n in names]), lr))


def _plots(results, lrs, fit, workdir):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = []
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, runs in results.items():
    h = runs[0]["history"]
    ax.plot([r["step"] for r in h], [r["val_loss"] for r in h], label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("validation loss (nats/byte)")
  lo = min(r["final_val_loss"] for runs in results.values() for r in runs)
  ax.set_ylim(lo - 0.05, lo + 0.8)
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  paths.append(os.path.join(workdir, "curves.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(7, 4))
  for name, lr in lrs.items():
    ax.plot(lr, label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("learning rate")
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  paths.append(os.path.join(workdir, "schedules.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  names = list(fit["per_run"])
  cols = 4
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
  for ax in axes.flat[len(names):]:
    ax.axis("off")
  for ax, name in zip(axes.flat, names, strict=False):
    p = fit["per_run"][name]
    h = results[name][0]["history"]
    ax.plot([r["step"] for r in h], [r["val_loss"] for r in h], ".", ms=3, label="measured")
    ax.plot(p["steps"], p["pred_curve"], "-", label="law")
    ax.set_title(name, fontsize=9)
    ax.set_ylim(lo - 0.05, lo + 0.8)
    ax.grid(alpha=0.3)
  axes.flat[0].legend(fontsize=7)
  fig.tight_layout()
  paths.append(os.path.join(workdir, "annealing_law.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Chooses the peak LR on validation, trains every schedule for every seed at that peak,
  fits the annealing law, writes table and plots.

  Returns:
    ``{"summary", "table", "plots", "results", "fits", "lrs", "peak", "sweep", "corpus",
    "splits"}``; ``results[name]`` is the list (over seeds) of run dicts, ``fits`` one
    annealing-law fit per seed, ``lrs`` the first seed's per-step learning rates of each
    schedule, ``sweep[peak][name]`` the final validation loss of the selection runs.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh()
  specs = {name: dict(spec) for name, spec in config.schedules.items()}
  order = _run_order(specs)
  fit_names = tuple(config.annealing_fit)
  missing = [n for n in (*fit_names, *config.lr_select_schedules) if n not in specs]
  if missing:
    raise ValueError(f"annealing_fit / lr_select_schedules name {missing}, which are not "
                     f"schedules ({list(specs)})")
  corpus = text.stdlib_corpus(config.corpus_bytes, config.validation_every,
                              max_file_bytes=config.max_file_bytes)
  splits = held_out_splits(corpus)
  val = text.eval_windows(splits["validation"], config.seq_len, config.eval_windows)
  test = text.eval_windows(splits["test"], config.seq_len, config.test_windows)
  fn = functional(make_model("transformer", seed=0, vocab_size=text.VOCAB_SIZE,
                             **dict(config.model_kwargs)))

  def per_sequence_loss(params, batch, *, key=None):
    logits = fn.apply(params, batch["x"], train=key is not None, key=key)
    return losses.sequence_mean(losses.softmax_cross_entropy(logits, batch["label"]))

  train_step = jax.jit(make_train_step(per_sequence_loss, reweight.uniform(),
                                       make_optimizer(config, np.zeros(config.steps))),
                       donate_argnums=0)
  val_batch = parallel.replicate({k: jnp.asarray(v) for k, v in val.items()}, mesh)
  test_batch = parallel.replicate({k: jnp.asarray(v) for k, v in test.items()}, mesh)
  val_loss = jax.jit(lambda p: jnp.mean(per_sequence_loss(p, val_batch)))
  test_loss = jax.jit(lambda p: jnp.mean(per_sequence_loss(p, test_batch)))

  def run_seed(peak: float, seed: int, names, bar) -> tuple[dict, dict]:
    """The runs ``names`` (and the sources of refined ones) of one seed at ``peak``."""
    seed_fn = functional(make_model("transformer", seed=seed, vocab_size=text.VOCAB_SIZE,
                                    **dict(config.model_kwargs)))
    seed_results, norms_of, lrs = {}, {}, {}
    for name in names:
      lrs[name] = np.asarray(make_schedule(specs[name], config, norms_of, peak)(
          jnp.arange(config.steps)), np.float64)
      path = os.path.join(workdir, "runs", f"lr{peak:g}", *name.split("/"), f"seed{seed}",
                          "result.json")
      if os.path.exists(path):
        out = report.read_json(path)
      else:
        out = train_one(config, corpus=corpus, fn=seed_fn, train_step=train_step,
                        val_loss=val_loss, test_loss=test_loss, lrs=lrs[name], seed=seed,
                        mesh=mesh, progress=progress, desc=f"lr{peak:g}/{name}/seed{seed}")
        out.update(schedule=name, seed=seed, peak=peak)
        report.write_json(path, out)
      norms_of[name] = np.asarray(out["grad_norms"])
      seed_results[name] = out
      bar.update()
    return seed_results, lrs

  grid = [float(lr) for lr in config.lr_grid]
  select = _run_order({n: specs[n] for n in config.lr_select_schedules})
  bar = tqdm(total=len(grid) * len(select) + len(order) * len(config.seeds), desc="runs",
             disable=not progress)
  sweep_runs = {lr: run_seed(lr, config.lr_select_seed, select, bar)[0] for lr in grid}
  peak = select_peak(sweep_runs, select) if len(grid) > 1 else grid[0]
  sweep = {f"{lr:g}": {n: r["final_val_loss"] for n, r in runs.items()}
           for lr, runs in sweep_runs.items()}

  results = {name: [] for name in order}
  fits, first_lrs = [], None
  for seed in config.seeds:
    seed_results, lrs = run_seed(peak, seed, order, bar)
    for name in order:
      results[name].append(seed_results[name])
    fits.append(fit_annealing_law(seed_results, lrs, fit_names, config))
    first_lrs = first_lrs or lrs
  bar.close()

  summary = summarize(results, fits)
  sweep_lines = ["| peak LR | " + " | ".join(select) + " | mean |",
                 "|---|" + "---|" * (len(select) + 1)]
  for lr, row in sweep.items():
    sweep_lines.append(f"| {lr}{' (chosen)' if float(lr) == peak else ''} | "
                       + " | ".join(f"{row[n]:.4f}" for n in select)
                       + f" | {np.mean([row[n] for n in select]):.4f} |")
  n = len(config.seeds)
  table = (f"Peak LR chosen on the final validation loss (seed {config.lr_select_seed}):\n\n"
           + "\n".join(sweep_lines)
           + f"\n\nPeak {peak:g}; loss in nats/byte, mean ± sample std (ddof=1) over n = {n}"
           " seeds; sorted by the final validation loss (bold: the best on validation); "
           "'(fit)' = used to fit the annealing law.\n\n" + format_table(summary, fit_names))
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table + "\n")
  law = [f["params"]._asdict() for f in fits]
  report.write_json(os.path.join(workdir, "summary.json"), {
      "summary": summary, "peak": peak, "sweep": sweep, "annealing_law_params": law,
      "corpus": {"train_bytes": len(corpus.train),
                 "validation_bytes": len(splits["validation"]),
                 "test_bytes": len(splits["test"]),
                 "train_files": len(corpus.train_files),
                 "validation_files": len(splits["validation_files"]),
                 "test_files": len(splits["test_files"])}})
  paths = _plots(results, first_lrs, fits[0], workdir)
  return {"summary": summary, "table": table, "plots": paths, "results": results,
          "fits": fits, "lrs": first_lrs, "peak": peak, "sweep": sweep, "corpus": corpus,
          "splits": splits}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  out = run(config, flags.FLAGS.workdir)
  c, sp = out["corpus"], out["splits"]
  print()
  print(f"byte-level LM on Python stdlib source ({len(c.train)} train bytes in "
        f"{len(c.train_files)} files, {len(sp['validation'])} validation bytes in "
        f"{len(sp['validation_files'])} files, {len(sp['test'])} test bytes in "
        f"{len(sp['test_files'])} files); transformer {dict(config.model_kwargs)}, "
        f"{config.steps} steps x {config.batch_size} x {config.seq_len} tokens, "
        f"seeds {tuple(config.seeds)}; annealing law fitted on "
        f"{tuple(config.annealing_fit)}.")
  print(out["table"])
  for seed, fit in zip(config.seeds, out["fits"], strict=True):
    p = fit["params"]
    print(f"seed {seed}: L0={p.L0:.4f} A={p.A:.4f} alpha={p.alpha:.4f} C={p.C:.4g}")
  print("\nplots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  # Flags are defined only when run as a script, so importing this module (tests, other
  # experiments) defines none.
  config_flags.DEFINE_config_file("config", "configs/lm_schedules.py",
                                  "Path to an ml_collections config file.")
  flags.DEFINE_string("workdir", "workdir/lm_schedules", "Where runs, tables and plots go.")
  app.run(main)
