"""Time to first step: a plain optax step vs the same step through `reweight.weighted`, and LoRA.

For the MLP and the small Transformer of `overhead.py` (same models, batches and meta
batches), builds a fresh jitted step and times its first call: tracing and lowering,
XLA compilation and the first run (``jit(f).lower(...)``, ``.compile()``, the call; their
sum is what the first call of ``jax.jit(f)`` costs). The steps:

* ``plain``: per-example cross-entropy, mean, Adam (the reference of every ratio);
* ``uniform``, ``loss_based`` (``linupper``), ``l2rw``: `reweight.weighted` with that
  weighting, Adam (as in `overhead.py`);
* ``lora``: the plain step on a rank-8 LoRA adapter (`reweight.reparam.lora` on the MLP's
  hidden kernels / the Transformer's query and value kernels), gradients through
  ``reparam.apply(trainable, frozen)``, Adam on the adapter only.

JAX's persistent compilation cache is disabled and its in-memory caches are cleared before
every measurement, so each one compiles from scratch. Steps are measured in interleaved
rounds (plain, uniform, ..., plain, ...); a ratio is the median over rounds of (variant time
/ plain time of the same round).

  python benchmarks/compile_time.py [--rounds 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from overhead import make_steps, mlp_problem, transformer_problem

import reweight
from reweight.reparam import lora

PROBLEMS = {"mlp": (mlp_problem, r"hidden/\d+/kernel"),
            "transformer": (transformer_problem, r".*(query|value)/kernel")}
WEIGHTINGS = {"uniform": lambda: reweight.uniform(),
              "loss_based": lambda: reweight.sample.loss_based("linupper", r=1.0),
              "l2rw": lambda: reweight.sample.l2rw(0.1)}
VARIANTS = ("plain", *WEIGHTINGS, "lora")


def builders(problem, targets: str, rank: int = 8) -> dict:
  """``{variant: () -> (fresh jitted step, its arguments)}`` for one problem."""
  params, batch, meta, per_example = problem
  optimizer = optax.adam(1e-3)
  out = {}

  def plain():
    step, _ = make_steps(params, per_example, reweight.uniform(), optimizer)
    return step, (params, optimizer.init(params), batch)

  out["plain"] = plain
  for name, make in WEIGHTINGS.items():
    def weighted(make=make):
      weighting = make()
      _, step = make_steps(params, per_example, weighting, optimizer)
      return step, (params, optimizer.init(params), weighting.init(jax.random.PRNGKey(0)),
                    batch, meta)
    out[name] = weighted

  reparam = lora(rank, 2.0 * rank, targets)
  trainable, frozen = reparam.init(params, jax.random.key(0))

  def lora_step():
    @jax.jit
    def step(trainable, opt_state, frozen, batch):
      def loss_fn(t):
        return jnp.mean(per_example(reparam.apply(t, frozen), batch)[0])
      loss, grads = jax.value_and_grad(loss_fn)(trainable)
      updates, opt_state = optimizer.update(grads, opt_state, trainable)
      return optax.apply_updates(trainable, updates), opt_state, loss
    return step, (trainable, optimizer.init(trainable), frozen, batch)

  out["lora"] = lora_step
  return out


def compile_first_step(build):
  """``(compiled step, its arguments, seconds)`` of a freshly built step.

  Seconds of tracing + lowering, compiling and the first run (``total``, ``lower``,
  ``compile``, ``run``), with JAX's in-memory caches cleared first.
  """
  jax.clear_caches()
  step, args = build()
  jax.block_until_ready(args)
  t0 = time.perf_counter()
  lowered = step.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  t3 = time.perf_counter()
  return compiled, args, {"total": t3 - t0, "lower": t1 - t0, "compile": t2 - t1,
                          "run": t3 - t2}


def first_step(build) -> dict[str, float]:
  """Seconds of tracing + lowering, compiling and the first run of a freshly built step."""
  return compile_first_step(build)[2]


def measure(name: str, rounds: int) -> dict:
  """Medians over rounds of each variant's times and of its ratios against ``plain``."""
  make_problem, targets = PROBLEMS[name]
  steps = builders(make_problem(), targets)
  first_step(steps["plain"])  # warms up JAX's own one-time costs, not counted
  times = {v: [] for v in VARIANTS}
  for _ in range(rounds):
    for v in VARIANTS:
      times[v].append(first_step(steps[v]))
  out = {}
  for v in VARIANTS:
    ratios = [t["total"] / p["total"] for t, p in zip(times[v], times["plain"])]
    out[v] = {"ratio": float(np.median(ratios)),
              "ratio_iqr": [float(np.percentile(ratios, 25)),
                            float(np.percentile(ratios, 75))],
              **{f"{k}_s": float(np.median([t[k] for t in times[v]]))
                 for k in ("total", "lower", "compile", "run")}}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args()
  jax.config.update("jax_enable_compilation_cache", False)
  results = {}
  for name in PROBLEMS:
    results[name] = measure(name, args.rounds)
    for v, r in results[name].items():
      print(f"{name:12s} {v:11s} ratio {r['ratio']:.2f} (IQR {r['ratio_iqr'][0]:.2f}-"
            f"{r['ratio_iqr'][1]:.2f}), first step {r['total_s']:.3f} s (lower "
            f"{r['lower_s']:.3f}, compile {r['compile_s']:.3f}, run {r['run_s']:.3f})",
            flush=True)
  os.makedirs(args.out, exist_ok=True)
  meta = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "jax": jax.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
          "rounds": args.rounds, "compilation_cache": False}
  with open(os.path.join(args.out, "compile_time.json"), "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
