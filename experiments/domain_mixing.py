r"""Group and domain mixing on a multi-domain byte-level LM; domain upsampling at the end.

Data (`reweight.data.domain_corpus`): four natural text domains read from what ships with
Python and the project's dependencies (``code``: stdlib source; ``prose``: READMEs and
docs; ``licenses``; ``tables``: CSV / data files), of different sizes, plus ``noise`` (fresh
random bytes: nothing to learn, loss floor log 256) and ``duplicated`` (one tiny text
repeated). Each domain's held-out files are cut into two contiguous halves: VALIDATION
(the first half; every eval that a method consumes while training) and TEST (the second
half; the reported numbers, computed once at the end of each run).

Part 1, ``mixing``: a small Transformer (`reweight.train.make_model("transformer")`) is
trained for the same number of steps with each method of ``config.methods``:

* ``stratified`` / ``proportional`` / ``temperature`` (`reweight.group` fixed mixtures;
  sizes are the train bytes, noise counted as ``config.noise_nominal_bytes``);
* ``group_dro``: stratified batches, `reweight.group.group_dro` loss weights (its ``q`` is
  the reported proportion);
* ``doremi``: the three stages of Xie et al. — the reference model is the ``stratified``
  run of the same seed (same model, same steps); a proxy (same size) trained on stratified
  batches with `reweight.group.doremi` weights, the frozen reference's per-example losses
  computed inside the jitted step; the final model sampled from the proxy's ``avg_probs``.
  Only the final model's steps count as "equal steps" (the reference and proxy are extra);
* ``aioli``: ``rounds`` rounds; each starts with LearnParams (``lp_rounds`` sweeps over the
  smoothed one-hot mixtures, ``lp_steps`` steps each, in a random order, every domain's
  validation loss measured after each segment; these steps are part of the budget), then
  `reweight.group.aioli`'s update, then the rest of the round on its ``probs``;
* ``skill_it``: ``rounds`` rounds; after each round the per-domain validation losses update
  `reweight.group.skill_it` with the IDENTITY skills graph (every domain its own skill, no
  edges: no steps spent on estimating a graph);
* ``exp3``: EXP3-FLAD (`reweight.group.exp3`): every step's whole batch comes from one
  domain drawn from the bandit's ``probs``; its reward is `reweight.group.gradient_alignment`
  of that batch's gradient with the gradient of a batch of natural-domain VALIDATION windows.

Part 2, ``upsample``: proportional sampling over the natural domains, then
`reweight.group.upsample_at_end` puts ``target_prob`` on ``config.upsample.domain`` for the
last fraction f of the steps, for each f of ``config.upsample.fractions`` (0: never).

Every run is stored in ``workdir/runs/<method>/seed<k>/`` (``result.json``, ``params.npz``;
upsampling runs under ``runs/upsample/f<f>/``); a restarted experiment skips finished runs.
``table.md`` (the report), ``summary.json``, ``proportions.png``, ``domain_losses.png`` and
``upsample.png`` are written to the workdir. Mean ± sample std (ddof=1) over seeds; "A beats
B" only when the paired 95% t-interval of the per-seed difference excludes zero.

  python experiments/domain_mixing.py --config=configs/domain_mixing.py \
      --workdir=workdir/domain_mixing

References:
  Sagawa et al., ICLR 2020 (Group DRO). Xie et al., NeurIPS 2023 (DoReMi). Chen et al.,
  ICLR 2025 (Aioli). Chen et al., NeurIPS 2023 (Skill-it). Albalak et al., NeurIPS 2023
  (FLAD). Blakeney et al., 2024 (domain upsampling at the end of training).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
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
from ml_collections import config_flags  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import reweight  # noqa: E402
from reweight import group, losses  # noqa: E402
from reweight.data import domain_text, text  # noqa: E402
from reweight.data.online_mixture import online_mixture_sampler  # noqa: E402
from reweight.train import report  # noqa: E402
from reweight.train.models import functional, make_model  # noqa: E402
from reweight.train.state import create  # noqa: E402
from reweight.train.step import make_train_step  # noqa: E402

AIOLI_ORDER_SALT = 0x61696F6C
EXP3_SALT = 0x65787033

# ---------------------------------------------------------------------------------- data


def spaced_windows(tokens: np.ndarray, seq_len: int, count: int) -> dict[str, np.ndarray]:
  """Up to ``count`` non-overlapping windows of ``tokens``, evenly spaced from start to end."""
  fit = (len(tokens) - 1) // seq_len
  if fit < 1:
    raise ValueError(f"{len(tokens)} held-out tokens hold no window of seq_len={seq_len}")
  starts = np.linspace(0, len(tokens) - seq_len - 1, min(count, fit)).astype(np.int64)
  return text.windows(tokens, starts, seq_len)


def heldout_halves(corpus, seq_len: int, val_windows: int, test_windows: int):
  """VALIDATION windows from the first half of each domain's held-out bytes, TEST from the
  second half (disjoint by position): two ``{"x", "y", "group"}`` dicts."""
  halves = []
  for part, count in ((0, val_windows), (1, test_windows)):
    xs, ys, gs = [], [], []
    for g, held in enumerate(corpus.validation):
      half = len(held) // 2
      w = spaced_windows(held[:half] if part == 0 else held[half:], seq_len, count)
      xs.append(w["x"])
      ys.append(w["label"])
      gs.append(np.full(len(w["x"]), g, np.int32))
    halves.append({"x": np.concatenate(xs), "y": np.concatenate(ys),
                   "group": np.concatenate(gs)})
  return halves


def domain_sizes(corpus, noise_nominal_bytes: int) -> np.ndarray:
  """Train bytes per domain; noise (generated, no train bytes) counts its nominal size."""
  sizes = np.array([len(t) for t in corpus.train], np.float64)
  if corpus.noise_id >= 0:
    sizes[corpus.noise_id] = noise_nominal_bytes
  return sizes


# --------------------------------------------------------------------------- the pieces


class Setup(NamedTuple):
  """What every run shares: the data, the model, and the jitted functions (one per kind)."""

  config: Any
  corpus: Any
  names: tuple[str, ...]
  natural: np.ndarray  # ids of the natural domains
  sizes: np.ndarray
  val: dict  # device arrays
  test: dict
  target: dict  # natural-domain validation windows (numpy), for EXP3's target gradient
  init_params: Any  # seed -> params
  plain_step: Any
  group_dro_step: Any
  proxy_step: Any
  exp3_step: Any
  domain_losses: Any
  exp3_policy: Any


def make_optimizer(config) -> optax.GradientTransformation:
  lr = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                          config.steps,
                                          config.learning_rate * config.final_ratio)
  return optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=config.weight_decay)


def build(config: ml_collections.ConfigDict) -> Setup:
  """Reads the corpus, builds the model and jits the steps every method and seed reuse."""
  corpus = domain_text.domain_corpus(config.max_bytes_per_domain,
                                     validation_every=config.validation_every)
  names, num = corpus.names, len(corpus.names)
  missing = [d for d in config.natural if d not in names]
  if missing:
    raise ValueError(f"natural domains {missing} are not domains of the corpus {names}")
  natural = np.array([names.index(d) for d in config.natural])
  val, test = heldout_halves(corpus, config.seq_len, config.val_windows, config.test_windows)
  kwargs = dict(vocab_size=text.VOCAB_SIZE, **dict(config.model_kwargs))
  fn = functional(make_model("transformer", seed=0, **kwargs))

  def per_sequence_loss(params, batch, *, key=None):
    del key  # no dropout
    logits = fn.apply(params, batch["x"])
    return losses.sequence_mean(losses.softmax_cross_entropy(logits, batch["y"]))

  optimizer = make_optimizer(config)
  plain = make_train_step(per_sequence_loss, reweight.uniform(), optimizer)
  dro = make_train_step(per_sequence_loss, group.group_dro(num, config.group_dro_step_size),
                        optimizer)
  proxy = make_train_step(per_sequence_loss, group.doremi(num, **dict(config.doremi)),
                          optimizer)

  def proxy_step(state, batch, ref_params):
    ref_losses = jax.lax.stop_gradient(per_sequence_loss(ref_params, batch))
    return proxy(state, batch, ref_losses=ref_losses)

  bandit = group.exp3(num)

  def exp3_step(state, batch, target, bandit_state, source):
    mean_loss = lambda p, b: jnp.mean(per_sequence_loss(p, b))
    loss, grads = jax.value_and_grad(mean_loss)(state.trainable, batch)
    target_grads = jax.grad(mean_loss)(state.trainable, target)
    stacked = jax.tree.map(lambda g: g[None], grads)  # one "group": this batch's source
    reward = group.gradient_alignment(stacked, target_grads)[0]
    bandit_state = bandit.update(bandit_state, group=source, reward=reward)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    state = state._replace(step=state.step + 1, opt_state=opt_state,
                           trainable=optax.apply_updates(state.trainable, updates))
    return state, bandit_state, {"mean_loss": loss, "reward": reward}

  def domain_losses(params, windows):
    per_seq = per_sequence_loss(params, windows)
    sums = jax.ops.segment_sum(per_seq, windows["group"], num)
    return sums / jax.ops.segment_sum(jnp.ones_like(per_seq), windows["group"], num)

  is_natural = np.isin(val["group"], natural)
  return Setup(
      config=config, corpus=corpus, names=names, natural=natural,
      sizes=domain_sizes(corpus, config.noise_nominal_bytes),
      val={k: jnp.asarray(v) for k, v in val.items()},
      test={k: jnp.asarray(v) for k, v in test.items()},
      target={k: v[is_natural] for k, v in val.items()},
      init_params=lambda seed: functional(make_model("transformer", seed=seed,
                                                     **kwargs)).params,
      plain_step=jax.jit(plain), group_dro_step=jax.jit(dro), proxy_step=jax.jit(proxy_step),
      exp3_step=jax.jit(exp3_step), domain_losses=jax.jit(domain_losses), exp3_policy=bandit)


def fresh_state(setup: Setup, seed: int, weighting=None):
  return create(setup.init_params(seed), make_optimizer(setup.config),
                weighting or reweight.uniform(), jax.random.PRNGKey(seed))


def batch_of(setup: Setup, groups: np.ndarray, step: int, seed: int) -> dict:
  b = domain_text.domain_lm_batch(setup.corpus, groups, step, seq_len=setup.config.seq_len,
                                  seed=seed)
  return {"x": b["x"], "y": b["y"], "group": b["group"]}


def train_on(setup: Setup, state, step_fn, seed: int, steps: range, probs, bar=None,
             record=None, **step_kwargs):
  """Trains ``steps`` (global step indices) on batches drawn with the mixture ``probs``.

  ``record`` (a list) gets the loss-weighting state's ``probs`` after every step.
  """
  sampler = online_mixture_sampler(setup.config.batch_size, seed,
                                   num_groups=len(setup.names), process_index=0,
                                   process_count=1)
  probs = np.asarray(probs, np.float64)
  for t in steps:
    batch = batch_of(setup, sampler.groups(t, probs), t, seed)
    state, _ = step_fn(state, batch, **step_kwargs)
    if record is not None:
      record.append(state.weighting_state.probs)
    if bar is not None:
      bar.update()
  return state


def val_losses(setup: Setup, state) -> np.ndarray:
  return np.asarray(setup.domain_losses(state.trainable, setup.val), np.float64)


# ------------------------------------------------------------------------------ methods
# Each returns (final train state, {"probs": [steps, G] proportions in use at each step,
# "final_probs": [G], ...extras}).


def fixed_mixture(policy):
  def method(setup: Setup, seed: int, bar) -> tuple:
    probs = np.asarray(policy.init().probs, np.float64)
    steps = setup.config.steps
    state = train_on(setup, fresh_state(setup, seed), setup.plain_step, seed, range(steps),
                     probs, bar)
    return state, {"probs": np.tile(probs, (steps, 1)), "final_probs": probs}
  return method


def run_group_dro(setup: Setup, seed: int, bar) -> tuple:
  c, num = setup.config, len(setup.names)
  record = []
  weighting = group.group_dro(num, c.group_dro_step_size)
  state = train_on(setup, fresh_state(setup, seed, weighting), setup.group_dro_step, seed,
                   range(c.steps), np.full(num, 1 / num), bar, record)
  q = np.asarray(jax.device_get(record), np.float64)
  return state, {"probs": q, "final_probs": q[-1], "sampling": "stratified"}


def run_doremi(setup: Setup, seed: int, bar, reference_params) -> tuple:
  c, num = setup.config, len(setup.names)
  weighting = group.doremi(num, **dict(c.doremi))
  record = []
  proxy = train_on(setup, fresh_state(setup, seed, weighting), setup.proxy_step, seed,
                   range(c.steps), np.full(num, 1 / num), bar, record,
                   ref_params=reference_params)
  alpha = np.asarray(jax.device_get(record), np.float64)
  avg = np.asarray(proxy.weighting_state.avg_probs, np.float64)
  avg = avg / avg.sum()  # float32 running mean: renormalize before sampling
  state = train_on(setup, fresh_state(setup, seed), setup.plain_step, seed, range(c.steps),
                   avg, bar)
  proxy_test = np.asarray(setup.domain_losses(proxy.trainable, setup.test), np.float64)
  return state, {"probs": np.tile(avg, (c.steps, 1)), "final_probs": avg,
                 "proxy_alpha": alpha, "proxy_test_losses": proxy_test.tolist()}


def run_aioli(setup: Setup, seed: int, bar) -> tuple:
  c, a, num = setup.config, setup.config.aioli, len(setup.names)
  policy = group.aioli(num, a.step_size, lp_rounds=a.lp_rounds, smoothing=a.smoothing)
  mixtures = np.asarray(group.learn_params_mixtures(num, a.smoothing), np.float64)
  rng = np.random.default_rng([AIOLI_ORDER_SALT, seed])
  ends = np.linspace(0, c.steps, a.rounds + 1).astype(int)[1:]
  state, pstate = fresh_state(setup, seed), policy.init()
  probs, matrices, t = [], [], 0
  for end in ends:
    drops = np.zeros((a.lp_rounds, num, num))
    for sweep in range(a.lp_rounds):  # LearnParams: inside the step budget
      before = val_losses(setup, state)
      for j in rng.permutation(num):
        seg = range(t, t + a.lp_steps)
        state = train_on(setup, state, setup.plain_step, seed, seg, mixtures[j], bar)
        probs += [pstate.probs] * len(seg)
        after = val_losses(setup, state)
        drops[sweep, :, j] = before - after  # from the previous segment's end, as the authors
        before, t = after, seg.stop
    pstate = policy.update(pstate, loss_drops=drops)
    matrices.append(np.asarray(pstate.matrix).tolist())
    p = np.asarray(pstate.probs, np.float64)
    state = train_on(setup, state, setup.plain_step, seed, range(t, end), p, bar)
    probs += [pstate.probs] * (end - t)
    t = end
  probs = np.asarray(jax.device_get(probs), np.float64)
  return state, {"probs": probs, "final_probs": probs[-1], "matrices": matrices}


def run_skill_it(setup: Setup, seed: int, bar) -> tuple:
  c, s, num = setup.config, setup.config.skill_it, len(setup.names)
  policy = group.skill_it(np.eye(num), s.step_size, s.window)
  ends = np.linspace(0, c.steps, s.rounds + 1).astype(int)[1:]
  state, pstate = fresh_state(setup, seed), policy.init()
  probs, evals, t = [], [], 0
  for r, end in enumerate(ends):
    p = np.asarray(pstate.probs, np.float64)
    state = train_on(setup, state, setup.plain_step, seed, range(t, end), p, bar)
    probs += [p] * (end - t)
    t = end
    if r + 1 < len(ends):  # the last round's losses would steer nothing
      evals.append(val_losses(setup, state).tolist())
      pstate = policy.update(pstate, eval_losses=jnp.asarray(evals[-1]))
  probs = np.asarray(probs)
  return state, {"probs": probs, "final_probs": probs[-1], "graph": "identity",
                 "val_losses_per_round": evals}


def run_exp3(setup: Setup, seed: int, bar) -> tuple:
  c = setup.config
  one_source = online_mixture_sampler(1, seed, num_groups=len(setup.names), process_index=0,
                                      process_count=1)
  state, bstate = fresh_state(setup, seed), setup.exp3_policy.init()
  n_target = len(setup.target["x"])
  probs, rewards = [], []
  for t in range(c.steps):
    p = np.asarray(bstate.probs, np.float64)
    source = int(one_source.plan(t, p / p.sum())[0])
    batch = batch_of(setup, np.full(c.batch_size, source), t, seed)
    pick = np.random.default_rng([EXP3_SALT, seed, t]).choice(
        n_target, min(c.exp3_target_batch, n_target), replace=False)
    target = {k: v[pick] for k, v in setup.target.items()}
    state, bstate, m = setup.exp3_step(state, batch, target, bstate, jnp.int32(source))
    probs.append(p)
    rewards.append((source, m["reward"]))
    bar.update()
  rewards = [(s, float(r)) for s, r in jax.device_get(rewards)]
  probs = np.asarray(probs)
  final = np.asarray(bstate.probs, np.float64)
  return state, {"probs": probs, "final_probs": final / final.sum(), "rewards": rewards,
                 "plays": np.asarray(bstate.plays).tolist()}


def method_table(setup: Setup) -> dict:
  sizes, num, c = setup.sizes, len(setup.names), setup.config
  return {
      "stratified": fixed_mixture(group.stratified(num)),
      "proportional": fixed_mixture(group.proportional(sizes)),
      "temperature": fixed_mixture(group.temperature(sizes, c.temperature_tau)),
      "group_dro": run_group_dro, "doremi": run_doremi, "aioli": run_aioli,
      "skill_it": run_skill_it, "exp3": run_exp3,
  }


# ----------------------------------------------------------------------- run bookkeeping


def finish_run(setup: Setup, run_dir: str, state, out: dict, **meta) -> dict:
  """Tests the final model once, saves ``result.json`` and ``params.npz``."""
  test = np.asarray(setup.domain_losses(state.trainable, setup.test), np.float64)
  val = val_losses(setup, state)
  probs = np.asarray(out.pop("probs"), np.float64)
  result = {**meta, "domains": list(setup.names),
            "test_losses": dict(zip(setup.names, test.tolist())),
            "val_losses": dict(zip(setup.names, val.tolist())),
            "final_probs": np.asarray(out.pop("final_probs"), np.float64).tolist(),
            "probs_trajectory": probs.tolist(), **out}
  for key in ("proxy_alpha",):
    if key in result:
      result[key] = np.asarray(result[key]).tolist()
  os.makedirs(run_dir, exist_ok=True)
  report.save_params(os.path.join(run_dir, "params.npz"), state.trainable)
  report.write_json(os.path.join(run_dir, "result.json"), result)
  return result


def steps_of(config, method: str) -> int:
  """Train steps a method's run takes (DoReMi: proxy + final model)."""
  return 2 * config.steps if method == "doremi" else config.steps


# --------------------------------------------------------------------------- statistics


def natural_metrics(result: Mapping, natural: Sequence[str]) -> tuple[float, float]:
  """(mean, max) of a run's test losses over the natural domains."""
  v = [result["test_losses"][d] for d in natural]
  return float(np.mean(v)), float(np.max(v))


def summarize_mixing(results: Mapping[str, list[dict]], config) -> dict:
  names = next(iter(results.values()))[0]["domains"]
  methods, comparisons = {}, {}
  for method, runs in results.items():
    avg, worst = zip(*[natural_metrics(r, config.natural) for r in runs])
    methods[method] = {
        "n": len(runs), "seeds": [r["seed"] for r in runs],
        "avg_natural": report.mean_std(avg), "worst_natural": report.mean_std(worst),
        "test_losses": {d: report.mean_std([r["test_losses"][d] for r in runs]) for d in names},
        "final_probs": np.mean([r["final_probs"] for r in runs], axis=0).tolist()}
  ref = results.get(config.reference)
  for method, runs in results.items():
    if ref is None or method == config.reference:
      continue
    comparisons[method] = {
        key: report.paired_difference([natural_metrics(r, config.natural)[i] for r in runs],
                    [natural_metrics(r, config.natural)[i] for r in ref])
        for i, key in enumerate(("avg_natural", "worst_natural"))}
  return {"domains": names, "methods": methods, "paired_vs_reference": comparisons}


def _pm(stat, digits: int = 4) -> str:
  return report.format_mean_std(stat, digits)


def _ci(p) -> str:
  return report.format_difference(p)


def mixing_report(summary: Mapping, config) -> str:
  names, methods = summary["domains"], summary["methods"]
  n = next(iter(methods.values()))["n"]
  ref = config.reference
  lines = [
      "## Domain mixing", "",
      f"Test loss (nats/byte) of the final model, mean ± sample std (ddof=1) over n = {n} "
      f"seeds; every final model trained {config.steps} steps x {config.batch_size} x "
      f"{config.seq_len} bytes. avg / worst: over the natural domains "
      f"{', '.join(config.natural)} (noise and duplicated excluded). Paired: per-seed "
      f"difference method − {ref}, mean and 95% t-interval (negative = lower loss than "
      f"{ref}).", "",
      f"| method | avg natural | worst natural | avg − {ref} | worst − {ref} |",
      "|---|---|---|---|---|"]
  for method, s in methods.items():
    p = summary["paired_vs_reference"].get(method)
    cells = [_pm(s["avg_natural"]), _pm(s["worst_natural"]),
             _ci(p["avg_natural"]) if p else "—", _ci(p["worst_natural"]) if p else "—"]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  lines += ["", "### Per-domain test loss", "",
            "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for method, s in methods.items():
    lines.append(f"| {method} | " + " | ".join(_pm(s["test_losses"][d], 3) for d in names)
                 + " |")
  lines += ["", "### Final proportions (mean over seeds)", "",
            "DoReMi: the proxy's `avg_probs` (what the final model sampled from); Group DRO: "
            "its loss weights q (sampling stays stratified); Aioli, Skill-it, EXP3: the "
            "policy's last probs.", "",
            "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for method, s in methods.items():
    lines.append(f"| {method} | " + " | ".join(f"{p:.3f}" for p in s["final_probs"]) + " |")
  lines += ["", "### Verdicts", ""]
  for method in ("doremi", "aioli"):
    p = summary["paired_vs_reference"].get(method)
    if p:
      for key, what in (("avg_natural", "the average natural-domain loss"),
                        ("worst_natural", "the worst natural-domain loss")):
        lines.append(f"* {report.verdict(p[key], method, ref, what, higher_is_better=False)}.")
  for domain in ("noise", "duplicated"):
    if domain in names:
      g = names.index(domain)
      share = ", ".join(f"{m} {s['final_probs'][g]:.3f}" for m, s in methods.items())
      lines.append(f"* Final weight of the {domain} domain (uniform would be "
                   f"{1 / len(names):.3f}): {share}.")
  return "\n".join(lines)


def summarize_upsample(results: Mapping[float, list[dict]], config) -> dict:
  u = config.upsample
  rest = [d for d in config.natural if d != u.domain]
  rows = {}
  base = results.get(0.0)
  for f, runs in results.items():
    target = [r["test_losses"][u.domain] for r in runs]
    others = [float(np.mean([r["test_losses"][d] for d in rest])) for r in runs]
    row = {"n": len(runs), "target": report.mean_std(target), "rest": report.mean_std(others)}
    if base is not None and f != 0.0:
      row["target_vs_f0"] = report.paired_difference(
          target, [r["test_losses"][u.domain] for r in base])
      row["rest_vs_f0"] = report.paired_difference(
          others, [float(np.mean([r["test_losses"][d] for d in rest])) for r in base])
    rows[f"{f:g}"] = row
  return {"domain": u.domain, "rest": rest, "rows": rows}


def upsample_report(summary: Mapping, config) -> str:
  u = config.upsample
  n = next(iter(summary["rows"].values()))["n"]
  lines = [
      "## Upsampling at the end", "",
      f"Proportional sampling over {', '.join(config.natural)}; for the last fraction f of "
      f"{u.steps} steps, {u.domain} at p = {u.target_prob} (the others scaled down). Test "
      f"loss (nats/byte), mean ± sample std (ddof=1), n = {n} seeds; paired difference "
      f"vs f = 0 with its 95% t-interval (negative = lower loss).", "",
      f"| f | {u.domain} | rest (mean of {', '.join(summary['rest'])}) | {u.domain} − f0 | "
      "rest − f0 |", "|---|---|---|---|---|"]
  for f, r in summary["rows"].items():
    a = _ci(r["target_vs_f0"]) if "target_vs_f0" in r else "—"
    b = _ci(r["rest_vs_f0"]) if "rest_vs_f0" in r else "—"
    lines.append(f"| {f} | {_pm(r['target'])} | {_pm(r['rest'])} | {a} | {b} |")
  lines.append("")
  for f, r in summary["rows"].items():
    if "target_vs_f0" in r:
      target = report.verdict(r["target_vs_f0"], f"f={f}", "f=0", u.domain,
                              higher_is_better=False)
      rest = report.verdict(r["rest_vs_f0"], f"f={f}", "f=0", "the rest",
                            higher_is_better=False)
      lines.append(f"* f = {f}: {target}; {rest}.")
  return "\n".join(lines)


# -------------------------------------------------------------------------------- plots


def plot_proportions(results: Mapping[str, list[dict]], summary: Mapping, names,
                     path: str) -> str:
  """One panel per adaptive method (seed 0's proportions along training), then the final
  proportions of every method (mean over seeds)."""
  panels = [m for m in ("group_dro", "doremi", "aioli", "skill_it", "exp3") if m in results]
  titles = {"group_dro": "Group DRO q (loss weights)", "aioli": "Aioli p",
            "doremi": "DoReMi proxy alpha (dashed: running mean)",
            "skill_it": "Skill-it p (identity graph)", "exp3": "EXP3 p"}
  cols = 3
  rows = -(-(len(panels) + 1) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, method in zip(axes.flat, panels, strict=False):
    r = results[method][0]
    probs = np.asarray(r["proxy_alpha"] if method == "doremi" else r["probs_trajectory"])
    steps = np.arange(1, len(probs) + 1)
    for g, name in enumerate(names):
      ax.plot(steps, probs[:, g], label=name, lw=0.8 if method == "doremi" else 1.2,
              color=colors[g % len(colors)], alpha=0.5 if method == "doremi" else 1.0)
      if method == "doremi":
        ax.plot(steps, np.cumsum(probs[:, g]) / steps, "--", color=colors[g % len(colors)],
                lw=1.6)
    title = f"{titles[method]}, seed {r['seed']}"
    if method == "aioli":
      title += f"\nmax |p - 1/G| = {np.abs(probs - 1 / len(names)).max():.4f}"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("proportion")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  axes.flat[0].legend(fontsize=7)
  ax = axes.flat[len(panels)]
  methods = summary["methods"]
  bottom = np.zeros(len(methods))
  for g, name in enumerate(names):
    share = np.array([s["final_probs"][g] for s in methods.values()])
    ax.barh(np.arange(len(methods)), share, left=bottom, color=colors[g % len(colors)],
            label=name)
    bottom += share
  ax.set_yticks(np.arange(len(methods)), list(methods))
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("final proportion (mean over seeds)")
  ax.set_title("final proportions (DoReMi: avg_probs)", fontsize=9)
  for ax in axes.flat[len(panels) + 1:]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_domain_losses(summary: Mapping, path: str) -> str:
  names, methods = summary["domains"], summary["methods"]
  fig, ax = plt.subplots(figsize=(10, 4))
  width = 0.8 / len(methods)
  for i, (method, s) in enumerate(methods.items()):
    m = [s["test_losses"][d][0] for d in names]
    e = [s["test_losses"][d][1] or 0.0 for d in names]
    ax.bar(np.arange(len(names)) + i * width, m, width, yerr=e, label=method, capsize=2)
  ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
  ax.set_ylabel("test loss (nats/byte)")
  ax.legend(fontsize=7, ncol=4)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_upsample(summary: Mapping, path: str) -> str:
  rows = summary["rows"]
  f = [float(k) for k in rows]
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  for ax, key, title in ((axes[0], "target", summary["domain"]),
                         (axes[1], "rest", "rest: " + ", ".join(summary["rest"]))):
    ax.errorbar(f, [r[key][0] for r in rows.values()],
                yerr=[r[key][1] or 0.0 for r in rows.values()], marker="o", capsize=3)
    ax.set_xlabel("upsampled fraction f of the steps")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test loss (nats/byte)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------- run


def run_mixing(setup: Setup, workdir: str, progress: bool) -> dict[str, list[dict]]:
  c = setup.config
  methods = list(c.methods)
  if "doremi" in methods and "stratified" not in methods:
    raise ValueError("doremi's reference model is the stratified run: put 'stratified' in "
                     "config.methods")
  if "doremi" in methods:  # the reference must exist before the proxy
    methods.remove("stratified")
    methods.insert(0, "stratified")
  table = method_table(setup)
  results = {m: [] for m in c.methods}
  total = sum(steps_of(c, m) for m in methods) * len(c.seeds)
  bar = tqdm(total=total, desc="mixing steps", disable=not progress)
  for method in methods:
    for seed in c.seeds:
      run_dir = os.path.join(workdir, "runs", method, f"seed{seed}")
      path = os.path.join(run_dir, "result.json")
      if os.path.exists(path):
        results[method].append(report.read_json(path))
        bar.update(steps_of(c, method))
        continue
      bar.set_description(f"{method}/seed{seed}")
      start = time.time()
      if method == "doremi":
        ref = report.load_params(os.path.join(workdir, "runs", "stratified", f"seed{seed}",
                                       "params.npz"), setup.init_params(0))
        state, out = run_doremi(setup, seed, bar, ref)
      else:
        state, out = table[method](setup, seed, bar)
      results[method].append(finish_run(setup, run_dir, state, out, method=method, seed=seed,
                                        seconds=time.time() - start))
  bar.close()
  return results


def run_upsample(setup: Setup, workdir: str, progress: bool) -> dict[float, list[dict]]:
  c, u, num = setup.config, setup.config.upsample, len(setup.names)
  if u.steps != c.steps:
    raise ValueError(f"upsample.steps={u.steps} must equal steps={c.steps} (one LR schedule, "
                     "one compiled step)")
  if u.domain not in c.natural:
    raise ValueError(f"upsample.domain={u.domain!r} is not one of the natural domains "
                     f"{tuple(c.natural)}")
  base = np.zeros(num)
  base[setup.natural] = setup.sizes[setup.natural] / setup.sizes[setup.natural].sum()
  g = setup.names.index(u.domain)
  target = base * (1 - u.target_prob) / (1 - base[g])
  target[g] = u.target_prob
  results = {float(f): [] for f in u.fractions}
  bar = tqdm(total=len(results) * len(c.seeds) * u.steps, desc="upsample steps",
             disable=not progress)
  for f in results:
    policy = group.upsample_at_end(base, target, f, u.steps)
    per_step = np.asarray([policy.update(policy.init(), step=t).probs for t in range(u.steps)],
                          np.float64)
    for seed in c.seeds:
      run_dir = os.path.join(workdir, "runs", "upsample", f"f{f:g}", f"seed{seed}")
      path = os.path.join(run_dir, "result.json")
      if os.path.exists(path):
        results[f].append(report.read_json(path))
        bar.update(u.steps)
        continue
      start, state = time.time(), fresh_state(setup, seed)
      # Two phases of constant proportions (the policy's per-step probs).
      switch = int(np.argmax(np.any(per_step != per_step[0], axis=1))) or u.steps
      state = train_on(setup, state, setup.plain_step, seed, range(switch), per_step[0], bar)
      state = train_on(setup, state, setup.plain_step, seed, range(switch, u.steps),
                       per_step[-1], bar)
      out = {"probs": per_step, "final_probs": per_step[-1], "switch_step": switch}
      results[f].append(finish_run(setup, run_dir, state, out, method="upsample", fraction=f,
                                   seed=seed, seconds=time.time() - start))
  bar.close()
  return results


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Runs the parts of ``config.parts``; writes ``table.md``, ``summary.json`` and plots.

  Returns:
    ``{"summary", "table", "plots", "results", "setup"}``; ``results["mixing"][method]`` and
    ``results["upsample"][f]`` are lists of run dicts over the seeds.
  """
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  setup = build(config)
  stats_rows = domain_text.domain_stats(setup.corpus)
  summary = {"corpus": stats_rows, "sizes_for_sampling": setup.sizes.tolist()}
  sections, plots, results = [], [], {}
  if "mixing" in config.parts:
    results["mixing"] = run_mixing(setup, workdir, progress)
    summary["mixing"] = summarize_mixing(results["mixing"], config)
    sections.append(mixing_report(summary["mixing"], config))
    plots.append(plot_proportions(results["mixing"], summary["mixing"], setup.names,
                                  os.path.join(workdir, "proportions.png")))
    plots.append(plot_domain_losses(summary["mixing"], os.path.join(workdir,
                                                                    "domain_losses.png")))
  if "upsample" in config.parts:
    results["upsample"] = run_upsample(setup, workdir, progress)
    summary["upsample"] = summarize_upsample(results["upsample"], config)
    sections.append(upsample_report(summary["upsample"], config))
    plots.append(plot_upsample(summary["upsample"], os.path.join(workdir, "upsample.png")))
  corpus = ["| domain | train bytes | held-out bytes (val + test halves) | sampling size |",
            "|---|---|---|---|"]
  for row, size in zip(stats_rows, setup.sizes, strict=True):
    corpus.append(f"| {row['domain']} | {row['train_bytes']} | {row['validation_bytes']} | "
                  f"{size:.0f} |")
  table = "\n\n".join(["## Corpus", "\n".join(corpus)] + sections) + "\n"
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  summary["seconds"] = time.time() - start  # this invocation (finished runs are not redone)
  summary["train_seconds"] = sum(r["seconds"] for part in results.values()
                                 for runs in part.values() for r in runs)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return {"summary": summary, "table": table, "plots": plots, "results": results,
          "setup": setup}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  out = run(config, flags.FLAGS.workdir)
  print()
  print(f"transformer {dict(config.model_kwargs)}, {config.steps} steps x "
        f"{config.batch_size} x {config.seq_len} bytes, seeds {tuple(config.seeds)}; "
        f"{out['summary']['seconds']:.0f} s now, {out['summary']['train_seconds']:.0f} s "
        "of training in all runs.")
  print(out["table"])
  print("plots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  # Flags are defined only when run as a script, so importing this module defines none.
  config_flags.DEFINE_config_file("config", "configs/domain_mixing.py",
                                  "Path to an ml_collections config file.")
  flags.DEFINE_string("workdir", "workdir/domain_mixing", "Where runs, tables and plots go.")
  app.run(main)
