"""A learning-rate schedule held as a table in the optimizer state.

``scale_by_lr_table(lrs)`` multiplies the updates of step ``t`` by ``lrs[t]``:

.. math::  u_t \\leftarrow \\eta_t\\, u_t, \\qquad \\eta_t = lrs[\\min(t, T-1)]

Because the table is state, not a constant of the compiled program, every schedule of the
same length runs through one jitted train step: comparing ten schedules costs one
compilation. ``optax.chain(optax.adamw(1.0, ...), scale_by_lr_table(schedule(arange(T))))``
equals ``optax.adamw(schedule, ...)`` for the first ``T`` steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class LrTableState(NamedTuple):
  """The step count and the per-step learning rates."""

  count: jax.Array
  lrs: jax.Array


def scale_by_lr_table(lrs) -> optax.GradientTransformation:
  """Multiplies the updates of step t by ``lrs[t]`` (held at ``lrs[-1]`` after the end).

  Args:
    lrs: ``[T]`` learning rates, e.g. ``schedule(jnp.arange(T))``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from reweight.optim.lr_table import scale_by_lr_table
    >>> tx = scale_by_lr_table(jnp.array([1.0, 0.5]))
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> for _ in range(3):
    ...   u, state = tx.update({"w": jnp.ones(2)}, state)
    >>> u["w"].tolist()
    [0.5, 0.5]
  """
  lrs = jnp.asarray(lrs, jnp.float32)
  if lrs.ndim != 1 or lrs.shape[0] == 0:
    raise ValueError(f"lrs must be a non-empty 1-D table, got shape {lrs.shape}")

  def init_fn(params):
    del params  # a fresh copy of the table: train steps donate their state
    return LrTableState(jnp.zeros([], jnp.int32), jnp.array(lrs, copy=True))

  def update_fn(updates, state, params=None):
    del params
    lr = state.lrs[jnp.minimum(state.count, state.lrs.shape[0] - 1)]
    updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
    return updates, LrTableState(state.count + 1, state.lrs)

  return optax.GradientTransformation(init_fn, update_fn)
