"""Aioli: online data mixing from a linear mixing law fitted during training (Chen et al., 2024).

Within a round, Aioli models the drop of group ``i``'s validation loss after training a few
steps on the mixture ``p`` as linear in ``p``:

.. math::  \\Delta L_i = \\sum_j A_{ij}\\, p_j

**LearnParams** estimates ``A`` at the start of each round: for ``lp_rounds`` sweeps, and for
every group ``j`` (in a random order), train ``lp_steps`` on the *smoothed one-hot* mixture
``m_j`` (mass ``f = smoothing`` on ``j``, ``(1 - f) / (G - 1)`` on every other group) and
record the drop of every group's validation loss in column ``j`` of ``B``. So
``B = A S`` with ``S = [m_1 ... m_G]``, and

.. math::

  A = \\bar B\\, S^{-1}, \\qquad m = \\min(\\min_{ij} A_{ij},\\, 0), \\qquad
  A \\leftarrow \\frac{A - m}{\\sum_{ij} (A_{ij} - m)},
  \\qquad p \\leftarrow \\frac{p \\odot \\exp(\\eta\\, \\mathbf 1^\\top A)}
  {\\sum_j p_j \\exp(\\eta \\sum_i A_{ij})}

(``B̄`` the mean over the sweeps), then trains the rest of the round on ``p``. The round
structure (which mixture to train on when, measuring validation losses) belongs to the
trainer; this module holds the maths: `learn_params_mixtures` (what to train on),
`mixing_matrix` (``A`` from the measured drops) and the `aioli` policy (estimate + update).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from reweight._checks import check_int
from reweight._types import ScalarOrSchedule
from reweight.base import check_hyperparameter, current_step, resolve
from reweight.group.policy import MixturePolicy, check_num_groups

Array = jax.Array


def _check_smoothing(num_groups: int, smoothing) -> float:
  f = float(smoothing)
  lo = 1.0 / num_groups if num_groups > 1 else 0.0
  if not (lo < f <= 1.0):
    raise ValueError(f"smoothing={smoothing!r} must be in ({lo:.6g}, 1] for num_groups="
                     f"{num_groups}: the mass a LearnParams mixture puts on its own group "
                     "(above 1/num_groups, so the smoothing can be undone)")
  return f


def _smoothing_parts(num_groups: int, f: float) -> tuple[float, float]:
  """``S = a I + b 1 1^T``: (a, b) for the smoothed one-hot mixtures."""
  if num_groups == 1:
    return 1.0, 0.0
  b = (1.0 - f) / (num_groups - 1)
  return f - b, b


def learn_params_mixtures(num_groups: int, smoothing: float = 0.625) -> Array:
  """The ``G`` mixtures LearnParams trains on: row ``j`` is the smoothed one-hot of group j.

  Row ``j`` puts ``smoothing`` on group ``j`` and ``(1 - smoothing) / (G - 1)`` on every
  other group (``[[1.0]]`` for one group). The matrix is symmetric, so it is also ``S``
  (column ``j`` the mixture of group ``j``).

  Args:
    num_groups: ``G`` >= 1.
    smoothing: ``f`` in ``(1/G, 1]``; 0.625 in the paper, 1 gives plain one-hots.

  Returns:
    ``[G, G]`` float32, every row a distribution.

  Examples:
    >>> from reweight.group.aioli import learn_params_mixtures
    >>> learn_params_mixtures(3, 0.5).tolist()
    [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]
  """
  g = check_num_groups(num_groups)
  f = _check_smoothing(g, smoothing)
  a, b = _smoothing_parts(g, f)
  return (a * jnp.eye(g) + b * jnp.ones([g, g])).astype(jnp.float32)


def mixing_matrix(loss_drops, smoothing: float = 0.625, *, normalize: bool = True,
                  diagonal: bool = False) -> Array:
  """The mixing-law matrix ``A`` from the validation-loss drops measured in LearnParams.

  ``B̄`` is ``loss_drops`` averaged over its leading (sweep) axis when it has one;
  ``B̄[i, j]`` is the drop of group ``i``'s validation loss while training on the smoothed
  one-hot mixture of group ``j`` (before minus after). Then ``A = B̄ S^{-1}``, in closed form
  ``A_ij = (B̄_ij - b sum_k B̄_ik) / (f - b)`` with ``b = (1 - f) / (G - 1)`` (``S = (f - b) I
  + b 1 1^T`` and ``S^{-1} = (I - b 1 1^T) / (f - b)``). With ``diagonal=True`` only the
  self-effects are kept, ``A = diag(B̄_ii / f)`` (the authors' ``aioli_diagonal`` variant).

  With ``normalize`` (the authors' ``aioli_normalize_A``, used in all their runs):
  ``m = min(min_ij A_ij, 0)`` — the smallest entry of the whole matrix when it is negative,
  else 0 — and ``A <- (A - m) / sum(A - m)``, so ``A`` is non-negative and sums to one. The
  sum in the denominator is taken after the shift (as in the authors' code). If that sum is
  0 (every entry equal and non-positive) the result is all zeros, so the policy leaves ``p``
  unchanged. Works under `jax.jit`.

  Args:
    loss_drops: ``[lp_rounds, G, G]`` or ``[G, G]``, indexed ``[(sweep,) evaluated group,
      trained group]``.
    smoothing: the ``f`` the mixtures were built with (see `learn_params_mixtures`).
    normalize: shift by the negative minimum and scale to sum one.
    diagonal: keep only the diagonal (no cross-group effects).

  Returns:
    ``[G, G]`` float32 ``A``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.group.aioli import mixing_matrix
    >>> # drops of A = [[2, 0], [1, 1]] seen through the mixtures [[.75, .25], [.25, .75]]
    >>> b = jnp.array([[1.5, 0.5], [1.0, 1.0]])
    >>> mixing_matrix(b, 0.75, normalize=False).tolist()
    [[2.0, 0.0], [1.0, 1.0]]
    >>> mixing_matrix(b, 0.75).tolist()
    [[0.5, 0.0], [0.25, 0.25]]
  """
  b = jnp.asarray(loss_drops, jnp.float32)
  if b.ndim == 3:
    b = jnp.mean(b, axis=0)
  if b.ndim != 2 or b.shape[0] != b.shape[1] or b.shape[0] == 0:
    raise ValueError(f"loss_drops has shape {jnp.shape(loss_drops)}, expected [lp_rounds, G, G] "
                     "or [G, G] (evaluated group x trained group)")
  g = b.shape[0]
  f = _check_smoothing(g, smoothing)
  diag_scale, off = _smoothing_parts(g, f)
  if diagonal:
    a = jnp.diag(jnp.diag(b) / f)
  else:
    a = (b - off * jnp.sum(b, axis=1, keepdims=True)) / diag_scale
  if normalize:
    a = a - jnp.minimum(jnp.min(a), 0.0)
    total = jnp.sum(a)
    a = jnp.where(total > 0, a / jnp.where(total > 0, total, 1.0), 0.0)
  return a


class AioliState(NamedTuple):
  """Aioli's sampling distribution and its memory.

  Attributes:
    probs: ``[G]`` the distribution the rest of the round is drawn from.
    logits: ``[G]`` ``log(probs)`` (kept so that many rounds of multiplicative updates do
      not underflow).
    matrix: ``[G, G]`` the last ``A`` used (the running average when ``ema`` is set).
    count: int32, the number of updates.
  """

  probs: Array
  logits: Array
  matrix: Array
  count: Array


def aioli(num_groups: int, step_size: ScalarOrSchedule = 0.2, *, lp_rounds: int = 4,
          smoothing: float = 0.625, normalize: bool = True, diagonal: bool = False,
          ema: float | None = None) -> MixturePolicy:
  """Aioli: ``p <- p * exp(eta * column sums of A)``, ``A`` fitted by LearnParams each round.

  ``update(state, *, loss_drops, step=None)`` takes the drops measured in this round's
  LearnParams (``[lp_rounds, G, G]`` or already averaged ``[G, G]``, see `mixing_matrix`),
  estimates ``A`` and moves the distribution by exponentiated gradient:
  ``logits <- logits + eta * A.sum(0)``, ``probs = softmax(logits)``. A round whose drops
  hold a non-finite value is skipped (state unchanged). Other keyword inputs are ignored.

  With ``ema=beta`` (the authors' ``--ema``: 0.1 in their scripts, though their README
  advises leaving it unset at first) the matrix is averaged
  across rounds, ``Ā_t = (1 - beta) A_t + beta Ā_{t-1}`` (``Ā_1 = A_1``), and, as in their
  code, the distribution is then *not* multiplicative: ``p_t = softmax(eta * Ā_t.sum(0))``.

  The trainer runs each round as: LearnParams for ``lp_rounds`` sweeps over the rows of
  `learn_params_mixtures` (in a fresh random order per sweep, ``lp_steps`` steps each; the
  authors' scripts use 4 and 4), measuring every group's validation loss before and after
  each segment; then ``update``; then the rest of the round on ``probs``. The authors' code
  measures each drop from the end of the previous segment, not from the start of the round.

  Args:
    num_groups: ``G`` >= 1.
    step_size: ``eta`` > 0 (0.1, 0.2 or 0.5 in the paper), or a schedule of the update count
      (``step`` when given).
    lp_rounds: sweeps per LearnParams (the authors recommend 4 or 6); a 3-D ``loss_drops``
      must have this leading size.
    smoothing: ``f`` of the LearnParams mixtures.
    normalize: normalize ``A`` (see `mixing_matrix`).
    diagonal: keep only ``A``'s diagonal.
    ema: None (the paper's multiplicative update) or ``beta`` in ``[0, 1)``.

  Returns:
    A `MixturePolicy` whose state is an `AioliState` (initially uniform).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.group.aioli import aioli
    >>> policy = aioli(2, step_size=1.0, smoothing=0.75)
    >>> state = policy.update(policy.init(), loss_drops=jnp.array([[1.5, 0.5], [1.0, 1.0]]))
    >>> [round(p, 4) for p in state.probs.tolist()]  # softmax([0.75, 0.25])
    [0.6225, 0.3775]

  References:
    Chen, Hu, Lourie, Cho and Ré, "Aioli: A Unified Optimization Framework for Language
    Model Data Mixing", arXiv:2411.05735, 2024.
  """
  g = check_num_groups(num_groups)
  _check_smoothing(g, smoothing)
  check_hyperparameter(step_size, "step_size", allow_zero=False)
  lp_rounds = check_int("lp_rounds", lp_rounds, 1, whole_floats=True)
  if ema is not None and not 0.0 <= ema < 1.0:
    raise ValueError(f"ema={ema!r} must be None or in [0, 1)")

  def init():
    return AioliState(jnp.full([g], 1.0 / g, jnp.float32), jnp.full([g], -jnp.log(g), jnp.float32),
                      jnp.zeros([g, g], jnp.float32), jnp.zeros([], jnp.int32))

  def update(state, *, loss_drops=None, step=None, **unused):
    del unused
    if loss_drops is None:
      raise ValueError("aioli's update needs loss_drops= (the LearnParams validation-loss "
                       f"drops, [lp_rounds={lp_rounds}, {g}, {g}] or [{g}, {g}])")
    drops = jnp.asarray(loss_drops, jnp.float32)
    if drops.shape not in ((lp_rounds, g, g), (g, g)):
      raise ValueError(f"loss_drops has shape {drops.shape}, expected ({lp_rounds}, {g}, {g}) "
                       f"or ({g}, {g})")
    eta = resolve(step_size, current_step(state.count, step), "step_size")
    a = mixing_matrix(drops, smoothing, normalize=normalize, diagonal=diagonal)
    if ema is None:
      logits = state.logits + eta * jnp.sum(a, axis=0)
    else:
      a = jnp.where(state.count == 0, a, (1.0 - ema) * a + ema * state.matrix)
      logits = eta * jnp.sum(a, axis=0)
    logits = logits - jax.nn.logsumexp(logits)
    new = AioliState(jnp.exp(logits), logits, a, state.count + 1)
    ok = jnp.all(jnp.isfinite(drops))
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)

  return MixturePolicy(init, update)
