r"""Token-weighted preference optimisation on synthetic byte-level pairs: DPO vs SparsePO.

A preference dataset is synthesised offline from a byte-level LM. A pair is a window of
``prompt_len + response_len + 1`` bytes of one text domain of `reweight.data.domain_corpus`
(inputs ``x = s[:-1]``, targets ``y = s[1:]``; the *response* is the last
``response_len`` targets): the **chosen** response is the real text, the **rejected**
response is the same text with ``marked`` response bytes replaced (``config.corruption``:
``"model"`` samples the replacement from the reference model's next-byte distribution at
that position, the true byte excluded, so the corruption is plausible to the reference;
``"uniform"``: a printable ASCII byte other than the true one). The marked positions are
recorded. TRAIN pairs come from random windows of the domain's train split; VALIDATION and
TEST pairs from windows evenly spaced over the first and the second half of its held-out
bytes.

The reference model is a small byte-level Transformer (`reweight.train.make_model`)
pretrained on the domain's train split (token-mean cross-entropy through
`reweight.weighted_tokens`), one per seed; the policy starts from it. Methods (``[B, T]``
per-token log-probabilities of the response, `reweight.losses` / `reweight.preference`):

* ``dpo``: `reweight.losses.dpo` (token_weights=None: standard DPO);
* ``sparse_po_activation``: `reweight.losses.sparse_po` with masks from the reference
  model's activations (`reweight.preference.activation_token_masks` of the outputs of its
  blocks, fixed), on the reward and the token-level KL terms (``token_kls`` =
  ``KL(ref || pi)`` per token over the byte vocabulary);
* ``sparse_po_learned``: `reweight.losses.sparse_po` with one learned mask
  (`reweight.preference.TokenMaskHead` on the policy's block outputs, trained jointly,
  "common" mask on reward and KL) and the L1 sparsity term ``config.sparsity``. Its mixer
  is initialised with non-negative weights (``|w|``) so that the ReLU masks do not start
  identically zero (a dead head never trains).

Metrics on TEST pairs: **reward accuracy** (the method's own implicit rewards,
`reweight.losses.dpo_rewards` / `sparse_po_rewards`: chosen > rejected, ties count as
errors); the **log-ratio accuracy** ``sum_t m_t (log pi_t - log ref_t)`` chosen > rejected
(DPO's reward up to beta, the same yardstick for every method); and whether the masks
concentrate on the marked tokens: the AUROC of the mask value of marked vs unmarked response
tokens (rejected responses; chosen responses too), and the share of the rejected
responses' mask mass on marked tokens (their share of tokens is ``marked /
response_len``). For every method, the AUROC of ``|log pi_t - log ref_t|`` says where the
policy moved. beta is chosen per method on VALIDATION reward accuracy (mean over seeds; ties
broken by validation log-ratio accuracy, then the grid order).

Runs are stored in ``workdir/runs/pretrain/seed<k>/`` and
``workdir/runs/<method>/beta<b>/seed<k>/`` (``result.json``, ``test_outputs.npz``: the
test rewards, masks and marked positions); a restarted experiment skips finished runs.
``table.md``, ``summary.json`` and ``preference_pairs.png`` are written to the workdir.

  python experiments/preference_pairs.py --config=configs/preference_pairs.py \
      --workdir=workdir/preference_pairs

References:
  Rafailov et al., "Direct Preference Optimization", NeurIPS 2023. Christopoulou et al.,
  "SparsePO: Controlling Preference Alignment of LLMs via Sparse Token Masks", 2024
  (arXiv:2410.05102). Zeng et al., "Token-level Direct Preference Optimization", ICML 2024.
"""

from __future__ import annotations

import functools
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
from scipy import stats  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import reweight  # noqa: E402
from reweight import losses, preference  # noqa: E402
from reweight.data import domain_text, text  # noqa: E402
from reweight.train import report  # noqa: E402
from reweight.train.models import Functional, functional, make_model  # noqa: E402

METHODS = ("dpo", "sparse_po_activation", "sparse_po_learned")
CORRUPTIONS = ("model", "uniform")
PAIR_SALT = 0x70616972
HEAD_SALT = 0x68656164
EVAL_CHUNK = 64

# ---------------------------------------------------------------------------------- model


def hidden_states(fn, params, x) -> tuple[jax.Array, list[jax.Array]]:
  """``(logits, [output of block l])`` of the byte-level `Transformer` (the blocks' residual
  stream, before the final LayerNorm); the logits equal ``fn.apply(params, x)``."""
  model = nnx.merge(fn.graphdef, params, fn.rest)
  h = model.embed(x) + model.pos_embed[:x.shape[1]]
  hs = []
  for block in model.blocks:
    h = block(h, train=False, rngs=None)
    hs.append(h)
  return model.head(model.ln_f(h)), hs


def token_logps(logits, y):
  """``log softmax(logits)[y]`` per token, ``[B, T]``."""
  return -losses.softmax_cross_entropy(logits, y)


# ----------------------------------------------------------------------------------- data


class Pairs(NamedTuple):
  """``N`` preference pairs; ``c`` chosen, ``r`` rejected; ``[N, T]`` int32 / bool."""

  xc: np.ndarray
  yc: np.ndarray
  xr: np.ndarray
  yr: np.ndarray
  marked: np.ndarray  # the corrupted target positions (same in chosen and rejected)


def response_mask(config) -> np.ndarray:
  t = config.prompt_len + config.response_len
  return (np.arange(t) >= config.prompt_len).astype(np.float32)


def make_pairs(config, x: np.ndarray, y: np.ndarray, ref_logits_fn, key_data: list[int]
               ) -> Pairs:
  """Corrupts ``marked`` response targets of every window (rule in the module docstring)."""
  n, t = y.shape
  rng = np.random.default_rng(key_data)
  pos = np.stack([config.prompt_len + rng.choice(config.response_len, config.marked,
                                                 replace=False) for _ in range(n)])
  marked = np.zeros((n, t), bool)
  marked[np.arange(n)[:, None], pos] = True
  true = y[np.arange(n)[:, None], pos]
  if config.corruption == "uniform":
    draw = rng.integers(32, 126, size=pos.shape)  # 94 printable bytes other than the true
    new = np.where(draw >= true, draw + 1, draw)
    new = np.where((true < 32) | (true > 126), rng.integers(32, 127, size=pos.shape), new)
  else:
    logits = np.asarray(ref_logits_fn(x), np.float64)[np.arange(n)[:, None], pos]  # [n,k,V]
    logits[np.arange(n)[:, None], np.arange(pos.shape[1])[None], true] = -np.inf
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    u = rng.random(pos.shape + (1,))
    new = np.minimum((np.cumsum(p, -1) < u).sum(-1), text.VOCAB_SIZE - 1)
  yr = y.copy()
  yr[np.arange(n)[:, None], pos] = new
  xr = x.copy()
  nxt = pos + 1 < t
  rows = np.broadcast_to(np.arange(n)[:, None], pos.shape)
  xr[rows[nxt], pos[nxt] + 1] = new[nxt]
  assert (yr != y).sum() == n * config.marked
  return Pairs(x.astype(np.int32), y.astype(np.int32), xr.astype(np.int32),
               yr.astype(np.int32), marked)


def heldout_pairs_windows(held: np.ndarray, seq_len: int, count: int):
  fit = (len(held) - 1) // seq_len
  if fit < 1:
    raise ValueError(f"{len(held)} held-out bytes hold no window of seq_len={seq_len}")
  starts = np.linspace(0, len(held) - seq_len - 1, min(count, fit)).astype(np.int64)
  w = text.windows(held, starts, seq_len)
  return w["x"], w["label"]


class Setup(NamedTuple):
  config: Any
  corpus: Any
  domain: int
  fn: Any
  head: Any  # (graphdef, rest) of the TokenMaskHead
  init_params: Any
  mask: np.ndarray  # [T] response mask
  hidden_states: Any  # jitted (params, x) -> (logits, block outputs)


def build(config: ml_collections.ConfigDict) -> Setup:
  if config.corruption not in CORRUPTIONS:
    raise ValueError(f"corruption={config.corruption!r} is not one of {CORRUPTIONS}")
  bad = [m for m in config.methods if m not in METHODS]
  if bad or "dpo" not in config.methods:
    raise ValueError(f"methods={tuple(config.methods)} must be drawn from {METHODS} and "
                     "include 'dpo' (the baseline)")
  if not 0 < config.marked <= config.response_len:
    raise ValueError(f"marked={config.marked} must be in [1, response_len="
                     f"{config.response_len}]")
  t = config.prompt_len + config.response_len
  if t > config.model_kwargs.max_len:
    raise ValueError(f"prompt_len + response_len = {t} exceeds max_len="
                     f"{config.model_kwargs.max_len}")
  corpus = domain_text.domain_corpus(config.max_bytes_per_domain,
                                     validation_every=config.validation_every, noise=False,
                                     duplicated=False)
  if config.domain not in corpus.names:
    raise ValueError(f"domain={config.domain!r} is not one of {corpus.names}")
  kwargs = dict(vocab_size=text.VOCAB_SIZE, **dict(config.model_kwargs))
  # One compiled initialiser for every seed; the graph from an abstract model.
  init_params = jax.jit(lambda s: functional(make_model("transformer", seed=s,
                                                        **kwargs)).params)
  graphdef, _, rest = nnx.split(nnx.eval_shape(lambda: make_model("transformer", **kwargs)),
                                nnx.Param, ...)
  fn = Functional(graphdef, init_params(0), nnx.to_pure_dict(rest))
  head = nnx.eval_shape(lambda: preference.TokenMaskHead(
      config.model_kwargs.num_layers, config.model_kwargs.d_model, rngs=nnx.Rngs(0)))
  hg, _, hrest = nnx.split(head, nnx.Param, ...)
  return Setup(config, corpus, corpus.names.index(config.domain), fn,
               (hg, nnx.to_pure_dict(hrest)), init_params, response_mask(config),
               jax.jit(lambda p, x: hidden_states(fn, p, x)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_head(key, num_layers: int, d_model: int):
  head = preference.TokenMaskHead(num_layers, d_model, rngs=nnx.Rngs(key))
  params = nnx.to_pure_dict(nnx.split(head, nnx.Param, ...)[1])
  params["mixer"]["kernel"] = jnp.abs(params["mixer"]["kernel"])
  return params


def init_head(setup: Setup, seed: int):
  """The learned mask head's parameters, mixer weights made non-negative."""
  c = setup.config
  return _init_head(jax.random.key(HEAD_SALT + seed), c.model_kwargs.num_layers,
                    c.model_kwargs.d_model)


def apply_head(setup: Setup, head_params, hs, mask):
  hg, hrest = setup.head
  model = nnx.merge(hg, head_params, hrest)
  return model(hs, mask)


# ------------------------------------------------------------------------------ pretrain


def pretrain(setup: Setup, seed: int, workdir: str, bar=None):
  """The seed's reference model: token-mean cross-entropy on the domain's train split."""
  c, p = setup.config, setup.config.pretrain
  run_dir = os.path.join(workdir, "runs", "pretrain", f"seed{seed}")
  path = os.path.join(run_dir, "result.json")
  if os.path.exists(path):
    if bar is not None:
      bar.update(p.steps)
    return report.load_params(os.path.join(run_dir, "params.npz"), setup.fn.params)
  start = time.time()
  sched = optax.warmup_cosine_decay_schedule(0.0, p.learning_rate, p.warmup_steps,
                                             max(p.steps, p.warmup_steps + 1),
                                             p.learning_rate * p.final_ratio)
  opt = optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=p.weight_decay)
  loss_fn = reweight.weighted_tokens(
      lambda params, b: losses.softmax_cross_entropy(setup.fn.apply(params, b["x"]), b["y"]),
      reweight.uniform())

  wstate = reweight.uniform().init()

  @jax.jit
  def step(params, opt_state, batch):
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, wstate)
    updates, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = setup.init_params(seed)
  opt_state = opt.init(params)
  t = c.prompt_len + c.response_len
  loss = float("nan")  # with 0 steps the reference is the initialisation
  for s in range(p.steps):
    b = domain_text.domain_lm_batch(setup.corpus, np.full(p.batch_size, setup.domain), s,
                                    seq_len=t, seed=seed)
    params, opt_state, loss = step(params, opt_state, {"x": b["x"], "y": b["y"]})
    if bar is not None:
      bar.update()
  report.save_params(os.path.join(run_dir, "params.npz"), params)
  report.write_json(path, {"seed": seed, "final_train_loss": float(loss),
                           "seconds": time.time() - start})
  return params


def datasets(setup: Setup, seed: int, ref_params) -> dict[str, Pairs]:
  """TRAIN (steps x batch random train windows), VALIDATION and TEST pairs of a seed."""
  c = setup.config
  t = c.prompt_len + c.response_len
  n = c.train.steps * c.train.batch_size
  b = domain_text.domain_lm_batch(setup.corpus, np.full(n, setup.domain), 0, seq_len=t,
                                  seed=PAIR_SALT + seed)

  def ref_logits(x):
    return np.concatenate([np.asarray(setup.hidden_states(ref_params, x[i:i + 256])[0])
                           for i in range(0, len(x), 256)])

  held = setup.corpus.validation[setup.domain]
  half = len(held) // 2
  out = {"train": make_pairs(c, b["x"], b["y"], ref_logits, [PAIR_SALT, seed, 0])}
  for k, (name, part, count) in enumerate((("val", held[:half], c.val_pairs),
                                           ("test", held[half:], c.test_pairs))):
    x, y = heldout_pairs_windows(part, t, count)
    out[name] = make_pairs(c, x, y, ref_logits, [PAIR_SALT, seed, k + 1])
  return out


# --------------------------------------------------------------------------------- losses


def forward(setup: Setup, method: str, params, ref_params, batch, beta):
  """Per-pair losses, own rewards (chosen, rejected), per-token log-ratios and masks."""
  m = jnp.broadcast_to(jnp.asarray(setup.mask), batch["yc"].shape)
  b = batch["yc"].shape[0]
  x = jnp.concatenate([batch["xc"], batch["xr"]])
  y = jnp.concatenate([batch["yc"], batch["yr"]])
  logits, hs = hidden_states(setup.fn, params["policy"], x)
  ref_logits, ref_hs = hidden_states(setup.fn, ref_params, x)
  ref_logits = jax.lax.stop_gradient(ref_logits)
  lp, ref_lp = token_logps(logits, y), token_logps(ref_logits, y)
  pc, pr, rc, rr = lp[:b], lp[b:], ref_lp[:b], ref_lp[b:]
  ratio = jnp.concatenate([pc - rc, pr - rr])
  if method == "dpo":
    loss = losses.dpo(pc, pr, rc, rr, beta=beta, chosen_mask=m, rejected_mask=m)
    rewards = losses.dpo_rewards(pc, pr, rc, rr, beta=beta, chosen_mask=m, rejected_mask=m)
    masks = jnp.concatenate([m, m])
  else:
    ref_logp = jax.nn.log_softmax(ref_logits, -1)
    kl = jnp.sum(jnp.exp(ref_logp) * (ref_logp - jax.nn.log_softmax(logits, -1)), -1)
    mm = jnp.concatenate([m, m])
    if method == "sparse_po_activation":
      masks = preference.activation_token_masks([jax.lax.stop_gradient(h) for h in ref_hs],
                                                mm)
      lam = 0.0
    else:
      masks = apply_head(setup, params["head"], hs, mm)
      lam = setup.config.sparsity
    kw = dict(beta=beta, chosen_mask=m, rejected_mask=m, reward_masks=(masks[:b], masks[b:]),
              token_kls=(kl[:b], kl[b:]))
    loss = losses.sparse_po(pc, pr, rc, rr, sparsity_reward=lam, sparsity_kl=lam, **kw)
    rewards = losses.sparse_po_rewards(pc, pr, rc, rr, **kw)
  return loss, rewards, ratio, masks


def make_step(setup: Setup, method: str):
  c = setup.config.train
  sched = optax.warmup_constant_schedule(0.0, c.learning_rate, c.warmup_steps)
  opt = optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.0)

  def step(params, opt_state, batch, ref_params, beta):
    def loss_fn(p):
      loss, rewards, _, _ = forward(setup, method, p, ref_params, batch, beta)
      return jnp.mean(loss), rewards

    (loss, rewards), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def evaluate(params, batch, ref_params, beta):
    _, rewards, ratio, masks = forward(setup, method, params, ref_params, batch, beta)
    return rewards, ratio, masks

  return opt, jax.jit(step), jax.jit(evaluate)


# -------------------------------------------------------------------------------- metrics


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Mann–Whitney AUROC of ``scores`` for ``positive`` vs the rest (ties count one half)."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  n1, n0 = positive.sum(), (~positive).sum()
  ranks = stats.rankdata(scores)
  return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def pair_metrics(out: Mapping, marked: np.ndarray, mask: np.ndarray) -> dict[str, float]:
  """Metrics of one split from `evaluate`'s outputs (numpy)."""
  n = marked.shape[0]
  chosen, rejected = np.asarray(out["rewards_chosen"]), np.asarray(out["rewards_rejected"])
  ratio = np.asarray(out["ratio"])  # [2N, T]
  masks = np.asarray(out["masks"])
  resp = np.broadcast_to(mask > 0, marked.shape)
  lr_c = (ratio[:n] * mask).sum(-1)
  lr_r = (ratio[n:] * mask).sum(-1)
  mr, mc = masks[n:][resp], masks[:n][resp]
  mk = marked[resp]
  return {
      "reward_acc": float(np.mean(chosen > rejected)),
      "logratio_acc": float(np.mean(lr_c > lr_r)),
      "mask_auroc_rejected": auroc(mr, mk),
      "mask_auroc_chosen": auroc(mc, mk),
      "mask_share_marked": float(mr[mk].sum() / max(mr.sum(), 1e-12)),
      "mask_zero_frac": float(np.mean(np.concatenate([mr, mc]) == 0)),
      "ratio_auroc_rejected": auroc(np.abs(ratio[n:][resp]), mk),
  }


def run_eval(evaluate, params, pairs: Pairs, ref_params, beta) -> dict[str, np.ndarray]:
  """`evaluate` over the pairs in chunks of ``EVAL_CHUNK`` (the last one padded by
  repeating its first pair, then cut: one compiled shape)."""
  outs, n = [], len(pairs.xc)
  for i in range(0, n, EVAL_CHUNK):
    idx = np.arange(i, i + EVAL_CHUNK)
    idx = np.where(idx < n, idx, i)
    batch = {k: jnp.asarray(getattr(pairs, k)[idx]) for k in ("xc", "yc", "xr", "yr")}
    (rc, rr), ratio, masks = evaluate(params, batch, ref_params, beta)
    b, keep = EVAL_CHUNK, min(EVAL_CHUNK, n - i)
    outs.append([np.asarray(a)[:keep] for a in (rc, rr, ratio[:b], ratio[b:], masks[:b],
                                                masks[b:])])
  cat = [np.concatenate([o[k] for o in outs]) for k in range(6)]
  return {"rewards_chosen": cat[0], "rewards_rejected": cat[1],
          "ratio": np.concatenate([cat[2], cat[3]]), "masks": np.concatenate([cat[4], cat[5]])}


# ----------------------------------------------------------------------------------- runs


def train_run(setup: Setup, method: str, beta: float, seed: int, data: dict, ref_params,
              compiled, run_dir: str, bar=None) -> dict:
  c = setup.config
  opt, step, evaluate = compiled
  start = time.time()
  params = {"policy": ref_params}
  if method == "sparse_po_learned":
    params["head"] = init_head(setup, seed)
  opt_state = opt.init(params)
  tr, bs = data["train"], c.train.batch_size
  beta_j = jnp.float32(beta)
  for s in range(c.train.steps):
    sl = slice(s * bs, (s + 1) * bs)
    batch = {k: jnp.asarray(getattr(tr, k)[sl]) for k in ("xc", "yc", "xr", "yr")}
    params, opt_state, loss = step(params, opt_state, batch, ref_params, beta_j)
    if bar is not None:
      bar.update()
  val = run_eval(evaluate, params, data["val"], ref_params, beta_j)
  test = run_eval(evaluate, params, data["test"], ref_params, beta_j)
  result = {"method": method, "beta": beta, "seed": seed, "final_train_loss": float(loss),
            "val": pair_metrics(val, data["val"].marked, setup.mask),
            "test": pair_metrics(test, data["test"].marked, setup.mask),
            "seconds": time.time() - start}
  os.makedirs(run_dir, exist_ok=True)
  np.savez(os.path.join(run_dir, "test_outputs.npz"), marked=data["test"].marked,
           response_mask=setup.mask, **test)
  report.write_json(os.path.join(run_dir, "result.json"), result)
  return result


def run_all(setup: Setup, workdir: str, progress: bool) -> dict:
  c = setup.config
  total = len(c.seeds) * (c.pretrain.steps + len(c.methods) * len(c.betas) * c.train.steps)
  bar = tqdm(total=total, desc="steps", disable=not progress)
  runs = {m: {f"{b:g}": [] for b in c.betas} for m in c.methods}
  compiled = {}
  for seed in c.seeds:
    bar.set_description(f"pretrain/seed{seed}")
    ref_params = pretrain(setup, seed, workdir, bar)
    data = None
    for method in c.methods:
      for beta in c.betas:
        run_dir = os.path.join(workdir, "runs", method, f"beta{beta:g}", f"seed{seed}")
        path = os.path.join(run_dir, "result.json")
        if os.path.exists(path):
          runs[method][f"{beta:g}"].append(report.read_json(path))
          bar.update(c.train.steps)
          continue
        bar.set_description(f"{method}/beta{beta:g}/seed{seed}")
        if data is None:
          data = datasets(setup, seed, ref_params)
        if method not in compiled:
          compiled[method] = make_step(setup, method)
        runs[method][f"{beta:g}"].append(train_run(setup, method, beta, seed, data,
                                                   ref_params, compiled[method], run_dir,
                                                   bar))
  bar.close()
  return runs


# ----------------------------------------------------------------------------- statistics

METRICS = ("reward_acc", "logratio_acc", "mask_auroc_rejected", "mask_auroc_chosen",
           "mask_share_marked", "mask_zero_frac", "ratio_auroc_rejected")


def summarize(runs: Mapping, config) -> dict:
  grid, chosen, methods, paired = {}, {}, {}, {}
  for method, by_beta in runs.items():
    grid[method] = {b: {"val_reward_acc": report.mean_std([r["val"]["reward_acc"] for r in rs]),
                        "val_logratio_acc": report.mean_std([r["val"]["logratio_acc"]
                                                             for r in rs])}
                    for b, rs in by_beta.items()}
    order = list(grid[method])
    chosen[method] = max(order, key=lambda b: (grid[method][b]["val_reward_acc"][0],
                                               grid[method][b]["val_logratio_acc"][0],
                                               -order.index(b)))
    rs = sorted(by_beta[chosen[method]], key=lambda r: r["seed"])
    methods[method] = {
        "beta": float(chosen[method]), "n": len(rs),
        "test": {k: report.mean_std([r["test"][k] for r in rs]) for k in METRICS},
        "val_reward_acc": report.mean_std([r["val"]["reward_acc"] for r in rs]),
        "per_seed": {k: [r["test"][k] for r in rs] for k in METRICS}}
  base = methods["dpo"]["per_seed"]
  for method, s in methods.items():
    p = {}
    if method != "dpo":
      p = {k: report.paired_difference(s["per_seed"][k], base[k])
           for k in ("reward_acc", "logratio_acc")}
    p["mask_auroc_vs_chance"] = report.paired_difference(
        s["per_seed"]["mask_auroc_rejected"], [0.5] * s["n"])
    p["ratio_auroc_vs_chance"] = report.paired_difference(
        s["per_seed"]["ratio_auroc_rejected"], [0.5] * s["n"])
    paired[method] = p
  return {"domain": config.domain, "marked_share": config.marked / config.response_len,
          "grid": grid, "chosen": chosen, "methods": methods, "paired": paired}


def _pm(stat, digits: int = 3) -> str:
  return report.format_mean_std(stat, digits)


def _ci(p) -> str:
  return report.format_difference(p, 3)


def table_report(summary: Mapping, config) -> str:
  methods = summary["methods"]
  n = methods["dpo"]["n"]
  lines = [
      "## Token-weighted preference optimisation", "",
      f"Pairs from `{config.domain}`: {config.prompt_len}-byte prompt, {config.response_len}"
      f"-byte response; the rejected response has {config.marked} marked bytes replaced "
      f"({config.corruption} corruption; marked share of response tokens "
      f"{summary['marked_share']:.3f}). {config.train.steps} steps x "
      f"{config.train.batch_size} pairs from the pretrained reference; {config.test_pairs} "
      f"TEST pairs. Mean ± sample std (ddof=1) over n = {n} seeds; beta chosen per method on "
      "VALIDATION reward accuracy. Mask metrics on rejected responses unless stated; for "
      "dpo the mask is all ones (AUROC 0.5 by construction). Paired: per-seed difference "
      "method − dpo, mean and 95% t-interval.", "",
      "| method | beta | reward acc (test) | reward acc (val) | log-ratio acc (test) | "
      "mask AUROC marked | mask AUROC marked (chosen) | mask share on marked | "
      "mask zeros | \\|log-ratio\\| AUROC marked |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for method, s in methods.items():
    t = s["test"]
    lines.append(
        f"| {method} | {s['beta']:g} | {_pm(t['reward_acc'])} | {_pm(s['val_reward_acc'])} | "
        f"{_pm(t['logratio_acc'])} | {_pm(t['mask_auroc_rejected'])} | "
        f"{_pm(t['mask_auroc_chosen'])} | {_pm(t['mask_share_marked'])} | "
        f"{_pm(t['mask_zero_frac'])} | {_pm(t['ratio_auroc_rejected'])} |")
  lines += ["", "### Paired differences vs dpo (test)", "",
            "| method | reward acc − dpo | log-ratio acc − dpo |", "|---|---|---|"]
  for method, p in summary["paired"].items():
    if method != "dpo":
      lines.append(f"| {method} | {_ci(p['reward_acc'])} | {_ci(p['logratio_acc'])} |")
  lines += ["", "### Validation grid (reward accuracy, mean ± std over seeds)", "",
            "| method | " + " | ".join(f"beta = {b:g}" for b in config.betas) + " |",
            "|---" * (len(config.betas) + 1) + "|"]
  for method, g in summary["grid"].items():
    cells = [_pm(g[f"{b:g}"]["val_reward_acc"])
             + (" (chosen)" if summary["chosen"][method] == f"{b:g}" else "")
             for b in config.betas]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  lines += ["", "### Verdicts", ""]
  for method, p in summary["paired"].items():
    if method != "dpo":
      for key, what in (("reward_acc", "test reward accuracy (own rewards)"),
                        ("logratio_acc", "test log-ratio accuracy")):
        lines.append("* " + report.verdict(p[key], method, "dpo", what, higher_is_better=True,
                                           digits=3) + ".")
      lines.append("* " + report.verdict(p["mask_auroc_vs_chance"], f"{method}'s mask",
                                         "chance (0.5)", "AUROC for marked tokens",
                                         higher_is_better=True, digits=3) + ".")
    lines.append("* " + report.verdict(p["ratio_auroc_vs_chance"], f"{method}'s |log-ratio|",
                                       "chance (0.5)", "AUROC for marked tokens",
                                       higher_is_better=True, digits=3) + ".")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------- plot


def plot(summary: Mapping, workdir: str, config, path: str, examples: int = 3) -> str:
  """Left: mask values along the response of a few TEST rejected responses (seed of the
  first run, chosen beta), marked positions shaded. Right: test reward accuracy, mask AUROC
  and |log-ratio| AUROC per method (per-seed points, mean bar; dashed: chance)."""
  sparse = [m for m in summary["methods"] if m != "dpo"]
  fig = plt.figure(figsize=(11, 1.9 * max(examples, 2) + 0.5))
  gs = fig.add_gridspec(examples, 2, width_ratios=[2.2, 1])
  p, r = config.prompt_len, config.response_len
  outs = {}
  for m in sparse:
    s = summary["methods"][m]
    outs[m] = np.load(os.path.join(workdir, "runs", m, f"beta{s['beta']:g}",
                                   f"seed{config.seeds[0]}", "test_outputs.npz"))
  for i in range(examples):
    ax = fig.add_subplot(gs[i, 0])
    if outs:
      any_out = next(iter(outs.values()))
      n = any_out["marked"].shape[0]
      marked = any_out["marked"][i, p:]
      for j in np.flatnonzero(marked):
        ax.axvspan(j - 0.5, j + 0.5, color="red", alpha=0.2)
      for k, (m, o) in enumerate(outs.items()):
        ax.plot(np.arange(r), o["masks"][n + i, p:], marker="o", ms=3, color=f"C{k + 1}",
                label=m)
    ax.set_ylabel(f"mask, pair {i}", fontsize=8)
    ax.set_xlim(-0.5, r - 0.5)
    ax.grid(alpha=0.3)
    if i == 0:
      ax.set_title("rejected-response masks (red: marked bytes), seed "
                   f"{config.seeds[0]}", fontsize=9)
      ax.legend(fontsize=7)
    if i == examples - 1:
      ax.set_xlabel("response position")
  names = list(summary["methods"])
  right = gs[:, 1].subgridspec(3, 1, hspace=0.7)
  for row, (key, title) in enumerate((("reward_acc", "test reward accuracy"),
                                      ("mask_auroc_rejected", "mask AUROC (marked)"),
                                      ("ratio_auroc_rejected", "|log-ratio| AUROC (marked)"))):
    ax = fig.add_subplot(right[row])
    for k, m in enumerate(names):
      v = summary["methods"][m]["per_seed"][key]
      ax.bar(k, np.mean(v), color=f"C{k}", alpha=0.5)
      ax.scatter(np.full(len(v), k), v, color="k", s=12, zorder=3)
    ax.set_xticks(range(len(names)), [n.replace("sparse_po_", "spo_") for n in names],
                  fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1.05)
    if "auroc" in key:
      ax.axhline(0.5, color="gray", lw=1, ls="--")
    ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


# ------------------------------------------------------------------------------------ run


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Pretrains the references, trains every method and beta; writes table, summary, plot.

  Returns:
    ``{"summary", "table", "plots", "runs", "setup"}``.
  """
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  setup = build(config)
  runs = run_all(setup, workdir, progress)
  summary = summarize(runs, config)
  table = table_report(summary, config) + "\n"
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  plots = [plot(summary, workdir, config, os.path.join(workdir, "preference_pairs.png"))]
  summary["seconds"] = time.time() - start
  summary["train_seconds"] = sum(r["seconds"] for g in runs.values() for rs in g.values()
                                 for r in rs)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return {"summary": summary, "table": table, "plots": plots, "runs": runs, "setup": setup}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  out = run(config, flags.FLAGS.workdir)
  print()
  print(f"transformer {dict(config.model_kwargs)}; {out['summary']['seconds']:.0f} s now, "
        f"{out['summary']['train_seconds']:.0f} s of preference training in all runs.")
  print(out["table"])
  print("plots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", "configs/preference_pairs.py",
                                  "Path to an ml_collections config file.")
  flags.DEFINE_string("workdir", "workdir/preference_pairs", "Where runs, tables and plots go.")
  app.run(main)
