"""GDRO for reasoning RL: difficulty groups, Prompt-GDRO sampling and Rollout-GDRO budgets.

Three pure pieces that run around a GRPO step (`reweight.grpo.grpo`):

1. `difficulty_groups` — an online classifier: an EMA table of each prompt's pass rate
   (indexed by prompt id) puts every prompt in a pass@k group, ``round(k * p̂)`` expected
   passes out of ``k`` (group 0 the hardest).
2. `prompt_gdro` — a `MixturePolicy` over those groups: multiplicative weights on an
   EMA-debiased estimate of each group's hardness; its ``probs`` drive
   `reweight.data.online_mixture_sampler` (or `reweight.group.probs_of`).
3. `rollout_allocation` — how many rollouts each group gets: a shadow-price (greedy
   marginal-value) allocation at a fixed mean budget, exact and integer; by default the
   integer form of the square-root rule ``n_g ∝ sqrt(w_g p_g (1 - p_g))``.

What ALGORITHMS.md (the paper's abstract) fixes: prompts are put in pass@k groups by an
online classifier; Prompt-GDRO samples groups with an EMA-debiased multiplicative-weights
bandit that up-weights persistently hard groups *without frequency bias*; Rollout-GDRO
moves rollouts between groups with a shadow-price controller at a fixed mean budget
(compute-neutral) to reduce gradient variance on hard groups, with a square-root optimal
allocation from a variance proxy (the paper's abstract; its classifier averages an any-of-k
success indicator over a window, with hysteresis between bins). Everything else here — the
signal (the group's mean failure rate ``1 - reward`` or any per-group loss), the per-group
bias correction, the neutral value for unobserved groups, the exploration floor, the
rollout objectives and the exact greedy rule, the table's first-observation rule, the
prior of unseen prompts, an EMA instead of a window and no hysteresis — is our choice,
documented on each function.

References:
  Panaganti, Liang, Yu, Mi and Yu, "Group Distributionally Robust Optimization-Driven
  Reinforcement Learning for LLM Reasoning", arXiv:2601.19280, 2026. Shao et al.,
  "DeepSeekMath", 2024 (GRPO). Sagawa et al., "Distributionally Robust Neural Networks for
  Group Shifts", ICLR 2020.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reweight._checks import check_choice, check_int, is_traced
from reweight._types import ScalarOrSchedule
from reweight.base import check_hyperparameter, current_step, resolve
from reweight.group.policy import MixturePolicy, check_num_groups

Array = jax.Array


def _check_unit(name: str, value, *, upper_open: bool = True) -> float:
  ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
  if not np.isfinite(value) or not ok:
    raise ValueError(f"{name}={value!r} must be in [0, {'1)' if upper_open else '1]'}")
  return float(value)


def _check_ids(ids, n: int, what: str) -> Array:
  ids = jnp.asarray(ids)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"{what} must hold integer ids, got dtype {ids.dtype}")
  if not is_traced(ids) and ids.size:
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= n:
      raise ValueError(f"{what} span [{lo}, {hi}], outside [0, {n})")
  return ids


# --------------------------------------------------------------------------- Prompt-GDRO


class PromptGDROState(NamedTuple):
  """State of `prompt_gdro`.

  Attributes:
    probs: ``[G]`` the sampling distribution over groups (what a sampler reads).
    log_weights: ``[G]`` the multiplicative weights, normalized (``log softmax``).
    ema: ``[G]`` the biased EMA ``m_g`` of each group's hardness.
    seen: ``[G]`` int32, how many updates observed each group (``n_g``).
    count: int32, the number of updates.
  """

  probs: Array
  log_weights: Array
  ema: Array
  seen: Array
  count: Array


def prompt_gdro(num_groups: int, step_size: ScalarOrSchedule = 0.1, *, ema: float = 0.9,
                exploration: float = 0.0) -> MixturePolicy:
  """Prompt-GDRO: multiplicative weights over difficulty groups on debiased EMA hardness.

  ``update(state, *, group_losses, group_counts=None, step=None)`` with ``group_losses``
  ``[G]`` this step's mean hardness of each group (e.g. ``1 - mean reward`` of its
  rollouts, or its mean GRPO loss) and ``group_counts`` ``[G]`` how many samples it was
  computed from (0: not observed this step; None: every group observed). Or
  ``update(state, *, losses, groups, mask=None)`` with per-sample values and group ids,
  which it averages per group. Then, for every **observed** group,

  .. math::

    m_g \\leftarrow \\beta m_g + (1 - \\beta) \\ell_g, \\quad n_g \\leftarrow n_g + 1, \\quad
    \\hat m_g = \\frac{m_g}{1 - \\beta^{n_g}}

  (Adam's bias correction, per group: the estimate of a group seen once is its value, not
  ``(1 - beta)`` of it), unobserved-so-far groups (``n_g = 0``) take the mean ``hat m`` of
  the groups seen (neutral: a shift common to every group leaves the weights unchanged),
  and **every** group's weight moves, each step, by its estimate:

  .. math::

    \\log w \\leftarrow \\log\\mathrm{softmax}(\\log w + \\eta_t \\hat m), \\qquad
    p = (1 - \\gamma)\\, w + \\gamma / G.

  "Without frequency bias": the weight of a group grows with its *estimated* hardness once
  per step, whether it was drawn once or a hundred times (plain multiplicative weights on
  the sampled losses would add ``eta l`` once per draw, so groups drawn often would run
  away). Persistently hard groups (high ``hat m`` over many steps) accumulate weight.
  ``gamma`` (``exploration``) keeps every group drawn now and then, so its estimate stays
  fresh. Non-finite group losses count as unobserved.

  Args:
    num_groups: G >= 1.
    step_size: ``eta >= 0``, a float or a schedule ``step -> eta`` (the step is ``step=``
      or the update count).
    ema: ``beta`` in ``[0, 1)`` (0: the latest value).
    exploration: ``gamma`` in ``[0, 1]``, the uniform share of ``probs``.

  Returns:
    A `MixturePolicy` whose state is a `PromptGDROState` (initially uniform).

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> policy = reweight.group.prompt_gdro(2, step_size=1.0, ema=0.5)
    >>> state = policy.update(policy.init(), group_losses=jnp.array([0.0, 1.0]))
    >>> [round(p, 4) for p in state.probs.tolist()]   # softmax([0, 1]): bias-corrected
    [0.2689, 0.7311]
    >>> state.ema.tolist()                             # the biased EMA (1 - 0.5) * l
    [0.0, 0.5]

  References:
    Panaganti et al., "Group Distributionally Robust Optimization-Driven Reinforcement
    Learning for LLM Reasoning", 2026. Sagawa et al., ICLR 2020 (online Group DRO).
  """
  g = check_num_groups(num_groups)
  check_hyperparameter(step_size, "step_size")
  beta = _check_unit("ema", ema)
  gamma = _check_unit("exploration", exploration, upper_open=False)

  def init():
    lw = jnp.full([g], -np.log(g), jnp.float32)
    return PromptGDROState(jnp.full([g], 1.0 / g, jnp.float32), lw,
                           jnp.zeros([g], jnp.float32), jnp.zeros([g], jnp.int32),
                           jnp.zeros([], jnp.int32))

  def update(state, *, group_losses=None, group_counts=None, losses=None, groups=None,
             mask=None, step=None, **unused):
    del unused
    if group_losses is None:
      if losses is None or groups is None:
        raise ValueError("prompt_gdro's update needs group_losses= ([G] per-group hardness) "
                         "or losses= with groups= (per-sample values and group ids)")
      losses = jnp.asarray(losses, jnp.float32)
      groups = _check_ids(groups, g, "groups")
      if groups.shape != losses.shape:
        raise ValueError(f"groups has shape {groups.shape} but losses {losses.shape}")
      ok = jnp.isfinite(losses) & (groups >= 0) & (groups < g)
      if mask is not None:
        ok = ok & jnp.asarray(mask, bool)
      ids = jnp.where(ok, groups, 0).reshape(-1)
      okf = ok.reshape(-1)
      group_counts = jax.ops.segment_sum(okf.astype(jnp.float32), ids, g)
      sums = jax.ops.segment_sum(jnp.where(okf, losses.reshape(-1), 0.0), ids, g)
      group_losses = sums / jnp.maximum(group_counts, 1.0)
    group_losses = jnp.asarray(group_losses, jnp.float32)
    if group_losses.shape != (g,):
      raise ValueError(f"group_losses has shape {group_losses.shape}, expected ({g},)")
    if group_counts is None:
      observed = jnp.ones([g], bool)
    else:
      group_counts = jnp.asarray(group_counts)
      if group_counts.shape != (g,):
        raise ValueError(f"group_counts has shape {group_counts.shape}, expected ({g},)")
      observed = group_counts > 0
    observed = observed & jnp.isfinite(group_losses)
    x = jnp.where(observed, group_losses, 0.0)
    m = jnp.where(observed, beta * state.ema + (1.0 - beta) * x, state.ema)
    seen = state.seen + observed.astype(jnp.int32)
    corr = 1.0 - jnp.power(jnp.float32(beta), seen.astype(jnp.float32))
    m_hat = m / jnp.where(seen > 0, corr, 1.0)
    any_seen = seen > 0
    neutral = jnp.sum(jnp.where(any_seen, m_hat, 0.0)) / jnp.maximum(jnp.sum(any_seen), 1)
    m_hat = jnp.where(any_seen, m_hat, neutral)
    eta = jnp.asarray(resolve(step_size, current_step(state.count, step), "step_size"),
                      jnp.float32)
    lw = jax.nn.log_softmax(state.log_weights + eta * m_hat)
    probs = (1.0 - gamma) * jnp.exp(lw) + gamma / g
    return PromptGDROState(probs, lw, m, seen, state.count + 1)

  return MixturePolicy(init, update)


# -------------------------------------------------------------------------- Rollout-GDRO


class RolloutAllocation(NamedTuple):
  """Result of `rollout_allocation`.

  Attributes:
    rollouts: ``[G]`` int32 rollouts per group; ``mean == mean_budget`` exactly.
    shadow_price: the marginal value of the last rollout given out (the price of one unit
      of budget: every group's next rollout is worth at most this, every rollout given
      beyond ``min_rollouts`` at least this; ``inf`` when ``mean_budget == min_rollouts``).
    marginal_value: ``[G]`` what one more rollout would add in each group.
  """

  rollouts: Array
  shadow_price: Array
  marginal_value: Array


def _informative_gain(p, n):
  # f(n) = 1 - p^n - (1-p)^n: the chance that n rollouts are not all equal (non-zero
  # GRPO advantages); f(n+1) - f(n) = p^n (1 - p) + (1 - p)^n p, decreasing in n.
  return jnp.power(p, n) * (1.0 - p) + jnp.power(1.0 - p, n) * p


def _variance_gain(p, n):
  # f(n) = -p (1 - p) / n: minus the variance of the group's mean reward.
  return p * (1.0 - p) / (n * (n + 1.0))


_GAINS: dict[str, Callable[[Array, Array], Array]] = {
    "informative": _informative_gain, "variance": _variance_gain}


def rollout_allocation(group_stats: Array, mean_budget: int, *, weights: Array | None = None,
                       min_rollouts: int = 1, max_rollouts: int | None = None,
                       objective: Literal["variance", "informative"] = "variance"
                       ) -> RolloutAllocation:
  """Rollout-GDRO: rollouts per group at a fixed mean budget, by shadow price.

  With ``p_g`` the group's pass rate (``group_stats``), ``w_g`` its weight and a concave
  value ``f`` of the number of rollouts, solve the compute-neutral problem

  .. math::

    \\max_{n \\in \\mathbb Z^G} \\sum_g w_g f(p_g, n_g) \\quad\\text{s.t.}\\quad
    \\tfrac{1}{G}\\sum_g n_g = B,\\ \\ n_{\\min} \\le n_g \\le n_{\\max},

  exactly, by the greedy marginal-value rule: start every group at ``n_min`` and give the
  ``G (B - n_min)`` remaining rollouts one at a time to the group whose next rollout is
  worth most, ``w_g [f(p_g, n_g + 1) - f(p_g, n_g)]`` (ties: to the group with the fewest
  rollouts, then the lowest id, so groups worth nothing share what is left evenly). For a
  separable concave objective this greedy is optimal, and it is the Lagrangian (shadow
  price) solution: with ``lambda`` the value of the last rollout given out, every group
  holds exactly the rollouts whose marginal value is ``>= lambda``; a group gains rollouts
  when its marginal value rises above the price (its rewards got more uncertain, or its
  weight rose) and loses them to the others otherwise, while the total ``G B`` never
  changes. Objectives ``f``:

  * ``"variance"`` (default): ``-p (1 - p) / n``, minus the variance of the group's mean
    reward (the variance proxy of its GRPO gradient). The continuous optimum is the
    square-root rule ``n_g ∝ sqrt(w_g p_g (1 - p_g))``; the greedy gives its exact integer
    version, so rollouts move toward high-uncertainty groups (``p`` near 1/2) and away from
    solved (``p = 1``) or hopeless (``p = 0``) ones.
  * ``"informative"``: ``1 - p^n - (1 - p)^n``, the chance that the group's ``n`` rollouts
    are not all right or all wrong, i.e. that GRPO's advantages are not all zero.

  The paper (abstract: a shadow-price controller, a variance-proxy analysis motivating a
  square-root allocation, discrete arms ``n_min ... n_max``, fixed mean budget) is matched
  in those terms; the exact solve at every call (instead of a dual-ascent step on the price
  across steps) is our choice, so the mean is the budget at every step, not on average.

  ``weights`` put the groups' importance in (e.g. `prompt_gdro`'s ``probs``, or the
  number of prompts of each group drawn this step). Runs under `jax.jit` (``G``,
  ``mean_budget``, ``min_rollouts``, ``max_rollouts`` static); cost ``O(G^2 B)``.

  Args:
    group_stats: ``[G]`` per-group pass rates in ``[0, 1]`` (e.g. the mean reward of the
      group's prompts over recent steps).
    mean_budget: ``B``, an integer >= 1: the mean number of rollouts per group.
    weights: ``[G]`` non-negative group weights (default 1).
    min_rollouts: ``n_min`` in ``[0, B]`` (1; use 2 so every group can have a non-zero
      GRPO advantage).
    max_rollouts: ``n_max >= B`` (default: no cap).
    objective: ``"variance"`` or ``"informative"``.

  Returns:
    A `RolloutAllocation`: int32 ``rollouts`` (sum ``G B``), the ``shadow_price`` and
    each group's ``marginal_value``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.group import rollout_allocation
    >>> alloc = rollout_allocation(jnp.array([0.05, 0.5, 0.95]), 4, min_rollouts=2)
    >>> alloc.rollouts.tolist()     # the uncertain group gets the moved rollouts; mean 4
    [3, 6, 3]
    >>> weighted = rollout_allocation(jnp.array([0.05, 0.5, 0.95]), 4, min_rollouts=2,
    ...                               weights=jnp.array([8.0, 1.0, 1.0]))
    >>> weighted.rollouts.tolist()  # up-weight the hard group (e.g. by prompt-GDRO)
    [6, 4, 2]

  References:
    Panaganti et al., "Group Distributionally Robust Optimization-Driven Reinforcement
    Learning for LLM Reasoning", 2026. Fox, "Discrete optimization via marginal analysis",
    Management Science 1966 (the greedy rule).
  """
  budget = check_int("mean_budget", mean_budget, 1, whole_floats=True)
  n_min = check_int("min_rollouts", min_rollouts, 0, whole_floats=True)
  if n_min > budget:
    raise ValueError(f"min_rollouts={min_rollouts!r} exceeds mean_budget={mean_budget!r}")
  if max_rollouts is not None:
    n_max = check_int("max_rollouts", max_rollouts, 1, whole_floats=True)
    if n_max < budget:
      raise ValueError(f"max_rollouts={max_rollouts!r} is below mean_budget={mean_budget!r}")
  else:
    n_max = None
  gain = _GAINS[check_choice("objective", objective, tuple(_GAINS))]
  if jnp.ndim(group_stats) != 1 or jnp.size(group_stats) == 0:
    raise ValueError(f"group_stats must be [G] per-group pass rates, got shape "
                     f"{jnp.shape(group_stats)}")
  if not is_traced(group_stats):
    pn = np.asarray(group_stats, np.float64)
    if not np.all(np.isfinite(pn)) or pn.min() < 0 or pn.max() > 1:
      raise ValueError(f"group_stats={pn.round(6).tolist()} must be pass rates in [0, 1]")
  g = jnp.shape(group_stats)[0]
  if weights is None:
    w = jnp.ones([g], jnp.float32)
  else:
    if jnp.shape(weights) != (g,):
      raise ValueError(f"weights has shape {jnp.shape(weights)}, expected ({g},)")
    w = jnp.asarray(weights, jnp.float32)
    if not is_traced(weights):
      wn = np.asarray(weights, np.float64)
      if not np.all(np.isfinite(wn)) or wn.min() < 0:
        raise ValueError(f"weights={wn.round(6).tolist()} must be finite and non-negative")
  p = jnp.asarray(group_stats, jnp.float32)

  def value(n):
    v = w * gain(p, n.astype(jnp.float32))
    if n_max is not None:
      v = jnp.where(n >= n_max, -jnp.inf, v)
    return v

  def give(_, carry):
    n, _ = carry
    v = value(n)
    top = v == jnp.max(v)  # ties: the fewest rollouts, then the lowest id
    best = jnp.argmin(jnp.where(top, n, jnp.iinfo(jnp.int32).max))
    return n.at[best].add(1), v[best]

  extra = g * (budget - n_min)
  n0 = jnp.full([g], n_min, jnp.int32)
  if extra:
    n, price = jax.lax.fori_loop(0, extra, give, (n0, jnp.float32(jnp.inf)))
  else:
    n, price = n0, jnp.float32(jnp.inf)
  return RolloutAllocation(n, price, value(n))


# ---------------------------------------------------------------- difficulty classifier


class DifficultyState(NamedTuple):
  """State of `difficulty_groups`.

  Attributes:
    pass_rate: ``[P]`` the EMA of each prompt's pass rate (``prior`` until seen).
    seen: ``[P]`` int32, how many updates observed each prompt.
    count: int32, the number of updates.
  """

  pass_rate: Array
  seen: Array
  count: Array


class DifficultyClassifier(NamedTuple):
  """Pure functions of `difficulty_groups`.

  Attributes:
    init: ``init() -> DifficultyState``.
    update: ``update(state, *, prompt_ids, rewards, mask=None) -> state``.
    assign: ``assign(state, prompt_ids) -> groups`` (int32, ``prompt_ids``' shape).
    num_groups: ``k + 1``.
  """

  init: Callable[[], DifficultyState]
  update: Callable[..., DifficultyState]
  assign: Callable[[DifficultyState, Array], Array]
  num_groups: int


def difficulty_groups(num_prompts: int, k: int = 8, *, ema: float = 0.5,
                      prior: float = 0.5) -> DifficultyClassifier:
  """An online pass@k difficulty classifier: an EMA table of pass rates, indexed by prompt.

  ``update(state, *, prompt_ids, rewards, mask=None)``: ``prompt_ids`` int ``[B]`` (a
  prompt may repeat, one entry per rollout) and ``rewards`` ``[B]`` in ``[0, 1]``
  (1 = correct), or ``prompt_ids [B]`` with ``rewards [B, n]`` (``n`` rollouts each). Each
  prompt observed this step gets its batch pass rate ``x`` (mean over its valid rollouts),
  and

  .. math::

    \\hat p \\leftarrow \\begin{cases} x & \\text{first observation} \\\\
      \\beta \\hat p + (1 - \\beta) x & \\text{otherwise} \\end{cases}, \\qquad
    \\text{group} = \\min(k, \\lfloor k \\hat p + 1/2 \\rfloor)

  so group ``j`` holds the prompts expected to pass ``j`` of ``k`` attempts (rounded):
  group 0 the hardest, group ``k`` the solved ones; ``k + 1`` groups. A prompt never seen
  has ``hat p = prior``. ``assign(state, prompt_ids)`` gives the groups. Prompt ids
  outside ``[0, num_prompts)`` raise when concrete; under `jax.jit` they are ignored by
  ``update`` and assigned group ``round(k prior)``.

  Args:
    num_prompts: P, the size of the prompt set (the table has one float per prompt).
    k: the pass@k resolution, >= 1 (``k + 1`` groups).
    ema: ``beta`` in ``[0, 1)``, the weight of the past (0: the latest batch only).
    prior: the pass rate of unseen prompts, in ``[0, 1]``.

  Returns:
    A `DifficultyClassifier` (``init``, ``update``, ``assign``, ``num_groups``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.group import difficulty_groups
    >>> clf = difficulty_groups(3, k=4, ema=0.5)
    >>> state = clf.update(clf.init(), prompt_ids=jnp.array([0, 1]),
    ...                    rewards=jnp.array([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    >>> state.pass_rate.tolist()
    [0.25, 1.0, 0.5]
    >>> clf.assign(state, jnp.array([0, 1, 2])).tolist()
    [1, 4, 2]

  References:
    Panaganti et al., "Group Distributionally Robust Optimization-Driven Reinforcement
    Learning for LLM Reasoning", 2026.
  """
  num_p = check_int("num_prompts", num_prompts, 1)
  kk = check_int("k", k, 1)
  beta = _check_unit("ema", ema)
  prior_ = _check_unit("prior", prior, upper_open=False)

  def init():
    return DifficultyState(jnp.full([num_p], prior_, jnp.float32),
                           jnp.zeros([num_p], jnp.int32), jnp.zeros([], jnp.int32))

  def update(state, *, prompt_ids=None, rewards=None, mask=None, **unused):
    del unused
    if prompt_ids is None or rewards is None:
      raise ValueError("difficulty_groups' update needs prompt_ids= and rewards=")
    ids = _check_ids(prompt_ids, num_p, "prompt_ids")
    r = jnp.asarray(rewards, jnp.float32)
    if ids.ndim != 1 or r.shape[:1] != ids.shape or r.ndim not in (1, 2):
      raise ValueError(f"prompt_ids must be [B] and rewards [B] or [B, n]; got shapes "
                       f"{ids.shape} and {r.shape}")
    ok = jnp.isfinite(r)
    if mask is not None:
      mk = jnp.asarray(mask, bool)
      if mk.shape != r.shape:
        raise ValueError(f"mask has shape {mk.shape} but rewards {r.shape}")
      ok = ok & mk
    if r.ndim == 1:
      r, ok = r[:, None], ok[:, None]
    inside = (ids >= 0) & (ids < num_p)
    ok = ok & inside[:, None]
    safe = jnp.where(inside, ids, 0)
    hits = jax.ops.segment_sum(jnp.sum(jnp.where(ok, r, 0.0), axis=1), safe, num_p)
    tries = jax.ops.segment_sum(jnp.sum(ok, axis=1).astype(jnp.float32), safe, num_p)
    observed = tries > 0
    x = hits / jnp.maximum(tries, 1.0)
    new = jnp.where(state.seen > 0, beta * state.pass_rate + (1.0 - beta) * x, x)
    rate = jnp.where(observed, new, state.pass_rate)
    return DifficultyState(rate, state.seen + observed.astype(jnp.int32), state.count + 1)

  def assign(state, prompt_ids):
    ids = _check_ids(prompt_ids, num_p, "prompt_ids")
    inside = (ids >= 0) & (ids < num_p)
    p = jnp.where(inside, state.pass_rate[jnp.where(inside, ids, 0)], prior_)
    return jnp.minimum(jnp.floor(kk * p + 0.5), kk).astype(jnp.int32)

  return DifficultyClassifier(init, update, assign, kk + 1)


__all__ = [
    "DifficultyClassifier", "DifficultyState", "PromptGDROState", "RolloutAllocation",
    "difficulty_groups", "prompt_gdro", "rollout_allocation",
]
