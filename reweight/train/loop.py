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
      ``test_loss``, ``train_loss``, the same three ``val_*`` entries when a ``val_ds`` is
      given, the entries of a `MetricsHook` (e.g. the experiment's
      ``noisy_weight_share``), ``skipped_steps`` with ``skip_nonfinite``, and for a group
      method the lists ``probs``, ``group_loss``, ``group_weight_share``, ...).
    state: the final `TrainState`.
    final_weights: weights of the examples seen in the last epoch (``weights``, ``label``
      and a hook's ``final_fields`` such as ``is_noisy``, where the data has them), for
      histograms.
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


class MetricsHook(NamedTuple):
  """Metrics that an experiment adds to `train`'s rows (e.g. the noisy-label share).

  Attributes:
    names: the names of the per-step sums, in the order ``sums`` returns them.
    sums: ``sums(batch, metrics) -> {name: scalar}``, run inside the jitted step on the
      step's batch and metrics (``weights``, ``mean_loss``, ...); the loop adds them up
      over the steps since the last evaluation (skipped steps excluded).
    row: ``row(totals) -> {key: value}``, the entries added to the evaluation's row, from
      ``totals = {name: sum}`` (plain floats).
    final_fields: batch fields kept, beside the weights, for the last epoch's examples
      (`RunResult.final_weights`).

  A hook is a static argument of the compiled step: build it once and pass the same object
  to every run that shares a step (the experiment does), so the step compiles once.
  """

  names: tuple[str, ...]
  sums: Callable[[Mapping[str, jax.Array], Mapping[str, jax.Array]], Mapping[str, jax.Array]]
  row: Callable[[Mapping[str, float]], Mapping[str, Any]]
  final_fields: tuple[str, ...] = ()


# What `loop_sums` puts first in its vector, before a hook's sums: the step's mean loss, its
# non-finite counts (see `make_train_step`), whether it was skipped, and its labels out of
# range (with ``check_inputs``).
LOOP_FIELDS = ("mean_loss", "nonfinite_loss", "nonfinite_grads", "skipped", "bad_labels")


def loop_sums(metrics: Mapping[str, jax.Array], batch, hook: MetricsHook | None = None
              ) -> jax.Array:
  """What `train` reads of every step, as one float32 vector: `LOOP_FIELDS` (absent ones
  are 0), then ``hook.sums`` in the order of ``hook.names``."""
  values = [metrics.get(k, 0.0) for k in LOOP_FIELDS]
  if hook is not None:
    extra = hook.sums(batch, metrics)
    values += [extra[k] for k in hook.names]
  return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])


_loop_sums = jax.jit(loop_sums, static_argnums=2)


def _with_loop_sums(step_fn: Callable, hook: MetricsHook | None) -> Callable:
  """``step_fn`` that also takes a `PlannedBatch`, with `loop_sums` in its metrics.

  The sums the loop logs are computed inside the step instead of by a second jitted call
  per step.
  """

  @functools.wraps(step_fn)  # compiled under the step's own name
  def step(state, batch, **kwargs):
    if isinstance(batch, PlannedBatch):
      batch = batch.at(state.step)
    state, metrics = step_fn(state, batch, **kwargs)
    if isinstance(metrics, Mapping) and "mean_loss" in metrics:
      metrics = dict(metrics, loop_sums=loop_sums(metrics, batch, hook))
    return state, metrics

  return step


def jit_train_step(step_fn: Callable) -> Callable:
  """``jax.jit(step_fn, donate_argnums=0)`` that keeps the state's layout from step to step.

  The step's new state gets ``out_shardings`` equal to the shardings of the state passed in
  (e.g. the ``fsdp`` layout of `state_lib.place`), so sharded parameters and optimizer state
  never drift to another layout; the metrics' layout is the compiler's choice. One jitted
  function per distinct state layout (in practice one per run, shared by all seeds). When
  the metrics have ``mean_loss`` they also get ``loop_sums`` (`loop_sums`, what `train`
  reads of every step), with the sums of the `MetricsHook` passed as the keyword
  ``metrics_hook`` (static: one compiled step per hook). The batch may be a `PlannedBatch`
  (rows of a dataset on the devices, taken inside the step at the state's ``step``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.train.loop import jit_train_step
    >>> step = jit_train_step(lambda s, b: (s + b.sum(), {"n": b.shape[0]}))
    >>> float(step(jnp.zeros(()), jnp.ones(4))[0])
    4.0
  """
  compiled: dict = {}
  last = [None, None, None]  # the state the last call returned, its function and hook

  def step(state, batch, metrics_hook: MetricsHook | None = None, **kwargs):
    if state is last[0] and metrics_hook is last[2]:  # the layout that function pins
      fn = last[1]
    else:
      shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), state)
      key = (jax.tree.structure(state), tuple(jax.tree.leaves(shardings)), metrics_hook)
      if key not in compiled:
        if any(s is None for s in jax.tree.leaves(shardings, is_leaf=lambda x: x is None)):
          shardings = None  # host values: let jit choose
        compiled[key] = jax.jit(_with_loop_sums(step_fn, metrics_hook), donate_argnums=0,
                                out_shardings=(shardings, None))
      fn = compiled[key]
    out = fn(state, batch, **kwargs)
    last[:] = out[0], fn, metrics_hook
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


class NonFiniteError(FloatingPointError):
  """Raised by `train` when a step's loss or gradient has a non-finite value.

  Attributes:
    step: the step (1-based: the one that would have been saved as ``step``).
    loss, grads: how many non-finite per-example losses and gradient entries it had.
  """

  def __init__(self, step: int, steps: int, desc: str, loss: int, grads: int):
    what = []
    if loss:
      what.append(f"loss ({loss} non-finite per-example loss{'es' if loss > 1 else ''})")
    if grads:
      what.append(f"gradient ({grads} non-finite entr{'ies' if grads > 1 else 'y'})")
    super().__init__(f"non-finite {' and '.join(what)} at step {step} of {steps} during "
                     f"{desc}; check the inputs and learning rate, or set "
                     "skip_nonfinite=True (config.skip_nonfinite) to skip such steps")
    self.step, self.loss, self.grads = step, loss, grads


class InputCheckError(ValueError):
  """Raised by `train` when ``check_inputs`` found labels outside ``[0, num_classes)``."""

  def __init__(self, step: int, steps: int, desc: str, count: int, num_classes: int):
    super().__init__(f"{count} label{'s' if count > 1 else ''} outside [0, {num_classes}) "
                     f"in the batch of step {step} of {steps} during {desc}")
    self.step, self.count = step, count


def _scalar_items(row: Mapping[str, Any]):
  """``(tag, value)`` of a history row's numbers: lists become ``key/0``, ``key/1``, ..."""
  for k, v in row.items():
    if k == "step":
      continue
    if isinstance(v, (list, tuple)):
      for i, x in enumerate(v):
        if isinstance(x, (int, float)):
          yield f"{k}/{i}", float(x)
    elif isinstance(v, (int, float)):
      yield k, float(v)


class _TensorBoard:
  """The history rows as TensorBoard scalars (tensorboardX), in ``<run>/tensorboard``.

  Rows are written when they are saved to ``metrics.jsonl`` (at a checkpoint), so after a
  resume the event files hold each step once: a resumed run writes a new event file with
  the rows after its checkpoint. The file name ends in ``.from<step>`` (the step it starts
  after): two writers started within the same second would otherwise share a name, which
  holds only the clock's seconds and the host.
  """

  def __init__(self, logdir: str, written_up_to: int):
    from tensorboardX import SummaryWriter  # imported by the first run that writes

    self.writer = SummaryWriter(logdir, filename_suffix=f".from{written_up_to}")
    self.up_to = written_up_to

  def write(self, rows: list[dict]) -> None:
    for row in rows:
      if row["step"] > self.up_to:
        for tag, value in _scalar_items(row):
          self.writer.add_scalar(tag, value, row["step"])
        self.up_to = row["step"]
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


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


def _restore_loop_progress(saved: Mapping, final: dict) -> tuple[dict, dict]:
  final = {k: [] for k in final}
  for k, v in saved["final"].items():
    final[k] = [np.asarray(v["values"], dtype=v["dtype"])]
  return dict(saved["running"]), final


def train(*, apply_fn: Callable, params: PyTree, per_example_loss: Callable,
          weighting: Weighting, optimizer: optax.GradientTransformation,
          train_ds: Mapping[str, np.ndarray], test_ds: Mapping[str, np.ndarray],
          num_classes: int, steps: int, batch_size: int, seed: int, eval_every: int = 100,
          val_ds: Mapping[str, np.ndarray] | None = None,
          workdir: str | None = None, checkpoint_every: int | None = None,
          microbatches: int = 1, reparam: Reparam | None = None,
          loss_kwargs: Mapping[str, Any] | None = None, mesh=None, progress: bool = True,
          desc: str = "train", train_step: Callable | None = None,
          eval_step: Callable | None = None,
          preemption: Preemption | None = None, metrics_hook: MetricsHook | None = None,
          skip_nonfinite: bool = False, check_inputs: bool = False,
          tensorboard: bool = True) -> RunResult:
  """Trains for ``steps`` steps and evaluates every ``eval_every`` steps.

  Args:
    apply_fn: ``apply_fn(params, x, *, train=False, key=None) -> logits``.
    params: initial model parameters.
    per_example_loss: ``f(params, batch, *, key=None) -> (losses, aux)``.
    weighting, optimizer, reparam, microbatches: see `make_train_step`.
    train_ds, test_ds: dicts of arrays (``x``, ``label``, ``id``, optional ``is_noisy``...).
    num_classes: for balanced accuracy.
    steps, batch_size, seed, eval_every: the schedule of the run.
    val_ds: a validation split (held out of the training data), evaluated beside
      ``test_ds`` at every evaluation: ``val_accuracy``, ``val_balanced_accuracy`` and
      ``val_loss`` in each row. None: no validation entries.
    workdir: where checkpoints, ``metrics.jsonl`` and the TensorBoard events
      (``tensorboard/``) go; resumes from it if it has a checkpoint. None: nothing is
      written.
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
    metrics_hook: experiment-specific sums computed in the step and entries added to each
      row (`MetricsHook`); a step from `jit_train_step` computes them inside itself.
    skip_nonfinite: steps with a non-finite loss or gradient leave the model as it was
      (`make_train_step`; give ``train_step`` built the same way) and are counted in each
      row's ``skipped_steps`` (and left out of its sums). Off: `NonFiniteError` at the
      first such step.
    check_inputs: checks of labels and shapes in the default step (`make_train_step`);
      labels out of range raise `InputCheckError` naming the step.
    tensorboard: on process 0, also write the rows as TensorBoard scalars in
      ``workdir/tensorboard`` (appended on resume, each step once).

  The non-finite counts and label checks come with the sums the loop already reads of every
  step, when it waits for the step `MAX_STEPS_IN_FLIGHT` behind the newest (no extra host
  sync): the error names the exact step, raised at most that many steps after it ran.

  Returns:
    A `RunResult`.

  Raises:
    Preempted: after saving, when ``preemption`` said to stop.
    NonFiniteError: a step had a non-finite loss or gradient (without ``skip_nonfinite``).
    InputCheckError: ``check_inputs`` found a label out of range.
  """
  if steps < 1 or batch_size < 1 or eval_every < 1:
    raise ValueError(f"steps={steps}, batch_size={batch_size} and eval_every={eval_every} "
                     "must all be >= 1")
  mesh = mesh or parallel.make_mesh()
  loss_kwargs = parallel.replicate(dict(loss_kwargs or {}), mesh)
  if train_step is None:
    train_step = jit_train_step(make_train_step(
        per_example_loss, weighting, optimizer, reparam=reparam, microbatches=microbatches,
        skip_nonfinite=skip_nonfinite, check_inputs=check_inputs, num_classes=num_classes))
  if eval_step is None:
    eval_step = jax.jit(make_eval_step(apply_fn, num_classes, reparam=reparam))
  hook_names = metrics_hook.names if metrics_hook is not None else ()
  step_kwargs = dict(loss_kwargs)
  if getattr(train_step, "accepts_planned_batch", False):
    step_kwargs["metrics_hook"] = metrics_hook

  # The reparam's init (e.g. PiSSA's SVD) runs on the params in their sharded layout.
  state = state_lib.create(parallel.shard_params(params, mesh), optimizer, weighting,
                           jax.random.PRNGKey(seed), reparam=reparam)
  # The step donates its input state: copy it, so the caller's `params` stay usable.
  state = state_lib.place(jax.tree.map(lambda x: jnp.array(x, copy=True), state), mesh)
  history: list[dict] = []
  # The loop's own progress: sums of the steps since the last evaluation, and the weights of
  # the last epoch; both are checkpointed, so a resumed run ends like an uninterrupted one.
  def fresh_sums():
    return {"loss": 0.0, "n": 0, **{k: 0.0 for k in hook_names}, "skipped": 0}

  running = fresh_sums()
  final_fields = ("weights", *(metrics_hook.final_fields if metrics_hook else ()), "label")
  final = {k: [] for k in final_fields}
  manager = metrics_path = board = None
  writer = jax.process_index() == 0  # the one process that writes files besides orbax
  latest = None
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
        running, final = _restore_loop_progress(restored["loop"], final)
    if tensorboard and writer:
      board = _TensorBoard(os.path.join(workdir, "tensorboard"), latest or 0)
  checkpoint_every = checkpoint_every or eval_every

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
  # The `loop_sums` of the dispatched steps not read yet, oldest first: (step, sums).
  unread = collections.deque()

  def account(step, sums):
    """Adds one step's sums (read from the devices) to the running sums, or stops."""
    loss, bad_loss, bad_grads, skipped, bad_labels = (float(v) for v in sums[:5])
    if bad_labels:
      raise InputCheckError(step + 1, steps, desc, int(bad_labels), num_classes)
    if skipped:
      running["skipped"] = running.get("skipped", 0) + 1
      return
    if bad_loss or bad_grads:
      raise NonFiniteError(step + 1, steps, desc, int(bad_loss), int(bad_grads))
    running["loss"] += loss
    running["n"] += 1
    for name, value in zip(hook_names, sums[5:]):
      running[name] = running.get(name, 0.0) + float(value)

  def flush():
    """Reads every unread step's sums (on device until now) into the running sums."""
    if unread:
      for (step, _), sums in zip(unread, parallel.to_host([s for _, s in unread])):
        account(step, sums)
      unread.clear()

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
      if board is not None:
        board.write(history)
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
      state, metrics = train_step(state, batch, **step_kwargs)
      # A step not from `jit_train_step` lacks the sums: one more small jitted call.
      unread.append((step, metrics["loop_sums"] if "loop_sums" in metrics else
                     _loop_sums(metrics, batch, metrics_hook)))
      if len(unread) > MAX_STEPS_IN_FLIGHT:  # waits for that step (bounded steps in flight)
        old, sums = unread.popleft()
        account(old, parallel.to_host(sums))
      last_group = {k: metrics[k] for k in GROUP_METRICS if k in metrics}
      if step >= steps - steps_per_epoch:  # fetched from the devices once, after the loop
        seen = _batch_at(batch, step) if on_device else batch
        for k in final:
          if k == "weights":
            final[k].append(metrics["weights"])
          elif k in seen:
            final[k].append(seen[k])
      if step + 1 < steps:  # the next transfer overlaps the step just dispatched
        batch = batch_of(step + 1, batch)
      if (step + 1) % eval_every == 0 or step + 1 == steps:
        flush()
        ev = evaluate(eval_step, state, test_ds, 256, mesh)
        row = {"step": step + 1, "train_loss": running["loss"] / max(running["n"], 1),
               "test_accuracy": ev["accuracy"],
               "test_balanced_accuracy": ev["balanced_accuracy"], "test_loss": ev["loss"]}
        if val_ds is not None:
          vev = evaluate(eval_step, state, val_ds, 256, mesh)
          row.update({"val_accuracy": vev["accuracy"],
                      "val_balanced_accuracy": vev["balanced_accuracy"],
                      "val_loss": vev["loss"]})
        if metrics_hook is not None:
          row.update(metrics_hook.row({k: running.get(k, 0.0) for k in hook_names}))
        if skip_nonfinite:
          row["skipped_steps"] = int(running.get("skipped", 0))
        row.update({k: np.asarray(v).tolist() for k, v in parallel.to_host(last_group).items()})
        history.append(row)
        running = fresh_sums()
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
    if board is not None:
      board.close()
  final_weights = {k: np.concatenate(parallel.to_host(v)) for k, v in final.items() if v}
  return RunResult(history, state, final_weights)
