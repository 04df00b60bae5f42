"""Throughput of `reweight.data.online_mixture_sampler` against the train step it feeds.

In one process, for two problems at the same batch size:

* **lm**: the small byte-level Transformer of ``experiments/lm_schedules.py`` (2 layers,
  d=64, 4 heads, sequence 64, batch 16) trained with AdamW on the six domains of
  `reweight.data.domain_corpus`; a batch is ``refresh`` (new proportions every step, the
  worst case) + ``groups`` (the plan) + `reweight.data.domain_lm_batch` (window gather and
  fresh noise bytes).
* **mlp**: the MLP 64-256-256-10 on scikit-learn's digits (batch 128) with Adam; groups are
  the 10 classes; a batch is ``refresh`` + ``indices`` (plan + members) + the gather of the
  rows.

The step is the repository's (`reweight.train.make_train_step` with `reweight.uniform`,
jitted, as in ``experiments/lm_schedules.py``). Batches/s of the sampler (host NumPy, as in
a training loop) are compared with steps/s of the step (dispatch + compute, synchronised at
the end of each timed block); each is the median over interleaved rounds ("ratio"; "best":
fastest round of each, less sensitive to other load on the machine). The sampler is
timed twice: with proportions that change at every step and ``update_every=1`` (every
refresh validates new proportions: the worst case of an online policy), and with
``update_every=10``. The ratio sampler / step must stay >= 20.

  python benchmarks/sampler_throughput.py [--rounds 5] [--out benchmarks/results]
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
from sklearn.datasets import load_digits

import reweight
from reweight import losses
from reweight.data import domain_text
from reweight.data.online_mixture import online_mixture_sampler
from reweight.data.pipeline import take
from reweight.train.models import functional, make_model
from reweight.train.state import create
from reweight.train.step import classification_loss, make_train_step

TARGET_RATIO = 20.0


def _policy_table(steps: int, num_groups: int) -> np.ndarray:
  """Proportions that change at every step (so every refresh adopts new ones), precomputed:
  the policy's own cost is not the sampler's."""
  z = np.sin(0.1 * np.arange(steps)[:, None] + np.arange(num_groups))
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


POLICY_STEPS = 1 << 14


def _timed(fn, n: int) -> float:
  """Seconds per call of ``fn(i)`` over ``n`` calls (outputs synchronised at the end)."""
  out = None
  t0 = time.perf_counter()
  for i in range(n):
    out = fn(i)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / n


def _make_step(per_example, params, optimizer):
  step = jax.jit(make_train_step(per_example, reweight.uniform(), optimizer))
  return step, create(params, optimizer, reweight.uniform(), jax.random.key(0))


def lm_problem(update_every: int, batch_size: int = 16, seq_len: int = 64):
  """The LM train step and a sampler producing its batches."""
  corpus = domain_text.domain_corpus(1 << 18)
  num_groups = len(corpus.names)
  fn = functional(make_model("transformer", seed=0, vocab_size=256, d_model=64, num_heads=4,
                             num_layers=2, max_len=seq_len))

  def per_sequence(params, batch, *, key=None):
    logits = fn.apply(params, batch["x"], train=key is not None, key=key)
    return losses.sequence_mean(losses.softmax_cross_entropy(logits, batch["y"])), {}

  sampler = online_mixture_sampler(batch_size, 0, num_groups=num_groups,
                                   update_every=update_every, process_index=0,
                                   process_count=1)
  state = [sampler.init()]
  table = _policy_table(POLICY_STEPS, num_groups)

  def draw(t):
    state[0] = sampler.refresh(state[0], t, table[t % POLICY_STEPS])
    return domain_text.domain_lm_batch(corpus, sampler.groups(t, state[0]), t,
                                       seq_len=seq_len, seed=0)

  batch = {k: jnp.asarray(v) for k, v in draw(0).items() if k in ("x", "y")}
  optimizer = optax.adamw(1e-3, b2=0.95, weight_decay=0.1)
  return (*_make_step(per_sequence, fn.params, optimizer), batch, draw, num_groups)


def mlp_problem(update_every: int, batch_size: int = 128):
  """The digits MLP train step and a sampler producing its batches."""
  digits = load_digits()
  ds = {"x": (digits.data / 16.0).astype(np.float32), "label": digits.target.astype(np.int32)}
  fn = functional(make_model("mlp", seed=0, in_features=64, hidden=(256, 256), num_classes=10))
  sampler = online_mixture_sampler(batch_size, 0, group_ids=ds["label"],
                                   update_every=update_every, process_index=0,
                                   process_count=1)
  state = [sampler.init()]
  table = _policy_table(POLICY_STEPS, 10)

  def draw(t):
    state[0] = sampler.refresh(state[0], t, table[t % POLICY_STEPS])
    return take(ds, sampler.indices(t, state[0]))

  batch = {k: jnp.asarray(v) for k, v in draw(0).items()}
  return (*_make_step(classification_loss(fn.apply), fn.params, optax.adam(1e-3)), batch,
          draw, 10)


def measure(problem, rounds: int, steps: int, draws: int) -> dict:
  step, train_state, batch, draw, num_groups = problem
  carry = [train_state]

  def one_step(_):
    carry[0], metrics = step(carry[0], batch)
    return metrics["loss"]

  _timed(one_step, 3)  # compile
  _timed(draw, 10)
  step_s, draw_s = [], []
  for r in range(rounds):
    step_s.append(_timed(one_step, steps))
    offset = 1000 + r * draws
    draw_s.append(_timed(lambda i, offset=offset: draw(offset + i), draws))
  step_t, draw_t = float(np.median(step_s)), float(np.median(draw_s))
  return {"steps_per_s": 1.0 / step_t, "sampler_batches_per_s": 1.0 / draw_t,
          "ratio": step_t / draw_t, "step_ms": 1e3 * step_t, "sampler_ms": 1e3 * draw_t,
          "ratio_best_of_rounds": min(step_s) / min(draw_s),
          "batch_size": int(batch["x"].shape[0]), "num_groups": num_groups,
          "meets_target": bool(step_t / draw_t >= TARGET_RATIO)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--draws", type=int, default=300)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args()
  results = {}
  for name, make in (("lm", lm_problem), ("mlp", mlp_problem)):
    for update_every in (1, 10):
      r = measure(make(update_every), args.rounds, args.steps, args.draws)
      results[f"{name}/update_every={update_every}"] = r
  print(f"{'problem':22s} {'batch':>5s} {'step ms':>9s} {'steps/s':>9s} {'sampler ms':>10s} "
        f"{'batches/s':>10s} {'ratio':>8s} {'best':>7s}")
  for name, r in results.items():
    print(f"{name:22s} {r['batch_size']:5d} {r['step_ms']:9.3f} {r['steps_per_s']:9.1f} "
          f"{r['sampler_ms']:10.4f} {r['sampler_batches_per_s']:10.0f} {r['ratio']:7.1f}x "
          f"{r['ratio_best_of_rounds']:6.1f}x"
          f"{'' if r['meets_target'] else '  (below the 20x target)'}")
  os.makedirs(args.out, exist_ok=True)
  meta = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "jax": jax.__version__, "numpy": np.__version__, "machine": platform.machine(),
          "cpus": os.cpu_count(), "target_ratio": TARGET_RATIO,
          "args": vars(args)}
  with open(os.path.join(args.out, "sampler_throughput.json"), "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
