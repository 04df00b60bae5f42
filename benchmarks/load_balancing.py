"""Cost of global-batch load balancing (two passes) vs the per-micro-batch form.

On the byte-level MoE Transformer LM (vocab 256, 2 layers, d = 64, 4 experts top-1, expert
hidden 128, sequence 64, batch 16) times jitted Adam steps of
`reweight.train.moe_step.make_moe_train_step` (alpha = 0.01) with ``microbatches = M``:

* ``micro``: ``scope="micro"``, one pass (each micro-batch's forward and backward);
* ``global``: ``scope="global"``, two passes (a forward of every micro-batch for the
  routing statistics, then the forward and backward of every micro-batch);
* ``plain``: the same step with ``balance_coef = 0`` and ``scope="micro"`` (no balancing
  term at all), for scale.

For ``M = 1`` both scopes are one pass over the same tokens. Steps are timed in interleaved
rounds (plain, micro, global) so that a change in machine load hits them alike; the time
ratio is the median over rounds of (global / micro in the same round), with the
interquartile range over rounds. Next to it, the ratio of XLA's flop counts of the compiled
steps (independent of machine load); the expected flop ratio for ``M > 1`` is about
``(2 F + B) / (F + B)`` with ``F``, ``B`` the forward and backward flops, i.e. ~4/3.

Usage::

  python benchmarks/load_balancing.py [--ms 1,4,8] [--rounds 8] [--steps 5]
      [--json benchmarks/results/load_balancing.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from meta_cost import compiled_flops, write_json

import reweight
from reweight.train.models import apply_with_routing, functional, make_model
from reweight.train.moe_step import make_moe_train_step
from reweight.train.state import create


def problem(batch_size: int = 16, seq_len: int = 64):
  fn = functional(make_model("transformer", seed=0, vocab_size=256, d_model=64, num_heads=4,
                             num_layers=2, max_len=seq_len, num_experts=4,
                             experts_per_token=1, expert_hidden=128))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (batch_size, seq_len + 1))
  batch = {"x": jnp.asarray(tokens[:, :-1], jnp.int32), "y": jnp.asarray(tokens[:, 1:])}

  def loss_fn(params, b, *, key=None):
    del key
    logits, routing = apply_with_routing(fn, params, b["x"])
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, b["y"][..., None], -1)[..., 0], routing

  return fn, batch, loss_fn


def measure(m: int, rounds: int, steps_per_round: int, warmup: int) -> dict:
  fn, batch, loss_fn = problem()
  opt = optax.adam(1e-3)
  variants = {"plain": ("micro", 0.0), "micro": ("micro", 0.01), "global": ("global", 0.01)}
  steps = {name: jax.jit(make_moe_train_step(loss_fn, opt, 4, balance_coef=a, scope=s,
                                             microbatches=m))
           for name, (s, a) in variants.items()}
  state0 = create(fn.params, opt, reweight.uniform(), jax.random.key(0))
  carry = dict.fromkeys(steps, state0)
  flops = {name: compiled_flops(f, state0, batch) for name, f in steps.items()}

  def run(name, n):
    state = carry[name]
    t0 = time.perf_counter()
    for _ in range(n):
      state, metrics = steps[name](state, batch)
    jax.block_until_ready((state.trainable, metrics["loss"]))
    carry[name] = state
    return (time.perf_counter() - t0) / max(n, 1)

  for name in steps:
    run(name, warmup)
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name in steps:
      times[name].append(run(name, steps_per_round))
  t = {k: np.asarray(v) for k, v in times.items()}
  out = {f"{k}_ms": 1e3 * float(np.median(v)) for k, v in t.items()}
  for num, den in (("global", "micro"), ("micro", "plain")):
    r = t[num] / t[den]
    out[f"{num}_vs_{den}"] = float(np.median(r))
    out[f"{num}_vs_{den}_iqr"] = [float(np.percentile(r, 25)), float(np.percentile(r, 75))]
    out[f"{num}_vs_{den}_flops"] = flops[num] / flops[den] if flops[den] else None
  out["flops"] = flops
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ms", default="1,4,8", help="comma-separated numbers of micro-batches")
  parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", default=None, help="write the results to this file")
  args = parser.parse_args(argv)
  print(f"backend={jax.default_backend()}, {args.rounds} rounds x {args.steps} steps, "
        "batch 16 x 64 bytes")
  print(f"  {'M':>3s} {'micro ms':>9s} {'global ms':>10s} {'global/micro (IQR)':>26s} "
        f"{'flops ratio':>12s} {'micro/plain':>12s}")
  out = {}
  for m in (int(s) for s in args.ms.split(",")):
    r = measure(m, args.rounds, args.steps, args.warmup)
    out[f"M={m}"] = r
    lo, hi = r["global_vs_micro_iqr"]
    fr = r["global_vs_micro_flops"]
    print(f"  {m:3d} {r['micro_ms']:9.2f} {r['global_ms']:10.2f} {r['global_vs_micro']:10.3f} "
          f"({lo:.3f}-{hi:.3f}) {('n/a' if fr is None else f'{fr:.3f}'):>12s} "
          f"{r['micro_vs_plain']:12.3f}", flush=True)
  if args.json:
    write_json(args.json, args, out)
  return out


if __name__ == "__main__":
  main()
