"""Meshes, batch sharding, and batch reductions that know about named axes.

`reweight` code is written in the global view: under `jax.jit` with the batch sharded on a
`Mesh`, a sum or a max over the batch is a global one by construction. Inside
`jax.shard_map` (or `jax.pmap`) each device sees only its shard, so a weighting constructed
with ``axis_name="data"`` reduces across devices with `lax.psum` / `lax.pmax`. Means are
always ``psum(numerator) / psum(denominator)``, never a mean of per-device means.

**Sharded parameters.** A 2-D mesh ``data x fsdp`` (`make_mesh_from_spec`, e.g.
``"data:4,fsdp:2"``) splits the batch over both axes (`batch_sharding`) and each parameter
over ``fsdp`` along its largest divisible dimension (`shard_params`). Under `jax.jit` the
code stays global-view, so the layout changes no number.

**The shard_map convention.** `jax.shard_map` with its default ``check_vma=True`` types
every value as varying over a mesh axis or invariant (replicated) across it. Inside
``reweight.weighted(f, w, axis_name="data")`` the loss is the global batch's, typed
invariant, and JAX's AD already sums the gradient of replicated (``P()``) parameters over
the devices (the transpose of an implicit `lax.pcast` to varying is a ``psum``), so the
gradient on every device is the global one: write no ``psum`` yourself (one would multiply
the gradient by the number of devices). `jax.pmap` (and ``shard_map(check_vma=False)``) has
no such typing: there the loss is still the global value, but its gradient is this device's
share, and the training step must ``psum`` the gradients over the axis (`is_typed` tells
the two apart from a per-example value).

**Inherited axis names.** While `reweight.weighted` (or a loss helper given
``axis_name``) runs, `batch_axis` makes its ``axis_name`` the default of every reduction
here: a weighting built without ``axis_name`` uses the one of `weighted`, and one built with
a *different* axis name raises `ValueError` (`resolve_axis_name`).

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from reweight import parallel
  >>> parallel.batch_mean(jnp.array([1.0, 2.0, 9.0]), where=jnp.array([True, True, False]))
  Array(1.5, dtype=float32)

  The data-parallel step inside `jax.shard_map` (any number of devices): no ``psum``.

  >>> import reweight
  >>> from jax.sharding import PartitionSpec as P
  >>> weighting = reweight.sample.loss_based("upper", r=1.0)  # inherits axis_name="data"
  >>> fn = reweight.weighted(lambda w, b: (b["x"] * w - b["y"]) ** 2, weighting,
  ...                        axis_name="data")
  >>> def step(w, batch, state):
  ...   (loss, (state, _)), grad = jax.value_and_grad(fn, has_aux=True)(w, batch, state)
  ...   return loss, grad, state
  >>> sharded = jax.jit(jax.shard_map(step, mesh=parallel.make_mesh(),
  ...                                 in_specs=(P(), P("data"), P()), out_specs=P()))
  >>> batch = {"x": jnp.ones(8), "y": jnp.arange(8.0)}
  >>> loss, grad, _ = sharded(jnp.float32(1.0), batch, weighting.init())
  >>> ref = jax.grad(lambda w: reweight.weighted(lambda w, b: (b["x"] * w - b["y"]) ** 2,
  ...     weighting)(w, batch, weighting.init())[0])(jnp.float32(1.0))
  >>> bool(jnp.allclose(grad, ref))
  True
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AxisName = str | tuple[str, ...] | None

_UNSET = object()
_BATCH_AXIS: contextvars.ContextVar = contextvars.ContextVar("reweight_batch_axis",
                                                            default=_UNSET)


def axis_tuple(axis_name: AxisName) -> tuple[str, ...]:
  """``axis_name`` as a tuple of axis names (``()`` for None)."""
  if axis_name is None:
    return ()
  return (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)


@contextlib.contextmanager
def batch_axis(axis_name: AxisName) -> Iterator[None]:
  """Sets the batch axis name(s) that `resolve_axis_name` gives the code traced inside.

  `reweight.weighted` wraps its loss in it, so that a weighting built without
  ``axis_name`` reduces over the axis given to `weighted`.

  Examples:
    >>> from reweight import parallel
    >>> with parallel.batch_axis("data"):
    ...   parallel.resolve_axis_name(None)
    'data'
    >>> parallel.resolve_axis_name(None) is None
    True
  """
  token = _BATCH_AXIS.set(axis_name)
  try:
    yield
  finally:
    _BATCH_AXIS.reset(token)


def resolve_axis_name(axis_name: AxisName) -> AxisName:
  """The batch axis name(s) a reduction uses: its own, or that of the enclosing `batch_axis`.

  Outside `batch_axis` this is ``axis_name``. Inside, None means the enclosing axis name,
  and an axis name that differs from it is an error (a weighting built for another axis than
  the loss that uses it would normalize over a different set of examples than the loss).

  Raises:
    ValueError: if ``axis_name`` is given and differs from the enclosing one.

  Examples:
    >>> from reweight import parallel
    >>> with parallel.batch_axis("data"):  # doctest: +ELLIPSIS
    ...   parallel.resolve_axis_name("model")
    Traceback (most recent call last):
    ...
    ValueError: axis_name='model' does not match the batch axis 'data' of the enclosing ...
  """
  enclosing = _BATCH_AXIS.get()
  if enclosing is _UNSET:
    return axis_name
  if axis_name is None:
    return enclosing
  if axis_tuple(axis_name) != axis_tuple(enclosing):
    raise ValueError(
        f"axis_name={axis_name!r} does not match the batch axis {enclosing!r} of the enclosing "
        "reweight.weighted (or batch-level loss): build the weighting without axis_name (it "
        f"then uses {enclosing!r}) or with the same axis_name")
  return axis_name


def varying_axes(x: Any) -> frozenset[str]:
  """The mesh axes over which ``x`` is typed as varying (JAX's "vma").

  Non-empty only inside `jax.shard_map` with ``check_vma=True`` (its default): a value
  computed from a batch sharded on ``"data"`` varies over ``"data"``, a replicated one (or a
  ``psum``) is invariant. Under `jax.jit`, `jax.pmap` or ``check_vma=False`` it is empty.
  """
  aval = jax.typeof(x)
  vma = getattr(aval, "vma", None)
  if vma is None:  # jax >= 0.10 keeps it on the aval's manual axis type
    vma = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
  return frozenset(vma or ())


def is_typed(per_example: Any, axis_name: AxisName) -> bool:
  """Whether a per-example value is typed as varying over every axis of ``axis_name``.

  True inside `jax.shard_map` with ``check_vma=True`` and the batch sharded over
  ``axis_name``: JAX then tracks replication and sums the gradients of replicated inputs
  itself. False for ``axis_name=None``, under `jax.jit`, `jax.pmap` and
  ``shard_map(check_vma=False)``, where the ``psum`` of gradients is the caller's.

  Raises:
    ValueError: if ``per_example`` varies over some but not all of ``axis_name``'s axes
      (the batch is not sharded over the axes the reductions are over).
  """
  axes = set(axis_tuple(axis_name))
  if not axes:
    return False
  varying = varying_axes(per_example)
  if not axes & varying:
    return False
  if not axes <= varying:
    raise ValueError(
        f"the per-example values vary over the mesh axes {sorted(varying)} but axis_name="
        f"{axis_name!r} also names {sorted(axes - varying)}, over which they are replicated: "
        "axis_name must name the axes the batch is sharded over")
  return True


def global_sum(local: Any, axis_name: AxisName, typed: bool) -> Any:
  """The sum over devices of per-device partial sums, with the convention's gradient.

  The value is the global sum on every device. With ``typed`` (see `is_typed`) it is a plain
  ``psum``, typed invariant, whose transpose JAX's AD handles (the gradient of replicated
  inputs comes out summed over devices). Without typing (`jax.pmap`, ``check_vma=False``)
  the gradient flows to this device's ``local`` only: ``psum(sg(local)) + local - sg(local)``,
  so that a ``psum`` of the gradients over the devices is the global gradient (a plain
  ``psum`` there would be differentiated into a ``psum`` and multiply it by the device
  count). ``axis_name=None`` returns ``local``.
  """
  axis_name = resolve_axis_name(axis_name)
  if axis_name is None:
    return local
  if typed:
    return jax.tree.map(lambda x: lax.psum(x, axis_name), local)

  def one(x):
    stopped = lax.stop_gradient(x)
    return lax.psum(stopped, axis_name) + (x - stopped)

  return jax.tree.map(one, local)


def psum_partials(tree: Any, axis_name: AxisName, typed: bool) -> Any:
  """Sums per-device partial results (e.g. gradients of this device's examples) over devices.

  With ``typed`` (see `is_typed`) a leaf typed as invariant is already the global sum
  (JAX's AD summed the gradient of a replicated input) and is returned as is; a leaf typed
  as varying is ``psum``-ed. Without typing every leaf is a per-device partial and is
  ``psum``-ed. ``axis_name=None`` returns ``tree``.
  """
  axis_name = resolve_axis_name(axis_name)
  if axis_name is None:
    return tree
  axes = set(axis_tuple(axis_name))

  def one(x):
    if typed and not axes & varying_axes(x):
      return x
    return lax.psum(x, axis_name)

  return jax.tree.map(one, tree)


def initialize_processes(coordinator_address: str, num_processes: int | None,
                         process_id: int | None) -> None:
  """Joins this process to a multi-process JAX job (`jax.distributed.initialize`).

  Call it first, before anything touches a device. CPU devices get gloo collectives
  (``jax_cpu_collectives_implementation``), without which a CPU computation cannot span
  processes; accelerators keep their own.

  Raises:
    ValueError: naming the bad or missing ``num_processes`` / ``process_id``.
  """
  if num_processes is None or process_id is None:
    raise ValueError(f"coordinator_address={coordinator_address!r} needs num_processes and "
                     f"process_id too; got num_processes={num_processes}, "
                     f"process_id={process_id}")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id} must be in [0, num_processes) with "
                     f"num_processes={num_processes} >= 1")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(num_devices: int | None = None, axis_name: str = "data",
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel `Mesh` over ``num_devices`` devices (all by default).

  The axis is of type `AxisType.Auto`, so global-view code under `jax.jit` needs no
  sharding annotations beyond those of its inputs.

  Args:
    num_devices: how many devices to use; all of ``jax.devices()`` if None.
    axis_name: the mesh axis the batch is sharded on.
    devices: explicit devices (overrides ``num_devices``).
  """
  if devices is None:
    available = jax.devices()
    if num_devices is None:
      num_devices = len(available)
    if not 1 <= num_devices <= len(available):
      raise ValueError(
          f"num_devices={num_devices} is not in [1, {len(available)}] "
          f"(the number of available devices)")
    devices = available[:num_devices]
  return jax.make_mesh((len(devices),), (axis_name,), axis_types=(AxisType.Auto,),
                       devices=devices)


# The mesh axes a batch is split over (in this order) when a mesh has them: ``data`` (data
# parallelism) and ``fsdp`` (sharded parameters; its devices also take their own examples).
BATCH_AXES = ("data", "fsdp")
# The axis names a mesh spec (`make_mesh_from_spec`, ``config.mesh``) may use.
MESH_AXES = BATCH_AXES


def parse_mesh_spec(spec: str | None, num_devices: int) -> tuple[tuple[str, int], ...]:
  """``((axis, size), ...)`` of a mesh spec such as ``"data:4,fsdp:2"``.

  The spec is a comma-separated list of ``axis:size`` with axis names from `MESH_AXES`, each
  at most once; one entry may omit its size (or give ``-1``) to take the devices the others
  leave. An empty spec (or None) is ``"data"``: all devices on the data axis. The sizes must
  multiply to at most ``num_devices`` (the mesh takes the first devices).

  Raises:
    ValueError: naming the bad spec and the valid form.

  Examples:
    >>> from reweight import parallel
    >>> parallel.parse_mesh_spec("data:4,fsdp:2", 8)
    (('data', 4), ('fsdp', 2))
    >>> parallel.parse_mesh_spec("fsdp:2,data", 8)
    (('fsdp', 2), ('data', 4))
    >>> parallel.parse_mesh_spec("", 8)
    (('data', 8),)
    >>> parallel.parse_mesh_spec("data:4,model:2", 8)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: mesh spec 'data:4,model:2': unknown axis 'model'; expected ... 'data:4,fsdp:2'...
  """
  form = (f"expected comma-separated 'axis:size' entries with axis names from {list(MESH_AXES)}, "
          "e.g. 'data:4,fsdp:2'; one size may be left out (or -1) to take the remaining devices")
  text = (spec or "").strip()
  if not text:
    return (("data", num_devices),)
  axes, sizes = [], []
  for entry in text.split(","):
    name, _, size = entry.strip().partition(":")
    name, size = name.strip(), size.strip()
    if name not in MESH_AXES:
      raise ValueError(f"mesh spec {spec!r}: unknown axis {name!r}; {form}")
    if name in axes:
      raise ValueError(f"mesh spec {spec!r}: axis {name!r} appears twice; {form}")
    try:
      n = int(size) if size else -1
    except ValueError:
      raise ValueError(f"mesh spec {spec!r}: size {size!r} of axis {name!r} is not an "
                       f"integer; {form}") from None
    if n == 0 or n < -1:
      raise ValueError(f"mesh spec {spec!r}: size {n} of axis {name!r} must be >= 1; {form}")
    axes.append(name)
    sizes.append(n)
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh spec {spec!r}: more than one axis without a size; {form}")
  known = int(np.prod([n for n in sizes if n != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh spec {spec!r}: the given sizes (product {known}) do not divide "
                       f"the {num_devices} available devices; {form}")
    sizes[sizes.index(-1)] = num_devices // known
  total = int(np.prod(sizes))
  if total > num_devices:
    raise ValueError(f"mesh spec {spec!r} needs {total} devices but {num_devices} are "
                     f"available; {form}")
  return tuple(zip(axes, sizes))


def make_mesh_from_spec(spec: str | None = None,
                        devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `Mesh` described by a spec string such as ``"data:4,fsdp:2"`` (`parse_mesh_spec`).

  The axes are `AxisType.Auto` (global-view code under `jax.jit`). An empty spec puts every
  device on ``"data"``, as `make_mesh` does. The batch is split over all of `BATCH_AXES`
  the mesh has (`batch_sharding`), the parameters over ``"fsdp"`` (`shard_params`).

  Args:
    spec: the mesh, ``axis:size`` entries; see `parse_mesh_spec`.
    devices: the devices to take them from (default ``jax.devices()``).

  Examples:
    >>> from reweight import parallel
    >>> mesh = parallel.make_mesh_from_spec("data:1,fsdp:1")
    >>> dict(mesh.shape)
    {'data': 1, 'fsdp': 1}
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = parse_mesh_spec(spec, len(devices))
  names = tuple(a for a, _ in axes)
  shape = tuple(n for _, n in axes)
  return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names),
                       devices=devices[:int(np.prod(shape))])


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The axes of ``mesh`` the batch is split over: those of `BATCH_AXES` it has (else all).

  Examples:
    >>> from reweight import parallel
    >>> parallel.batch_axes(parallel.make_mesh_from_spec("fsdp:1,data:1"))
    ('data', 'fsdp')
  """
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return axes or tuple(mesh.axis_names)


def batch_sharding(mesh: Mesh, axis_name: str | tuple[str, ...] | None = None) -> NamedSharding:
  """`NamedSharding` that splits the leading (batch) dimension over ``axis_name``.

  ``axis_name=None`` (the default) splits it over `batch_axes` of the mesh: ``"data"`` on a
  1-D data mesh, ``("data", "fsdp")`` on a 2-D one.

  Examples:
    >>> from reweight import parallel
    >>> parallel.batch_sharding(parallel.make_mesh(1)).spec
    P('data',)
    >>> parallel.batch_sharding(parallel.make_mesh_from_spec("data:1,fsdp:1")).spec
    P(('data', 'fsdp'),)
  """
  if axis_name is None:
    axis_name = batch_axes(mesh)
  axes = axis_tuple(axis_name)
  return NamedSharding(mesh, P(axes[0] if len(axes) == 1 else axes))


def shard_batch(batch: Any, mesh: Mesh, axis_name: str | tuple[str, ...] | None = None) -> Any:
  """Global arrays, sharded on the batch dimension, from this process's host data.

  The same call works on one host and on many: each process passes its own rows of the
  global batch (`process_rows`), which `jax.make_array_from_process_local_data` assembles
  into global arrays; on one process the whole tree goes in one `jax.device_put`.
  ``axis_name=None``: the mesh's `batch_axes`.

  Raises:
    ValueError: if a leaf's leading dimension is not divisible by the number of batch shards
      on this process's devices.
  """
  sharding = batch_sharding(mesh, axis_name)
  n_shards = int(np.prod([mesh.shape[a] for a in axis_tuple(batch_axes(mesh) if axis_name is None
                                                             else axis_name)]))
  n_local = max(n_shards * len(mesh.local_devices) // mesh.size, 1)

  def check(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % n_local:
      raise ValueError(
          f"cannot shard an array of shape {x.shape} over {n_local} local devices: the "
          f"leading (batch) dimension must be divisible by {n_local}")
    return x

  batch = jax.tree.map(check, batch)
  if mesh.is_multi_process:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
  return jax.device_put(batch, sharding)  # one call for the whole tree: the local data is all


def process_rows(mesh: Mesh, global_batch_size: int,
                 axis_name: str | tuple[str, ...] | None = None) -> slice:
  """The rows ``[start, stop)`` of a global batch that this process's devices hold.

  With the batch split over ``axis_name`` (default: the mesh's `batch_axes`), each process
  reads only these rows of every global batch and passes them to `shard_batch`; on one
  process it is the whole batch. The rows of a process are contiguous when its devices are
  (as `jax.make_mesh` orders them).

  Raises:
    ValueError: if ``global_batch_size`` does not divide over the batch shards, or this
      process's rows are not one contiguous block.

  Examples:
    >>> from reweight import parallel
    >>> parallel.process_rows(parallel.make_mesh(1), 8)
    slice(0, 8, None)
  """
  sharding = batch_sharding(mesh, axis_name)
  shards = int(np.prod([mesh.shape[a] for a in axis_tuple(sharding.spec[0])]))
  if global_batch_size % shards:
    raise ValueError(f"a global batch of {global_batch_size} rows cannot be split over the "
                     f"{shards} batch shards of the mesh {dict(mesh.shape)}: make it a "
                     f"multiple of {shards}")
  index = sharding.addressable_devices_indices_map((global_batch_size,))
  blocks = sorted({(s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
                   for s in index.values()})
  start, stop = blocks[0][0], blocks[-1][1]
  if sum(b - a for a, b in blocks) != stop - start:
    raise ValueError(f"process {jax.process_index()} holds the non-contiguous rows {blocks} "
                     f"of the batch on mesh {dict(mesh.shape)}; build the mesh with "
                     "jax.make_mesh (or make_mesh_from_spec), which keeps each process's "
                     "devices together")
  return slice(start, stop)


def to_host(tree: Any) -> Any:
  """NumPy values of a pytree of (possibly multi-process) arrays, the same on every process.

  Arrays this process holds entirely (every single-process array, and replicated ones) are
  read locally; an array split across processes is all-gathered
  (`jax.experimental.multihost_utils.process_allgather`), which every process must call
  together.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight import parallel
    >>> parallel.to_host({"a": jnp.arange(3)})
    {'a': array([0, 1, 2], dtype=int32)}
  """
  from jax.experimental import multihost_utils

  leaves = jax.tree.leaves(tree)
  if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
    return jax.tree.map(np.asarray, jax.device_get(tree))  # all copies start at once

  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, tree)


def fsdp_spec(shape: Sequence[int], size: int, axis: str = "fsdp") -> P:
  """The `PartitionSpec` `shard_params` gives an array of ``shape`` on ``size`` devices.

  Its largest dimension divisible by ``size`` (the first of equal ones) is split over
  ``axis``; with none (or a scalar, or ``size == 1``) the array is replicated, ``P()``.

  Examples:
    >>> from reweight import parallel
    >>> parallel.fsdp_spec((64, 256), 2)
    P(None, 'fsdp')
    >>> parallel.fsdp_spec((3, 5), 2), parallel.fsdp_spec((), 2)
    (P(), P())
  """
  best = None
  if size > 1:
    for i, n in enumerate(shape):
      if n % size == 0 and (best is None or n > shape[best]):
        best = i
  if best is None:
    return P()
  return P(*([None] * best + [axis]))


def shard_params(tree: Any, mesh: Mesh, axis: str = "fsdp") -> Any:
  """Places every leaf of ``tree`` on ``mesh``, split on ``axis`` where it divides (FSDP).

  Each array gets ``NamedSharding(mesh, fsdp_spec(shape, mesh.shape[axis], axis))``: its
  largest dimension divisible by the axis size is split over ``axis``, anything else
  (scalars, PRNG keys, shapes nothing divides) is replicated. A mesh without ``axis``
  replicates everything (`replicate`). Code under `jax.jit` is global-view, so the layout
  changes where the numbers live, not the numbers.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight import parallel
    >>> mesh = parallel.make_mesh_from_spec("data:1,fsdp:1")
    >>> tree = parallel.shard_params({"w": jnp.ones((4, 6)), "b": jnp.zeros(6)}, mesh)
    >>> tree["w"].sharding.mesh.axis_names
    ('data', 'fsdp')
  """
  size = mesh.shape[axis] if axis in mesh.axis_names else 1

  def put(x):
    shape = getattr(x, "shape", None)
    if shape is None:
      shape = np.shape(x)
    dtype = getattr(x, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      shape = ()
    return jax.device_put(x, NamedSharding(mesh, fsdp_spec(shape, size, axis)))

  return jax.tree.map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` fully replicated on ``mesh``."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def batch_sum(x: jax.Array, axis_name: AxisName = None, where: jax.Array | None = None):
  """Sum over the whole (global) batch: local ``sum``, then ``psum`` over ``axis_name``."""
  axis_name = resolve_axis_name(axis_name)
  s = jnp.sum(x, where=where)
  return lax.psum(s, axis_name) if axis_name is not None else s


def batch_max(x: jax.Array, axis_name: AxisName = None, where: jax.Array | None = None,
              initial: float = -jnp.inf):
  """Max over the whole batch (``initial`` where nothing is selected)."""
  axis_name = resolve_axis_name(axis_name)
  m = jnp.max(x, where=where, initial=initial)
  return lax.pmax(m, axis_name) if axis_name is not None else m


def batch_min(x: jax.Array, axis_name: AxisName = None, where: jax.Array | None = None,
              initial: float = jnp.inf):
  """Min over the whole batch (``initial`` where nothing is selected)."""
  axis_name = resolve_axis_name(axis_name)
  m = jnp.min(x, where=where, initial=initial)
  return lax.pmin(m, axis_name) if axis_name is not None else m


def batch_mean(x: jax.Array, axis_name: AxisName = None, where: jax.Array | None = None):
  """Mean over the selected entries of the global batch: ``psum(sum) / psum(count)``.

  Returns 0 when nothing is selected.
  """
  if where is None:
    where = jnp.ones(x.shape, bool)
  num = batch_sum(jnp.where(where, x, 0), axis_name)
  den = batch_sum(where.astype(x.dtype), axis_name)
  return num / jnp.maximum(den, 1)


def segment_sum(x: jax.Array, segment_ids: jax.Array, num_segments: int,
                axis_name: AxisName = None):
  """Per-group sums over the global batch (``psum`` of local segment sums)."""
  axis_name = resolve_axis_name(axis_name)
  s = jax.ops.segment_sum(x, segment_ids, num_segments=num_segments)
  return lax.psum(s, axis_name) if axis_name is not None else s


def shard_examples(tree: Any, mesh: Mesh, axis_name: str | tuple[str, ...] | None = None, *,
                   dim: int = 0) -> Any:
  """Places per-example tables (state indexed by example id) split by id over ``axis_name``.

  Every leaf of ``tree`` gets a `NamedSharding` that splits its dimension ``dim`` (the example
  axis, of size ``N``) over the mesh axis (or axes) ``axis_name``: device ``k`` of ``D`` holds
  the rows ``[k N / D, (k + 1) N / D)``, so a table of ``b`` bytes per example costs
  ``b N / D`` bytes per device instead of ``b N``. Under `jax.jit` the code stays the global
  view: a read ``table[ids]`` is a gather and a write ``table.at[ids].set(...)`` a scatter,
  which XLA partitions (rows owned by other devices travel between devices), with the same
  numbers as a replicated table; the jitted step's output keeps the sharding of its input
  (pass the same sharding as ``out_shardings`` to pin it). Used for SAF's logit memory
  (``dim=1`` of `reweight.losses.saf.SAFMemory`), the loss EMAs of
  `reweight.curriculum.scoring.LossEmaState` and per-example lookup tables (e.g. an easiness
  table passed to the step as an argument). Inside `jax.shard_map` with ``check_vma=True``,
  `reweight.losses.saf.read_memory` / ``update_memory`` and
  `reweight.curriculum.scoring.update_loss_ema` given ``axis_name`` also accept their table
  sharded this way (``in_specs`` ``P(None, "data")`` / ``P("data")``); under `jax.pmap` or
  ``check_vma=False`` tables must be replicated (``P()``).

  Args:
    tree: a pytree of arrays whose dimension ``dim`` indexes the examples (host or device
      arrays; the same values on every process).
    mesh: the `Mesh`.
    axis_name: the mesh axis name(s) to split the examples over; None (the default): the
      batch axes of the mesh (`batch_axes`: ``"data"``, or ``("data", "fsdp")`` on a 2-D
      mesh, so that every device holds a distinct slice).
    dim: the example dimension of every leaf (negative counts from the end).

  Returns:
    ``tree`` with every leaf placed on ``mesh``, split over ``axis_name`` along ``dim``.

  Raises:
    ValueError: if a leaf has no dimension ``dim`` or its size is not divisible by the
      number of devices along ``axis_name`` (round the table's ``N`` up to a multiple of it:
      ids stay in ``[0, N)`` and the extra rows are never touched).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight import parallel
    >>> mesh = parallel.make_mesh(1)
    >>> ema = parallel.shard_examples({"ema": jnp.zeros(8), "count": jnp.zeros(8, int)}, mesh)
    >>> tuple(ema["ema"].sharding.spec)
    ('data',)
    >>> memory = parallel.shard_examples(jnp.zeros((2, 8, 3)), mesh, dim=1)
    >>> tuple(memory.sharding.spec)
    (None, 'data')
    >>> memory.addressable_shards[0].data.shape  # (2, 8 // num_devices, 3)
    (2, 8, 3)
  """
  if axis_name is None:
    axis_name = batch_axes(mesh)
  axes = axis_tuple(axis_name)
  size = int(np.prod([mesh.shape[a] for a in axes]))
  entry = axes[0] if len(axes) == 1 else axes

  def put(x):
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    if not -x.ndim <= dim < x.ndim:
      raise ValueError(f"cannot shard dimension {dim} of an array of shape {x.shape}")
    d = dim % x.ndim
    if x.shape[d] % size:
      raise ValueError(
          f"cannot split the {x.shape[d]} examples (dimension {d} of shape {x.shape}) over "
          f"{size} devices along {entry!r}: round the number of examples of the table up "
          f"to a multiple of {size} (ids stay in [0, N); the extra rows are never used)")
    spec = [None] * d + [entry]
    return jax.device_put(x, NamedSharding(mesh, P(*spec)))

  return jax.tree.map(put, tree)
