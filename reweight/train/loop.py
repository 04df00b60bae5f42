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

import collections
import functools
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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from reweight import parallel
from reweight.base import Weighting
from reweight.data.pipeline import batch_dataset, eval_batches
from reweight.data.samplers import epoch_sampler
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


# How many dispatched train steps may be unfinished before the loop waits for the oldest.
# The host still runs that far ahead of the devices (the device never idles), and the bound
# avoids a deadlock: on CPU devices of several processes (gloo collectives), a jitted step
# with a cross-device reduction dispatched a few dozen times without waiting hangs every
# process (seen with jax 0.10.2; 8 in flight never hung in 2000 steps).
MAX_STEPS_IN_FLIGHT = 8

# Per-group metrics of a group method's step (`reweight.base.group_info`), logged at every
# evaluation as lists over groups (the values of the step just before it).
GROUP_METRICS = ("probs", "group_loss", "group_weight_share")


class PlannedBatch(NamedTuple):
  """The batches of several steps, as rows of a dataset that is already on the devices.

  The batch of step ``t`` is ``{k: data[k][plan[t % K]] for k in data}``, with ``K =
  plan.shape[0]``; a step from `jit_train_step` takes it inside the compiled step (from
  the state's ``step``), so nothing travels from the host at a step, only a new plan every
  ``K`` steps.

  Attributes:
    data: the dataset's fields, on the devices (replicated).
    plan: ``[K, B]`` row numbers, the batches of steps ``cK ... cK + K - 1``, split over
      the devices like a batch along dimension 1.
  """

  data: Mapping[str, jax.Array]
  plan: jax.Array

  def at(self, step) -> dict[str, jax.Array]:
    """The batch of ``step``."""
    idx = self.plan[step % self.plan.shape[0]]
    return {k: v[idx] for k, v in self.data.items()}


# Training sets up to this size (the fields the step reads) are put on the devices once and
# batches are taken from them there (`PlannedBatch`); larger ones travel batch by batch.
DEVICE_DATA_BYTES = 64 * 2**20
# Row numbers per plan of a `PlannedBatch` (K = this // batch size steps; 256 KiB of int32).
PLAN_ROWS = 2**16


def loop_sums(mean_loss, weights, is_noisy=None) -> jax.Array:
  """``[mean_loss, sum of the weights on is_noisy examples, sum of the weights]``: what
  `train` reads of every step, as one float32 array."""
  noisy = 0.0 if is_noisy is None else jnp.sum(weights * is_noisy)
  return jnp.stack([mean_loss, noisy, jnp.sum(weights)]).astype(jnp.float32)


_loop_sums = jax.jit(loop_sums)


def _with_weight_sums(step_fn: Callable) -> Callable:
  """``step_fn`` that also takes a `PlannedBatch`, with `loop_sums` in its metrics.

  The sums the loop logs are computed inside the step instead of by a second jitted call
  per step.
  """

  @functools.wraps(step_fn)  # compiled under the step's own name
  def step(state, batch, **kwargs):
    if isinstance(batch, PlannedBatch):
      batch = batch.at(state.step)
    state, metrics = step_fn(state, batch, **kwargs)
    if isinstance(metrics, Mapping) and "weights" in metrics and "mean_loss" in metrics:
      metrics = dict(metrics, loop_sums=loop_sums(metrics["mean_loss"], metrics["weights"],
                                                  batch.get("is_noisy")))
    return state, metrics

  return step


def jit_train_step(step_fn: Callable) -> Callable:
  """``jax.jit(step_fn, donate_argnums=0)`` that keeps the state's layout from step to step.

  The step's new state gets ``out_shardings`` equal to the shardings of the state passed in
  (e.g. the ``fsdp`` layout of `state_lib.place`), so sharded parameters and optimizer state
  never drift to another layout; the metrics' layout is the compiler's choice. One jitted
  function per distinct state layout (in practice one per run, shared by all seeds). When
  the metrics have ``weights`` and ``mean_loss`` they also get ``loop_sums`` (`loop_sums`,
  what `train` logs of every step). The batch may be a `PlannedBatch` (rows of a dataset
  on the devices, taken inside the step at the state's ``step``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.train.loop import jit_train_step
    >>> step = jit_train_step(lambda s, b: (s + b.sum(), {"n": b.shape[0]}))
    >>> float(step(jnp.zeros(()), jnp.ones(4))[0])
    4.0
  """
  compiled: dict = {}
  last = [None, None]  # the state the last call returned, and the function that made it

  def step(state, batch, **kwargs):
    if state is last[0]:  # its layout is the one that function pins: skip the lookup
      fn = last[1]
    else:
      shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), state)
      key = (jax.tree.structure(state), tuple(jax.tree.leaves(shardings)))
      if key not in compiled:
        if any(s is None for s in jax.tree.leaves(shardings, is_leaf=lambda x: x is None)):
          shardings = None  # host values: let jit choose
        compiled[key] = jax.jit(_with_weight_sums(step_fn), donate_argnums=0,
                                out_shardings=(shardings, None))
      fn = compiled[key]
    out = fn(state, batch, **kwargs)
    last[:] = out[0], fn
    return out

  step.accepts_planned_batch = True
  return step


_batch_at = jax.jit(PlannedBatch.at)


def evaluate(eval_step: Callable, state, dataset: Mapping[str, np.ndarray], batch_size: int,
             mesh) -> dict[str, float]:
  """Accuracy, balanced accuracy and mean CE over a whole split (padded batches).

  On several processes each reads its rows of every batch (`parallel.process_rows`) and
  the totals are global.
  """
  totals = None
  for batch in eval_batches(dataset, batch_size, rows=parallel.process_rows(mesh, batch_size)):
    batch = {k: batch[k] for k in ("x", "label", "mask")}
    out = eval_step(state, parallel.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = parallel.to_host(totals)
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
      a = np.concatenate(parallel.to_host(chunks))
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
  # The step donates its input state: copy it, so the caller's `params` stay usable.
  state = state_lib.place(jax.tree.map(lambda x: jnp.array(x, copy=True), state), mesh)
  history: list[dict] = []
  # The loop's own progress: sums of the steps since the last evaluation, and the weights of
  # the last epoch; both are checkpointed, so a resumed run ends like an uninterrupted one.
  running = {"loss": 0.0, "n": 0, "noisy_w": 0.0, "total_w": 0.0}
  final = {"weights": [], "is_noisy": [], "label": []}
  manager = metrics_path = None
  writer = jax.process_index() == 0  # the one process that writes files besides orbax
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    manager = _checkpoint_manager(workdir)
    latest = manager.latest_step()
    if latest is not None:  # restored straight into the state's (sharded) layout
      target = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
      items = dict(state=ocp.args.StandardRestore(target))
      has_loop = os.path.isdir(os.path.join(str(manager.directory), str(latest), "loop"))
      if has_loop:  # checkpoints written before the loop's progress was saved lack it
        items["loop"] = ocp.args.JsonRestore()
      restored = manager.restore(latest, args=ocp.args.Composite(**items))
      state = state_lib.TrainState(*restored["state"])
      history = _read_history(metrics_path, latest)
      if has_loop:
        running, final = _restore_loop_progress(restored["loop"])
  checkpoint_every = checkpoint_every or eval_every

  has_noise = "is_noisy" in train_ds
  fields = [k for k in ("x", "label", "id", "is_noisy", "group", "mask") if k in train_ds]
  steps_per_epoch = max(len(train_ds["label"]) // batch_size, 1)
  # The batch of step t is rows sampler.indices(t) of the training set (shuffled epochs);
  # each process reads only its rows of every global batch.
  sampler = epoch_sampler(len(train_ds["label"]), batch_size, seed)
  rows = parallel.process_rows(mesh, batch_size)
  arrays = {k: np.asarray(train_ds[k]) for k in fields}
  on_device = (getattr(train_step, "accepts_planned_batch", False) and
               sum(a.nbytes for a in arrays.values()) <= DEVICE_DATA_BYTES)
  if on_device:  # once; then the row numbers of K steps at a time
    data = parallel.replicate(arrays, mesh)
    plan_steps = max(PLAN_ROWS // batch_size, 1)
    plan_sharding = NamedSharding(mesh, P(None, parallel.batch_sharding(mesh).spec[0]))
  else:
    batches = batch_dataset(arrays, sampler, rows)
  start = int(parallel.to_host(state.step))
  pending = []
  in_flight = collections.deque()  # the losses of the last dispatched steps

  def flush():
    """Adds the pending steps' metrics (on device until now) to the running sums."""
    for loss, nw, tw in parallel.to_host(pending):
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
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave({"next_index": step}),  # the input's position: the step
          loop=ocp.args.JsonSave(_loop_progress(running, final))))
      manager.wait_until_finished()
      if writer:
        _write_history(metrics_path, history)
      saved = step

  def batch_of(step, previous=None):
    """The batch of ``step`` on the devices; each process transfers only its rows."""
    if not on_device:
      return parallel.shard_batch(batches[step], mesh)
    if previous is not None and step % plan_steps:
      return previous  # its plan has this step
    first = step - step % plan_steps
    local = np.stack([sampler.indices(t)[rows] for t in range(first, first + plan_steps)])
    if mesh.is_multi_process:
      plan = jax.make_array_from_process_local_data(plan_sharding, local.astype(np.int32),
                                                    (plan_steps, batch_size))
    else:
      plan = jax.device_put(local.astype(np.int32), plan_sharding)
    return PlannedBatch(data, plan)

  bar = tqdm(range(start, steps), desc=desc, disable=not progress or not writer, leave=False,
             initial=start, total=steps)
  try:
    batch = batch_of(start) if start < steps else None
    for step in bar:
      state, metrics = train_step(state, batch, **loss_kwargs)
      in_flight.append(metrics["mean_loss"])
      if len(in_flight) > MAX_STEPS_IN_FLIGHT:
        in_flight.popleft().block_until_ready()
      last_group = {k: metrics[k] for k in GROUP_METRICS if k in metrics}
      # A step not from `jit_train_step` lacks the sums: one more small jitted call.
      pending.append(metrics["loop_sums"] if "loop_sums" in metrics else
                     _loop_sums(metrics["mean_loss"], metrics["weights"],
                                batch.get("is_noisy")))
      if step >= steps - steps_per_epoch:  # fetched from the devices once, after the loop
        seen = _batch_at(batch, step) if on_device else batch
        final["weights"].append(metrics["weights"])
        final["label"].append(seen["label"])
        if has_noise:
          final["is_noisy"].append(seen["is_noisy"])
      if step + 1 < steps:  # the next transfer overlaps the step just dispatched
        batch = batch_of(step + 1, batch)
      if (step + 1) % eval_every == 0 or step + 1 == steps:
        flush()
        ev = evaluate(eval_step, state, test_ds, 256, mesh)
        row = {"step": step + 1, "train_loss": running["loss"] / max(running["n"], 1),
               "test_accuracy": ev["accuracy"],
               "test_balanced_accuracy": ev["balanced_accuracy"], "test_loss": ev["loss"]}
        if has_noise:
          row["noisy_weight_share"] = running["noisy_w"] / max(running["total_w"], 1e-12)
        row.update({k: np.asarray(v).tolist() for k, v in parallel.to_host(last_group).items()})
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
  final_weights = {k: np.concatenate(parallel.to_host(v)) for k, v in final.items() if v}
  return RunResult(history, state, final_weights)
