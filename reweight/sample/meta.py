"""Meta-learned per-example weights: L2RW, Meta-Weight-Net and a self-taught rescaler.

All three weightings look one SGD step ahead, ``theta_hat = theta - alpha * (weighted
gradient of the batch)``, and ask how the loss of a *meta* set at ``theta_hat`` changes with
the example weights. They differ in what is learned and where the meta set comes from:

=====================  ==================================  ================================
weighting              weights                             meta set
=====================  ==================================  ================================
`l2rw`                 ``max(-dL_meta/d eps_i, 0)``        a clean ``meta_batch``
`meta_weight_net`      ``V(l_i; Theta)``, Theta learned    a clean ``meta_batch``
`self_taught`          ``V(features_i; Theta)``            the batch's top-weighted examples
=====================  ==================================  ================================

**Cheap exact meta-gradients.** Each example's influence on the meta loss is an inner
product of its gradient with a meta gradient, ``<grad l_i(theta), g_meta>``. All ``B`` of
them come from *one* forward-mode pass of the per-example loss function at ``theta`` along
``g_meta``:

.. code-block:: python

  _, dots = jax.jvp(lambda p: loss_fn(p, batch), (params,), (g_meta,))

so no per-example gradients are materialized and no second-order (double backward) pass is
needed. ``method="lookahead"`` / ``"exact_second_order"`` differentiate literally through the
lookahead with `jax.grad` instead; the two agree to rounding (see the tests).

**Extras.** The weightings need ``params``, ``loss_fn`` (per-example: ``(params, batch) ->
losses[B]``), ``batch`` and (for `l2rw`, `meta_weight_net`) ``meta_batch``;
`reweight.weighted` passes the first three automatically and ``meta_batch`` when it is given
as a keyword to the loss: ``loss_fn(params, batch, state, meta_batch=meta_batch)``.
`self_taught` also needs ``logits`` (``[B, C]``, an entry of the per-example function's aux).

**Parallelism.** Inside `shard_map`/`pmap` (``axis_name`` set, or inherited from
`reweight.weighted`) ``batch`` is this device's shard and ``params`` / ``meta_batch`` are
replicated. Gradients of sums over the batch are summed over the devices: by JAX's AD
inside `shard_map` with its default ``check_vma=True`` (gradients of replicated inputs),
by a ``psum`` under `pmap` (`reweight.parallel.psum_partials`). So every device computes
the same lookahead, the same meta gradient and the same weight-net update (the state stays
replicated), and the weights equal the single-device ones.

References:
  Ren, Zeng, Yang, Urtasun, "Learning to Reweight Examples for Robust Deep Learning",
  ICML 2018.

  Shu, Xie, Yi, Zhao, Zhou, Xu, Meng, "Meta-Weight-Net: Learning an Explicit Mapping For
  Sample Weighting", NeurIPS 2019.

  Heck et al., "Self-taught On-the-fly Meta Loss Rescaling" (STORM), 2024.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from reweight import parallel
from reweight._checks import check_choice
from reweight._types import PyTree, ScalarOrSchedule
from reweight.base import (
  CountState,
  Weighting,
  current_step,
  normalize,
  resolve,
  split_loss_output,
  valid_mask,
)
from reweight.parallel import AxisName

Array = jax.Array

L2RW_METHODS = ("jvp", "lookahead")
META_NET_METHODS = ("jvp", "exact_second_order")
SELF_TAUGHT_FEATURES = ("loss", "confidence", "entropy", "margin")


class MetaNetState(NamedTuple):
  """State of `meta_weight_net` and `self_taught`.

  Attributes:
    count: number of updates made (the step when none is passed).
    net: the weight net's parameters ``{"w1": [d, H], "b1": [H], "w2": [H, 1], "b2": [1]}``.
    opt_state: the weight net's optimizer state.
  """

  count: Array
  net: dict[str, Array]
  opt_state: PyTree


# ----------------------------------------------------------------------------- helpers


def _check_inner_lr(inner_lr):
  if not callable(inner_lr) and not inner_lr > 0:
    raise ValueError(f"inner_lr={inner_lr!r} must be a positive float (or a schedule "
                     "step -> inner_lr)")


def _require(who: str, **extras):
  missing = sorted(name for name, value in extras.items() if value is None)
  if missing:
    raise ValueError(
        f"{who} needs the extras {missing}; reweight.weighted passes params, loss_fn and "
        "batch automatically, give meta_batch as a keyword of the loss "
        "(loss_fn(params, batch, state, meta_batch=...)) and logits as an entry of the "
        "per-example function's aux dict")


def _losses_only(loss_fn: Callable) -> Callable:
  return lambda p, b: split_loss_output(loss_fn(p, b))[0]


def _psum(tree, axis_name: AxisName, typed: bool):
  """Sums per-device partial gradients (already summed by AD where typed invariant)."""
  return parallel.psum_partials(tree, axis_name, typed)


def _step_params(params, direction, scale):
  """``params - scale * direction`` leaf by leaf, in the parameters' dtypes."""
  return jax.tree.map(lambda p, d: (p - scale * d).astype(p.dtype), params, direction)


def _clean_meta_loss(fn: Callable, params, meta_batch) -> Array:
  """Mean per-example loss of the meta batch (finite, masked-in entries only)."""
  losses = fn(params, meta_batch)
  valid = jnp.isfinite(losses)
  if isinstance(meta_batch, Mapping) and "mask" in meta_batch:
    valid = valid & jnp.asarray(meta_batch["mask"], bool)
  total = jnp.sum(jnp.where(valid, losses, 0.0))
  return total / jnp.maximum(jnp.sum(valid), 1).astype(total.dtype)


def _init_net(key, in_dim: int, hidden: int) -> dict[str, Array]:
  """PyTorch ``nn.Linear``'s default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  if isinstance(key, int):
    key = jax.random.PRNGKey(key)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  b_in, b_hid = 1.0 / math.sqrt(in_dim), 1.0 / math.sqrt(hidden)
  u = lambda k, shape, b: jax.random.uniform(k, shape, jnp.float32, -b, b)
  return {"w1": u(k1, (in_dim, hidden), b_in), "b1": u(k2, (hidden,), b_in),
          "w2": u(k3, (hidden, 1), b_hid), "b2": u(k4, (1,), b_hid)}


def weight_net_apply(net: dict[str, Array], features: Array) -> Array:
  """``V(x; Theta) = sigmoid(W2 relu(W1 x + b1) + b2)`` for ``features`` ``[B, d]`` -> ``[B]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.sample.meta import weight_net_apply
    >>> net = {"w1": jnp.ones((1, 2)), "b1": jnp.zeros(2), "w2": -jnp.ones((2, 1)),
    ...        "b2": jnp.zeros(1)}
    >>> [round(v, 4) for v in weight_net_apply(net, jnp.array([[0.0], [1.0]])).tolist()]
    [0.5, 0.1192]
  """
  h = jax.nn.relu(features @ net["w1"] + net["b1"])
  return jax.nn.sigmoid(h @ net["w2"] + net["b2"])[:, 0]


def _meta_net_gradient(net, features, valid, alpha, params, fn, batch, meta_grad: Callable,
                       meta_loss: Callable | None, method: str, axis_name: AxisName,
                       typed: bool):
  """Gradient w.r.t. the weight net of the meta loss after the V-weighted lookahead step.

  ``theta_hat(Theta) = theta - alpha / n * sum_i V(x_i; Theta) grad l_i(theta)`` over the
  valid examples of the global batch, and the meta loss is ``L_meta(theta_hat)``.

  ``meta_grad(theta) -> grad L_meta(theta)`` (global); ``meta_loss(theta) -> this device's
  share of L_meta`` (used by the literal second-order method; with replicated meta data the
  share is the whole loss).
  """
  # The widest enabled float (float64 under x64), so that alpha / n rounds only once.
  n = parallel.batch_sum(valid.astype(jax.dtypes.canonicalize_dtype(jnp.float64)), axis_name)
  n = jnp.maximum(n, 1.0)
  v_of = lambda th: jnp.where(valid, weight_net_apply(th, features), 0.0)

  if method == "jvp":
    # One forward of the per-example losses serves both the backward pass of the lookahead
    # (its transpose) and the forward-mode inner products (its tangent map).
    out, tangent = jax.linearize(lambda p: fn(p, batch), params)
    transpose = jax.linear_transpose(tangent, params)
    v, v_vjp = jax.vjp(v_of, net)
    (direction,) = transpose(v.astype(out.dtype))
    direction = _psum(direction, axis_name, typed)
    theta_hat = _step_params(params, direction, alpha / n)
    g_meta = meta_grad(theta_hat)
    dots = tangent(g_meta)                      # <grad l_i(theta), g_meta>, all i at once
    cot = jnp.where(valid, -alpha / n * dots, 0.0)
    (g_net,) = v_vjp(cot.astype(v.dtype))
    return _psum(g_net, axis_name, typed)

  # Literal: jax.grad through theta_hat(Theta) (a double backward). Typed (shard_map with
  # check_vma), JAX's AD sums the lookahead and the gradient over the devices itself.
  # Untyped (pmap), the other devices' parts of the lookahead sum enter as constants (their
  # gradients are theirs to add), and the per-device gradients are psum-ed.
  out, vjp = jax.vjp(lambda p: fn(p, batch), params)
  local_dir = lambda th: vjp(v_of(th).astype(out.dtype))[0]
  if axis_name is not None and not typed:
    total = _psum(jax.lax.stop_gradient(local_dir(net)), axis_name, typed)
  else:
    total = None

  def outer(th):
    d = local_dir(th)
    if total is not None:
      d = jax.tree.map(lambda a, t: a + jax.lax.stop_gradient(t - a), d, total)
    return meta_loss(_step_params(params, d, alpha / n))

  return _psum(jax.grad(outer)(net), axis_name, typed)


# --------------------------------------------------------------------------------- L2RW


def l2rw(inner_lr: ScalarOrSchedule = 0.1, *, axis_name: AxisName = None,
         method: Literal["jvp", "lookahead"] = "jvp") -> Weighting:
  """Learning to Reweight: weights from the meta-loss gradient of a one-step lookahead.

  With ``theta_hat(eps) = theta - alpha * grad_theta sum_j eps_j l_j(theta)``,

  .. math::

    u_i = -\\frac{\\partial}{\\partial \\epsilon_i}
          L_{meta}(\\hat\\theta(\\epsilon))\\Big|_{\\epsilon=0}
        = \\alpha \\langle \\nabla l_i(\\theta), \\nabla L_{meta}(\\theta) \\rangle,
    \\qquad w_i \\propto \\max(u_i, 0)

  scaled to mean one over the valid examples of the global batch (uniform if every
  ``u_i <= 0``). ``L_meta`` is the mean of ``loss_fn(params, meta_batch)`` (over
  ``meta_batch["mask"]`` if present). The weighted loss ``sum_i w_i l_i / n`` equals the
  paper's ``sum_i (max(u_i, 0) / sum_j max(u_j, 0)) l_i``.

  ``method="jvp"`` (default) uses the identity above: one gradient of the meta loss, then all
  ``u_i`` from one `jax.jvp` of the per-example losses along it (about 2-2.5 plain steps in
  all). ``method="lookahead"`` differentiates the meta loss through ``theta_hat(eps)`` with
  `jax.grad` w.r.t. ``eps`` (a double backward), as in the paper.

  Since the weights are invariant to a positive scale of ``u``, ``inner_lr`` does not change
  them (the expansion is exact at ``eps = 0``); it is kept for the paper's formulation.

  Args:
    inner_lr: the lookahead step size ``alpha`` (positive float or schedule).
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.
    method: ``"jvp"`` or ``"lookahead"``.

  Returns:
    A `Weighting` (state: update count). ``update`` needs the extras ``params``,
    ``loss_fn``, ``batch`` and ``meta_batch``.

  Examples:
    >>> import jax, jax.numpy as jnp, reweight
    >>> from reweight.sample.meta import l2rw
    >>> def per_example(w, batch):  # squared error of a 1-d linear model
    ...   return (batch["x"] * w - batch["y"]) ** 2
    >>> batch = {"x": jnp.array([1.0, 1.0, 1.0]), "y": jnp.array([1.0, 1.0, -1.0])}
    >>> meta_batch = {"x": jnp.array([1.0]), "y": jnp.array([1.0])}
    >>> wt = l2rw(0.1)
    >>> loss_fn = jax.jit(reweight.weighted(per_example, wt))
    >>> _, (_, info) = loss_fn(jnp.float32(0.0), batch, wt.init(), meta_batch=meta_batch)
    >>> info["weights"].tolist()  # the mislabeled example's gradient opposes the meta one
    [1.5, 1.5, 0.0]

  References:
    Ren, Zeng, Yang, Urtasun, "Learning to Reweight Examples for Robust Deep Learning",
    ICML 2018.
  """
  _check_inner_lr(inner_lr)
  check_choice("method", method, L2RW_METHODS)

  def init(key=None):
    del key
    return CountState(jnp.zeros([], jnp.int32))

  def update(losses, state, *, mask=None, step=None, params=None, loss_fn=None, batch=None,
             meta_batch=None, **extras):
    del extras
    _require("l2rw", params=params, loss_fn=loss_fn, batch=batch, meta_batch=meta_batch)
    valid = valid_mask(losses, mask)
    alpha = resolve(inner_lr, current_step(state.count, step), "inner_lr")
    fn = _losses_only(loss_fn)
    params = jax.lax.stop_gradient(params)
    meta_loss = lambda p: _clean_meta_loss(fn, p, meta_batch)
    if method == "jvp":
      g_meta = jax.grad(meta_loss)(params)
      _, dots = jax.jvp(lambda p: fn(p, batch), (params,), (g_meta,))
      u = alpha * dots
    else:
      # At eps = 0 only this device's eps move theta_hat, so the local lookahead's
      # derivative is the global one.
      out, vjp = jax.vjp(lambda p: fn(p, batch), params)

      def meta_at(eps):
        (direction,) = vjp(jnp.where(valid, eps, 0.0))
        return meta_loss(_step_params(params, direction, alpha))

      u = -jax.grad(meta_at)(jnp.zeros_like(out))
    u = jnp.where(valid, u, 0.0)
    weights = normalize(jnp.maximum(u, 0.0), valid, axis_name)
    return weights, CountState(state.count + 1)

  return Weighting(init, update)


# ------------------------------------------------------------------------ Meta-Weight-Net


def meta_weight_net(hidden: int = 100,
                    optimizer: optax.GradientTransformation | None = None,
                    inner_lr: ScalarOrSchedule = 0.1, *, axis_name: AxisName = None,
                    key: int | Array = 0,
                    method: Literal["jvp", "exact_second_order"] = "jvp") -> Weighting:
  """Meta-Weight-Net: a small net maps each loss to a weight, trained on a clean meta batch.

  ``V(l; Theta) = sigmoid(W2 relu(W1 l + b1) + b2)`` (1 -> ``hidden`` -> 1), fed ``sg(l)``.
  Each update, with ``alpha = inner_lr`` and ``n`` the number of valid examples:

  1. lookahead ``theta_hat(Theta) = theta - alpha/n sum_i V(l_i; Theta) grad l_i(theta)``;
  2. ``Theta <- Theta + optimizer step on grad_Theta L_meta(theta_hat(Theta))``, with
     ``L_meta`` the mean of ``loss_fn(params, meta_batch)``;
  3. weights ``w_i = sg(V(l_i; Theta_new))`` scaled to mean one over the valid examples.

  The paper normalizes by the sum, ``w_i = V_i / sum_j V_j``; the library's mean-one
  normalization gives the same weighted loss ``sum_i w_i l_i / n``.

  ``method="jvp"`` (default) uses

  .. math::

    \\nabla_\\Theta L_{meta}(\\hat\\theta) = -\\frac{\\alpha}{n} \\sum_i
      \\langle \\nabla l_i(\\theta), \\nabla L_{meta}(\\hat\\theta) \\rangle
      \\nabla_\\Theta V(l_i; \\Theta)

  with every inner product from one forward-mode pass of the per-example losses at
  ``theta`` along ``grad L_meta(theta_hat)`` (sharing the lookahead's forward, via
  `jax.linearize`), chained into a VJP of ``V`` w.r.t. ``Theta``. Cost: one forward, one
  backward and one tangent pass of the batch plus a forward-backward of the meta batch, on
  top of the weighted training step. ``method="exact_second_order"`` differentiates
  ``L_meta(theta_hat(Theta))`` with `jax.grad` (a double backward); since the lookahead is
  linear in ``V``, reverse mode through it is again one tangent pass, and XLA compiles both
  methods to the same work (measured: same flop count).

  The weight net is initialized like PyTorch's ``nn.Linear``. The paper trains it with Adam
  (1e-3) and coupled weight decay 1e-4: ``optax.chain(optax.add_decayed_weights(1e-4),
  optax.adam(1e-3))``; the default here is ``optax.adam(1e-3)``. Use the model's learning
  rate (or its schedule) as ``inner_lr``.

  Args:
    hidden: hidden units of the weight net.
    optimizer: an optax transformation for the weight net's parameters; None means
      ``optax.adam(1e-3)``.
    inner_lr: the lookahead step size ``alpha`` (positive float or schedule).
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.
    key: PRNG key (or int seed) for the weight net's init when ``init`` gets no key.
    method: ``"jvp"`` or ``"exact_second_order"``.

  Returns:
    A `Weighting` with a `MetaNetState`. ``update`` needs the extras ``params``, ``loss_fn``,
    ``batch`` and ``meta_batch``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, reweight
    >>> from reweight.sample.meta import meta_weight_net
    >>> def per_example(w, batch):
    ...   return (batch["x"] * w - batch["y"]) ** 2
    >>> batch = {"x": jnp.ones(4), "y": jnp.array([1.0, 1.0, 1.0, -3.0])}
    >>> meta_batch = {"x": jnp.ones(2), "y": jnp.ones(2)}
    >>> wt = meta_weight_net(hidden=8, optimizer=optax.sgd(10.0))
    >>> loss_fn = jax.jit(reweight.weighted(per_example, wt))
    >>> state = wt.init()
    >>> for _ in range(3):
    ...   _, (state, info) = loss_fn(jnp.float32(0.5), batch, state, meta_batch=meta_batch)
    >>> bool(info["weights"][3] < info["weights"][0])  # the large-loss outlier counts less
    True
    >>> round(float(info["weights"].sum()), 4)
    4.0

  References:
    Shu, Xie, Yi, Zhao, Zhou, Xu, Meng, "Meta-Weight-Net: Learning an Explicit Mapping For
    Sample Weighting", NeurIPS 2019.
  """
  if not (isinstance(hidden, int) and hidden >= 1):
    raise ValueError(f"hidden={hidden!r} must be a positive int")
  _check_inner_lr(inner_lr)
  check_choice("method", method, META_NET_METHODS)
  optimizer = optax.adam(1e-3) if optimizer is None else optimizer
  default_key = key

  def init(key=None):
    net = _init_net(default_key if key is None else key, 1, hidden)
    return MetaNetState(jnp.zeros([], jnp.int32), net, optimizer.init(net))

  def update(losses, state, *, mask=None, step=None, params=None, loss_fn=None, batch=None,
             meta_batch=None, **extras):
    del extras
    _require("meta_weight_net", params=params, loss_fn=loss_fn, batch=batch,
             meta_batch=meta_batch)
    axis = parallel.resolve_axis_name(axis_name)
    valid = valid_mask(losses, mask)
    alpha = resolve(inner_lr, current_step(state.count, step), "inner_lr")
    fn = _losses_only(loss_fn)
    params = jax.lax.stop_gradient(params)
    x = jnp.where(valid, jax.lax.stop_gradient(losses), 0.0)[:, None]
    meta_loss = lambda p: _clean_meta_loss(fn, p, meta_batch)
    g_net = _meta_net_gradient(state.net, x, valid, alpha, params, fn, batch,
                               jax.grad(meta_loss), meta_loss, method, axis,
                               parallel.is_typed(losses, axis))
    updates, opt_state = optimizer.update(g_net, state.opt_state, state.net)
    net = optax.apply_updates(state.net, updates)
    weights = normalize(weight_net_apply(net, x), valid, axis)
    return weights, MetaNetState(state.count + 1, net, opt_state)

  return Weighting(init, update)


# ------------------------------------------------------------------ self-taught rescaling


def self_taught_features(losses: Array, logits: Array, valid: Array) -> Array:
  """The rescaler's per-example inputs ``[B, 4]``: loss, confidence, entropy, margin.

  ``log1p(max(l, 0))``, ``p_max``, ``H(p) / log C`` and ``p_top1 - p_top2`` with
  ``p = softmax(logits)``; all under stop-gradient, zero for invalid examples. Every
  feature is a function of the example alone (no batch statistics), so the weights do not
  depend on how a batch is split.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.sample.meta import self_taught_features
    >>> f = self_taught_features(jnp.array([0.0]), jnp.zeros((1, 4)), jnp.array([True]))
    >>> [round(v, 4) for v in f[0].tolist()]  # uniform: p_max 1/4, entropy 1, margin 0
    [0.0, 0.25, 1.0, 0.0]
  """
  logits = jax.lax.stop_gradient(logits)
  p = jax.nn.softmax(logits, axis=-1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  top2 = lax.top_k(p, 2)[0]
  entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1) / math.log(logits.shape[-1])
  loss = jnp.log1p(jnp.maximum(jax.lax.stop_gradient(losses), 0.0)).astype(p.dtype)
  feats = jnp.stack([loss, top2[:, 0], entropy, top2[:, 0] - top2[:, 1]], axis=-1)
  return jnp.where(valid[:, None] & jnp.isfinite(feats), feats, 0.0)


def top_fraction_mask(scores: Array, valid: Array, fraction: float, *,
                      axis_name: AxisName = None) -> Array:
  """This device's part of the global selection of the ``ceil(fraction * n_valid)`` best.

  Ranks the valid ``scores`` of the global batch (all-gathered under ``axis_name``) in
  descending order, ties broken by position in the global batch, and marks the top
  ``max(1, ceil(fraction * n_valid))``. Identical on every layout of the batch.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.sample.meta import top_fraction_mask
    >>> top_fraction_mask(jnp.array([0.3, 0.9, 0.5, 0.7]), jnp.array([True] * 4), 0.5).tolist()
    [False, True, False, True]
  """
  axis_name = parallel.resolve_axis_name(axis_name)
  scores = jnp.where(valid, scores.astype(jnp.float32), -jnp.inf)
  local = scores.shape[0]
  if axis_name is not None:
    scores = lax.all_gather(scores, axis_name, tiled=True)
  n_valid = jnp.sum(jnp.isfinite(scores))
  k = jnp.minimum(jnp.maximum(jnp.ceil(fraction * n_valid), 1.0), n_valid)
  order = jnp.argsort(-scores, stable=True)
  ranks = jnp.zeros(order.shape, jnp.int32).at[order].set(
      jnp.arange(order.shape[0], dtype=jnp.int32))
  selected = ranks < k
  if axis_name is not None:
    start = lax.axis_index(axis_name) * local
    selected = lax.dynamic_slice_in_dim(selected, start, local)
  return selected & valid


def self_taught(hidden: int = 100,
                optimizer: optax.GradientTransformation | None = None,
                inner_lr: ScalarOrSchedule = 0.1, meta_fraction: float = 0.25,
                warmup_steps: int = 0, *, axis_name: AxisName = None,
                key: int | Array = 0) -> Weighting:
  """Self-taught meta loss rescaling: an MW-Net-style rescaler with no clean data.

  A STORM-style rescaler (Heck et al. 2024). Only the abstract is public offline; these are
  our choices:

  * **Inputs.** Model-derived per-example features (`self_taught_features`), all under
    stop-gradient and bounded or slowly growing, with no batch statistics:
    ``[log1p(max(l, 0)), p_max, H(p) / log C, p_top1 - p_top2]``, ``p = softmax(logits)``
    from the ``logits`` extra (``[B, C]``, ``C >= 2``).
  * **Rescaler.** ``V(x; Theta) = sigmoid(W2 relu(W1 x + b1) + b2)``, 4 -> ``hidden`` -> 1,
    initialized like PyTorch's ``nn.Linear``.
  * **Meta set, from the noisy batch.** Under stop-gradient, the valid examples with the
    highest current rescaler weight ``V(x_i; Theta)``, ``k = max(1, ceil(meta_fraction *
    n_valid))`` of them over the *global* batch (`top_fraction_mask`: all-gathered scores
    under ``axis_name``, ties broken by position). While ``step < warmup_steps`` the meta set
    is instead the ``k`` smallest-loss examples (the small-loss criterion for label noise),
    which trains the rescaler before it selects for itself, and the returned weights are
    uniform.
  * **Meta objective.** The mean loss of the meta set after the rescaler-weighted lookahead
    step, ``L_meta(theta_hat) = (1/k) sum_{i in S} l_i(theta_hat)``,
    ``theta_hat = theta - alpha/n sum_i V(x_i; Theta) grad l_i(theta)`` (all valid
    examples), minimized over ``Theta`` by one ``optimizer`` step per update. Its gradient is
    computed as in `meta_weight_net` (``method="jvp"``): one JVP of the per-example losses
    at ``theta`` along ``grad L_meta(theta_hat)``, chained into a VJP of ``V``; the meta
    set's own meta gradient is a backward pass of the batch at ``theta_hat`` with the
    selection as cotangent, so under ``axis_name`` nothing but scores is gathered.
  * **Weights.** ``sg(V(x_i; Theta_new))`` scaled to mean one over the valid examples
    (uniform during warm-up).

  Args:
    hidden: hidden units of the rescaler.
    optimizer: an optax transformation for the rescaler's parameters; None means
      ``optax.adam(1e-3)``.
    inner_lr: the lookahead step size ``alpha`` (positive float or schedule); use the
      model's learning rate.
    meta_fraction: fraction of the valid examples of the batch used as the meta set, in
      (0, 1].
    warmup_steps: steps with uniform weights and a small-loss meta set.
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.
    key: PRNG key (or int seed) for the rescaler's init when ``init`` gets no key.

  Returns:
    A `Weighting` with a `MetaNetState`. ``update`` needs the extras ``params``,
    ``loss_fn``, ``batch`` and ``logits``.

  Examples:
    >>> import jax, jax.numpy as jnp, reweight
    >>> from reweight.sample.meta import self_taught
    >>> def per_example(w, batch):
    ...   logits = batch["x"] @ w
    ...   return reweight.losses.softmax_cross_entropy(logits, batch["y"]), {"logits": logits}
    >>> batch = {"x": jax.random.normal(jax.random.PRNGKey(0), (8, 3)),
    ...          "y": jnp.array([0, 1, 2, 0, 1, 2, 0, 1])}
    >>> wt = self_taught(hidden=8, meta_fraction=0.5)
    >>> loss_fn = jax.jit(reweight.weighted(per_example, wt))
    >>> _, (state, info) = loss_fn(jnp.zeros((3, 3)), batch, wt.init())
    >>> round(float(info["weights"].sum()), 4), int(state.count)
    (8.0, 1)

  References:
    Heck et al., "Self-taught On-the-fly Meta Loss Rescaling", 2024 (abstract).

    Shu et al., "Meta-Weight-Net: Learning an Explicit Mapping For Sample Weighting",
    NeurIPS 2019.
  """
  if not (isinstance(hidden, int) and hidden >= 1):
    raise ValueError(f"hidden={hidden!r} must be a positive int")
  _check_inner_lr(inner_lr)
  if not 0.0 < meta_fraction <= 1.0:
    raise ValueError(f"meta_fraction={meta_fraction!r} must be in (0, 1]")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps={warmup_steps!r} must be >= 0")
  optimizer = optax.adam(1e-3) if optimizer is None else optimizer
  default_key = key

  def init(key=None):
    net = _init_net(default_key if key is None else key, len(SELF_TAUGHT_FEATURES), hidden)
    return MetaNetState(jnp.zeros([], jnp.int32), net, optimizer.init(net))

  def update(losses, state, *, mask=None, step=None, params=None, loss_fn=None, batch=None,
             logits=None, **extras):
    del extras
    _require("self_taught", params=params, loss_fn=loss_fn, batch=batch, logits=logits)
    if logits.ndim != 2 or logits.shape[0] != losses.shape[0] or logits.shape[1] < 2:
      raise ValueError(f"self_taught needs logits of shape [batch, classes >= 2] matching "
                       f"losses {losses.shape}; got {logits.shape}")
    axis = parallel.resolve_axis_name(axis_name)
    typed = parallel.is_typed(losses, axis)
    valid = valid_mask(losses, mask)
    t = current_step(state.count, step)
    alpha = resolve(inner_lr, t, "inner_lr")
    warm = t < warmup_steps
    fn = _losses_only(loss_fn)
    params = jax.lax.stop_gradient(params)
    x = self_taught_features(losses, logits, valid)

    score = jnp.where(warm, -jnp.where(valid, losses, 0.0),
                      weight_net_apply(state.net, x))
    selected = top_fraction_mask(jax.lax.stop_gradient(score), valid, meta_fraction, axis_name=axis)
    n_sel = jnp.maximum(parallel.batch_sum(selected.astype(jnp.float32), axis), 1.0)

    def meta_grad(theta):  # grad of (1/k) sum_{i in S} l_i(theta) over the global batch
      out, vjp = jax.vjp(lambda p: fn(p, batch), theta)
      return _psum(vjp((selected / n_sel).astype(out.dtype))[0], axis, typed)

    g_net = _meta_net_gradient(state.net, x, valid, alpha, params, fn, batch, meta_grad,
                               None, "jvp", axis, typed)
    updates, opt_state = optimizer.update(g_net, state.opt_state, state.net)
    net = optax.apply_updates(state.net, updates)
    weights = normalize(weight_net_apply(net, x), valid, axis)
    weights = jnp.where(warm, valid.astype(jnp.float32), weights)
    return jax.lax.stop_gradient(weights), MetaNetState(state.count + 1, net, opt_state)

  return Weighting(init, update)
