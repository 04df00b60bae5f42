r"""LR schedules on a small Transformer LM, and the LR-annealing law fitted on two of them.

A small decoder-only Transformer (`reweight.train.make_model("transformer")`) is trained
for the same number of steps on byte-level Python source (the interpreter's standard
library, `reweight.data.text.stdlib_corpus`; train / validation split by file) with each
learning-rate schedule of ``config.schedules``:

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
non-overlapping windows of the validation files) is measured every ``eval_every`` steps.

Then the LR-annealing scaling law of Tissue et al. (2024),
L(s) = L0 + A S1(s)^-alpha - C S2(s) (`reweight.annealing_law`), is fitted on the
validation curves of the runs in ``config.annealing_fit`` (e.g. constant + cosine) and
used to predict the curves of all the others from their schedules alone; the table
reports the error of the predicted final loss and the mean absolute error over the curve.

  python experiments/lm_schedules.py --config=configs/lm_schedules.py \
      --workdir=workdir/lm_schedules

Each run is stored in ``workdir/runs/<schedule>/seed<k>/result.json`` (schedule names
with '/' become nested directories); a restarted experiment skips finished runs.
``table.md``, ``summary.json``, ``curves.png``, ``schedules.png`` and ``annealing_law.png``
are written to the workdir.

References:
  Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
  Durations", NeurIPS 2024. Defazio et al., "When, Why and How Much? Adaptive Learning
  Rate Scheduling by Refinement", 2023. Tissue et al., "Scaling Law with Learning Rate
  Annealing", 2024.
"""

from __future__ import annotations

import json
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
from reweight.train.models import functional, make_model
from reweight.train.state import create
from reweight.train.step import make_train_step

SCHEDULE_KINDS = ("constant", "cosine", "linear", "wsd", "refined")


def make_optimizer(config, lrs) -> optax.GradientTransformation:
  """Gradient-norm recording, then AdamW whose step ``t`` is scaled by ``lrs[t]``."""
  return optax.chain(
      grad_norms.record_grad_norms(config.steps, norm=config.grad_norm),
      optax.adamw(1.0, b1=0.9, b2=0.95, weight_decay=config.weight_decay),
      scale_by_lr_table(lrs))


def make_schedule(spec: Mapping, config, norms_of: Mapping[str, np.ndarray]):
  """The schedule of a config entry; ``norms_of[name]`` are a finished run's grad norms."""
  kind, peak, total = spec["kind"], config.learning_rate, config.steps
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


def train_one(config, *, corpus, fn, train_step, val_loss, lrs, seed, mesh,
              progress=True, desc="train") -> dict:
  """One LM run; the validation-loss curve and the recorded gradient norms."""
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
  """Per schedule: final val loss, and the law's errors, as (mean, std) over seeds."""
  out = {}
  for name, runs in results.items():
    final = np.array([r["final_val_loss"] for r in runs])
    row = {"final_val_loss": (float(final.mean()), float(final.std()))}
    for key in ("pred_final", "final_abs_error", "curve_mae"):
      v = np.array([f["per_run"][name][key] for f in fits])
      row[key] = (float(v.mean()), float(v.std()))
    out[name] = row
  return out


def format_table(summary: Mapping[str, Mapping], fit_names) -> str:
  """Markdown table: final validation loss and the annealing law's prediction errors."""
  lines = ["| schedule | final val loss | law: predicted final | law: abs error of final | "
           "law: curve MAE |", "|---|---|---|---|---|"]
  best = min(s["final_val_loss"][0] for s in summary.values())
  for name, s in sorted(summary.items(), key=lambda kv: kv[1]["final_val_loss"][0]):
    label = name + (" (fit)" if name in fit_names else "")
    m, sd = s["final_val_loss"]
    final = f"**{m:.4f}** ± {sd:.4f}" if m == best else f"{m:.4f} ± {sd:.4f}"
    cells = [final] + [f"{s[k][0]:.4f} ± {s[k][1]:.4f}"
                       for k in ("pred_final", "final_abs_error", "curve_mae")]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


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
  """Trains every schedule for every seed, fits the annealing law, writes table and plots.

  Returns:
    ``{"summary", "table", "plots", "results", "fits", "lrs"}``; ``results[name]`` is the
    list (over seeds) of run dicts, ``fits`` one annealing-law fit per seed and ``lrs``
    the first seed's per-step learning rates of each schedule.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh()
  specs = {name: dict(spec) for name, spec in config.schedules.items()}
  order = _run_order(specs)
  fit_names = tuple(config.annealing_fit)
  missing = [n for n in fit_names if n not in specs]
  if missing:
    raise ValueError(f"annealing_fit names {missing} that are not schedules ({list(specs)})")
  corpus = text.stdlib_corpus(config.corpus_bytes, config.validation_every,
                              max_file_bytes=config.max_file_bytes)
  val = text.eval_windows(corpus.validation, config.seq_len, config.eval_windows)
  fn = functional(make_model("transformer", seed=0, vocab_size=text.VOCAB_SIZE,
                             **dict(config.model_kwargs)))

  def per_sequence_loss(params, batch, *, key=None):
    logits = fn.apply(params, batch["x"], train=key is not None, key=key)
    return losses.sequence_mean(losses.softmax_cross_entropy(logits, batch["label"]))

  train_step = jax.jit(make_train_step(per_sequence_loss, reweight.uniform(),
                                       make_optimizer(config, np.zeros(config.steps))),
                       donate_argnums=0)
  val_batch = parallel.replicate({k: jnp.asarray(v) for k, v in val.items()}, mesh)
  val_loss = jax.jit(lambda p: jnp.mean(per_sequence_loss(p, val_batch)))

  results = {name: [] for name in order}
  fits, first_lrs = [], None
  bar = tqdm(total=len(order) * len(config.seeds), desc="runs", disable=not progress)
  for seed in config.seeds:
    seed_fn = functional(make_model("transformer", seed=seed, vocab_size=text.VOCAB_SIZE,
                                    **dict(config.model_kwargs)))
    seed_results, norms_of, lrs = {}, {}, {}
    for name in order:
      lrs[name] = np.asarray(make_schedule(specs[name], config, norms_of)(
          jnp.arange(config.steps)), np.float64)
      run_dir = os.path.join(workdir, "runs", *name.split("/"), f"seed{seed}")
      path = os.path.join(run_dir, "result.json")
      if os.path.exists(path):
        with open(path) as f:
          out = json.load(f)
      else:
        out = train_one(config, corpus=corpus, fn=seed_fn, train_step=train_step,
                        val_loss=val_loss, lrs=lrs[name], seed=seed, mesh=mesh,
                        progress=progress, desc=f"{name}/seed{seed}")
        out.update(schedule=name, seed=seed)
        os.makedirs(run_dir, exist_ok=True)
        with open(path, "w") as f:
          json.dump(out, f)
      norms_of[name] = np.asarray(out["grad_norms"])
      seed_results[name] = out
      results[name].append(out)
      bar.update()
    fits.append(fit_annealing_law(seed_results, lrs, fit_names, config))
    first_lrs = first_lrs or lrs
  bar.close()

  summary = summarize(results, fits)
  table = format_table(summary, fit_names)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table + "\n")
  law = [f["params"]._asdict() for f in fits]
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"summary": summary, "annealing_law_params": law,
               "corpus": {"train_bytes": len(corpus.train),
                          "validation_bytes": len(corpus.validation),
                          "train_files": len(corpus.train_files),
                          "validation_files": len(corpus.validation_files)}}, f, indent=1)
  paths = _plots(results, first_lrs, fits[0], workdir)
  return {"summary": summary, "table": table, "plots": paths, "results": results,
          "fits": fits, "lrs": first_lrs, "corpus": corpus}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  out = run(config, flags.FLAGS.workdir)
  c = out["corpus"]
  print()
  print(f"byte-level LM on Python stdlib source ({len(c.train)} train bytes in "
        f"{len(c.train_files)} files, {len(c.validation)} validation bytes in "
        f"{len(c.validation_files)} files); transformer {dict(config.model_kwargs)}, "
        f"{config.steps} steps x {config.batch_size} x {config.seq_len} tokens, "
        f"seeds {tuple(config.seeds)}. Validation loss in nats/byte, mean ± std over seeds; "
        f"annealing law fitted on {tuple(config.annealing_fit)}.")
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
