"""Parameter-efficient fine-tuning on a task shift: what each method learns and forgets.

Protocol, per dataset and per seed:

1. Pretrain an MLP on task A (classes ``task_a``, relabelled ``0..4``) with its own head
   ``head_A``.
2. Fine-tune on task B (classes ``task_b``, relabelled ``0..4``) with a fresh head ``head_B``
   (the same initial head for every method of a seed), with each method of the config: full
   fine-tuning, head only, LoRA, rsLoRA, PiSSA, SoMA, DoRA, Bone (default, bat), AdaLoRA,
   EVA, LIFT. Adapters go on the hidden kernels (``config.targets``); every method trains
   the head fully (PEFT's ``modules_to_save``); hidden biases stay frozen except in full
   fine-tuning.
3. Report, mean ± std over seeds: task-B test accuracy; task-A test accuracy of the
   fine-tuned backbone read out by the pretrained ``head_A`` (forgetting); the trainable
   parameters (adapter and head); the optimizer-state bytes (`reweight.reparam.tree_bytes`
   of the optimizer state); and the step time relative to full fine-tuning (every method's
   jitted train step timed on one batch in interleaved rounds in this process; per round the
   median step time over steps, then the median over rounds of the ratio).

Outputs in ``workdir``: ``table.md``, ``summary.json``, ``peft.png`` (task B vs task A
accuracy, and task B accuracy vs trainable parameters), ``timing.json`` and one
``runs/<method>/seed<k>/result.json`` per run. A restarted experiment skips finished runs
(pretrained models are kept in ``pretrain/seed<k>.npz``).

Learning rates: ``--config.mode=tune`` trains every method of the config for each rate in
``config.tune_learning_rates`` on task B with ``config.val_fraction`` of the task-B training
set held out (seed ``config.tune_seed``), and writes ``tune.md`` / ``tune.json`` with the
validation accuracies; the configs hold the rates chosen that way. The held-out part is
never trained on, in either mode, and the test split is never used for tuning.

  python experiments/peft.py --config=configs/peft_digits.py --workdir=workdir/peft_digits
  python experiments/peft.py --config=configs/peft_digits.py --workdir=workdir/peft_tune \
      --config.mode=tune

References:
  Biderman et al., "LoRA Learns Less and Forgets Less", TMLR 2024 (the protocol: learning
  on the target task vs forgetting of the source task).
  The methods' papers are cited in `reweight.reparam` and `reweight.optim`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

import reweight
from reweight import parallel
from reweight.data import datasets
from reweight.data.pipeline import take
from reweight.optim.adalora_budget import AdaLoraBudgetState, adalora_budget
from reweight.optim.penalty import add_penalty_gradient
from reweight.optim.sparse_mask import LiftState, lift
from reweight.reparam import (
  Reparam,
  adalora,
  bone,
  dora,
  lora,
  modules_to_save,
  orthogonal_penalty,
  tree_bytes,
  with_data,
)
from reweight.reparam._core import flatten_with_paths, select
from reweight.reparam.eva import collect_inputs, eva
from reweight.train import loop, report
from reweight.train import state as state_lib
from reweight.train.models import functional, make_model
from reweight.train.step import classification_loss, make_eval_step, make_train_step

PyTree = Any
KINDS = ("full", "head", "lora", "dora", "bone", "adalora", "eva", "lift")
MODES = ("final", "tune")


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def task_split(ds: Mapping[str, np.ndarray], classes: Sequence[int]) -> dict[str, np.ndarray]:
  """Rows of ``ds`` whose label is in ``classes``, relabelled ``0 .. len(classes) - 1``."""
  classes = np.asarray(classes)
  rows = np.flatnonzero(np.isin(ds["label"], classes))
  out = take(ds, rows)
  out["label"] = np.searchsorted(classes, out["label"]).astype(np.int32)
  if not np.all(np.diff(classes) > 0):
    raise ValueError(f"classes={tuple(classes)!r} must be strictly increasing")
  return out


def prepare_data(config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """Task A train/test, task B train (minus validation) / validation / test."""
  train = datasets.load(config.dataset, "train")
  test = datasets.load(config.dataset, "test")
  b = task_split(train, config.task_b)
  perm = np.random.default_rng(config.data_seed).permutation(len(b["label"]))
  n_val = int(round(config.val_fraction * len(perm)))
  return {
      "train_a": task_split(train, config.task_a),
      "test_a": task_split(test, config.task_a),
      "train_b": take(b, np.sort(perm[n_val:])),
      "val_b": take(b, np.sort(perm[:n_val])),
      "test_b": task_split(test, config.task_b),
  }


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------


def _schedule(value, steps: int):
  """A float, or ``(start, end)``: cosine annealing from ``start`` to ``end`` over ``steps``."""
  if isinstance(value, tuple | list):
    start, end = value
    return optax.cosine_decay_schedule(start, steps, alpha=end / start)
  return value


def make_method(
    spec: ml_collections.ConfigDict, config: ml_collections.ConfigDict, *,
    eva_data: list | None = None,
) -> tuple[Reparam | None, optax.GradientTransformation]:
  """The reparameterization (None for full fine-tuning) and the optimizer of a method.

  Args:
    spec: the method's entry in ``config.methods`` (``kind``, ``learning_rate`` and the
      method's hyperparameters).
    config: the experiment config (``targets``, ``head``, ``steps``, ``weight_decay``).
    eva_data: layer inputs for EVA (``{path: [N, in]}`` per batch).

  Raises:
    ValueError: on an unknown ``kind``.
  """
  kind = spec.kind
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r} is not one of {sorted(KINDS)}")
  adam = optax.adamw(spec.learning_rate,
                     weight_decay=_schedule(spec.get("weight_decay", config.weight_decay),
                                            config.steps))
  targets, head = config.targets, config.head
  if kind == "full":
    return None, adam
  if kind == "head":
    return modules_to_save(None, head), adam
  if kind == "lift":
    opt = lift(adam, spec.rank, lora_rank=spec.lora_rank, refresh_every=spec.refresh_every,
               targets=f"modules/(?:{targets})", others="inner")
    return modules_to_save(None, f"(?:{targets})|(?:{head})"), opt
  if kind == "lora":
    base = lora(spec.rank, spec.alpha, targets, rslora=spec.get("rslora", False),
                init=spec.get("init", "default"))
  elif kind == "dora":
    base = dora(spec.rank, spec.alpha, targets, rslora=spec.get("rslora", False))
  elif kind == "bone":
    base = bone(spec.rank, targets, mode=spec.get("mode", "default"))
  elif kind == "eva":
    if eva_data is None:
      raise ValueError("kind='eva' needs eva_data (layer inputs of the task-B data)")
    base = with_data(eva(spec.rank, spec.alpha, targets, rho=spec.rho, tau=spec.tau), data=eva_data)
  else:  # adalora
    base = adalora(spec.init_rank, spec.alpha, targets)
    steps = config.steps
    budget = adalora_budget(steps, spec.init_rank, spec.target_rank,
                            tinit=int(spec.tinit_fraction * steps),
                            tfinal=int(spec.tfinal_fraction * steps), delta_t=spec.delta_t)
    opt = optax.chain(add_penalty_gradient(orthogonal_penalty, spec.orth_reg), adam, budget)
    return modules_to_save(base, head), opt
  return modules_to_save(base, head), adam


def _find(tree, cls):
  return [x for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, cls))
          if isinstance(x, cls)]


def count_parameters(kind: str, state: state_lib.TrainState, params: PyTree,
                     head: str) -> dict[str, Any]:
  """Parameters the optimizer can change, in total and without the head.

  For LIFT only the masked entries of the target kernels count (``k`` per kernel, the size
  of its mask), plus the head. For AdaLoRA the count is the allocated triplets; the ranks
  kept at the end (``ranks``) are reported too. For EVA ``ranks`` are the redistributed
  per-layer ranks.
  """
  flat_params = flatten_with_paths(params)
  n_head = sum(int(np.size(flat_params[p])) for p in select(params, head, ndim=None))
  flat = flatten_with_paths(state.trainable)
  total = sum(int(np.size(v)) for v in flat.values())
  extra: dict[str, Any] = {}
  if kind == "lift":
    (ls,) = _find(state.opt_state, LiftState)
    masked = {p: int(i.size) for p, i in ls.indices.items()}
    total = total - sum(int(np.size(flat[p])) for p in masked) + sum(masked.values())
    extra["mask_sizes"] = masked
  elif kind == "adalora":
    (bs,) = _find(state.opt_state, AdaLoraBudgetState)
    extra["ranks"] = {p: int(np.sum(k)) for p, k in bs.keep.items()}
  elif kind == "eva":
    extra["ranks"] = {p: int(e["lora_a"].shape[1])
                      for p, e in state.trainable["adapter"].items()}
  return {"trainable_params": total, "adapter_params": total - n_head, **extra}


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


def accuracy(apply_fn, params: PyTree, ds: Mapping[str, np.ndarray]) -> float:
  """Test accuracy of ``apply_fn(params, x)`` on a whole split (one batch)."""
  logits = apply_fn(params, jnp.asarray(ds["x"]))
  return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == ds["label"]))


class Experiment:
  """Shared pieces of one dataset's experiment: data, model template, compiled functions."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, progress: bool):
    self.config, self.workdir, self.progress = config, workdir, progress
    self.data = prepare_data(config)
    self.num_classes = len(config.task_b)
    if len(config.task_a) != self.num_classes:
      raise ValueError(f"task_a={tuple(config.task_a)} and task_b={tuple(config.task_b)} "
                       "must have the same number of classes (heads of one shape)")
    self.mesh = parallel.make_mesh()
    self.template = self.model(0)
    self.apply = jax.jit(self.template.apply)
    self.per_example = classification_loss(self.template.apply)
    self.steps_cache: dict[tuple, tuple] = {}
    self.start_cache: dict[int, tuple] = {}

  def model(self, seed: int):
    return functional(make_model(self.config.model, seed=seed, num_classes=self.num_classes,
                                 **dict(self.config.model_kwargs)))

  def pretrained(self, seed: int) -> tuple[PyTree, dict[str, float]]:
    """Params pretrained on task A (NumPy leaves), cached in ``pretrain/seed<k>.npz``."""
    c = self.config
    path = os.path.join(self.workdir, "pretrain", f"seed{seed}.npz")
    info_path = path[:-4] + ".json"
    if os.path.exists(path) and os.path.exists(info_path):
      with open(info_path) as f:
        return report.load_params(path, self.template.params), json.load(f)
    fn = self.model(seed)
    result = loop.train(
        apply_fn=fn.apply, params=fn.params, per_example_loss=self.per_example,
        weighting=reweight.uniform(), optimizer=optax.adamw(c.pretrain_learning_rate,
                                                            weight_decay=c.weight_decay),
        train_ds=self.data["train_a"], test_ds=self.data["test_a"], num_classes=self.num_classes,
        steps=c.pretrain_steps, batch_size=c.batch_size, seed=seed,
        eval_every=c.pretrain_steps, mesh=self.mesh, progress=self.progress,
        desc=f"pretrain/seed{seed}")
    params = jax.tree.map(np.asarray, jax.device_get(result.state.trainable))
    info = {"task_a_accuracy": accuracy(self.apply, params, self.data["test_a"])}
    report.save_params(path, params)
    with open(info_path, "w") as f:
      json.dump(info, f)
    return params, info

  def start_params(self, seed: int) -> tuple[PyTree, PyTree, dict]:
    """Pretrained backbone with the fresh task-B head; the pretrained task-A head."""
    if seed not in self.start_cache:
      params, info = self.pretrained(seed)
      fresh = self.model(10_000 + seed).params
      head_b = jax.tree.map(np.asarray, fresh["head"])
      self.start_cache[seed] = (dict(params, head=head_b), params["head"], info)
    return self.start_cache[seed]

  def eva_data(self, params: PyTree, seed: int) -> list:
    """Inputs of the target layers on task-B training batches (EVA's ``data``).

    One pass over the task-B training set in a seeded order, in batches of ``batch_size``.
    """
    x = self.data["train_b"]["x"]
    order = np.random.default_rng(seed).permutation(len(x))
    bs = self.config.batch_size
    batches = [x[order[i:i + bs]] for i in range(0, len(x) - bs + 1, bs)]
    return list(collect_inputs(self.forward, params, batches, self.config.targets))

  def forward(self, params, x):
    """The model's logits (a plain function of ``(params, x)``, for `collect_inputs`)."""
    return self.template.apply(params, x)

  def method(self, name: str, spec, params: PyTree, seed: int):
    """``(reparam, optimizer, train_step, eval_step)``; steps are compiled once per method."""
    eva_data = self.eva_data(params, seed) if spec.kind == "eva" else None
    reparam, optimizer = make_method(spec, self.config, eva_data=eva_data)
    key = (name, float(spec.learning_rate))
    if key not in self.steps_cache:
      step = jax.jit(make_train_step(self.per_example, reweight.uniform(), optimizer,
                                     reparam=reparam), donate_argnums=0)
      ev = jax.jit(make_eval_step(self.template.apply, self.num_classes, reparam=reparam))
      self.steps_cache[key] = (step, ev)
    return (reparam, optimizer, *self.steps_cache[key])

  def finetune(self, name: str, spec, seed: int, eval_split: str) -> dict[str, Any]:
    """One fine-tuning run; returns its record (history, accuracies, counts, bytes)."""
    c = self.config
    params, head_a, info = self.start_params(seed)
    reparam, optimizer, step, ev = self.method(name, spec, params, seed)
    result = loop.train(
        apply_fn=self.template.apply, params=params, per_example_loss=self.per_example,
        weighting=reweight.uniform(), optimizer=optimizer, train_ds=self.data["train_b"],
        test_ds=self.data[eval_split], num_classes=self.num_classes, steps=c.steps,
        batch_size=c.batch_size, seed=seed, eval_every=c.eval_every, reparam=reparam,
        mesh=self.mesh, progress=self.progress, desc=f"{name}/seed{seed}", train_step=step,
        eval_step=ev)
    tuned = jax.device_get(state_lib.params_of(result.state, reparam))
    record = {
        "method": name, "kind": spec.kind, "seed": seed,
        "learning_rate": float(spec.learning_rate), "history": result.history,
        "task_b_accuracy": result.history[-1]["test_accuracy"],
        "task_a_accuracy_before": info["task_a_accuracy"],
        "opt_state_bytes": tree_bytes(result.state.opt_state),
        **count_parameters(spec.kind, result.state, params, c.head),
    }
    if eval_split == "test_b":
      record["task_b_val_accuracy"] = accuracy(self.apply, tuned, self.data["val_b"])
      record["task_a_accuracy"] = accuracy(self.apply, dict(tuned, head=head_a),
                                           self.data["test_a"])
    return record

  def timing(self, methods: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Interleaved timing of every method's train step on one batch (first seed's model).

    Each round runs ``timing_steps`` steps of every method in turn; the per-round median
    step time of a method is divided by full fine-tuning's of the same round, and the
    median over rounds is reported (``ratio``), with the median step time in ms.
    """
    c = self.config
    batch_np = take(self.data["train_b"], np.arange(c.batch_size))
    batch = parallel.shard_batch({k: batch_np[k] for k in ("x", "label", "id")}, self.mesh)
    names, seed = list(methods), c.seeds[0]
    states, steps = {}, {}
    for name in names:
      params, _, _ = self.start_params(seed)
      reparam, optimizer, step, _ = self.method(name, methods[name], params, seed)
      st = state_lib.create(params, optimizer, reweight.uniform(), jax.random.PRNGKey(0),
                            reparam=reparam)
      st = parallel.replicate(st, self.mesh)
      for _ in range(3):  # compile and warm up
        st, _ = step(st, batch)
      states[name], steps[name] = jax.block_until_ready(st), step
    per_round = {n: [] for n in names}
    for _ in range(c.timing_rounds):
      for name in names:
        st, step, times = states[name], steps[name], []
        for _ in range(c.timing_steps):
          t0 = time.perf_counter()
          st, _ = step(st, batch)
          jax.block_until_ready(st)
          times.append(time.perf_counter() - t0)
        states[name] = st
        per_round[name].append(float(np.median(times)))
    ref = np.asarray(per_round[c.reference])
    out = {}
    for name in names:
      ratios = np.asarray(per_round[name]) / ref
      out[name] = {"ratio": float(np.median(ratios)),
                   "ratio_iqr": [float(np.percentile(ratios, 25)),
                                 float(np.percentile(ratios, 75))],
                   "step_ms": 1e3 * float(np.median(per_round[name]))}
    return out


# --------------------------------------------------------------------------------------
# Tables and plots
# --------------------------------------------------------------------------------------


def _mean_std(values) -> list:
  """``[mean, sample std (ddof=1) or None for one seed]`` (`reweight.train.report.mean_std`)."""
  return list(report.mean_std(values))


def _drops(records: Sequence[Mapping[str, Any]]) -> list[float]:
  return [r["task_a_accuracy_before"] - r["task_a_accuracy"] for r in records]


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Mean and sample std over seeds of one method's runs (counts and bytes must agree)."""
  out = {
      "learning_rate": records[0]["learning_rate"],
      "task_b_val_accuracy": _mean_std([r["task_b_val_accuracy"] for r in records]),
      "task_b_accuracy": _mean_std([r["task_b_accuracy"] for r in records]),
      "task_a_accuracy": _mean_std([r["task_a_accuracy"] for r in records]),
      "task_a_drop": _mean_std(_drops(records)),
      "seeds": [r["seed"] for r in records],
  }
  for key in ("trainable_params", "adapter_params", "opt_state_bytes"):
    vals = sorted({r[key] for r in records})
    out[key] = vals[0] if len(vals) == 1 else vals  # EVA's count may differ across seeds
  if "ranks" in records[0]:
    out["ranks"] = [r["ranks"] for r in records]
  return out


def _pct(ms) -> str:
  """``mean ± std`` in %; the std is "–" for one seed."""
  std = "–" if ms[1] is None else f"{100 * ms[1]:.1f}"
  return f"{100 * ms[0]:.1f} ± {std}"


def compare(records: Mapping[str, Sequence[Mapping[str, Any]]], reference: str
            ) -> dict[str, dict[str, Any]]:
  """Paired differences over seeds of every method against ``reference`` (same seeds).

  ``{method: {"task_b_val_accuracy" | "task_b_accuracy" | "task_a_drop": paired}}`` with
  ``paired`` = `reweight.train.report.paired_difference` of method − reference.
  """
  ref = {r["seed"]: r for r in records[reference]}
  out = {}
  for name, recs in records.items():
    if name == reference:
      continue
    by_seed = {r["seed"]: r for r in recs}
    seeds = sorted(set(by_seed) & set(ref))
    a = [by_seed[s] for s in seeds]
    b = [ref[s] for s in seeds]
    out[name] = {key: report.paired_difference([r[key] for r in a], [r[key] for r in b])
                 for key in ("task_b_val_accuracy", "task_b_accuracy")}
    out[name]["task_a_drop"] = report.paired_difference(_drops(a), _drops(b))
  return out


def _pair_cell(p) -> str:
  if p["ci95"] is None:
    return f"{100 * p['mean']:+.1f}"
  lo, hi = p["ci95"]
  mark = " *" if lo > 0 or hi < 0 else ""
  return f"{100 * p['mean']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{mark}"


def format_comparison(comparison: Mapping[str, Mapping[str, Any]], reference: str) -> str:
  """A Markdown table of `compare`: method − reference, mean and paired 95% CI, in points."""
  n = next(iter(comparison.values()))["task_b_accuracy"]["n"] if comparison else 0
  lines = [f"Paired over {n} seeds: method − {reference}, mean [95% CI] in points; * = the "
           "interval excludes zero.\n",
           f"| method | task B val acc − {reference} | task B test acc − {reference} | "
           f"task A drop − {reference} |", "|---|---|---|---|"]
  for name, c in comparison.items():
    lines.append(f"| {name} | {_pair_cell(c['task_b_val_accuracy'])} | "
                 f"{_pair_cell(c['task_b_accuracy'])} | {_pair_cell(c['task_a_drop'])} |")
  return "\n".join(lines)


def _fmt_count(v) -> str:
  if isinstance(v, list):
    return f"{min(v):,}–{max(v):,}"
  return f"{v:,}"


def format_table(summary: Mapping[str, Mapping[str, Any]], timing: Mapping[str, Any] | None,
                 pretrained: Sequence[float]) -> str:
  """A Markdown table, one row per method (accuracies in %, mean ± std over seeds)."""
  lines = [
      "| method | lr | task B val acc | task B test acc | task A acc after | task A drop | "
      "adapter params | trainable params | opt-state bytes | step time / full |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, s in summary.items():
    ratio = "–"
    if timing and name in timing:
      ratio = f"{timing[name]['ratio']:.2f}"
    lines.append(
        f"| {name} | {s['learning_rate']:g} | {_pct(s['task_b_val_accuracy'])} | "
        f"{_pct(s['task_b_accuracy'])} | "
        f"{_pct(s['task_a_accuracy'])} | {_pct(s['task_a_drop'])} | "
        f"{_fmt_count(s['adapter_params'])} | {_fmt_count(s['trainable_params'])} | "
        f"{_fmt_count(s['opt_state_bytes'])} | {ratio} |")
  lines.append(f"\nTask A test accuracy of the pretrained models (before fine-tuning): "
               f"{_pct(_mean_std(pretrained))}.")
  for name, s in summary.items():
    if "ranks" in s:
      per_seed = ["{" + ", ".join(f"{p.removeprefix('adapter/').removesuffix('/kernel')}: {r}"
                                  for p, r in ranks.items()) + "}" for ranks in s["ranks"]]
      lines.append(f"{name} ranks per layer at the end, per seed: " + "; ".join(per_seed))
  return "\n".join(lines)


def plot(summary: Mapping[str, Mapping[str, Any]], path: str) -> str:
  """Task B vs task A accuracy (left) and task B accuracy vs trainable parameters (right)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
  for i, (name, s) in enumerate(summary.items()):
    color = plt.cm.tab20(i % 20)
    b, a = s["task_b_accuracy"], s["task_a_accuracy"]
    ax1.errorbar(100 * a[0], 100 * b[0], xerr=100 * (a[1] or 0), yerr=100 * (b[1] or 0),
                 fmt="o",
                 color=color, label=name, capsize=2)
    n = s["trainable_params"]
    n = float(np.mean(n)) if isinstance(n, list) else n
    ax2.errorbar(n, 100 * b[0], yerr=100 * (b[1] or 0), fmt="o", color=color, capsize=2)
    ax2.annotate(name, (n, 100 * b[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax1.set_xlabel("task A test accuracy after fine-tuning (%)  [forgets less →]")
  ax1.set_ylabel("task B test accuracy (%)  [learns more ↑]")
  ax1.grid(alpha=0.3)
  ax1.legend(fontsize=7, ncol=2)
  ax2.set_xscale("log")
  ax2.set_xlabel("trainable parameters (incl. head)")
  ax2.set_ylabel("task B test accuracy (%)")
  ax2.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def _load_json(path: str):
  with open(path) as f:
    return json.load(f)


def _dump_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def ordered(methods: Mapping[str, Any]) -> dict[str, Any]:
  """Methods in table order: by kind (as in `KINDS`), then by name (configs sort their keys)."""
  return dict(sorted(methods.items(), key=lambda kv: (KINDS.index(kv[1]["kind"]), kv[0])))


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.mode not in MODES:
    raise ValueError(f"mode={config.mode!r} is not one of {list(MODES)}")
  for name, spec in config.methods.items():
    if spec.kind not in KINDS:
      raise ValueError(f"methods.{name}.kind={spec.kind!r} is not one of {sorted(KINDS)}")
  if config.mode == "final" and config.reference not in config.methods:
    raise ValueError(f"reference={config.reference!r} is not one of {sorted(config.methods)}")


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Runs the experiment of ``config`` (``config.mode``: ``"final"`` or ``"tune"``).

  Returns:
    ``final``: ``{"summary", "timing", "table", "plots"}``; ``tune``: ``{"tune", "table"}``.
  """
  _check_config(config)
  os.makedirs(workdir, exist_ok=True)
  exp = Experiment(config, workdir, progress)
  if config.mode == "tune":
    return _tune(exp)
  methods = ordered(config.methods)
  records: dict[str, list] = {m: [] for m in methods}
  bar = tqdm(total=len(methods) * len(config.seeds), desc="runs", disable=not progress)
  for name, spec in methods.items():
    for seed in config.seeds:
      path = os.path.join(workdir, "runs", name, f"seed{seed}", "result.json")
      if os.path.exists(path):
        records[name].append(_load_json(path))
      else:
        rec = exp.finetune(name, spec, seed, "test_b")
        _dump_json(path, rec)
        records[name].append(rec)
      bar.update()
  bar.close()

  timing_path = os.path.join(workdir, "timing.json")
  timing = _load_json(timing_path) if os.path.exists(timing_path) else None
  if timing is None or set(timing) != set(methods):
    timing = exp.timing(methods)
    _dump_json(timing_path, timing)

  summary = {m: summarize(records[m]) for m in methods}
  for m in methods:
    summary[m]["step_time_ratio"] = timing[m]["ratio"]
    summary[m]["step_ms"] = timing[m]["step_ms"]
  pretrained = [exp.pretrained(s)[1]["task_a_accuracy"] for s in config.seeds]
  refs = tuple(config.get("paired_references", (config.reference,)))
  comparison = {ref: compare(records, ref) for ref in refs if ref in records}
  table = format_table(summary, timing, pretrained) + "".join(
      "\n\n" + format_comparison(c, ref) for ref, c in comparison.items())
  header = (f"{config.dataset}: MLP {tuple(config.model_kwargs.hidden)}, pretrain on classes "
            f"{tuple(config.task_a)} ({config.pretrain_steps} steps), fine-tune on "
            f"{tuple(config.task_b)} ({config.steps} steps, batch {config.batch_size}), "
            f"seeds {tuple(config.seeds)}; adapters on `{config.targets}`, head trained by "
            f"every method. Accuracies in %, mean ± sample std (ddof=1) over n = "
            f"{len(config.seeds)} seeds; task B val = the held-out "
            f"{len(exp.data['val_b']['label'])} task-B training examples (the rates were "
            "chosen on it), test = the test split.\n\n")
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(header + table + "\n")
  _dump_json(os.path.join(workdir, "summary.json"),
             {"summary": summary, "timing": timing, "comparison": comparison,
              "pretrained_task_a_accuracy": pretrained})
  plots = [plot(summary, os.path.join(workdir, "peft.png"))]
  return {"summary": summary, "timing": timing, "comparison": comparison,
          "table": header + table, "plots": plots}


def _tune(exp: Experiment) -> dict:
  """Validation accuracy on task B of every method for each learning rate (one seed).

  The best rate has the highest validation accuracy; ties (the validation split is small)
  go to the lower validation cross-entropy.
  """
  config, workdir = exp.config, exp.workdir
  seed = config.tune_seed
  results: dict[str, dict[str, float]] = {}
  losses: dict[str, dict[str, float]] = {}
  lrs = [f"{lr:g}" for lr in config.tune_learning_rates]
  bar = tqdm(total=len(config.methods) * len(lrs), desc="tune", disable=not exp.progress)
  for name, spec in ordered(config.methods).items():
    results[name], losses[name] = {}, {}
    for lr in lrs:
      path = os.path.join(workdir, "tune", name, f"lr{lr}", f"seed{seed}", "result.json")
      if os.path.exists(path):
        rec = _load_json(path)
      else:
        s = ml_collections.ConfigDict(dict(spec))
        s.learning_rate = float(lr)
        rec = exp.finetune(name, s, seed, "val_b")
        _dump_json(path, rec)
      results[name][lr] = rec["task_b_accuracy"]
      losses[name][lr] = rec["history"][-1]["test_loss"]
      bar.update()
  bar.close()
  best = {m: max(lrs, key=lambda lr, m=m: (results[m][lr], -losses[m][lr])) for m in results}
  lines = ["| method | " + " | ".join(f"lr {lr}" for lr in lrs) + " | best |",
           "|---|" + "---|" * (len(lrs) + 1)]
  for m, r in results.items():
    lines.append(f"| {m} | " + " | ".join(f"{100 * r[lr]:.1f} ({losses[m][lr]:.3f})"
                                          for lr in lrs) + f" | {best[m]} |")
  table = (f"{config.dataset}: task-B validation accuracy % (cross-entropy), seed {seed}, "
           f"{len(exp.data['val_b']['label'])} held-out examples; best: highest accuracy, "
           "ties to the lower cross-entropy\n\n" + "\n".join(lines))
  with open(os.path.join(workdir, "tune.md"), "w") as f:
    f.write(table + "\n")
  _dump_json(os.path.join(workdir, "tune.json"),
             {"accuracy": results, "loss": losses, "best": best})
  return {"tune": results, "loss": losses, "best": best, "table": table}


def main(argv):
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  out = run(_CONFIG.value, _WORKDIR.value)
  print()
  print(out["table"])
  if "plots" in out:
    print("\nplots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", "configs/peft_digits.py",
                                            "Path to an ml_collections config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "workdir/peft", "Where runs, tables and plots go.")
  app.run(main)
