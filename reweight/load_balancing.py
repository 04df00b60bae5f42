r"""Load balancing of mixture-of-experts routers over the global batch, and the router z-loss.

A top-k router sends each token to ``k`` of ``N_E`` experts. The load-balancing loss of the
Switch Transformer pushes the routing towards an even load,

.. math::

  \mathrm{LBL} = N_E \sum_{i=1}^{N_E} f_i\, p_i, \qquad
  f_i = \frac{1}{k\,T} \sum_{t} \sum_{j=1}^{k} \mathbb{1}[e_{tj} = i], \qquad
  p_i = \frac{1}{T} \sum_{t} P_{ti},

over the ``T`` (valid) tokens ``t``, with ``e_{tj}`` the ``j``-th expert chosen for token
``t`` and ``P_{ti}`` the router's probability of expert ``i``. ``f_i`` is the fraction of
routing slots that went to expert ``i`` (``sum_i f_i = 1``; for ``k = 1`` the fraction of
tokens), a step function of the router that carries no gradient; the gradient flows through
``p_i``. With a perfectly even load and uniform probabilities the loss is 1, its minimum
over ``p`` for a fixed even ``f``. (Some frameworks, e.g. Hugging Face's Mixtral, use
``f_i = count_i / T``, which sums to ``k``: their value is ``k`` times this one.)

**Which tokens count: the global batch.** ``f_i`` and ``p_i`` are statistics of a set of
tokens. Frameworks compute them per micro-batch (the tokens one device sees in one
forward pass) and average the per-micro-batch losses. A micro-batch holds few sequences,
so that form asks every *sequence* to use all experts evenly and keeps experts from
specialising by domain. Qiu et al. (2025) compute ``f_i`` over the *global* batch (all
devices and all micro-batches of a step), which balances the load only at the corpus level;
it lowered perplexity and let experts specialise. Here:

* ``scope="global"`` (default): the statistics are those of all tokens of the call, summed
  over devices. Under `jax.jit` with the batch sharded on a `Mesh` this holds by
  construction; inside `jax.shard_map` / `jax.pmap` pass ``axis_name`` (or run inside a
  `reweight.weighted` that has one): counts, probability sums and token counts are
  ``psum``-ed, the loss is the global one on every device, with the gradient convention of
  `reweight.parallel` (typed replicated under ``shard_map(check_vma=True)``, so write no
  ``psum`` of gradients; this device's share of the gradient under `jax.pmap`).
* ``scope="micro"``: the frameworks' form. The statistics are this device's tokens only,
  and with ``axis_name`` the per-device losses are averaged over the devices.

**Micro-batched steps (gradient accumulation).** A call sees one micro-batch, so neither
scope alone is global across the micro-batches of a step. The loss is a function of
*additive* statistics (per-expert routing counts, per-expert probability sums, the token
count: `LoadBalancingStats`), so a two-pass step gets the global form exactly:

1. forward only, for every micro-batch ``m``: ``stats_m = load_balancing_stats(...)``
   (global over devices with ``axis_name``); ``total = sum_m stats_m`` (`add_stats`);
2. for every micro-batch, the gradient of its share
   ``load_balancing_from_stats(stats_m, num_experts, total=total)``
   ``= N_E sum_i f_i^{total} P_i^{(m)} / T^{total}`` (``P_i^{(m)}`` the micro-batch's
   probability sums, differentiable), accumulated over ``m``.

The shares sum to ``load_balancing_from_stats(total, num_experts)``, the loss of the whole
global batch, in value and gradient (``f`` carries no gradient and ``p`` is linear in the
per-micro-batch sums). This is the paper's "synchronise ``f_i`` across micro-batches", with
``p_i`` normalised by the step's token count so that micro-batches with fewer valid tokens
are not weighted up. Averaging ``load_balancing(..., scope="micro")`` over the micro-batches
is the frameworks' form instead.

**Router z-loss** (ST-MoE): ``mean_t logsumexp(z_t)^2`` of the router logits ``z_t``,
which keeps the logits small; a mean over the valid tokens of the global batch
(``psum`` of numerator and denominator with ``axis_name``).

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from reweight.load_balancing import load_balancing
  >>> probs = jnp.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9]])
  >>> index = jnp.argmax(probs, axis=-1)[:, None]           # top-1: experts 0, 0, 1, 1
  >>> round(float(load_balancing(probs, index, 2)), 4)      # 2 * (0.5 * 0.4 + 0.5 * 0.6)
  1.0

References:
  Fedus, Zoph and Shazeer, "Switch Transformers: Scaling to Trillion Parameter Models with
  Simple and Efficient Sparsity", JMLR 2022 (arXiv:2101.03961).
  Qiu et al., "Demons in the Detail: On Implementing Load Balancing Loss for Training
  Specialized Mixture-of-Expert Models", ACL 2025 (arXiv:2501.11873).
  Zoph et al., "ST-MoE: Designing Stable and Transferable Sparse Expert Models", 2022
  (arXiv:2202.08906).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
from jax import lax

from reweight import parallel
from reweight._checks import check_choice, check_int
from reweight.parallel import AxisName

Array = jax.Array
Scope = Literal["global", "micro"]
SCOPES = get_args(Scope)

__all__ = [
    "LoadBalancingStats",
    "add_stats",
    "load_balancing",
    "load_balancing_from_stats",
    "load_balancing_stats",
    "router_z_loss",
]


class LoadBalancingStats(NamedTuple):
  """Additive statistics of a set of routed tokens (sum them over micro-batches).

  Attributes:
    counts: ``[N_E]`` float32, how many routing slots (token, choice) went to each expert;
      no gradient. ``sum(counts) = k * tokens``.
    prob_sums: ``[N_E]``, the sum over tokens of the router probability of each expert
      (differentiable).
    tokens: ``[]`` float32, the number of (valid) tokens.
  """

  counts: Array
  prob_sums: Array
  tokens: Array


def add_stats(*stats: LoadBalancingStats) -> LoadBalancingStats:
  """The statistics of the union of disjoint token sets: the sum of theirs.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.load_balancing import LoadBalancingStats, add_stats
    >>> a = LoadBalancingStats(jnp.array([1.0, 0.0]), jnp.array([0.6, 0.4]), jnp.array(1.0))
    >>> add_stats(a, a).counts.tolist()
    [2.0, 0.0]
  """
  if not stats:
    raise ValueError("add_stats needs at least one LoadBalancingStats")
  return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *stats)


def _flatten(router_probs: Array, expert_index: Array, num_experts: int,
             mask: Array | None) -> tuple[Array, Array, Array]:
  """``probs [N, E]``, ``index [N, k]`` and ``valid [N]`` (float) from ``[..., E]`` inputs."""
  router_probs = jnp.asarray(router_probs)
  expert_index = jnp.asarray(expert_index)
  if router_probs.ndim < 1 or router_probs.shape[-1] != num_experts:
    raise ValueError(f"router_probs has shape {router_probs.shape}; expected [..., "
                     f"num_experts={num_experts}]")
  lead = router_probs.shape[:-1]
  if expert_index.shape == lead:  # top-1 given as [...]
    expert_index = expert_index[..., None]
  if expert_index.shape[:-1] != lead or expert_index.ndim != router_probs.ndim:
    raise ValueError(f"expert_index has shape {expert_index.shape}; expected {lead} + (k,) "
                     f"to match router_probs of shape {router_probs.shape}")
  if not jnp.issubdtype(expert_index.dtype, jnp.integer):
    raise ValueError(f"expert_index must be integer expert ids, got {expert_index.dtype}")
  if mask is None:
    valid = jnp.ones(lead, jnp.float32)
  else:
    mask = jnp.asarray(mask)
    if mask.shape != lead:
      raise ValueError(f"mask has shape {mask.shape}; expected the token shape {lead} of "
                       f"router_probs {router_probs.shape}")
    valid = mask.astype(jnp.float32)
  n = 1
  for s in lead:
    n *= s
  return (router_probs.reshape(n, num_experts), expert_index.reshape(n, -1),
          valid.reshape(n))


def _local_stats(router_probs: Array, expert_index: Array, num_experts: int,
                 mask: Array | None) -> LoadBalancingStats:
  probs, index, valid = _flatten(router_probs, expert_index, num_experts, mask)
  # Masked rows are zeroed with where (not multiplied) so non-finite padding cannot leak.
  probs = jnp.where(valid[:, None] > 0, probs, 0.0)
  one_hot = jax.nn.one_hot(index, num_experts, dtype=jnp.float32)  # [N, k, E]; out of range = 0
  counts = lax.stop_gradient(jnp.einsum("nke,n->e", one_hot, valid))
  prob_sums = jnp.sum(probs * valid[:, None].astype(probs.dtype), axis=0)
  return LoadBalancingStats(counts, prob_sums, jnp.sum(valid))


def load_balancing_stats(router_probs: Array, expert_index: Array, num_experts: int, *,
                         mask: Array | None = None,
                         axis_name: AxisName = None) -> LoadBalancingStats:
  """The additive statistics of `load_balancing` for a batch (global over devices).

  ``counts_i = sum_t m_t sum_j 1[e_tj = i]``, ``prob_sums_i = sum_t m_t P_ti`` and
  ``tokens = sum_t m_t`` over this call's tokens, ``psum``-ed over ``axis_name`` (inside
  `jax.shard_map` / `jax.pmap`; with the gradient convention of `reweight.parallel`).
  Sum the statistics of the micro-batches of a step with `add_stats` and turn them into the
  loss with `load_balancing_from_stats` (see the module docstring for the two-pass step).

  Args:
    router_probs: ``[..., N_E]`` router probabilities (softmax of the router logits).
    expert_index: ``[..., k]`` integer ids of the chosen experts (or ``[...]`` for top-1).
    num_experts: ``N_E``.
    mask: optional ``[...]`` booleans; False tokens (padding) are not counted.
    axis_name: the batch axis name(s) inside `jax.shard_map` / `jax.pmap`.

  Returns:
    A `LoadBalancingStats`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.load_balancing import load_balancing_stats
    >>> s = load_balancing_stats(jnp.array([[0.7, 0.3], [0.2, 0.8]]), jnp.array([[0], [1]]), 2)
    >>> s.counts.tolist(), [round(x, 2) for x in s.prob_sums.tolist()], float(s.tokens)
    ([1.0, 1.0], [0.9, 1.1], 2.0)
  """
  num_experts = check_int("num_experts", num_experts, 1)
  local = _local_stats(router_probs, expert_index, num_experts, mask)
  axis_name = parallel.resolve_axis_name(axis_name)
  typed = parallel.is_typed(jnp.asarray(router_probs), axis_name)
  return LoadBalancingStats(*parallel.global_sum(tuple(local), axis_name, typed))


def load_balancing_from_stats(stats: LoadBalancingStats, num_experts: int, *,
                              total: LoadBalancingStats | None = None) -> Array:
  r"""``N_E sum_i f_i p_i`` from `LoadBalancingStats` (or one micro-batch's share of it).

  .. math::

    \mathrm{LBL} = N_E \sum_i \frac{c_i}{\sum_j c_j} \cdot \frac{P_i}{T}

  with ``c = stats.counts``, ``P = stats.prob_sums`` and ``T = stats.tokens``. Given
  ``total`` (the statistics of the whole step), it is the share of the micro-batch
  ``stats``: ``N_E sum_i f_i^{total} P_i / T^{total}``, with ``f`` and ``T`` from ``total``
  and ``P`` from ``stats``; the shares of the micro-batches of a step sum to
  ``load_balancing_from_stats(total, num_experts)`` in value and gradient. No tokens give 0.

  Args:
    stats: the statistics of the tokens (from `load_balancing_stats` / `add_stats`).
    num_experts: ``N_E``, the length of ``stats.counts``.
    total: optional statistics of the whole step (forward pass over all micro-batches,
      no gradient needed).

  Returns:
    A scalar.

  Examples:
    Two micro-batches of two tokens each, each routed entirely to one expert: each
    micro-batch is unbalanced, the step is balanced.

    >>> import jax.numpy as jnp
    >>> from reweight.load_balancing import (add_stats, load_balancing_from_stats,
    ...                                      load_balancing_stats)
    >>> probs = jnp.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    >>> index = jnp.array([0, 0, 1, 1])
    >>> micro = [load_balancing_stats(probs[s], index[s], 2) for s in (slice(0, 2),
    ...                                                                  slice(2, 4))]
    >>> total = add_stats(*micro)
    >>> round(float(load_balancing_from_stats(total, 2)), 4)       # global: balanced
    1.0
    >>> round(sum(float(load_balancing_from_stats(m, 2, total=total)) for m in micro), 4)
    1.0
    >>> round(sum(float(load_balancing_from_stats(m, 2)) for m in micro) / 2, 4)  # micro
    1.8
  """
  num_experts = check_int("num_experts", num_experts, 1)
  if stats.counts.shape != (num_experts,) or stats.prob_sums.shape != (num_experts,):
    raise ValueError(f"stats have counts of shape {stats.counts.shape} and prob_sums of "
                     f"shape {stats.prob_sums.shape}; expected ({num_experts},)")
  ref = stats if total is None else total
  counts = lax.stop_gradient(ref.counts)
  tokens = lax.stop_gradient(ref.tokens)
  f = counts / jnp.maximum(jnp.sum(counts), 1.0)
  p = stats.prob_sums / jnp.maximum(tokens, 1.0).astype(stats.prob_sums.dtype)
  return num_experts * jnp.sum(f.astype(p.dtype) * p)


def load_balancing(router_probs: Array, expert_index: Array, num_experts: int, *,
                   scope: Scope = "global", axis_name: AxisName = None,
                   mask: Array | None = None) -> Array:
  r"""Load-balancing loss ``N_E sum_i f_i p_i`` of a top-k router (Switch Transformer).

  .. math::

    \mathrm{LBL} = N_E \sum_{i=1}^{N_E} f_i\, p_i, \quad
    f_i = \frac{\#\{(t, j): e_{tj} = i\}}{k\,T}, \quad p_i = \frac{1}{T}\sum_t P_{ti}

  over the ``T`` valid tokens. ``scope="global"``: over all tokens of the call, summed
  over the devices of ``axis_name`` (`jax.shard_map` / `jax.pmap`; under `jax.jit` on a
  `Mesh` the call is global by construction). ``scope="micro"``: over this device's tokens,
  the per-device losses averaged over ``axis_name`` (the frameworks' per-micro-batch form).
  Across the micro-batches of an accumulated step use `load_balancing_stats` and
  `load_balancing_from_stats` (module docstring). ``f`` carries no gradient.

  Args:
    router_probs: ``[..., N_E]`` router probabilities (softmax of the router logits).
    expert_index: ``[..., k]`` integer ids of the experts each token was routed to (or
      ``[...]`` for top-1).
    num_experts: ``N_E``.
    scope: ``"global"`` or ``"micro"``.
    axis_name: the batch axis name(s) inside `jax.shard_map` / `jax.pmap` (keyword-only;
      inherited from an enclosing `reweight.weighted`).
    mask: optional ``[...]`` booleans; False tokens (padding) are not counted.

  Returns:
    A scalar, 1 for an even load with uniform probabilities; the same on every device.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.load_balancing import load_balancing
    >>> probs = jnp.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    >>> index = jnp.array([[0, 1], [1, 2]])                  # top-2
    >>> # f = (1, 2, 1) / 4, p = (0.3, 0.45, 0.25): 3 * (0.075 + 0.225 + 0.0625)
    >>> round(float(load_balancing(probs, index, 3)), 4)
    1.0875

  References:
    Fedus, Zoph and Shazeer, "Switch Transformers: Scaling to Trillion Parameter Models
    with Simple and Efficient Sparsity", JMLR 2022.
    Qiu et al., "Demons in the Detail: On Implementing Load Balancing Loss for Training
    Specialized Mixture-of-Expert Models", ACL 2025.
  """
  check_choice("scope", scope, SCOPES)
  num_experts = check_int("num_experts", num_experts, 1)
  if scope == "global":
    stats = load_balancing_stats(router_probs, expert_index, num_experts, mask=mask,
                                 axis_name=axis_name)
    return load_balancing_from_stats(stats, num_experts)
  local = _local_stats(router_probs, expert_index, num_experts, mask)
  loss = load_balancing_from_stats(local, num_experts)
  axis_name = parallel.resolve_axis_name(axis_name)
  if axis_name is None:
    return loss
  typed = parallel.is_typed(jnp.asarray(router_probs), axis_name)
  devices = 1
  for a in parallel.axis_tuple(axis_name):
    devices *= lax.axis_size(a)
  return parallel.global_sum(loss, axis_name, typed) / devices


def router_z_loss(router_logits: Array, *, mask: Array | None = None,
                  axis_name: AxisName = None) -> Array:
  r"""Router z-loss: the mean over tokens of ``logsumexp(z_t)^2`` (ST-MoE).

  .. math::

    L_z = \frac{1}{T} \sum_t \Big(\log \sum_{i=1}^{N_E} e^{z_{ti}}\Big)^2

  over the ``T`` valid tokens of the global batch (numerator and denominator ``psum``-ed
  over ``axis_name`` inside `jax.shard_map` / `jax.pmap`, with the gradient convention of
  `reweight.parallel`). No valid tokens give 0.

  Args:
    router_logits: ``[..., N_E]`` router logits.
    mask: optional ``[...]`` booleans; False tokens are not counted.
    axis_name: the batch axis name(s) inside `jax.shard_map` / `jax.pmap` (keyword-only).

  Returns:
    A scalar.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.load_balancing import router_z_loss
    >>> round(float(router_z_loss(jnp.zeros((3, 4)))), 4)   # log(4)^2
    1.9218

  References:
    Zoph et al., "ST-MoE: Designing Stable and Transferable Sparse Expert Models", 2022.
  """
  logits = jnp.asarray(router_logits)
  if logits.ndim < 1:
    raise ValueError(f"router_logits has shape {logits.shape}; expected [..., num_experts]")
  lead = logits.shape[:-1]
  if mask is None:
    valid = jnp.ones(lead, bool)
  else:
    valid = jnp.asarray(mask).astype(bool)
    if valid.shape != lead:
      raise ValueError(f"mask has shape {valid.shape}; expected the token shape {lead} of "
                       f"router_logits {logits.shape}")
  z = jax.nn.logsumexp(jnp.where(valid[..., None], logits, 0.0), axis=-1)
  num = jnp.sum(jnp.where(valid, z * z, 0.0))
  den = jnp.sum(valid.astype(num.dtype))
  axis_name = parallel.resolve_axis_name(axis_name)
  typed = parallel.is_typed(logits, axis_name)
  num, den = parallel.global_sum((num, den), axis_name, typed)
  return num / jnp.maximum(den, 1.0)
