"""The training loop: progress bar, periodic eval, orbax checkpoints, JSONL metrics.

`train` runs one model with one weighting for one seed. A run in a ``workdir`` can be
interrupted and started again: it resumes from the latest checkpoint (train state, weighting
state and the input pipeline's position) and continues the same trajectory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from reweight import parallel
from reweight.base import Weighting
from reweight.data.pipeline import eval_batches, train_iterator
from reweight.reparam._core import Reparam
from reweight.train import state as state_lib
from reweight.train.step import make_eval_step, make_train_step

PyTree = Any


class RunResult(NamedTuple):
  """What a run returns.

  Attributes:
    history: one dict per evaluation (``step``, ``test_accuracy``, ``test_balanced_accuracy``,
      ``test_loss``, ``train_loss``, ``noisy_weight_share``, and for a group method the
      lists ``probs``, ``group_loss``, ``group_weight_share``, ...).
    state: the final `TrainState`.
    final_weights: weights of the examples seen in the last epoch (``weights``, and
      ``is_noisy`` / ``label`` where the data has them), for histograms.
  """

  history: list[dict[str, float]]
  state: state_lib.TrainState
  final_weights: dict[str, np.ndarray]


# Per-group metrics of a group method's step (`reweight.base.group_info`), logged at every
# evaluation as lists over groups (the values of the step just before it).
GROUP_METRICS = ("probs", "group_loss", "group_weight_share")


@jax.jit
def _weight_sums(weights, is_noisy=None):
  """``(sum of the weights on noisy examples, sum of all weights)`` of a batch."""
  noisy = 0.0 if is_noisy is None else jnp.sum(weights * is_noisy)
  return noisy, jnp.sum(weights)


def evaluate(eval_step: Callable, state, dataset: Mapping[str, np.ndarray], batch_size: int,
             mesh) -> dict[str, float]:
  """Accuracy, balanced accuracy and mean CE over a whole split (padded batches)."""
  totals = None
  for batch in eval_batches(dataset, batch_size):
    batch = {k: batch[k] for k in ("x", "label", "mask")}
    out = eval_step(state, parallel.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  present = totals["class_count"] > 0
  return {
      "accuracy": float(totals["correct"] / totals["count"]),
      "balanced_accuracy": float(np.mean(totals["class_correct"][present] /
                                         totals["class_count"][present])),
      "loss": float(totals["loss_sum"] / totals["count"]),
  }


def _checkpoint_manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def _read_history(path: str, up_to_step: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r["step"] <= up_to_step]


def _write_history(path: str, rows: list[dict]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)


def train(*, apply_fn: Callable, params: PyTree, per_example_loss: Callable,
          weighting: Weighting, optimizer: optax.GradientTransformation,
          train_ds: Mapping[str, np.ndarray], test_ds: Mapping[str, np.ndarray],
          num_classes: int, steps: int, batch_size: int, seed: int, eval_every: int = 100,
          workdir: str | None = None, checkpoint_every: int | None = None,
          microbatches: int = 1, reparam: Reparam | None = None,
          loss_kwargs: Mapping[str, Any] | None = None, mesh=None, progress: bool = True,
          desc: str = "train", train_step: Callable | None = None,
          eval_step: Callable | None = None) -> RunResult:
  """Trains for ``steps`` steps and evaluates every ``eval_every`` steps.

  Args:
    apply_fn: ``apply_fn(params, x, *, train=False, key=None) -> logits``.
    params: initial model parameters.
    per_example_loss: ``f(params, batch, *, key=None) -> (losses, aux)``.
    weighting, optimizer, reparam, microbatches: see `make_train_step`.
    train_ds, test_ds: dicts of arrays (``x``, ``label``, ``id``, optional ``is_noisy``...).
    num_classes: for balanced accuracy.
    steps, batch_size, seed, eval_every: the schedule of the run.
    workdir: where checkpoints and ``metrics.jsonl`` go; resumes from it if it has a
      checkpoint. None: nothing is written.
    checkpoint_every: steps between checkpoints (default: every evaluation).
    loss_kwargs: extra arrays for the weighting, e.g. ``{"meta_batch": ...}``.
    mesh: a `Mesh` (default: all devices); the batch is sharded on ``"data"``.
    progress: show a tqdm bar.
    train_step, eval_step: already-built jitted steps to reuse across seeds (optional).

  Returns:
    A `RunResult`.
  """
  if steps < 1 or batch_size < 1 or eval_every < 1:
    raise ValueError(f"steps={steps}, batch_size={batch_size} and eval_every={eval_every} "
                     "must all be >= 1")
  mesh = mesh or parallel.make_mesh()
  loss_kwargs = parallel.replicate(dict(loss_kwargs or {}), mesh)
  if train_step is None:
    train_step = jax.jit(make_train_step(per_example_loss, weighting, optimizer,
                                         reparam=reparam, microbatches=microbatches),
                         donate_argnums=0)
  if eval_step is None:
    eval_step = jax.jit(make_eval_step(apply_fn, num_classes, reparam=reparam))

  state = state_lib.create(params, optimizer, weighting, jax.random.PRNGKey(seed),
                           reparam=reparam)
  it = train_iterator(train_ds, batch_size, seed)
  history: list[dict] = []
  manager = metrics_path = None
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    manager = _checkpoint_manager(workdir)
    latest = manager.latest_step()
    if latest is not None:
      restored = manager.restore(latest, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(jax.tree.map(np.asarray, state)),
          data=ocp.args.JsonRestore()))
      state = jax.tree.map(jnp.asarray, restored["state"])
      state = state_lib.TrainState(*state)
      it.set_state(restored["data"])
      history = _read_history(metrics_path, latest)
  # The step donates its input state: copy it, so the caller's `params` stay usable.
  state = parallel.replicate(jax.tree.map(lambda x: jnp.array(x, copy=True), state), mesh)
  checkpoint_every = checkpoint_every or eval_every

  has_noise = "is_noisy" in train_ds
  fields = [k for k in ("x", "label", "id", "is_noisy", "group", "mask") if k in train_ds]
  steps_per_epoch = max(len(train_ds["label"]) // batch_size, 1)
  final = {"weights": [], "is_noisy": [], "label": []}
  running = {"loss": 0.0, "n": 0, "noisy_w": 0.0, "total_w": 0.0}
  start = int(state.step)

  def save(step):
    if manager is not None:
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(jax.device_get(state)),
          data=ocp.args.JsonSave(it.get_state())))
      manager.wait_until_finished()
      _write_history(metrics_path, history)

  bar = tqdm(range(start, steps), desc=desc, disable=not progress, leave=False,
             initial=start, total=steps)
  pending = []
  for step in bar:
    host_batch = next(it)
    batch = parallel.shard_batch({k: host_batch[k] for k in fields}, mesh)
    state, metrics = train_step(state, batch, **loss_kwargs)
    w = metrics["weights"]
    last_group = {k: metrics[k] for k in GROUP_METRICS if k in metrics}
    pending.append((metrics["mean_loss"], *_weight_sums(w, batch.get("is_noisy"))))
    if step >= steps - steps_per_epoch:  # fetched from the device once, after the loop
      final["weights"].append(w)
      final["label"].append(host_batch["label"])
      if has_noise:
        final["is_noisy"].append(host_batch["is_noisy"])
    if (step + 1) % eval_every == 0 or step + 1 == steps:
      for loss, nw, tw in jax.device_get(pending):
        running["loss"] += float(loss)
        running["n"] += 1
        running["noisy_w"] += float(nw)
        running["total_w"] += float(tw)
      pending = []
      ev = evaluate(eval_step, state, test_ds, 256, mesh)
      row = {"step": step + 1, "train_loss": running["loss"] / max(running["n"], 1),
             "test_accuracy": ev["accuracy"], "test_balanced_accuracy": ev["balanced_accuracy"],
             "test_loss": ev["loss"]}
      if has_noise:
        row["noisy_weight_share"] = running["noisy_w"] / max(running["total_w"], 1e-12)
      row.update({k: np.asarray(v).tolist() for k, v in jax.device_get(last_group).items()})
      history.append(row)
      running = {"loss": 0.0, "n": 0, "noisy_w": 0.0, "total_w": 0.0}
      bar.set_postfix(acc=f"{ev['accuracy']:.3f}", loss=f"{row['train_loss']:.3f}")
    if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
      save(step + 1)
  bar.close()
  if manager is not None:
    manager.close()
  final["weights"] = jax.device_get(final["weights"])
  final_weights = {k: np.concatenate(v) for k, v in final.items() if v}
  return RunResult(history, state, final_weights)
