"""The `Weighting` abstraction, its combinators, diagnostics and the `weighted` loss transform.

A `Weighting` turns per-example losses ``[B]`` into per-example weights ``[B]``:

    state = weighting.init()
    weights, state = weighting.update(losses, state, mask=mask, step=step, **extras)

Contract (every weighting in `reweight` follows it):

* ``valid = mask & isfinite(losses)``; weights are zero outside ``valid``;
* weights are finite, non-negative and carry no gradient (`jax.lax.stop_gradient`);
* ``sum(weights) == sum(valid)`` over the *global* batch (mean one over valid examples);
* extras a weighting does not use are ignored; hyperparameters may be floats or schedules
  (``step -> value``), evaluated at ``step``.

`weighted` turns a per-example loss function into a scalar loss
``sum(weights * losses) / sum(valid)`` whose gradient flows through the losses only.

Examples:
  >>> import jax, jax.numpy as jnp, reweight
  >>> def per_example_loss(params, batch):
  ...   return (batch["x"] @ params - batch["y"]) ** 2
  >>> weighting = reweight.sample.loss_based("linupper", r=1.0)
  >>> loss_fn = reweight.weighted(per_example_loss, weighting)
  >>> batch = {"x": jnp.eye(4), "y": jnp.arange(4.0)}
  >>> (loss, (state, info)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
  ...     jnp.zeros(4), batch, weighting.init())
  >>> round(float(info["weights"].sum()), 4)
  4.0
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from reweight import parallel
from reweight._types import PyTree, ScalarOrSchedule
from reweight.parallel import AxisName

Array = jax.Array
Scalar = float | int | Array


class Weighting(NamedTuple):
  """A pair of pure functions that maps per-example losses to per-example weights.

  Attributes:
    init: ``init(key=None) -> state``; the state is a pytree of arrays.
    update: ``update(losses, state, *, mask=None, groups=None, step=None, **extras)
      -> (weights, new_state)``.
  """

  init: Callable[..., PyTree]
  update: Callable[..., tuple[Array, PyTree]]


class EmptyState(NamedTuple):
  """State of a stateless weighting."""


class CountState(NamedTuple):
  """State holding the number of updates made (used when no ``step`` is passed)."""

  count: Array


# ----------------------------------------------------------------------------- helpers


def valid_mask(losses: Array, mask: Array | None = None) -> Array:
  """``mask & isfinite(losses)`` as a boolean array of the losses' shape.

  Raises:
    ValueError: if ``losses`` is not 1-D or ``mask`` has another shape.
  """
  chex.assert_rank(
      losses, 1, exception_type=ValueError,
      custom_message=f"losses must have shape [batch], got shape {jnp.shape(losses)}; reduce "
      "token or pixel losses to one value per example first (e.g. "
      "reweight.losses.sequence_mean)")
  finite = jnp.isfinite(losses)
  if mask is None:
    return finite
  mask = jnp.asarray(mask)
  chex.assert_shape(
      mask, losses.shape, exception_type=ValueError,
      custom_message=f"mask has shape {mask.shape} but losses have shape {losses.shape}")
  return finite & mask.astype(bool)


def normalize(raw: Array, valid: Array, axis_name: AxisName = None) -> Array:
  """Scales non-negative ``raw`` weights to ``sum == sum(valid)`` over the global batch.

  Invalid entries get weight 0; non-finite or negative raw weights are treated as 0. If all
  valid raw weights are 0 the result is uniform over the valid examples (so the loss of a
  batch never silently vanishes). The result is wrapped in `jax.lax.stop_gradient`.
  """
  raw = jnp.where(valid & jnp.isfinite(raw) & (raw > 0), raw, 0.0).astype(jnp.float32)
  total = parallel.batch_sum(raw, axis_name)
  count = parallel.batch_sum(valid.astype(jnp.float32), axis_name)
  uniform = valid.astype(jnp.float32)
  w = jnp.where(total > 0, raw * (count / jnp.where(total > 0, total, 1.0)), uniform)
  return jax.lax.stop_gradient(w)


def softmax_weights(logits: Array, valid: Array, axis_name: AxisName = None) -> Array:
  """``valid * n_valid * softmax(logits)`` over the valid entries of the global batch."""
  logits = jnp.where(valid, logits, -jnp.inf)
  m = parallel.batch_max(logits, axis_name)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  return normalize(jnp.exp(logits - m), valid, axis_name)


def resolve(value: ScalarOrSchedule, step: Array | None, name: str = "hyperparameter"):
  """Evaluates a hyperparameter that may be a constant or a schedule ``step -> value``."""
  if callable(value):
    if step is None:
      raise ValueError(
          f"{name} is a schedule but no step is available; pass step= to update()")
    return value(step)
  return value


def check_hyperparameter(value: ScalarOrSchedule, name: str, *, allow_zero: bool = True
                         ) -> None:
  """A ValueError naming ``value`` unless it is a schedule or a finite number ``>= 0``
  (``> 0`` without ``allow_zero``).

  Examples:
    >>> check_hyperparameter(0.5, "step_size")
    >>> check_hyperparameter(0.0, "step_size", allow_zero=False)
    Traceback (most recent call last):
    ...
    ValueError: step_size=0.0 must be a positive float (or a schedule step -> step_size)
  """
  if callable(value):
    return
  if not np.isfinite(value):
    raise ValueError(f"{name}={value!r} must be finite (or a schedule step -> {name})")
  if not (value >= 0 if allow_zero else value > 0):
    bound = "a non-negative" if allow_zero else "a positive"
    raise ValueError(f"{name}={value!r} must be {bound} float (or a schedule step -> {name})")


def current_step(state_count: Array, step: Array | None) -> Array:
  """The explicit ``step`` if given, else the weighting's own update count."""
  return state_count if step is None else jnp.asarray(step)


# ------------------------------------------------------------------------- diagnostics


def effective_sample_size(weights: Array, axis_name: AxisName = None) -> Array:
  """Kish's effective sample size ``(sum w)^2 / sum w^2`` over the global batch."""
  s1 = parallel.batch_sum(weights, axis_name)
  s2 = parallel.batch_sum(weights * weights, axis_name)
  return s1 * s1 / jnp.maximum(s2, 1e-30)


def weight_entropy(weights: Array, axis_name: AxisName = None) -> Array:
  """Entropy (nats) of ``p = w / sum w``; ``log(n)`` for uniform weights over n examples."""
  total = parallel.batch_sum(weights, axis_name)
  p = weights / jnp.maximum(total, 1e-30)
  plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  return -parallel.batch_sum(plogp, axis_name)


def max_weight(weights: Array, axis_name: AxisName = None) -> Array:
  """The largest weight in the global batch."""
  return parallel.batch_max(weights, axis_name, initial=0.0)


def num_nonfinite(losses: Array, mask: Array | None = None, axis_name: AxisName = None):
  """How many (masked-in) examples of the global batch have a non-finite loss."""
  bad = ~jnp.isfinite(losses)
  if mask is not None:
    bad = bad & jnp.asarray(mask, bool)
  return parallel.batch_sum(bad.astype(jnp.int32), axis_name)


def diagnostics(weights: Array, losses: Array, mask: Array | None = None,
                axis_name: AxisName = None) -> dict[str, Array]:
  """Scalar summaries of a batch's weights, for logging."""
  valid = valid_mask(losses, mask)
  n_valid = parallel.batch_sum(valid.astype(jnp.float32), axis_name)
  ess = effective_sample_size(weights, axis_name)
  return {
      "ess": ess,
      "ess_fraction": ess / jnp.maximum(n_valid, 1.0),
      "weight_entropy": weight_entropy(weights, axis_name),
      "max_weight": max_weight(weights, axis_name),
      "num_nonfinite": num_nonfinite(losses, mask, axis_name),
      "num_valid": n_valid,
  }


def group_info(state: PyTree, weights: Array, losses: Array, groups: Array | None,
               valid: Array, axis_name: AxisName = None) -> dict[str, Array]:
  """Per-group diagnostics of a group method's step, for logs: empty for other weightings.

  When the weighting's state has a ``probs`` field over groups (`reweight.group`) and the
  batch has ``groups``: ``probs``, and `reweight.group.group_diagnostics` (per-group mean
  loss, count and share of the total weight).
  """
  probs = getattr(state, "probs", None)
  if probs is None or groups is None:
    return {}
  from reweight.group.policy import group_diagnostics  # group builds on base

  return {"probs": probs, **group_diagnostics(weights, losses, jnp.asarray(groups), valid,
                                               probs.shape[0], axis_name)}


# -------------------------------------------------------------------------- combinators


def uniform() -> Weighting:
  """Weight one on every valid example (plain mean loss).

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> w, _ = reweight.uniform().update(jnp.array([1.0, jnp.nan, 3.0]), None)
    >>> w.tolist()
    [1.0, 0.0, 1.0]
  """

  def init(key=None):
    del key
    return EmptyState()

  def update(losses, state, *, mask=None, **extras):
    del extras
    return jax.lax.stop_gradient(valid_mask(losses, mask).astype(jnp.float32)), state

  return Weighting(init, update)


def chain(*weightings: Weighting, axis_name: AxisName = None) -> Weighting:
  """Product of several weightings' weights, renormalized to mean one.

  ``w = normalize(prod_k w_k)``. Every component sees the same losses and extras.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> w = reweight.chain(reweight.uniform(), reweight.sample.loss_based("upper", r=1.0))
    >>> weights, _ = w.update(jnp.array([0.0, 1.0]), w.init())
    >>> round(float(weights.sum()), 5)
    2.0
  """
  if not weightings:
    raise ValueError("chain() needs at least one weighting")

  def init(key=None):
    keys = [None] * len(weightings) if key is None else list(jax.random.split(key, len(weightings)))
    return tuple(w.init(k) for w, k in zip(weightings, keys))

  def update(losses, state, *, mask=None, **extras):
    valid = valid_mask(losses, mask)
    total = valid.astype(jnp.float32)
    new_states = []
    for w, s in zip(weightings, state):
      wi, si = w.update(losses, s, mask=mask, **extras)
      total = total * wi
      new_states.append(si)
    return normalize(total, valid, axis_name), tuple(new_states)

  return Weighting(init, update)


def named_chain(*named: tuple[str, Weighting], axis_name: AxisName = None) -> Weighting:
  """Like `chain`, with the components' states in a dict keyed by name.

  Examples:
    >>> import reweight
    >>> w = reweight.named_chain(("lb", reweight.sample.loss_based("upper", r=1.0)))
    >>> sorted(w.init())
    ['lb']
  """
  names = [n for n, _ in named]
  if len(set(names)) != len(names):
    raise ValueError(f"named_chain names must be unique, got {names}")
  inner = chain(*(w for _, w in named), axis_name=axis_name)

  def init(key=None):
    return dict(zip(names, inner.init(key)))

  def update(losses, state, **kw):
    weights, states = inner.update(losses, tuple(state[n] for n in names), **kw)
    return weights, dict(zip(names, states))

  return Weighting(init, update)


def interpolate(weighting: Weighting, schedule: ScalarOrSchedule, *,
                axis_name: AxisName = None) -> Weighting:
  """Blend with uniform: ``w = 1 + s(step) * (w_inner - 1)`` on valid examples.

  ``s = 0`` is uniform, ``s = 1`` is the inner weighting. Since both have mean one, so has
  the blend for ``s`` in [0, 1].

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> w = reweight.interpolate(reweight.sample.loss_based("upper", r=0.1), 0.0)
    >>> w.update(jnp.array([0.0, 5.0]), w.init())[0].tolist()
    [1.0, 1.0]
  """

  def init(key=None):
    return CountState(jnp.zeros([], jnp.int32)), weighting.init(key)

  def update(losses, state, *, mask=None, step=None, **extras):
    count, inner_state = state
    s = resolve(schedule, current_step(count.count, step), "interpolate schedule")
    w, inner_state = weighting.update(losses, inner_state, mask=mask, step=step, **extras)
    valid = valid_mask(losses, mask)
    blended = jnp.where(valid, 1.0 + s * (w - 1.0), 0.0)
    return normalize(blended, valid, axis_name), (CountState(count.count + 1), inner_state)

  return Weighting(init, update)


def clip(weighting: Weighting, max_weight: float, *, axis_name: AxisName = None,
         iterations: int = 30) -> Weighting:
  """Caps weights at ``max_weight`` and redistributes the excess over the others.

  Solves ``w_i = min(c * u_i, M)`` with ``sum w = n_valid`` for the scale ``c`` by
  repeated clip-and-rescale (exact after at most as many rounds as there are capped
  examples; ``iterations`` bounds it).

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> w = reweight.clip(reweight.sample.loss_based("upper", r=0.05), max_weight=2.0)
    >>> weights, _ = w.update(jnp.array([0.0, 0.0, 0.0, 9.0]), w.init())
    >>> [round(x, 4) for x in weights.tolist()]
    [0.6667, 0.6667, 0.6667, 2.0]
  """
  if not max_weight >= 1.0:
    raise ValueError(
        f"max_weight={max_weight!r} must be >= 1 (weights have mean one, so a cap below one "
        "cannot be met)")

  def init(key=None):
    return weighting.init(key)

  def update(losses, state, *, mask=None, **extras):
    w, state = weighting.update(losses, state, mask=mask, **extras)
    valid = valid_mask(losses, mask)
    n = parallel.batch_sum(valid.astype(jnp.float32), axis_name)

    def body(_, w):
      capped = w >= max_weight
      w = jnp.minimum(w, max_weight)
      free = parallel.batch_sum(jnp.where(capped, 0.0, w), axis_name)
      budget = n - max_weight * parallel.batch_sum(capped.astype(jnp.float32), axis_name)
      scale = jnp.where(free > 0, budget / jnp.where(free > 0, free, 1.0), 1.0)
      return jnp.where(capped, max_weight, w * scale)

    w = jax.lax.fori_loop(0, iterations, body, w)
    return jax.lax.stop_gradient(jnp.where(valid, jnp.minimum(w, max_weight), 0.0)), state

  return Weighting(init, update)


# ----------------------------------------------------------------------- the loss transform


_STANDARD_FIELDS = (("mask", "mask"), ("group", "groups"), ("id", "example_ids"))


def _accepted_kwargs(fn: Callable) -> set[str] | None:
  """Keyword names ``fn`` accepts, or None if it takes ``**kwargs``."""
  try:
    params = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):
    return None
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
    return None
  return {p.name for p in params
          if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def split_loss_output(out) -> tuple[Array, dict]:
  """``losses`` or ``(losses, aux)`` -> ``(losses, aux_dict)``."""
  if isinstance(out, tuple):
    if len(out) != 2:
      raise ValueError(
          "a per-example loss function returns losses[B] or (losses[B], aux); got a tuple "
          f"of length {len(out)}")
    losses, aux = out
  else:
    losses, aux = out, {}
  if aux is None:
    aux = {}
  if not isinstance(aux, Mapping):
    raise ValueError(f"aux must be a dict (its entries are passed to the weighting); got "
                     f"{type(aux).__name__}")
  return losses, dict(aux)


def weighting_inputs(batch: Any, aux: Mapping, params: PyTree, step, kwargs: Mapping,
                     loss_fn: Callable) -> dict[str, Any]:
  """What a weighting sees (also used by the trainer).

  One rule: the batch's standard fields when the batch is a mapping (``mask``, ``group``,
  ``id`` as ``mask=``, ``groups=``, ``example_ids=``), every entry of the per-example
  function's ``aux`` dict (e.g. ``logits``, ``labels``), any keyword passed to the loss
  (e.g. ``meta_batch``, ``ref_losses``), and ``params`` (no gradient), ``batch``,
  ``loss_fn`` and ``step``. Any other pytree batch passes through untouched.
  """
  extras: dict[str, Any] = {}
  if isinstance(batch, Mapping):
    for field, name in _STANDARD_FIELDS:
      if field in batch:
        extras[name] = batch[field]
  extras.update(aux)
  extras.update(kwargs)
  extras["params"] = jax.lax.stop_gradient(params)
  extras["batch"] = batch
  extras["loss_fn"] = loss_fn
  extras["step"] = step
  return extras


def weighted_mean(losses: Array, weights: Array, valid: Array, axis_name: AxisName = None):
  """``sum(w * l) / n_valid`` over the global batch, safe for non-finite invalid losses.

  With ``axis_name`` (inside `shard_map` / `pmap`) the value is the global loss on every
  device. Inside `jax.shard_map` with its default ``check_vma=True`` it is typed invariant
  and JAX's AD sums the gradients of replicated parameters over the devices; under
  `jax.pmap` or ``check_vma=False`` its gradient is this device's share of the global
  gradient, to be ``psum``-ed over ``axis_name`` (`reweight.parallel.global_sum`).
  """
  axis_name = parallel.resolve_axis_name(axis_name)
  n = parallel.batch_sum(valid.astype(jnp.float32), axis_name)
  contrib = jnp.where(valid, weights * jnp.where(valid, losses, 0.0), 0.0)
  total = parallel.global_sum(jnp.sum(contrib), axis_name, parallel.is_typed(losses, axis_name))
  return total / jnp.maximum(n, 1.0)


def check_loss_array(losses, rank: int, fn_name: str, kind: str, shape: str,
                     hint: str = "") -> None:
  """``losses`` is a float array of rank ``rank``, else an error naming ``fn_name``."""
  chex.assert_type(
      losses, float, exception_type=TypeError,
      custom_message=f"{fn_name} must return float {kind}, got "
      f"dtype {getattr(losses, 'dtype', type(losses).__name__)}")
  chex.assert_rank(
      losses, rank, exception_type=ValueError,
      custom_message=f"{fn_name} must return {shape}, got shape {jnp.shape(losses)}{hint}")


def update_weights(weighting: Weighting, losses: Array, state, mask, extras: Mapping,
                   described: str):
  """``(weights, new_state)`` of ``weighting`` on ``stop_gradient(losses)``; the weights
  are stop-gradiented and must have the losses' shape (``described`` names them in the
  error)."""
  weights, new_state = weighting.update(jax.lax.stop_gradient(losses), state, mask=mask,
                                        **extras)
  weights = jax.lax.stop_gradient(weights)
  chex.assert_equal_shape(
      [weights, losses], exception_type=ValueError,
      custom_message=f"the weighting returned weights of shape {jnp.shape(weights)} for "
      f"{described}")
  return weights, new_state


def _check_losses(losses) -> None:
  """The per-example losses of `weighted`: a float array of shape ``[batch]``."""
  check_loss_array(losses, 1, "per_example_loss_fn", "losses (one per example)",
                   "losses of shape [batch]",
                   "; reduce token or pixel losses to one value per example first "
                   "(e.g. reweight.losses.sequence_mean)")


def _check_batch_axes(losses: Array, axis_name: AxisName) -> None:
  parallel.is_typed(losses, axis_name)  # raises if the batch is replicated over some axes
  varying = parallel.varying_axes(losses)
  if axis_name is None and varying:
    axes = sorted(varying)
    raise ValueError(
        f"the per-example losses vary over the mesh axes {axes} (inside jax.shard_map): pass "
        f"axis_name={axes[0] if len(axes) == 1 else tuple(axes)!r} (the axes the batch is "
        "sharded over) to reweight.weighted, so that the weights and the loss are those of "
        "the global batch")


def loss_caller(loss_fn: Callable) -> Callable:
  """``call(params, batch, kwargs) -> (losses, aux)``: ``loss_fn`` given only the keyword
  arguments it accepts (all of them when it takes ``**kwargs``)."""
  accepted = _accepted_kwargs(loss_fn)

  def call(params, batch, kwargs):
    fn_kwargs = kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}
    return split_loss_output(loss_fn(params, batch, **fn_kwargs))

  return call


def scoped_to_axis(axis_name: AxisName, body: Callable) -> Callable:
  """The loss function of `weighted` and `reweight.weighted_tokens`:
  ``loss_fn(params, batch, weighting_state, *, step=None, **kwargs)`` that resolves
  ``axis_name`` (`parallel.resolve_axis_name`) and runs ``body(axis, params, batch,
  weighting_state, step, kwargs)`` with it as the default batch axis
  (`parallel.batch_axis`)."""

  def loss_fn(params, batch, weighting_state, *, step=None, **kwargs):
    axis = parallel.resolve_axis_name(axis_name)
    with parallel.batch_axis(axis):
      return body(axis, params, batch, weighting_state, step, kwargs)

  return loss_fn


def weighted(per_example_loss_fn: Callable, weighting: Weighting, *,
             axis_name: AxisName = None) -> Callable:
  """Turns a per-example loss function into a weighted scalar loss.

  .. math::

    w, s' = \\text{weighting.update}(\\ell(\\theta), s, \\ldots) \\qquad
    L(\\theta) = \\frac{\\sum_i \\text{sg}(w_i)\\, \\ell_i(\\theta)}{\\sum_i v_i}

  with ``v = mask & isfinite(losses)``.

  The weighting sees the batch's standard fields (``mask``, ``group``, ``id`` as ``mask=``,
  ``groups=``, ``example_ids=``) when the batch is a mapping, every entry of the per-example
  function's ``aux`` dict (e.g. ``logits``, ``labels``), ``params`` (under stop-gradient),
  ``step``, ``batch``, ``loss_fn`` (the per-example function, returning losses only) and
  every keyword passed to the returned function. Examples with a non-finite loss get weight
  0 and add exactly 0 to the loss; its gradient stays finite as long as their per-example
  gradients are (a NaN inside the per-example function's own chain rule cannot be undone
  from outside). Keywords are also forwarded to
  ``per_example_loss_fn`` when its signature names them (or takes ``**kwargs``).

  **Data parallelism.** Under `jax.jit` with the batch sharded over a `Mesh` pass no
  ``axis_name``: the code is global-view. Inside `jax.shard_map` with its default
  ``check_vma=True`` (replicated ``params`` and state, batch on ``P("data")``) use
  ``axis_name="data"``: the loss, the ``info`` scalars and the new state are global and
  replicated (``out_specs=P()``), and ``jax.grad`` of the loss w.r.t. replicated
  parameters is the global gradient on every device, since JAX's AD sums it over the
  devices; write no ``psum`` (it would multiply the gradient by the number of devices).
  ``jax.pmap`` (and ``shard_map(check_vma=False)``) does not track replication: there the
  loss is still the global value, but its gradient is this device's share, so ``psum`` the
  gradients (not the loss) over ``axis_name``:

  .. code-block:: python

    fn = reweight.weighted(per_example_loss, weighting, axis_name="data")

    def step(params, batch, state):  # jax.shard_map(step, mesh=mesh, out_specs=P(),
      # in_specs=(P(), P("data"), P())): loss, gradient and state are global, no psum
      (loss, (state, info)), grads = jax.value_and_grad(fn, has_aux=True)(params, batch,
                                                                           state)
      return loss, grads, state

    def pmap_step(params, batch, state):  # jax.pmap(pmap_step, axis_name="data")
      (loss, (state, info)), grads = jax.value_and_grad(fn, has_aux=True)(params, batch,
                                                                           state)
      return loss, jax.lax.psum(grads, "data"), state  # psum the gradients only

  Args:
    per_example_loss_fn: ``f(params, batch, **kw) -> losses[B] | (losses[B], aux_dict)``.
    weighting: a `Weighting`.
    axis_name: inside `shard_map`/`pmap`, the batch axis name(s). The weighting inherits
      it when built without ``axis_name``; a weighting built with another axis name is an
      error (`reweight.parallel.resolve_axis_name`). The loss is then the global batch's on
      every device (see above).

  Returns:
    ``loss_fn(params, batch, weighting_state, *, step=None, **kw) -> (loss, (new_state,
    info))`` where ``info`` holds ``weights``, ``losses``, ``loss`` (unweighted mean), the
    `diagnostics` and, for a group method (`reweight.group`), `group_info`: ``probs``,
    ``group_loss``, ``group_count`` and ``group_weight_share``.

  Raises:
    ValueError: (when the loss is traced) inside `jax.shard_map` without ``axis_name``
      while the losses vary over a mesh axis, or with a weighting built for another axis.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, reweight
    >>> def per_example_loss(params, batch):
    ...   logits = batch["x"] @ params
    ...   return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    >>> loss_fn = reweight.weighted(per_example_loss, reweight.uniform())
    >>> batch = {"x": jnp.ones((3, 2)), "y": jnp.array([0, 1, 1])}
    >>> loss, (state, info) = loss_fn(jnp.zeros((2, 2)), batch, reweight.uniform().init())
    >>> round(float(loss), 4)  # log(2)
    0.6931
  """
  call = loss_caller(per_example_loss_fn)

  def _loss(axis_name, params, batch, weighting_state, step, kwargs):
    losses, aux = call(params, batch, kwargs)
    _check_losses(losses)
    _check_batch_axes(losses, axis_name)

    def losses_only(p, b):
      return call(p, b, kwargs)[0]

    extras = weighting_inputs(batch, aux, params, step, kwargs, losses_only)
    mask = extras.pop("mask", None)
    weights, new_state = update_weights(weighting, losses, weighting_state, mask, extras,
                                        f"per-example losses of shape {losses.shape}")
    valid = valid_mask(losses, mask)
    loss = weighted_mean(losses, weights, valid, axis_name)
    info = {
        "weights": weights,
        "losses": jax.lax.stop_gradient(losses),
        "loss": parallel.batch_mean(jax.lax.stop_gradient(losses), axis_name, valid),
        **diagnostics(weights, jax.lax.stop_gradient(losses), mask, axis_name),
        **group_info(new_state, weights, jax.lax.stop_gradient(losses), extras.get("groups"),
                     valid, axis_name),
    }
    return loss, (new_state, info)

  return scoped_to_axis(axis_name, _loss)
