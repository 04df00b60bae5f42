"""Overhead of `reweight.weighted_tokens` over a plain token-mean step (target: <= 1.05x).

On the byte-level Transformer LM (vocab 256, 2 layers, d = 64, sequence 64, batch 32, a
token mask with sequences of different lengths) times two jitted Adam steps:

* ``plain``: ``jax.value_and_grad`` of ``sum(m * l) / sum(m)`` of the token cross-entropies;
* ``weighted``: the same per-token loss through
  ``reweight.weighted_tokens(per_token_loss, weighting)`` with the weighting's state carried
  (``token_probability``: weights ``∝ sg(p_t)``, Dynamic Fine-Tuning; ``uniform``: the
  wrapper alone).

Steps are timed in interleaved rounds (plain, then each weighted step) so that a change in
machine load hits them alike; the time ratio is the median over rounds of (weighted time /
plain time in the same round), with the interquartile range over rounds. Next to it, the
ratio of XLA's flop counts of the two compiled steps (independent of machine load).

Usage::

  python benchmarks/token_weighting.py [--rounds 10] [--steps 10] [--batch 32]
      [--json benchmarks/results/token_weighting.json]
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
from reweight.train.models import functional, make_model


def problem(batch_size: int, seq_len: int = 64):
  fn = functional(make_model("transformer", seed=0, vocab_size=256, d_model=64, num_heads=4,
                             num_layers=2, max_len=seq_len))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (batch_size, seq_len + 1))
  lengths = rng.integers(seq_len // 4, seq_len + 1, batch_size)
  batch = {"x": jnp.asarray(tokens[:, :-1], jnp.int32), "y": jnp.asarray(tokens[:, 1:]),
           "token_mask": jnp.asarray(np.arange(seq_len)[None] < lengths[:, None])}
  return fn, batch


def make_steps(fn, weightings: dict, lr: float = 1e-3):
  opt = optax.adam(lr)

  def per_token_loss(params, batch):
    logp = jax.nn.log_softmax(fn.apply(params, batch["x"]))
    return -jnp.take_along_axis(logp, batch["y"][..., None], -1)[..., 0]

  def plain_loss(params, batch):
    losses, mask = per_token_loss(params, batch), batch["token_mask"]
    return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.sum(mask)

  @jax.jit
  def plain_step(params, opt_state, wstate, batch):
    loss, g = jax.value_and_grad(plain_loss)(params, batch)
    updates, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, wstate, loss

  steps = {"plain": (plain_step, ())}
  for name, weighting in weightings.items():
    loss_fn = reweight.weighted_tokens(per_token_loss, weighting)

    @jax.jit
    def step(params, opt_state, wstate, batch, loss_fn=loss_fn):
      (loss, (wstate, _)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch,
                                                                         wstate)
      updates, opt_state = opt.update(g, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, wstate, loss

    steps[name] = (step, weighting.init())
  return steps, opt.init(fn.params)


def measure(rounds: int, steps_per_round: int, warmup: int, batch_size: int) -> dict:
  fn, batch = problem(batch_size)
  weightings = {"token_probability": reweight.sample.token_probability(),
                "uniform": reweight.uniform()}
  steps, opt_state = make_steps(fn, weightings)
  carry = {name: (fn.params, opt_state, ws) for name, (_, ws) in steps.items()}
  flops = {name: compiled_flops(f, *carry[name], batch) for name, (f, _) in steps.items()}

  def run(name, n):
    f = steps[name][0]
    p, o, ws = carry[name]
    t0 = time.perf_counter()
    for _ in range(n):
      p, o, ws, loss = f(p, o, ws, batch)
    jax.block_until_ready((p, loss))
    carry[name] = (p, o, ws)
    return (time.perf_counter() - t0) / max(n, 1)

  for name in steps:
    run(name, warmup)
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name in steps:
      times[name].append(run(name, steps_per_round))
  out = {"plain_ms": 1e3 * float(np.median(times["plain"])), "flops_plain": flops["plain"]}
  for name in weightings:
    ratios = np.asarray(times[name]) / np.asarray(times["plain"])
    out[name] = {
        "ms": 1e3 * float(np.median(times[name])),
        "ratio": float(np.median(ratios)),
        "ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
        "flops": flops[name],
        "flops_ratio": flops[name] / flops["plain"] if flops["plain"] else None}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per method per round")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--json", default=None, help="write the results to this file")
  args = parser.parse_args(argv)
  print(f"backend={jax.default_backend()}, {args.rounds} rounds x {args.steps} steps, "
        f"batch {args.batch} x 64 bytes")
  r = measure(args.rounds, args.steps, args.warmup, args.batch)
  print(f"  plain token-mean step: {r['plain_ms']:.2f} ms")
  print(f"  {'weighting':>18s} {'ms':>8s} {'time ratio (IQR)':>24s} {'XLA flops ratio':>16s}")
  for name in ("token_probability", "uniform"):
    w = r[name]
    lo, hi = w["ratio_iqr"]
    fr = "n/a" if w["flops_ratio"] is None else f"{w['flops_ratio']:.4f}"
    print(f"  {name:>18s} {w['ms']:8.2f} {w['ratio']:8.3f} ({lo:.3f}-{hi:.3f}) {fr:>16s}",
          flush=True)
  if args.json:
    write_json(args.json, args, r)
  return r


if __name__ == "__main__":
  main()
