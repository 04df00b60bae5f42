"""Projections of the weights as optax transforms: AdamP/SGDP, NaP and spectral constraints.

Every function here returns an `optax.GradientTransformationExtraArgs`. The weight
projections (`normalize_and_project`, `spectral_normalize`, `spectral_hammer`,
`spectral_clip`) go at the end of an `optax.chain` and map the incoming update ``u`` to

    u' = P(theta + u) - theta,

so that after ``optax.apply_updates`` the parameters are ``P(theta + u)``; they need
``params``. `project_radial` is different: it wraps an optimizer and removes the radial
component of that optimizer's update (AdamP/SGDP), then adds decoupled weight decay.

Conventions: weight matrices are in Flax layout, ``(..., fan_in, fan_out)``; the spectral
operations view a leaf with ``ndim >= 2`` as the matrix ``K.reshape(-1, fan_out)`` (so a
convolution kernel ``(kh, kw, in, out)`` has ``fan_in = kh * kw * in``). Leaves with
``ndim < 2`` (biases, norm scales) are left untouched by every projection.

References:
  Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
  Weights", ICLR 2021.
  Lyle et al., "Normalization and effective learning rates in reinforcement learning",
  NeurIPS 2024.
  Newhouse et al., "Training Transformers with Enforced Lipschitz Constants", 2025.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from reweight._checks import check_positive, require_params, static_int
from reweight._types import PyTree, ScalarOrSchedule


def _is_zero(x) -> bool:
  """True for a Python zero (a traced value, e.g. from `optax.inject_hyperparams`, is not)."""
  return isinstance(x, int | float) and x == 0


def _value(x: ScalarOrSchedule, count: jax.Array) -> jax.Array:
  return x(count) if callable(x) else jnp.asarray(x)


# --------------------------------------------------------------------------------------
# AdamP / SGDP
# --------------------------------------------------------------------------------------


class ProjectRadialState(NamedTuple):
  """State of `project_radial`: a step count (for schedules) and the inner state."""

  count: jax.Array
  inner: optax.OptState


def _channel_matrix(x: jax.Array, channel_axis: int) -> jax.Array:
  x = jnp.moveaxis(x, channel_axis, 0)
  return x.reshape(x.shape[0], -1)


def _abs_cosine(g: jax.Array, w: jax.Array, eps: float) -> jax.Array:
  """Row-wise |cos(g, w)| with each norm clamped at eps (as `torch.cosine_similarity`)."""
  gn = jnp.maximum(jnp.linalg.norm(g, axis=1), eps)
  wn = jnp.maximum(jnp.linalg.norm(w, axis=1), eps)
  return jnp.abs(jnp.sum((g / gn[:, None]) * (w / wn[:, None]), axis=1))


def _remove_radial(u: jax.Array, w: jax.Array, eps: float) -> jax.Array:
  """Row-wise ``u - w_hat <w_hat, u>`` with ``w_hat = w / (||w|| + eps)``."""
  w_hat = w / (jnp.linalg.norm(w, axis=1, keepdims=True) + eps)
  return u - w_hat * jnp.sum(w_hat * u, axis=1, keepdims=True)


def _radial_projection(u, g, w, *, delta, wd_ratio, eps, channel_axis):
  """AdamP's projection of one leaf: returns the projected update and the decay ratio."""
  shape = w.shape
  channel_axis = -1 if channel_axis is None else static_int("channel_axis", channel_axis)
  axis = channel_axis % len(shape)
  moved = (shape[axis],) + shape[:axis] + shape[axis + 1:]
  # Channel view: one row per output channel.
  wc, gc, uc = (_channel_matrix(x, channel_axis) for x in (w, g, u))
  cond_c = jnp.max(_abs_cosine(gc, wc, eps)) < delta / math.sqrt(wc.shape[1])
  proj_c = jnp.moveaxis(_remove_radial(uc, wc, eps).reshape(moved), 0, channel_axis)
  # Layer view: the whole tensor as one row.
  wl, gl, ul = (x.reshape(1, -1) for x in (w, g, u))
  cond_l = jnp.max(_abs_cosine(gl, wl, eps)) < delta / math.sqrt(wl.shape[1])
  proj_l = _remove_radial(ul, wl, eps).reshape(shape)
  out = jnp.where(cond_c, proj_c, jnp.where(cond_l, proj_l, u))
  ratio = jnp.where(cond_c | cond_l, wd_ratio, 1.0)
  return out.astype(u.dtype), ratio


def _project_leaf(u, g, w, delta, wd_ratio, eps, channel_axis):
  """`_radial_projection` for ``ndim > 1`` leaves; identity (ratio 1) otherwise."""
  if w.ndim > 1:
    return _radial_projection(
        u, g, w, delta=delta, wd_ratio=wd_ratio, eps=eps, channel_axis=channel_axis)
  return u, 1.0


def project_radial(
    inner: optax.GradientTransformation,
    *,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    learning_rate: ScalarOrSchedule = 1.0,
    channel_axis: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamP/SGDP projection as a combinator around any optax optimizer.

  For every parameter ``w`` with ``ndim > 1``, with ``g`` the incoming gradient and ``u`` the
  update of ``inner``: if the weights look scale-invariant, i.e.

      max_rows |cos(g_row, w_row)| < delta / sqrt(row_size)

  first in the *channel view* (one row per output channel, ``channel_axis``), else in the
  *layer view* (the whole tensor as one row), the radial component of the update is removed
  row-wise in that view,

      u <- u - w_hat <w_hat, u>,   w_hat = w / (||w||_row + eps),

  and the weight decay is scaled by ``wd_ratio``. Then decoupled weight decay is added,

      u <- u - lr(t) * weight_decay * ratio * w   (ratio = wd_ratio if projected else 1),

  for every leaf (``ratio = 1`` for ``ndim <= 1``). ``lr`` is ``learning_rate`` (the
  optimizer's learning rate, so that the decay matches ``w <- w (1 - lr wd ratio)``).
  Since the projection is linear in ``u``, projecting the learning-rate-scaled update of
  ``inner`` is the same as projecting AdamP's ``perturb`` before scaling.

  Args:
    inner: the optimizer whose updates are projected (must output the final update, with
      the learning rate applied, e.g. ``optax.adam(lr)``).
    delta: the cosine threshold (0.1 in the paper).
    wd_ratio: the weight-decay multiplier on projected parameters.
    eps: norm clamp in the cosine and the normalization of ``w``.
    weight_decay: decoupled weight-decay coefficient (0 disables it).
    learning_rate: multiplies ``weight_decay`` (a float or an ``optax.Schedule`` of the step).
    channel_axis: the output-channel axis of ``ndim > 1`` leaves (``None``, the default, is
      the last axis, as in Flax kernels; 0 for PyTorch layout). A structural int: with
      `optax.inject_hyperparams`, name it in ``static_args`` when you pass it.

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> opt = project_radial(optax.sgd(0.1), weight_decay=1.0, learning_rate=0.1)
    >>> w = {"k": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> g = {"k": jnp.array([[0.0, 1.0], [1.0, 0.0]])}  # orthogonal to every column of w
    >>> u, _ = opt.update(g, opt.init(w), w)
    >>> u["k"]  # -0.1 g - 0.1 * 1.0 * wd_ratio * w
    Array([[-0.01, -0.1 ],
           [-0.1 , -0.01]], dtype=float32)

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021.
  """
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return ProjectRadialState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None, **extra_args):
    require_params(params, "project_radial")
    new_updates, inner_state = inner.update(updates, state.inner, params, **extra_args)
    lr = _value(learning_rate, state.count)

    def leaf(u, g, w):
      u, ratio = _project_leaf(u, g, w, delta, wd_ratio, eps, channel_axis)
      if not _is_zero(weight_decay):
        u = u - (lr * weight_decay * ratio * w).astype(u.dtype)
      return u

    out = jax.tree.map(leaf, new_updates, updates, params)
    return out, ProjectRadialState(optax.safe_increment(state.count), inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


class _AdamPMomentsState(NamedTuple):
  count: jax.Array
  mu: PyTree
  nu: PyTree


def _scale_by_adamp_moments(b1: float, b2: float, eps: float, nesterov: bool):
  """AdamP's ``perturb / (1 - b1^t)`` (Adam, with AdamP's Nesterov variant)."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return _AdamPMomentsState(jnp.zeros([], jnp.int32), zeros, zeros)

  def update(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    bc1, bc2 = 1 - b1**t, 1 - b2**t

    def leaf(m, v, g):
      denom = jnp.sqrt(v) / jnp.sqrt(bc2) + eps
      num = b1 * m + (1 - b1) * g if nesterov else m
      return (num / denom / bc1).astype(g.dtype)

    return jax.tree.map(leaf, mu, nu, updates), _AdamPMomentsState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def adamp(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    *,
    nesterov: bool = False,
    channel_axis: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamP: Adam with radial-component removal on scale-invariant weights.

  With ``m, v`` Adam's moments, ``bc_i = 1 - b_i^t``, ``denom = sqrt(v)/sqrt(bc2) + eps``:

      perturb = m / denom                        (nesterov: (b1 m + (1 - b1) g) / denom)
      perturb <- radial projection (see `project_radial`), ratio = wd_ratio if projected
      w <- w (1 - lr * weight_decay * ratio) - (lr / bc1) * perturb.

  Built as ``project_radial(adam-moments + learning rate, ...)``; matches the PyPI ``adamp``
  package (``adamp.AdamP``) step for step.

  Args:
    learning_rate: learning rate (float or schedule).
    b1: first-moment decay.
    b2: second-moment decay.
    eps: Adam's epsilon, also used in the cosine and the projection.
    weight_decay: decoupled weight decay.
    delta: cosine threshold.
    wd_ratio: weight-decay multiplier on projected parameters.
    nesterov: AdamP's Nesterov variant.
    channel_axis: output-channel axis of ``ndim > 1`` leaves (``None``, the default, is the
      last axis, as in Flax; 0 for torch).

  Returns:
    An `optax.GradientTransformationExtraArgs` (``update`` needs ``params``). It works
    under ``optax.inject_hyperparams(...)(learning_rate=...)`` as optax's own aliases do
    (``nesterov`` is a bool and ``channel_axis`` defaults to ``None``, both static); an
    explicit ``channel_axis`` must be named in ``static_args``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> opt = adamp(1e-2, weight_decay=1e-2)
    >>> w = {"k": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> u, state = opt.update(w, opt.init(w), w)
    >>> float(optax.apply_updates(w, u)["k"][0, 0]) < 1.0
    True

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021.
  """
  inner = optax.chain(
      _scale_by_adamp_moments(b1, b2, eps, nesterov), optax.scale_by_learning_rate(learning_rate)
  )
  return project_radial(
      inner, delta=delta, wd_ratio=wd_ratio, eps=eps, weight_decay=weight_decay,
      learning_rate=learning_rate, channel_axis=channel_axis)


class SGDPState(NamedTuple):
  """State of `sgdp`: step count and the momentum buffer."""

  count: jax.Array
  buf: PyTree


def sgdp(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    *,
    nesterov: bool = False,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    channel_axis: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SGDP: SGD with momentum and radial-component removal on scale-invariant weights.

      buf = momentum buf + (1 - dampening) g;  d = g + momentum buf (nesterov) or buf
      d <- radial projection (see `project_radial`), ratio = wd_ratio if projected
      w <- w (1 - lr * weight_decay * ratio / (1 - momentum)) - lr * d.

  Matches the PyPI ``adamp`` package (``adamp.SGDP``) step for step, including one detail of
  that implementation: without Nesterov the direction ``d`` *is* the momentum buffer, so the
  projection is also applied to the stored buffer (``buf <- d`` after projection). That is
  why `sgdp` is not literally ``project_radial(optax.sgd(...))`` (which keeps the unprojected
  momentum); it uses the same projection and decay code.

  Args:
    learning_rate: learning rate (float or schedule).
    momentum: momentum coefficient in [0, 1).
    dampening: dampening of the gradient in the momentum buffer.
    weight_decay: decoupled weight decay (divided by ``1 - momentum`` as in SGDP).
    nesterov: Nesterov momentum.
    eps: norm clamp in the cosine and the projection.
    delta: cosine threshold.
    wd_ratio: weight-decay multiplier on projected parameters.
    channel_axis: output-channel axis of ``ndim > 1`` leaves (``None``, the default, is the
      last axis, as in Flax; 0 for torch).

  Returns:
    An `optax.GradientTransformationExtraArgs` (``update`` needs ``params``). It works
    under ``optax.inject_hyperparams(...)(learning_rate=...)`` as optax's own aliases do
    (``nesterov`` is a bool and ``channel_axis`` defaults to ``None``, both static); an
    explicit ``channel_axis`` must be named in ``static_args``.

  Examples:
    >>> import jax.numpy as jnp
    >>> opt = sgdp(0.1, momentum=0.9)
    >>> w = {"b": jnp.ones(2)}
    >>> u, _ = opt.update({"b": jnp.ones(2)}, opt.init(w), w)
    >>> u["b"]
    Array([-0.1, -0.1], dtype=float32)

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021.
  """
  if isinstance(momentum, int | float) and not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum={momentum!r} must be in [0, 1)")
  decay = weight_decay / (1 - momentum)

  def init(params):
    return SGDPState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "sgdp")
    lr = _value(learning_rate, state.count)

    def leaf(g, b, w):
      b = momentum * b + (1 - dampening) * g
      d = g + momentum * b if nesterov else b
      d, ratio = _project_leaf(d, g, w, delta, wd_ratio, eps, channel_axis)
      if not nesterov:
        b = d
      u = -lr * d
      if not _is_zero(weight_decay):
        u = u - lr * decay * ratio * w
      return u.astype(g.dtype), b

    treedef = jax.tree.structure(updates)
    pairs = jax.tree.map(leaf, updates, state.buf, params)
    u = treedef.unflatten([x[0] for x in treedef.flatten_up_to(pairs)])
    buf = treedef.unflatten([x[1] for x in treedef.flatten_up_to(pairs)])
    return u, SGDPState(optax.safe_increment(state.count), buf)

  return optax.GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------------------------------
# Normalize-and-project
# --------------------------------------------------------------------------------------


class NormalizeAndProjectState(NamedTuple):
  """Initial Frobenius norms of the ``ndim > 1`` leaves (0-d arrays; unused for others)."""

  norms: PyTree


def normalize_and_project() -> optax.GradientTransformationExtraArgs:
  """Normalize-and-project (NaP): keep each weight tensor at its initial norm.

  For every leaf with ``ndim > 1`` (Frobenius norm over the whole tensor):

      W' = (W + u) * ||W_0|| / ||W + u||,   u' = W' - W,

  with ``||W_0||`` recorded by ``init``. Other leaves pass through. (NaP pairs this with
  normalization layers before nonlinearities, which make the network invariant to these
  norms; the projection keeps the effective learning rate from decaying as norms grow.)

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> w = {"k": jnp.array([[3.0, 4.0]])}
    >>> opt = optax.chain(optax.sgd(1.0), normalize_and_project())
    >>> u, _ = opt.update({"k": jnp.array([[-3.0, 0.0]])}, opt.init(w), w)
    >>> new = optax.apply_updates(w, u)["k"]  # (6, 4) rescaled to norm 5
    >>> round(float(jnp.linalg.norm(new)), 5), round(float(new[0, 0] / new[0, 1]), 5)
    (5.0, 1.5)

  References:
    Lyle et al., "Normalization and effective learning rates in reinforcement learning",
    NeurIPS 2024.
  """

  def init(params):
    return NormalizeAndProjectState(
        jax.tree.map(lambda w: jnp.linalg.norm(w.reshape(-1)).astype(jnp.float32), params))

  def update(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "normalize_and_project")

    def leaf(u, w, n0):
      if w.ndim < 2:
        return u
      new = w + u
      n = jnp.linalg.norm(new.reshape(-1))
      scaled = jnp.where(n > 0, new * (n0 / jnp.where(n > 0, n, 1.0)), new)
      return (scaled - w).astype(u.dtype)

    return jax.tree.map(leaf, updates, params, state.norms), state

  return optax.GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------------------------------
# Spectral constraints in RMS -> RMS units
# --------------------------------------------------------------------------------------


class SpectralState(NamedTuple):
  """Persistent power-iteration vectors ``[fan_out]`` for the ``ndim >= 2`` leaves."""

  vectors: PyTree


def _matrix(w: jax.Array) -> tuple[jax.Array, float]:
  """``(K.reshape(-1, fan_out), c)`` with ``c = sqrt(fan_out / fan_in)``."""
  m = w.reshape(-1, w.shape[-1])
  return m, math.sqrt(m.shape[1] / m.shape[0])


def _normalize(x: jax.Array) -> jax.Array:
  n = jnp.linalg.norm(x)
  return x / jnp.where(n > 0, n, 1.0)


def _power_iteration(m: jax.Array, r: jax.Array, num_iters: int):
  """Top singular triplet of ``m`` by power iteration from right vector ``r``.

  Returns ``(l, sigma, r)`` with ``m r ~ sigma l`` (``l``, ``r`` unit norm).
  """

  def body(_, r):
    return _normalize(m.T @ _normalize(m @ r))

  r = jax.lax.fori_loop(0, num_iters, body, r)
  mr = m @ r
  sigma = jnp.linalg.norm(mr)
  return _normalize(mr), sigma, r


def _init_vectors(params, key, init_iters):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))[:len(leaves)]
  out = []
  for w, k in zip(leaves, keys, strict=True):
    if w.ndim < 2:
      out.append(jnp.zeros((0,), jnp.float32))
      continue
    m, c = _matrix(w.astype(jnp.float32))
    r = _normalize(jax.random.normal(k, (m.shape[1],), jnp.float32))
    out.append(_power_iteration(m / c, r, init_iters)[2])
  return jax.tree.unflatten(treedef, out)


def _spectral_transform(project_fn, num_iters: int, key, init_iters: int):
  """Shared plumbing: ``u' = c * project(((w + u) / c), r) - w`` with persistent ``r``."""

  def init(params):
    return SpectralState(_init_vectors(params, key, init_iters))

  def update(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "spectral projection")
    leaves_u, treedef = jax.tree.flatten(updates)
    leaves_w = treedef.flatten_up_to(params)
    leaves_r = treedef.flatten_up_to(state.vectors)
    out_u, out_r = [], []
    for u, w, r in zip(leaves_u, leaves_w, leaves_r, strict=True):
      if w.ndim < 2:
        out_u.append(u)
        out_r.append(r)
        continue
      new = (w + u).astype(jnp.float32)
      m, c = _matrix(new)
      l_vec, sigma, r = _power_iteration(m / c, r, num_iters)
      projected = c * project_fn(m / c, l_vec, sigma, r)
      out_u.append((projected.reshape(w.shape) - w).astype(u.dtype))
      out_r.append(r)
    return (jax.tree.unflatten(treedef, out_u),
            SpectralState(jax.tree.unflatten(treedef, out_r)))

  return optax.GradientTransformationExtraArgs(init, update)


def spectral_normalize(
    num_iters: int = 2,
    max_sv: float = 1.0,
    *,
    key: jax.Array | None = None,
    init_iters: int = 30,
) -> optax.GradientTransformationExtraArgs:
  """Spectral normalization of the weights in RMS->RMS units, by power iteration.

  With ``W = theta + u`` viewed as ``(fan_in, fan_out)`` and ``c = sqrt(fan_out / fan_in)``
  (so that ``||W||_{RMS->RMS} = sigma_max(W) / c``):

      M = W / c,   sigma = power-iteration estimate of sigma_max(M),
      W' = c * M / max(1, sigma / max_sv).

  The right singular vector is kept in the state and refined by ``num_iters`` iterations per
  step (warm start), after ``init_iters`` iterations from a random vector at ``init``.

  Args:
    num_iters: power iterations per step.
    max_sv: the bound on the RMS->RMS operator norm.
    key: PRNG key for the initial vectors (default ``jax.random.key(0)``).
    init_iters: power iterations at ``init``.

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> w = {"k": jnp.diag(jnp.array([3.0, 0.5]))}
    >>> opt = spectral_normalize()
    >>> u, _ = opt.update({"k": jnp.zeros((2, 2))}, opt.init(w), w)
    >>> new = optax.apply_updates(w, u)["k"]  # diag(3, 0.5) / 3
    >>> [round(float(x), 4) for x in jnp.diag(new)]
    [1.0, 0.1667]

  References:
    Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018.
    Newhouse et al., "Training Transformers with Enforced Lipschitz Constants", 2025.
  """
  check_positive("max_sv", max_sv)
  key = jax.random.key(0) if key is None else key

  def project(m, l_vec, sigma, r):
    del l_vec, r
    return m / jnp.maximum(1.0, sigma / max_sv)

  return _spectral_transform(project, num_iters, key, init_iters)


def spectral_hammer(
    num_iters: int = 4,
    max_sv: float = 1.0,
    *,
    key: jax.Array | None = None,
    init_iters: int = 30,
) -> optax.GradientTransformationExtraArgs:
  """Spectral hammer in RMS->RMS units: set the top singular value to ``max_sv``.

  With ``M = (theta + u) / c``, ``c = sqrt(fan_out / fan_in)``, and ``(l, sigma, r)`` the
  top singular triplet of ``M`` from power iteration (persistent right vector),

      W' = c * (M + (max_sv - sigma) l r^T),

  a rank-1 update that moves the largest singular value to exactly ``max_sv`` and leaves the
  other singular values and vectors unchanged (if the second singular value already exceeds
  ``max_sv`` it stays the largest: the hammer only hits the top one). Unlike
  `spectral_normalize`, it also *raises* a top singular value below ``max_sv``; this follows
  the hammer of the Lipschitz-transformers code (``M + (w_max - sigma) u v^T``).

  The error of the result is first order in the error of the singular vectors (while
  `spectral_normalize` only needs ``sigma``, which is second order), so the hammer wants more
  iterations per step.

  Args:
    num_iters: power iterations per step (warm-started from the state's vector).
    max_sv: the target top singular value (RMS->RMS units).
    key: PRNG key for the initial vectors (default ``jax.random.key(0)``).
    init_iters: power iterations at ``init``.

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> w = {"k": jnp.diag(jnp.array([3.0, 0.5]))}
    >>> opt = spectral_hammer()
    >>> u, _ = opt.update({"k": jnp.zeros((2, 2))}, opt.init(w), w)
    >>> optax.apply_updates(w, u)["k"]
    Array([[1. , 0. ],
           [0. , 0.5]], dtype=float32)

  References:
    Newhouse et al., "Training Transformers with Enforced Lipschitz Constants", 2025.
  """
  check_positive("max_sv", max_sv)
  key = jax.random.key(0) if key is None else key

  def project(m, l_vec, sigma, r):
    return m + (max_sv - sigma) * jnp.outer(l_vec, r)

  return _spectral_transform(project, num_iters, key, init_iters)


def spectral_clip(max_sv: float = 1.0) -> optax.GradientTransformationExtraArgs:
  """Exact spectral clipping in RMS->RMS units, by SVD.

  With ``M = (theta + u) / c = U diag(s) V^T``, ``c = sqrt(fan_out / fan_in)``:

      W' = c * U diag(min(s, max_sv)) V^T.

  Args:
    max_sv: the bound on every singular value (RMS->RMS units).

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> w = {"k": jnp.diag(jnp.array([3.0, 0.5, 2.0]))}
    >>> opt = spectral_clip()
    >>> u, _ = opt.update({"k": jnp.zeros((3, 3))}, opt.init(w), w)
    >>> jnp.diag(optax.apply_updates(w, u)["k"])
    Array([1. , 0.5, 1. ], dtype=float32)

  References:
    Newhouse et al., "Training Transformers with Enforced Lipschitz Constants", 2025.
  """
  check_positive("max_sv", max_sv)

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "spectral_clip")

    def leaf(u, w):
      if w.ndim < 2:
        return u
      m, c = _matrix((w + u).astype(jnp.float32))
      uu, s, vt = jnp.linalg.svd(m / c, full_matrices=False)
      projected = c * (uu * jnp.minimum(s, max_sv)) @ vt
      return (projected.reshape(w.shape) - w).astype(u.dtype)

    return jax.tree.map(leaf, updates, params), state

  return optax.GradientTransformationExtraArgs(init, update)
