"""Import time: ``import reweight`` against the import of its own dependencies.

Each measurement is a fresh interpreter (``python -c ...``) that times one import statement
with `time.perf_counter` around it, so interpreter start-up is not counted. Two statements
are timed in interleaved rounds (baseline, reweight, baseline, reweight, ...):

* ``baseline``: ``import jax, flax, optax`` (the dependencies every part of the library
  needs; `reweight` cannot import faster than they do);
* ``reweight``: ``import jax, flax, optax, reweight`` (the same, then the library; timed
  together so both columns pay for the same dependency imports).

The ratio is ``median(reweight) / median(baseline)``; its spread is the interquartile range
of the per-round ratios (round ``i``'s reweight time over round ``i``'s baseline time). The
target of issue 10 is a ratio ≤ 1.1. Also reported: which heavy optional modules (scipy,
matplotlib, tensorflow_datasets, tensorflow) ``import reweight`` loads, and the slowest
``reweight.*`` modules by ``python -X importtime`` self + children time.

  python benchmarks/import_time.py [--rounds 9] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys

import numpy as np

STATEMENTS = {
    "baseline": "import jax, flax, optax",
    "reweight": "import jax, flax, optax, reweight",
}
HEAVY = ("scipy", "matplotlib", "tensorflow_datasets", "tensorflow")

_TIMER = (
    "import time; _t = time.perf_counter(); {stmt}; _t = time.perf_counter() - _t; "
    "import sys; print(repr(_t)); "
    "print('loaded:' + ','.join(m for m in {heavy!r} if m in sys.modules))"
)


def time_import(stmt: str, python: str = sys.executable) -> tuple[float, list[str]]:
  """Seconds one fresh interpreter takes to run ``stmt``, and the heavy modules it loaded."""
  code = _TIMER.format(stmt=stmt, heavy=HEAVY)
  out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False,
                       env=_env())
  if out.returncode != 0:
    raise RuntimeError(f"{stmt!r} failed in a fresh interpreter:\n{out.stderr}")
  seconds, loaded = out.stdout.strip().splitlines()[-2:]
  return float(seconds), [m for m in loaded.removeprefix("loaded:").split(",") if m]


def slowest_modules(python: str = sys.executable, top: int = 10) -> list[tuple[str, float]]:
  """The ``top`` slowest ``reweight*`` modules by ``-X importtime`` cumulative time (ms).

  Also lists any other top-level package that ``import reweight`` brings in beyond
  ``jax, flax, optax`` (its cumulative time as reported at its first import).
  """
  out = subprocess.run(
      [python, "-X", "importtime", "-c", "import jax, flax, optax; import reweight"],
      capture_output=True, text=True, check=True, env=_env())
  # -X importtime prints a module's line when its import finishes: everything after optax's
  # line was imported by ``import reweight``.
  lines = out.stderr.splitlines()
  start = max(i for i, line in enumerate(lines) if re.search(r"\|\s+optax$", line)) + 1
  rows = []
  for line in lines[start:]:
    match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$", line)
    if match is None:
      continue
    name = match.group(2)
    if name.startswith("reweight") or ("." not in name and not name.startswith("_")):
      rows.append((name, int(match.group(1)) / 1e3))
  rows.sort(key=lambda r: -r[1])
  return rows[:top]


def _env() -> dict:
  """The environment of each child: this one, with the repo root on ``PYTHONPATH``."""
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def measure(rounds: int, python: str = sys.executable) -> dict:
  """Interleaved rounds of both statements; medians, IQRs, the ratio and its spread."""
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds}")
  # One untimed run of each first, so the OS file cache is equally warm for both.
  for stmt in STATEMENTS.values():
    time_import(stmt, python)
  times = {name: [] for name in STATEMENTS}
  loaded = []
  for _ in range(rounds):
    for name, stmt in STATEMENTS.items():
      seconds, heavy = time_import(stmt, python)
      times[name].append(seconds)
      if name == "reweight":
        loaded = heavy
  base, rw = np.array(times["baseline"]), np.array(times["reweight"])
  per_round = rw / base
  q1, q3 = np.percentile(per_round, [25, 75])
  return {
      "rounds": rounds,
      "baseline_s": {"median": float(np.median(base)),
                     "iqr": [float(v) for v in np.percentile(base, [25, 75])]},
      "reweight_s": {"median": float(np.median(rw)),
                     "iqr": [float(v) for v in np.percentile(rw, [25, 75])]},
      "ratio": float(np.median(rw) / np.median(base)),
      "ratio_per_round": {"median": float(np.median(per_round)), "iqr": [float(q1), float(q3)]},
      "heavy_modules_loaded": loaded,
      "times_s": times,
  }


def main(argv: list[str] | None = None) -> dict:
  """Runs the benchmark, prints a summary and writes ``import_time.json``."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=9,
                      help="interleaved rounds of both statements (default 9)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                      help="directory for import_time.json")
  args = parser.parse_args(argv)

  result = measure(args.rounds)
  result["slowest_reweight_modules_ms"] = slowest_modules()
  result["python"] = platform.python_version()
  result["statements"] = STATEMENTS
  import jax  # the version only: the timings above ran in children
  result["jax"] = jax.__version__

  b, r = result["baseline_s"], result["reweight_s"]
  print(f"baseline ({STATEMENTS['baseline']}): median {b['median']:.3f} s "
        f"(IQR {b['iqr'][0]:.3f}-{b['iqr'][1]:.3f})")
  print(f"reweight ({STATEMENTS['reweight']}): median {r['median']:.3f} s "
        f"(IQR {r['iqr'][0]:.3f}-{r['iqr'][1]:.3f})")
  q = result["ratio_per_round"]["iqr"]
  print(f"ratio {result['ratio']:.3f} (per-round IQR {q[0]:.3f}-{q[1]:.3f}), "
        f"{args.rounds} rounds; target <= 1.1")
  print("heavy modules loaded by import reweight:", result["heavy_modules_loaded"] or "none")
  for name, ms in result["slowest_reweight_modules_ms"][:5]:
    print(f"  {name}: {ms:.1f} ms")

  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "import_time.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print("wrote", path)
  return result


if __name__ == "__main__":
  main()
