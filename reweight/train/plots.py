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


def _loss_scale(data) -> str:
  """``"log"`` when the methods' values differ in scale (max over min of the positive ones
  above 10, or a method's range dwarfing another's), else ``"linear"``."""
  means = [m[np.isfinite(m)] for _, m, _ in data.values()]
  means = [m for m in means if m.size]
  if not means or any(np.min(m) <= 0 for m in means):
    return "linear"
  lows, highs = [float(np.min(m)) for m in means], [float(np.max(m)) for m in means]
  spans = [h - lo for h, lo in zip(highs, lows)]
  span_ratio = max(spans) / max(min(spans), 1e-12)
  return "log" if max(highs) / min(lows) > 10 or span_ratio > 5 else "linear"


def _decades(data) -> float:
  """How many powers of ten the positive means of ``data`` span."""
  values = np.concatenate([m[np.isfinite(m) & (m > 0)] for _, m, _ in data.values()])
  return float(np.log10(values.max() / values.min())) if values.size else 0.0


def _legend(ax, n: int) -> None:
  """The legend of ``ax``, right of the panel: it hides no line however many there are."""
  ax.legend(fontsize=7 if n > 5 else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0, ncol=2 if n > 14 else 1)


def curves(runs: Mapping[str, Sequence[list[dict]]], path: str,
           keys: Sequence[str] = ("test_accuracy", "train_loss")) -> str:
  """Mean ± std over seeds of each metric in ``keys`` against the step, one line per method.

  Every panel has its legend. Lines differ in colour and dash, so methods of one family
  stay apart where they overlap. A loss panel whose methods differ in scale (e.g. SCE's
  loss next to CE's) has a log y axis, so no method's curve is flattened by another's.

  Args:
    runs: ``{method: [history_seed0, history_seed1, ...]}``.
    path: the PNG to write.
  """
  plt = _pyplot()
  from cycler import cycler  # a matplotlib dependency

  fig, axes = plt.subplots(1, len(keys), figsize=(7.5 * len(keys), 4.2), squeeze=False)
  colors = plt.get_cmap("tab20" if len(runs) > 10 else "tab10").colors[:max(len(runs), 1)]
  dashes = ["-", "--", "-.", ":"]
  style = (cycler(color=colors) +
           cycler(linestyle=[dashes[i // 3 % 4] if len(runs) > 3 else "-"
                             for i in range(len(colors))]))
  for ax, key in zip(axes[0], keys):
    ax.set_prop_cycle(style)
    data = curve_data(runs, key)
    for method, (steps, mean, std) in data.items():
      (line,) = ax.plot(steps, mean, label=method, linewidth=1.5)
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    label = key.replace("_", " ")
    if "loss" in key and _loss_scale(data) == "log":
      from matplotlib.ticker import LogLocator, ScalarFormatter

      ax.set_yscale("log")
      ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
      ax.yaxis.set_major_formatter(ScalarFormatter())
      ax.yaxis.set_minor_formatter(ScalarFormatter() if _decades(data) < 1 else "")
      label += " (log scale)"
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.set_title(f"{label}, mean ± std over seeds", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(data))
  return _save(fig, path)


def weight_histograms(final_weights: Mapping[str, Mapping[str, np.ndarray]], path: str) -> str:
  """Histograms of the last epoch's weights on clean vs noisy examples, one panel per method.

  Each panel is labelled (weight; share of that kind's examples per bin) and has its
  legend; counts are normalised per kind, so the clean and noisy bars compare although
  their numbers differ.
  """
  methods = [m for m, fw in final_weights.items() if "is_noisy" in fw]
  if not methods:
    return ""
  fig, axes = _panel_grid(len(methods), max_cols=4, width=4.0, height=3.2)
  for ax, method in zip(axes.flat, methods):
    w, noisy = final_weights[method]["weights"], final_weights[method]["is_noisy"].astype(bool)
    hi = max(float(np.max(w)), 1.0)
    bins = np.linspace(0.0, hi * 1.001, 30)
    for kind, sel in (("clean", ~noisy), ("noisy", noisy)):
      if sel.any():
        ax.hist(w[sel], bins=bins, alpha=0.6, weights=np.full(sel.sum(), 1 / sel.sum()),
                label=f"{kind} ({sel.sum()})")
    ax.set_title(method, fontsize=9)
    ax.set_xlabel("weight (last epoch)")
    ax.set_ylabel("share of examples")
    ax.legend(fontsize=7)
  fig.suptitle("Weights on clean vs noisy examples", fontsize=10)
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
    ax.legend(fontsize=7, loc="upper left")
  return _save(fig, path)


def history_probs(histories: Sequence[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, mean probs over seeds [T, G])`` from the trainer's histories (`proportions`)."""
  steps = _stack(histories, "step")[0]
  n = len(steps)
  probs = np.mean([[row["probs"] for row in h[:n]] for h in histories], axis=0)
  return steps, probs
