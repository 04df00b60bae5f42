r"""Token weighting for fine-tuning: SFT vs Dynamic Fine-Tuning vs anchored DFT.

A small byte-level Transformer (`reweight.train.make_model("transformer")`) is pretrained
on one text domain of `reweight.data.domain_corpus` (``config.source``, e.g. ``code``), then
fine-tuned on another (``config.target``, e.g. ``prose``) with each method:

* ``sft``: the token-mean cross-entropy, ``reweight.weighted_tokens(ce, reweight.uniform())``;
* ``dft``: Dynamic Fine-Tuning, ``-(1/N) sum_t sg(p_t) log p_t``:
  ``reweight.weighted_tokens(ce, reweight.sample.token_probability(normalize=False))``
  (the paper's unnormalised weights);
* ``anchored``: anchored DFT, ``reweight.losses.anchored_token_probability`` (DFT plus
  ``lambda * KL(p_ref || p_theta)`` per token to the pretrained model) reduced by
  ``reweight.weighted_tokens(..., reweight.uniform())``.

Every loss is the sum over the valid tokens of the batch divided by their number. Metrics:
the target-domain loss (token-mean cross-entropy, nats/byte) after fine-tuning, and the
forgetting of the source domain, ``source loss after - source loss before`` fine-tuning
(the pretrained model's). Each domain's held-out bytes are cut into two contiguous halves:
VALIDATION (first half) and TEST (second half). Per method, the fine-tuning peak LR (and the
anchor's ``lambda``) is the grid point with the best mean over seeds of the VALIDATION
criterion ``config.select_on``; its TEST numbers are reported, with paired comparisons
against SFT over the seeds (same pretrained model and batches per seed).

Runs are stored in ``workdir/runs/pretrain/seed<k>/`` and
``workdir/runs/<method>/<setting>/seed<k>/`` (``result.json``, ``params.npz``, and for the
fine-tuned runs ``test_token_losses.npz``: the per-token target TEST losses); a restarted
experiment skips finished runs. ``table.md``, ``summary.json`` and ``token_weighting.png``
are written to the workdir.

  python experiments/token_weighting.py --config=configs/token_weighting.py \
      --workdir=workdir/token_weighting

References:
  Wu et al., "On the Generalization of SFT: A Reinforcement Learning Perspective with Reward
  Rectification", arXiv:2508.05629, 2025 (DFT). Zhu et al., "Anchored Supervised
  Fine-Tuning", arXiv:2509.23753, 2025.
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
from reweight import losses  # noqa: E402
from reweight.data import domain_text, text  # noqa: E402
from reweight.train import report  # noqa: E402
from reweight.train.models import Functional, functional, make_model  # noqa: E402

METHODS = ("sft", "dft", "anchored")
SELECT_ON = ("target", "target+source")

# ---------------------------------------------------------------------------------- data


def heldout_windows(held: np.ndarray, seq_len: int, val_count: int, test_count: int):
  """VALIDATION windows evenly spaced over the first half of ``held``, TEST over the second
  (disjoint by position): two ``{"x", "y"}`` dicts of int32 ``[K, T]``."""
  out = []
  for part, count in ((held[:len(held) // 2], val_count), (held[len(held) // 2:], test_count)):
    fit = (len(part) - 1) // seq_len
    if fit < 1:
      raise ValueError(f"{len(part)} held-out bytes hold no window of seq_len={seq_len}")
    starts = np.linspace(0, len(part) - seq_len - 1, min(count, fit)).astype(np.int64)
    w = text.windows(part, starts, seq_len)
    out.append({"x": w["x"], "y": w["label"]})
  return out


def domain_batch(corpus, domain: int, step: int, batch_size: int, seq_len: int, seed: int):
  """``batch_size`` random train windows of one domain (`domain_text.domain_lm_batch`)."""
  b = domain_text.domain_lm_batch(corpus, np.full(batch_size, domain), step, seq_len=seq_len,
                                  seed=seed)
  return {"x": jnp.asarray(b["x"]), "y": jnp.asarray(b["y"])}


# ------------------------------------------------------------------------------- model


class Setup(NamedTuple):
  config: Any
  corpus: Any
  source: int
  target: int
  val: dict  # {"source": windows, "target": windows}
  test: dict
  fn: Any  # the Functional of seed 0 (graph + parameter structure)
  init_params: Any
  token_losses: Any  # jitted (params, x, y) -> ([K, T] cross-entropy, [K, T] top-1 hit)
  steps: dict  # the compiled train steps (`setup_step`)


def optimizer(weight_decay: float) -> optax.GradientTransformation:
  """AdamW (b2 = 0.95) at LR 1; the step multiplies the update by the step's LR (which is
  AdamW at that LR, decoupled weight decay included), so one compiled step serves every LR
  and schedule."""
  return optax.adamw(1.0, b1=0.9, b2=0.95, weight_decay=weight_decay)


def lr_table(c, peak: float) -> np.ndarray:
  """Warmup (linear from 0) then cosine decay to ``final_ratio * peak``, one LR per step
  (``optax.warmup_cosine_decay_schedule``'s values, computed in NumPy)."""
  t = np.arange(c.steps, dtype=np.float64)
  warm = peak * t / max(c.warmup_steps, 1)
  frac = np.clip((t - c.warmup_steps) / max(c.steps - c.warmup_steps, 1), 0.0, 1.0)
  decay = peak * (c.final_ratio + (1 - c.final_ratio) * 0.5 * (1 + np.cos(np.pi * frac)))
  return np.where(t < c.warmup_steps, warm, decay).astype(np.float32)


def build(config: ml_collections.ConfigDict) -> Setup:
  if config.select_on not in SELECT_ON:
    raise ValueError(f"select_on={config.select_on!r} is not one of {SELECT_ON}")
  bad = [m for m in config.methods if m not in METHODS]
  if bad or "sft" not in config.methods:
    raise ValueError(f"methods={tuple(config.methods)} must be drawn from {METHODS} and "
                     "include 'sft' (the baseline)")
  corpus = domain_text.domain_corpus(config.max_bytes_per_domain,
                                     validation_every=config.validation_every, noise=False,
                                     duplicated=False)
  for d in (config.source, config.target):
    if d not in corpus.names:
      raise ValueError(f"domain {d!r} is not one of {corpus.names}")
  if config.source == config.target:
    raise ValueError(f"source and target are both {config.source!r}")
  src, tgt = corpus.names.index(config.source), corpus.names.index(config.target)
  val, test = {}, {}
  for name, g in (("source", src), ("target", tgt)):
    val[name], test[name] = heldout_windows(corpus.validation[g], config.seq_len,
                                            config.val_windows, config.test_windows)
  kwargs = dict(vocab_size=text.VOCAB_SIZE, **dict(config.model_kwargs))
  # One compiled initialiser for every seed; the graph from an abstract model.
  init_params = jax.jit(lambda s: functional(make_model("transformer", seed=s,
                                                        **kwargs)).params)
  graphdef, _, rest = nnx.split(nnx.eval_shape(lambda: make_model("transformer", **kwargs)),
                                nnx.Param, ...)
  fn = Functional(graphdef, init_params(0), nnx.to_pure_dict(rest))

  def token_losses(params, x, y):
    logits = fn.apply(params, x)
    return losses.softmax_cross_entropy(logits, y), jnp.argmax(logits, -1) == y

  return Setup(config, corpus, src, tgt, val, test, fn, init_params, jax.jit(token_losses),
               {})


def per_token_loss_fn(setup: Setup, method: str, kl_coeff: float = 0.0):
  """``f(params, batch) -> [B, T]`` token losses of a method (for `weighted_tokens`)."""
  fn = setup.fn

  def ce(params, batch):
    return losses.softmax_cross_entropy(fn.apply(params, batch["x"]), batch["y"])

  def anchored(params, batch):
    return losses.anchored_token_probability(fn.apply(params, batch["x"]), batch["y"],
                                             batch["ref_logits"], kl_coeff=kl_coeff)

  return anchored if method == "anchored" else ce


def weighting_of(method: str) -> reweight.Weighting:
  if method == "dft":
    return reweight.sample.token_probability(1.0, normalize=False)
  return reweight.uniform()


def setup_step(setup: Setup, method: str, weight_decay: float, kl_coeff: float = 0.0):
  """The jitted ``step(params, opt_state, batch, lr, ref_params) -> (params, opt_state,
  loss)`` of a method (cached in ``setup.steps``: one compile per method, KL coefficient and
  weight decay; the LR is an argument)."""
  key = (method, float(kl_coeff), float(weight_decay))
  if key in setup.steps:
    return setup.steps[key]
  weighting = weighting_of(method)
  loss_fn = reweight.weighted_tokens(per_token_loss_fn(setup, method, kl_coeff), weighting)
  wstate = weighting.init()
  opt = optimizer(weight_decay)

  def step(params, opt_state, batch, lr, ref_params):
    if method == "anchored":
      batch = {**batch, "ref_logits": jax.lax.stop_gradient(
          setup.fn.apply(ref_params, batch["x"]))}
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, wstate)
    updates, opt_state = opt.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: lr * u, updates)
    return optax.apply_updates(params, updates), opt_state, loss

  setup.steps[key] = jax.jit(step)
  return setup.steps[key]


def evaluate(setup: Setup, params, split: Mapping) -> dict[str, float]:
  """Token-mean cross-entropy of each domain's windows (every token valid), and the
  target's top-1 byte accuracy (``target_acc``)."""
  out = {}
  for d in ("source", "target"):
    ce, hit = setup.token_losses(params, split[d]["x"], split[d]["y"])
    out[d] = float(np.mean(np.asarray(ce, np.float64)))
    if d == "target":
      out["target_acc"] = float(np.mean(np.asarray(hit, np.float64)))
  return out


# -------------------------------------------------------------------------------- runs


def pretrain(setup: Setup, seed: int, workdir: str, bar=None) -> tuple[Any, dict]:
  """The seed's model pretrained on the source domain (loaded when on disk)."""
  c = setup.config
  run_dir = os.path.join(workdir, "runs", "pretrain", f"seed{seed}")
  path = os.path.join(run_dir, "result.json")
  if os.path.exists(path):
    if bar is not None:
      bar.update(c.pretrain.steps)
    return (report.load_params(os.path.join(run_dir, "params.npz"), setup.fn.params),
            report.read_json(path))
  start = time.time()
  step = setup_step(setup, "sft", c.pretrain.weight_decay)
  params = setup.init_params(seed)
  opt_state = optimizer(c.pretrain.weight_decay).init(params)
  lrs = lr_table(c.pretrain, c.pretrain.learning_rate)
  for t in range(c.pretrain.steps):
    batch = domain_batch(setup.corpus, setup.source, t, c.pretrain.batch_size, c.seq_len,
                         seed)
    params, opt_state, _ = step(params, opt_state, batch, lrs[t], params)
    if bar is not None:
      bar.update()
  result = {"seed": seed, "val": evaluate(setup, params, setup.val),
            "test": evaluate(setup, params, setup.test), "seconds": time.time() - start}
  report.save_params(os.path.join(run_dir, "params.npz"), params)
  report.write_json(path, result)
  return params, result


def settings(config, method: str) -> list[dict]:
  """The grid of a method: ``{"lr"}`` (and ``"kl"`` for anchored)."""
  if method == "anchored":
    return [{"lr": lr, "kl": kl} for lr in config.learning_rates[method]
            for kl in config.kl_coeffs]
  return [{"lr": lr} for lr in config.learning_rates[method]]


def setting_name(s: Mapping) -> str:
  return "_".join(f"{k}{v:g}" for k, v in s.items())


def finetune(setup: Setup, method: str, setting: Mapping, seed: int, pre_params,
             pre_result: Mapping, step_fn, run_dir: str, bar=None) -> dict:
  c = setup.config
  f = c.finetune
  start = time.time()
  params, lrs = pre_params, lr_table(f, setting["lr"])
  opt_state = optimizer(f.weight_decay).init(params)
  # The fine-tuning batches come from a stream of their own (seed offset by 1000).
  for t in range(f.steps):
    batch = domain_batch(setup.corpus, setup.target, t, f.batch_size, c.seq_len, 1000 + seed)
    params, opt_state, _ = step_fn(params, opt_state, batch, lrs[t], pre_params)
    if bar is not None:
      bar.update()
  val, test = evaluate(setup, params, setup.val), evaluate(setup, params, setup.test)
  test_tokens = np.asarray(setup.token_losses(params, setup.test["target"]["x"],
                                              setup.test["target"]["y"])[0], np.float32)
  result = {
      "method": method, "setting": dict(setting), "seed": seed, "val": val, "test": test,
      "forgetting_val": val["source"] - pre_result["val"]["source"],
      "forgetting_test": test["source"] - pre_result["test"]["source"],
      "seconds": time.time() - start}
  report.save_params(os.path.join(run_dir, "params.npz"), params)
  os.makedirs(run_dir, exist_ok=True)
  np.savez(os.path.join(run_dir, "test_token_losses.npz"), target=test_tokens)
  report.write_json(os.path.join(run_dir, "result.json"), result)
  return result


def criterion(result: Mapping, select_on: str) -> float:
  """The VALIDATION number a setting is chosen on (lower is better)."""
  v = result["val"]
  return v["target"] if select_on == "target" else v["target"] + v["source"]


def run_all(setup: Setup, workdir: str, progress: bool) -> tuple[dict, dict]:
  c = setup.config
  grid = {m: settings(c, m) for m in c.methods}
  total = len(c.seeds) * (c.pretrain.steps + sum(len(g) for g in grid.values())
                          * c.finetune.steps)
  bar = tqdm(total=total, desc="steps", disable=not progress)
  pre, runs = {}, {m: {setting_name(s): [] for s in g} for m, g in grid.items()}
  for seed in c.seeds:
    bar.set_description(f"pretrain/seed{seed}")
    pre_params, pre[seed] = pretrain(setup, seed, workdir, bar)
    for method in c.methods:
      for s in grid[method]:
        name = setting_name(s)
        run_dir = os.path.join(workdir, "runs", method, name, f"seed{seed}")
        path = os.path.join(run_dir, "result.json")
        if os.path.exists(path):
          runs[method][name].append(report.read_json(path))
          bar.update(c.finetune.steps)
          continue
        bar.set_description(f"{method}/{name}/seed{seed}")
        step = setup_step(setup, method, c.finetune.weight_decay, s.get("kl", 0.0))
        runs[method][name].append(finetune(setup, method, s, seed, pre_params, pre[seed],
                                           step, run_dir, bar))
  bar.close()
  return pre, runs


# -------------------------------------------------------------------------- statistics


def summarize(pre: Mapping, runs: Mapping, config) -> dict:
  seeds = list(config.seeds)
  grid = {}
  chosen = {}
  for method, by_setting in runs.items():
    grid[method] = {name: {"setting": rs[0]["setting"],
                           "val_criterion": float(np.mean([criterion(r, config.select_on)
                                                           for r in rs])),
                           "val_target": report.mean_std([r["val"]["target"] for r in rs]),
                           "val_forgetting": report.mean_std([r["forgetting_val"]
                                                              for r in rs])}
                    for name, rs in by_setting.items()}
    chosen[method] = min(grid[method], key=lambda n: grid[method][n]["val_criterion"])
  methods, paired = {}, {}
  metrics = {"target_test": lambda r: r["test"]["target"],
             "target_acc_test": lambda r: r["test"]["target_acc"],
             "forgetting_test": lambda r: r["forgetting_test"],
             "source_test": lambda r: r["test"]["source"],
             "target_val": lambda r: r["val"]["target"],
             "forgetting_val": lambda r: r["forgetting_val"]}
  for method, name in chosen.items():
    rs = sorted(runs[method][name], key=lambda r: r["seed"])
    assert [r["seed"] for r in rs] == sorted(seeds)
    methods[method] = {"setting": rs[0]["setting"], "name": name, "n": len(rs),
                       **{k: report.mean_std([f(r) for r in rs]) for k, f in metrics.items()},
                       "per_seed": {k: [f(r) for r in rs] for k, f in metrics.items()}}
  base = methods["sft"]["per_seed"]
  for method, s in methods.items():
    if method != "sft":
      paired[method] = {k: report.paired_difference(s["per_seed"][k], base[k])
                        for k in ("target_test", "forgetting_test", "target_acc_test")}
  pre_rows = [pre[s] for s in sorted(pre)]
  return {"source": config.source, "target": config.target, "select_on": config.select_on,
          "pretrained": {"source_test": report.mean_std([p["test"]["source"]
                                                         for p in pre_rows]),
                         "target_test": report.mean_std([p["test"]["target"]
                                                         for p in pre_rows]),
                         "target_acc_test": report.mean_std([p["test"]["target_acc"]
                                                             for p in pre_rows])},
          "grid": grid, "chosen": chosen, "methods": methods, "paired_vs_sft": paired}


def _pm(stat, digits: int = 4) -> str:
  return report.format_mean_std(stat, digits)


def _ci(p) -> str:
  return report.format_difference(p)


def _setting(s: Mapping) -> str:
  return ", ".join(f"{'λ' if k == 'kl' else k} = {v:g}" for k, v in s.items())


def table_report(summary: Mapping, config) -> str:
  methods = summary["methods"]
  n = methods["sft"]["n"]
  src, tgt = summary["source"], summary["target"]
  crit = ("target validation loss" if summary["select_on"] == "target"
          else "target + source validation loss after fine-tuning")
  pre = summary["pretrained"]
  lines = [
      "## Token weighting for fine-tuning", "",
      f"Pretrained {config.pretrain.steps} steps on `{src}`, fine-tuned {config.finetune.steps}"
      f" steps x {config.finetune.batch_size} x {config.seq_len} bytes on `{tgt}`. TEST "
      f"losses (token-mean cross-entropy, nats/byte), mean ± sample std (ddof=1) over "
      f"n = {n} seeds. Forgetting = {src} loss after − before fine-tuning. Each method's "
      f"setting was chosen on the {crit} (mean over seeds). Paired: per-seed difference "
      "method − sft, mean and 95% t-interval (negative = lower).", "",
      f"Pretrained model (before fine-tuning): {src} test loss {_pm(pre['source_test'])}, "
      f"{tgt} test loss {_pm(pre['target_test'])}, {tgt} top-1 byte accuracy "
      f"{_pm(pre['target_acc_test'])}.", "",
      f"| method | chosen setting | {tgt} loss (test) | forgetting (test) | {tgt} loss (val) "
      f"| forgetting (val) | {tgt} − sft | forgetting − sft | {tgt} byte acc (test) | "
      "acc − sft |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for method, s in methods.items():
    p = summary["paired_vs_sft"].get(method)
    lines.append(
        f"| {method} | {_setting(s['setting'])} | {_pm(s['target_test'])} | "
        f"{_pm(s['forgetting_test'])} | {_pm(s['target_val'])} | {_pm(s['forgetting_val'])} "
        f"| {_ci(p['target_test']) if p else '—'} | {_ci(p['forgetting_test']) if p else '—'}"
        f" | {_pm(s['target_acc_test'])} | {_ci(p['target_acc_test']) if p else '—'} |")
  lines += ["", "### Validation grid (mean over seeds)", "",
            f"| method | setting | selection criterion | {tgt} loss (val) | forgetting (val) |",
            "|---|---|---|---|---|"]
  for method, g in summary["grid"].items():
    for name, r in g.items():
      mark = " (chosen)" if summary["chosen"][method] == name else ""
      lines.append(f"| {method} | {_setting(r['setting'])}{mark} | {r['val_criterion']:.4f} | "
                   f"{_pm(r['val_target'])} | {_pm(r['val_forgetting'])} |")
  lines += ["", "### Verdicts", ""]
  for method, p in summary["paired_vs_sft"].items():
    for key, what in (("target_test", f"the {tgt} test loss"),
                      ("forgetting_test", f"forgetting of {src}")):
      lines.append(f"* {report.verdict(p[key], method, 'sft', what, higher_is_better=False)}.")
    lines.append("* " + report.verdict(p["target_acc_test"], method, "sft",
                                       f"the {tgt} top-1 byte accuracy (test)",
                                       higher_is_better=True) + ".")
  return "\n".join(lines)


# -------------------------------------------------------------------------------- plots


def plot(summary: Mapping, runs: Mapping, path: str) -> str:
  """Left: target test loss vs forgetting, per seed (small) and mean (large), chosen
  settings, and the pretrained model. Right: every grid setting's validation means (the
  trade-off the choice saw; marker = lambda for anchored; points off the axes are listed)."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  colors = {"sft": "C0", "dft": "C1", "anchored": "C2"}
  ax = axes[0]
  ax.scatter(0.0, summary["pretrained"]["target_test"][0], marker="x", color="k", s=60,
             label="pretrained (no fine-tuning)")
  for method, s in summary["methods"].items():
    x, y = s["per_seed"]["forgetting_test"], s["per_seed"]["target_test"]
    ax.scatter(x, y, s=18, color=colors[method], alpha=0.6)
    ax.scatter(np.mean(x), np.mean(y), s=90, color=colors[method], edgecolor="k",
               label=f"{method} ({_setting(s['setting'])})")
  ax.set_xlabel(f"forgetting of {summary['source']} (test loss after − before)")
  ax.set_ylabel(f"{summary['target']} test loss (nats/byte)")
  ax.set_title("chosen settings: seeds (small), mean (large)", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  ax = axes[1]
  points = [(m, r) for m, g in summary["grid"].items() for r in g.values()]
  kls = sorted({r["setting"].get("kl") for _, r in points if "kl" in r["setting"]})
  markers = dict(zip(kls, "^sDv"))
  ys = sorted(r["val_target"][0] for _, r in points)
  ytop = ys[0] + 1.0
  xtop = 0.6
  off = []
  for method, g in summary["grid"].items():
    for name, r in g.items():
      x, y = r["val_forgetting"][0], r["val_target"][0]
      if y > ytop or x > xtop:
        off.append(f"{method} lr {r['setting']['lr']:g}: ({x:.2f}, {y:.2f})")
        continue
      chosen = summary["chosen"][method] == name
      ax.scatter(x, y, color=colors[method], marker=markers.get(r["setting"].get("kl"), "o"),
                 s=110 if chosen else 30, edgecolor="k" if chosen else "none")
      ax.annotate(f"{r['setting']['lr']:g}", (x, y), fontsize=6, xytext=(3, 3),
                  textcoords="offset points")
  for method, c in colors.items():
    if method in summary["grid"]:
      ax.scatter([], [], color=c, label=method)
  for kl, mk in markers.items():
    ax.scatter([], [], color="gray", marker=mk, label=f"anchored λ = {kl:g}")
  ax.set_xlim(-0.03, xtop)
  ax.set_ylim(ys[0] - 0.1, ytop)
  if off:
    ax.text(0.98, 0.98, "off the axes (forgetting, loss):\n" + "\n".join(off),
            transform=ax.transAxes, ha="right", va="top", fontsize=6)
  ax.legend(fontsize=7, loc="lower right")
  ax.set_xlabel(f"forgetting of {summary['source']} (validation)")
  ax.set_ylabel(f"{summary['target']} validation loss")
  ax.set_title("grid, mean over seeds (large: chosen; labels: peak LR)", fontsize=9)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------- run


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Pretrains, fine-tunes every method and setting; writes the table, summary and plot.

  Returns:
    ``{"summary", "table", "plots", "runs", "pretrained", "setup"}``.
  """
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  setup = build(config)
  pre, runs = run_all(setup, workdir, progress)
  summary = summarize(pre, runs, config)
  table = table_report(summary, config) + "\n"
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  plots = [plot(summary, runs, os.path.join(workdir, "token_weighting.png"))]
  summary["seconds"] = time.time() - start
  summary["train_seconds"] = (sum(p["seconds"] for p in pre.values())
                              + sum(r["seconds"] for g in runs.values() for rs in g.values()
                                    for r in rs))
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return {"summary": summary, "table": table, "plots": plots, "runs": runs,
          "pretrained": pre, "setup": setup}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  out = run(config, flags.FLAGS.workdir)
  print()
  print(f"transformer {dict(config.model_kwargs)}; {out['summary']['seconds']:.0f} s now, "
        f"{out['summary']['train_seconds']:.0f} s of training in all runs.")
  print(out["table"])
  print("plots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", "configs/token_weighting.py",
                                  "Path to an ml_collections config file.")
  flags.DEFINE_string("workdir", "workdir/token_weighting", "Where runs, tables and plots go.")
  app.run(main)
