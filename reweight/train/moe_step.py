r"""A mixture-of-experts training step whose load balancing is that of the global batch.

The objective of a step over the valid tokens ``(b, t)`` (``m_bt = 1``) of the global batch,
with ``L`` MoE layers of ``N_E`` experts each:

.. math::

  \mathcal{L}(\theta) = \frac{\sum_{b,t} m_{bt}\, \ell_{bt}(\theta)}{\sum_{b,t} m_{bt}}
    + \alpha \sum_{l=1}^{L} \mathrm{LBL}_l(\theta)
    + \beta \sum_{l=1}^{L} \frac{1}{T} \sum_{b,t} m_{bt}\, \mathrm{lse}(z^l_{bt})^2,
  \qquad \mathrm{LBL}_l = N_E \sum_{i=1}^{N_E} f^l_i\, p^l_i,

with ``f_i`` the fraction of routing slots sent to expert ``i`` (no gradient) and ``p_i``
the mean router probability of expert ``i`` (`reweight.load_balancing`). ``scope`` says
over which tokens ``f`` and ``p`` are counted:

* ``"global"``: all tokens of the step, over all devices and all micro-batches (Qiu et
  al., 2025). With ``microbatches = M > 1`` the step takes two passes over the batch:

  1. forward only, every micro-batch ``m``: the additive routing statistics
     ``c^{l,(m)}_i`` (slot counts), ``P^{l,(m)}_i`` (probability sums), ``T^{(m)}``
     (`reweight.load_balancing.load_balancing_stats`, ``psum``-ed over ``axis_name``);
     summed: ``c^l = sum_m c^{l,(m)}``, ``T = sum_m T^{(m)}``;
  2. every micro-batch, the gradient of its share of the objective, accumulated:

     .. math::

       \mathcal{L}^{(m)} = \frac{\sum_{(b,t) \in m} m_{bt} \ell_{bt}}{T}
         + \alpha \sum_l N_E \sum_i \frac{c^l_i}{\sum_j c^l_j} \cdot
           \frac{P^{l,(m)}_i(\theta)}{T}
         + \beta \sum_l \frac{1}{T} \sum_{(b,t) \in m} m_{bt}\, \mathrm{lse}(z^l_{bt})^2.

  ``sum_m L^(m) = L`` in value and gradient: the gradient flows through the current
  micro-batch's probability sums, ``f`` is a constant of the step. The result equals the
  single-batch (``M = 1``) computation up to float rounding, at the cost of one extra
  forward pass per micro-batch.
* ``"micro"``: the frameworks' form: ``LBL_l`` of every micro-batch on every device,
  averaged over the ``M`` micro-batches and the devices. One pass (the task term and the
  z-loss are the global token means as above).

Under `jax.jit` with the batch sharded on a `Mesh` everything is global by construction.
Inside `jax.shard_map` (``check_vma=True``) pass ``axis_name``: the counts, probability
sums and token numbers are ``psum``-ed, the loss is the global one on every device and the
gradient of replicated parameters is the global gradient (write no ``psum`` of it).

Examples:
  A linear router over 2 experts on 4 sequences of 3 tokens: the step's load is even, but
  each sequence goes to one expert. With four micro-batches of one sequence the global
  scope gives the single-batch balancing loss (1 here); the micro scope does not.

  >>> import jax, jax.numpy as jnp
  >>> from reweight.train.models import Routing
  >>> from reweight.train.moe_step import moe_value_and_grad
  >>> def loss_fn(params, batch, *, key=None):
  ...   logits = batch["x"] @ params                           # [B, T, 2]
  ...   probs = jax.nn.softmax(logits)
  ...   routing = Routing(logits, probs, jnp.argmax(probs, -1)[..., None], None)
  ...   return jnp.sum(probs * batch["x"], -1), [routing]       # token losses [B, T]
  >>> x = jnp.stack([jnp.full((3, 2), v) for v in (-1.0, -0.5, 0.5, 1.0)]).at[..., 1].mul(-1)
  >>> params = jnp.array([[1.0, -1.0], [0.5, 0.5]])
  >>> def balance(**kw):
  ...   (loss, metrics), grads = moe_value_and_grad(loss_fn, 2, **kw)(params, {"x": x})
  ...   return round(float(metrics["balance_loss"]), 4)
  >>> balance(microbatches=4)                 # the step: half the tokens on each expert
  1.0
  >>> balance(microbatches=4, scope="micro")  # every micro-batch: all on one expert
  1.6119

References:
  Fedus, Zoph and Shazeer, "Switch Transformers: Scaling to Trillion Parameter Models with
  Simple and Efficient Sparsity", JMLR 2022 (arXiv:2101.03961).
  Qiu et al., "Demons in the Detail: On Implementing Load Balancing Loss for Training
  Specialized Mixture-of-Expert Models", ACL 2025 (arXiv:2501.11873).
  Zoph et al., "ST-MoE: Designing Stable and Transferable Sparse Expert Models", 2022
  (arXiv:2202.08906).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from reweight import parallel
from reweight._checks import check_choice, check_int
from reweight.load_balancing import (
    SCOPES,
    Scope,
    load_balancing,
    load_balancing_from_stats,
    load_balancing_stats,
    router_z_loss,
)
from reweight.parallel import AxisName
from reweight.train.step import _split_microbatches

PyTree = Any

__all__ = ["make_moe_train_step", "moe_value_and_grad"]


def _mask(batch: Any, shape: tuple[int, ...]) -> jax.Array | None:
  """``batch["token_mask"]`` (bool, the shape of the token losses), or None."""
  if not isinstance(batch, Mapping) or "token_mask" not in batch:
    return None
  mask = jnp.asarray(batch["token_mask"]).astype(bool)
  if mask.shape != tuple(shape):
    raise ValueError(f"batch['token_mask'] has shape {mask.shape} but the token losses have "
                     f"shape {tuple(shape)}")
  return mask


def _num_devices(axis_name: AxisName) -> int:
  n = 1
  for a in parallel.axis_tuple(axis_name):
    n *= lax.axis_size(a)
  return n


def _global_tokens(batch: Any, shape: tuple[int, ...], axis_name: AxisName) -> jax.Array:
  """The number of valid tokens of the global batch (no forward pass needed)."""
  mask = _mask(batch, shape)
  if mask is None:
    size = 1
    for s in shape:
      size *= s
    return jnp.float32(size * _num_devices(axis_name))
  typed = parallel.is_typed(mask, axis_name)
  return lax.stop_gradient(parallel.global_sum(jnp.sum(mask, dtype=jnp.float32), axis_name,
                                               typed))


def moe_value_and_grad(loss_fn: Callable, num_experts: int, *, balance_coef: float = 0.01,
                       z_coef: float = 0.0, scope: Scope = "global", microbatches: int = 1,
                       axis_name: AxisName = None) -> Callable:
  r"""``f(params, batch, *, key=None) -> ((loss, metrics), grads)`` of an MoE objective.

  The objective (module docstring) is the global token mean of the task loss plus
  ``balance_coef`` times the sum over MoE layers of ``N_E sum_i f_i p_i`` and ``z_coef``
  times the sum of the router z-losses. With ``scope="global"`` and ``microbatches > 1``
  it runs two passes: the routing statistics of every micro-batch (forward only), then the
  gradient of every micro-batch's share against the step's statistics, accumulated. The
  result is the single-batch one for any ``microbatches`` and any sharding.

  Args:
    loss_fn: ``loss_fn(params, batch, *, key=None) -> (token_losses [B, T], routing)``,
      ``routing`` a sequence of `reweight.train.models.Routing` (one per MoE layer, fields
      ``logits`` / ``probs`` ``[B, T, N_E]`` and ``expert_index`` ``[B, T, k]``), e.g. from
      `reweight.train.models.apply_with_routing`. ``batch["token_mask"]`` (``[B, T]``,
      optional) marks the valid tokens, of the task loss and of the router statistics.
    num_experts: ``N_E`` of every layer.
    balance_coef: ``alpha >= 0``, the weight of the load-balancing loss.
    z_coef: ``beta >= 0``, the weight of the router z-loss.
    scope: ``"global"`` (the whole step's tokens) or ``"micro"`` (per micro-batch and
      device, averaged: the frameworks' form).
    microbatches: ``M >= 1``; the batch's leading axis (per device inside `jax.shard_map`)
      is split into ``M`` equal parts.
    axis_name: the batch axis name(s) inside `jax.shard_map` / `jax.pmap` (keyword-only).

  Returns:
    The function. ``metrics``: ``loss``, ``task_loss`` (token mean), ``balance_loss``
    (``sum_l LBL_l`` in ``scope``'s form), ``z_loss`` (``sum_l``; not computed, 0, when
    ``z_coef = 0``), ``expert_counts``
    (``[L, N_E]`` routing slots per expert over the global batch) and ``tokens``.

  Raises:
    ValueError: on a bad ``scope``, ``microbatches`` or coefficient, or a batch that does not
      split into ``microbatches`` parts.
  """
  check_choice("scope", scope, SCOPES)
  num_experts = check_int("num_experts", num_experts, 1)
  microbatches = check_int("microbatches", microbatches, 1)
  for name, value in (("balance_coef", balance_coef), ("z_coef", z_coef)):
    if not value >= 0:
      raise ValueError(f"{name}={value!r} must be >= 0")

  def share(params, mb, key, total, tokens):
    """Micro-batch ``mb``'s share of the objective, and its parts (module docstring)."""
    losses, routing = loss_fn(params, mb, key=key)
    losses = jnp.asarray(losses)
    mask = _mask(mb, losses.shape)
    valid = jnp.ones(losses.shape, bool) if mask is None else mask
    typed = parallel.is_typed(losses, axis_name)
    task = parallel.global_sum(jnp.sum(jnp.where(valid, losses, 0.0)), axis_name,
                               typed) / jnp.maximum(tokens, 1.0)
    balance, z, counts = jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32), []
    for layer, r in enumerate(routing):
      stats = load_balancing_stats(r.probs, r.expert_index, num_experts, mask=mask,
                                   axis_name=axis_name)
      if scope == "micro":
        balance += load_balancing(r.probs, r.expert_index, num_experts, scope="micro",
                                  mask=mask, axis_name=axis_name) / microbatches
      else:
        balance += load_balancing_from_stats(
            stats, num_experts, total=None if total is None else total[layer])
      if z_coef:
        z += router_z_loss(r.logits, mask=mask, axis_name=axis_name) * (
            lax.stop_gradient(stats.tokens) / jnp.maximum(tokens, 1.0))
      counts.append(stats.counts)
    counts = (jnp.stack(counts) if counts else jnp.zeros((0, num_experts), jnp.float32))
    objective = task + balance_coef * balance + z_coef * z
    return objective, (task, balance, z, lax.stop_gradient(counts))

  def metrics_of(loss, parts, tokens):
    task, balance, z, counts = parts
    return {"loss": loss, "task_loss": task, "balance_loss": balance, "z_loss": z,
            "expert_counts": counts, "tokens": tokens}

  def value_and_grad(params, batch, *, key=None):
    shape = jax.eval_shape(lambda p, b: loss_fn(p, b, key=key)[0], params, batch).shape
    tokens = _global_tokens(batch, shape, axis_name)
    grad_fn = jax.value_and_grad(share, has_aux=True)
    if microbatches == 1:
      (loss, parts), grads = grad_fn(params, batch, key, None, tokens)
      return (loss, metrics_of(loss, parts, tokens)), grads

    mbs = _split_microbatches(batch, microbatches)
    keys = None if key is None else jax.random.split(key, microbatches)
    total = None
    if scope == "global":  # pass 1: the step's routing statistics, forward only

      def stats_of(args):
        mb, k = args
        losses, routing = loss_fn(params, mb, key=k)
        mask = _mask(mb, jnp.shape(losses))
        return [load_balancing_stats(r.probs, r.expert_index, num_experts, mask=mask,
                                     axis_name=axis_name) for r in routing]

      per_mb = lax.map(stats_of, (mbs, keys))
      total = lax.stop_gradient(jax.tree.map(lambda s: jnp.sum(s, axis=0), per_mb))

    def accumulate(carry, args):  # pass 2: gradients of the shares
      mb, k = args
      (loss, parts), g = grad_fn(params, mb, k, total, tokens)
      return jax.tree.map(jnp.add, carry, (loss, parts, g)), None

    zero_parts = jax.eval_shape(lambda: share(params, jax.tree.map(lambda x: x[0], mbs),
                                              None if keys is None else keys[0], total,
                                              tokens))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_parts)
    init = (zeros[0], zeros[1], jax.tree.map(jnp.zeros_like, params))
    (loss, parts, grads), _ = lax.scan(accumulate, init, (mbs, keys))
    return (loss, metrics_of(loss, parts, tokens)), grads

  return value_and_grad


def make_moe_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                        num_experts: int, *, balance_coef: float = 0.01, z_coef: float = 0.0,
                        scope: Scope = "global", microbatches: int = 1,
                        axis_name: AxisName = None) -> Callable:
  """A pure ``train_step(state, batch) -> (state, metrics)`` of an MoE objective.

  `moe_value_and_grad` (global-batch load balancing, two passes when micro-batched), then
  the optax update of ``state.trainable`` (a `reweight.train.state.TrainState`; no
  reparameterization, the weighting state is carried unchanged). A dropout key is split from
  ``state.rng`` every step; the same key serves both passes of a micro-batch.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, reweight
    >>> from reweight.train.models import Routing
    >>> from reweight.train.state import create
    >>> def loss_fn(params, batch, *, key=None):
    ...   logits = batch["x"] @ params
    ...   probs = jax.nn.softmax(logits)
    ...   routing = Routing(logits, probs, jnp.argmax(probs, -1)[..., None], None)
    ...   return jnp.sum(probs * batch["x"], -1), [routing]
    >>> step = jax.jit(make_moe_train_step(loss_fn, optax.sgd(0.1), 2, microbatches=2))
    >>> state = create(jnp.zeros((2, 2)), optax.sgd(0.1), reweight.uniform(),
    ...                jax.random.key(0))
    >>> state, metrics = step(state, {"x": jnp.ones((4, 3, 2))})
    >>> int(state.step), metrics["expert_counts"].tolist()
    (1, [[12.0, 0.0]])
  """
  value_and_grad = moe_value_and_grad(loss_fn, num_experts, balance_coef=balance_coef,
                                      z_coef=z_coef, scope=scope, microbatches=microbatches,
                                      axis_name=axis_name)

  def train_step(state, batch):
    rng, key = jax.random.split(state.rng)
    (_, metrics), grads = value_and_grad(state.trainable, batch, key=key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    return state._replace(step=state.step + 1, trainable=trainable, opt_state=opt_state,
                          rng=rng), metrics

  return train_step
