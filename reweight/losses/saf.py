"""SAF: Sharpness-Aware training for Free (Du et al., NeurIPS 2022).

SAF replaces SAM's extra forward-backward pass by a *trajectory loss*: the current output on
an example is kept close to the output the model gave on the same example ``E`` epochs ago,
which penalizes the sharp changes of the loss along the optimization trajectory. Per example,

.. math::

  \\ell_i = \\text{CE}(z_i, y_i) + \\lambda\\, \\tau^2\\,
    \\mathrm{KL}\\big(\\text{softmax}(\\text{sg}(z^{past}_i)/\\tau)\\,\\big\\|\\,
    \\text{softmax}(z_i/\\tau)\\big)

with ``z_past`` the logits of example ``i`` recorded ``E`` epochs ago (``tau = 5``,
``lambda = 0.3`` (0.8 for some ImageNet models), ``E = 2-3``, the KL term switched on after
``E_start = 5`` epochs, as in the authors' README). The only extra cost is a per-example
logit memory.

**Memory.** The authors keep a ring of ``E + 1`` host-side snapshots ``[N, E + 1, C]``:
during epoch ``e`` they write slot ``e % (E + 1)`` and read slot ``(e - E) % (E + 1)``. Here
the ring has ``E`` slots ``[E, N, C]`` (``epochs_ago = E``): in epoch ``e`` an example's
past logits are read from slot ``e % E`` *before* the same step overwrites that slot with its
current logits, which is the same data in one slot less (``E = 1``: a single ``[N, C]``
memory holding last epoch's logits). This relies on each example being visited at most once
per epoch (epoch-wise shuffling without replacement); with sampling with replacement an
example seen twice in an epoch reads its own logits of that epoch the second time. Every
entry also records the epoch in which it was written, so `read_memory` reports whether the
entry is really from epoch ``e - E`` (``has_past``): examples skipped in that epoch, or
epochs before ``E``, get no trajectory term instead of a stale or zero target. Use
``dtype=jnp.bfloat16`` to halve the memory.

**Memory per example.** Each example id holds ``E`` rows of ``C`` logits plus ``E`` int32
write epochs: ``E (4 C + 4)`` bytes in float32, ``E (2 C + 4)`` in bfloat16 (``E = 2``,
``C = 1000``: about 8 kB per example, 8 GB for a million examples when replicated).

**Sharding.** Under `jax.jit` (the global view) the memory can be sharded by example id over
the mesh's data axis: ``saf_memory(..., mesh=mesh)`` (or ``saf_memory_writer(..., mesh=mesh)``,
or `reweight.parallel.shard_examples` with ``dim=1``) places it so that each of ``D`` devices
holds ``N / D`` ids (``E (4 C + 4) N / D`` bytes per device; ``N`` must be a multiple of
``D``: round it up). `read_memory` is then a gather and `update_memory` a scatter that XLA
partitions across devices, with the same values as a replicated memory, and the jitted step
returns the memory with the same sharding. Inside `jax.shard_map` / `pmap`, `update_memory`
with ``axis_name`` all-gathers the ``(ids, logits, mask)`` of the global batch before the
scatter (as a ``psum`` of zero-padded buffers, so the result is typed as replicated under
`shard_map`'s ``check_vma``). A replicated memory (``P()``) is then written identically on
every device and `read_memory` is a local gather. Inside `jax.shard_map` with its default
``check_vma=True`` the memory may also be sharded by id (``in_specs`` and ``out_specs``
``P(None, "data")``, recognized by its type): each device writes the rows it holds, and
`read_memory` with ``axis_name`` all-gathers the batch's ids, answers for its rows and
returns each device its examples' rows with a ``psum_scatter`` (exact). Under `jax.pmap`
or ``check_vma=False`` the memory must be replicated.

In a training step the memory can travel as the state of `saf_memory_writer`, a `Weighting`
with uniform weights that writes the aux ``logits`` of the batch's ``id``s, so it is carried,
sharded and checkpointed like any weighting state::

  writer = saf.saf_memory_writer(N, C, steps_per_epoch=S, epochs_ago=2)
  loss_fn = reweight.weighted(per_example, writer)   # per_example(params, batch, past,
                                                     #   active) -> (losses, {"logits": z})
  epoch = step // S
  past, has_past = saf.read_memory(memory, batch["id"], epoch)
  (loss, (memory, info)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch, memory, step=step, past=past, active=has_past & (epoch >= 5))

with ``per_example`` returning ``saf_loss(z, batch["label"], past, active=active)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from reweight import parallel
from reweight.base import Weighting, valid_mask
from reweight.losses.classification import softmax_cross_entropy
from reweight.parallel import AxisName

Array = jax.Array


class SAFMemory(NamedTuple):
  """Per-example logit memory of SAF.

  Attributes:
    logits: ``[E, N, C]``, slot ``e % E`` holds the logits written in epoch ``e``.
    written: ``[E, N]`` int32, the epoch in which each entry was written (-1: never).
  """

  logits: Array
  written: Array


def saf_memory(num_examples: int, num_classes: int, *, epochs_ago: int = 1,
               dtype=jnp.float32, mesh: Mesh | None = None,
               axis_name: str | tuple[str, ...] | None = None) -> SAFMemory:
  """An empty SAF memory for ``num_examples`` examples of ``num_classes`` logits.

  Args:
    num_examples: ``N``, the size of the training set (``example_ids`` are in ``[0, N)``).
    num_classes: ``C``, the number of logits per example.
    epochs_ago: ``E``, how many epochs back the reference logits are (the ring size).
    dtype: storage dtype of the logits (``jnp.bfloat16`` halves the memory).
    mesh: optional `Mesh`: the memory is placed on it sharded by example id over
      ``axis_name`` (`reweight.parallel.shard_examples`), for use under `jax.jit` or inside
      `jax.shard_map` with ``in_specs=P(None, "data")`` (see the module's "Sharding");
      ``num_examples`` must then be a multiple of the number of devices along it.
    axis_name: the mesh axis (or axes) to shard the examples over; None: the mesh's batch
      axes (``"data"``). Only with ``mesh``.

  Returns:
    A `SAFMemory` with zero logits and ``written = -1``: ``E (C itemsize + 4)`` bytes per
    example (``E (4 C + 4)`` in float32), divided among the devices when sharded.

  Examples:
    >>> from reweight.losses import saf_memory
    >>> memory = saf_memory(10, 3, epochs_ago=2)
    >>> memory.logits.shape, memory.written.shape
    ((2, 10, 3), (2, 10))
    >>> from reweight import parallel
    >>> sharded = saf_memory(8, 3, epochs_ago=2, mesh=parallel.make_mesh(1))
    >>> tuple(sharded.logits.sharding.spec)  # each device holds 8 / num_devices ids
    (None, 'data')
  """
  for name, value in (("num_examples", num_examples), ("num_classes", num_classes),
                      ("epochs_ago", epochs_ago)):
    if not isinstance(value, int | np.integer) or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive integer")
  memory = SAFMemory(jnp.zeros((epochs_ago, num_examples, num_classes), dtype),
                     jnp.full((epochs_ago, num_examples), -1, jnp.int32))
  if mesh is not None:
    memory = parallel.shard_examples(memory, mesh, axis_name, dim=1)
  return memory


def _check_ids(memory: SAFMemory, example_ids) -> Array:
  ids = jnp.asarray(example_ids)
  if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"example_ids must be integers of shape [batch], got shape {ids.shape} "
                     f"and dtype {ids.dtype}")
  num_examples = memory.written.shape[1]
  if not isinstance(ids, jax.core.Tracer) and ids.size:
    i = np.asarray(ids)
    bad = (i < 0) | (i >= num_examples)
    if bad.any():
      raise ValueError(f"example id {int(i[bad].flat[0])} is out of range: the memory holds "
                       f"ids 0..{num_examples - 1}")
  return ids


def read_memory(memory: SAFMemory, example_ids: Array, epoch, *,
                axis_name: AxisName = None) -> tuple[Array, Array]:
  """The logits of ``example_ids`` recorded ``E`` epochs before ``epoch``.

  Args:
    memory: a `SAFMemory`.
    example_ids: ``[B]`` integer ids in ``[0, N)``.
    epoch: the current epoch (an int or a scalar array).
    axis_name: inside `jax.shard_map`, the batch axis name(s). Needed only for a memory
      sharded by example id (passed with ``in_specs=P(None, axis_name)``, detected by its
      type under ``check_vma=True``): the ids of the global batch are all-gathered, each
      device answers for the ids it holds and the answers are summed back to the devices
      of the examples (``psum_scatter``; exact, one device holds each id). A replicated
      memory is read locally.

  Returns:
    ``(past_logits [B, C] float32, has_past [B] bool)``; ``has_past`` is False where the
    entry was not written in epoch ``epoch - E`` (never seen, or skipped that epoch), and
    such rows of ``past_logits`` must not be used (`saf_loss` with ``active=has_past``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import read_memory, saf_memory, update_memory
    >>> memory = update_memory(saf_memory(4, 2), jnp.array([1, 3]),
    ...                        jnp.array([[1.0, 2.0], [3.0, 4.0]]), epoch=0)
    >>> past, has_past = read_memory(memory, jnp.array([3, 0]), epoch=1)
    >>> past.tolist(), has_past.tolist()
    ([[3.0, 4.0], [0.0, 0.0]], [True, False])
  """
  ids = _check_ids(memory, example_ids)
  ring, num_examples = memory.written.shape
  epoch = jnp.asarray(epoch, jnp.int32)
  slot = epoch % ring
  axis_name = parallel.resolve_axis_name(axis_name)
  if _sharded(memory, axis_name):
    num_local = num_examples
    num_examples = num_local * jax.lax.axis_size(axis_name)
    in_range = (ids >= 0) & (ids < num_examples)
    safe = _replicated_gather(jnp.where(in_range, ids, 0), axis_name)
    local, owned = _local_rows(safe, num_local, axis_name)
    rows = memory.logits[slot].at[local].get(mode="fill", fill_value=0).astype(jnp.float32)
    written = memory.written[slot].at[local].get(mode="fill", fill_value=-1)
    hit = (owned & (written == epoch - ring)).astype(jnp.int32)
    past = jax.lax.psum_scatter(rows, axis_name, scatter_dimension=0, tiled=True)
    hit = jax.lax.psum_scatter(hit, axis_name, scatter_dimension=0, tiled=True)
    return past, in_range & (epoch >= ring) & (hit > 0)
  in_range = (ids >= 0) & (ids < num_examples)
  safe = jnp.where(in_range, ids, 0)
  past = memory.logits[slot][safe].astype(jnp.float32)
  has_past = in_range & (epoch >= ring) & (memory.written[slot][safe] == epoch - ring)
  return past, has_past


def _sharded(memory: SAFMemory, axis_name: AxisName) -> bool:
  """Whether, inside `shard_map`, ``memory`` holds only this device's rows of the ids."""
  return axis_name is not None and parallel.is_typed(memory.written, axis_name)


def _local_rows(ids: Array, num_local: int, axis_name: AxisName) -> tuple[Array, Array]:
  """Row of each global id in this device's block of ``num_local`` ids (out of bounds and
  False where another device holds it)."""
  local = ids - jax.lax.axis_index(axis_name) * num_local
  owned = (local >= 0) & (local < num_local)
  return jnp.where(owned, local, num_local), owned


def _replicated_gather(x: Array, axis_name: AxisName) -> Array:
  """All-gather of the batch axis (tiled) whose result is typed device-invariant.

  Each device writes its rows into a zero buffer of the global batch and the buffers are
  ``psum``-ed (adding zeros is exact), so under `shard_map`'s replication checking the
  memory can be returned with a replicated ``out_specs``, unlike with `lax.all_gather`.
  """
  local = x.shape[0]
  size = jax.lax.axis_size(axis_name)
  offset = jax.lax.axis_index(axis_name) * local
  buffer = jnp.zeros((size * local,) + x.shape[1:], x.dtype)
  return jax.lax.psum(jax.lax.dynamic_update_slice_in_dim(buffer, x, offset, 0), axis_name)


def update_memory(memory: SAFMemory, example_ids: Array, logits: Array, *, epoch,
                  mask: Array | None = None, axis_name: AxisName = None) -> SAFMemory:
  """Writes this batch's logits (under stop-gradient) into the slot of ``epoch``.

  Call it after `read_memory` in the same step. Masked rows and rows with non-finite logits
  are not written. Ids should be unique within a (global) batch; for duplicates one of the
  rows is kept.

  Args:
    memory: a `SAFMemory`, replicated or sharded by example id (see the module's
      "Sharding").
    example_ids: ``[B]`` integer ids in ``[0, N)``.
    logits: ``[B, C]`` the current logits.
    epoch: the current epoch (an int or a scalar array).
    mask: optional ``[B]`` booleans.
    axis_name: inside `shard_map` / `pmap`, the batch axis name(s): the batch's ids, logits
      and mask are all-gathered so every device writes the same rows (a replicated memory)
      or the rows of the ids it holds (a memory sharded by example id inside `shard_map`
      with ``check_vma=True``, see `read_memory`).

  Returns:
    The updated `SAFMemory`, identical on every device (or sharded like ``memory``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import saf_memory, update_memory
    >>> memory = update_memory(saf_memory(3, 2), jnp.array([2, 0]),
    ...                        jnp.array([[1.0, -1.0], [0.5, 0.5]]), epoch=4,
    ...                        mask=jnp.array([True, False]))
    >>> memory.logits[0].tolist(), memory.written[0].tolist()
    ([[0.0, 0.0], [0.0, 0.0], [1.0, -1.0]], [-1, -1, 4])
  """
  ids = _check_ids(memory, example_ids)
  ring, num_examples, num_classes = memory.logits.shape
  axis_name = parallel.resolve_axis_name(axis_name)
  sharded = _sharded(memory, axis_name)
  logits = jnp.asarray(logits)
  if logits.shape != (ids.shape[0], num_classes):
    raise ValueError(f"logits have shape {logits.shape}; expected {(ids.shape[0], num_classes)}"
                     " (one row of num_classes logits per example id)")
  keep = jnp.all(jnp.isfinite(logits), axis=-1)
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != ids.shape:
      raise ValueError(f"mask has shape {mask.shape} but example_ids have shape {ids.shape}")
    keep = keep & mask.astype(bool)
  logits = jax.lax.stop_gradient(logits).astype(memory.logits.dtype)
  if axis_name is not None:
    ids = _replicated_gather(ids, axis_name)
    logits = _replicated_gather(logits, axis_name)
    keep = _replicated_gather(keep.astype(jnp.int32), axis_name).astype(bool)
  epoch = jnp.asarray(epoch, jnp.int32)
  slot = epoch % ring
  if sharded:  # this device's rows only; the others are out of bounds
    ids, owned = _local_rows(ids, num_examples, axis_name)
    keep = keep & owned
  target = jnp.where(keep, ids, num_examples)  # out of bounds: dropped by the scatter
  new_logits = memory.logits.at[slot, target].set(logits, mode="drop")
  new_written = memory.written.at[slot, target].set(
      jnp.broadcast_to(epoch, target.shape), mode="drop")
  return SAFMemory(new_logits, new_written)


def saf_loss(logits: Array, labels: Array, memory_logits: Array, tau: float = 5.0,
             lam: float = 0.3, active: Array | bool = True, *,
             mask: Array | None = None) -> Array:
  """Per-example SAF loss: cross-entropy plus the trajectory KL to past logits.

  .. math::

    \\ell_i = -\\log p_{y_i}(z_i) + a_i\\, \\lambda \\tau^2 \\sum_k q_{ik}
      \\big(\\log q_{ik} - \\log p_{ik}(z_i/\\tau)\\big), \\quad
    q_i = \\text{softmax}(\\text{sg}(z^{past}_i)/\\tau)

  Args:
    logits: ``[B, C]`` current logits (gradients flow through them).
    labels: ``[B]`` integer labels.
    memory_logits: ``[B, C]`` the logits of the same examples ``E`` epochs ago (from
      `read_memory`); held under stop-gradient.
    tau: the temperature (the paper's 5).
    lam: the weight ``lambda`` of the trajectory term (0.3 in the paper, 0.8 for some
      ImageNet models).
    active: a bool or ``[B]`` booleans; the KL term is added only where True (e.g.
      ``has_past & (epoch >= start_epoch)``).
    mask: optional ``[B]`` booleans; masked examples get loss 0.

  Returns:
    ``[B]`` per-example losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import saf_loss
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 0.0]])
    >>> same = saf_loss(logits, jnp.array([0, 1]), logits)  # KL(q || q) = 0: plain CE
    >>> [round(x, 4) for x in same.tolist()]
    [0.1269, 0.6931]
    >>> moved = saf_loss(logits, jnp.array([0, 1]), jnp.zeros((2, 2)))  # past: uniform
    >>> bool(moved[0] > same[0]), bool(moved[1] == same[1])
    (True, True)

  References:
    Du, Zhou, Feng, Tan and Zhou, "Sharpness-Aware Training for Free", NeurIPS 2022
    (code: github.com/AngusDujw/SAF).
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  memory_logits = jnp.asarray(memory_logits)
  if logits.ndim != 2:
    raise ValueError(f"logits must have shape [batch, classes], got {logits.shape}")
  if memory_logits.shape != logits.shape:
    raise ValueError(f"memory_logits have shape {memory_logits.shape} but logits have shape "
                     f"{logits.shape}")
  if isinstance(tau, int | float) and not tau > 0:
    raise ValueError(f"tau={tau!r} must be positive")
  z = logits.astype(jnp.float32)
  ce = softmax_cross_entropy(z, labels)  # also checks the labels' shape, dtype and range
  past = jax.lax.stop_gradient(memory_logits).astype(jnp.float32)
  log_q = jax.nn.log_softmax(past / tau, axis=-1)
  log_p_tau = jax.nn.log_softmax(z / tau, axis=-1)
  kl = jnp.sum(jnp.exp(log_q) * (log_q - log_p_tau), axis=-1)
  active = jnp.broadcast_to(jnp.asarray(active, bool), ce.shape) & jnp.all(
      jnp.isfinite(past), axis=-1)
  loss = ce + jnp.where(active, lam * tau * tau * jnp.where(active, kl, 0.0), 0.0)
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != ce.shape:
      raise ValueError(f"mask has shape {mask.shape} but labels have shape {ce.shape}")
    loss = jnp.where(mask.astype(bool), loss, 0.0)
  return loss


def saf_memory_writer(num_examples: int, num_classes: int, *, steps_per_epoch: int,
                      epochs_ago: int = 1, dtype=jnp.float32,
                      axis_name: AxisName = None, mesh: Mesh | None = None) -> Weighting:
  """A `Weighting` with uniform weights whose state is the SAF memory it keeps up to date.

  ``update`` writes the ``logits`` extra (return it in the per-example loss function's aux
  dict) of the ``example_ids`` extra (the batch's ``"id"`` field) into the slot of epoch
  ``step // steps_per_epoch`` (`update_memory`), and returns weight 1 on every valid example
  (``mask & isfinite(losses)``). Read the past logits with `read_memory` on the state
  *before* the step. Combine with another weighting with `reweight.chain`.

  Args:
    num_examples: ``N``.
    num_classes: ``C``.
    steps_per_epoch: optimizer steps per epoch (> 0).
    epochs_ago: ``E`` (see `saf_memory`).
    dtype: storage dtype of the logits.
    axis_name: inside `shard_map` / `pmap`, the batch axis name(s).
    mesh: optional `Mesh`: ``init`` returns the memory sharded by example id over the
      mesh's batch axes (see `saf_memory`), for a step under `jax.jit`, or inside
      `jax.shard_map` (``check_vma=True``) with the memory on ``P(None, "data")``.

  Returns:
    A `Weighting` whose state is a `SAFMemory` (``E (4 C + 4)`` bytes per example in float32,
    divided among the devices with ``mesh``); ``update`` needs ``step=``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import read_memory, saf_memory_writer
    >>> writer = saf_memory_writer(5, 2, steps_per_epoch=10)
    >>> w, memory = writer.update(jnp.ones(2), writer.init(), step=3,
    ...                           example_ids=jnp.array([4, 1]), logits=jnp.ones((2, 2)))
    >>> w.tolist(), read_memory(memory, jnp.array([1, 2]), epoch=1)[1].tolist()
    ([1.0, 1.0], [True, False])

  References:
    Du, Zhou, Feng, Tan and Zhou, "Sharpness-Aware Training for Free", NeurIPS 2022.
  """
  if not isinstance(steps_per_epoch, int | np.integer) or steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be a positive integer")
  empty = saf_memory(num_examples, num_classes, epochs_ago=epochs_ago, dtype=dtype, mesh=mesh)

  def init(key=None):
    del key
    return empty

  def update(losses, state, *, mask=None, step=None, example_ids=None, logits=None,
             **extras):
    del extras
    if step is None or example_ids is None or logits is None:
      raise ValueError(
          "saf_memory_writer needs step=, example_ids= and logits= (the batch's 'id' field, "
          "and logits in the per-example loss fn's aux dict)")
    valid = valid_mask(losses, mask)
    epoch = jnp.asarray(step) // steps_per_epoch
    state = update_memory(state, example_ids, logits, epoch=epoch, mask=valid,
                          axis_name=axis_name)
    return jax.lax.stop_gradient(valid.astype(jnp.float32)), state

  return Weighting(init, update)
