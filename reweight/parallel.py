"""Meshes, batch sharding, and batch reductions that know about named axes.

`reweight` code is written in the global view: under `jax.jit` with the batch sharded on a
`Mesh`, a sum or a max over the batch is a global one by construction. Inside
`jax.shard_map` (or `jax.pmap`) each device sees only its shard, so a weighting constructed
with ``axis_name="data"`` reduces across devices with `lax.psum` / `lax.pmax`. Means are
always ``psum(numerator) / psum(denominator)``, never a mean of per-device means.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from reweight import parallel
  >>> parallel.batch_mean(jnp.array([1.0, 2.0, 9.0]), where=jnp.array([True, True, False]))
  Array(1.5, dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AxisName = str | tuple[str, ...] | None


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


def batch_sharding(mesh: Mesh, axis_name: str = "data") -> NamedSharding:
  """`NamedSharding` that splits the leading (batch) dimension over ``axis_name``."""
  return NamedSharding(mesh, P(axis_name))


def shard_batch(batch: Any, mesh: Mesh, axis_name: str = "data") -> Any:
  """Global arrays, sharded on the batch dimension, from this process's host data.

  Uses `jax.make_array_from_process_local_data`, so the same call works on one host and on
  many (each host passes its own slice of the global batch).

  Raises:
    ValueError: if a leaf's leading dimension is not divisible by the local device count.
  """
  sharding = batch_sharding(mesh, axis_name)
  n_local = len(mesh.local_devices)

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % n_local:
      raise ValueError(
          f"cannot shard an array of shape {x.shape} over {n_local} local devices: the "
          f"leading (batch) dimension must be divisible by {n_local}")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` fully replicated on ``mesh``."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def batch_sum(x: jax.Array, axis_name: AxisName = None, where: jax.Array | None = None):
  """Sum over the whole (global) batch: local ``sum``, then ``psum`` over ``axis_name``."""
  s = jnp.sum(x, where=where)
  return lax.psum(s, axis_name) if axis_name is not None else s


def batch_max(x: jax.Array, axis_name: AxisName = None, where: jax.Array | None = None,
              initial: float = -jnp.inf):
  """Max over the whole batch (``initial`` where nothing is selected)."""
  m = jnp.max(x, where=where, initial=initial)
  return lax.pmax(m, axis_name) if axis_name is not None else m


def batch_min(x: jax.Array, axis_name: AxisName = None, where: jax.Array | None = None,
              initial: float = jnp.inf):
  """Min over the whole batch (``initial`` where nothing is selected)."""
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
  s = jax.ops.segment_sum(x, segment_ids, num_segments=num_segments)
  return lax.psum(s, axis_name) if axis_name is not None else s
