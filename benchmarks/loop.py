"""Does the training loop keep up with its step? Loop steps/s over bare jitted steps/s.

The main job's setting (`configs/default.py`: digits, MLP 64-256-10, batch 128, Adam,
``loss_based/linupper``, an evaluation every 50 steps) on all local devices:

* ``bare``: the jitted train step called ``--steps`` times on one batch already on the
  devices, then one wait (the fastest the step can go);
* ``loop``: `reweight.train.loop.train` for ``--steps`` steps with the same compiled train
  and eval steps (reading, transferring and logging every batch, evaluating every 50 steps,
  its progress bar), without checkpoints (``workdir=None``).

Both are timed in interleaved rounds after a warm-up run (no compilation is timed); the
ratio is the median over rounds of bare time / loop time of the same round, with its
interquartile range. Target: >= 0.9.

  python benchmarks/loop.py [--rounds 7] [--steps 1000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/
from configs import default  # noqa: E402
from reweight import parallel  # noqa: E402
from reweight.data.pipeline import train_iterator  # noqa: E402
from reweight.train import experiment, loop  # noqa: E402
from reweight.train import state as state_lib  # noqa: E402
from reweight.train.models import functional, make_model  # noqa: E402
from reweight.train.step import classification_loss, make_train_step  # noqa: E402

METHOD = "loss_based/linupper"


def setup(config):
  """Everything `experiment.run` builds for one method and seed 0, plus a bare-step runner."""
  splits = experiment.prepare_splits(config, 0)
  train, test, num_classes = splits.train, splits.test, splits.num_classes
  spec = config.methods[METHOD]
  fn = functional(make_model(config.model, seed=0, num_classes=num_classes,
                             **dict(config.model_kwargs)))
  per_example = classification_loss(fn.apply, spec.get("loss", "ce"))
  weighting = experiment.make_weighting(spec["weighting"], **dict(spec["weighting_kwargs"]))
  optimizer = experiment.make_optimizer(config)
  train_step = loop.jit_train_step(make_train_step(per_example, weighting, optimizer))
  eval_step = experiment._shared_eval_step(fn.apply, num_classes)
  mesh = parallel.make_mesh()
  kwargs = dict(apply_fn=fn.apply, params=fn.params, per_example_loss=per_example,
                weighting=weighting, optimizer=optimizer, train_ds=train, test_ds=test,
                num_classes=num_classes, batch_size=config.batch_size, seed=0,
                eval_every=config.eval_every, mesh=mesh, train_step=train_step,
                eval_step=eval_step, progress=True, desc="loop")
  fields = ("x", "label", "id", "is_noisy")
  host = next(train_iterator(train, config.batch_size, 0))
  batch = parallel.shard_batch({k: host[k] for k in fields}, mesh)

  def bare(steps):
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), fn.params)  # the step donates
    state = state_lib.place(state_lib.create(params, optimizer, weighting,
                                             jax.random.PRNGKey(0)), mesh)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  def looped(steps):
    start = time.perf_counter()
    loop.train(steps=steps, **kwargs)
    return time.perf_counter() - start

  return bare, looped


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args()
  bare, looped = setup(default.get_config())
  bare(args.steps), looped(args.steps)  # compile and warm up
  ratios, times = [], {"bare": [], "loop": []}
  for _ in range(args.rounds):
    b, lp = bare(args.steps), looped(args.steps)
    times["bare"].append(b)
    times["loop"].append(lp)
    ratios.append(b / lp)
  q1, med, q3 = np.percentile(ratios, [25, 50, 75])
  result = {"ratio_median": med, "ratio_iqr": [q1, q3], "ratios": ratios,
            "bare_steps_per_s": args.steps / np.median(times["bare"]),
            "loop_steps_per_s": args.steps / np.median(times["loop"]),
            "steps": args.steps, "rounds": args.rounds, "devices": jax.device_count(),
            "machine": platform.processor() or platform.machine(), "jax": jax.__version__}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "loop.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nloop / bare step speed: {med:.3f} (IQR {q1:.3f}-{q3:.3f}, {args.rounds} rounds); "
        f"bare {result['bare_steps_per_s']:.0f} steps/s, loop "
        f"{result['loop_steps_per_s']:.0f} steps/s", file=sys.stderr)


if __name__ == "__main__":
  main()
