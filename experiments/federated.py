r"""Federated digits with unknown heterogeneous participation: FedAvg vs FedAU.

Data (``prepare_data``): the digits TRAIN split is divided among ``config.num_clients``
clients by `reweight.train.federated.dirichlet_split` (``alpha``, ``seed``, ``min_size``).
Every client then holds out ``config.val_fraction`` of its examples (``rng =
default_rng([VAL_SALT, seed])``; client by client, ``rng.permutation`` of its indices, the
first ``round(val_fraction * n_i)`` go to VALIDATION); the rest is its training data. TEST
is the digits test split.

Participation: in every round client i takes part with probability

.. math::

  p_i = p_{low} + (p_{high} - p_{low})\, s_i, \qquad s_i = \text{share of client i's
  training examples with label} < 5,

independently (Bernoulli), unknown to the server: clients that hold mostly digits 5-9 are
rare. The "rare" clients are the ``config.rare_quantile`` of clients with the lowest p
(``p_i <= quantile(p, rare_quantile)``, per seed).

Methods (`reweight.train.federated.simulate`, aggregation ``x + global_lr * sum_i c_i
Delta_i``): ``fedavg`` (``c_i = n_i / sum_{S_t} n_j``: proportional to sizes, renormalised
over the round's participants), ``uniform`` (``1 / |S_t|``), ``fedau`` (``omega_i / N`` with
`reweight.group.fedau`'s online estimate of ``1 / p_i``) and ``known`` (``1 / (N p_i)``, the
oracle weights FedAU estimates; not available to a real server). Same model, local SGD
(``local_steps`` steps, batch ``batch_size``), rounds and participation draws (the same
simulate seed) for every method.

Choice on validation: per method and seed, the local learning rate of
``config.learning_rates`` with the highest final VALIDATION accuracy averaged uniformly over
the clients (each client's held-out part: the objective ``(1/N) sum_i F_i`` that FedAU's
weights target; ties: the earlier learning rate). Test is then read once, for the chosen
run: accuracy on the test split (its curve along rounds comes from `simulate`), per-class
test accuracy ``a_c`` and cross-entropy ``l_c``, and per client the test accuracy and loss
under its own label mix ``pi_i`` (its training labels): ``A_i = sum_c pi_ic a_c``,
``L_i = sum_c pi_ic l_c``. Reported: test accuracy, the mean of ``A_i`` over all clients,
over the rare clients and over the others, mean ± sample std (ddof=1) over the seeds, and
the paired per-seed differences of ``config.comparisons`` with 95% t-intervals
(`report.verdict`).

Outputs in ``workdir``: ``table.md`` (also printed), ``summary.json``, ``curves.png`` (test
accuracy along rounds, mean over seeds with a ±1 std band, chosen learning rates),
``clients.png`` (per-client test accuracy ``A_i`` and loss ``L_i`` against ``p_i`` at the
end; FedAU's final weights against ``1 / p_i``). Each run lives in ``runs/<method>/lr<lr>/seed<k>/``
(``result.json``, ``params.npz``: final parameters, ``participation.npz``: the ``[rounds,
N]`` participation history); finished runs are not run again.

  python experiments/federated.py --config=configs/federated.py --workdir=workdir/federated

References:
  McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
  Data", AISTATS 2017 (FedAvg). Wang and Ji, "A Lightweight Method for Tackling Unknown
  Participation Statistics in Federated Averaging", ICLR 2024 (FedAU).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping
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

from reweight.data import datasets  # noqa: E402
from reweight.train import federated, report  # noqa: E402
from reweight.train.models import functional, make_model  # noqa: E402

VAL_SALT = 0x66656476
NUM_CLASSES = 10

# ---------------------------------------------------------------------------------- data


def prepare_data(config: ml_collections.ConfigDict, seed: int) -> dict[str, Any]:
  """Clients' train / validation indices, their participation probabilities and the data.

  Returns:
    ``{"x", "label"}`` (TRAIN), ``"train_parts"`` / ``"val_parts"`` (per client, sorted
    indices into TRAIN), ``"probs"`` ``[N]``, ``"label_mix"`` ``[N, 10]`` (each client's
    training label distribution), ``"rare"`` ``[N]`` bool, ``"test_x"``, ``"test_label"``.
  """
  train = datasets.load(config.dataset, "train")
  test = datasets.load(config.dataset, "test")
  labels = np.asarray(train["label"])
  parts = federated.dirichlet_split(labels, config.num_clients, config.alpha, seed=seed,
                                    min_size=config.min_client_size)
  rng = np.random.default_rng([VAL_SALT, seed])
  train_parts, val_parts = [], []
  for idx in parts:
    perm = rng.permutation(idx)
    k = int(round(config.val_fraction * idx.size))
    val_parts.append(np.sort(perm[:k]))
    train_parts.append(np.sort(perm[k:]))
  mix = np.stack([np.bincount(labels[t], minlength=NUM_CLASSES) / t.size
                  for t in train_parts])
  share_low = mix[:, :5].sum(1)
  probs = config.p_low + (config.p_high - config.p_low) * share_low
  rare = probs <= np.quantile(probs, config.rare_quantile)
  return {"x": np.asarray(train["x"], np.float32), "label": labels,
          "train_parts": train_parts, "val_parts": val_parts, "probs": probs,
          "label_mix": mix, "rare": rare, "test_x": np.asarray(test["x"], np.float32),
          "test_label": np.asarray(test["label"])}


# ------------------------------------------------------------------------------- metrics


def client_val_accuracy(predict, params, data) -> np.ndarray:
  """``[N]`` accuracy of ``params`` on each client's held-out validation part."""
  pred = np.asarray(predict(params, data["x"]))  # all of TRAIN at once: one shape
  return np.asarray([float(np.mean(pred[v] == data["label"][v])) if v.size else np.nan
                     for v in data["val_parts"]])


@functools.partial(jax.jit, static_argnums=0)
def _predict_and_loss(apply_fn, params, x, y):
  logits = apply_fn(params, x)
  return jnp.argmax(logits, -1), optax.softmax_cross_entropy_with_integer_labels(logits, y)


def test_metrics(apply_fn, params, data) -> dict[str, Any]:
  """Test accuracy, per-class accuracy / CE, per-client ``A_i`` / ``L_i``, rare vs others."""
  y = data["test_label"]
  pred, ce = _predict_and_loss(apply_fn, params, jnp.asarray(data["test_x"]), jnp.asarray(y))
  ce = np.asarray(ce)
  correct = np.asarray(pred) == y
  acc_c = np.array([correct[y == c].mean() for c in range(NUM_CLASSES)])
  ce_c = np.array([ce[y == c].mean() for c in range(NUM_CLASSES)])
  client_acc = data["label_mix"] @ acc_c
  client_loss = data["label_mix"] @ ce_c
  rare = data["rare"]
  return {"test_accuracy": float(correct.mean()), "class_accuracy": acc_c.tolist(),
          "class_loss": ce_c.tolist(), "client_accuracy": client_acc.tolist(),
          "client_loss": client_loss.tolist(),
          "client_mean_accuracy": float(client_acc.mean()),
          "rare_accuracy": float(client_acc[rare].mean()),
          "frequent_accuracy": float(client_acc[~rare].mean()),
          "rare_loss": float(client_loss[rare].mean()),
          "frequent_loss": float(client_loss[~rare].mean())}


# ------------------------------------------------------------------------------ training


def train_run(config, fn, data, method: str, lr: float, seed: int):
  """One `federated.simulate` run; returns its history."""
  clients = federated.stack_clients(data["x"], data["label"], data["train_parts"])
  return federated.simulate(
      fn.apply, fn.params, clients, data["test_x"], data["test_label"], data["probs"],
      rounds=config.rounds, method=method, cutoff=config.cutoff,
      local_steps=config.local_steps, batch_size=config.batch_size, lr=lr,
      global_lr=config.global_lr, seed=seed, eval_every=config.eval_every)


def run_dir(workdir: str, method: str, lr: float, seed: int) -> str:
  return os.path.join(workdir, "runs", method, f"lr{lr:g}", f"seed{seed}")


def select(runs: Mapping[float, Mapping[str, Any]]) -> float:
  """The learning rate with the highest final client-mean validation accuracy (ties: the
  earlier one)."""
  best = None
  for lr, r in runs.items():
    if best is None or r["val_client_mean_accuracy"] > runs[best]["val_client_mean_accuracy"]:
      best = lr
  return best


# -------------------------------------------------------------------------------- report

METRICS = (("val_client_mean_accuracy", "val (client mean)"),
           ("test_accuracy", "test"),
           ("client_mean_accuracy", "test, client mean"),
           ("rare_accuracy", "test, rare clients"),
           ("frequent_accuracy", "test, other clients"))
# (key, higher is better, scale, unit, what): the paired comparisons' metrics.
PAIRED = (("test_accuracy", True, 100, "points", "test accuracy"),
          ("rare_accuracy", True, 100, "points", "rare clients' test accuracy"),
          ("client_mean_accuracy", True, 100, "points", "client-mean test accuracy"),
          ("rare_loss", False, 1, "nats", "rare clients' test CE"))


def summarize(selected: Mapping[str, list[dict]], comparisons) -> dict[str, Any]:
  out: dict[str, Any] = {"methods": {}, "paired": {}}
  for method, rows in selected.items():
    s = {key: report.mean_std([r[key] for r in rows]) for key, _ in METRICS}
    s["rare_loss"] = report.mean_std([r["rare_loss"] for r in rows])
    s["frequent_loss"] = report.mean_std([r["frequent_loss"] for r in rows])
    s["lr"] = [r["lr"] for r in rows]
    s["n"] = len(rows)
    out["methods"][method] = s
  for a, b in comparisons:
    assert [r["seed"] for r in selected[a]] == [r["seed"] for r in selected[b]]
    out["paired"][f"{a} − {b}"] = {
        key: report.paired_difference([r[key] for r in selected[a]],
                                      [r[key] for r in selected[b]]) for key, *_ in PAIRED}
  return out


def _pm(stat, scale: float = 100.0, digits: int = 1) -> str:
  return report.format_mean_std(stat, digits, scale)


def markdown_report(summary, config, seeds_info) -> str:
  methods = summary["methods"]
  n = next(iter(methods.values()))["n"]
  lines = [
      "# Federated digits: FedAvg vs FedAU under unknown heterogeneous participation", "",
      f"{config.num_clients} clients, Dirichlet(α = {config.alpha}) label split, "
      f"{100 * config.val_fraction:g}% of each client held out for validation. "
      f"p_i = {config.p_low} + {config.p_high - config.p_low:g} × (client's share of labels "
      f"< 5), unknown to the server. {config.model} {tuple(config.model_kwargs.hidden)}, "
      f"{config.rounds} rounds, {config.local_steps} local SGD steps of batch "
      f"{config.batch_size}, server lr {config.global_lr}; local lr ∈ "
      f"{tuple(config.learning_rates)} chosen per method and seed on the client-mean "
      f"validation accuracy. FedAU cutoff: {config.cutoff}. Rare clients: the "
      f"{config.rare_quantile:.2g} of clients with the lowest p. Accuracy in %, mean ± sample "
      f"std (ddof=1) over n = {n} seeds {tuple(config.seeds)}; test read once, at the end.", "",
      "Per seed: " + "; ".join(
          f"seed {s['seed']}: p ∈ [{s['p_min']:.2f}, {s['p_max']:.2f}], "
          f"{s['num_rare']} rare clients (p ≤ {s['p_rare_max']:.2f}) holding "
          f"{100 * s['rare_share_5to9']:.0f}% digits 5-9"
          for s in seeds_info) + ".", "",
      "## Final accuracy", "",
      "| method | " + " | ".join(t for _, t in METRICS)
      + " | test CE, rare clients | test CE, others | chosen lr |",
      "|---|" + "---|" * (len(METRICS) + 3)]
  for method, s in methods.items():
    cells = [_pm(s[key]) for key, _ in METRICS]
    cells += [_pm(s["rare_loss"], 1.0, 3), _pm(s["frequent_loss"], 1.0, 3),
              ", ".join(f"{x:g}" for x in s["lr"])]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  for name, p in summary["paired"].items():
    a, b = name.split(" − ")
    lines += ["", f"## Paired (test): {name}", "",
              "| metric | per seed | mean | 95% t-interval |", "|---|---|---|---|"]
    for key, _, scale, unit, what in PAIRED:
      q, d = p[key], 1 if scale == 100 else 3
      ci = ("n/a" if q["ci95"] is None
            else f"[{scale * q['ci95'][0]:+.{d}f}, {scale * q['ci95'][1]:+.{d}f}]")
      lines.append(f"| {what} ({unit}) | "
                   + ", ".join(f"{scale * x:+.{d}f}" for x in q["differences"])
                   + f" | {scale * q['mean']:+.{d}f} | {ci} |")
    lines.append("")
    for key, higher, scale, unit, what in PAIRED:
      q = p[key]
      scaled = {**q, "mean": scale * q["mean"],
                "ci95": None if q["ci95"] is None else [scale * x for x in q["ci95"]]}
      lines.append("**" + report.verdict(scaled, a, b, f"{what} ({unit})",
                                         higher_is_better=higher,
                                         digits=1 if scale == 100 else 3) + "**.")
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- plots


def plot_curves(selected: Mapping[str, list[dict]], path: str) -> str:
  """Test accuracy along rounds of the chosen runs, mean over seeds with a ±1 std band."""
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for i, (method, rows) in enumerate(selected.items()):
    rounds = np.asarray(rows[0]["rounds"])
    acc = 100 * np.array([r["curve"] for r in rows])
    mean, std = acc.mean(0), (acc.std(0, ddof=1) if len(rows) > 1 else 0 * acc[0])
    lrs = ",".join(f"{r['lr']:g}" for r in rows)
    ax.plot(rounds, mean, color=f"C{i}", label=f"{method} (lr {lrs})")
    ax.fill_between(rounds, mean - std, mean + std, color=f"C{i}", alpha=0.2)
  ax.set_xlabel("round")
  ax.set_ylabel("test accuracy (%)")
  ax.set_ylim(50, 100)  # round 0 (10%) is below the frame
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, title="mean ± std over seeds", title_fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_clients(selected: Mapping[str, list[dict]], probs: list[np.ndarray], path: str) -> str:
  """Per-client test accuracy and loss against p (all seeds' clients); FedAU's weights
  against 1/p."""
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  p_all = np.concatenate(probs)
  bins = np.array_split(np.argsort(p_all), 5)  # 5 groups of clients by p: the trend
  for ax, key, label in ((axes[0], "client_accuracy", "client's test accuracy (%), A_i"),
                         (axes[1], "client_loss", "client's test CE, L_i")):
    scale = 100 if key == "client_accuracy" else 1
    for i, (method, rows) in enumerate(selected.items()):
      v = scale * np.concatenate([r[key] for r in rows])
      ax.scatter(p_all, v, s=9, color=f"C{i}", alpha=0.3)
      ax.plot([p_all[b].mean() for b in bins], [v[b].mean() for b in bins], "o-",
              color=f"C{i}", label=method)
    ax.set_xlabel("participation probability p_i")
    ax.set_ylabel(label + " under its label mix")
    ax.set_title("dots: clients of all seeds; line: 5 bins by p", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  if "fedau" in selected:
    for rows_p, r in zip(probs, selected["fedau"]):
      axes[2].scatter(1 / rows_p, r["fedau_weights"], s=12, label=f"seed {r['seed']}")
    hi = max(1 / p.min() for p in probs)
    axes[2].plot([1, hi], [1, hi], "k--", lw=1, label="ω = 1/p")
    axes[2].set_xlabel("1 / p_i")
    axes[2].set_ylabel("FedAU's final weight ω_i")
    axes[2].set_title("FedAU's estimate after the last round", fontsize=9)
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------- main


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict:
  """Every (method, lr, seed); selection on validation; test once; report and plots.

  Returns:
    ``{"summary", "table", "plots", "selected"}``; ``selected[method]`` lists per seed the
    chosen run's record.
  """
  os.makedirs(workdir, exist_ok=True)
  methods = list(config.methods)
  lrs = [float(x) for x in config.learning_rates]
  selected: dict[str, list[dict]] = {m: [] for m in methods}
  seeds_info, probs = [], []
  bar = tqdm(total=len(config.seeds) * len(methods) * len(lrs), desc="runs",
             disable=not progress)
  for seed in config.seeds:
    data = prepare_data(config, seed)
    probs.append(data["probs"])
    rare = data["rare"]
    seeds_info.append({
        "seed": seed, "p_min": float(data["probs"].min()), "p_max": float(data["probs"].max()),
        "num_rare": int(rare.sum()), "p_rare_max": float(data["probs"][rare].max()),
        "rare_share_5to9": float(
            sum(np.sum(data["label"][data["train_parts"][i]] >= 5) for i in np.flatnonzero(rare))
            / max(1, sum(np.sum(data["label"][t] >= 5) for t in data["train_parts"])))})
    fn = functional(make_model(config.model, seed=seed, num_classes=NUM_CLASSES,
                               **dict(config.model_kwargs)))
    predict = jax.jit(lambda p, x, fn=fn: jnp.argmax(fn.apply(p, x), -1))
    for method in methods:
      runs = {}
      for lr in lrs:
        d = run_dir(workdir, method, lr, seed)
        path = os.path.join(d, "result.json")
        if not os.path.exists(path):
          h = train_run(config, fn, data, method, lr, seed)
          val = client_val_accuracy(predict, h.params, data)
          os.makedirs(d, exist_ok=True)  # result.json is written last: a run is whole
          np.savez(os.path.join(d, "participation.npz"), participation=h.participation)
          report.save_params(os.path.join(d, "params.npz"), h.params)
          report.write_json(path, {
              "method": method, "lr": lr, "seed": seed, "rounds": h.rounds.tolist(),
              "curve": h.accuracy.tolist(), "val_client_accuracy": val.tolist(),
              "val_client_mean_accuracy": float(np.nanmean(val)),
              "fedau_weights": np.asarray(h.fedau_state.weights).tolist(),
              "participation_rate": h.participation.mean(0).tolist()})
        runs[lr] = report.read_json(path)
        bar.update()
      lr = select(runs)
      chosen_path = os.path.join(workdir, "runs", method, f"seed{seed}_selected.json")
      if not os.path.exists(chosen_path):  # test metrics, once, for the chosen run
        params = report.load_params(os.path.join(run_dir(workdir, method, lr, seed),
                                                 "params.npz"), fn.params)
        report.write_json(chosen_path, {**runs[lr], **test_metrics(fn.apply, params, data),
                                        "probs": data["probs"].tolist(),
                                        "rare": data["rare"].tolist()})
      selected[method].append(report.read_json(chosen_path))
  bar.close()
  summary = summarize(selected, config.comparisons)
  summary["seeds"] = seeds_info
  table = markdown_report(summary, config, seeds_info)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"summary": summary}, f, indent=1)
  plots = [plot_curves(selected, os.path.join(workdir, "curves.png")),
           plot_clients(selected, probs, os.path.join(workdir, "clients.png"))]
  return {"summary": summary, "table": table, "plots": plots, "selected": selected}


def main(argv):
  del argv
  start = time.time()
  out = run(_CONFIG.value, _WORKDIR.value)
  print(out["table"])
  print("plots: " + ", ".join(out["plots"]))
  print(f"wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":  # flags only here, so that tests can import this module
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/federated.py",
                                            "Path to an ml_collections config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "workdir/federated",
                                 "Where runs, tables and plots go.")
  app.run(main)
