"""Bandits over auxiliary data sources: EXP3-FLAD and UCB1-FLAD (Albalak et al., 2023).

Few-shot learning with auxiliary data (FLAD) treats each auxiliary source as an arm. A
sampler draws a source from ``probs``, the model takes a step on it, and the reward of that
source is the *alignment* of its gradient with the gradient of the (few-shot) target data:

.. math::  r_a = \\cos(\\nabla \\mathcal L_a, \\nabla \\mathcal L_{target})

(`gradient_alignment`). `exp3` (adversarial bandit: exponential weights on
importance-weighted rewards, mixed with uniform exploration) and `ucb1` (optimism: play the
source with the largest upper confidence bound) turn these rewards into the next source.
Only the played source's reward is observed, so each ``update`` takes ``group`` (the source
the sampler drew) and its ``reward``.

What was checked in the authors' code (FLAD repository, ``src/trainer.py``): the reward is
the cosine similarity of the flattened gradients (of a chosen part of the model), optionally
an exponential moving average ``(1 - beta) r̄ + beta r`` (``similarity_beta``, default 1:
the latest reward); EXP3 uses ``E_t = min(1/K, sqrt(ln K / (K t)))`` as the per-arm
exploration and ``E_{t-1}`` as the learning rate; UCB1 plays the argmax of
``r̄_a + sqrt(2 ln t / n_a)`` with all mass on it. Both are written below with
``gamma = K E``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reweight._types import PyTree, ScalarOrSchedule
from reweight.base import current_step, resolve
from reweight.group.policy import MixturePolicy, check_num_groups

Array = jax.Array


def gradient_alignment(group_grads: PyTree, target_grad: PyTree) -> Array:
  """Cosine similarity of each group's flattened gradient pytree with the target gradient.

  .. math::  r_g = \\frac{\\langle g_g, g_T \\rangle}{\\lVert g_g \\rVert\\, \\lVert g_T \\rVert}

  where the inner products and norms run over every leaf of the pytree (the gradients are
  flattened and concatenated). A group (or target) whose gradient is exactly zero gets 0.
  Computed in float32 (or wider) and clipped to ``[-1, 1]``; works under `jax.jit`.

  Args:
    group_grads: a pytree with the structure of ``target_grad`` whose every leaf has an
      extra *leading* axis of size ``G`` (the per-group gradients stacked, e.g. by
      ``jax.vmap(jax.grad(loss))`` over groups, or
      ``jax.tree.map(lambda *g: jnp.stack(g), *list_of_grads)``).
    target_grad: the target-data gradient pytree.

  Returns:
    ``[G]`` float32 cosine similarities.

  Raises:
    ValueError: if the structures differ, a leaf's shape is not ``[G, *target_leaf.shape]``,
      or the leaves disagree on ``G``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.group.flad import gradient_alignment
    >>> target = {"w": jnp.array([1.0, 0.0]), "b": jnp.array(0.0)}
    >>> groups = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]),
    ...           "b": jnp.array([0.0, 0.0, 0.0, 0.0])}
    >>> gradient_alignment(groups, target).tolist()
    [1.0, 0.0, -1.0, 0.0]

  References:
    Albalak, Raffel and Wang, "Improving Few-Shot Generalization by Exploring and Exploiting
    Auxiliary Data", NeurIPS 2023.
  """
  g_leaves, g_def = jax.tree.flatten(group_grads)
  t_leaves, t_def = jax.tree.flatten(target_grad)
  if g_def != t_def:
    raise ValueError(f"group_grads has structure {g_def} but target_grad has {t_def}; "
                     "group_grads must be target_grad's pytree with a leading [G] axis per leaf")
  if not t_leaves:
    raise ValueError("target_grad has no leaves")
  sizes = set()
  for i, (g, t) in enumerate(zip(g_leaves, t_leaves)):
    gs, ts = jnp.shape(g), jnp.shape(t)
    if len(gs) != len(ts) + 1 or gs[1:] != ts:
      raise ValueError(f"leaf {i} of group_grads has shape {gs}, expected [G, *{ts}] (the "
                       "target leaf's shape with a leading group axis)")
    sizes.add(gs[0])
  if len(sizes) != 1:
    raise ValueError(f"the leaves of group_grads disagree on the number of groups: "
                     f"{sorted(sizes)}")
  num_groups = sizes.pop()

  def wide(x):
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))

  dot = jnp.zeros([num_groups], jnp.float32)
  g_sq = jnp.zeros([num_groups], jnp.float32)
  t_sq = jnp.zeros([], jnp.float32)
  for g, t in zip(g_leaves, t_leaves):
    g = wide(g).reshape(num_groups, -1)
    t = wide(t).reshape(-1)
    dot = dot + g @ t
    g_sq = g_sq + jnp.sum(g * g, axis=1)
    t_sq = t_sq + jnp.sum(t * t)
  den = jnp.sqrt(g_sq) * jnp.sqrt(t_sq)
  cos = jnp.where(den > 0, dot / jnp.where(den > 0, den, 1.0), 0.0)
  return jnp.clip(cos, -1.0, 1.0).astype(jnp.float32)


def _check_group_reward(group, reward, k: int, name: str):
  if group is None or reward is None:
    raise ValueError(f"{name}'s update needs group= (the source that was played, an int in "
                     f"[0, {k})) and reward= (its reward, a scalar)")
  group = jnp.asarray(group)
  reward = jnp.asarray(reward, jnp.float32)
  if group.shape != () or not jnp.issubdtype(group.dtype, jnp.integer):
    raise ValueError(f"group must be a scalar int source id, got shape {group.shape} and dtype "
                     f"{group.dtype}")
  if reward.shape != ():
    raise ValueError(f"reward must be a scalar, got shape {reward.shape}")
  if not isinstance(group, jax.core.Tracer) and not 0 <= int(group) < k:
    raise ValueError(f"group={int(group)} is outside [0, num_groups={k})")
  # Under jit the id cannot be checked: an id outside the range (or a non-finite reward)
  # leaves the state unchanged.
  ok = (group >= 0) & (group < k) & jnp.isfinite(reward)
  return jnp.clip(group, 0, k - 1), reward, ok


def _check_smoothing(reward_smoothing, allow_none: bool):
  if reward_smoothing is None and allow_none:
    return
  if reward_smoothing is None or not 0.0 < reward_smoothing <= 1.0:
    raise ValueError(f"reward_smoothing={reward_smoothing!r} must be in (0, 1]"
                     + (" or None (running mean)" if allow_none else ""))


def _smooth(old, reward, played_before, beta):
  """The first reward of an arm sets its estimate; later ones are averaged in."""
  return jnp.where(played_before, (1.0 - beta) * old + beta * reward, reward)


class Exp3State(NamedTuple):
  """EXP3's sampling distribution and its statistics.

  Attributes:
    probs: ``[K]`` the distribution the next source is drawn from.
    reward_sums: ``[K]`` cumulative importance-weighted reward estimates ``R̂``.
    rewards: ``[K]`` the (smoothed) last reward of each source (0 if never played).
    plays: ``[K]`` int32, how often each source was played.
    gamma: the exploration rate ``probs`` was built with.
    count: int32, the number of updates.
  """

  probs: Array
  reward_sums: Array
  rewards: Array
  plays: Array
  gamma: Array
  count: Array


def exp3(num_groups: int, *, gamma: ScalarOrSchedule | None = None,
         reward_smoothing: float = 1.0) -> MixturePolicy:
  """EXP3(-FLAD): exponential weights on importance-weighted rewards, plus uniform exploration.

  ``update(state, *, group, reward, step=None)``: the sampler drew source ``a = group`` from
  ``state.probs`` and observed ``reward`` (e.g. `gradient_alignment`). Then

  .. math::

    \\bar r_a \\leftarrow (1-\\beta)\\bar r_a + \\beta r, \\qquad
    \\hat R_a \\leftarrow \\hat R_a + \\bar r_a / p_a, \\qquad
    p \\leftarrow (1-\\gamma_t)\\, \\mathrm{softmax}\\big(\\tfrac{\\gamma_{t-1}}{K}
    \\hat R\\big) + \\tfrac{\\gamma_t}{K}

  (the first reward of a source sets ``r̄_a``). ``gamma_{t-1}`` is the exploration rate of
  the distribution ``a`` was drawn from (kept in the state), so a constant ``gamma`` is
  Auer et al.'s EXP3 (learning rate ``gamma / K``), and the default schedule is FLAD's
  ``gamma_t = K E_t = min(1, sqrt(K ln K / t))``. Here ``t`` is the number of updates so far
  (or ``step`` when given); the authors' code counts ``t = 10 x optimizer steps x gradient
  accumulation + 1`` (pass ``gamma=`` a schedule to reproduce that). A non-finite reward
  (or, under jit, an id outside the range) leaves the state unchanged. Rewards need not lie
  in ``[0, 1]``: FLAD feeds cosine similarities in ``[-1, 1]`` as they are.

  Args:
    num_groups: ``K`` >= 1 sources.
    gamma: the uniform-exploration weight in ``(0, 1]``: a float, a schedule ``t ->
      gamma``, or None for ``min(1, sqrt(K ln K / max(t, 1)))``.
    reward_smoothing: ``beta`` in ``(0, 1]``; 1 uses each reward as it is (FLAD's default).

  Returns:
    A `MixturePolicy` whose state is an `Exp3State` (initially uniform).

  Examples:
    >>> import math
    >>> from reweight.group.flad import exp3
    >>> policy = exp3(2, gamma=0.5)
    >>> state = policy.update(policy.init(), group=0, reward=1.0)
    >>> state.reward_sums.tolist()          # 1 / 0.5
    [2.0, 0.0]
    >>> p0 = 0.5 * 1 / (1 + math.exp(-0.5)) + 0.25   # (1 - g) softmax(g/K * R) + g/K
    >>> round(state.probs[0].item(), 5) == round(p0, 5)
    True

  References:
    Albalak, Raffel and Wang, "Improving Few-Shot Generalization by Exploring and Exploiting
    Auxiliary Data", NeurIPS 2023. Auer, Cesa-Bianchi, Freund and Schapire, "The
    Nonstochastic Multiarmed Bandit Problem", SIAM J. Comput. 2002.
  """
  k = check_num_groups(num_groups)
  _check_smoothing(reward_smoothing, allow_none=False)
  if gamma is None:
    log_k = float(np.log(k))

    def gamma(t):
      return jnp.minimum(1.0, jnp.sqrt(k * log_k / jnp.maximum(t, 1).astype(jnp.float32)))
  elif not callable(gamma) and not 0.0 < gamma <= 1.0:
    raise ValueError(f"gamma={gamma!r} must be in (0, 1] (or a schedule, or None for FLAD's "
                     "min(1, sqrt(K ln K / t)))")

  def init():
    g0 = jnp.asarray(resolve(gamma, jnp.zeros([], jnp.int32), "gamma"), jnp.float32)
    return Exp3State(jnp.full([k], 1.0 / k, jnp.float32), jnp.zeros([k], jnp.float32),
                     jnp.zeros([k], jnp.float32), jnp.zeros([k], jnp.int32), g0,
                     jnp.zeros([], jnp.int32))

  def update(state, *, group=None, reward=None, step=None, **unused):
    del unused
    a, r, ok = _check_group_reward(group, reward, k, "exp3")
    smoothed = _smooth(state.rewards[a], r, state.plays[a] > 0, reward_smoothing)
    rewards = state.rewards.at[a].set(smoothed)
    sums = state.reward_sums.at[a].add(smoothed / state.probs[a])
    g = jnp.asarray(resolve(gamma, current_step(state.count + 1, step), "gamma"), jnp.float32)
    probs = (1.0 - g) * jax.nn.softmax(state.gamma / k * sums) + g / k
    new = Exp3State(probs, sums, rewards, state.plays.at[a].add(1), g, state.count + 1)
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)

  return MixturePolicy(init, update)


class Ucb1State(NamedTuple):
  """UCB1's choice and its statistics.

  Attributes:
    probs: ``[K]`` one-hot on the source to play next.
    rewards: ``[K]`` each source's reward estimate ``r̄`` (0 if never played).
    plays: ``[K]`` int32, how often each source was played.
    count: int32, the number of updates.
  """

  probs: Array
  rewards: Array
  plays: Array
  count: Array


def ucb1(num_groups: int, *, exploration: float = 1.0,
         reward_smoothing: float | None = None) -> MixturePolicy:
  """UCB1(-FLAD): all mass on the source with the largest upper confidence bound.

  ``update(state, *, group, reward, step=None)`` folds the played source's reward into its
  estimate (the running mean, or with ``reward_smoothing=beta`` the moving average
  ``(1 - beta) r̄ + beta r``; the first reward sets it), counts the play, and puts all of
  ``probs`` on

  .. math::  \\arg\\max_a\\; \\bar r_a + c \\sqrt{2 \\ln t / n_a}, \\qquad t = \\sum_a n_a

  with sources never played first (lowest id first), ties to the lowest id. So the initial
  state plays source 0, then 1, ..., then the bound takes over. ``step`` is not used. A
  non-finite reward (or, under jit, an id outside the range) leaves the state unchanged.
  This is the hard (one-hot) rule of the paper and its code; a sampler that needs every
  source to keep some mass can blend ``probs`` with uniform itself.

  FLAD's code plays every source once before training (``weight_initialization_samples``)
  and uses ``beta = 1`` by default (the latest alignment, not the mean); pass
  ``reward_smoothing=1.0`` for that. ``None`` is Auer et al.'s UCB1 (empirical mean).

  Args:
    num_groups: ``K`` >= 1 sources.
    exploration: ``c`` >= 0, the weight of the confidence term (1 in UCB1).
    reward_smoothing: None (running mean) or ``beta`` in ``(0, 1]``.

  Returns:
    A `MixturePolicy` whose state is a `Ucb1State`.

  Examples:
    >>> from reweight.group.flad import ucb1
    >>> policy = ucb1(2)
    >>> state = policy.init()
    >>> state.probs.tolist()                 # nothing played yet: source 0 first
    [1.0, 0.0]
    >>> state = policy.update(state, group=0, reward=0.9)
    >>> state.probs.tolist()                 # then the unplayed source 1
    [0.0, 1.0]
    >>> state = policy.update(state, group=1, reward=0.1)
    >>> state.probs.tolist()                 # both bounds have sqrt(2 ln 2): the best mean
    [1.0, 0.0]

  References:
    Albalak, Raffel and Wang, "Improving Few-Shot Generalization by Exploring and Exploiting
    Auxiliary Data", NeurIPS 2023. Auer, Cesa-Bianchi and Fischer, "Finite-time Analysis of
    the Multiarmed Bandit Problem", Machine Learning 2002.
  """
  k = check_num_groups(num_groups)
  _check_smoothing(reward_smoothing, allow_none=True)
  if not exploration >= 0:
    raise ValueError(f"exploration={exploration!r} must be >= 0")

  def choose(rewards, plays):
    n = plays.astype(jnp.float32)
    t = jnp.sum(n)
    bonus = exploration * jnp.sqrt(2.0 * jnp.log(jnp.maximum(t, 1.0)) / jnp.maximum(n, 1.0))
    index = jnp.where(plays > 0, rewards + bonus, jnp.inf)
    return jax.nn.one_hot(jnp.argmax(index), k, dtype=jnp.float32)

  def init():
    rewards, plays = jnp.zeros([k], jnp.float32), jnp.zeros([k], jnp.int32)
    return Ucb1State(choose(rewards, plays), rewards, plays, jnp.zeros([], jnp.int32))

  def update(state, *, group=None, reward=None, step=None, **unused):
    del step, unused
    a, r, ok = _check_group_reward(group, reward, k, "ucb1")
    n = state.plays[a]
    beta = 1.0 / (n + 1).astype(jnp.float32) if reward_smoothing is None else reward_smoothing
    rewards = state.rewards.at[a].set(_smooth(state.rewards[a], r, n > 0, beta))
    plays = state.plays.at[a].add(1)
    new = Ucb1State(choose(rewards, plays), rewards, plays, state.count + 1)
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)

  return MixturePolicy(init, update)
