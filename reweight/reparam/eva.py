"""EVA: explained-variance adaptation, a data-driven LoRA initialization.

For each target layer, EVA runs an incremental PCA (incremental SVD) of the layer's *inputs*
over minibatches and initializes LoRA with the top right-singular vectors:

    X_l = inputs of layer l (rows = tokens / examples),   X_l - mean = U S V^T,
    A_l = V_{:r_l}^T  (r_l x in, i.e. lora_a = V_{:r_l} of shape (in, r_l)),   B_l = 0,

so the adapter starts at zero (the model is unchanged) and its input projection spans the
directions of largest activation variance. Ranks are redistributed across layers by
explained variance: every layer computes ``round(rho * r)`` candidate components, all
candidates are ranked globally by their explained-variance ratio
``S_i^2 / sum_j ||x_j - mean||^2``, and the ``r * num_layers`` best are kept, so
``r_l = #{kept candidates of layer l}`` (0 <= r_l <= rho r; layers with r_l = 0 get no
adapter). A layer stops receiving batches once the cosine similarity between its components
before and after an update is >= ``tau`` for each of its first ``r_l`` components (early
stopping per layer; it resumes if a later redistribution gives it more rank).

Incremental update (as scikit-learn's / PEFT's IncrementalPCA): with the current components
``V`` (n x d), singular values ``S``, mean ``mu`` over ``N`` rows, and a new batch ``X``
(``B`` rows, mean ``m``), take the SVD of the stacked matrix

    [ diag(S) V ;  X - m ;  sqrt(N B / (N + B)) (mu - m) ]

and keep the top ``n`` right-singular vectors (signs fixed so that the largest-magnitude
entry of each is positive). When the centered data has rank <= n this is exactly the SVD of
all rows seen so far; otherwise it is the usual truncated incremental approximation.

Scaling: with ``adjust_scaling=True`` (PEFT's ``adjust_scaling_factors``) every layer uses
``s = alpha / r`` whatever its redistributed rank (PEFT rescales ``alpha_l = alpha r_l / r``);
otherwise ``s = alpha / r_l``.

Getting the layer inputs: `collect_inputs` traces a pure ``apply_fn(params, batch)`` and
records, for each target kernel, the left operand of every ``x @ kernel`` contraction (as in
``flax.nnx.Linear``); this works for functional Flax NNX models (``nnx.split`` /
``nnx.merge``) and hand-written MLPs. Kernels used inside ``lax.scan`` / ``while`` bodies are
not seen; for those, ``sow`` the inputs (``Module.sow(nnx.Intermediate, ...)``, read with
``nnx.capture``) and pass ``data`` yourself.

References:
  Paischer et al., "One Initialization to Rule them All: Fine-tuning via Explained Variance
  Adaptation", 2024 (arXiv:2410.07170).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from reweight._types import PyTree
from reweight.reparam._core import (
    Reparam,
    additive,
    flatten_with_paths,
    path_str,
    select,
    sub_jaxpr,
)

# --------------------------------------------------------------------------------------
# Incremental PCA
# --------------------------------------------------------------------------------------


class IPCAState(NamedTuple):
  """Incremental PCA of one layer's inputs.

  Attributes:
    components: ``[n, d]`` top right-singular vectors (rows, unit norm).
    singular_values: ``[n]``, descending.
    mean: ``[d]`` running mean (zeros when not centering).
    ss: total (centered) sum of squares of all rows seen.
    count: number of rows seen.
  """

  components: jax.Array
  singular_values: jax.Array
  mean: jax.Array
  ss: jax.Array
  count: jax.Array


def ipca_init(n_components: int, dim: int) -> IPCAState:
  """Empty incremental-PCA state for ``n_components`` components of ``dim`` features."""
  return IPCAState(
      jnp.zeros((n_components, dim), jnp.float32), jnp.zeros((n_components,), jnp.float32),
      jnp.zeros((dim,), jnp.float32), jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32))


@functools.partial(jax.jit, static_argnames=("center",))
def ipca_update(
    state: IPCAState, x: jax.Array, *, center: bool = True
) -> tuple[IPCAState, jax.Array, jax.Array]:
  """One incremental-PCA step on a batch ``x`` ``[B, d]``.

  Args:
    state: the current state.
    x: a batch of rows.
    center: subtract the running mean (PCA, as PEFT's EVA); False gives the uncentered SVD.

  Returns:
    ``(new_state, explained_variance_ratio [n], similarity [n])`` where ``similarity`` is
    the cosine between each new component and the previous one (0 on the first batch).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (32, 5)) * jnp.array([5.0, 1, 1, 1, 1])
    >>> state, evr, _ = ipca_update(ipca_init(1, 5), x)
    >>> int(jnp.argmax(jnp.abs(state.components[0])))
    0
  """
  x = x.astype(jnp.float32)
  n = state.components.shape[0]
  b = jnp.float32(x.shape[0])
  n_old = state.count
  n_tot = n_old + b
  if center:
    bmean = jnp.mean(x, axis=0)
    xc = x - bmean
    diff = state.mean - bmean
    factor = n_old * b / n_tot
    correction = jnp.sqrt(factor) * diff
    mean = (n_old * state.mean + b * bmean) / n_tot
    ss = state.ss + jnp.sum(xc * xc) + factor * jnp.sum(diff * diff)
    stacked = jnp.concatenate(
        [state.singular_values[:, None] * state.components, xc, correction[None]], axis=0)
  else:
    mean = state.mean
    ss = state.ss + jnp.sum(x * x)
    stacked = jnp.concatenate([state.singular_values[:, None] * state.components, x], axis=0)
  _, s, vt = jnp.linalg.svd(stacked, full_matrices=False)
  vt, s = vt[:n], s[:n]
  # Deterministic signs: the largest-magnitude entry of each component is positive.
  pivot = jnp.take_along_axis(vt, jnp.argmax(jnp.abs(vt), axis=1)[:, None], axis=1)
  vt = vt * jnp.where(pivot < 0, -1.0, 1.0)
  evr = s**2 / jnp.where(ss > 0, ss, 1.0)
  sim = jnp.sum(vt * state.components, axis=1)
  return IPCAState(vt, s, mean, ss, n_tot), evr, sim


# --------------------------------------------------------------------------------------
# Rank redistribution and the EVA fit
# --------------------------------------------------------------------------------------


def redistribute_ranks(
    explained_variance_ratio: Mapping[str, jax.Array | np.ndarray], budget: int
) -> dict[str, int]:
  """Global rank allocation by explained-variance ratio.

  All candidates ``(layer, i)`` are sorted by ratio (descending; ties keep layer order, then
  component order) and the first ``budget`` are kept; a layer's rank is its number of kept
  candidates.

  Args:
    explained_variance_ratio: ``{path: [n_l]}`` candidate ratios per layer.
    budget: the total rank (``r * num_layers`` in EVA).

  Returns:
    ``{path: rank}`` (zeros included), in the order of the input.

  Examples:
    >>> redistribute_ranks({"a": [0.5, 0.2, 0.1], "b": [0.3, 0.25, 0.01]}, budget=4)
    {'a': 2, 'b': 2}

  References:
    Paischer et al., "One Initialization to Rule them All", 2024.
  """
  keys = list(explained_variance_ratio)
  owner = np.concatenate([np.full(len(np.asarray(explained_variance_ratio[k])), i)
                          for i, k in enumerate(keys)]).astype(int)
  values = np.concatenate([np.asarray(explained_variance_ratio[k], np.float64).ravel()
                           for k in keys])
  order = np.argsort(-values, kind="stable")[:budget]
  counts = np.bincount(owner[order], minlength=len(keys))
  return {k: int(c) for k, c in zip(keys, counts, strict=True)}


class EvaResult(NamedTuple):
  """Outcome of `eva_fit`.

  Attributes:
    components: ``{path: [n_l, in]}`` all candidate components (rows).
    singular_values: ``{path: [n_l]}``.
    explained_variance_ratio: ``{path: [n_l]}``.
    ranks: ``{path: r_l}`` after redistribution.
    converged: ``{path: bool}`` whether the layer met the ``tau`` criterion.
    num_batches: ``{path: int}`` batches the layer's PCA consumed.
  """

  components: dict[str, jax.Array]
  singular_values: dict[str, jax.Array]
  explained_variance_ratio: dict[str, jax.Array]
  ranks: dict[str, int]
  converged: dict[str, bool]
  num_batches: dict[str, int]


def _batches(data: Iterable[Mapping[str, Any]], max_passes: int) -> Iterator[Mapping[str, Any]]:
  if max_passes > 1 and iter(data) is data:
    raise ValueError(
        f"max_passes={max_passes} needs re-iterable data (a list, say), got a one-shot "
        f"iterator {type(data).__name__}")
  for _ in range(max_passes):
    yield from data


def eva_fit(
    data: Iterable[Mapping[str, Any]],
    in_features: Mapping[str, int],
    rank: int,
    *,
    rho: float = 2.0,
    tau: float = 0.99,
    center: bool = True,
    max_passes: int = 1,
) -> EvaResult:
  """Incremental PCA of each layer's inputs with early stopping and rank redistribution.

  The loop (per batch, as PEFT's EVA): (1) a layer whose first ``r_l`` components all have
  similarity >= ``tau`` stops (and resumes if ``r_l`` grows later); (2) every active layer
  updates its PCA with the batch (skipped if the batch has fewer rows than components);
  (3) ranks are redistributed with `redistribute_ranks` over ``rank * num_layers``. The loop
  ends when every layer has stopped or the data (``max_passes`` passes) is exhausted.

  Args:
    data: iterable of ``{path: inputs [..., in]}`` (leading axes are flattened into rows).
    in_features: ``{path: in}`` for every target layer (defines the layers and their order).
    rank: the nominal LoRA rank ``r``.
    rho: candidates per layer ``round(rho * r)`` (>= 1; capped at ``in``).
    tau: cosine threshold for convergence, in [0, 1].
    center: PCA (subtract the mean, as PEFT) or plain SVD of the raw inputs.
    max_passes: passes over ``data`` (needs a re-iterable ``data`` if > 1).

  Returns:
    An `EvaResult`.

  Raises:
    ValueError: on bad hyperparameters, a batch missing an active layer, a batch with the
      wrong feature size, or a layer that never received enough rows.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (64, 6)) * jnp.arange(6.0, 0, -1)
    >>> res = eva_fit([{"l": x[:32]}, {"l": x[32:]}], {"l": 6}, rank=2)
    >>> res.components["l"].shape, res.ranks
    ((4, 6), {'l': 2})

  References:
    Paischer et al., "One Initialization to Rule them All", 2024.
  """
  _check_hparams(rank, rho, tau, max_passes)
  paths = list(in_features)
  n_max = {p: min(round(rank * rho), int(in_features[p])) for p in paths}
  budget = rank * len(paths)
  states = {p: ipca_init(n_max[p], int(in_features[p])) for p in paths}
  evr = {p: jnp.zeros((n_max[p],), jnp.float32) for p in paths}
  conv = {p: np.zeros((n_max[p],), bool) for p in paths}
  updates = {p: 0 for p in paths}
  ranks = dict(n_max)
  stopped = {p: False for p in paths}

  for batch in _batches(data, max_passes):
    for p in paths:
      done = bool(np.all(conv[p][:ranks[p]]))
      if not stopped[p] and done:
        stopped[p] = True
      elif stopped[p] and not done:
        stopped[p] = False
    if all(stopped.values()):
      break
    for p in paths:
      if stopped[p]:
        continue
      if p not in batch:
        raise ValueError(f"batch has no inputs for layer {p!r}; keys: {sorted(batch)}")
      x = jnp.asarray(batch[p])
      if x.shape[-1] != in_features[p]:
        raise ValueError(
            f"inputs of {p!r} have {x.shape[-1]} features, expected in={in_features[p]}")
      x = x.reshape(-1, x.shape[-1])
      if x.shape[0] < n_max[p]:
        continue  # too few rows for the components (PEFT skips such batches too)
      states[p], evr[p], sim = ipca_update(states[p], x, center=center)
      if updates[p] > 0:
        conv[p] = np.asarray(sim) >= tau
      updates[p] += 1
    if all(updates[p] > 0 for p in paths):
      ranks = redistribute_ranks(evr, budget)

  never = [p for p in paths if updates[p] == 0]
  if never:
    raise ValueError(
        f"layers {never} received no batch with at least round(rho * rank) rows "
        f"({[n_max[p] for p in never]}); pass more or larger batches")
  converged = {p: bool(np.all(conv[p][:ranks[p]])) and updates[p] > 1 for p in paths}
  return EvaResult(
      {p: states[p].components for p in paths},
      {p: states[p].singular_values for p in paths},
      evr, ranks, converged, dict(updates))


def _check_hparams(rank, rho, tau, max_passes):
  if not isinstance(rank, int) or rank <= 0:
    raise ValueError(f"rank={rank!r} must be a positive int")
  if not rho >= 1.0:
    raise ValueError(f"rho={rho!r} must be >= 1")
  if not 0.0 <= tau <= 1.0:
    raise ValueError(f"tau={tau!r} must be in [0, 1]")
  if not isinstance(max_passes, int) or max_passes < 1:
    raise ValueError(f"max_passes={max_passes!r} must be a positive int")


# --------------------------------------------------------------------------------------
# The Reparam
# --------------------------------------------------------------------------------------


def eva(
    rank: int,
    alpha: float,
    targets: str,
    *,
    rho: float = 2.0,
    tau: float = 0.99,
    center: bool = True,
    whiten: bool = False,
    adjust_scaling: bool = True,
    max_passes: int = 1,
) -> Reparam:
  """EVA-initialized LoRA: ``K' = K + s * lora_a @ lora_b`` with data-driven ``lora_a``.

  ``init(params, key, data=...)`` runs `eva_fit` on ``data`` (an iterable of
  ``{path: inputs [..., in]}``, the inputs of every target layer on minibatches, e.g. from
  `collect_inputs`), then sets for each target with redistributed rank ``r_l > 0``

      lora_a = V_{:r_l}^T  (in, r_l)   [/ sqrt(S_{:r_l}) per column if whiten],
      lora_b = 0           (r_l, out),

  and ``s = alpha / r`` (``adjust_scaling``) or ``alpha / r_l``. Trainable
  ``{path: {"lora_a", "lora_b"}}`` as in `reweight.reparam.lora` (only layers with
  ``r_l > 0``); frozen: the parameters. A warning lists layers that did not converge.

  Args:
    rank: nominal rank ``r`` (the total budget is ``r * num_layers``).
    alpha: LoRA alpha.
    targets: regex over '/'-joined paths of 2-D ``(in, out)`` kernels.
    rho: candidate components per layer, ``round(rho * r)`` (>= 1; 1 disables
      redistribution).
    tau: cosine threshold for early stopping, in [0, 1].
    center: PCA of the inputs (PEFT) or SVD of the raw inputs.
    whiten: divide ``A``'s rows by the square root of the singular values (PEFT's option).
    adjust_scaling: keep ``s = alpha / r`` for every layer (PEFT's default).
    max_passes: passes over ``data`` if not every layer converged.

  Returns:
    A `Reparam` (with ``unapply``: ``frozen = params - delta``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"l1": {"kernel": jnp.ones((6, 4))}, "l2": {"kernel": jnp.ones((4, 2))}}
    >>> xs = jax.random.normal(jax.random.key(0), (4, 16, 6))
    >>> data = [{"l1/kernel": x, "l2/kernel": x[:, :4] ** 2} for x in xs]
    >>> rp = eva(2, 4.0, r".*kernel", tau=0.9)
    >>> trainable, frozen = rp.init(params, None, data=data)
    >>> sum(t["lora_a"].shape[1] for t in trainable.values())  # budget r * num_layers
    4

  References:
    Paischer et al., "One Initialization to Rule them All: Fine-tuning via Explained Variance
    Adaptation", 2024 (arXiv:2410.07170).
  """
  _check_hparams(rank, rho, tau, max_passes)

  def scale(r_l: int) -> float:
    return alpha / rank if adjust_scaling else alpha / r_l

  def init_fn(params: PyTree, key: jax.Array | None = None, *, data=None, **unused):
    del key, unused
    if data is None:
      raise ValueError("eva.init needs data=...: an iterable of {path: layer inputs}")
    paths = select(params, targets)
    flat = flatten_with_paths(params)
    res = eva_fit(data, {p: flat[p].shape[0] for p in paths}, rank, rho=rho, tau=tau,
                  center=center, max_passes=max_passes)
    not_conv = [p for p in paths if res.ranks[p] > 0 and not res.converged[p]]
    if not_conv:
      warnings.warn(f"EVA components did not converge (tau={tau}) for {not_conv}; using the "
                    "components after all the data", stacklevel=2)
    trainable = {}
    for p in paths:
      r_l = res.ranks[p]
      if r_l == 0:
        continue
      kernel = flat[p]
      a = res.components[p][:r_l]
      if whiten:
        a = a / jnp.sqrt(res.singular_values[p][:r_l])[:, None]
      trainable[p] = {"lora_a": a.T.astype(kernel.dtype),
                      "lora_b": jnp.zeros((r_l, kernel.shape[1]), kernel.dtype)}
    return trainable, params

  def delta(entry, dtype):
    r_l = entry["lora_a"].shape[1]
    return (scale(r_l) * (entry["lora_a"] @ entry["lora_b"])).astype(dtype)

  return additive(init_fn, delta)


# --------------------------------------------------------------------------------------
# Collecting layer inputs from a pure apply function
# --------------------------------------------------------------------------------------

_CALL_PRIMITIVES = frozenset({
    "jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
    "custom_vjp_call_jaxpr", "checkpoint", "remat",
})
_PASSTHROUGH = frozenset({"convert_element_type", "copy", "copy_p", "device_put",
                          "optimization_barrier"})


def _eval_capture(jaxpr, consts, args, tags, captured):
  """Evaluates ``jaxpr``; records the left operand of ``x @ K`` for tagged kernels ``K``."""
  env, tag = {}, {}

  def read(v):
    return v.val if isinstance(v, jex.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts, strict=True):
    env[v] = c
  for v, a, t in zip(jaxpr.invars, args, tags, strict=True):
    env[v] = a
    if t is not None:
      tag[v] = t
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    intags = [None if isinstance(v, jex.Literal) else tag.get(v)
              for v in eqn.invars]
    name = eqn.primitive.name
    sub = sub_jaxpr(eqn) if name in _CALL_PRIMITIVES else None
    if name == "dot_general" and intags[1] is not None and intags[0] is None:
      (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
      x = invals[0]
      if tuple(rc) == (0,) and not rb and not lb and tuple(lc) == (x.ndim - 1,):
        captured.setdefault(intags[1], []).append(x.reshape(-1, x.shape[-1]))
    if sub is not None and len(sub[0].invars) == len(invals):
      outs, outtags = _eval_capture(sub[0], sub[1], invals, intags, captured)
    else:
      bind_params = eqn.primitive.get_bind_params(eqn.params)
      if isinstance(bind_params, tuple):  # older jax: (subfuns, params)
        subfuns, bind_params = bind_params
        invals = [*subfuns, *invals]
      outs = eqn.primitive.bind(*invals, **bind_params)
      outs = list(outs) if eqn.primitive.multiple_results else [outs]
      passthrough = name in _PASSTHROUGH and len(outs) == 1
      outtags = [intags[0] if passthrough else None for _ in outs]
    for v, o, t in zip(eqn.outvars, outs, outtags, strict=True):
      env[v] = o
      if t is not None:
        tag[v] = t
  out_tags = [None if isinstance(v, jex.Literal) else tag.get(v)
              for v in jaxpr.outvars]
  return [read(v) for v in jaxpr.outvars], out_tags


def capture_inputs(
    apply_fn: Callable[[PyTree, Any], Any], params: PyTree, batch: Any, targets: str
) -> dict[str, jax.Array]:
  """Inputs ``[N, in]`` of every target kernel on one batch.

  Traces ``apply_fn(params, batch)`` and, for every ``dot_general`` contracting the last axis
  of an activation ``x`` with axis 0 of a target kernel ``(in, out)`` (``x @ K``, as
  ``nnx.Linear`` does), records ``x.reshape(-1, in)``; several uses of one kernel are
  concatenated. Runs under ``jax.jit``.

  Args:
    apply_fn: pure function of ``(params, batch)``.
    params: the parameter pytree.
    batch: one input batch.
    targets: regex over '/'-joined paths of 2-D kernels.

  Returns:
    ``{path: inputs [N, in]}``.

  Raises:
    ValueError: if a target kernel is never used as ``x @ K`` outside loops.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"l1": {"kernel": jnp.ones((3, 4))}, "l2": {"kernel": jnp.ones((4, 2))}}
    >>> f = lambda p, x: jnp.tanh(x @ p["l1"]["kernel"]) @ p["l2"]["kernel"]
    >>> xs = capture_inputs(f, params, jnp.ones((5, 3)), r".*kernel")
    >>> xs["l1/kernel"].shape, xs["l2/kernel"].shape
    ((5, 3), (5, 4))
  """
  paths = select(params, targets)
  return _capture_jit(apply_fn, tuple(paths))(params, batch)


@functools.lru_cache(maxsize=32)
def _capture_jit(apply_fn, paths):
  @jax.jit
  def run(params, batch):
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    tags = [path_str(p) if path_str(p) in paths else None for p, _ in leaves]
    closed = jax.make_jaxpr(apply_fn)(params, batch)
    n_batch = len(jax.tree.leaves(batch))
    args = [x for _, x in leaves] + jax.tree.leaves(batch)
    captured: dict[str, list[jax.Array]] = {}
    _eval_capture(closed.jaxpr, closed.consts, args, tags + [None] * n_batch, captured)
    missing = [p for p in paths if p not in captured]
    if missing:
      raise ValueError(
          f"no `x @ kernel` use found for {missing} (kernels used inside scan/while or with "
          "another contraction are not supported; sow the inputs and pass data yourself)")
    return {p: jnp.concatenate(captured[p], axis=0) for p in paths}

  return run


def collect_inputs(
    apply_fn: Callable[[PyTree, Any], Any], params: PyTree, batches: Iterable[Any], targets: str
) -> Iterator[dict[str, jax.Array]]:
  """Lazily maps `capture_inputs` over batches: the ``data`` argument of `eva`'s ``init``.

  Args:
    apply_fn: pure function of ``(params, batch)``.
    params: the parameter pytree.
    batches: an iterable of input batches.
    targets: regex over '/'-joined paths of 2-D kernels.

  Returns:
    An iterator of ``{path: inputs [N, in]}``, one per batch.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"l1": {"kernel": jnp.ones((3, 4))}}
    >>> f = lambda p, x: x @ p["l1"]["kernel"]
    >>> [d["l1/kernel"].shape for d in collect_inputs(f, params, [jnp.ones((2, 3))] * 2, "l1.*")]
    [(2, 3), (2, 3)]
  """
  for batch in batches:
    yield capture_inputs(apply_fn, params, batch, targets)

