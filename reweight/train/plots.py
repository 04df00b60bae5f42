"""Matplotlib figures written at the end of an experiment.

Matplotlib (about 0.4 s to import) is imported by the first figure, not by this module, so
that importing the trainer does not pay for it; it then uses the non-interactive ``Agg``
backend.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import numpy as np


@functools.cache
def _pyplot():
  """``matplotlib.pyplot`` on the ``Agg`` backend, imported on first use."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _stack(histories: Sequence[list[dict]], key: str):
  rows = [[r.get(key, np.nan) for r in h] for h in histories]
  n = min(len(r) for r in rows)
  return np.asarray([r[:n] for r in rows], float)



def _panel_grid(n: int, max_cols: int, width: float, height: float):
  """A figure with ``n`` panels of ``width x height`` inches, at most ``max_cols`` a row."""
  cols = min(max_cols, n)
  rows = -(-n // cols)
  fig, axes = _pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  return fig, axes


def _save(fig, path: str) -> str:
  """Writes ``fig`` to ``path`` (creating its folder) and closes it."""
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  _pyplot().close(fig)
  return path

def curve_data(runs: Mapping[str, Sequence[list[dict]]], key: str):
  """``{method: (steps, mean, std)}`` of metric ``key`` over seeds (histories cut to the
  shortest)."""
  out = {}
  for method, histories in runs.items():
    values = _stack(histories, key)
    out[method] = (_stack(histories, "step")[0], np.nanmean(values, 0), np.nanstd(values, 0))
  return out


def curves(runs: Mapping[str, Sequence[list[dict]]], path: str,
           keys: Sequence[str] = ("test_accuracy", "train_loss")) -> str:
  """Mean ± std over seeds of each metric in ``keys`` against the step, one line per method.

  Args:
    runs: ``{method: [history_seed0, history_seed1, ...]}``.
    path: the PNG to write.
  """
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
  colors = plt.get_cmap("tab20" if len(runs) > 10 else "tab10").colors
  for ax in axes[0]:
    ax.set_prop_cycle(color=colors)
  for ax, key in zip(axes[0], keys):
    for method, (steps, mean, std) in curve_data(runs, key).items():
      (line,) = ax.plot(steps, mean, label=method)
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  return _save(fig, path)


def weight_histograms(final_weights: Mapping[str, Mapping[str, np.ndarray]], path: str) -> str:
  """Histograms of the last epoch's weights on clean vs noisy examples, one panel per method."""
  methods = [m for m, fw in final_weights.items() if "is_noisy" in fw]
  if not methods:
    return ""
  fig, axes = _panel_grid(len(methods), max_cols=4, width=4.0, height=3.0)
  for ax, method in zip(axes.flat, methods):
    w, noisy = final_weights[method]["weights"], final_weights[method]["is_noisy"].astype(bool)
    hi = max(float(np.max(w)), 1.0)
    bins = np.linspace(0.0, hi * 1.001, 30)
    ax.hist(w[~noisy], bins=bins, alpha=0.6, label="clean", density=True)
    ax.hist(w[noisy], bins=bins, alpha=0.6, label="noisy", density=True)
    ax.set_title(method, fontsize=9)
    ax.set_xlabel("weight")
  axes.flat[0].legend(fontsize=8)
  return _save(fig, path)


def proportions(trajectories: Mapping[str, tuple[Sequence[float], np.ndarray]], path: str,
                group_names: Sequence[str] | None = None) -> str:
  """Stacked proportions over groups against the step, one panel per method.

  Args:
    trajectories: ``{method: (steps [T], probs [T, G])}``, e.g. the ``probs`` that the
      trainer logs at every evaluation for a `reweight.group` method (`history_probs`).
    path: the PNG to write.
    group_names: a legend entry per group (default ``group 0``, ...).
  """
  if not trajectories:
    return ""
  fig, axes = _panel_grid(len(trajectories), max_cols=3, width=4.5, height=3.2)
  for ax, (method, (steps, probs)) in zip(axes.flat, trajectories.items()):
    probs = np.asarray(probs, float)
    names = group_names or [f"group {g}" for g in range(probs.shape[1])]
    ax.stackplot(np.asarray(steps, float), probs.T, labels=names, alpha=0.85,
                 colors=_pyplot().get_cmap("tab10").colors)
    ax.set_ylim(0, 1)
    ax.set_title(method, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("proportion")
  axes.flat[0].legend(fontsize=7, loc="upper left")
  return _save(fig, path)


def history_probs(histories: Sequence[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, mean probs over seeds [T, G])`` from the trainer's histories (`proportions`)."""
  steps = _stack(histories, "step")[0]
  n = len(steps)
  probs = np.mean([[row["probs"] for row in h[:n]] for h in histories], axis=0)
  return steps, probs
