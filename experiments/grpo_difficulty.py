r"""Reasoning-style RL with verifiable answers: GRPO vs Prompt-GDRO vs Prompt+Rollout-GDRO.

Task: multi-digit addition. A prompt is two numbers of ``config.digits`` (D) digits
(leading zeros allowed), the answer their sum written with D + 1 digits; the reward is
exact match (1 if every digit is right, else 0), so it is verifiable offline. Difficulty is
the number of carries ``c`` in 0 ... D (the true difficulty classes, used only for the
metrics). The TRAINING pool (``config.train_prompts``) draws ``c`` with probability
``∝ config.tail ** c``: heavy-tailed, most prompts carry-free, a few percent with D - 1 or
D carries. VALIDATION and TEST hold ``config.val_per_class`` / ``config.test_per_class``
prompts of every class (disjoint from each other and from the pool), so the hardest class
is measured on enough prompts; "overall" pass@1 weighs the per-class pass@1 by the training
mix of the classes.

Policy: an MLP (`reweight.train.models`) from the one-hot digits of the prompt to D + 1
independent categorical distributions over the answer digits (a one-shot "answer head": the
carries have to be computed inside the network, no chain of thought). A rollout samples
every digit at temperature 1; its sequence log-probability is the sum over digits. Warm
start: ``config.pretrain_steps`` of supervised cross-entropy on the pool's prompts with
``c <= config.pretrain_max_carries`` (by default all of them: the pool is mostly easy, so
after a short warm start the hard classes are at a low but non-zero pass rate; a warm start
on easy prompts only left the hardest class at 0%); the warm-started parameters are shared
by all methods of a seed (paired runs).

RL (``config.steps`` steps of Adam): every step draws ``B = config.prompts_per_step``
prompts from the pool and spends exactly ``B * n`` rollouts (``n =
config.rollouts_per_prompt``), then one GRPO update (`reweight.losses.grpo`: group-relative
advantages over each prompt's rollouts, clipped ratio; one update per batch, so the ratio is
1), the loss averaged over all ``B n`` rollouts. An online pass@k classifier
(`reweight.group.difficulty_groups`, k = ``config.k``: k + 1 groups, group 0 the hardest) is
updated with every rollout's reward; it starts from a census, ``k`` rollouts of every pool
prompt by the warm-started policy (identical for all methods of a seed, not counted in the
RL budget; without it the never-seen prompts sit in the prior's middle group). Methods:

* ``grpo``: prompts uniform over the pool, ``n`` rollouts each.
* ``prompt_gdro``: a group g is drawn with `reweight.group.prompt_gdro`'s ``probs`` (updated
  each step with the batch's per-group failure rate ``1 - reward``) and a prompt uniformly in
  it (``P(prompt) = probs[g] / |g|``, empty groups skipped); ``n`` rollouts each.
* ``prompt_rollout_gdro``: the same prompts, and the ``B n`` rollouts split between the
  batch's prompts by `reweight.group.rollout_allocation` (one allocation over the ``B``
  drawn prompts, mean budget ``n``, each prompt's pass rate the sampler's bias-corrected
  EMA pass rate ``1 - hat m_g`` of its group, ``config.rollout_objective``, between
  ``config.min_rollouts`` and ``config.max_rollouts``). The total is ``B n`` at every step.

Choices on VALIDATION: for every method and seed, the learning rate
(``config.learning_rates``) and, for the GDRO methods, the sampler's step size and EMA
(``config.step_sizes`` x ``config.emas``) maximise the validation pass@1 (greedy) of the
hardest class at the last step (ties: the higher overall validation pass@1, then the first
in grid order); as a control, the choice by overall validation pass@1 (ties: hardest) is
reported too. The TEST prompts are evaluated once per choice, with the chosen run's final
parameters. All runs of a seed that share a sampler EMA (every method; GRPO's with the
first EMA) run side by side (`jax.vmap`, the method a traced switch: one compilation per
EMA for all methods and seeds), with the same random numbers.
pass@1 is reported two ways: greedy (the argmax of every digit) and sampled (the exact
expectation over temperature-1 samples, ``prod_i pi(y_i)``; no Monte Carlo). Then mean ±
sample std (ddof=1) over seeds and the paired per-seed differences of
``config.comparisons`` with 95% t-intervals (`reweight.train.report`).

Outputs in ``workdir``: ``table.md``, ``summary.json``, ``hardest_curve.png`` (validation
pass@1 of the hardest class along training, per method, mean ± std over seeds, at the
chosen settings), ``sampler_weights.png`` (the Prompt-GDRO samplers' group probabilities
over time, mean over seeds). Each run lives in ``runs/<method>/<setting>/seed<k>``
(``result.json``: history and validation metrics; ``params.npz``; ``rollouts.npz``: the last
step's prompts, sampled answers and rewards); the warm start in ``pretrain/seed<k>.npz``;
finished runs are not run again.

  python experiments/grpo_difficulty.py --config=configs/grpo_difficulty.py \
      --workdir=workdir/grpo_difficulty

References:
  Panaganti, Liang, Yu, Mi and Yu, "Group Distributionally Robust Optimization-Driven
  Reinforcement Learning for LLM Reasoning", arXiv:2601.19280, 2026. Shao et al.,
  "DeepSeekMath", 2024 (GRPO).
"""

from __future__ import annotations

import itertools
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

from reweight.group import difficulty_groups, prompt_gdro, rollout_allocation  # noqa: E402
from reweight.losses import grpo  # noqa: E402
from reweight.reparam._core import flatten_with_paths, unflatten_like  # noqa: E402
from reweight.train import report  # noqa: E402
from reweight.train.models import functional, make_model  # noqa: E402

DATA_SALT = 0x67727064
METHODS = ("grpo", "prompt_gdro", "prompt_rollout_gdro")

# ---------------------------------------------------------------------------------- data


def carry_count(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Number of carries of ``a + b``; digits ``[N, D]``, least significant first."""
  carry = np.zeros(len(a), np.int64)
  count = np.zeros(len(a), np.int64)
  for i in range(a.shape[1]):
    carry = (a[:, i] + b[:, i] + carry >= 10).astype(np.int64)
    count += carry
  return count


def sum_digits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """The D + 1 digits of ``a + b``, least significant first."""
  carry = np.zeros(len(a), np.int64)
  out = []
  for i in range(a.shape[1]):
    s = a[:, i] + b[:, i] + carry
    out.append(s % 10)
    carry = s // 10
  out.append(carry)
  return np.stack(out, 1).astype(np.int32)


def class_mix(config) -> np.ndarray:
  """The training pool's probabilities of 0 ... D carries, ``∝ tail**c``."""
  w = float(config.tail) ** np.arange(config.digits + 1)
  return w / w.sum()


def make_split(a, b) -> dict[str, np.ndarray]:
  a, b = np.asarray(a, np.int32), np.asarray(b, np.int32)
  d = a.shape[1]
  x = np.concatenate([np.eye(10, dtype=np.float32)[a].reshape(len(a), d * 10),
                      np.eye(10, dtype=np.float32)[b].reshape(len(b), d * 10)], 1)
  return {"a": a, "b": b, "x": x, "y": sum_digits(a, b), "carries": carry_count(a, b)}


def prepare_data(config, seed: int) -> dict[str, dict[str, np.ndarray]]:
  """``{"train", "val", "test"}`` of disjoint prompts (module docstring).

  With ``rng = np.random.default_rng([DATA_SALT, seed])``: the pool's class counts are
  ``rng.multinomial(train_prompts, class_mix)``; then random digit pairs are drawn in
  batches until every class has its train + val + test prompts (distinct pairs, in order of
  first appearance); within a class the first ones go to train, then val, then test.
  """
  rng = np.random.default_rng([DATA_SALT, seed])
  d = config.digits
  n_train = rng.multinomial(config.train_prompts, class_mix(config))
  need = n_train + config.val_per_class + config.test_per_class
  got: list[list[np.ndarray]] = [[] for _ in range(d + 1)]
  have = np.zeros(d + 1, np.int64)
  seen: set[int] = set()
  while np.any(have < need):
    a = rng.integers(0, 10, (20000, d))
    b = rng.integers(0, 10, (20000, d))
    keys = (a @ 10 ** np.arange(d)) * 10 ** d + b @ 10 ** np.arange(d)
    c = carry_count(a, b)
    for i in range(len(a)):
      if have[c[i]] < need[c[i]] and keys[i] not in seen:
        seen.add(int(keys[i]))
        got[c[i]].append(np.stack([a[i], b[i]]))
        have[c[i]] += 1
  parts = {"train": [], "val": [], "test": []}
  for cls in range(d + 1):
    rows = np.asarray(got[cls])
    cuts = np.cumsum([n_train[cls], config.val_per_class])
    parts["train"].append(rows[:cuts[0]])
    parts["val"].append(rows[cuts[0]:cuts[1]])
    parts["test"].append(rows[cuts[1]:])
  out = {}
  for name, rows in parts.items():
    rows = np.concatenate(rows)
    if name == "train":
      rows = rows[rng.permutation(len(rows))]
    out[name] = make_split(rows[:, 0], rows[:, 1])
  return out


# ---------------------------------------------------------------------------------- model


def make_policy(config, seed: int):
  d = config.digits
  return functional(make_model("mlp", seed=seed, in_features=2 * d * 10,
                               num_classes=(d + 1) * 10, hidden=tuple(config.model_kwargs.hidden)))


def digit_logp(fn, params, x, digits: int):
  """``[N, D + 1, 10]`` log-probabilities of every answer digit."""
  return jax.nn.log_softmax(fn.apply(params, x).reshape(x.shape[0], digits + 1, 10), -1)


def sample_digits(key, logp):
  """One digit from every row of ``logp [..., 10]`` by inverse CDF (``sum_j [u > F_j]``);
  the same law as `jax.random.categorical`, much cheaper to compile."""
  cdf = jnp.cumsum(jnp.exp(logp), -1)
  u = jax.random.uniform(key, logp.shape[:-1] + (1,)) * cdf[..., -1:]
  return jnp.minimum(jnp.sum(u > cdf, -1), logp.shape[-1] - 1).astype(jnp.int32)


_JITTED: dict[Any, Any] = {}  # compiled once per shape: every seed's MLP has one graph


def _cached(key, build):
  if key not in _JITTED:
    _JITTED[key] = build()
  return _JITTED[key]


def policy_logp(fn, digits: int):
  """``jit(params, x -> digit_logp)``, shared by every policy of one architecture."""
  key = ("logp", digits, jax.tree.structure(fn.params),
         tuple(np.shape(v) for v in jax.tree.leaves(fn.params)))
  return _cached(key, lambda: jax.jit(lambda p, x: digit_logp(fn, p, x, digits)))


def pretrain(config, fn, data, seed: int):
  """Supervised cross-entropy on the pool's prompts with at most ``pretrain_max_carries``
  carries (batches drawn uniformly from them with replacement)."""
  train = data["train"]
  easy = np.flatnonzero(train["carries"] <= config.pretrain_max_carries)
  padded = np.zeros(len(train["x"]), np.int32)
  padded[:len(easy)] = easy
  opt = optax.adam(config.pretrain_lr)

  def build():
    def body(carry, key, x, y, index, n):
      params, state = carry
      idx = index[jax.random.randint(key, (config.pretrain_batch,), 0, n)]

      def loss(p):
        lp = digit_logp(fn, p, x[idx], config.digits)
        return -jnp.mean(jnp.take_along_axis(lp, y[idx][..., None], -1))

      upd, state = opt.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, upd), state), None

    @jax.jit
    def loop(params, keys, x, y, index, n):
      return jax.lax.scan(lambda c, k: body(c, k, x, y, index, n),
                          (params, opt.init(params)), keys)[0][0]
    return loop

  key = ("pretrain", config.digits, len(padded), config.pretrain_batch,
         float(config.pretrain_lr), jax.tree.structure(fn.params),
         tuple(np.shape(v) for v in jax.tree.leaves(fn.params)))
  keys = jax.random.split(jax.random.PRNGKey(seed + 1000), config.pretrain_steps)
  return _cached(key, build)(fn.params, keys, jnp.asarray(train["x"]),
                             jnp.asarray(train["y"]), jnp.asarray(padded), len(easy))


def evaluate(fn, params, split, digits: int, mix: np.ndarray) -> dict[str, Any]:
  """Greedy and sampled (exact expectation) pass@1 per carry class, and their mixes."""
  lp = np.asarray(policy_logp(fn, digits)(params, jnp.asarray(split["x"])), np.float64)
  y = split["y"]
  greedy = np.all(np.argmax(lp, -1) == y, -1).astype(np.float64)
  sampled = np.exp(np.take_along_axis(lp, y[..., None], -1)[..., 0].sum(-1))
  cls = split["carries"]
  out: dict[str, Any] = {}
  for name, v in (("greedy", greedy), ("sampled", sampled)):
    per = [float(v[cls == c].mean()) if np.any(cls == c) else float("nan")
           for c in range(digits + 1)]
    out[f"{name}_by_class"] = per
    out[f"{name}_overall"] = float(np.nansum(np.asarray(per) * mix))
    out[f"{name}_hardest"] = per[digits]
  return out


# ------------------------------------------------------------------------------------- RL


def setting_name(lr: float, step_size: float | None, ema: float | None) -> str:
  return f"lr{lr:g}" if step_size is None else f"lr{lr:g}_eta{step_size:g}_ema{ema:g}"


def settings(config, method: str) -> list[dict[str, Any]]:
  """The grid of a method, in the order of the tie-break."""
  if method == "grpo":
    return [{"lr": float(lr), "step_size": None, "ema": None} for lr in config.learning_rates]
  return [{"lr": float(lr), "step_size": float(s), "ema": float(e)}
          for lr, s, e in itertools.product(config.learning_rates, config.step_sizes,
                                            config.emas)]


def make_chunk(config, fn, ema: float | None):
  """``(init, chunk)``: ``chunk(carry, keys, train, lr, eta, mode) -> (carry, logs, last)``
  runs ``keys.shape[1]`` RL steps (`jax.lax.scan`) of S runs at once (`jax.vmap` over the
  leading axis of ``carry``, ``keys``, ``lr``, ``eta`` and ``mode``; ``train`` shared),
  jitted: one compilation for every method (``mode`` = its index in `METHODS`) and seed.
  ``init(params, clf_state, num_runs)`` stacks the starting carry."""
  d, num_p = config.digits, config.train_prompts
  b, n = config.prompts_per_step, config.rollouts_per_prompt
  r_total = b * n
  clf = make_classifier(config)
  g = clf.num_groups
  ema = 0.0 if ema is None else float(ema)
  centers = jnp.arange(g, dtype=jnp.float32) / config.k

  def one(carry, key, train, lr, eta, mode):
    params, opt_state, clf_state, gdro_state = carry
    sampler = prompt_gdro(g, lambda count: eta, ema=ema, exploration=config.exploration)
    opt = optax.adam(lr)
    k_prompt, k_roll = jax.random.split(key)
    groups = clf.assign(clf_state, jnp.arange(num_p))
    # grpo: uniform; GDRO: P(prompt) = probs[g] / |g|; by inverse CDF.
    size = jax.ops.segment_sum(jnp.ones([num_p]), groups, g)
    cdf = jnp.cumsum(jnp.where(mode > 0, gdro_state.probs[groups] / size[groups], 1.0))
    u = jax.random.uniform(k_prompt, (b,))
    slots = jnp.minimum(jnp.searchsorted(cdf, u * cdf[-1], side="right"), num_p - 1)
    slot_group = groups[slots]
    # prompt_rollout_gdro: rollouts by the sampler's bias-corrected EMA pass rates.
    corr = 1.0 - jnp.power(jnp.float32(ema), gdro_state.seen.astype(jnp.float32))
    hard = gdro_state.ema / jnp.where(gdro_state.seen > 0, corr, 1.0)
    pass_rate = jnp.clip(jnp.where(gdro_state.seen > 0, 1.0 - hard, centers), 0.0, 1.0)
    alloc = rollout_allocation(pass_rate[slot_group], n, min_rollouts=config.min_rollouts,
                               max_rollouts=config.max_rollouts,
                               objective=config.rollout_objective).rollouts
    counts = jnp.where(mode == 2, alloc, n)
    owner = jnp.repeat(jnp.arange(b), counts, total_repeat_length=r_total)
    xs = train["x"][slots]
    lp0 = digit_logp(fn, params, xs, d)
    answers = sample_digits(k_roll, lp0[owner])  # [R, D + 1]
    reward = jnp.all(answers == train["y"][slots][owner], -1).astype(jnp.float32)

    def loss_fn(p):
      lp = digit_logp(fn, p, xs, d)[owner]
      seq = jnp.take_along_axis(lp, answers[..., None], -1)[..., 0].sum(-1)
      per = grpo(seq, jax.lax.stop_gradient(seq), reward, owner, num_groups=b,
                 clip_eps=config.clip_eps)
      return jnp.mean(per)

    grads = jax.grad(loss_fn)(params)
    upd, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, upd)
    new_gdro = sampler.update(gdro_state, losses=1.0 - reward, groups=slot_group[owner])
    gdro_state = jax.tree.map(lambda a, o: jnp.where(mode > 0, a, o), new_gdro, gdro_state)
    clf_state = clf.update(clf_state, prompt_ids=slots[owner], rewards=reward)
    cls = train["carries"][slots]
    logs = {"rollouts": jnp.sum(counts),
            "rollouts_by_class": jax.ops.segment_sum(jnp.ones([r_total]), cls[owner], d + 1),
            "prompts_by_class": jax.ops.segment_sum(jnp.ones([b]), cls, d + 1),
            "reward": jnp.mean(reward),
            "probs": gdro_state.probs,
            "group_sizes": jax.ops.segment_sum(jnp.ones([num_p]), groups, g)}
    last = {"prompt": slots[owner], "answers": answers, "reward": reward}
    return (params, opt_state, clf_state, gdro_state), (logs, last)

  def scan(carry, keys, train, lr, eta, mode):
    carry, (logs, last) = jax.lax.scan(lambda c, k: one(c, k, train, lr, eta, mode), carry,
                                       keys)
    return carry, logs, jax.tree.map(lambda v: v[-1], last)

  chunk = jax.jit(jax.vmap(scan, in_axes=(0, 0, None, 0, 0, 0)))

  def init(params, clf_state, num_settings: int):
    sampler = prompt_gdro(g, 0.0, ema=ema, exploration=config.exploration)
    one_carry = (params, optax.adam(1.0).init(params), clf_state, sampler.init())
    return jax.tree.map(lambda v: jnp.stack([jnp.asarray(v)] * num_settings), one_carry)

  return init, chunk


def make_classifier(config):
  return difficulty_groups(config.train_prompts, config.k, ema=config.classifier_ema,
                           prior=config.classifier_prior)


def census(config, fn, params, train, seed: int):
  """The classifier after ``config.k`` rollouts of every pool prompt by ``params`` (the
  warm start): the difficulty groups that RL starts from, the same for every method."""
  clf = make_classifier(config)

  def build():
    @jax.jit
    def sample(params, x, y, key):
      lp = digit_logp(fn, params, x, config.digits)
      answers = sample_digits(key, jnp.broadcast_to(
          lp[:, None], (len(x), config.k, config.digits + 1, 10)))
      reward = jnp.all(answers == y[:, None], -1).astype(jnp.float32)
      return clf.update(clf.init(), prompt_ids=jnp.arange(len(x)), rewards=reward)
    return sample

  key = ("census", config.digits, config.k, len(train["x"]), jax.tree.structure(fn.params),
         tuple(np.shape(v) for v in jax.tree.leaves(fn.params)))
  return _cached(key, build)(params, jnp.asarray(train["x"]), jnp.asarray(train["y"]),
                            jax.random.PRNGKey(seed + 2000))


def train_runs(config, data, fn, params0, clf_state, compiled, runs, seed, *, progress,
               desc):
  """The RL runs ``runs`` (a list of ``(method, setting)`` whose settings share one EMA),
  side by side (vmapped), with the same random numbers.

  Returns a list over ``runs`` of ``(result dict, final params, last step's rollouts)``.
  """
  s = len(runs)
  init, chunk = compiled  # make_chunk(config, fn, ema of the runs)
  carry = init(params0, clf_state, s)
  lr = jnp.asarray([st["lr"] for _, st in runs], jnp.float32)
  eta = jnp.asarray([st["step_size"] or 0.0 for _, st in runs], jnp.float32)
  mode = jnp.asarray([METHODS.index(m) for m, _ in runs], jnp.int32)
  train = {k: jnp.asarray(data["train"][k]) for k in ("x", "y", "carries")}
  mix = class_mix(config)
  d = config.digits
  first = {"step": 0, **evaluate(fn, params0, data["val"], d, mix),
           "probs": np.asarray(carry[3].probs[0]).tolist(), "rollouts": 0,
           "rollouts_by_class": [0.0] * (d + 1), "prompts_by_class": [0.0] * (d + 1)}
  histories = [[dict(first)] for _ in range(s)]
  total = np.zeros(s, np.int64)
  by_class = np.zeros((s, d + 1))
  prompts_by_class = np.zeros((s, d + 1))
  key = jax.random.PRNGKey(seed)
  step = 0
  last = None
  if config.steps % config.eval_every:
    raise ValueError(f"steps={config.steps} must be a multiple of eval_every="
                     f"{config.eval_every}")
  for _ in tqdm(range(config.steps // config.eval_every), desc=desc, leave=False,
                disable=not progress):
    key, sub = jax.random.split(key)
    keys = jnp.stack([jax.random.split(sub, config.eval_every)] * s)  # same noise per setting
    carry, logs, last = chunk(carry, keys, train, lr, eta, mode)
    step += config.eval_every
    logs = jax.tree.map(np.asarray, logs)
    total += logs["rollouts"].sum(1)
    by_class += logs["rollouts_by_class"].sum(1)
    prompts_by_class += logs["prompts_by_class"].sum(1)
    for i in range(s):
      params_i = jax.tree.map(lambda v, i=i: v[i], carry[0])
      histories[i].append({
          "step": step, **evaluate(fn, params_i, data["val"], d, mix),
          "probs": logs["probs"][i, -1].tolist(),
          "group_sizes": logs["group_sizes"][i, -1].tolist(),
          "train_reward": float(logs["reward"][i].mean()),
          "rollouts": int(total[i]), "rollouts_per_step": logs["rollouts"][i].tolist(),
          "rollouts_by_class": by_class[i].tolist(),
          "prompts_by_class": prompts_by_class[i].tolist()})
  out = []
  for i, (method, setting) in enumerate(runs):
    h = histories[i]
    result = {"method": method, "seed": seed, **setting, "history": h,
              "val": {k: v for k, v in h[-1].items() if k.startswith(("greedy", "sampled"))}}
    out.append((result, jax.tree.map(lambda v, i=i: v[i], carry[0]),
                {k: np.asarray(v[i]) for k, v in last.items()}))
  return out


CRITERIA = ("hardest", "overall")  # the first is the primary choice


def select(results: Sequence[Mapping[str, Any]], criterion: str = "hardest") -> int:
  """Index of the validation choice. ``"hardest"``: max hardest-class greedy pass@1, then
  overall greedy pass@1; ``"overall"``: the other way round; then the first in grid order."""
  if criterion not in CRITERIA:
    raise ValueError(f"criterion={criterion!r} is not one of {CRITERIA}")
  order = ("greedy_hardest", "greedy_overall")
  if criterion == "overall":
    order = order[::-1]
  keys = [(r["val"][order[0]], r["val"][order[1]], -i) for i, r in enumerate(results)]
  return max(range(len(results)), key=lambda i: keys[i])


# --------------------------------------------------------------------------------- report

METRICS = (("test_greedy_overall", "pass@1 overall (greedy)"),
           ("test_greedy_hardest", "pass@1 hardest (greedy)"),
           ("test_sampled_overall", "pass@1 overall (sampled)"),
           ("test_sampled_hardest", "pass@1 hardest (sampled)"))
VAL_METRICS = (("val_greedy_overall", "val overall (greedy)"),
               ("val_greedy_hardest", "val hardest (greedy)"))


def summarize(selected: Mapping[str, list[dict]], comparisons) -> dict[str, Any]:
  out: dict[str, Any] = {"methods": {}, "paired": {}}
  for method, rows in selected.items():
    s = {key: report.mean_std([r[key] for r in rows]) for key, _ in METRICS + VAL_METRICS}
    by_class = np.asarray([r["test_greedy_by_class"] for r in rows])
    s["test_greedy_by_class"] = [report.mean_std(by_class[:, c])
                                 for c in range(by_class.shape[1])]
    share = np.asarray([np.asarray(r["rollouts_by_class"]) / r["rollouts"] for r in rows])
    s["rollout_share_by_class"] = share.mean(0).tolist()
    s["rollouts"] = [r["rollouts"] for r in rows]
    s["setting"] = [r["setting"] for r in rows]
    s["n"] = len(rows)
    out["methods"][method] = s
  for a, b in comparisons:
    if a not in selected or b not in selected:
      continue
    assert [r["seed"] for r in selected[a]] == [r["seed"] for r in selected[b]]
    out["paired"][f"{a} − {b}"] = {
        key: report.paired_difference([r[key] for r in selected[a]],
                                      [r[key] for r in selected[b]])
        for key, _ in METRICS}
  return out


def _pm(stat) -> str:
  return report.format_mean_std(stat, 1, 100.0)


def verdict(p, a: str, b: str, what: str) -> str:
  points = {**p, "mean": 100 * p["mean"],
            "ci95": None if p["ci95"] is None else [100 * x for x in p["ci95"]]}
  return report.verdict(points, a, b, f"{what}, in points", higher_is_better=True,
                        digits=1)


def markdown_report(summary: Mapping[str, Any], config,
                    other: Mapping[str, Any] | None = None) -> str:
  """The report of the primary choice (``summary``) and, if given, the control choice."""
  methods = summary["methods"]
  n = next(iter(methods.values()))["n"]
  d = config.digits
  mix = class_mix(config)
  lines = [
      "# GRPO on multi-digit addition with heavy-tailed difficulty", "",
      f"{d}-digit + {d}-digit addition, exact-match reward; difficulty = number of carries "
      f"(0–{d}); training pool of {config.train_prompts} prompts with P(c) ∝ "
      f"{config.tail}^c = {[round(float(v), 3) for v in mix]}; validation "
      f"{config.val_per_class} and test {config.test_per_class} prompts per class. MLP "
      f"{tuple(config.model_kwargs.hidden)} policy over the {d + 1} answer digits, "
      f"warm-started by {config.pretrain_steps} supervised steps on prompts with ≤ "
      f"{config.pretrain_max_carries} carries; {config.steps} GRPO steps, "
      f"{config.prompts_per_step} prompts and "
      f"{config.prompts_per_step * config.rollouts_per_prompt} rollouts per step for every "
      f"method. Learning rate in {tuple(config.learning_rates)}"
      f" (all), prompt_gdro step size in {tuple(config.step_sizes)} and EMA in "
      f"{tuple(config.emas)} (GDRO methods) chosen per method and seed on validation "
      f"hardest-class greedy pass@1 (a control below: chosen on overall); test evaluated once "
      f"per choice. \"Overall\" weighs the classes by "
      f"the training mix; \"hardest\" = {d} carries. Greedy: argmax digits; sampled: exact "
      f"expected pass@1 at temperature 1. In %, mean ± sample std (ddof=1) over n = {n} "
      f"seeds {tuple(config.seeds)}.", "",
      "## Test pass@1", "", *_main_table(methods)]
  lines += ["", "## Test greedy pass@1 by number of carries", "",
            "| method | " + " | ".join(f"c={c}" for c in range(d + 1)) + " |",
            "|---" * (d + 2) + "|"]
  for method, s in methods.items():
    lines.append(f"| {method} | " + " | ".join(_pm(v) for v in s["test_greedy_by_class"])
                 + " |")
  lines += ["", "## Where the rollouts went (share of all RL rollouts by number of carries, "
            "mean over seeds; total per run)", "",
            "| method | " + " | ".join(f"c={c}" for c in range(d + 1)) + " | rollouts |",
            "|---" * (d + 3) + "|"]
  for method, s in methods.items():
    lines.append(f"| {method} | " + " | ".join(f"{100 * v:.1f}"
                                                for v in s["rollout_share_by_class"])
                 + f" | {', '.join(str(r) for r in sorted(set(s['rollouts'])))} |")
  lines += ["", "## Chosen settings (per seed)", ""]
  for method, s in methods.items():
    lines.append(f"- {method}: " + "; ".join(s["setting"]))
  lines += ["", "## Paired differences over seeds (test, points)", ""]
  lines += _verdicts(summary)
  if other is not None:
    lines += ["", "## Control: settings chosen on validation OVERALL greedy pass@1 instead", "",
              *_main_table(other["methods"]), "",
              "Chosen: " + "; ".join(f"{m}: {', '.join(s['setting'])}"
                                     for m, s in other["methods"].items()), "",
              *_verdicts(other)]
  return "\n".join(lines) + "\n"


def _main_table(methods) -> list[str]:
  lines = ["| method | " + " | ".join(label for _, label in METRICS + VAL_METRICS) + " |",
           "|---" * (1 + len(METRICS) + len(VAL_METRICS)) + "|"]
  for method, s in methods.items():
    lines.append(f"| {method} | " + " | ".join(_pm(s[k]) for k, _ in METRICS + VAL_METRICS)
                 + " |")
  return lines


def _verdicts(summary) -> list[str]:
  lines = []
  for name, diffs in summary["paired"].items():
    a, b = name.split(" − ")
    for key, label in METRICS:
      lines.append(f"- {verdict(diffs[key], a, b, label)}")
  return lines


def plot_hardest(curves: Mapping[str, list[list[dict]]], path: str, config) -> str:
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, key, title in ((axes[0], "greedy_hardest", "hardest class (greedy)"),
                         (axes[1], "greedy_overall", "overall (greedy)")):
    for method, runs in curves.items():
      steps = np.asarray([r["step"] for r in runs[0]])
      v = 100 * np.asarray([[r[key] for r in h] for h in runs])
      mean, std = v.mean(0), v.std(0, ddof=1) if len(v) > 1 else np.zeros(v.shape[1])
      (line,) = ax.plot(steps, mean, label=method)
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("RL step")
    ax.set_ylabel("validation pass@1 (%)")
    ax.set_title(f"{title}; mean ± std over {len(runs)} seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_weights(curves: Mapping[str, list[list[dict]]], path: str, config) -> str:
  gdro = [m for m in curves if m != "grpo"]
  fig, axes = plt.subplots(1, len(gdro), figsize=(5 * len(gdro), 3.4), squeeze=False)
  names = [f"group {g} (≈ {g} of {config.k} pass)" for g in range(config.k + 1)]
  for ax, method in zip(axes[0], gdro):
    runs = curves[method]
    steps = np.asarray([r["step"] for r in runs[0]])
    probs = np.mean([[r["probs"] for r in h] for h in runs], 0)
    ax.stackplot(steps, probs.T, labels=names, alpha=0.85,
                 colors=plt.get_cmap("viridis")(np.linspace(0, 0.9, config.k + 1)))
    ax.set_ylim(0, 1)
    ax.set_xlabel("RL step")
    ax.set_ylabel("sampler probability")
    ax.set_title(f"{method}: group probabilities, mean over {len(runs)} seeds", fontsize=9)
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------- main


def run_dir(workdir: str, method: str, setting: Mapping[str, Any], seed: int) -> str:
  return os.path.join(workdir, "runs", method,
                      setting_name(setting["lr"], setting["step_size"], setting["ema"]),
                      f"seed{seed}")


def save_params(path: str, params) -> None:
  tmp = path + ".tmp.npz"
  np.savez(tmp, **{k: np.asarray(v) for k, v in flatten_with_paths(params).items()})
  os.replace(tmp, path)


def load_params(path: str, like):
  with np.load(path) as f:
    return unflatten_like(like, {k: f[k] for k in f.files})


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Every (method, setting, seed): warm start, RL, validation choice, test once, report."""
  os.makedirs(workdir, exist_ok=True)
  methods = [m for m in config.methods]
  mix = class_mix(config)
  selected = {c: {m: [] for m in methods} for c in CRITERIA}
  chosen_curves = {m: [] for m in methods}  # at the primary choice
  total = sum(len(settings(config, m)) for m in methods) * len(config.seeds)
  bar = tqdm(total=total, desc="runs", disable=not progress)
  compiled: dict[Any, Any] = {}
  for seed in config.seeds:
    data = prepare_data(config, seed)
    fn = make_policy(config, seed)
    pre_path = os.path.join(workdir, "pretrain", f"seed{seed}.npz")
    if not os.path.exists(pre_path):
      os.makedirs(os.path.dirname(pre_path), exist_ok=True)
      save_params(pre_path, pretrain(config, fn, data, seed))
    params0 = load_params(pre_path, fn.params)
    grids = {m: settings(config, m) for m in methods}
    paths = {m: [os.path.join(run_dir(workdir, m, st, seed), "result.json") for st in grid]
             for m, grid in grids.items()}
    todo = [(m, i) for m in methods for i in range(len(grids[m]))
            if not os.path.exists(paths[m][i])]
    emas = list(dict.fromkeys(grids[m][i]["ema"] for m, i in todo
                              if grids[m][i]["ema"] is not None)) or [None]
    clf_state = census(config, fn, params0, data["train"], seed) if todo else None
    for ema in emas:  # every run of one EMA side by side (grpo's with the first EMA)
      batch = [(m, i) for m, i in todo if grids[m][i]["ema"] == ema
               or (grids[m][i]["ema"] is None and ema == emas[0])]
      if not batch:
        continue
      if ema not in compiled:  # one compilation for every method and seed
        compiled[ema] = make_chunk(config, fn, ema)
      outs = train_runs(config, data, fn, params0, clf_state, compiled[ema],
                        [(m, grids[m][i]) for m, i in batch], seed, progress=progress,
                        desc=f"ema{ema}/seed{seed}")
      for (m, i), (result, params, rollouts) in zip(batch, outs):
        rdir = os.path.dirname(paths[m][i])
        os.makedirs(rdir, exist_ok=True)
        save_params(os.path.join(rdir, "params.npz"), params)
        np.savez(os.path.join(rdir, "rollouts.npz"), **rollouts)
        report.write_json(paths[m][i], result)
      bar.update(len(batch))
    bar.update(sum(len(g) for g in grids.values()) - len(todo))
    for method in methods:
      grid = grids[method]
      results = [report.read_json(path) for path in paths[method]]
      for crit in CRITERIA:
        chosen_path = os.path.join(workdir, "runs", method, f"seed{seed}_selected_{crit}.json")
        i = select(results, crit)
        if not os.path.exists(chosen_path):  # the test prompts, once, at the chosen setting
          params = load_params(os.path.join(run_dir(workdir, method, grid[i], seed),
                                            "params.npz"), fn.params)
          test = evaluate(fn, params, data["test"], config.digits, mix)
          hist = results[i]["history"]
          report.write_json(chosen_path, {
              "method": method, "seed": seed, "setting": setting_name(**grid[i]), **grid[i],
              **{f"val_{k}": v for k, v in results[i]["val"].items()},
              **{f"test_{k}": v for k, v in test.items()}, "rollouts": hist[-1]["rollouts"],
              "rollouts_by_class": hist[-1]["rollouts_by_class"]})
        selected[crit][method].append(report.read_json(chosen_path))
        if crit == CRITERIA[0]:
          chosen_curves[method].append(results[i]["history"])
  bar.close()
  summary = {c: summarize(selected[c], config.comparisons) for c in CRITERIA}
  table = markdown_report(summary[CRITERIA[0]], config, summary[CRITERIA[1]])
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"summary": summary, "selected": selected}, f, indent=1)
  plots = [plot_hardest(chosen_curves, os.path.join(workdir, "hardest_curve.png"), config)]
  if any(m != "grpo" for m in methods):
    plots.append(plot_weights(chosen_curves, os.path.join(workdir, "sampler_weights.png"),
                              config))
  return {"summary": summary, "table": table, "plots": plots, "selected": selected}


def main(argv):
  del argv
  start = time.time()
  out = run(_CONFIG.value, _WORKDIR.value)
  print(out["table"])
  print("plots: " + ", ".join(out["plots"]))
  print(f"wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":  # flags only here, so that tests can import this module
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/grpo_difficulty.py",
                                            "Path to an ml_collections config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "workdir/grpo_difficulty",
                                 "Where runs, tables and plots go.")
  app.run(main)
