"""Step-time overhead of the meta weightings (L2RW, Meta-Weight-Net, self-taught).

Times one jitted training step of a small MLP (64 -> 128 -> 10, ReLU, batch 128) with plain
``optax.sgd`` on the mean cross-entropy, and the same step through `reweight.weighted` with
each weighting, and prints each step's median time and its ratio to the plain step, and the
ratio of XLA's flop counts of the compiled steps (independent of machine load). Methods are
timed in interleaved rounds so that a change in machine load hits them alike.

Usage::

  python benchmarks/meta_cost.py [--batch 128] [--meta-batch 128] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import reweight
from reweight.sample.meta import l2rw, meta_weight_net, self_taught


def init_mlp(key, sizes):
  params = []
  keys = jax.random.split(key, len(sizes) - 1)
  for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True):
    params.append({"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)})
  return params


def per_example(params, batch):
  h = batch["x"]
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
  logits = h @ params[-1]["w"] + params[-1]["b"]
  return reweight.losses.softmax_cross_entropy(logits, batch["y"]), {"logits": logits}


def make_steps(optimizer, weightings):
  @jax.jit
  def plain(params, opt_state, ws, batch, meta):
    del ws, meta
    loss, g = jax.value_and_grad(lambda p: per_example(p, batch)[0].mean())(params)
    updates, opt_state = optimizer.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, None, loss

  steps = {"plain": (plain, None)}
  for name, wt in weightings.items():
    loss_fn = reweight.weighted(per_example, wt)

    def step(params, opt_state, ws, batch, meta, loss_fn=loss_fn):
      (loss, (ws, _)), g = jax.value_and_grad(loss_fn, has_aux=True)(
          params, batch, ws, meta_batch=meta)
      updates, opt_state = optimizer.update(g, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, ws, loss

    steps[name] = (jax.jit(step), wt.init())
  return steps


def compiled_flops(fn, *args) -> float:
  """XLA's flop count of the compiled step (0 where the backend does not report it)."""
  cost = fn.lower(*args).compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--meta-batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=200, help="timed steps per method")
  parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--json", default=None, help="write the results to this file")
  args = parser.parse_args(argv)

  key = jax.random.PRNGKey(0)
  kp, kx, ky, kmx, kmy = jax.random.split(key, 5)
  params = init_mlp(kp, [64, 128, 10])
  batch = {"x": jax.random.normal(kx, (args.batch, 64)),
           "y": jax.random.randint(ky, (args.batch,), 0, 10)}
  meta = {"x": jax.random.normal(kmx, (args.meta_batch, 64)),
          "y": jax.random.randint(kmy, (args.meta_batch,), 0, 10)}
  optimizer = optax.sgd(0.1)
  weightings = {
      "uniform (weighted)": reweight.uniform(),
      "l2rw (jvp)": l2rw(0.1),
      "l2rw (lookahead)": l2rw(0.1, method="lookahead"),
      "meta_weight_net (jvp)": meta_weight_net(inner_lr=0.1),
      "meta_weight_net (exact_second_order)": meta_weight_net(
          inner_lr=0.1, method="exact_second_order"),
      "self_taught": self_taught(inner_lr=0.1),
  }
  steps = make_steps(optimizer, weightings)
  carry = {name: (params, optimizer.init(params), ws) for name, (_, ws) in steps.items()}
  flops = {name: compiled_flops(fn, *carry[name], batch, meta) for name, (fn, _) in steps.items()}

  def run(name, n, record):
    fn = steps[name][0]
    p, o, ws = carry[name]
    for _ in range(n):
      t0 = time.perf_counter()
      p, o, ws, loss = fn(p, o, ws, batch, meta)
      jax.block_until_ready((p, loss))
      if record is not None:
        record.append(time.perf_counter() - t0)
    carry[name] = (p, o, ws)

  for name in steps:
    run(name, args.warmup, None)
  times = {name: [] for name in steps}
  per_round = max(1, args.steps // args.rounds)
  for _ in range(args.rounds):
    for name in steps:
      run(name, per_round, times[name])

  plain = statistics.median(times["plain"])
  results = {name: {"median_ms": 1e3 * statistics.median(t),
                    "ratio": statistics.median(t) / plain, "steps": len(t),
                    "flops_ratio": flops[name] / flops["plain"] if flops["plain"] else None}
             for name, t in times.items()}
  print(f"backend={jax.default_backend()} batch={args.batch} meta_batch={args.meta_batch} "
        f"MLP 64-128-10, median of {per_round * args.rounds} steps")
  print(f"  {'':40s} {'median':>11s}   {'ratio':>5s}   {'XLA flops ratio':>15s}")
  for name, r in results.items():
    fr = "n/a" if r["flops_ratio"] is None else f"x{r['flops_ratio']:.2f}"
    print(f"  {name:40s} {r['median_ms']:8.3f} ms   x{r['ratio']:.2f}   {fr:>15s}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "backend": jax.default_backend(), "results": results}, f,
                indent=2)
  return results


if __name__ == "__main__":
  main()
