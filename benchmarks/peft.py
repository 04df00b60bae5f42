"""Cost of LoRA against full fine-tuning: step time, optimizer state, merged inference.

In one process, for the MLP (digits-sized inputs, LoRA on the hidden kernels) and the small
Transformer language model (LoRA on ``.*(query|value)/kernel``):

* train step: a jitted full fine-tuning step (gradient of every parameter, Adam on every
  parameter) and a jitted LoRA step (gradient of the adapter only through
  ``reparam.apply(trainable, frozen)``, Adam on the adapter only). Steps are timed in
  interleaved rounds (full, LoRA, full, ...); per round the mean step time of each, and
  the ratio LoRA / full; the reported ratio is the median over rounds.
* optimizer state: `reweight.reparam.tree_bytes` of Adam's state for each, against the
  ratio of trainable parameters (Adam keeps two moments per parameter, plus a step count).
* merged inference: the LoRA-fine-tuned parameters merged once with `reweight.reparam.merge`
  and run through the plain model, against the base model's forward (same shapes, so the
  ratio should be 1); and, for contrast, the unmerged forward (``apply`` inside the
  jitted forward, recomputing ``K + s A B`` every call).

  python benchmarks/peft.py [--rounds 30] [--steps 20] [--rank 8] [--out benchmarks/results]
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

from reweight.losses import sequence_mean, softmax_cross_entropy
from reweight.reparam import lora, merge, tree_bytes
from reweight.train.models import functional, make_model


def mlp_problem(batch_size: int = 128):
  """MLP 64 -> 256 -> 256 -> 10 on a digits-sized batch; LoRA on the hidden kernels."""
  fn = functional(make_model("mlp", seed=0, in_features=64, hidden=(256, 256),
                             num_classes=10))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch_size, 64)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)

  def loss(params, batch):
    return jnp.mean(softmax_cross_entropy(fn.apply(params, batch[0]), batch[1]))

  return fn, (x, y), loss, r"hidden/\d+/kernel"


def transformer_problem(batch_size: int = 32, seq_len: int = 64, vocab: int = 256):
  """Decoder-only Transformer (D=64, 2 blocks) on next-token prediction; LoRA on q and v."""
  fn = functional(make_model("transformer", seed=0, vocab_size=vocab, d_model=64, num_heads=4,
                             num_layers=2, max_len=seq_len))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, vocab, (batch_size, seq_len + 1)), jnp.int32)

  def loss(params, batch):
    logits = fn.apply(params, batch[0])
    return jnp.mean(sequence_mean(softmax_cross_entropy(logits, batch[1])))

  return fn, (tokens[:, :-1], tokens[:, 1:]), loss, r".*(query|value)/kernel"


PROBLEMS = {"mlp": mlp_problem, "transformer": transformer_problem}


def make_steps(loss, reparam, optimizer):
  """Jitted ``step(carry, batch, frozen) -> (carry, loss)`` for full fine-tuning and LoRA.

  The carry is ``(params, opt_state)`` for full fine-tuning (``frozen`` unused) and
  ``(trainable, opt_state)`` for LoRA.
  """

  def update(loss_of, carry):
    variables, opt_state = carry
    value, grads = jax.value_and_grad(loss_of)(variables)
    updates, opt_state = optimizer.update(grads, opt_state, variables)
    return (optax.apply_updates(variables, updates), opt_state), value

  @jax.jit
  def full(carry, batch, frozen):
    del frozen
    return update(lambda p: loss(p, batch), carry)

  @jax.jit
  def adapter(carry, batch, frozen):
    return update(lambda t: loss(reparam.apply(t, frozen), batch), carry)

  return full, adapter


def _timed(step, carry, batch, frozen, steps: int):
  """Mean seconds per step over ``steps`` chained steps, and the last carry."""
  t0 = time.perf_counter()
  for _ in range(steps):
    carry, value = step(carry, batch, frozen)
  jax.block_until_ready((carry, value))
  return (time.perf_counter() - t0) / steps, carry


def _timed_forward(fn, args, steps: int) -> float:
  out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps


def _summary(ratios, times_a, times_b) -> dict:
  ratios = np.asarray(ratios)
  return {"ratio": float(np.median(ratios)),
          "ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
          "reference_ms": 1e3 * float(np.median(times_a)),
          "measured_ms": 1e3 * float(np.median(times_b))}


def measure(name: str, rank: int, rounds: int, steps: int) -> dict:
  """All measurements of one problem."""
  fn, batch, loss, targets = PROBLEMS[name]()
  reparam = lora(rank, 2.0 * rank, targets)
  optimizer = optax.adam(1e-3)
  params = fn.params
  trainable, frozen = reparam.init(params, jax.random.key(0))
  full_state, lora_state = optimizer.init(params), optimizer.init(trainable)
  full, adapter = make_steps(loss, reparam, optimizer)

  n_full = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  n_lora = sum(int(np.size(x)) for x in jax.tree.leaves(trainable))
  out = {
      "targets": targets, "rank": rank,
      "params": {"full": n_full, "lora": n_lora, "ratio": n_lora / n_full},
      "opt_state_bytes": {"full": tree_bytes(full_state), "lora": tree_bytes(lora_state),
                          "ratio": tree_bytes(lora_state) / tree_bytes(full_state)},
  }

  # Train steps: warm up (compile), then interleaved rounds.
  carry_full, carry_lora = (params, full_state), (trainable, lora_state)
  _, carry_full = _timed(full, carry_full, batch, frozen, 3)
  _, carry_lora = _timed(adapter, carry_lora, batch, frozen, 3)
  ratios, t_full, t_lora = [], [], []
  for _ in range(rounds):
    tf, carry_full = _timed(full, carry_full, batch, frozen, steps)
    tl, carry_lora = _timed(adapter, carry_lora, batch, frozen, steps)
    ratios.append(tl / tf)
    t_full.append(tf)
    t_lora.append(tl)
  out["train_step"] = _summary(ratios, t_full, t_lora)

  # Inference: base model vs merged LoRA model (a trained, non-zero adapter) vs unmerged.
  tuned = carry_lora[0]
  merged = jax.block_until_ready(merge(reparam, tuned, frozen))
  forward = jax.jit(fn.apply)
  unmerged = jax.jit(lambda t, f, x: fn.apply(reparam.apply(t, f), x))
  x = batch[0]
  delta = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(merged), jax.tree.leaves(params), strict=True))
  out["merged_differs_from_base"] = delta
  # The merged model computes what the adapter computes (up to float32 rounding).
  out["merged_vs_unmerged_max_abs_logit_diff"] = float(jnp.max(jnp.abs(
      forward(merged, x) - unmerged(tuned, frozen, x))))
  r_merged, r_unmerged, t_base, t_merged, t_unmerged = [], [], [], [], []
  for _ in range(rounds):
    tb = _timed_forward(forward, (params, x), steps)
    tm = _timed_forward(forward, (merged, x), steps)
    tu = _timed_forward(unmerged, (tuned, frozen, x), steps)
    r_merged.append(tm / tb)
    r_unmerged.append(tu / tb)
    t_base.append(tb)
    t_merged.append(tm)
    t_unmerged.append(tu)
  out["merged_inference"] = _summary(r_merged, t_base, t_merged)
  out["unmerged_inference"] = _summary(r_unmerged, t_base, t_unmerged)
  return out


def format_table(results: dict) -> str:
  lines = ["| model | LoRA targets | params LoRA / full | opt-state bytes LoRA / full | "
           "train step LoRA / full | merged inference / base | unmerged inference / base |",
           "|---|---|---|---|---|---|---|"]

  def cell(s):
    return (f"{s['ratio']:.2f} (IQR {s['ratio_iqr'][0]:.2f}–{s['ratio_iqr'][1]:.2f}; "
            f"{s['measured_ms']:.3f} vs {s['reference_ms']:.3f} ms)")

  for name, r in results.items():
    p, o = r["params"], r["opt_state_bytes"]
    targets = r["targets"].replace("|", "\\|")  # a literal pipe would split the cell
    lines.append(
        f"| {name} | `{targets}` r={r['rank']} | {p['lora']:,} / {p['full']:,} = "
        f"{p['ratio']:.4f} | {o['lora']:,} / {o['full']:,} = {o['ratio']:.4f} | "
        f"{cell(r['train_step'])} | {cell(r['merged_inference'])} | "
        f"{cell(r['unmerged_inference'])} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--problems", default="mlp,transformer")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args()
  results = {}
  for name in args.problems.split(","):
    if name not in PROBLEMS:
      raise ValueError(f"problem={name!r} is not one of {sorted(PROBLEMS)}")
    results[name] = measure(name, args.rank, args.rounds, args.steps)
  table = format_table(results)
  print(table)
  os.makedirs(args.out, exist_ok=True)
  meta = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "jax": jax.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
          "rounds": args.rounds, "steps": args.steps}
  with open(os.path.join(args.out, "peft.json"), "w") as f:
    json.dump({"meta": meta, "results": results, "table": table}, f, indent=1)


if __name__ == "__main__":
  main()
