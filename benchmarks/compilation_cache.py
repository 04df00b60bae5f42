"""The persistent compilation cache of `reweight.main`: a rerun with a warm cache vs a cold one.

Runs the main job's experiment (`configs/default.py`, all 7 methods, one seed, ``--steps``
steps) twice, each in a fresh process, against one new cache directory, with the settings
`reweight.main` uses (``jax_compilation_cache_dir``, every compilation kept): the first run
compiles and fills the cache, the second reads it. Reports each run's wall time and the time
XLA spent compiling (JAX's ``/jax/core/compile/backend_compile_duration`` events), the
cache hits, and the warm / cold ratios.

  python benchmarks/compilation_cache.py [--steps 60] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_run(cache_dir: str, workdir: str, steps: int) -> dict:
  """Runs the experiment in this process (called in a subprocess) and measures it."""
  import jax
  from jax import monitoring

  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  events, seconds = collections.Counter(), collections.Counter()
  monitoring.register_event_listener(lambda name, **kw: events.update([name]))
  monitoring.register_event_duration_secs_listener(
      lambda name, duration, **kw: seconds.update({name: duration}))
  sys.path.insert(0, ROOT)
  from configs import default
  from reweight.train import experiment

  config = default.get_config()
  config.steps, config.seeds = steps, (0,)
  start = time.perf_counter()
  experiment.run(config, workdir, progress=False)
  return {"wall_s": time.perf_counter() - start,
          "compile_s": seconds["/jax/core/compile/backend_compile_duration"],
          "cache_hits": events["/jax/compilation_cache/cache_hits"],
          "cache_misses": events["/jax/compilation_cache/cache_misses"]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
  parser.add_argument("--one-run", nargs=2, metavar=("CACHE_DIR", "WORKDIR"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one_run:
    print(json.dumps(one_run(*args.one_run, args.steps)))
    return
  with tempfile.TemporaryDirectory() as tmp:
    runs = {}
    for name in ("cold", "warm"):
      out = subprocess.run(
          [sys.executable, __file__, "--steps", str(args.steps), "--one-run",
           os.path.join(tmp, "cache"), os.path.join(tmp, name)],
          capture_output=True, text=True, check=True, cwd=ROOT)
      runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
  result = {**runs, "steps": args.steps,
            "wall_ratio": runs["warm"]["wall_s"] / runs["cold"]["wall_s"],
            "compile_ratio": runs["warm"]["compile_s"] / runs["cold"]["compile_s"]}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "compilation_cache.json"), "w") as f:
    json.dump(result, f, indent=1)
  for name, r in runs.items():
    print(f"{name}: wall {r['wall_s']:.1f} s, compiling {r['compile_s']:.1f} s, "
          f"cache hits {r['cache_hits']}, misses {r['cache_misses']}")
  print(f"warm / cold: wall {result['wall_ratio']:.2f}, compiling {result['compile_ratio']:.3f}")


if __name__ == "__main__":
  main()
