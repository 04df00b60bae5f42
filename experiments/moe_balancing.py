r"""Global- vs micro-batch load balancing of a small MoE Transformer on four text domains.

Claim (Qiu et al., 2025): the load-balancing loss ``N_E sum_i f_i p_i`` is usually computed
per micro-batch; with few sequences per micro-batch that asks every sequence to use all
experts evenly. Computing ``f_i`` over the global batch (all micro-batches of the step)
balances the load only at the corpus level, lets experts specialise by domain, and lowers
the loss.

Data (`reweight.data.domain_corpus`, natural domains only): ``code``, ``prose``,
``licenses``, ``tables``. Each held-out split is cut in two contiguous halves: VALIDATION
(first half) and TEST (second half), windows evenly spaced (as in
experiments/domain_mixing.py).
Every training batch holds ``batch_size / 4`` random windows of each domain in a random
order and is split into ``config.microbatches`` micro-batches (2 sequences each by default)
for gradient accumulation.

Model: `reweight.train.make_model("transformer")` with a top-k `MoEFeedForward` in every
block (``model_kwargs``). Objective (`reweight.train.moe_step`): token-mean cross-entropy
``+ alpha sum_l LBL_l``, with ``LBL_l`` over

* ``global``: all tokens of the step (two passes: the routing statistics of every
  micro-batch first, then the gradients of the shares against them);
* ``micro``: each micro-batch's own tokens, averaged over the micro-batches (the
  frameworks' form),

the same ``alpha`` for both (one value: fixed, the Switch Transformer's 1e-2; several: the
value with the lowest validation loss, mean over scopes and seeds, is reported). AdamW,
warmup + cosine, the same steps, batches and initialisation for both scopes.

Reported per run (final parameters): validation and test loss (nats/byte, token mean over
all four domains), and from the TEST windows the domain x expert load ``n[l, d, e]`` (token
slots of domain ``d`` routed to expert ``e`` in layer ``l``), the mutual information between
the domain and the routed expert, ``I_l(D; E) = sum_{d,e} P(d,e) log(P(d,e) / (P(d) P(e)))``
(nats, ``P = n / sum n``; at most ``log 4 = 1.386``; 0 = routing independent of the domain)
and the global balancing loss on the test tokens (1 = an even load). Mean ± sample std
(ddof=1) over seeds; paired per-seed differences ``global − micro`` with 95% t-intervals,
"A beats B" only when the interval excludes zero.

Outputs in ``workdir``: ``runs/<scope>/a<alpha>/seed<k>/result.json`` (a restarted run
skips finished runs), ``table.md``, ``summary.json``, ``load_heatmap.png`` (domain x expert
load per scope and layer, seed ``seeds[0]``), ``training.png`` (train loss and balancing loss).

  python experiments/moe_balancing.py --config=configs/moe_balancing.py \
      --workdir=workdir/moe_balancing

References:
  Qiu et al., "Demons in the Detail: On Implementing Load Balancing Loss for Training
  Specialized Mixture-of-Expert Models", ACL 2025 (arXiv:2501.11873).
  Fedus, Zoph and Shazeer, "Switch Transformers", JMLR 2022.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import reweight  # noqa: E402
from reweight.data import domain_text, text  # noqa: E402
from reweight.load_balancing import load_balancing  # noqa: E402
from reweight.train import report  # noqa: E402
from reweight.train.models import apply_with_routing, functional, make_model  # noqa: E402
from reweight.train.moe_step import make_moe_train_step  # noqa: E402
from reweight.train.state import create  # noqa: E402

ORDER_SALT = 0x6D6F65  # the order of the windows in a batch


def mutual_information(counts: np.ndarray) -> float:
  """``I(D; E)`` in nats of the joint distribution ``counts / sum(counts)`` ``[D, E]``."""
  p = np.asarray(counts, np.float64)
  p = p / p.sum()
  outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
  nz = p > 0
  return float(np.sum(p[nz] * np.log(p[nz] / outer[nz])))


def heldout_halves(corpus, seq_len: int, val_windows: int, test_windows: int):
  """VALIDATION windows evenly spaced over the first half of each domain's held-out bytes,
  TEST windows over the second half: two ``{"x", "y", "group"}`` dicts."""
  halves = []
  for part, count in ((0, val_windows), (1, test_windows)):
    xs, ys, gs = [], [], []
    for g, held in enumerate(corpus.validation):
      half = held[:len(held) // 2] if part == 0 else held[len(held) // 2:]
      fit = (len(half) - 1) // seq_len
      if fit < 1:
        raise ValueError(f"domain {corpus.names[g]!r} holds no held-out window of "
                         f"seq_len={seq_len}")
      starts = np.linspace(0, len(half) - seq_len - 1, min(count, fit)).astype(np.int64)
      w = text.windows(half, starts, seq_len)
      xs.append(w["x"])
      ys.append(w["label"])
      gs.append(np.full(len(w["x"]), g, np.int32))
    halves.append({"x": np.concatenate(xs), "y": np.concatenate(ys),
                   "group": np.concatenate(gs)})
  return halves


class Setup(NamedTuple):
  config: Any
  corpus: Any
  names: tuple[str, ...]
  val: dict
  test: dict
  init_params: Any
  steps: dict  # (scope, alpha) -> jitted train step
  evaluate: Any


def make_optimizer(config) -> optax.GradientTransformation:
  lr = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                          config.steps,
                                          config.learning_rate * config.final_ratio)
  return optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=config.weight_decay)


def build(config: ml_collections.ConfigDict) -> Setup:
  corpus = domain_text.domain_corpus(config.max_bytes_per_domain,
                                     validation_every=config.validation_every, noise=False,
                                     duplicated=False)
  num = len(corpus.names)
  if config.batch_size % num or config.batch_size % config.microbatches:
    raise ValueError(f"batch_size={config.batch_size} must be a multiple of the {num} "
                     f"domains and of microbatches={config.microbatches}")
  val, test = heldout_halves(corpus, config.seq_len, config.val_windows, config.test_windows)
  kwargs = dict(vocab_size=text.VOCAB_SIZE, **dict(config.model_kwargs))
  fn = functional(nnx.eval_shape(lambda: make_model("transformer", seed=0, **kwargs)))
  # Initialised under jit (eager initialisation of the model is several times slower).
  init_params = jax.jit(lambda seed: functional(make_model("transformer", seed=seed,
                                                           **kwargs)).params)
  num_experts = kwargs["num_experts"]

  def loss_fn(params, batch, *, key=None):
    del key  # no dropout
    logits, routing = apply_with_routing(fn, params, batch["x"])
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, batch["y"][..., None], -1)[..., 0], routing

  optimizer = make_optimizer(config)
  steps = {(scope, float(a)): jax.jit(make_moe_train_step(
      loss_fn, optimizer, num_experts, balance_coef=float(a), z_coef=config.z_coef,
      scope=scope, microbatches=config.microbatches))
      for scope in config.scopes for a in config.balance_coefs}

  def evaluate(params, windows):
    """Token-mean loss, per-layer [D, E] routed-slot counts and global LBLs of windows."""
    losses, routing = loss_fn(params, windows)
    counts = [jax.ops.segment_sum(
        jnp.sum(jax.nn.one_hot(r.expert_index, num_experts), axis=(1, 2)), windows["group"],
        num) for r in routing]
    lbl = [load_balancing(r.probs, r.expert_index, num_experts) for r in routing]
    return jnp.mean(losses), jnp.stack(counts), jnp.stack(lbl)

  return Setup(config=config, corpus=corpus, names=corpus.names,
               val={k: jnp.asarray(v) for k, v in val.items()},
               test={k: jnp.asarray(v) for k, v in test.items()},
               init_params=init_params,
               steps=steps, evaluate=jax.jit(evaluate))


def batch_of(setup: Setup, step: int, seed: int) -> dict:
  num, c = len(setup.names), setup.config
  groups = np.repeat(np.arange(num), c.batch_size // num)
  groups = np.random.default_rng([ORDER_SALT, seed, step]).permutation(groups)
  b = domain_text.domain_lm_batch(setup.corpus, groups, step, seq_len=c.seq_len, seed=seed)
  return {"x": b["x"], "y": b["y"]}


def train_run(setup: Setup, scope: str, alpha: float, seed: int, bar=None) -> dict:
  c = setup.config
  optimizer = make_optimizer(c)
  state = create(setup.init_params(seed), optimizer, reweight.uniform(),
                 jax.random.PRNGKey(seed))
  step_fn = setup.steps[(scope, alpha)]
  start, trace = time.time(), []
  for t in range(c.steps):
    state, m = step_fn(state, batch_of(setup, t, seed))
    if t % 10 == 0 or t == c.steps - 1:
      trace.append((t, m["task_loss"], m["balance_loss"]))
    if bar is not None:
      bar.update()
  trace = [(t, float(a), float(b)) for t, a, b in jax.device_get(trace)]
  val_loss, val_counts, _ = setup.evaluate(state.trainable, setup.val)
  test_loss, test_counts, test_lbl = setup.evaluate(state.trainable, setup.test)
  test_counts = np.asarray(test_counts, np.float64)
  return {"scope": scope, "alpha": alpha, "seed": seed, "domains": list(setup.names),
          "val_loss": float(val_loss), "test_loss": float(test_loss),
          "val_counts": np.asarray(val_counts).tolist(), "test_counts": test_counts.tolist(),
          "test_mi": [mutual_information(n) for n in test_counts],
          "test_lbl": np.asarray(test_lbl, np.float64).tolist(),
          "train_trace": trace, "seconds": time.time() - start}


def run_all(setup: Setup, workdir: str, progress: bool) -> dict:
  c = setup.config
  grid = [(s, float(a), seed) for a in c.balance_coefs for s in c.scopes for seed in c.seeds]
  bar = tqdm(total=len(grid) * c.steps, desc="moe steps", disable=not progress)
  results = {}
  for scope, alpha, seed in grid:
    path = os.path.join(workdir, "runs", scope, f"a{alpha:g}", f"seed{seed}", "result.json")
    if os.path.exists(path):
      results[(scope, alpha, seed)] = report.read_json(path)
      bar.update(c.steps)
      continue
    bar.set_description(f"{scope}/a{alpha:g}/seed{seed}")
    result = train_run(setup, scope, alpha, seed, bar)
    report.write_json(path, result)
    results[(scope, alpha, seed)] = result
  bar.close()
  return results


def summarize(results: Mapping, config) -> dict:
  seeds, scopes = list(config.seeds), list(config.scopes)
  alphas = [float(a) for a in config.balance_coefs]
  val_by_alpha = {a: float(np.mean([results[(s, a, k)]["val_loss"] for s in scopes
                                    for k in seeds])) for a in alphas}
  alpha = min(alphas, key=lambda a: (val_by_alpha[a], a))
  runs = {s: [results[(s, alpha, k)] for k in seeds] for s in scopes}
  metrics = {
      "val_loss": lambda r: r["val_loss"], "test_loss": lambda r: r["test_loss"],
      "mi_mean": lambda r: float(np.mean(r["test_mi"])),
      **{f"mi_layer{l}": (lambda r, l=l: r["test_mi"][l])
         for l in range(len(runs[scopes[0]][0]["test_mi"]))},
      "test_lbl_mean": lambda r: float(np.mean(r["test_lbl"]))}
  table = {s: {m: report.mean_std([f(r) for r in runs[s]]) for m, f in metrics.items()}
           for s in scopes}
  paired = {}
  if "global" in runs and "micro" in runs:
    paired = {m: report.paired_difference([f(r) for r in runs["global"]],
                                          [f(r) for r in runs["micro"]])
              for m, f in metrics.items()}
  # Per seed: expert ids are arbitrary labels, so counts are not averaged over seeds.
  counts = {s: {r["seed"]: r["test_counts"] for r in runs[s]} for s in scopes}
  return {"alpha": alpha, "val_loss_by_alpha": val_by_alpha, "n": len(seeds),
          "domains": runs[scopes[0]][0]["domains"], "table": table, "paired": paired,
          "test_counts": counts}


def _pm(stat, digits: int = 4) -> str:
  return report.format_mean_std(stat, digits)


def _ci(p, digits: int = 4) -> str:
  return report.format_difference(p, digits)


ROWS = (("val_loss", "validation loss (nats/byte)", False),
        ("test_loss", "test loss (nats/byte)", False),
        ("mi_mean", "I(domain; expert), mean over layers (nats)", True))


def make_report(summary: Mapping, config) -> str:
  n, a = summary["n"], summary["alpha"]
  table, paired = summary["table"], summary["paired"]
  layers = [k for k in next(iter(table.values())) if k.startswith("mi_layer")]
  chosen = ("fixed: the Switch Transformer's value" if len(config.balance_coefs) == 1 else
            "chosen on validation loss from " + ", ".join(f"{x:g}" for x in
                                                           config.balance_coefs))
  rows = list(ROWS) + [(k, f"I(domain; expert), layer {k[8:]} (nats)", True) for k in layers]
  rows.append(("test_lbl_mean", "global LBL on test tokens (1 = even load)", False))
  lines = [
      "## MoE load balancing: global vs micro-batch", "",
      f"Transformer {dict(config.model_kwargs)}; {config.steps} steps x {config.batch_size} "
      f"windows x {config.seq_len} bytes, {config.microbatches} micro-batches of "
      f"{config.batch_size // config.microbatches} windows; alpha = {a:g} ({chosen}), the "
      f"same for both scopes. Mean ± sample std (ddof=1) over n = {n} seeds; paired: "
      "per-seed global − micro with its 95% t-interval. Mutual information from the "
      "domain x expert load of the TEST windows (max log 4 = 1.386).", "",
      "| metric | global | micro | global − micro |", "|---|---|---|---|"]
  for key, what, _ in rows:
    cells = [_pm(table[s][key]) if s in table else "—" for s in ("global", "micro")]
    lines.append(f"| {what} | " + " | ".join(cells) + " | "
                 + (_ci(paired[key]) if key in paired else "—") + " |")
  if len(config.balance_coefs) > 1:
    lines += ["", "Validation loss by alpha (mean over scopes and seeds): " + ", ".join(
        f"{x:g}: {v:.4f}" for x, v in summary["val_loss_by_alpha"].items())]
  lines += ["", "### Verdicts", ""]
  for key, what, higher in ROWS:
    if key in paired:
      v = report.verdict(paired[key], "global", "micro", what, higher_is_better=higher)
      lines.append(f"* {v}.")
  return "\n".join(lines) + "\n"


def plot_heatmaps(results: Mapping, summary: Mapping, config, path: str) -> str:
  """Domain x expert load (fraction of each domain's test tokens per expert), per scope
  (rows) and layer (columns), for the first seed."""
  scopes, seed, a = list(config.scopes), config.seeds[0], summary["alpha"]
  names = summary["domains"]
  layers = len(results[(scopes[0], a, seed)]["test_counts"])
  fig, axes = plt.subplots(len(scopes), layers, figsize=(3.1 * layers + 0.6, 2.9 * len(scopes)),
                           squeeze=False, gridspec_kw={"hspace": 0.45})
  for i, scope in enumerate(scopes):
    r = results[(scope, a, seed)]
    for l in range(layers):
      n = np.asarray(r["test_counts"][l], np.float64)
      share = n / n.sum(1, keepdims=True)
      ax = axes[i, l]
      im = ax.imshow(share, vmin=0, vmax=1, cmap="viridis")
      for d in range(share.shape[0]):
        for e in range(share.shape[1]):
          ax.text(e, d, f"{share[d, e]:.2f}", ha="center", va="center", fontsize=7,
                  color="w" if share[d, e] < 0.6 else "k")
      ax.set_xticks(range(share.shape[1]), [f"e{e}" for e in range(share.shape[1])])
      ax.set_yticks(range(len(names)), names if l == 0 else [""] * len(names))
      ax.set_title(f"{scope}, layer {l}: I = {r['test_mi'][l]:.3f} nats", fontsize=8)
  fig.colorbar(im, ax=axes, shrink=0.8, label="share of the domain's tokens")
  fig.suptitle(f"domain x expert load on test windows (seed {seed}, alpha {a:g})", fontsize=9)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_training(results: Mapping, summary: Mapping, config, path: str) -> str:
  a = summary["alpha"]
  fig, axes = plt.subplots(1, 2, figsize=(8, 3))
  for scope, color in zip(config.scopes, ("C0", "C1"), strict=False):
    for k, seed in enumerate(config.seeds):
      tr = np.asarray(results[(scope, a, seed)]["train_trace"])
      label = scope if k == 0 else None
      axes[0].plot(tr[:, 0], tr[:, 1], color=color, alpha=0.7, label=label)
      axes[1].plot(tr[:, 0], tr[:, 2], color=color, alpha=0.7, label=label)
  axes[0].set_ylabel("train task loss (nats/byte)")
  axes[1].set_ylabel("sum over layers of the scope's LBL")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Trains every (scope, alpha, seed); writes ``table.md``, ``summary.json`` and plots."""
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  setup = build(config)
  results = run_all(setup, workdir, progress)
  summary = summarize(results, config)
  table = make_report(summary, config)
  plots = [plot_heatmaps(results, summary, config, os.path.join(workdir, "load_heatmap.png")),
           plot_training(results, summary, config, os.path.join(workdir, "training.png"))]
  summary["seconds"] = time.time() - start
  summary["train_seconds"] = sum(r["seconds"] for r in results.values())
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return {"summary": summary, "table": table, "plots": plots, "results": results,
          "setup": setup}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  out = run(flags.FLAGS.config, flags.FLAGS.workdir)
  print()
  print(f"{out['summary']['seconds']:.0f} s now, {out['summary']['train_seconds']:.0f} s of "
        "training in all runs.")
  print(out["table"])
  print("plots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", "configs/moe_balancing.py",
                                  "Path to an ml_collections config file.")
  flags.DEFINE_string("workdir", "workdir/moe_balancing", "Where runs, tables and plots go.")
  app.run(main)
