"""Weight averaging: EMA and SWA of the parameters in the optimizer state, and averages
of saved checkpoints.

`ema_params` and `swa` are `optax.GradientTransformationExtraArgs` that leave the updates
unchanged and keep an average of the parameters *after* the update in their state. They
need ``params`` in ``update`` and must be the **last** element of an `optax.chain`, where
the incoming ``updates`` are the final ones, so ``params + updates`` are the new
parameters that get averaged:

  opt = optax.chain(optax.adamw(lr), ema_params(0.999))
  updates, opt_state = opt.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  eval_params = averaged_params(opt_state)

`checkpoint_average` averages the last k parameter pytrees of a list (uniform, linear or
EMA weights) and `average_orbax_checkpoints` does the same for the last k steps of an
orbax `CheckpointManager` directory, streaming one checkpoint at a time.

Luo et al. (2025) find that averaging the last few checkpoints (weighted or EMA)
recovers the gain of an ascending-quality data curriculum that a full LR decay wastes;
Hägele et al. (2024) use SWA in the stable phase of a constant-LR run.

References:
  Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", 1992.
  Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization"
  (SWA), UAI 2018. Luo et al., "How Learning Rate Decay Wastes Your Best Data in
  Curriculum-Based LLM Pretraining", 2025. Hägele et al., "Scaling Laws and
  Compute-Optimal Training Beyond Fixed Training Durations", NeurIPS 2024.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reweight._checks import check_choice, check_int, require_params
from reweight._types import PyTree

AverageWeights = Literal["uniform", "linear", "ema"]
_WEIGHTS = get_args(AverageWeights)
_LAST = ": it averages params + updates (put it last in the chain)"


class EmaParamsState(NamedTuple):
  """State of `ema_params`.

  Attributes:
    count: int32 scalar, number of updates averaged.
    ema: the running average of the parameters (same structure as the params).
  """
  count: jax.Array
  ema: PyTree


class SwaState(NamedTuple):
  """State of `swa`.

  Attributes:
    count: int32 scalar, number of updates seen.
    num_averaged: int32 scalar, number of parameter snapshots in ``mean``.
    mean: the running mean of the snapshots (the initial params while
      ``num_averaged == 0``).
  """
  count: jax.Array
  num_averaged: jax.Array
  mean: PyTree


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _copy_params(params, dtype):
  def copy(p):
    p = jnp.array(p, copy=True)
    return p.astype(dtype) if dtype is not None and _is_float(p) else p
  return jax.tree.map(copy, params)


def ema_params(decay: float | Callable[[jax.Array], jax.Array], debias: bool = False,
               accumulator_dtype: Any | None = None) -> optax.GradientTransformationExtraArgs:
  r"""Exponential moving average of the parameters, kept in the optimizer state.

  With x_t = params + updates (the parameters after update t = 1, 2, ...):

  * ``debias=False``: a_0 = the initial params, a_t = d a_{t-1} + (1 - d) x_t.
    ``decay`` may be a schedule ``count -> d`` (evaluated at t - 1).
  * ``debias=True``: the zero-initialized EMA divided by 1 - d^t, i.e. exactly what
    ``optax.ema(d, debias=True)`` returns when fed x_t. It is stored in debiased form via
    the equivalent recursion a_t = a_{t-1} + beta_t (x_t - a_{t-1}) with
    beta_t = (1 - d) / (1 - d^t) (so a_1 = x_1), so the state holds the average itself.
    ``decay`` must be a constant (not a schedule).

  The updates pass through unchanged. Non-floating leaves are copied from x_t.
  ``decay`` may also be an array (e.g. under `optax.inject_hyperparams`).

  Args:
    decay: d in [0, 1), or a schedule of it (``debias=False`` only).
    debias: see above.
    accumulator_dtype: dtype of the stored average (e.g. ``jnp.float32`` for bfloat16
      params, whose resolution is too coarse for a slow EMA); the params' dtypes if None.

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `EmaParamsState`; read the
    average with `averaged_params`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from reweight.optim import averaging
    >>> opt = optax.chain(optax.sgd(1.0), averaging.ema_params(0.5))
    >>> params = jnp.zeros(1)
    >>> state = opt.init(params)
    >>> for _ in range(2):
    ...   updates, state = opt.update(jnp.full(1, -1.0), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params.tolist(), averaging.averaged_params(state).tolist()  # 0 -> 0.5 -> 1.25
    ([2.0], [1.25])

  References:
    Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", 1992.
  """
  if callable(decay):
    if debias:
      raise ValueError("debias=True needs a constant decay, not a schedule")
  elif isinstance(decay, (int, float)):
    decay = float(decay)
    if not 0.0 <= decay < 1.0:
      raise ValueError(f"decay={decay!r} must be in [0, 1)")

  def init_fn(params):
    return EmaParamsState(count=jnp.zeros([], jnp.int32),
                          ema=_copy_params(params, accumulator_dtype))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "ema_params", _LAST)
    new_params = optax.apply_updates(params, updates)
    count = state.count + 1
    d = decay(state.count) if callable(decay) else decay
    if debias:
      beta = (1.0 - d) / (1.0 - jnp.power(d, count.astype(jnp.float32)))
    else:
      beta = 1.0 - jnp.asarray(d, jnp.float32)

    def mix(a, x):
      if not _is_float(x):
        return x
      return (a + beta * (x - a)).astype(a.dtype)

    ema = jax.tree.map(mix, state.ema, new_params)
    return updates, EmaParamsState(count=count, ema=ema)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def swa(start: int, every: int = 1, accumulator_dtype: Any | None = None
        ) -> optax.GradientTransformationExtraArgs:
  r"""Stochastic weight averaging: the uniform mean of periodic parameter snapshots.

  After update k (k = 1, 2, ...), the new parameters x_k = params + updates join the
  average when k >= ``start`` and (k - ``start``) is a multiple of ``every``:
  mean <- mean + (x_k - mean) / n, n <- n + 1. Until the first snapshot the state holds
  the initial parameters. The updates pass through unchanged.

  Args:
    start: the first update whose result is averaged (>= 1).
    every: the snapshot period, in updates (>= 1).
    accumulator_dtype: dtype of the stored mean (the params' dtypes if None).

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `SwaState`; read the average
    with `averaged_params`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from reweight.optim import averaging
    >>> opt = optax.chain(optax.sgd(1.0), averaging.swa(start=2, every=2))
    >>> params = jnp.zeros(1)
    >>> state = opt.init(params)
    >>> for _ in range(5):  # params after each update: 1, 2, 3, 4, 5
    ...   updates, state = opt.update(jnp.full(1, -1.0), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> averaging.averaged_params(state).tolist()  # mean of 2 and 4
    [3.0]

  References:
    Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
    Generalization", UAI 2018.
  """
  for name, v in (("start", start), ("every", every)):
    if isinstance(v, bool) or (isinstance(v, (int, float, np.number)) and (
        v < 1 or v != int(v))):
      raise ValueError(f"{name}={v!r} must be an integer >= 1")

  def init_fn(params):
    return SwaState(count=jnp.zeros([], jnp.int32), num_averaged=jnp.zeros([], jnp.int32),
                    mean=_copy_params(params, accumulator_dtype))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "swa", _LAST)
    new_params = optax.apply_updates(params, updates)
    k = state.count + 1
    take = (k >= start) & ((k - start) % every == 0)
    n = state.num_averaged + take.astype(jnp.int32)
    frac = jnp.where(take, 1.0 / jnp.maximum(n, 1).astype(jnp.float32), 0.0)

    def mix(m, x):
      if not _is_float(x):
        return jnp.where(take, x, m)
      return (m + frac * (x - m)).astype(m.dtype)

    mean = jax.tree.map(mix, state.mean, new_params)
    return updates, SwaState(count=k, num_averaged=n, mean=mean)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def averaged_params(opt_state: Any, kind: Literal["ema", "swa"] | None = None) -> PyTree:
  """The parameter average held by an `ema_params` or `swa` state inside ``opt_state``.

  Searches ``opt_state`` (any nesting of chain / MultiSteps / inject_hyperparams states)
  by type for `EmaParamsState` (``kind="ema"``), `SwaState` (``kind="swa"``) or either
  (``kind=None``); exactly one must match.

  Args:
    opt_state: an optimizer state.
    kind: ``"ema"``, ``"swa"`` or None.

  Returns:
    The averaged parameter pytree (EMA: debiased when ``debias=True``).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from reweight.optim import averaging
    >>> opt = optax.chain(optax.sgd(1.0), averaging.ema_params(0.9))
    >>> averaging.averaged_params(opt.init({"w": jnp.ones(2)}))["w"].tolist()
    [1.0, 1.0]
  """
  types = {"ema": (EmaParamsState,), "swa": (SwaState,),
           None: (EmaParamsState, SwaState)}
  if kind not in types:
    raise ValueError(f"kind={kind!r} is not one of ['ema', 'swa', None]")
  wanted = types[kind]
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, wanted))
           if isinstance(s, wanted)]
  if len(found) != 1:
    raise ValueError(
        f"expected exactly one {'/'.join(t.__name__ for t in wanted)} in the optimizer "
        f"state, found {len(found)}" + ("; pass kind='ema' or 'swa'" if found else ""))
  s = found[0]
  return s.ema if isinstance(s, EmaParamsState) else s.mean


# ----------------------------------------------------------------------------------------
# Checkpoint averaging.


def checkpoint_weights(k: int, weights: AverageWeights | Sequence[float] = "uniform",
                       ema_decay: float = 0.9) -> np.ndarray:
  r"""Weights (oldest first, summing to 1) for averaging k checkpoints.

  * ``"uniform"``: w_j = 1 / k.
  * ``"linear"``: w_j ∝ j + 1 (the newest gets weight k).
  * ``"ema"``: the EMA a_0 = c_0, a_j = d a_{j-1} + (1 - d) c_j over the checkpoints,
    i.e. w_0 = d^(k-1), w_j = (1 - d) d^(k-1-j) for j >= 1 (d = ``ema_decay``).
  * a sequence of k non-negative floats: normalized to sum 1.

  Args:
    k: number of checkpoints.
    weights: scheme name or explicit weights.
    ema_decay: d for ``"ema"``.

  Returns:
    A float64 array of shape [k].

  Examples:
    >>> from reweight.optim import averaging
    >>> averaging.checkpoint_weights(3, "linear").tolist()
    [0.16666666666666666, 0.3333333333333333, 0.5]
  """
  k = check_int("k", k, 1)
  if isinstance(weights, str):
    check_choice("weights", weights, _WEIGHTS)
    if weights == "uniform":
      return np.full(k, 1.0 / k)
    if weights == "linear":
      w = np.arange(1, k + 1, dtype=np.float64)
      return w / w.sum()
    d = float(ema_decay)
    if not 0.0 <= d < 1.0:
      raise ValueError(f"ema_decay={ema_decay!r} must be in [0, 1)")
    w = (1.0 - d) * d ** np.arange(k - 1, -1, -1, dtype=np.float64)
    w[0] = d ** (k - 1)
    return w
  w = np.asarray(weights, np.float64)
  if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(
        f"explicit weights must be {k} finite non-negative numbers with a positive sum, "
        f"got {weights!r}")
  return w / w.sum()


def _is_numpy(x) -> bool:
  return isinstance(x, (np.ndarray, np.generic, float, int))


def _weighted_term(x, w: float):
  """w * x in at least float32 (NumPy stays NumPy, JAX stays JAX)."""
  if _is_numpy(x):
    x = np.asarray(x)
    return w * x.astype(np.promote_types(x.dtype, np.float32))
  return w * x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _weighted_sum(trees: Iterable[PyTree], weights: np.ndarray) -> PyTree:
  """sum_j w_j tree_j, one tree at a time; non-float leaves are taken from the last."""
  acc, last = None, None
  for j, tree in enumerate(trees):
    w = float(weights[j])
    if acc is None:
      acc = jax.tree.map(lambda x, w=w: _weighted_term(x, w) if _is_float(x) else x, tree)
    else:
      acc = jax.tree.map(
          lambda a, x, w=w: a + _weighted_term(x, w) if _is_float(x) else x, acc, tree)
    last = tree
  if acc is None:
    raise ValueError("no checkpoints to average")

  def cast_back(a, x):
    if not _is_float(x):
      return a
    return a.astype(np.asarray(x).dtype if _is_numpy(x) else x.dtype)

  return jax.tree.map(cast_back, acc, last)


def checkpoint_average(checkpoints: Sequence[PyTree], weights: AverageWeights | Sequence[float] =
                       "uniform", k: int | None = None, ema_decay: float = 0.9) -> PyTree:
  r"""Weighted average of the last ``k`` parameter pytrees of ``checkpoints``.

  theta_avg = sum_j w_j theta_j over the last k checkpoints (oldest first), with the
  weights of `checkpoint_weights`. Floating leaves are accumulated in at least float32
  and cast back to their dtype; non-floating leaves (step counters, keys) are taken
  from the newest checkpoint. NumPy leaves stay NumPy, JAX leaves stay JAX.

  Args:
    checkpoints: parameter pytrees of one structure, oldest first.
    weights: ``"uniform"``, ``"linear"``, ``"ema"``, or k explicit weights.
    k: how many of the newest checkpoints to average (all if None).
    ema_decay: decay for ``weights="ema"``.

  Returns:
    The averaged pytree.

  Examples:
    >>> import numpy as np
    >>> from reweight.optim import averaging
    >>> ckpts = [{"w": np.array([float(i)])} for i in range(5)]
    >>> averaging.checkpoint_average(ckpts, "uniform", k=3)["w"].tolist()
    [3.0]

  References:
    Luo et al., "How Learning Rate Decay Wastes Your Best Data in Curriculum-Based LLM
    Pretraining", 2025.
  """
  checkpoints = list(checkpoints)
  if not checkpoints:
    raise ValueError("checkpoints is empty")
  if k is None:
    k = len(checkpoints)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
      or not 1 <= k <= len(checkpoints):
    raise ValueError(f"k={k!r} must be an integer in [1, {len(checkpoints)}]")
  w = checkpoint_weights(k, weights, ema_decay)
  return _weighted_sum(checkpoints[-k:], w)


def average_orbax_checkpoints(directory: str | os.PathLike, k: int | None = None,
                              weights: AverageWeights | Sequence[float] = "uniform",
                              item: str | None = None, ema_decay: float = 0.9,
                              select: Callable[[PyTree], PyTree] | None = None) -> PyTree:
  r"""Weighted average of the last ``k`` steps saved by an orbax `CheckpointManager`.

  Opens ``directory`` read-only with ``ocp.CheckpointManager``, takes the ``k`` largest
  of ``all_steps()`` and restores them one at a time (only the running sum and one
  checkpoint are in memory), with ``args=ocp.args.StandardRestore()`` when ``item`` is
  None (a checkpoint saved with ``args=ocp.args.StandardSave(tree)``), else
  ``ocp.args.Composite(item=StandardRestore())`` and the entry ``item`` of the result
  (saved with ``ocp.args.Composite(item=StandardSave(tree), ...)``). ``select`` then
  picks the sub-tree to average (e.g. ``lambda s: s["params"]``). Weights as in
  `checkpoint_weights`.

  Args:
    directory: the CheckpointManager directory.
    k: how many of the newest steps to average (all if None).
    weights: ``"uniform"``, ``"linear"``, ``"ema"``, or k explicit weights (oldest
      first).
    item: item name in a Composite checkpoint, or None for a single-item one.
    ema_decay: decay for ``weights="ema"``.
    select: optional function applied to each restored tree before averaging.

  Returns:
    The averaged pytree.

  References:
    Luo et al., "How Learning Rate Decay Wastes Your Best Data in Curriculum-Based LLM
    Pretraining", 2025.
  """
  import orbax.checkpoint as ocp  # imported lazily: only this helper needs orbax

  if not os.path.isdir(directory):
    raise ValueError(f"directory={str(directory)!r} does not exist")
  mgr = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  try:
    steps = sorted(mgr.all_steps())
    if not steps:
      raise ValueError(f"no checkpoints in directory={str(directory)!r}")
    if k is None:
      k = len(steps)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
        or not 1 <= k <= len(steps):
      raise ValueError(
          f"k={k!r} must be an integer in [1, {len(steps)}] (the number of saved steps)")
    steps = steps[-k:]
    w = checkpoint_weights(k, weights, ema_decay)

    def load(step):
      if item is None:
        tree = mgr.restore(step, args=ocp.args.StandardRestore())
      else:
        tree = mgr.restore(step, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore()}))[item]
      return select(tree) if select is not None else tree

    return _weighted_sum((load(s) for s in steps), w)
  finally:
    mgr.close()


__all__ = [
    "EmaParamsState",
    "SwaState",
    "average_orbax_checkpoints",
    "averaged_params",
    "checkpoint_average",
    "checkpoint_weights",
    "ema_params",
    "swa",
]
