r"""Curriculum x LR decay: does a decaying LR waste the best data of an ascending curriculum?

Reproduction, at toy scale, of Luo et al. (2025): with a constant LR, training on data
sorted in *ascending* quality (worst first, best last) beats random order; under a
standard decay to ~0 the gain vanishes (the best data arrive when the LR is tiny); a
moderate decay and averaging the last few checkpoints bring it back.

Setup. ``config.val_fraction`` of the training split (MNIST-1D or digits) is held out,
clean, as a VALIDATION split (random per seed); the rest is cut into quality tiers of equal
size with `reweight.data.domains`: tier d has symmetric label noise at rate
``config.tier_levels[d]`` (``tier_kind="label_noise"``) or Gaussian input noise of that
relative standard deviation (``tier_kind="input_noise"``), so the quality of every example
is known. Two orders of the same multiset of ``epochs`` passes over the data:

* ``random``: ``epochs`` shuffled epochs (the usual i.i.d. order);
* ``ascending``: tier blocks from the noisiest to the cleanest; each block holds its
  tier's examples ``epochs`` times, shuffled within the block. The scores are the tier
  tier levels (`reweight.curriculum.from_external`) and the order is
  `reweight.curriculum.order` (descending noise, i.e. ascending quality) of a random
  permutation, so ties are broken at random.

Each order is trained with each LR schedule of ``config.schedules`` (`reweight.schedules`:
constant, cosine to 0, moderate decay, WSD), for every seed, with AdamW and one jitted
`reweight.train.make_train_step` for all of them (the schedule's per-step values are a
table in the optimizer state, `scale_by_lr_table`). The parameters are kept every
``config.checkpoint_every`` steps. The validation accuracy is measured every
``config.eval_every`` steps; at the end, the validation and the test accuracy of the final
parameters and of the average of the last ``config.average_k`` checkpoints
(`reweight.optim.averaging.checkpoint_average`, uniform and EMA weights) are measured once.

Selection. The "best recipe" of each order (schedule x evaluated parameters) is the one with
the highest mean VALIDATION accuracy over seeds; its test accuracy is reported beside it.
The test split is never used for a choice. Every "±" is the sample std (ddof=1) over seeds,
and "ascending − random" is the paired difference over seeds with its 95% t-interval
(`reweight.train.report.paired_difference`).

  python experiments/curriculum_lr_decay.py --config=configs/curriculum_lr_decay.py \
      --workdir=workdir/curriculum_lr_decay

Each run is stored in ``workdir/runs/<order>/<schedule>/seed<k>/result.json``; a restarted
experiment skips finished runs. ``table.md``, ``summary.json``, ``accuracy.png``,
``curves.png`` and ``schedules.png`` are written to the workdir.

References:
  Luo et al., "How Learning Rate Decay Wastes Your Best Data in Curriculum-Based LLM
  Pretraining", 2025.
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
from reweight import curriculum, parallel, schedules
from reweight.data import corruptions, datasets, pipeline, samplers
from reweight.data.pipeline import take
from reweight.optim import averaging
from reweight.optim.lr_table import scale_by_lr_table
from reweight.train import loop, plots, report
from reweight.train.models import functional, make_model
from reweight.train.state import create
from reweight.train.step import classification_loss, make_eval_step, make_train_step

ORDERS = ("random", "ascending")
SCHEDULE_KINDS = ("constant", "cosine", "moderate", "wsd")
WEIGHTS = ("final", "avg", "ema")
_WEIGHT_NAMES = {"final": "final params", "avg": "uniform avg of last {k}",
                 "ema": "EMA avg of last {k}"}
STREAM_SALT = 0x6C756F32
INPUT_NOISE_SALT = 0x786E6F69
VAL_SALT = 0x76616C31
TIER_KINDS = ("label_noise", "input_noise")


def split_validation(ds, fraction: float, seed: int):
  """``(train, val)``: ``round(fraction * n)`` random rows (``default_rng([VAL_SALT, seed])``
  permutation, first rows) go to val; both keep the dataset's row order."""
  n = len(ds["label"])
  n_val = int(round(fraction * n))
  if not 0 < n_val < n:
    raise ValueError(f"val_fraction={fraction} leaves {n_val} of {n} examples for validation;"
                     " it must leave at least one example in each split")
  perm = np.random.default_rng([VAL_SALT, seed]).permutation(n)
  return take(ds, np.sort(perm[n_val:])), take(ds, np.sort(perm[:n_val]))


def tiered_data(config: ml_collections.ConfigDict, seed: int):
  """Train split with quality tiers (``domain``), clean validation split, test split,
  number of classes.

  `split_validation` holds out ``config.val_fraction`` of the train split (clean); then
  `reweight.data.domains` splits the rest into ``len(config.tier_levels)`` equal
  tiers at random (``seed``). With ``config.tier_kind == "label_noise"`` tier d has
  symmetric label noise at rate ``tier_levels[d]`` (``is_noisy`` marks the flipped
  labels); with ``"input_noise"`` its labels are clean and its inputs get i.i.d. Gaussian
  noise of standard deviation ``tier_levels[d]`` (times the inputs' overall std), fixed
  per example. Either way a higher level is a lower quality. Validation and test are clean.
  """
  train, val = split_validation(datasets.load(config.dataset, "train"), config.val_fraction,
                                seed)
  test = datasets.load(config.dataset, "test")
  num_classes = datasets.num_classes(config.dataset)
  levels = np.asarray(config.tier_levels, np.float64)
  if config.tier_kind == "label_noise":
    train = corruptions.domains(train, rates=tuple(levels), num_classes=num_classes,
                                seed=seed, kind=config.noise_kind)
  elif config.tier_kind == "input_noise":
    train = corruptions.domains(train, rates=(0.0,) * len(levels),
                                num_classes=num_classes, seed=seed)
    rng = np.random.default_rng([INPUT_NOISE_SALT, seed])
    x = train["x"]
    sigma = levels[train["domain"]].reshape((-1,) + (1,) * (x.ndim - 1)) * x.std()
    train["x"] = (x + sigma * rng.standard_normal(x.shape)).astype(x.dtype)
  else:
    raise ValueError(f"tier_kind={config.tier_kind!r} is not one of {list(TIER_KINDS)}")
  return train, val, test, num_classes


def data_stream(domain: np.ndarray, tier_rates, order: str, epochs: int, seed: int
                ) -> np.ndarray:
  """Example indices in training order: ``epochs`` passes, random or ascending quality.

  Args:
    domain: int [N], the tier of each example.
    tier_rates: noise rate of each tier (higher = lower quality).
    order: ``"random"`` or ``"ascending"``.
    epochs: passes over the data.
    seed: seed of the shuffles.

  Returns:
    int64 [epochs * N].
  """
  if order not in ORDERS:
    raise ValueError(f"order={order!r} is not one of {list(ORDERS)}")
  n = len(domain)
  rng = np.random.default_rng([STREAM_SALT, seed])
  if order == "random":
    return np.concatenate([rng.permutation(n) for _ in range(epochs)]).astype(np.int64)
  scores = curriculum.from_external(np.asarray(tier_rates, np.float32)[domain])
  perm = rng.permutation(n)  # random tie-break inside a tier
  ranked = perm[np.asarray(curriculum.order(scores[perm], ascending=False))]
  blocks = []
  ranked_domain = domain[ranked]
  for d in dict.fromkeys(ranked_domain.tolist()):  # tiers in curriculum order
    members = ranked[ranked_domain == d]
    blocks.append(rng.permutation(np.tile(members, epochs)))
  return np.concatenate(blocks).astype(np.int64)


def stream_sampler(stream: np.ndarray, batch_size: int) -> samplers.Sampler:
  """The `Sampler` reading ``stream`` in consecutive batches (step t: ``[tB, (t+1)B)``)."""
  def indices(step: int) -> np.ndarray:
    return stream[step * batch_size:(step + 1) * batch_size]
  return samplers.Sampler(indices, batch_size, len(stream) // batch_size)


def make_schedule(spec: Mapping, peak: float, total_steps: int, warmup_steps: int):
  """An LR schedule of `reweight.schedules` from a config entry ``{"kind": ..., ...}``."""
  kind = spec["kind"]
  if kind == "constant":
    return schedules.wsd(peak, total_steps, warmup_steps, decay_steps=0)
  if kind == "cosine":
    return schedules.wsd(peak, total_steps, warmup_steps,
                         decay_steps=total_steps - warmup_steps, shape="cosine",
                         final_ratio=spec.get("final_ratio", 0.0))
  if kind == "moderate":
    return schedules.moderate_decay(peak, total_steps, final_ratio=spec["final_ratio"],
                                    shape=spec.get("shape", "cosine"),
                                    warmup_steps=warmup_steps)
  if kind == "wsd":
    return schedules.wsd(peak, total_steps, warmup_steps,
                         decay_fraction=spec["decay_fraction"],
                         shape=spec.get("shape", "linear"),
                         final_ratio=spec.get("final_ratio", 0.0))
  raise ValueError(f"kind={kind!r} is not one of {list(SCHEDULE_KINDS)}")


def make_optimizer(config, lrs) -> optax.GradientTransformation:
  """AdamW whose step t is scaled by ``lrs[t]`` (= ``optax.adamw(schedule)``)."""
  return optax.chain(optax.adamw(1.0, weight_decay=config.weight_decay),
                     scale_by_lr_table(lrs))


def train_one(config, *, stream, train, val, test, num_classes, fn, train_step, eval_step,
              optimizer, seed, mesh, progress=True, desc="train") -> dict:
  """One run over ``stream``: the validation curve, then the validation and test accuracy
  of the final and the averaged parameters (``{"val": {w: acc}, "test": {w: acc}}``)."""
  batch_size = config.batch_size
  steps = len(stream) // batch_size
  params = jax.tree.map(jnp.copy, fn.params)  # the step donates its state
  state = create(params, optimizer, reweight.uniform(), jax.random.PRNGKey(seed))
  fields = ("x", "label")
  it = pipeline.sampler_iterator({k: train[k] for k in fields + ("domain",)},
                                 stream_sampler(stream, batch_size))
  levels = np.asarray(config.tier_levels, np.float64)
  ckpts, history, level_seen = [], [], []
  for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
    host = next(it)
    level_seen.append(float(np.mean(levels[host["domain"]])))
    batch = parallel.shard_batch({k: host[k] for k in fields}, mesh)
    state, metrics = train_step(state, batch)
    done = step + 1
    if done % config.checkpoint_every == 0 or done == steps:
      ckpts.append(jax.tree.map(np.array, state.trainable))  # copies: state is donated
      ckpts = ckpts[-config.average_k:]
    if done % config.eval_every == 0 or done == steps:
      ev = loop.evaluate(eval_step, state, val, 256, mesh)
      history.append({"step": done, "val_accuracy": ev["accuracy"],
                      "val_loss": ev["loss"], "batch_loss": float(metrics["mean_loss"]),
                      "tier_level": float(np.mean(level_seen))})
      level_seen = []
  params = {"final": state.trainable}
  for name, kwargs in (("avg", {"weights": "uniform"}),
                       ("ema", {"weights": "ema", "ema_decay": config.ema_decay})):
    params[name] = averaging.checkpoint_average(ckpts, k=len(ckpts), **kwargs)
  out = {"history": history, "steps": steps, "num_averaged": len(ckpts)}
  for split, ds in (("val", val), ("test", test)):
    out[split] = {w: loop.evaluate(eval_step, state._replace(trainable=params[w]), ds, 256,
                                   mesh)["accuracy"] for w in WEIGHTS}
  return out


def summarize(results: Mapping) -> dict:
  """Per schedule and evaluated parameters: each order's validation and test accuracy
  (``[mean, sample std]`` over seeds) and the paired gain ascending − random (same seed).

  Returns:
    ``{schedule: {weights: {order: {"val": [m, s], "test": [m, s]}, "gain": {"val": p,
    "test": p}}}}`` with ``p`` a `reweight.train.report.paired_difference`.
  """
  summary = {}
  for sched, by_order in results.items():
    summary[sched] = {}
    for w in WEIGHTS:
      row = {}
      vals = {split: {o: [r[split][w] for r in by_order[o]] for o in ORDERS}
              for split in ("val", "test")}
      for o in ORDERS:
        row[o] = {split: list(report.mean_std(vals[split][o])) for split in vals}
      row["gain"] = {split: report.paired_difference(vals[split]["ascending"],
                                                     vals[split]["random"])
                     for split in vals}
      summary[sched][w] = row
  return summary


def best_recipes(summary: Mapping, results: Mapping) -> dict:
  """Each order's (schedule, weights) with the highest mean VALIDATION accuracy (ties: the
  earlier in table order), its validation and test accuracy, and the paired test difference
  best ascending − best random.
  """
  out = {}
  per_seed = {}
  for o in ORDERS:
    cands = [(s, w) for s in summary for w in WEIGHTS]
    s, w = max(cands, key=lambda sw, o=o: summary[sw[0]][sw[1]][o]["val"][0])
    out[o] = {"schedule": s, "weights": w, "val": summary[s][w][o]["val"],
              "test": summary[s][w][o]["test"]}
    per_seed[o] = [r["test"][w] for r in results[s][o]]
  out["ascending_minus_random_test"] = report.paired_difference(per_seed["ascending"],
                                                                per_seed["random"])
  return out


def _pct(ms) -> str:
  std = "–" if ms[1] is None else f"{100 * ms[1]:.1f}"
  return f"{100 * ms[0]:.1f} ± {std}"


def _gain(p) -> str:
  """``+m [lo, hi]`` in points, ``*`` when the paired 95% interval excludes zero."""
  if p["ci95"] is None:
    return f"{100 * p['mean']:+.1f}"
  lo, hi = p["ci95"]
  mark = " *" if lo > 0 or hi < 0 else ""
  return f"{100 * p['mean']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{mark}"


def format_table(summary: Mapping, k: int) -> str:
  """A Markdown table: one row per (schedule, weights); accuracy in %, validation / test."""
  lines = ["| schedule | evaluated params | random: val | random: test | ascending: val | "
           "ascending: test | ascending − random (test), 95% CI |",
           "|---|---|---|---|---|---|---|"]
  for sched, rows in summary.items():
    for w, row in rows.items():
      cells = [_pct(row[o][split]) for o in ORDERS for split in ("val", "test")]
      cells.append(_gain(row["gain"]["test"]))
      lines.append(f"| {sched} | {_WEIGHT_NAMES[w].format(k=k)} | " + " | ".join(cells)
                   + " |")
  return "\n".join(lines)


def format_best(best: Mapping, k: int) -> str:
  """The best recipe of each order, chosen on validation, with its test accuracy."""
  lines = ["| order | best recipe (chosen on val) | val | test |", "|---|---|---|---|"]
  for o in ORDERS:
    b = best[o]
    lines.append(f"| {o} | {b['schedule']}, {_WEIGHT_NAMES[b['weights']].format(k=k)} | "
                 f"{_pct(b['val'])} | {_pct(b['test'])} |")
  lines.append(f"| best ascending − best random (test) | | | "
               f"{_gain(best['ascending_minus_random_test'])} |")
  return "\n".join(lines)


def settings_table(workdirs: Mapping[str, str]) -> str:
  """One row per finished setting (``{label: workdir}``, read from its ``summary.json``):
  the test gain ascending − random of the final parameters per schedule, and each order's
  best recipe chosen on validation with its test accuracy."""
  rows, scheds = [], None
  for label, workdir in workdirs.items():
    data = report.read_json(os.path.join(workdir, "summary.json"))
    summary, best = data["summary"], data["best"]
    scheds = scheds or list(summary)
    cells = [_gain(summary[sc]["final"]["gain"]["test"]) for sc in scheds]
    for o in ORDERS:
      b = best[o]
      cells.append(f"{_pct(b['test'])} ({b['schedule']}, {b['weights']})")
    cells.append(_gain(best["ascending_minus_random_test"]))
    rows.append(f"| {label} | " + " | ".join(cells) + " |")
  head = (["| setting | " + " | ".join(scheds) + " | best random (val-chosen): test | "
           "best ascending (val-chosen): test | best asc. − best random |",
           "|---|" + "---|" * (len(scheds) + 3)])
  return "\n".join(head + rows)


def _plot_accuracy(summary, path):
  import matplotlib.pyplot as plt

  scheds = list(summary)
  fig, axes = plt.subplots(1, len(WEIGHTS), figsize=(4.5 * len(WEIGHTS), 3.8), sharey=True)
  x = np.arange(len(scheds))
  for ax, w in zip(axes, WEIGHTS, strict=True):
    for j, o in enumerate(ORDERS):
      m = [100 * summary[s][w][o]["test"][0] for s in scheds]
      sd = [100 * (summary[s][w][o]["test"][1] or 0.0) for s in scheds]
      ax.bar(x + (j - 0.5) * 0.38, m, 0.38, yerr=sd, capsize=3, label=o)
    ax.set_xticks(x, scheds, rotation=20)
    ax.set_title(_WEIGHT_NAMES[w].format(k="k"))
    ax.grid(alpha=0.3, axis="y")
  lo = min(100 * summary[s][w][o]["test"][0] for s in scheds for w in WEIGHTS
           for o in ORDERS)
  axes[0].set_ylim(max(0.0, lo - 10), None)
  axes[0].set_ylabel("final test accuracy (%)")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _plot_schedules(lrs: Mapping[str, np.ndarray], path):
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, lr in lrs.items():
    ax.plot(lr, label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("learning rate")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Trains every (order, schedule, seed); writes the table and the plots.

  Returns:
    ``{"summary", "best", "table", "plots", "results"}`` with ``results[schedule][order]``
    the list (over seeds) of per-run result dicts.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh()
  num_all = len(datasets.load(config.dataset, "train")["label"])
  num_train = num_all - int(round(config.val_fraction * num_all))
  total = config.epochs * num_train // config.batch_size
  warmup = int(round(config.warmup_fraction * total))
  sched_fns = {name: make_schedule(dict(spec), config.learning_rate, total, warmup)
               for name, spec in config.schedules.items()}
  lrs = {name: np.asarray(fn_(jnp.arange(total))) for name, fn_ in sched_fns.items()}
  results = {s: {o: [] for o in ORDERS} for s in sched_fns}
  train_step = eval_step = None
  bar = tqdm(total=len(sched_fns) * len(ORDERS) * len(config.seeds), desc="runs",
             disable=not progress)
  for seed in config.seeds:
    train = test = None
    for sched in sched_fns:
      optimizer = make_optimizer(config, lrs[sched])
      for order in ORDERS:
        run_dir = os.path.join(workdir, "runs", order, sched, f"seed{seed}")
        path = os.path.join(run_dir, "result.json")
        if os.path.exists(path):
          results[sched][order].append(report.read_json(path))
          bar.update()
          continue
        if train is None:
          train, val, test, num_classes = tiered_data(config, seed)
          fn = functional(make_model(config.model, seed=seed, num_classes=num_classes,
                                     **dict(config.model_kwargs)))
        stream = data_stream(train["domain"], config.tier_levels, order,
                             config.epochs, seed)
        if train_step is None:  # one compiled step for every schedule and seed
          per_example = classification_loss(fn.apply, "ce")
          train_step = jax.jit(make_train_step(per_example, reweight.uniform(), optimizer),
                               donate_argnums=0)
          eval_step = jax.jit(make_eval_step(fn.apply, num_classes))
        out = train_one(config, stream=stream, train=train, val=val, test=test,
                        num_classes=num_classes, fn=fn, train_step=train_step,
                        eval_step=eval_step, optimizer=optimizer, seed=seed, mesh=mesh,
                        progress=progress, desc=f"{order}/{sched}/seed{seed}")
        out.update(order=order, schedule=sched, seed=seed)
        report.write_json(path, out)
        results[sched][order].append(out)
        bar.update()
  bar.close()

  summary = summarize(results)
  best = best_recipes(summary, results)
  n = len(config.seeds)
  table = (f"Accuracy in %, mean ± sample std (ddof=1) over n = {n} seeds; val = the clean "
           f"validation split ({config.val_fraction:g} of the training data), test = the "
           "test split; ascending − random: paired mean over seeds [95% t-interval], * = it "
           "excludes zero.\n\n" + format_table(summary, config.average_k)
           + "\n\nBest recipe of each order, chosen on validation accuracy:\n\n"
           + format_best(best, config.average_k))
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table + "\n")
  report.write_json(os.path.join(workdir, "summary.json"),
                    {"summary": summary, "best": best})
  curves = {f"{o}/{s}": [r["history"] for r in results[s][o]]
            for s in sched_fns for o in ORDERS}
  paths = [_plot_accuracy(summary, os.path.join(workdir, "accuracy.png")),
           plots.curves(curves, os.path.join(workdir, "curves.png"),
                        keys=("val_accuracy", "tier_level"))]
  paths.append(_plot_schedules(lrs, os.path.join(workdir, "schedules.png")))
  return {"summary": summary, "best": best, "table": table, "plots": paths,
          "results": results}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  out = run(config, flags.FLAGS.workdir)
  print()
  print(f"{config.dataset}, {config.tier_kind} tiers {tuple(config.tier_levels)}, "
        f"{config.model}, {config.epochs} epochs, batch {config.batch_size}, "
        f"seeds {tuple(config.seeds)}")
  print(out["table"])
  print("\nplots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  # Flags are defined only when run as a script, so importing this module (tests, other
  # experiments) defines none.
  config_flags.DEFINE_config_file("config", "configs/curriculum_lr_decay.py",
                                  "Path to an ml_collections config file.")
  flags.DEFINE_string("workdir", "workdir/curriculum_lr_decay", "Where runs, tables and plots go.")
  app.run(main)
