r"""Noisy pairs in contrastive learning: does gating or decoupling InfoNCE help retrieval?

Pairs (digits, ``config.dataset``): view A is the 8x8 image ``x``; view B is a second
rendering of it, ``render(x)``: an integer shift of up to ``config.max_shift`` pixels in each
direction (zero fill), a Gaussian blur (``config.blur_sigma``) and ``N(0, config.noise^2)``
pixel noise, drawn per example. Two encoders ``f_A``, ``f_B`` (MLPs, L2-normalised outputs)
are trained with the symmetric InfoNCE loss (`reweight.losses.info_nce`) on
``S_ij = <f_A(a_i), f_B(b_j)>``.

* ``config.val_fraction`` of TRAIN is carved out first as clean VALIDATION pairs; then
  ``round(config.mismatch_fraction * n)`` of the remaining training pairs are MISMATCHED:
  with ``M`` those indices in random order, ``b_{M[k]}`` is replaced by the view B of
  ``M[(k + 1) mod |M|]`` (a derangement: every mismatched pair gets another example's B).
  The TEST pairs (the digits test split) are clean.
* The gate's second view (the analogue of ALIP's synthetic caption, available offline):
  ``c_i = render'(a_i)``, another independent rendering of view A's OWN image, so it is
  right even when the pair is mismatched. The gate score of pair i is the cosine similarity
  ``<f_B(b_i), f_B(c_i)>`` (the current encoder B, no gradient), as raw text vs synthetic
  caption in the text encoder.

Methods (``config.methods``): InfoNCE; decoupled InfoNCE (the positive out of the
denominators); gated InfoNCE (`reweight.sample.consistency_gate` weights ``w_i`` as the
per-pair weights: ``sum_i w_i l_i / B``); decoupled + gated; and, as a reference that no
real method can use, the ORACLE weights (0 on the mismatched pairs, mean one). For every
method and seed, the temperature (``config.temperatures``), the gate's ``gamma``
(``config.gate_gammas``, gated methods) and the early-stopping step (every
``config.eval_every`` steps) are chosen together on the VALIDATION retrieval accuracy (mean
of top-1 A->B and B->A over the validation pairs; ties: the earlier setting of the grid,
then the earlier step). Every grid point of every method of a seed trains in one vmapped
job (one compilation; a method is a row of hyperparameters: temperature, gamma, decoupled
flag, weighting kind) from the same initial encoders and the same batch order. The test
split is evaluated once, at the chosen setting: top-1 A->B (each test a_i retrieves among
all test b_j) and B->A.

"Where the weight went": at every step the mean weight of the mismatched and of the correct
pairs of the batch (and the share of the batch's total weight on mismatched pairs), averaged
over each ``eval_every`` window.

Outputs in ``workdir``: ``table.md`` (also printed), ``summary.json``, ``retrieval.png``
(test retrieval per method, per-seed points), ``gate_weights.png`` (weight of mismatched vs
correct pairs along training, gated methods at the chosen setting). Each (method, seed) is
``runs/<method>/seed<k>.json`` (every grid point's validation and weight curves, the choice,
the test metrics) with ``seed<k>_params.npz`` (both encoders at the chosen setting and step);
a seed whose files all exist is not run again.

  python experiments/noisy_pairs.py --config=configs/noisy_pairs.py \
      --workdir=workdir/noisy_pairs

References:
  Radford et al., "Learning Transferable Visual Models From Natural Language Supervision"
  (CLIP), ICML 2021. Yeh et al., "Decoupled Contrastive Learning", ECCV 2022. Yang et al.,
  "ALIP: Adaptive Language-Image Pre-training with Synthetic Caption", ICCV 2023.
"""

from __future__ import annotations

import functools
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
from scipy import ndimage  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import reweight  # noqa: E402
from reweight import contrastive  # noqa: E402
from reweight.base import Weighting, normalize, valid_mask  # noqa: E402
from reweight.data import datasets, pipeline  # noqa: E402
from reweight.train import report  # noqa: E402
from reweight.train.models import functional, make_model  # noqa: E402

RENDER_SALT = 0x72656E64  # "rend"
SPLIT_SALT = 0x73706C74  # "splt"
GATE_KEYS = ("view_b_embeddings", "view_c_embeddings")

Array = jax.Array

# ---------------------------------------------------------------------------------- data


def render(x: np.ndarray, rng: np.random.Generator, *, max_shift: int, blur_sigma: float,
           noise: float) -> np.ndarray:
  """A second rendering of 8x8 images ``x`` (``[n, 64]``), float32 ``[n, 64]``.

  For each image in order: ``(dy, dx) = rng.integers(-max_shift, max_shift + 1, 2)``, the
  image shifted by ``(dy, dx)`` with zero fill, then `scipy.ndimage.gaussian_filter` with
  ``blur_sigma`` (mode "reflect"); then ``noise * rng.standard_normal((n, 64))`` is added.
  """
  img = np.asarray(x, np.float64).reshape(-1, 8, 8)
  out = np.empty_like(img)
  for i, im in enumerate(img):
    dy, dx = rng.integers(-max_shift, max_shift + 1, 2)
    out[i] = ndimage.gaussian_filter(ndimage.shift(im, (dy, dx), order=0, cval=0.0),
                                     blur_sigma)
  out = out.reshape(len(img), 64) + noise * rng.standard_normal((len(img), 64))
  return out.astype(np.float32)


def mismatch(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
  """``source`` ``[n]``: pair i takes the view B of example ``source[i]``.

  ``M = rng.permutation(n)[:round(fraction * n)]``; ``source[M[k]] = M[(k + 1) mod |M|]``
  and ``source[i] = i`` elsewhere, so exactly ``|M|`` pairs are mismatched (|M| >= 2).
  """
  m = int(round(fraction * n))
  source = np.arange(n)
  if m >= 2:
    members = rng.permutation(n)[:m]
    source[members] = np.roll(members, -1)
  return source


def prepare_data(config: ml_collections.ConfigDict, seed: int) -> dict[str, dict]:
  """``{"train", "val", "test"}`` pairs: ``a``, ``b`` (and ``c``, ``mismatched``, ``source``
  for train).

  TRAIN: with ``rng = default_rng([SPLIT_SALT, seed])``, ``rng.permutation(n)``; its first
  ``round(val_fraction * n)`` (sorted) are VALIDATION, the rest (sorted) train. Renderings
  with ``rng = default_rng([RENDER_SALT, seed])``: view B of the train split, then its view
  C, then view B of validation, then of test. Then `mismatch` with the split rng.
  """
  kw = {"max_shift": config.max_shift, "blur_sigma": config.blur_sigma,
        "noise": config.noise}
  full = datasets.load(config.dataset, "train")
  test = datasets.load(config.dataset, "test")
  split_rng = np.random.default_rng([SPLIT_SALT, seed])
  n = len(full["label"])
  perm = split_rng.permutation(n)
  n_val = int(round(config.val_fraction * n))
  val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  train, val = pipeline.take(full, train_idx), pipeline.take(full, val_idx)
  rng = np.random.default_rng([RENDER_SALT, seed])
  b_train = render(train["x"], rng, **kw)
  c_train = render(train["x"], rng, **kw)
  b_val = render(val["x"], rng, **kw)
  b_test = render(test["x"], rng, **kw)
  source = mismatch(len(train_idx), config.mismatch_fraction, split_rng)
  return {
      "train": {"a": train["x"], "b": b_train[source], "c": c_train,
                "mismatched": source != np.arange(len(source)), "source": source,
                "label": train["label"]},
      "val": {"a": val["x"], "b": b_val, "label": val["label"]},
      "test": {"a": test["x"], "b": b_test, "label": test["label"]},
  }


# ------------------------------------------------------------------------------- methods

WEIGHTINGS = ("uniform", "consistency_gate", "oracle")


def oracle_weights(key: str = "mismatched") -> Weighting:
  """The reference weighting: 0 on the pairs flagged by the extra ``key``, mean one."""

  def init(rng=None):
    del rng
    return reweight.base.EmptyState()

  def update(losses, state, *, mask=None, **extras):
    valid = valid_mask(losses, mask)
    return normalize(1.0 - jnp.asarray(extras[key], jnp.float32), valid), state

  return Weighting(init, update)


def pair_weighting(kind, gamma, momentum: float) -> Weighting:
  """The weighting ``WEIGHTINGS[kind]`` with a traced ``kind``, so that every method of the
  grid shares one compiled step: `reweight.uniform`, `reweight.sample.consistency_gate`
  (``gamma``, ``momentum``, scores ``cos(f_B(b), f_B(c))``) or `oracle_weights`. The gate's
  state is carried (and updated) whatever ``kind`` is; only its weights are selected."""
  uniform = reweight.uniform()
  gate = reweight.sample.consistency_gate(gamma=gamma, momentum=momentum,
                                          embedding_keys=GATE_KEYS)
  oracle = oracle_weights()

  def init(key=None):
    return gate.init(key)

  def update(losses, state, *, mask=None, **extras):
    w_uniform, _ = uniform.update(losses, uniform.init(), mask=mask, **extras)
    w_gate, state = gate.update(losses, state, mask=mask, **extras)
    w_oracle, _ = oracle.update(losses, oracle.init(), mask=mask, **extras)
    return jnp.select([kind == 1, kind == 2], [w_gate, w_oracle], w_uniform), state

  return Weighting(init, update)


def grid(config) -> list[dict[str, Any]]:
  """Every (method, temperature, gamma) of a seed, methods in report order (gamma None
  without a gate)."""
  out = []
  for method, spec in ordered_methods(config).items():
    if spec["weighting"] not in WEIGHTINGS:
      raise ValueError(f"methods.{method}.weighting={spec['weighting']!r} is not one of "
                       f"{list(WEIGHTINGS)}")
    gated = spec["weighting"] == "consistency_gate"
    for t in config.temperatures:
      for g in (config.gate_gammas if gated else (None,)):
        out.append({"method": method, "temperature": float(t),
                    "gamma": None if g is None else float(g),
                    "decoupled": bool(spec["decoupled"]),
                    "kind": WEIGHTINGS.index(spec["weighting"])})
  return out


def _unit(z):
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def retrieval(za, zb) -> tuple[Array, Array]:
  """Top-1 accuracy A->B and B->A of unit embeddings (pair i is the positive of i)."""
  s = za @ zb.T
  idx = jnp.arange(s.shape[0])
  return (jnp.mean(jnp.argmax(s, axis=1) == idx), jnp.mean(jnp.argmax(s, axis=0) == idx))


def build_job(config, fa, fb):
  """``(init, window, evaluate)`` vmapped over the grid points (rows of ``hp``: temperature,
  gamma, decoupled, weighting kind).

  ``window(state, best, hp, data, idx, val_a, val_b)`` runs ``idx.shape[0]`` steps
  (``lax.scan``), then evaluates on the validation pairs and keeps the parameters in
  ``best = (best validation retrieval, params there)`` when they beat it; it returns the new
  ``state``, ``best``, the window's mean weight of mismatched / correct pairs and the
  mismatched share of the weight ``[3]``, and the validation top-1 accuracies ``[2]``.
  ``evaluate(params, a, b)`` gives the two top-1 accuracies of every grid point.
  """
  optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)

  def embed(params, a, b):
    return _unit(fa.apply(params["a"], a)), _unit(fb.apply(params["b"], b))

  def weighting_for(hp):
    return pair_weighting(hp[3], hp[1], config.gate_momentum)

  def init(params):
    wstate = weighting_for(jnp.ones(4)).init(jax.random.PRNGKey(0))
    return params, optimizer.init(params), wstate

  def per_pair(params, batch, *, hp):
    za, zb = embed(params, batch["a"], batch["b"])
    s = za @ zb.T
    losses = jnp.where(hp[2] > 0.5,
                       contrastive.info_nce(s, temperature=hp[0], decoupled=True),
                       contrastive.info_nce(s, temperature=hp[0]))
    # the gate's scores: view B against view C of the pair, both through encoder B
    return losses, {"mismatched": batch["mismatched"], GATE_KEYS[0]: zb,
                    GATE_KEYS[1]: _unit(fb.apply(params["b"], batch["c"]))}

  def one_step(hp, data, state, idx):
    params, opt_state, wstate = state
    batch = {k: v[idx] for k, v in data.items()}
    loss_fn = reweight.weighted(functools.partial(per_pair, hp=hp), weighting_for(hp))
    (_, (wstate, info)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch, wstate)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    w, mis = info["weights"], batch["mismatched"].astype(jnp.float32)
    stats = jnp.stack([jnp.sum(w * mis) / jnp.maximum(jnp.sum(mis), 1.0),
                       jnp.sum(w * (1 - mis)) / jnp.maximum(jnp.sum(1 - mis), 1.0),
                       jnp.sum(w * mis) / jnp.sum(w)])
    return (params, opt_state, wstate), stats

  def window_one(state, best, hp, data, idx, val_a, val_b):
    state, stats = jax.lax.scan(functools.partial(one_step, hp, data), state, idx)
    acc = jnp.stack(retrieval(*embed(state[0], val_a, val_b)))
    better = jnp.mean(acc) > best[0]  # strict: the first maximum is kept
    best = (jnp.where(better, jnp.mean(acc), best[0]),
            jax.tree.map(lambda new, old: jnp.where(better, new, old), state[0], best[1]))
    return state, best, jnp.mean(stats, axis=0), acc

  window = jax.jit(jax.vmap(window_one, in_axes=(0, 0, 0, None, None, None, None)))
  evaluate = jax.jit(jax.vmap(lambda p, a, b: jnp.stack(retrieval(*embed(p, a, b))),
                              in_axes=(0, None, None)))
  return init, window, evaluate


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """``[steps, batch_size]``: epochs of ``default_rng(seed).permutation(n)``, the
  incomplete tail of each epoch dropped."""
  rng = np.random.default_rng(seed)
  per_epoch = n // batch_size
  epochs = -(-steps // per_epoch)
  idx = np.concatenate([rng.permutation(n)[:per_epoch * batch_size] for _ in range(epochs)])
  return idx.reshape(-1, batch_size)[:steps]


def select(val_curves: np.ndarray) -> tuple[int, int]:
  """``(grid index, window index)`` of the first maximum of ``val_curves`` ``[G, T]``
  (grid order first, then steps)."""
  flat = int(np.argmax(val_curves.reshape(-1)))
  return divmod(flat, val_curves.shape[1])


def train_seed(config, data, seed: int, *, progress: bool):
  """Trains every grid point of every method for one seed (one vmapped job: the same
  initial encoders and batch order for all); returns ``{method: (record, chosen params)}``."""
  fa = functional(make_model("mlp", seed=2 * seed, num_classes=config.embed_dim,
                             **dict(config.model_kwargs)))
  fb = functional(make_model("mlp", seed=2 * seed + 1, num_classes=config.embed_dim,
                             **dict(config.model_kwargs)))
  settings = grid(config)
  g = len(settings)
  init, window, evaluate = build_job(config, fa, fb)
  state = jax.jit(lambda p: jax.tree.map(lambda x: jnp.broadcast_to(x, (g,) + jnp.shape(x)),
                                         init(p)))({"a": fa.params, "b": fb.params})
  best = (jnp.full((g,), -jnp.inf, jnp.float32), state[0])
  hp = jnp.asarray([[s["temperature"], 1.0 if s["gamma"] is None else s["gamma"],
                     float(s["decoupled"]), float(s["kind"])] for s in settings], jnp.float32)
  train = {k: jnp.asarray(data["train"][k]) for k in ("a", "b", "c", "mismatched")}
  idx = batch_indices(len(data["train"]["a"]), config.batch_size, config.steps, seed)
  val_a, val_b = jnp.asarray(data["val"]["a"]), jnp.asarray(data["val"]["b"])
  windows = config.steps // config.eval_every
  val_acc, weight_stats = [], []
  for t in tqdm(range(windows), desc=f"seed{seed} ({g} runs)", disable=not progress,
                leave=False):
    state, best, stats, acc = window(
        state, best, hp, train,
        jnp.asarray(idx[t * config.eval_every:(t + 1) * config.eval_every]), val_a, val_b)
    val_acc.append(np.asarray(acc))  # [G, 2]
    weight_stats.append(np.asarray(stats))  # [G, 3]
  val_acc = np.stack(val_acc, axis=1)  # [G, T, 2]
  weight_stats = np.stack(weight_stats, axis=1)  # [G, T, 3]
  steps = [(t + 1) * config.eval_every for t in range(windows)]
  best_params = jax.device_get(best[1])
  chosen = {}  # method -> (its grid rows, index among them, index in the grid, window)
  for method in ordered_methods(config):
    rows = [i for i, s in enumerate(settings) if s["method"] == method]
    k, ti = select(val_acc[rows].mean(-1))
    chosen[method] = (rows, k, rows[k], ti)
  # the test split, once: the chosen parameters of every method in one call
  picked = [gi for _, _, gi, _ in chosen.values()]
  test = np.asarray(evaluate(jax.tree.map(lambda x: x[picked], best_params),
                             jnp.asarray(data["test"]["a"]), jnp.asarray(data["test"]["b"])))
  out = {}
  for j, (method, (rows, k, gi, ti)) in enumerate(chosen.items()):
    record = {
        "method": method, "seed": seed, "steps": steps,
        "grid": [[settings[i]["temperature"], settings[i]["gamma"]] for i in rows],
        "val_a2b": val_acc[rows, :, 0].tolist(), "val_b2a": val_acc[rows, :, 1].tolist(),
        "weight_mismatched": weight_stats[rows, :, 0].tolist(),
        "weight_correct": weight_stats[rows, :, 1].tolist(),
        "weight_share_mismatched": weight_stats[rows, :, 2].tolist(),
        "chosen": k, "temperature": settings[gi]["temperature"],
        "gamma": settings[gi]["gamma"], "step": steps[ti],
        "val_retrieval": float(val_acc[gi, ti].mean()),
        "test_a2b": float(test[j, 0]), "test_b2a": float(test[j, 1]),
        "test_retrieval": float(test[j].mean()),
        "mismatched_fraction": float(np.mean(data["train"]["mismatched"])),
        "n_train": len(data["train"]["a"]), "n_test": len(data["test"]["a"]),
    }
    out[method] = (record, jax.tree.map(lambda x, gi=gi: x[gi], best_params))
  return out


def ordered_methods(config) -> dict[str, Any]:
  """``config.methods`` in report order: the baselines of ``config.comparisons`` first, then
  the other compared methods in their order, then the rest (a ConfigDict sorts its keys)."""
  order = [b for _, b in config.comparisons] + [a for a, _ in config.comparisons]
  order += sorted(config.methods)
  return {m: config.methods[m] for m in dict.fromkeys(order) if m in config.methods}


# -------------------------------------------------------------------------------- report

METRICS = (("test_retrieval", "test top-1 (mean)"), ("test_a2b", "test A→B"),
           ("test_b2a", "test B→A"), ("val_retrieval", "val top-1 (mean, chosen)"))


def late_weights(r: Mapping[str, Any], frac: float = 0.25) -> tuple[float, float, float]:
  """Mean weight of mismatched / correct pairs and the mismatched share of the weight over
  the last ``frac`` of training, at the chosen setting."""
  k = r["chosen"]
  t0 = int(len(r["steps"]) * (1 - frac))
  return tuple(float(np.mean(r[key][k][t0:])) for key in
               ("weight_mismatched", "weight_correct", "weight_share_mismatched"))


def summarize(selected: Mapping[str, list[dict]], comparisons) -> dict[str, Any]:
  out: dict[str, Any] = {"methods": {}, "paired": {}}
  for method, rows in selected.items():
    s = {key: report.mean_std([r[key] for r in rows]) for key, _ in METRICS}
    late = np.array([late_weights(r) for r in rows])
    s["late_weight_mismatched"] = report.mean_std(late[:, 0])
    s["late_weight_correct"] = report.mean_std(late[:, 1])
    s["late_weight_share_mismatched"] = report.mean_std(late[:, 2])
    s["temperature"] = [r["temperature"] for r in rows]
    s["gamma"] = [r["gamma"] for r in rows]
    s["step"] = [r["step"] for r in rows]
    s["n"] = len(rows)
    out["methods"][method] = s
  for a, b in comparisons:
    assert [r["seed"] for r in selected[a]] == [r["seed"] for r in selected[b]]
    out["paired"][f"{a} − {b}"] = {
        key: report.paired_difference([r[key] for r in selected[a]],
                                      [r[key] for r in selected[b]])
        for key, _ in METRICS[:3]}
  return out


def _pm(stat, scale: float = 100.0, digits: int = 1) -> str:
  return report.format_mean_std(stat, digits, scale)


def verdict(p: Mapping[str, Any], a: str, b: str) -> str:
  points = {**p, "mean": 100 * p["mean"],
            "ci95": None if p["ci95"] is None else [100 * x for x in p["ci95"]]}
  return report.verdict(points, a, b, "test top-1 retrieval (mean of both directions, "
                        "points)", higher_is_better=True, digits=1)


def markdown_report(summary: Mapping[str, Any], config, n_train: int, n_test: int) -> str:
  methods = summary["methods"]
  n = next(iter(methods.values()))["n"]
  lines = [
      "# Noisy pairs: InfoNCE vs decoupled vs consistency-gated (digits, two renderings)",
      "",
      f"View A = digits image, view B = a second rendering (shift ≤ {config.max_shift} px, "
      f"blur σ = {config.blur_sigma}, noise σ = {config.noise}); "
      f"{100 * config.mismatch_fraction:g}% of the {n_train} training pairs mismatched "
      f"(view B of another example); validation ({100 * config.val_fraction:g}% of TRAIN) "
      f"and test ({n_test} pairs) clean. Gate score: cos(f_B(b_i), f_B(c_i)), c_i another "
      f"rendering of a_i. Encoders MLP 64-{'-'.join(map(str, config.model_kwargs.hidden))}-"
      f"{config.embed_dim}, AdamW {config.learning_rate:g} (weight decay "
      f"{config.weight_decay:g}), batch {config.batch_size}, "
      f"{config.steps} steps. Temperature in {tuple(config.temperatures)}, gate γ in "
      f"{tuple(config.gate_gammas)} (momentum {config.gate_momentum}) and the step (every "
      f"{config.eval_every}) chosen per method and seed on validation retrieval; test "
      f"evaluated once. Top-1 retrieval among all test pairs, %, mean ± sample std "
      f"(ddof=1) over n = {n} seeds {tuple(config.seeds)}.", "",
      "## Test retrieval and where the weight went", "",
      "Weights: mean weight of a mismatched / a correct training pair in its batch, and the "
      "share of the batch's total weight on mismatched pairs (uniform: "
      f"{100 * config.mismatch_fraction:g}%), over the last quarter of training at the "
      "chosen setting.", "",
      "| method | " + " | ".join(t for _, t in METRICS)
      + " | weight mismatched | weight correct | weight share mismatched (%) | chosen τ | "
      "chosen γ | chosen step |", "|---|" + "---|" * (len(METRICS) + 6)]
  for method, s in methods.items():
    cells = [_pm(s[key]) for key, _ in METRICS]
    cells += [_pm(s["late_weight_mismatched"], 1.0, 2), _pm(s["late_weight_correct"], 1.0, 2),
              _pm(s["late_weight_share_mismatched"])]
    cells += [", ".join(f"{t:g}" for t in s["temperature"]),
              ", ".join("–" if g is None else f"{g:g}" for g in s["gamma"]),
              ", ".join(str(t) for t in s["step"])]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  for name, p in summary["paired"].items():
    a, b = name.split(" − ")
    lines += ["", f"## Paired: {name}", "",
              "| metric | per seed (points) | mean (points) | 95% t-interval (points) |",
              "|---|---|---|---|"]
    for key, title in METRICS[:3]:
      q = p[key]
      seeds = ", ".join(f"{100 * d:+.1f}" for d in q["differences"])
      ci = ("n/a" if q["ci95"] is None
            else f"[{100 * q['ci95'][0]:+.1f}, {100 * q['ci95'][1]:+.1f}]")
      lines.append(f"| {title} | {seeds} | {100 * q['mean']:+.1f} | {ci} |")
    lines += ["", f"**{verdict(p['test_retrieval'], a, b)}** (paired over n = {n} seeds)."]
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- plots


def plot_retrieval(selected: Mapping[str, list[dict]], path: str) -> str:
  """Test top-1 retrieval per method: mean ± std bars, one dot per seed."""
  methods = list(selected)
  fig, ax = plt.subplots(figsize=(7.5, 3.6))
  width = 0.38
  for j, (key, label) in enumerate((("test_a2b", "A→B"), ("test_b2a", "B→A"))):
    for i, m in enumerate(methods):
      v = 100 * np.array([r[key] for r in selected[m]])
      x = i + (j - 0.5) * width
      ax.bar(x, v.mean(), width, yerr=v.std(ddof=1) if len(v) > 1 else 0, capsize=3,
             color=f"C{j}", alpha=0.6, label=label if i == 0 else None)
      ax.plot(np.full(len(v), x) + np.linspace(-0.08, 0.08, len(v)), v, "k.", ms=5)
  ax.set_xticks(range(len(methods)), methods)
  lo = min(100 * r[k] for rows in selected.values() for r in rows
           for k in ("test_a2b", "test_b2a"))
  ax.set_ylim(max(0.0, lo - 10), None)
  ax.set_ylabel("test top-1 retrieval (%)")
  ax.set_title("clean test pairs; bars: mean ± std, dots: seeds", fontsize=9)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_gate_weights(selected: Mapping[str, list[dict]], methods: Sequence[str],
                      path: str) -> str:
  """Mean weight of mismatched vs correct pairs along training, chosen setting, per method."""
  fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4),
                           squeeze=False, sharey=True)
  for ax, m in zip(axes[0], methods):
    rows = selected[m]
    steps = rows[0]["steps"]
    for key, label, color in (("weight_correct", "correct pairs", "C0"),
                              ("weight_mismatched", "mismatched pairs", "C3")):
      v = np.array([r[key][r["chosen"]] for r in rows])
      mean, std = v.mean(0), v.std(0)
      ax.plot(steps, mean, color=color, label=label)
      ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_title(f"{m} (chosen τ, γ per seed)", fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("mean pair weight in the batch")
  axes[0, 0].legend(fontsize=8, title=f"mean ± std, n = {len(rows)}", title_fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------- main


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Trains every (method, seed) grid, selects on validation, tests once, writes the report.

  Returns:
    ``{"summary", "table", "plots", "selected"}``.
  """
  os.makedirs(workdir, exist_ok=True)
  methods = ordered_methods(config)
  selected = {m: [] for m in methods}
  bar = tqdm(total=len(config.seeds), desc="seeds", disable=not progress)
  for seed in config.seeds:
    paths = {m: os.path.join(workdir, "runs", m, f"seed{seed}.json") for m in methods}
    if not all(os.path.exists(p) for p in paths.values()):
      results = train_seed(config, prepare_data(config, seed), seed, progress=progress)
      for method, (record, params) in results.items():
        report.save_params(os.path.join(workdir, "runs", method, f"seed{seed}_params.npz"),
                           params)
        report.write_json(paths[method], record)
    for method in methods:
      selected[method].append(report.read_json(paths[method]))
    bar.update()
  bar.close()
  first = selected[next(iter(methods))][0]
  summary = summarize(selected, config.comparisons)
  table = markdown_report(summary, config, first["n_train"], first["n_test"])
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"summary": summary, "selected": selected}, f, indent=1)
  paths = [plot_retrieval(selected, os.path.join(workdir, "retrieval.png"))]
  gated = [m for m, s in methods.items() if s["weighting"] == "consistency_gate"]
  if gated:
    paths.append(plot_gate_weights(selected, gated, os.path.join(workdir, "gate_weights.png")))
  return {"summary": summary, "table": table, "plots": paths, "selected": selected}


def main(argv):
  del argv
  start = time.time()
  out = run(_CONFIG.value, _WORKDIR.value)
  print(out["table"])
  print("plots: " + ", ".join(out["plots"]))
  print(f"wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":  # flags only here, so that tests can import this module
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/noisy_pairs.py",
                                            "Path to an ml_collections config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "workdir/noisy_pairs",
                                 "Where runs, tables and plots go.")
  app.run(main)
