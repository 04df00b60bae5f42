"""Factored LoRA (`reweight.reparam.factored`) vs materialized LoRA vs full fine-tuning.

One process, three jitted Adam steps per problem: full fine-tuning of every parameter,
LoRA through ``reparam.apply`` (the kernel ``K + s A B`` is materialized, so the backward
pass forms the full kernel gradient) and LoRA through `reweight.reparam.factored`
(``x @ K + s (x @ A) @ B``). Steps are timed in interleaved rounds (full, materialized,
factored, full, ...) so machine noise hits all alike; each ratio is the median over rounds
of (variant time / full time) with its interquartile range, next to the ratio of XLA's
compiled flop counts (which do not drift with machine load).

Problems: the MLP 784-2048-2048-10 (batch 256, LoRA r=8 on both hidden kernels) and the
small Transformer of `benchmarks/overhead.py` (LoRA r=8 on the query and value kernels).

  python benchmarks/factored_lora.py [--rounds 15] [--steps 10] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from overhead import compiled_flops, save_results, time_steps, transformer_problem

from reweight.losses import softmax_cross_entropy
from reweight.reparam import factored, lora
from reweight.train.models import functional, make_model


def mlp_problem(batch_size: int = 256):
  """MLP 784-2048-2048-10 on MNIST-sized inputs; LoRA on both hidden kernels."""
  fn = functional(make_model("mlp", seed=0, in_features=784, hidden=(2048, 2048),
                             num_classes=10))
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.random((batch_size, 784)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)}
  return fn.params, batch, fn.apply, r"hidden/\d+/kernel"


def small_transformer_problem():
  """The Transformer of `benchmarks/overhead.py`; LoRA on the query and value kernels."""
  fn = functional(make_model("transformer", seed=0, vocab_size=256, num_classes=10,
                             d_model=64, num_heads=4, num_layers=2, max_len=64))
  batch = transformer_problem()[1]  # the same token batch (batch 32, length 64)
  return (fn.params, {"x": batch["x"], "label": batch["label"]}, fn.apply,
          r".*(query|value)/kernel")


def make_steps(apply_fn, reparam, optimizer):
  """Jitted ``step(variables, opt_state, frozen, batch)`` for full FT and the two LoRAs."""

  def step_of(logits_of):
    def loss(variables, frozen, batch):
      logits = logits_of(variables, frozen, batch["x"])
      return jnp.mean(softmax_cross_entropy(logits, batch["label"]))

    @jax.jit
    def step(variables, opt_state, frozen, batch):
      value, grads = jax.value_and_grad(loss)(variables, frozen, batch)
      updates, opt_state = optimizer.update(grads, opt_state, variables)
      return optax.apply_updates(variables, updates), opt_state, value
    return step

  full = step_of(lambda p, f, x: apply_fn(p, x))
  materialized = step_of(lambda t, f, x: apply_fn(reparam.apply(t, f), x))
  fac = factored(apply_fn, reparam)
  fast = step_of(lambda t, f, x: fac(t, f, x))
  return {"full": full, "materialized": materialized, "factored": fast}


def _summary(ratios) -> dict:
  return {"ratio": float(np.median(ratios)),
          "ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))]}


def measure(problem, rank: int, rounds: int, steps: int) -> dict:
  params, batch, apply_fn, targets = problem
  reparam = lora(rank, 2.0 * rank, targets)
  trainable, frozen = reparam.init(params, jax.random.key(0))
  # A trained-looking adapter (B != 0) so that no variant can skip work.
  trainable = jax.tree.map(lambda a: a + 1e-3, trainable)
  optimizer = optax.adam(1e-3)
  steps_of = make_steps(apply_fn, reparam, optimizer)
  args = {"full": (params, optimizer.init(params), frozen, batch),
          "materialized": (trainable, optimizer.init(trainable), frozen, batch),
          "factored": (trainable, optimizer.init(trainable), frozen, batch)}
  flops = {k: compiled_flops(s, args[k]) for k, s in steps_of.items()}
  for k, s in steps_of.items():
    time_steps(s, args[k], 2)  # compile + warm up
  times = {k: [] for k in steps_of}
  for _ in range(rounds):
    for k, s in steps_of.items():
      times[k].append(time_steps(s, args[k], steps))
  full = np.asarray(times["full"])
  out = {"targets": targets, "rank": rank, "full_ms": 1e3 * float(np.median(full))}
  for k in ("materialized", "factored"):
    out[k] = {**_summary(np.asarray(times[k]) / full),
              "ms": 1e3 * float(np.median(times[k])), "flops_ratio": flops[k] / flops["full"]}
  out["factored_vs_materialized"] = {
      **_summary(np.asarray(times["factored"]) / np.asarray(times["materialized"])),
      "flops_ratio": flops["factored"] / flops["materialized"]}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--only", default="", help="comma-separated problem names")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  problems = {"mlp": mlp_problem, "transformer": small_transformer_problem}
  if args.only:
    problems = {k: v for k, v in problems.items() if k in args.only.split(",")}
  results = {}
  for name, make in problems.items():
    r = measure(make(), args.rank, args.rounds, args.steps)
    results[name] = r
    for k in ("materialized", "factored"):
      print(f"{name:12s} {k:13s} vs full: time {r[k]['ratio']:.3f} (IQR "
            f"{r[k]['ratio_iqr'][0]:.3f}-{r[k]['ratio_iqr'][1]:.3f}), flops "
            f"{r[k]['flops_ratio']:.4f}, {r[k]['ms']:.2f} ms vs {r['full_ms']:.2f} ms",
            flush=True)
  command = " ".join(["python benchmarks/factored_lora.py",
                      *(sys.argv[1:] if argv is None else argv)])
  return save_results(os.path.join(args.out, "factored_lora.json"), results,
                      partial=bool(args.only), command=command)


if __name__ == "__main__":
  main()
