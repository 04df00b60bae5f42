"""The training state: one pytree with everything a run needs to continue."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from reweight import parallel
from reweight.base import Weighting
from reweight.reparam._core import Reparam

PyTree = Any


class TrainState(NamedTuple):
  """Everything that changes during training (a pytree of arrays, checkpointed by orbax).

  Attributes:
    step: number of optimizer steps taken.
    trainable: what the optimizer updates (the params, or a reparameterization's part).
    frozen: what stays fixed (``{}`` without a reparameterization).
    opt_state: the optimizer state of ``trainable`` only.
    weighting_state: the weighting's state.
    rng: the PRNG key for dropout and stochastic weightings, split every step.
  """

  step: jax.Array
  trainable: PyTree
  frozen: PyTree
  opt_state: PyTree
  weighting_state: PyTree
  rng: jax.Array


def create(params: PyTree, optimizer: optax.GradientTransformation, weighting: Weighting,
           key: jax.Array, *, reparam: Reparam | None = None, **reparam_data) -> TrainState:
  """A fresh `TrainState`; with a ``reparam`` the params are split into trainable + frozen.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, reweight
    >>> from reweight.train.state import create
    >>> s = create({"w": jnp.zeros(3)}, optax.sgd(0.1), reweight.uniform(), jax.random.key(0))
    >>> int(s.step), s.frozen
    (0, {})
  """
  key, reparam_key, weighting_key = jax.random.split(key, 3)
  if reparam is None:
    trainable, frozen = params, {}
  else:
    trainable, frozen = reparam.init(params, reparam_key, **reparam_data)
  return TrainState(
      step=jnp.zeros([], jnp.int32),
      trainable=trainable,
      frozen=frozen,
      opt_state=optimizer.init(trainable),
      weighting_state=weighting.init(weighting_key),
      rng=key,
  )


def place(state: TrainState, mesh: Mesh, axis: str = "fsdp") -> TrainState:
  """Places a state on ``mesh``: params, optimizer, weighting and reparam state on ``axis``.

  ``trainable``, ``frozen``, ``opt_state`` and ``weighting_state`` go through
  `reweight.parallel.shard_params` (each leaf split on ``axis`` along its largest divisible
  dimension, so an optimizer moment has the layout of its parameter); ``step`` and ``rng``
  are replicated. On a mesh without ``axis`` everything is replicated.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, reweight
    >>> from reweight import parallel
    >>> from reweight.train.state import create, place
    >>> mesh = parallel.make_mesh_from_spec("data:1,fsdp:1")
    >>> s = place(create({"w": jnp.zeros((4, 2))}, optax.adam(0.1), reweight.uniform(),
    ...                  jax.random.key(0)), mesh)
    >>> s.trainable["w"].sharding.mesh.axis_names
    ('data', 'fsdp')
  """
  shard = lambda tree: parallel.shard_params(tree, mesh, axis)
  return TrainState(step=parallel.replicate(state.step, mesh), trainable=shard(state.trainable),
                    frozen=shard(state.frozen), opt_state=shard(state.opt_state),
                    weighting_state=shard(state.weighting_state),
                    rng=parallel.replicate(state.rng, mesh))


def params_of(state: TrainState, reparam: Reparam | None = None) -> PyTree:
  """The effective model parameters of a state (``reparam.apply`` when there is one)."""
  return state.trainable if reparam is None else reparam.apply(state.trainable, state.frozen)
