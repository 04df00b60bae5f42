"""Step-time overhead of `reweight.weighted` against a plain optax step, as ratios.

In one process, for the MLP (digits-sized inputs) and the small Transformer (sequence
classification),
times a plain jitted step (per-example cross-entropy, mean, Adam) and the same step through
`reweight.weighted` with each weighting. Steps are timed in interleaved rounds (plain,
weighted, plain, ...) so that machine noise hits both alike; the ratio is the median over
rounds of (weighted time / plain time), with its interquartile range, next to the ratio of
XLA's compiled flop counts. ``--only`` re-times some weightings and keeps the other rows of
the results file.

  python benchmarks/overhead.py [--rounds 30] [--steps 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import reweight
from reweight.losses import softmax_cross_entropy
from reweight.train.models import functional, make_model

NUM_EXAMPLES = 4096  # size of the (virtual) training set behind per-example tables
NUM_GROUPS = 8  # groups / domains of the batch for the group weightings


def weightings() -> dict[str, Callable[[], reweight.Weighting]]:
  """The weightings to time, by name (each gets its own compiled step)."""
  s = reweight.sample
  easiness = np.random.default_rng(0).random(NUM_EXAMPLES).astype(np.float32)
  out = {"uniform": reweight.uniform}
  for name in ("linupper", "quadratic", "extremes", "upper"):
    out[f"loss_based/{name}"] = lambda name=name: s.loss_based(name, r=1.0)
  out.update({
      "clip(loss_based)": lambda: reweight.clip(s.loss_based("upper", 0.3), 3.0),
      "focal_weights": lambda: s.focal_weights(2.0),
      "self_paced": lambda: s.self_paced(2.3),
      "ease_curriculum": lambda: s.ease_curriculum(steps_per_epoch=32, m=20,
                                                   easiness_table=easiness),
      "class_balanced": lambda: s.class_balanced(np.arange(1, 11) * 100, 0.999),
      "l2rw": lambda: s.l2rw(0.1),
      "meta_weight_net": lambda: s.meta_weight_net(),
      "self_taught": lambda: s.self_taught(),
      "group_dro": lambda: reweight.group.group_dro(NUM_GROUPS, 0.01),
      "doremi": lambda: reweight.group.doremi(NUM_GROUPS),
  })
  return out


def _classification_batch(x, num_classes, rng):
  n = x.shape[0]
  return {"x": x, "label": jnp.asarray(rng.integers(0, num_classes, n), jnp.int32),
          "id": jnp.asarray(rng.integers(0, NUM_EXAMPLES, n), jnp.int32),
          "group": jnp.asarray(rng.integers(0, NUM_GROUPS, n), jnp.int32),
          "ref_loss": jnp.asarray(rng.exponential(size=n), jnp.float32)}


def _per_example(fn):
  def per_example(params, batch):
    logits = fn.apply(params, batch["x"])
    return softmax_cross_entropy(logits, batch["label"]), {"logits": logits,
                                                          "labels": batch["label"]}
  return per_example


def mlp_problem(batch_size: int = 128, meta_size: int = 100):
  """MLP 64-256-256-10 on digits-sized inputs; a meta batch for the meta weightings."""
  fn = functional(make_model("mlp", seed=0, in_features=64, hidden=(256, 256),
                             num_classes=10))
  rng = np.random.default_rng(0)
  batch = _classification_batch(jnp.asarray(rng.random((batch_size, 64)), jnp.float32), 10, rng)
  meta = _classification_batch(jnp.asarray(rng.random((meta_size, 64)), jnp.float32), 10, rng)
  return fn.params, batch, meta, _per_example(fn)


def transformer_problem(batch_size: int = 32, seq_len: int = 64, vocab: int = 256,
                        meta_size: int = 32):
  """The small Transformer (2 layers, d=64) classifying token sequences into 10 classes."""
  fn = functional(make_model("transformer", seed=0, vocab_size=vocab, num_classes=10,
                             d_model=64, num_heads=4, num_layers=2, max_len=seq_len))
  rng = np.random.default_rng(0)
  tokens = lambda n: jnp.asarray(rng.integers(0, vocab, (n, seq_len)), jnp.int32)
  batch = _classification_batch(tokens(batch_size), 10, rng)
  meta = _classification_batch(tokens(meta_size), 10, rng)
  return fn.params, batch, meta, _per_example(fn)


def make_steps(params, per_example, weighting, optimizer):
  """A plain optax step and the same step through `reweight.weighted`, both jitted."""

  @jax.jit
  def plain(params, opt_state, batch):
    def loss_fn(p):
      return jnp.mean(per_example(p, batch)[0])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  loss_fn = reweight.weighted(per_example, weighting)

  @jax.jit
  def weighted(params, opt_state, wstate, batch, meta_batch):
    (loss, (wstate, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch, wstate, meta_batch=meta_batch, ref_losses=batch["ref_loss"])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, wstate, loss

  return plain, weighted


def time_steps(fn, args, steps):
  out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps


def compiled_flops(fn, args) -> float:
  """XLA's flop count of the compiled ``fn(*args)`` (does not drift with machine load)."""
  cost = fn.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def measure(problem, name, make_weighting, rounds, steps):
  params, batch, meta, per_example = problem
  optimizer = optax.adam(1e-3)
  weighting = make_weighting()
  plain, weighted = make_steps(params, per_example, weighting, optimizer)
  opt_state = optimizer.init(params)
  wstate = weighting.init(jax.random.PRNGKey(0))
  time_steps(plain, (params, opt_state, batch), 3)  # compile + warm up
  time_steps(weighted, (params, opt_state, wstate, batch, meta), 3)
  flops = (compiled_flops(weighted, (params, opt_state, wstate, batch, meta))
           / compiled_flops(plain, (params, opt_state, batch)))
  ratios, plain_times = [], []
  for _ in range(rounds):
    tp = time_steps(plain, (params, opt_state, batch), steps)
    tw = time_steps(weighted, (params, opt_state, wstate, batch, meta), steps)
    ratios.append(tw / tp)
    plain_times.append(tp)
  return {"ratio": float(np.median(ratios)), "ratio_iqr": [float(np.percentile(ratios, 25)),
                                                           float(np.percentile(ratios, 75))],
          "plain_ms": 1e3 * float(np.median(plain_times)), "flops_ratio": flops}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  parser.add_argument("--only", default="", help="comma-separated weighting names")
  args = parser.parse_args()
  problems = {"mlp": mlp_problem(), "transformer": transformer_problem()}
  todo = weightings()
  if args.only:
    todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
  results = {}
  for pname, problem in problems.items():
    for wname, make in todo.items():
      r = measure(problem, wname, make, args.rounds, args.steps)
      results[f"{pname}/{wname}"] = r
      print(f"{pname:12s} {wname:24s} ratio {r['ratio']:.3f} "
            f"(IQR {r['ratio_iqr'][0]:.3f}-{r['ratio_iqr'][1]:.3f}), flops "
            f"{r['flops_ratio']:.4f}, plain step {r['plain_ms']:.3f} ms", flush=True)
  save_results(os.path.join(args.out, "overhead.json"), results, partial=bool(args.only))


def save_results(path: str, results: dict, *, partial: bool = False, **meta) -> dict:
  """Writes ``{"meta": ..., "results": ...}`` to ``path`` (the machine in ``meta``).

  A ``partial`` run (some rows only) updates its rows of an existing file and keeps the
  rest. Returns the results written.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if partial and os.path.exists(path):
    with open(path) as f:
      results = {**json.load(f)["results"], **results}
  meta = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "jax": jax.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
          **meta}
  with open(path, "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=1)
  return results


if __name__ == "__main__":
  main()
