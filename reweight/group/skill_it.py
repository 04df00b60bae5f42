"""Skill-it online data selection (Chen et al., 2023).

Skill-it mixes ``k`` skills (groups) with a skills graph ``A`` (``[k, k]``, ``A_ij`` how much
training on skill ``i`` lowers the loss of skill ``j``: an edge ``i -> j`` when ``i`` is a
prerequisite of ``j``; the paper uses 1 on the diagonal and 0.5 on the edges). After each
round it evaluates every skill and draws the next round from

.. math::  p_{t+1, i} \\propto \\exp\\Big(\\eta \\sum_j A_{ij} \\sum_{s=t-w+1}^{t} L_{s,j}\\Big)

a skill gets more data when its own validation loss, or that of the skills it helps, stayed
high over the last ``w`` rounds. This is a softmax of the windowed losses, not a product of
updates: old rounds drop out of the window.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reweight._checks import check_int
from reweight._types import ScalarOrSchedule
from reweight.base import check_hyperparameter, current_step, resolve
from reweight.group.policy import MixturePolicy

Array = jax.Array


class SkillItState(NamedTuple):
  """The sampling distribution, the last ``window`` rounds of eval losses, a round count.

  Attributes:
    probs: ``[k]`` the distribution the next round is drawn from.
    losses: ``[window, k]`` ring buffer of per-skill eval losses; round ``r`` is in slot
      ``r % window`` (slots not yet written are zero).
    count: int32, the number of rounds recorded.
  """

  probs: Array
  losses: Array
  count: Array


def check_graph(graph) -> np.ndarray:
  """Host-side check of a skills graph: square, 2-D, finite, non-negative entries."""
  a = np.asarray(graph, np.float64)
  if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
    raise ValueError(f"graph must be a square 2-D [k, k] skills graph, got shape {a.shape}")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"graph={a.tolist()} must hold finite entries")
  if a.min() < 0:
    raise ValueError(f"graph={a.tolist()} has a negative entry ({a.min():.6g}); the entries "
                     "are non-negative skill affinities (1 on the diagonal, 0.5 on edges)")
  return a


def skill_it(graph, step_size: ScalarOrSchedule = 0.5, window: int = 3) -> MixturePolicy:
  """Skill-it: ``p = softmax(eta * A @ sum of the last `window` rounds' eval losses)``.

  ``update(state, *, eval_losses, step=None)`` records this round's per-skill validation
  losses (``[k]``) in the ring buffer and recomputes

  .. math::  p = \\mathrm{softmax}\\big(\\eta\\, A \\textstyle\\sum_{s} L_s\\big)

  over the (at most ``window``) recorded rounds. A round whose ``eval_losses`` hold a
  non-finite value is skipped: the state is returned unchanged. Other keyword inputs are
  ignored.

  The initial distribution is uniform. (The authors' code starts from
  ``softmax(eta * A @ 1)``, which is uniform whenever every row of ``A`` has the same sum,
  e.g. for the identity graph.) Their code builds ``A`` from a 0/1 adjacency matrix by
  setting the off-diagonal ones to 0.5; pass the graph here already weighted.

  Args:
    graph: ``[k, k]`` non-negative skills graph ``A``; ``A_ij`` is the influence of training
      on skill ``i`` on the loss of skill ``j`` (``np.eye(k)`` ignores the structure).
    step_size: ``eta`` > 0, a float or a schedule of the round (the update count, or
      ``step`` when given).
    window: ``w`` >= 1, how many recent rounds' losses are summed.

  Returns:
    A `MixturePolicy` whose state is a `SkillItState`.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from reweight.group.skill_it import skill_it
    >>> policy = skill_it(np.eye(2), step_size=1.0, window=2)
    >>> state = policy.init()
    >>> state = policy.update(state, eval_losses=jnp.array([1.0, 0.0]))
    >>> [round(p, 4) for p in state.probs.tolist()]  # softmax([1, 0])
    [0.7311, 0.2689]
    >>> state = policy.update(state, eval_losses=jnp.array([0.0, 3.0]))
    >>> [round(p, 4) for p in state.probs.tolist()]  # softmax([1, 3])
    [0.1192, 0.8808]

  References:
    Chen, Roberts, Bhatia, Wang, Zhang, Sala and Ré, "Skill-it! A Data-Driven Skills
    Framework for Understanding and Training Language Models", NeurIPS 2023.
  """
  a = check_graph(graph)
  k = a.shape[0]
  check_hyperparameter(step_size, "step_size", allow_zero=False)
  window = check_int("window", window, 1, whole_floats=True)
  a32 = jnp.asarray(a, jnp.float32)

  def init():
    return SkillItState(jnp.full([k], 1.0 / k, jnp.float32), jnp.zeros([window, k], jnp.float32),
                        jnp.zeros([], jnp.int32))

  def update(state, *, eval_losses=None, step=None, **unused):
    del unused
    if eval_losses is None:
      raise ValueError("skill_it's update needs eval_losses= (one validation loss per skill, "
                       f"shape [{k}])")
    losses = jnp.asarray(eval_losses, jnp.float32)
    if losses.shape != (k,):
      raise ValueError(f"eval_losses has shape {losses.shape}, expected ({k},) (one loss per "
                       "skill of the graph)")
    eta = resolve(step_size, current_step(state.count, step), "step_size")
    buffer = state.losses.at[state.count % window].set(losses)
    probs = jax.nn.softmax(eta * (a32 @ jnp.sum(buffer, axis=0)))
    new = SkillItState(probs.astype(jnp.float32), buffer, state.count + 1)
    ok = jnp.all(jnp.isfinite(losses))
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)

  return MixturePolicy(init, update)
