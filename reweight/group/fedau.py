"""FedAU (Wang and Ji, ICLR 2024): aggregation weights for clients of unknown participation.

In federated averaging with partial participation, client i takes part in round t with an
unknown probability ``p_i``. Aggregating the participants' updates ``Delta_i`` with a
weight ``omega_i`` optimises the objective ``sum_i p_i omega_i F_i`` in expectation, so the
unbiased choice (for the objective ``(1/N) sum_i F_i``) is ``omega_i = 1 / p_i``:

.. math::

  x \\leftarrow x + \\frac{\\gamma}{N} \\sum_{i \\in S_t} \\omega_i^t \\Delta_i^t .

FedAU estimates ``1/p_i`` online from the **intervals between participations**, which for
Bernoulli participation are geometric with mean ``1/p_i``. An interval closes when the
client participates, or when it has not participated for ``K`` rounds (the cutoff), so every
recorded interval is in ``[1, K]``; the weight is the running mean of the intervals
recorded so far:

.. math::

  S_i \\leftarrow S_i + 1; \\quad
  \\text{if } q_i^t = 1 \\text{ or } S_i = K:\\;
  M_i \\leftarrow M_i + 1,\\;
  \\bar S_i \\leftarrow \\bar S_i + (S_i - \\bar S_i) / M_i,\\;
  S_i \\leftarrow 0; \\qquad
  \\omega_i = \\bar S_i \\text{ if } M_i > 0 \\text{ else } 1 .

Three scalars per client (``S_i``, ``M_i``, ``\\bar S_i``), no memory of the history. With
Bernoulli(p) participation each interval is ``min(G, K)``, ``G ~ Geometric(p)``, so

.. math::

  \\omega_i \\to E[\\min(G, K)] = \\frac{1 - (1 - p_i)^K}{p_i}
  = \\frac{1}{p_i} \\bigl(1 - (1 - p_i)^K\\bigr),

i.e. the cutoff biases the estimate down by the relative factor ``(1 - p_i)^K`` and bounds
it by K (it trades bias for variance on rarely participating clients).

What ALGORITHMS.md section I fixes (**[abs + code]**): the weight is an online estimate of
the inverse participation probability from the intervals between participations, with a
cutoff, and a few scalars of memory per client. What is taken from the authors' code
(github IBM/fedau, ``main.py``, method ``adaptive``), and chosen here:

* **Timing.** The weight that multiplies a participant's update in round t is the estimate
  from rounds ``< t`` (``state.weights`` *before* ``update`` with round t's participation),
  so it is independent of ``q_i^t``, as in the reference (which records the interval that
  ends at round t only after weighting that round's update) and as the paper's analysis
  needs. Call ``weights = state.weights`` (or `FedAU.weights`), aggregate, then
  ``state = fedau.update(state, participated)``.
* **Before the first interval** the weight is 1 (the reference leaves the update
  unweighted until an interval has been recorded).
* **Cutoff.** A non-participating client whose current interval reaches K records an
  interval of length K and restarts (the reference's ``>= k_value`` test, equivalent since
  the counter grows by one). ``cutoff=None`` means no cutoff (the reference's default
  ``-k-adaptive 100000`` is effectively none). The default here, ``cutoff=None``, follows
  it; pass a finite K to bound the weights.
* The running mean replaces the reference's list of all intervals (equal values, constant
  memory); it is kept in float32.
* Normalisation by N (not by the number of participants) belongs to the aggregation, see
  `reweight.train.federated`.

References:
  Shiqiang Wang, Mingyue Ji, "A Lightweight Method for Tackling Unknown Participation
  Statistics in Federated Averaging", ICLR 2024 (arXiv:2306.03401).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reweight._checks import check_int, is_traced

Array = jax.Array


class FedAUState(NamedTuple):
  """State of `fedau`.

  Attributes:
    weights: ``[N]`` float32 ``omega_i``, the weight of client i's update in the *next*
      round (the mean recorded interval, or 1 before the first one).
    mean_interval: ``[N]`` float32 ``bar S_i``, the running mean of the recorded intervals.
    num_intervals: ``[N]`` int32 ``M_i``, how many intervals have been recorded.
    since: ``[N]`` int32 ``S_i``, rounds since the last recorded interval ended.
    count: number of rounds seen.
  """

  weights: Array
  mean_interval: Array
  num_intervals: Array
  since: Array
  count: Array


class FedAU(NamedTuple):
  """The pure functions of `fedau`.

  Attributes:
    init: ``init() -> FedAUState``.
    update: ``update(state, participated=None, *, client_ids=None) -> FedAUState``, with
      round t's participation as a bool mask ``[N]`` or as the participating client ids.
    weights: ``weights(state) -> [N]``, the aggregation weights for the next round.
  """

  init: Callable[[], FedAUState]
  update: Callable[..., FedAUState]
  weights: Callable[[FedAUState], Array]


def _check_cutoff(cutoff) -> int | None:
  if cutoff is None:
    return None
  if is_traced(cutoff):
    raise TypeError("cutoff is structural and cannot be traced")
  if isinstance(cutoff, int | np.integer | float | np.floating) and not isinstance(
      cutoff, bool) and cutoff <= 0:
    raise ValueError(f"cutoff={cutoff!r} must be a positive integer (the longest interval "
                     "recorded, K >= 1) or None for no cutoff")
  return check_int("cutoff", cutoff, 1, whole_floats=True)


def participation_mask(participated, client_ids, num_clients: int) -> Array:
  """Round t's participation as a bool ``[num_clients]`` mask, from a mask or client ids.

  Raises:
    ValueError: if both or neither are given, the mask's shape is not ``[num_clients]``, or
      a (concrete) client id is outside ``[0, num_clients)``. Traced out-of-range ids
      cannot be checked and are dropped.
    TypeError: if the mask is not boolean.

  Examples:
    >>> participation_mask(None, [0, 2], 3).tolist()
    [True, False, True]
  """
  if (participated is None) == (client_ids is None):
    raise ValueError("pass exactly one of participated= (a bool mask [num_clients]) and "
                     "client_ids= (the participating clients' ids)")
  if client_ids is not None:
    ids = client_ids if isinstance(client_ids, jax.Array) else np.asarray(client_ids)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
      raise ValueError(f"client_ids must be a 1-D array of integer ids, got shape "
                       f"{ids.shape} and dtype {ids.dtype}")
    if not is_traced(ids) and ids.size:
      bad = np.asarray(ids)[(np.asarray(ids) < 0) | (np.asarray(ids) >= num_clients)]
      if bad.size:
        raise ValueError(f"client ids {bad.tolist()} out of range [0, {num_clients})")
    mask = jnp.zeros(num_clients, bool)
    return mask.at[jnp.asarray(ids, jnp.int32)].set(True, mode="drop")
  mask = participated if isinstance(participated, jax.Array) else np.asarray(participated)
  if mask.shape != (num_clients,):
    raise ValueError(f"participated has shape {tuple(mask.shape)}, expected "
                     f"({num_clients},): one entry per client")
  if mask.dtype != bool:
    raise TypeError(f"participated must be a bool mask, got dtype {mask.dtype}; pass "
                    "client_ids= for the ids of the participating clients")
  return jnp.asarray(mask)


def fedau(num_clients: int, *, cutoff: int | None = None) -> FedAU:
  """FedAU's online estimate of each client's aggregation weight ``omega_i ~ 1 / p_i``.

  Per round, with ``q_i`` whether client i participated:

  .. math::

    S_i \\leftarrow S_i + 1;\\quad \\text{if } q_i \\lor S_i = K:\\;
    \\bar S_i \\leftarrow \\bar S_i + \\frac{S_i - \\bar S_i}{M_i + 1},\\;
    M_i \\leftarrow M_i + 1,\\; S_i \\leftarrow 0;\\qquad
    \\omega_i = \\bar S_i \\;(M_i > 0), \\; 1 \\;(M_i = 0).

  Use ``state.weights`` *before* updating with a round's participation (see the module
  docstring): the server update is ``x + (gamma / N) sum_{i in S_t} omega_i Delta_i``.
  Jittable (``update`` under `jax.jit`).

  Args:
    num_clients: N >= 1.
    cutoff: K, the longest interval recorded (an integer >= 1), or None for no cutoff.
      With Bernoulli(p) participation the weight tends to ``(1 - (1 - p)^K) / p``.

  Returns:
    A `FedAU` ``(init, update, weights)`` with state `FedAUState`.

  Raises:
    ValueError: for ``num_clients < 1``, a non-positive or non-integer cutoff; from
      ``update``, a mask of the wrong shape or client ids out of range.

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> au = reweight.group.fedau(2, cutoff=3)
    >>> state = au.init()
    >>> for q in ([True, False], [False, False], [True, False], [True, False]):
    ...   state = au.update(state, jnp.array(q))
    >>> state.weights.tolist()  # intervals [1, 2, 1] and [3] (cut off at K = 3)
    [1.3333333730697632, 3.0]
    >>> au.update(state, client_ids=[1]).since.tolist()
    [1, 0]

  References:
    Shiqiang Wang, Mingyue Ji, "A Lightweight Method for Tackling Unknown Participation
    Statistics in Federated Averaging", ICLR 2024.
  """
  n = check_int("num_clients", num_clients, 1, whole_floats=True)
  k = _check_cutoff(cutoff)

  def init() -> FedAUState:
    return FedAUState(jnp.ones(n, jnp.float32), jnp.zeros(n, jnp.float32),
                      jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32),
                      jnp.zeros([], jnp.int32))

  def update(state: FedAUState, participated=None, *, client_ids=None) -> FedAUState:
    q = participation_mask(participated, client_ids, n)
    since = state.since + 1
    close = q if k is None else q | (since >= k)
    count = state.num_intervals + close.astype(jnp.int32)
    step = (since.astype(jnp.float32) - state.mean_interval) / jnp.maximum(count, 1)
    mean = jnp.where(close, state.mean_interval + step, state.mean_interval)
    weights = jnp.where(count > 0, mean, 1.0).astype(jnp.float32)
    return FedAUState(weights, mean, count, jnp.where(close, 0, since), state.count + 1)

  def weights(state: FedAUState) -> Array:
    return state.weights

  return FedAU(init, update, weights)


def fedavg_weights(sizes, participated=None) -> Array:
  """FedAvg's aggregation weights: proportional to the clients' data sizes, sum one.

  .. math::

    w_i = \\frac{n_i}{\\sum_j n_j}, \\qquad\\text{or, among the participants } S:\\quad
    w_i = \\frac{n_i [i \\in S]}{\\sum_{j \\in S} n_j}

  (all zero when no client participates). The server update is then
  ``x + gamma sum_i w_i Delta_i``.

  Args:
    sizes: ``[N]`` non-negative client sizes ``n_i`` (not all zero).
    participated: optional bool mask ``[N]``: renormalise over the participants only.

  Returns:
    ``[N]`` float32 weights.

  Raises:
    ValueError: for sizes that are not 1-D, negative, non-finite or all zero (when
      concrete), or a mask of the wrong shape.

  Examples:
    >>> import reweight
    >>> reweight.group.fedavg_weights([1, 3]).tolist()
    [0.25, 0.75]
    >>> w = reweight.group.fedavg_weights([1, 3, 4], [True, False, True])
    >>> [round(x, 4) for x in w.tolist()]
    [0.2, 0.0, 0.8]

  References:
    McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS 2017.
  """
  s = sizes if isinstance(sizes, jax.Array) else np.asarray(sizes, np.float64)
  if s.ndim != 1 or s.shape[0] < 1:
    raise ValueError(f"sizes must be a 1-D array of client sizes, got shape {s.shape}")
  if not is_traced(s):
    host = np.asarray(s, np.float64)
    if not np.all(np.isfinite(host)) or host.min() < 0 or host.sum() <= 0:
      raise ValueError(f"sizes={host.tolist()!r} must be finite, >= 0 and not all zero")
  s = jnp.asarray(s, jnp.float32)
  if participated is not None:
    s = s * participation_mask(participated, None, s.shape[0]).astype(jnp.float32)
  total = jnp.sum(s)
  return jnp.where(total > 0, s / jnp.where(total > 0, total, 1.0), 0.0)


__all__ = ["FedAU", "FedAUState", "fedau", "fedavg_weights", "participation_mask"]
