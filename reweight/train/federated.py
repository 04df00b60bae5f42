"""A small federated-averaging simulation: clients as groups of a dataset, partial participation.

Each round t every client i participates independently with its own probability ``p_i``
(unknown to the server), runs ``local_steps`` of minibatch SGD from the global parameters
``x`` and returns ``Delta_i = x_i - x``; the server applies a weighted sum of the
participants' updates:

.. math::

  x \\leftarrow x + \\gamma \\sum_{i=1}^{N} c_i^t \\Delta_i^t, \\qquad c_i^t = 0
  \\text{ for } i \\notin S_t,

with the coefficients ``c`` of one of the aggregation rules (`coefficients`):

* ``"fedavg"``: ``c_i = n_i / sum_{j in S_t} n_j`` (FedAvg over the participants, weights
  proportional to client sizes, `reweight.group.fedavg_weights`);
* ``"uniform"``: ``c_i = 1 / |S_t|`` (plain average of the participants);
* ``"fedau"``: ``c_i = omega_i / N`` with FedAU's online estimate ``omega_i ~ 1 / p_i``
  (`reweight.group.fedau`; the weights of rounds ``< t``);
* ``"known"``: ``c_i = (1 / p_i) / N`` (the oracle FedAU estimates).

The clients are stacked on a leading axis (`ClientData`, padded to the largest client with
a mask) and their local training is one `jax.vmap` over clients; every client trains every
round (shapes stay static, one compilation) and the non-participants' updates get
coefficient 0. A round is one jitted function of ``(params, fedau_state, key)``.

References:
  McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
  Data", AISTATS 2017. Wang and Ji, "A Lightweight Method for Tackling Unknown
  Participation Statistics in Federated Averaging", ICLR 2024. Hsu, Qi, Brown, "Measuring
  the Effects of Non-Identical Data Distribution for Federated Visual Classification",
  2019 (the Dirichlet split).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reweight._checks import check_choice, check_int, check_positive
from reweight._types import PyTree
from reweight.group.fedau import FedAUState, fedau, fedavg_weights

Array = jax.Array
ApplyFn = Callable[[PyTree, Array], Array]
Method = Literal["fedavg", "uniform", "fedau", "known"]
METHODS = ("fedavg", "uniform", "fedau", "known")


def dirichlet_split(labels, num_clients: int, alpha: float = 0.5, *, seed: int = 0,
                    min_size: int = 1, max_tries: int = 100) -> list[np.ndarray]:
  """Non-iid split by label: each class is divided among clients with Dirichlet shares.

  For every class c, ``(q_{c,1}, ..., q_{c,N}) ~ Dir(alpha)`` and the (shuffled) examples of
  class c go to the clients in those proportions. Small ``alpha`` gives each client few
  classes; large ``alpha`` tends to an iid split. Redrawn (up to ``max_tries``) until
  every client has at least ``min_size`` examples.

  Args:
    labels: ``[n]`` integer labels.
    num_clients: N >= 1.
    alpha: Dirichlet concentration > 0.
    seed: NumPy seed.
    min_size: the fewest examples a client may get (>= 1).
    max_tries: redraws before giving up.

  Returns:
    N sorted index arrays that partition ``range(n)``.

  Raises:
    ValueError: for bad arguments, or when no draw gives every client ``min_size``.

  Examples:
    >>> import numpy as np
    >>> parts = dirichlet_split(np.repeat(np.arange(4), 25), 3, alpha=1.0)
    >>> sorted(np.concatenate(parts).tolist()) == list(range(100))
    True
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be 1-D integers, got shape {labels.shape} and dtype "
                     f"{labels.dtype}")
  n = check_int("num_clients", num_clients, 1)
  check_positive("alpha", alpha)
  min_size = check_int("min_size", min_size, 1)
  if n * min_size > labels.size:
    raise ValueError(f"{labels.size} examples cannot give {n} clients {min_size} each")
  rng = np.random.default_rng(seed)
  for _ in range(check_int("max_tries", max_tries, 1)):
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in np.unique(labels):
      idx = rng.permutation(np.flatnonzero(labels == c))
      shares = rng.dirichlet(np.full(n, float(alpha)))
      cuts = (np.cumsum(shares)[:-1] * idx.size).astype(int)
      for i, chunk in enumerate(np.split(idx, cuts)):
        parts[i].append(chunk)
    out = [np.sort(np.concatenate(p)) for p in parts]
    if min(p.size for p in out) >= min_size:
      return out
  raise ValueError(f"no Dirichlet(alpha={alpha}) split in {max_tries} tries gave every one "
                   f"of {n} clients {min_size} examples; raise alpha or lower min_size")


class ClientData(NamedTuple):
  """Clients' data stacked on a leading client axis, padded to the largest client.

  Attributes:
    x: ``[N, M, ...]`` inputs (padding rows are zero).
    label: ``[N, M]`` int32 labels (padding is 0).
    mask: ``[N, M]`` bool, True on real examples.
    sizes: ``[N]`` int32 client sizes ``n_i`` (``mask.sum(1)``).
  """

  x: Array
  label: Array
  mask: Array
  sizes: Array


def stack_clients(x, labels, splits: Sequence[np.ndarray]) -> ClientData:
  """`ClientData` of the clients ``splits`` (index arrays into ``x`` and ``labels``).

  Raises:
    ValueError: if a client is empty, an index is out of range, or ``x`` and ``labels``
      differ in length.

  Examples:
    >>> import numpy as np
    >>> d = stack_clients(np.ones((5, 2)), np.arange(5), [np.array([0, 1, 2]), np.array([4])])
    >>> d.x.shape, d.mask.tolist(), d.sizes.tolist()
    ((2, 3, 2), [[True, True, True], [True, False, False]], [3, 1])
  """
  x, labels = np.asarray(x), np.asarray(labels)
  if x.shape[0] != labels.shape[0]:
    raise ValueError(f"x has {x.shape[0]} rows but labels has {labels.shape[0]}")
  splits = [np.asarray(s, np.int64) for s in splits]
  if not splits:
    raise ValueError("splits is empty: pass one index array per client")
  for i, s in enumerate(splits):
    if s.ndim != 1 or s.size == 0:
      raise ValueError(f"client {i} has no examples (or a non 1-D index array)")
    if s.min() < 0 or s.max() >= x.shape[0]:
      raise ValueError(f"client {i} has indices out of range [0, {x.shape[0]})")
  m = max(s.size for s in splits)
  xs = np.zeros((len(splits), m, *x.shape[1:]), x.dtype)
  ys = np.zeros((len(splits), m), np.int32)
  mask = np.zeros((len(splits), m), bool)
  for i, s in enumerate(splits):
    xs[i, :s.size], ys[i, :s.size], mask[i, :s.size] = x[s], labels[s], True
  return ClientData(jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(mask),
                    jnp.asarray(mask.sum(1), jnp.int32))


def local_sgd(apply_fn: ApplyFn, params: PyTree, x: Array, label: Array, mask: Array,
              key: Array, *, steps: int, batch_size: int, lr: float) -> PyTree:
  """One client's local training: ``steps`` of minibatch SGD on its valid examples.

  Each step draws ``batch_size`` examples uniformly with replacement among the rows where
  ``mask`` is True and takes ``params <- params - lr * grad mean cross-entropy``. Pure and
  vmappable over ``(x, label, mask, key)`` (the clients).
  """
  logits_mask = jnp.where(mask, 0.0, -jnp.inf)

  def loss_fn(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, xb), yb).mean()

  def body(p, k):
    idx = jax.random.categorical(k, logits_mask, shape=(batch_size,))
    grads = jax.grad(loss_fn)(p, x[idx], label[idx])
    return jax.tree.map(lambda a, g: a - lr * g, p, grads), None

  params, _ = jax.lax.scan(body, params, jax.random.split(key, steps))
  return params


def coefficients(method: Method, participated: Array, *, sizes: Array | None = None,
                 fedau_weights: Array | None = None, probs: Array | None = None) -> Array:
  """The aggregation coefficients ``c`` (``[N]``, zero off the participants) of ``method``.

  ``"fedavg"``: ``n_i / sum_{S} n_j``; ``"uniform"``: ``1 / |S|``; ``"fedau"``:
  ``omega_i / N``; ``"known"``: ``1 / (N p_i)``. All are 0 when no client participates.

  Examples:
    >>> import jax.numpy as jnp
    >>> q = jnp.array([True, False, True, True])
    >>> coefficients("fedau", q, fedau_weights=jnp.array([2.0, 1.0, 4.0, 1.0])).tolist()
    [0.5, 0.0, 1.0, 0.25]
  """
  check_choice("method", method, METHODS)
  q = participated.astype(jnp.float32)
  n = q.shape[0]
  if method == "fedavg":
    if sizes is None:
      raise ValueError('method="fedavg" needs sizes=')
    return fedavg_weights(sizes, participated)
  if method == "uniform":
    return q / jnp.maximum(q.sum(), 1.0)
  if method == "fedau":
    if fedau_weights is None:
      raise ValueError('method="fedau" needs fedau_weights= (FedAUState.weights)')
    return q * fedau_weights / n
  if probs is None:
    raise ValueError('method="known" needs probs= (the participation probabilities)')
  return q / (n * probs)


def federated_round(apply_fn: ApplyFn, params: PyTree, data: ClientData, coeffs: Array,
                    key: Array, *, local_steps: int, batch_size: int, lr: float,
                    global_lr: float = 1.0) -> PyTree:
  """One server round: local SGD on every client (vmapped), then ``x + gamma sum c_i Delta_i``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the global parameters ``x``.
    data: the clients' `ClientData`.
    coeffs: ``[N]`` aggregation coefficients (zero for non-participants), see
      `coefficients`.
    key: PRNG key of the round (split over clients).
    local_steps, batch_size, lr: local SGD (see `local_sgd`).
    global_lr: the server step ``gamma``.

  Returns:
    The new global parameters.
  """
  keys = jax.random.split(key, data.sizes.shape[0])
  train = jax.vmap(
      lambda x, y, m, k: local_sgd(apply_fn, params, x, y, m, k, steps=local_steps,
                                   batch_size=batch_size, lr=lr))
  local = train(data.x, data.label, data.mask, keys)
  coeffs = jnp.asarray(coeffs, jnp.float32)

  def combine(g, l):
    delta = l - g[None]
    return g + global_lr * jnp.tensordot(coeffs, delta, axes=1).astype(g.dtype)

  return jax.tree.map(combine, params, local)


class FederatedHistory(NamedTuple):
  """What `simulate` returns.

  Attributes:
    rounds: rounds after which the test accuracy was measured (0 = before training).
    accuracy: test accuracy at those rounds.
    params: the final global parameters.
    fedau_state: the final `reweight.group.FedAUState` (tracked for every method).
    participation: ``[rounds, N]`` bool, who participated in each round.
  """

  rounds: np.ndarray
  accuracy: np.ndarray
  params: PyTree
  fedau_state: FedAUState
  participation: np.ndarray


def simulate(apply_fn: ApplyFn, params: PyTree, data: ClientData, test_x, test_label,
             probs, *, rounds: int, method: Method = "fedau", cutoff: int | None = None,
             local_steps: int = 5, batch_size: int = 16, lr: float = 0.1,
             global_lr: float = 1.0, seed: int = 0, eval_every: int = 1) -> FederatedHistory:
  """Federated training with Bernoulli(p_i) participation; returns test-accuracy history.

  Each round: ``q_i ~ Bernoulli(p_i)``; coefficients of ``method`` (FedAU's use the
  weights estimated from earlier rounds); `federated_round`; the FedAU state is updated
  with ``q``. The round is jitted once.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits`` (e.g. from
      `reweight.train.split_model`).
    params: initial global parameters.
    data: the clients' `ClientData` (e.g. `stack_clients` of a `dirichlet_split`).
    test_x, test_label: the test set for the accuracy.
    probs: ``[N]`` participation probabilities in (0, 1].
    rounds: number of rounds >= 1.
    method: ``"fedau"``, ``"fedavg"``, ``"uniform"`` or ``"known"``.
    cutoff: FedAU's K (None: no cutoff).
    local_steps, batch_size, lr: local SGD.
    global_lr: the server step ``gamma``.
    seed: PRNG seed of participation and local sampling.
    eval_every: evaluate every this many rounds (and after the last).

  Returns:
    A `FederatedHistory`.

  Raises:
    ValueError: for bad arguments (probs of the wrong length or outside (0, 1], ...).

  Examples:
    >>> import numpy as np, reweight
    >>> from reweight.train.federated import dirichlet_split, simulate, stack_clients
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 3)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int32)
    >>> data = stack_clients(x, y, dirichlet_split(y, 4, 1.0))
    >>> apply_fn, params = reweight.train.split_model(
    ...     reweight.train.make_model("mlp", in_features=3, hidden=(), num_classes=2))
    >>> h = simulate(apply_fn, params, data, x, y, [0.5, 0.5, 1.0, 1.0], rounds=3)
    >>> h.rounds.tolist(), h.participation.shape
    ([0, 1, 2, 3], (3, 4))
  """
  method = check_choice("method", method, METHODS)
  n = int(data.sizes.shape[0])
  probs = np.asarray(probs, np.float64)
  if probs.shape != (n,) or not np.all((probs > 0) & (probs <= 1)):
    raise ValueError(f"probs must be {n} participation probabilities in (0, 1], got "
                     f"{probs.tolist()!r}")
  rounds = check_int("rounds", rounds, 1)
  eval_every = check_int("eval_every", eval_every, 1)
  local_steps = check_int("local_steps", local_steps, 1)
  batch_size = check_int("batch_size", batch_size, 1)
  check_positive("lr", lr)
  check_positive("global_lr", global_lr)
  au = fedau(n, cutoff=cutoff)
  p = jnp.asarray(probs, jnp.float32)

  @jax.jit
  def round_fn(params, state, key):
    k_part, k_train = jax.random.split(key)
    q = jax.random.bernoulli(k_part, p)
    c = coefficients(method, q, sizes=data.sizes, fedau_weights=au.weights(state), probs=p)
    params = federated_round(apply_fn, params, data, c, k_train, local_steps=local_steps,
                             batch_size=batch_size, lr=lr, global_lr=global_lr)
    return params, au.update(state, q), q

  test_x, test_label = jnp.asarray(test_x), jnp.asarray(test_label)

  @jax.jit
  def accuracy(params):
    return jnp.mean(jnp.argmax(apply_fn(params, test_x), -1) == test_label)

  state = au.init()
  keys = jax.random.split(jax.random.key(seed), rounds)
  at, acc, part = [0], [float(accuracy(params))], []
  for t in range(rounds):
    params, state, q = round_fn(params, state, keys[t])
    part.append(np.asarray(q))
    if (t + 1) % eval_every == 0 or t + 1 == rounds:
      at.append(t + 1)
      acc.append(float(accuracy(params)))
  return FederatedHistory(np.asarray(at), np.asarray(acc), params, state, np.stack(part))


__all__ = [
    "METHODS", "ClientData", "FederatedHistory", "coefficients", "dirichlet_split",
    "federated_round", "local_sgd", "simulate", "stack_clients",
]
