"""AdaLoRA rank-budget allocation as an optax transform (PEFT's ``RankAllocator``).

Works on the trainable tree made by `reweight.reparam.adalora`: every node holding
``lora_a`` (``Q^T``), ``lora_e`` (``lambda``) and ``lora_b`` (``P^T``) is a set of ``r``
triplets ``(P_.i, lambda_i, Q_i.)``. Importance is tracked per entry, scored per triplet, and
the lowest-scoring triplets get ``lambda_i = 0`` so the total number of live triplets follows a
cubic budget schedule.

References:
  Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reweight._checks import check_int, check_open_unit
from reweight.reparam.adalora import TRIPLET, find_triplets, triplet_path
from reweight.tree_paths import flatten_with_paths, replace_at


class AdaLoraBudgetState(NamedTuple):
  """State of `adalora_budget`.

  Attributes:
    count: number of updates done so far; the current update is PEFT's ``global_step``.
    exp_avg_ipt: per triplet prefix, ``{"lora_a", "lora_e", "lora_b"}`` EMAs of the
      sensitivity ``I = |theta * g|`` (PEFT ``exp_avg_ipt``).
    exp_avg_unc: same structure, EMAs of the uncertainty ``|I - I_bar|`` (PEFT
      ``exp_avg_unc``).
    keep: per triplet prefix, bool ``(r,)``: the latest rank pattern (True = kept).
    budget: the budget (number of kept triplets, all targets together) at the last update.
  """

  count: jax.Array
  exp_avg_ipt: dict[str, dict[str, jax.Array]]
  exp_avg_unc: dict[str, dict[str, jax.Array]]
  keep: dict[str, jax.Array]
  budget: jax.Array


def budget_table(
    total_steps: int, init_budget: int, target_budget: int, tinit: int, tfinal: int
) -> np.ndarray:
  r"""The budget ``b(t)`` for ``t = 0 .. total_steps - tfinal`` (int32, computed on the host).

      b(t) = b_0                                             for t <= tinit,
      b(t) = floor(b_T + (b_0 - b_T) (1 - (t - tinit) / (T - tfinal - tinit))^3)
                                                             for tinit < t <= T - tfinal,

  evaluated in float64 with PEFT's exact expression (so integer rounding agrees with PEFT);
  ``b(t) = b_T`` for ``t > T - tfinal``.
  """
  end = total_steps - tfinal
  out = np.empty(end + 1, np.int32)
  for t in range(end + 1):
    if t <= tinit:
      out[t] = init_budget
    else:
      mul_coeff = 1 - (t - tinit) / (total_steps - tfinal - tinit)
      out[t] = int((init_budget - target_budget) * (mul_coeff**3) + target_budget)
  return out


def adalora_budget(
    total_steps: int,
    init_rank: int,
    target_rank: int,
    tinit: int,
    tfinal: int,
    delta_t: int,
    beta1: float = 0.85,
    beta2: float = 0.85,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaLoRA's importance-based rank allocation; put it last, after the base optimizer.

  With ``t`` the number of previous updates (PEFT's ``global_step``), ``g`` the raw gradient
  and ``theta = params + u`` the parameters after the base optimizer's update ``u`` (PEFT
  calls ``update_and_allocate`` after ``optimizer.step()``), for every entry of ``P``,
  ``lambda``, ``Q`` and while ``t < T - tfinal``:

      I = |theta * g|,   I_bar <- b1 I_bar + (1 - b1) I,   U_bar <- b2 U_bar + (1 - b2) |I - I_bar|,
      s = I_bar * U_bar,   S_i = s(lambda_i) + mean_j s(Q_ij) + mean_j s(P_ji).

  Budget (``b_0 = n * init_rank``, ``b_T = n * target_rank`` for ``n`` targets):
  ``b(t) = b_T + (b_0 - b_T) (1 - (t - tinit) / (T - tfinal - tinit))^3``, floored, for
  ``tinit < t < T - tfinal``. Masking, with ``k = b_0 - b(t)`` and ``tau`` the k-th smallest
  triplet score over all targets: triplets with ``S_i <= tau`` get ``lambda_i = 0`` (their
  update becomes ``-lambda_i``), at every step with ``tinit < t < T - tfinal`` and
  ``t % delta_t == 0``; at ``t = T - tfinal`` with ``b_T`` (then the EMAs are reset), and at
  every ``t > T - tfinal`` with the rank pattern fixed at ``T - tfinal``.

  Differences from PEFT's ``RankAllocator``: none in the maths. PEFT raises when
  ``k = 0`` (``torch.kthvalue``); here nothing is masked. Between masking steps a pruned
  ``lambda_i`` may regrow, as in PEFT. Masks are zeroed values, not a resized rank.

  Usage: ``tx = optax.chain(optax.adamw(lr), adalora_budget(...))`` and
  ``tx.update(grads, state, params, grads=grads)``: the transform needs ``params`` and the raw
  gradients (keyword ``grads``, passed through `optax.chain` to every transform). Other
  leaves of the tree pass through untouched.

  Args:
    total_steps: ``T``, the total number of training steps (PEFT ``total_step``).
    init_rank: initial rank of every triplet set (PEFT ``init_r``).
    target_rank: average final rank per target (PEFT ``target_r``).
    tinit: warm-up steps without pruning.
    tfinal: final steps with a fixed rank pattern; ``tinit < T - tfinal``.
    delta_t: masking interval during the budget phase (PEFT ``deltaT``).
    beta1: EMA factor of the sensitivity.
    beta2: EMA factor of the uncertainty.

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `AdaLoraBudgetState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> params = {"k": {"lora_a": jnp.ones((3, 2)), "lora_e": jnp.array([1.0, 2.0]),
    ...                 "lora_b": jnp.ones((2, 4))}}
    >>> tx = optax.chain(optax.sgd(0.1), adalora_budget(10, 2, 1, tinit=0, tfinal=2, delta_t=1))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params, grads=grads)
    >>> int(state[1].budget)
    2

  References:
    Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023.
  """
  check_int("total_steps", total_steps, 1)
  check_int("init_rank", init_rank, 1)
  check_int("target_rank", target_rank, 0)
  check_int("tinit", tinit, 0)
  check_int("tfinal", tfinal, 0)
  check_int("delta_t", delta_t, 1)
  if target_rank > init_rank:
    raise ValueError(f"target_rank={target_rank} must be <= init_rank={init_rank}")
  if tinit >= total_steps - tfinal:
    raise ValueError(
        f"tinit={tinit} must be < total_steps - tfinal = {total_steps} - {tfinal}: "
        "no budgeting phase")
  check_open_unit("beta1", beta1)
  check_open_unit("beta2", beta2)
  end = total_steps - tfinal
  tables: dict[tuple[int, int], np.ndarray] = {}

  def schedule_table(init_budget: int, target_budget: int) -> np.ndarray:
    key = (init_budget, target_budget)
    if key not in tables:
      tables[key] = budget_table(total_steps, init_budget, target_budget, tinit, tfinal)
    return tables[key]

  def triplets(tree):
    prefixes = find_triplets(tree)
    flat = flatten_with_paths(tree)
    for p in prefixes:
      shape = flat[triplet_path(p, "lora_e")].shape
      if shape != (init_rank,):
        raise ValueError(f"lora_e of {p!r} has shape {shape}, expected ({init_rank},) = init_rank")
    return prefixes, flat

  def init_fn(params):
    prefixes, flat = triplets(params)
    zeros = {p: {n: jnp.zeros_like(flat[triplet_path(p, n)]) for n in TRIPLET} for p in prefixes}
    return AdaLoraBudgetState(
        count=jnp.zeros([], jnp.int32),
        exp_avg_ipt=zeros,
        exp_avg_unc=jax.tree.map(jnp.zeros_like, zeros),
        keep={p: jnp.ones((init_rank,), bool) for p in prefixes},
        budget=jnp.asarray(init_rank * len(prefixes), jnp.int32),
    )

  def update_fn(updates, state, params=None, *, grads=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("adalora_budget needs params: tx.update(grads, state, params, grads=grads)")
    if grads is None:
      raise ValueError(
          "adalora_budget needs the raw gradients as the keyword grads: "
          "tx.update(grads, state, params, grads=grads)")
    prefixes, flat_p = triplets(params)
    flat_u, flat_g = flatten_with_paths(updates), flatten_with_paths(grads)
    n = len(prefixes)
    init_budget, target_budget = init_rank * n, target_rank * n
    table = jnp.asarray(schedule_table(init_budget, target_budget))
    t = state.count

    # Sensitivity and uncertainty EMAs (PEFT update_ipt), only while t < T - tfinal.
    track = t < end
    ema_ipt, ema_unc = {}, {}
    for p in prefixes:
      ema_ipt[p], ema_unc[p] = {}, {}
      for name in TRIPLET:
        path = triplet_path(p, name)
        theta = flat_p[path] + flat_u[path]
        ipt = jnp.abs(theta * flat_g[path])
        new_ipt = beta1 * state.exp_avg_ipt[p][name] + (1 - beta1) * ipt
        new_unc = beta2 * state.exp_avg_unc[p][name] + (1 - beta2) * jnp.abs(ipt - new_ipt)
        ema_ipt[p][name] = jnp.where(track, new_ipt, state.exp_avg_ipt[p][name])
        ema_unc[p][name] = jnp.where(track, new_unc, state.exp_avg_unc[p][name])

    # Triplet scores and the global threshold (PEFT mask_to_budget).
    score = {}
    for p in prefixes:
      s = {name: ema_ipt[p][name] * ema_unc[p][name] for name in TRIPLET}
      score[p] = s["lora_e"] + jnp.mean(s["lora_a"], axis=0) + jnp.mean(s["lora_b"], axis=1)
    budget = table[jnp.minimum(t, end)]
    k = init_budget - budget
    ranked = jnp.sort(jnp.concatenate([score[p] for p in prefixes]))
    threshold = jnp.where(k > 0, ranked[jnp.clip(k - 1, 0, init_budget - 1)], -jnp.inf)

    reallocate = ((t > tinit) & (t < end) & (t % delta_t == 0)) | (t == end)
    apply_mask = reallocate | (t > end)
    keep = {p: jnp.where(reallocate, score[p] > threshold, state.keep[p]) for p in prefixes}

    new_updates = {}
    for p in prefixes:
      path = triplet_path(p, "lora_e")
      drop = apply_mask & ~keep[p]
      new_updates[path] = jnp.where(drop, -flat_p[path], flat_u[path]).astype(flat_u[path].dtype)

    # PEFT resets the importance after fixing the final rank pattern.
    reset = t == end
    ema_ipt = jax.tree.map(lambda x: jnp.where(reset, jnp.zeros_like(x), x), ema_ipt)
    ema_unc = jax.tree.map(lambda x: jnp.where(reset, jnp.zeros_like(x), x), ema_unc)
    new_state = AdaLoraBudgetState(
        count=optax.safe_increment(t),
        exp_avg_ipt=ema_ipt,
        exp_avg_unc=ema_unc,
        keep=keep,
        budget=budget.astype(jnp.int32),
    )
    return replace_at(updates, new_updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
