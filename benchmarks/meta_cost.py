"""Step-time and flop overhead of the meta weightings (L2RW, Meta-Weight-Net, self-taught).

For two problems, the MLP 784-2048-2048-10 (batch 256, meta batch 100) and the small
Transformer (2 layers, d=64, sequence 64, 10 classes; batch 64, meta batch 32), times a
plain jitted Adam step on the mean cross-entropy and the same step through
`reweight.weighted` with each weighting. Steps are timed in interleaved rounds (plain, then
each weighting) so that a change in machine load hits them alike; a weighting's time ratio
is the median over rounds of (its time / the plain step's time in the same round), with the
interquartile range over rounds. Next to it, the ratio of XLA's flop counts of the compiled
steps (independent of machine load), and a breakdown of those flops into forward, backward,
tangent (forward-mode) and meta-gradient passes with the floors they imply for L2RW and
Meta-Weight-Net (`flop_breakdown`).

Usage::

  python benchmarks/meta_cost.py [--problems mlp,transformer] [--rounds 10] [--steps 5]
      [--only uniform,l2rw] [--json benchmarks/results/meta_cost.json]
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

import reweight
from reweight.losses import softmax_cross_entropy
from reweight.sample.meta import l2rw, meta_weight_net, self_taught
from reweight.train.models import functional, make_model


def weightings() -> dict[str, reweight.Weighting]:
  """The weightings to time, by name."""
  return {
      "uniform": reweight.uniform(),
      "l2rw": l2rw(0.1),
      "l2rw (lookahead)": l2rw(0.1, method="lookahead"),
      "meta_weight_net": meta_weight_net(inner_lr=0.1),
      "meta_weight_net (exact_second_order)": meta_weight_net(
          inner_lr=0.1, method="exact_second_order"),
      "self_taught": self_taught(inner_lr=0.1),
  }


def _batch(x, rng):
  return {"x": x, "label": jnp.asarray(rng.integers(0, 10, x.shape[0]), jnp.int32)}


def mlp_problem(batch_size: int = 256, meta_size: int = 100):
  """MLP 784-2048-2048-10 (ReLU) on MNIST-sized inputs."""
  fn = functional(make_model("mlp", seed=0, in_features=784, hidden=(2048, 2048),
                             num_classes=10))
  rng = np.random.default_rng(0)
  x = lambda n: jnp.asarray(rng.random((n, 784)), jnp.float32)
  return fn, _batch(x(batch_size), rng), _batch(x(meta_size), rng)


def transformer_problem(batch_size: int = 64, meta_size: int = 32, seq_len: int = 64,
                        vocab: int = 256):
  """The small Transformer (2 layers, d=64, 4 heads) classifying token sequences."""
  fn = functional(make_model("transformer", seed=0, vocab_size=vocab, num_classes=10,
                             d_model=64, num_heads=4, num_layers=2, max_len=seq_len))
  rng = np.random.default_rng(0)
  tokens = lambda n: jnp.asarray(rng.integers(0, vocab, (n, seq_len)), jnp.int32)
  return fn, _batch(tokens(batch_size), rng), _batch(tokens(meta_size), rng)


PROBLEMS = {"mlp": mlp_problem, "transformer": transformer_problem}


def make_steps(fn, optimizer, weightings):
  def per_example(params, batch):
    logits = fn.apply(params, batch["x"])
    return softmax_cross_entropy(logits, batch["label"]), {"logits": logits}

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


def write_json(path: str, args: argparse.Namespace, results: dict) -> None:
  """``{"args", "meta" (the machine), "results"}`` as JSON at ``path``."""
  meta = {"backend": jax.default_backend(), "jax": jax.__version__,
          "machine": platform.machine(), "cpus": os.cpu_count()}
  with open(path, "w") as f:
    json.dump({"args": vars(args), "meta": meta, "results": results}, f, indent=1)


def compiled_flops(fn, *args) -> float:
  """XLA's flop count of the compiled step (0 where the backend does not report it)."""
  cost = fn.lower(*args).compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def flop_breakdown(problem: str) -> dict[str, float]:
  """XLA flop counts of the parts of a meta step, in forward passes of the batch.

  ``forward`` (1 by definition), ``backward`` (a gradient minus its forward), ``tangent``
  (a `jax.jvp` along the parameters minus its forward) and ``meta`` (a gradient of the
  meta batch's mean loss); and the floors they imply, as ratios to a plain step (forward +
  backward): L2RW's ``1 + (tangent + meta) / (forward + backward)`` (one forward, one
  tangent pass, one backward, one meta gradient) and Meta-Weight-Net's, which adds a
  backward pass for the lookahead.
  """
  fn, batch, meta = PROBLEMS[problem]()
  params = fn.params

  def losses(p, b):
    return softmax_cross_entropy(fn.apply(p, b["x"]), b["label"])

  flops = lambda f, *a: compiled_flops(jax.jit(f), *a)
  fwd = flops(lambda p: losses(p, batch), params)
  grad = flops(jax.grad(lambda p: losses(p, batch).mean()), params)
  jvp = flops(lambda p, t: jax.jvp(lambda q: losses(q, batch), (p,), (t,)), params, params)
  meta_grad = flops(jax.grad(lambda p: losses(p, meta).mean()), params)
  out = {"forward": 1.0, "backward": (grad - fwd) / fwd, "tangent": (jvp - fwd) / fwd,
         "meta": meta_grad / fwd}
  plain = out["forward"] + out["backward"]
  out["l2rw_floor"] = 1 + (out["tangent"] + out["meta"]) / plain
  out["meta_weight_net_floor"] = out["l2rw_floor"] + out["backward"] / plain
  return out


def measure(problem: str, names, rounds: int, steps_per_round: int, warmup: int):
  fn, batch, meta = PROBLEMS[problem]()
  optimizer = optax.adam(1e-3)
  todo = {k: v for k, v in weightings().items() if k in names}
  steps = make_steps(fn, optimizer, todo)
  params = fn.params
  carry = {name: (params, optimizer.init(params), ws) for name, (_, ws) in steps.items()}
  flops = {name: compiled_flops(f, *carry[name], batch, meta) for name, (f, _) in steps.items()}

  def run(name, n):
    f = steps[name][0]
    p, o, ws = carry[name]
    t0 = time.perf_counter()
    for _ in range(n):
      p, o, ws, loss = f(p, o, ws, batch, meta)
    jax.block_until_ready((p, loss))
    carry[name] = (p, o, ws)
    return (time.perf_counter() - t0) / max(n, 1)

  for name in steps:
    run(name, warmup)
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name in steps:
      times[name].append(run(name, steps_per_round))
  plain = np.asarray(times["plain"])
  results = {}
  for name, t in times.items():
    ratios = np.asarray(t) / plain
    results[name] = {
        "ratio": float(np.median(ratios)),
        "ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
        "median_ms": 1e3 * float(np.median(t)),
        "flops_ratio": flops[name] / flops["plain"] if flops["plain"] else None,
        "flops": flops[name]}
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--problems", default="mlp,transformer")
  parser.add_argument("--only", default="", help="comma-separated weighting names")
  parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per method per round")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", default=None, help="write the results to this file")
  args = parser.parse_args(argv)
  names = list(weightings()) if not args.only else args.only.split(",")
  out = {}
  for problem in args.problems.split(","):
    results = measure(problem, names, args.rounds, args.steps, args.warmup)
    parts = flop_breakdown(problem)
    out[problem] = {**results, "flop_breakdown": parts}
    print(f"{problem}: backend={jax.default_backend()}, {args.rounds} rounds x "
          f"{args.steps} steps; plain step {results['plain']['median_ms']:.2f} ms")
    print(f"  {'':38s} {'time ratio (IQR)':>22s}   {'XLA flops ratio':>15s}")
    for name, r in results.items():
      fr = "n/a" if r["flops_ratio"] is None else f"{r['flops_ratio']:.3f}"
      lo, hi = r["ratio_iqr"]
      print(f"  {name:38s} {r['ratio']:6.3f} ({lo:.3f}-{hi:.3f})   {fr:>15s}", flush=True)
    print("  flops in forward passes of the batch: " + ", ".join(
        f"{k} {v:.3f}" for k, v in parts.items() if not k.endswith("floor")))
    print(f"  floor (flops / plain): l2rw {parts['l2rw_floor']:.3f}, meta_weight_net "
          f"{parts['meta_weight_net_floor']:.3f}", flush=True)
  if args.json:
    write_json(args.json, args, out)
  return out


if __name__ == "__main__":
  main()
