"""Weight compander: a bounded, zero-repelling elementwise reparameterization.

The weight compander reparameterizes each target weight ``w`` through a latent ``v`` with an
odd, strictly increasing elementwise map that is a *compressor* for large values (weights are
bounded) and an *expander* for small values (weights are pushed away from zero), with
learnable hyperparameters.

**The exact function of the paper is not available offline** (only its abstract): this module
implements a documented compander family with the properties the abstract states, not the
paper's formula. The family is

    e(v)       = sign(v) * ((|v| + eps)^p - eps^p)          (expander, 0 < p <= 1)
    c(v; theta) = w_max * tanh(k * e(v))                   (compressor),
    theta = (w_max, k) = (exp(log_w_max), exp(log_k)).

Properties (for ``w_max, k, eps > 0`` and ``0 < p <= 1``):

1. odd: ``c(-v) = -c(v)`` (computed as ``sign(v) * f(|v|)``, so exactly odd in floating point);
2. strictly increasing, with derivative
   ``c'(v) = w_max * k * (1 - tanh^2(k e(v))) * p * (|v| + eps)^(p - 1) > 0``;
3. bounded: ``|c(v)| < w_max`` (``tanh`` saturates to exactly ``w_max`` in floating point
   for very large ``|v|``);
4. zero-repelling: for ``p < 1`` the slope at the origin, ``w_max * k * p * eps^(p-1)``, is
   larger than the slope elsewhere in the expander, and the weight grows like ``|v|^p``
   (faster than linear) away from zero, so small latents map to comparatively large weights and
   receive large effective step sizes; ``eps`` keeps the slope (and the gradient) finite;
5. learnable hyperparameters ``log_w_max`` and ``log_k`` (one scalar each per target tensor),
   kept in ``trainable``; ``p`` and ``eps`` are fixed.

The inverse is closed form: ``|e| = artanh(|w| / w_max) / k`` and
``|v| = (|e| + eps^p)^(1/p) - eps``.

References:
  Kolb, Weiler, Sickert, "Weight Compander: A Simple Weight Reparameterization for
  Regularization", IJCNN 2023 (abstract only; the function here is this library's own).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reweight.reparam._core import (
    Reparam,
    flatten_with_paths,
    path_str,
    select,
    unflatten_like,
)


def _is_none(x) -> bool:
  return x is None


def _check(p: float, eps: float) -> None:
  if not 0.0 < p <= 1.0:
    raise ValueError(f"p={p!r} must be in (0, 1]")
  if not eps > 0.0:
    raise ValueError(f"eps={eps!r} must be > 0")


def compand(
    v: jax.Array,
    w_max: float | jax.Array = 1.0,
    k: float | jax.Array = 1.0,
    *,
    p: float = 0.5,
    eps: float = 1e-2,
) -> jax.Array:
  """The compander map ``w = w_max * tanh(k * sign(v) * ((|v| + eps)^p - eps^p))``.

  Odd, strictly increasing, bounded by ``w_max``, with a steep (expanding) slope near zero
  for ``p < 1``. See the module docstring.

  Args:
    v: latent values (any shape).
    w_max: the bound on ``|w|`` (> 0; scalar or broadcastable).
    k: the compressor gain (> 0).
    p: the expander exponent in (0, 1]; ``p = 1`` is a plain ``tanh`` compressor.
    eps: smoothing of the expander at zero (> 0); keeps the slope finite.

  Returns:
    The effective weights ``w``, same shape as ``v``.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = compand(jnp.array([-100.0, -0.01, 0.0, 0.01, 100.0]), w_max=2.0)
    >>> bool(jnp.all(jnp.abs(w) <= 2.0)), bool(w[3] == -w[1]), float(w[2])
    (True, True, 0.0)

  References:
    Kolb et al., "Weight Compander", IJCNN 2023 (abstract only).
  """
  _check(p, eps)
  # sign with s(0) = +1 and |v| = s * v, so that the derivative at v = 0 is the one-sided
  # limit p * eps^(p - 1) * w_max * k (jnp.sign and jnp.abs would give 0 there).
  s = jnp.where(v >= 0, 1.0, -1.0).astype(v.dtype)
  a = s * v
  e = (a + eps) ** p - eps**p
  return s * (w_max * jnp.tanh(k * e))


def compand_inverse(
    w: jax.Array,
    w_max: float | jax.Array = 1.0,
    k: float | jax.Array = 1.0,
    *,
    p: float = 0.5,
    eps: float = 1e-2,
) -> jax.Array:
  """Inverse of `compand`: the latent ``v`` with ``compand(v) = w``; needs ``|w| < w_max``.

  ``|v| = (artanh(|w| / w_max) / k + eps^p)^(1/p) - eps``, ``sign(v) = sign(w)``.

  Args:
    w: weights with ``|w| < w_max``.
    w_max: the bound (> 0).
    k: the compressor gain (> 0).
    p: the expander exponent in (0, 1].
    eps: expander smoothing (> 0).

  Returns:
    The latent values, same shape as ``w`` (``inf`` where ``|w| >= w_max``).

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.array([-0.5, 0.0, 0.25])
    >>> bool(jnp.allclose(compand(compand_inverse(w)), w, atol=1e-6))
    True

  References:
    Kolb et al., "Weight Compander", IJCNN 2023 (abstract only).
  """
  _check(p, eps)
  e = jnp.arctanh(jnp.abs(w) / w_max) / k
  a = (e + eps**p) ** (1.0 / p) - eps
  return jnp.sign(w) * jnp.maximum(a, 0.0)


def compander(
    targets: str = r".*kernel",
    *,
    p: float = 0.5,
    eps: float = 1e-2,
    bound: float = 2.0,
    k: float = 1.0,
    learn_hparams: bool = True,
) -> Reparam:
  """Weight compander reparameterization of the target weights.

  Each target leaf ``W`` becomes ``W = compand(v; exp(log_w_max), exp(log_k), p, eps)``
  (see `compand`). At init ``w_max = bound * max|W|`` (1 if ``W = 0``), ``k`` as given and
  ``v = compand_inverse(W)``, so the effective weights equal the original ones (to float32
  round-off, about 1e-7 relative).

  ``trainable`` is a dict ``{path: {"v": latent, "log_w_max": scalar, "log_k": scalar}}``
  (the two scalars go to ``frozen`` instead when ``learn_hparams=False``); ``frozen`` holds the
  parameters with the target leaves removed (``None``).

  Args:
    targets: regex over '/'-joined parameter paths (``re.fullmatch``); any ndim.
    p: expander exponent in (0, 1] (smaller: stronger push away from zero).
    eps: expander smoothing at zero (> 0).
    bound: initial ``w_max`` as a multiple of ``max|W|`` per tensor (> 1).
    k: initial compressor gain (> 0).
    learn_hparams: keep ``log_w_max`` and ``log_k`` trainable.

  Returns:
    A `Reparam`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"dense": {"kernel": jnp.array([[0.5, -0.2], [0.1, 0.0]]),
    ...                     "bias": jnp.zeros(2)}}
    >>> rp = compander()
    >>> trainable, frozen = rp.init(params, jax.random.key(0))
    >>> sorted(trainable["dense/kernel"])
    ['log_k', 'log_w_max', 'v']
    >>> out = rp.apply(trainable, frozen)
    >>> bool(jnp.allclose(out["dense"]["kernel"], params["dense"]["kernel"], atol=1e-6))
    True

  References:
    Kolb et al., "Weight Compander: A Simple Weight Reparameterization for
    Regularization", IJCNN 2023 (abstract only; the function here is this library's own).
  """
  _check(p, eps)
  if not bound > 1.0:
    raise ValueError(f"bound={bound!r} must be > 1 (w_max must exceed max|W| at init)")
  if not k > 0.0:
    raise ValueError(f"k={k!r} must be > 0")

  def init(params, key=None, **data):
    del key, data
    paths = select(params, targets, ndim=None)
    flat = flatten_with_paths(params)
    trainable, fixed = {}, {}
    for path in paths:
      w = jnp.asarray(flat[path])
      amax = jnp.max(jnp.abs(w)).astype(jnp.float32)
      w_max = jnp.where(amax > 0, bound * amax, 1.0)
      log_w_max, log_k = jnp.log(w_max), jnp.log(jnp.float32(k))
      v = compand_inverse(w.astype(jnp.float32), jnp.exp(log_w_max), jnp.exp(log_k), p=p,
                          eps=eps).astype(w.dtype)
      hp = {"log_w_max": log_w_max, "log_k": log_k}
      if learn_hparams:
        trainable[path] = {"v": v, **hp}
      else:
        trainable[path] = {"v": v}
        fixed[path] = hp
      flat[path] = None
    frozen = {"params": unflatten_like(params, flat), "hparams": fixed}
    return trainable, frozen

  def apply(trainable, frozen):
    base = frozen["params"]
    flat = {}
    for path, t in trainable.items():
      hp = frozen["hparams"].get(path, t)
      w = compand(t["v"], jnp.exp(hp["log_w_max"]), jnp.exp(hp["log_k"]), p=p, eps=eps)
      flat[path] = w.astype(t["v"].dtype)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(base, is_leaf=_is_none)
    out = [flat.get(path_str(pth), leaf) for pth, leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)

  return Reparam(init, apply)
