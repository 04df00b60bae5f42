"""The training loop: progress bar, periodic eval, orbax checkpoints, JSONL metrics.

`train` runs one model with one weighting for one seed. A run in a ``workdir`` can be
interrupted and started again: it resumes from the latest checkpoint (train state, weighting
state, the input pipeline's position and the loop's own running sums) and continues the same
trajectory, so it ends with exactly the history and final weights of an uninterrupted run.

Preemption: inside ``with Preemption() as p``, ``train(..., preemption=p)`` answers SIGTERM by
finishing the current step, checkpointing the run at that step and raising `Preempted`;
`reweight.main` turns that into a one-line message and exit code `PREEMPTED_EXIT_CODE`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from reweight import parallel
from reweight.base import Weighting
from reweight.data.pipeline import eval_batches, train_iterator
from reweight.reparam._core import Reparam
from reweight.train import state as state_lib
from reweight.train.step import make_eval_step, make_train_step

PyTree = Any

# What a preempted `reweight.main` exits with: 128 + SIGTERM (143), the status a shell reports
# for a process that SIGTERM ended.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
  """Raised by `train` once it has checkpointed the run in progress after a preemption notice.

  Attributes:
    step: the step the run was saved at (rerunning the same command resumes there).
    workdir: the run's directory (None when the run writes nothing).
  """

  def __init__(self, step: int, steps: int, desc: str, workdir: str | None):
    where = f"saved at step {step} of {steps} in {workdir}" if workdir else "nothing saved"
    super().__init__(f"preempted (SIGTERM) during {desc}: {where}; run the same command "
                     "again to resume")
    self.step, self.workdir = step, workdir


class Preemption:
  """Notices a preemption (SIGTERM) and names a step at which every process stops.

  A context manager; `train` calls `reached` once after every train step and, when it returns
  True, checkpoints the run at that step and raises `Preempted`. Its answer is the same on
  every process, at the same call:

  - One process (``jax.distributed`` not initialized): a SIGTERM handler sets a flag and
    `reached` returns the flag. The previous handler (usually the default, which ends the
    process) is put back on exit.
  - Several processes (``jax.distributed`` initialized, even with one process): JAX's
    preemption service (on by default, ``jax_enable_preemption_service``) catches SIGTERM
    itself and tells every process; `reached` is
    `jax.experimental.multihost_utils.reached_preemption_sync_point` of the number of calls
    so far, True on every process at the same call (the service picks one past the furthest
    call any process had made once the notice reached it; on one CPU process that took
    about a second). No Python handler is installed then: it would replace JAX's. Every
    process must make the same sequence of calls, which the trainer does (all run the same
    runs and steps, and resume from the same checkpoints). With the service disabled, the
    processes' flags are all-gathered at every call instead (one host sync per step).

  It must be entered in the main thread (Python delivers signals there). A SIGTERM that
  comes after the last step of the last run is not acted on: the job simply finishes.
  ``signum`` changes the signal of the one-process modes (JAX's service listens to SIGTERM).

  Examples:
    >>> import os, signal
    >>> from reweight.train.loop import Preemption
    >>> with Preemption() as p:
    ...   before = p.reached()
    ...   os.kill(os.getpid(), signal.SIGTERM)
    ...   after = p.reached()
    >>> before, after, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    (False, True, True)
  """

  def __init__(self, signum: int = signal.SIGTERM):
    self.signum = signum
    self._flag = False
    self._calls = 0
    self._mode = None
    self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    self._flag = True

  def __enter__(self) -> Preemption:
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError("Preemption() must be entered in the main thread (signal handlers "
                         "can only be installed there)")
    self._flag, self._calls = False, 0
    if not jax.distributed.is_initialized():
      self._mode = "flag"
    elif jax.config.jax_enable_preemption_service:
      self._mode = "jax"
    else:
      self._mode = "gather"
    if self._mode != "jax":
      self._install()
    return self

  def _install(self):
    self._previous = signal.signal(self.signum, self._handler)

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(self.signum, self._previous)
      self._previous = None

  def reached(self) -> bool:
    """Whether to stop now: call it once per step, after the step, on every process."""
    self._calls += 1
    if self._mode == "jax":
      try:
        return multihost_utils.reached_preemption_sync_point(self._calls)
      except RuntimeError:  # the service was off when jax.distributed started
        self._mode = "gather"
        self._install()
    if self._mode == "gather":
      flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
      return bool(np.any(flags))
    return self._flag


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


def jit_train_step(step_fn: Callable) -> Callable:
  """``jax.jit(step_fn, donate_argnums=0)`` that keeps the state's layout from step to step.

  The step's new state gets ``out_shardings`` equal to the shardings of the state passed in
  (e.g. the ``fsdp`` layout of `state_lib.place`), so sharded parameters and optimizer state
  never drift to another layout; the metrics' layout is the compiler's choice. One jitted
  function per distinct state layout (in practice one per run, shared by all seeds).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.train.loop import jit_train_step
    >>> step = jit_train_step(lambda s, b: (s + b.sum(), {"n": b.shape[0]}))
    >>> float(step(jnp.zeros(()), jnp.ones(4))[0])
    4.0
  """
  compiled: dict = {}

  def step(state, batch, **kwargs):
    shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), state)
    key = (jax.tree.structure(state), tuple(jax.tree.leaves(shardings)))
    if key not in compiled:
      if any(s is None for s in jax.tree.leaves(shardings, is_leaf=lambda x: x is None)):
        shardings = None  # host values: let jit choose
      compiled[key] = jax.jit(step_fn, donate_argnums=0, out_shardings=(shardings, None))
    return compiled[key](state, batch, **kwargs)

  return step


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


def _loop_progress(running: dict, final: dict) -> dict:
  """The loop's own state as JSON: the sums since the last evaluation and the final weights.

  Floats go through JSON exactly (shortest round-trip repr; float32 values are doubles).
  """
  out = {"running": dict(running), "final": {}}
  for k, chunks in final.items():
    if chunks:
      a = np.concatenate(jax.device_get(chunks))
      out["final"][k] = {"dtype": str(a.dtype), "values": a.tolist()}
  return out


def _restore_loop_progress(saved: Mapping) -> tuple[dict, dict]:
  final = {"weights": [], "is_noisy": [], "label": []}
  for k, v in saved["final"].items():
    final[k] = [np.asarray(v["values"], dtype=v["dtype"])]
  return dict(saved["running"]), final


def train(*, apply_fn: Callable, params: PyTree, per_example_loss: Callable,
          weighting: Weighting, optimizer: optax.GradientTransformation,
          train_ds: Mapping[str, np.ndarray], test_ds: Mapping[str, np.ndarray],
          num_classes: int, steps: int, batch_size: int, seed: int, eval_every: int = 100,
          workdir: str | None = None, checkpoint_every: int | None = None,
          microbatches: int = 1, reparam: Reparam | None = None,
          loss_kwargs: Mapping[str, Any] | None = None, mesh=None, progress: bool = True,
          desc: str = "train", train_step: Callable | None = None,
          eval_step: Callable | None = None,
          preemption: Preemption | None = None) -> RunResult:
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
    mesh: a `Mesh` (default: all devices on ``"data"``); the batch is split over its
      `parallel.batch_axes` (``"data"``, and ``"fsdp"`` when it has one), params, optimizer,
      weighting and reparam state over ``"fsdp"`` (`state_lib.place`).
    progress: show a tqdm bar.
    train_step, eval_step: already-built jitted steps to reuse across seeds (optional).
      Each is compiled once per run (once in all, when reused with the same shapes).
    preemption: an entered `Preemption`; asked after every step, and when it says so the
      run is checkpointed at that step and `Preempted` is raised.

  Returns:
    A `RunResult`.

  Raises:
    Preempted: after saving, when ``preemption`` said to stop.
  """
  if steps < 1 or batch_size < 1 or eval_every < 1:
    raise ValueError(f"steps={steps}, batch_size={batch_size} and eval_every={eval_every} "
                     "must all be >= 1")
  mesh = mesh or parallel.make_mesh()
  loss_kwargs = parallel.replicate(dict(loss_kwargs or {}), mesh)
  if train_step is None:
    train_step = jit_train_step(make_train_step(per_example_loss, weighting, optimizer,
                                                reparam=reparam, microbatches=microbatches))
  if eval_step is None:
    eval_step = jax.jit(make_eval_step(apply_fn, num_classes, reparam=reparam))

  # The reparam's init (e.g. PiSSA's SVD) runs on the params in their sharded layout.
  state = state_lib.create(parallel.shard_params(params, mesh), optimizer, weighting,
                           jax.random.PRNGKey(seed), reparam=reparam)
  it = train_iterator(train_ds, batch_size, seed)
  history: list[dict] = []
  # The loop's own progress: sums of the steps since the last evaluation, and the weights of
  # the last epoch; both are checkpointed, so a resumed run ends like an uninterrupted one.
  running = {"loss": 0.0, "n": 0, "noisy_w": 0.0, "total_w": 0.0}
  final = {"weights": [], "is_noisy": [], "label": []}
  manager = metrics_path = None
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    manager = _checkpoint_manager(workdir)
    latest = manager.latest_step()
    if latest is not None:
      items = dict(state=ocp.args.StandardRestore(jax.tree.map(np.asarray, state)),
                   data=ocp.args.JsonRestore())
      has_loop = os.path.isdir(os.path.join(str(manager.directory), str(latest), "loop"))
      if has_loop:  # checkpoints written before the loop's progress was saved lack it
        items["loop"] = ocp.args.JsonRestore()
      restored = manager.restore(latest, args=ocp.args.Composite(**items))
      state = jax.tree.map(jnp.asarray, restored["state"])
      state = state_lib.TrainState(*state)
      it.set_state(restored["data"])
      history = _read_history(metrics_path, latest)
      if has_loop:
        running, final = _restore_loop_progress(restored["loop"])
  # The step donates its input state: copy it, so the caller's `params` stay usable.
  state = state_lib.place(jax.tree.map(lambda x: jnp.array(x, copy=True), state), mesh)
  checkpoint_every = checkpoint_every or eval_every

  has_noise = "is_noisy" in train_ds
  fields = [k for k in ("x", "label", "id", "is_noisy", "group", "mask") if k in train_ds]
  steps_per_epoch = max(len(train_ds["label"]) // batch_size, 1)
  start = int(state.step)
  pending = []

  def flush():
    """Adds the pending steps' metrics (on device until now) to the running sums."""
    for loss, nw, tw in jax.device_get(pending):
      running["loss"] += float(loss)
      running["n"] += 1
      running["noisy_w"] += float(nw)
      running["total_w"] += float(tw)
    pending.clear()

  saved = start if workdir is not None and start > 0 else None

  def save(step):
    nonlocal saved
    if manager is not None and saved != step:
      flush()
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(jax.device_get(state)),
          data=ocp.args.JsonSave(it.get_state()),
          loop=ocp.args.JsonSave(_loop_progress(running, final))))
      manager.wait_until_finished()
      _write_history(metrics_path, history)
      saved = step

  bar = tqdm(range(start, steps), desc=desc, disable=not progress, leave=False,
             initial=start, total=steps)
  try:
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
        flush()
        ev = evaluate(eval_step, state, test_ds, 256, mesh)
        row = {"step": step + 1, "train_loss": running["loss"] / max(running["n"], 1),
               "test_accuracy": ev["accuracy"],
               "test_balanced_accuracy": ev["balanced_accuracy"], "test_loss": ev["loss"]}
        if has_noise:
          row["noisy_weight_share"] = running["noisy_w"] / max(running["total_w"], 1e-12)
        row.update({k: np.asarray(v).tolist() for k, v in jax.device_get(last_group).items()})
        history.append(row)
        running.update(loss=0.0, n=0, noisy_w=0.0, total_w=0.0)
        bar.set_postfix(acc=f"{ev['accuracy']:.3f}", loss=f"{row['train_loss']:.3f}")
      if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
        save(step + 1)
      if preemption is not None and preemption.reached():
        save(step + 1)
        raise Preempted(step + 1, steps, desc, workdir)
  finally:
    bar.close()
    if manager is not None:
      manager.close()
  final["weights"] = jax.device_get(final["weights"])
  final_weights = {k: np.concatenate(v) for k, v in final.items() if v}
  return RunResult(history, state, final_weights)
