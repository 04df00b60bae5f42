"""What an experiment's report needs: sample statistics over seeds, paired comparisons with
their verdict sentence, and result files (JSON, parameters) that are either whole or absent.

The conventions of every table in ``experiments/README.md``: "±" is the sample standard
deviation (``ddof=1``) with n stated; "A beats B" only when the paired 95% t-interval of the
per-seed difference excludes zero, else "no clear difference at n seeds".

Examples:
  >>> from reweight.train import report
  >>> report.mean_std([1.0, 2.0, 3.0])
  (2.0, 1.0)
  >>> p = report.paired_difference([2.0, 2.1, 2.2], [1.0, 1.0, 1.1])
  >>> report.verdict(p, "a", "b", "accuracy", higher_is_better=True)
  'a beats b on accuracy (a − b = +1.0667, 95% CI [+0.9232, +1.2101])'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from reweight.reparam._core import flatten_with_paths, unflatten_like


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """``(mean, sample std with ddof=1)``; the std is None for a single value."""
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or v.size == 0:
    raise ValueError(f"values must be a non-empty 1-D sequence, got shape {v.shape}")
  return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def paired_difference(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> dict[str, Any]:
  """Per-seed differences ``a - b``, their mean and the t-interval of the mean.

  ``mean ± t_{(1+c)/2, n-1} * std(d, ddof=1) / sqrt(n)``.

  Returns:
    ``{"differences", "mean", "sem", "ci95": [lo, hi], "p", "n"}``: ``sem`` is the standard
    error ``std(d, ddof=1) / sqrt(n)``, ``p`` the two-sided paired t-test p-value of
    ``mean(d) = 0``; ``sem``, ``ci95`` and ``p`` are None for one seed (the key says 95
    whatever ``confidence`` is: pass the default for reports).
  """
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(f"a and b must be equally long non-empty sequences (paired by seed), "
                     f"got {np.shape(a)} and {np.shape(b)}")
  n, mean = int(d.size), float(d.mean())
  if n < 2:
    return {"differences": d.tolist(), "mean": mean, "sem": None, "ci95": None, "p": None,
            "n": n}
  sem = float(d.std(ddof=1) / np.sqrt(n))
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
  p = float(2 * stats.t.sf(abs(mean) / sem, n - 1)) if sem > 0 else (1.0 if mean == 0 else 0.0)
  return {"differences": d.tolist(), "mean": mean, "sem": sem,
          "ci95": [mean - half, mean + half], "p": p, "n": n}


def verdict(p: Mapping[str, Any], a: str, b: str, what: str, *, higher_is_better: bool,
            digits: int = 4) -> str:
  """The sentence for the paired difference ``p`` of ``a - b`` (`paired_difference`)."""
  if p["ci95"] is None:
    return f"{a} vs {b} on {what}: cannot be judged at n = {p['n']} seed"
  lo, hi = p["ci95"]
  interval = (f"{a} − {b} = {p['mean']:+.{digits}f}, 95% CI [{lo:+.{digits}f}, "
              f"{hi:+.{digits}f}]")
  a_better = lo > 0 if higher_is_better else hi < 0
  b_better = hi < 0 if higher_is_better else lo > 0
  if a_better:
    return f"{a} beats {b} on {what} ({interval})"
  if b_better:
    return f"{b} beats {a} on {what} ({interval})"
  return f"no clear difference at {p['n']} seeds between {a} and {b} on {what} ({interval})"


def format_mean_std(stat: tuple[float, float | None], digits: int = 4,
                    scale: float = 1.0) -> str:
  """``"m ± s"`` of a `mean_std` pair times ``scale`` (e.g. 100 for %), ``"m"`` for one seed."""
  m, s = stat
  if s is None:
    return f"{scale * m:.{digits}f}"
  return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def format_difference(p: Mapping[str, Any], digits: int = 4, scale: float = 1.0) -> str:
  """``"+d [+lo, +hi]"`` of a `paired_difference` times ``scale``; ``"+d"`` for one seed."""
  mean = f"{scale * p['mean']:+.{digits}f}"
  if p["ci95"] is None:
    return mean
  lo, hi = p["ci95"]
  return f"{mean} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def read_json(path: str) -> Any:
  """The JSON document at ``path``."""
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON through a temporary file, so ``path`` is whole or absent."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


def save_params(path: str, params: Any) -> None:
  """Writes a parameter pytree as ``.npz`` keyed by its '/'-joined paths, whole or absent."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **{k: np.asarray(v) for k, v in flatten_with_paths(params).items()})
  os.replace(tmp, path)


def load_params(path: str, like: Any) -> Any:
  """The parameters `save_params` wrote, in the structure of ``like``."""
  with np.load(path) as f:
    return unflatten_like(like, {k: f[k] for k in f.files})
