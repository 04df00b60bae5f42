"""Overhead of `reweight.objectives.mgda` over a linear combination of K objectives.

On a small MLP (64-256-256-10, batch 256) with K objectives (the cross-entropies of the
same logits against K label sets), times two jitted SGD steps:

* ``linear``: ``jax.value_and_grad`` of ``combine(losses, linear(w).init())`` (one forward,
  one backward);
* ``mgda``: `reweight.objectives.objective_grads` (one forward, a `jax.vmap`-ed pullback
  over the K objectives: K backward passes), the MGDA weights from the ``[K, K]`` Gram
  matrix (closed form for K = 2, Frank–Wolfe for K > 2), and the update ``Σ α_k g_k``.

Steps are timed in interleaved rounds (linear, then mgda) so that a change in machine load
hits both alike; the time ratio is the median over rounds of (mgda time / linear time in the
same round), with the interquartile range over rounds. Next to it, the ratio of XLA's flop
counts of the two compiled steps (independent of machine load).

Usage::

  python benchmarks/objectives.py [--ks 2,4] [--rounds 10] [--steps 20]
      [--json benchmarks/results/objectives.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from meta_cost import compiled_flops, write_json

from reweight import objectives
from reweight.losses import softmax_cross_entropy
from reweight.train.models import functional, make_model


def problem(k: int, batch_size: int = 256, in_features: int = 64, hidden=(256, 256)):
  """The MLP's functional form, its parameters and a batch with K label sets."""
  fn = functional(make_model("mlp", seed=0, in_features=in_features, hidden=hidden,
                             num_classes=10))
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(batch_size, in_features)), jnp.float32),
           "labels": jnp.asarray(rng.integers(0, 10, (k, batch_size)), jnp.int32)}
  return fn, batch


def make_steps(fn, k: int, lr: float = 0.01, max_iters: int = 20):
  def stacked(params, batch):
    logits = fn.apply(params, batch["x"])
    return jnp.stack([jnp.mean(softmax_cross_entropy(logits, batch["labels"][i]))
                      for i in range(k)])

  lin = objectives.linear(np.full(k, 1.0 / k))
  mg = objectives.mgda(k, max_iters=max_iters)

  @jax.jit
  def linear_step(params, state, batch):
    loss, g = jax.value_and_grad(lambda p: objectives.combine(stacked(p, batch), state)[0])(
        params)
    return jax.tree.map(lambda p, d: p - lr * d, params, g), state, loss

  @jax.jit
  def mgda_step(params, state, batch):
    losses, grads = objectives.objective_grads(stacked, params, batch)
    state = mg.update(state, losses=losses, grads=grads)
    d = jax.tree.map(lambda *gs: sum(a * gi for a, gi in zip(state.weights, gs)), *grads)
    loss = objectives.combine(losses, state)[0]
    return jax.tree.map(lambda p, u: p - lr * u, params, d), state, loss

  return {"linear": (linear_step, lin.init()), "mgda": (mgda_step, mg.init())}


def measure(k: int, rounds: int, steps_per_round: int, warmup: int, max_iters: int):
  fn, batch = problem(k)
  steps = make_steps(fn, k, max_iters=max_iters)
  carry = {name: (fn.params, st) for name, (_, st) in steps.items()}
  flops = {name: compiled_flops(f, *carry[name], batch) for name, (f, _) in steps.items()}

  def run(name, n):
    f = steps[name][0]
    p, st = carry[name]
    t0 = time.perf_counter()
    for _ in range(n):
      p, st, loss = f(p, st, batch)
    jax.block_until_ready((p, loss))
    carry[name] = (p, st)
    return (time.perf_counter() - t0) / max(n, 1)

  for name in steps:
    run(name, warmup)
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name in steps:
      times[name].append(run(name, steps_per_round))
  ratios = np.asarray(times["mgda"]) / np.asarray(times["linear"])
  return {
      "linear_ms": 1e3 * float(np.median(times["linear"])),
      "mgda_ms": 1e3 * float(np.median(times["mgda"])),
      "ratio": float(np.median(ratios)),
      "ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
      "flops_linear": flops["linear"], "flops_mgda": flops["mgda"],
      "flops_ratio": flops["mgda"] / flops["linear"] if flops["linear"] else None,
      "final_mgda_weights": np.asarray(carry["mgda"][1].weights).round(4).tolist(),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ks", default="2,4", help="comma-separated numbers of objectives")
  parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per method per round")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--max_iters", type=int, default=20, help="Frank–Wolfe steps (K > 2)")
  parser.add_argument("--json", default=None, help="write the results to this file")
  args = parser.parse_args(argv)
  out = {}
  print(f"backend={jax.default_backend()}, {args.rounds} rounds x {args.steps} steps")
  print(f"  {'K':>3s} {'linear ms':>10s} {'mgda ms':>10s} {'time ratio (IQR)':>24s} "
        f"{'XLA flops ratio':>16s}")
  for k in (int(s) for s in args.ks.split(",")):
    r = measure(k, args.rounds, args.steps, args.warmup, args.max_iters)
    out[f"K={k}"] = r
    fr = "n/a" if r["flops_ratio"] is None else f"{r['flops_ratio']:.3f}"
    lo, hi = r["ratio_iqr"]
    print(f"  {k:3d} {r['linear_ms']:10.3f} {r['mgda_ms']:10.3f} "
          f"{r['ratio']:8.3f} ({lo:.3f}-{hi:.3f}) {fr:>16s}", flush=True)
  if args.json:
    write_json(args.json, args, out)
  return out


if __name__ == "__main__":
  main()
