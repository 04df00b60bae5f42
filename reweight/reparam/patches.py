"""Weight-difference patches: task arithmetic and Robust Weight Signatures.

A *patch* is the difference between fine-tuned and base weights, a pytree with the
structure of the parameters:

    tau = theta_finetuned - theta_base.

Patches are added, scaled, removed and combined linearly,

    theta = theta_base + sum_c w_c * tau_c,

and a patch can be made orthogonal to another one (Robust Weight Signatures keep the part
of a corruption-specific patch that is not explained by the standard fine-tuning patch):

    project_off(tau, sigma) = tau - (<tau, sigma> / <sigma, sigma>) * sigma.

All functions are pure `jax.tree.map`s over leaves and jit.

References:
  Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.
  Cai et al., "Robust Weight Signatures: Gaining Robustness as Easy as Patching Weights?",
  ICML 2023.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from reweight._types import PyTree


def _check_same_structure(a: PyTree, b: PyTree, names: tuple[str, str]) -> None:
  sa, sb = jax.tree.structure(a), jax.tree.structure(b)
  if sa != sb:
    raise ValueError(
        f"{names[0]} and {names[1]} must have the same tree structure; got {sa} and {sb}"
    )


def patch(base: PyTree, finetuned: PyTree) -> PyTree:
  """Weight-difference patch ``tau = finetuned - base``.

  Args:
    base: base parameters.
    finetuned: fine-tuned parameters with the same structure and shapes.

  Returns:
    The difference pytree.

  Examples:
    >>> import jax.numpy as jnp
    >>> patch({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.5, 1.0])})["w"]
    Array([ 0.5, -1. ], dtype=float32)

  References:
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.
  """
  _check_same_structure(base, finetuned, ("base", "finetuned"))
  return jax.tree.map(lambda b, f: f - b, base, finetuned)


def patch_scale(tau: PyTree, scale: float | jax.Array) -> PyTree:
  """Scaled patch ``scale * tau``.

  Args:
    tau: a patch.
    scale: a scalar.

  Returns:
    The scaled patch.

  Examples:
    >>> import jax.numpy as jnp
    >>> patch_scale({"w": jnp.array([1.0, -2.0])}, 0.5)["w"]
    Array([ 0.5, -1. ], dtype=float32)

  References:
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.
  """
  return jax.tree.map(lambda t: scale * t, tau)


def patch_add(params: PyTree, tau: PyTree, scale: float | jax.Array = 1.0) -> PyTree:
  """Applies a patch: ``params + scale * tau``.

  Args:
    params: parameters.
    tau: a patch with the structure of ``params``.
    scale: the patch coefficient.

  Returns:
    The patched parameters.

  Examples:
    >>> import jax.numpy as jnp
    >>> patch_add({"w": jnp.array([1.0])}, {"w": jnp.array([2.0])}, scale=0.5)["w"]
    Array([2.], dtype=float32)

  References:
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.
  """
  _check_same_structure(params, tau, ("params", "patch"))
  return jax.tree.map(lambda p, t: p + scale * t, params, tau)


def patch_remove(params: PyTree, tau: PyTree, scale: float | jax.Array = 1.0) -> PyTree:
  """Removes a patch (task negation / forgetting): ``params - scale * tau``.

  Args:
    params: parameters.
    tau: a patch with the structure of ``params``.
    scale: the patch coefficient.

  Returns:
    The parameters with the patch subtracted.

  Examples:
    >>> import jax.numpy as jnp
    >>> patch_remove({"w": jnp.array([1.0])}, {"w": jnp.array([2.0])})["w"]
    Array([-1.], dtype=float32)

  References:
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.
  """
  _check_same_structure(params, tau, ("params", "patch"))
  return jax.tree.map(lambda p, t: p - scale * t, params, tau)


def _vdot(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.sum(a.astype(jnp.float32) * b.astype(jnp.float32))


def project_off(tau: PyTree, other: PyTree, *, per_leaf: bool = False) -> PyTree:
  """Removes from ``tau`` its projection on ``other``.

  Global (default): one coefficient for the whole pytree, with the inner product
  ``<a, b> = sum over leaves and entries of a * b`` (the parameters as one flat vector),

      tau' = tau - (<tau, other> / <other, other>) * other,

  so ``<tau', other> = 0`` globally. With ``per_leaf=True`` each leaf is projected on the
  matching leaf of ``other`` with its own coefficient (orthogonal leaf by leaf, which
  implies global orthogonality). Where ``<other, other> = 0`` the coefficient is 0 and
  ``tau`` is returned unchanged.

  Args:
    tau: the patch to make orthogonal (e.g. a corruption-specific fine-tuning patch).
    other: the direction to remove (e.g. the standard fine-tuning patch).
    per_leaf: project leaf by leaf instead of globally.

  Returns:
    A patch with the structure of ``tau``.

  Examples:
    >>> import jax.numpy as jnp
    >>> out = project_off({"w": jnp.array([1.0, 1.0])}, {"w": jnp.array([1.0, 0.0])})
    >>> out["w"]
    Array([0., 1.], dtype=float32)

  References:
    Cai et al., "Robust Weight Signatures: Gaining Robustness as Easy as Patching
    Weights?", ICML 2023.
  """
  _check_same_structure(tau, other, ("patch", "other"))

  def coef(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

  if per_leaf:
    def leaf(t, o):
      c = coef(_vdot(t, o), _vdot(o, o))
      return (t - c * o).astype(t.dtype)
    return jax.tree.map(leaf, tau, other)
  leaves_t, leaves_o = jax.tree.leaves(tau), jax.tree.leaves(other)
  num = sum((_vdot(t, o) for t, o in zip(leaves_t, leaves_o, strict=True)), jnp.float32(0))
  den = sum((_vdot(o, o) for o in leaves_o), jnp.float32(0))
  c = coef(num, den)
  return jax.tree.map(lambda t, o: (t - c * o).astype(t.dtype), tau, other)


def apply_patches(
    base: PyTree, patches: Sequence[PyTree], weights: Sequence[float] | jax.Array
) -> PyTree:
  """Linear combination of patches on a base model: ``base + sum_c w_c * tau_c``.

  Args:
    base: base parameters.
    patches: a sequence of C patches, each with the structure of ``base``.
    weights: C coefficients (a sequence or a ``[C]`` array; may be traced, e.g. to
      optimize the coefficients by gradient).

  Returns:
    The patched parameters.

  Raises:
    ValueError: if the number of weights differs from the number of patches.

  Examples:
    >>> import jax.numpy as jnp
    >>> base = {"w": jnp.zeros(2)}
    >>> taus = [{"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 1.0])}]
    >>> apply_patches(base, taus, [0.5, 2.0])["w"]
    Array([0.5, 2. ], dtype=float32)

  References:
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.
    Cai et al., "Robust Weight Signatures: Gaining Robustness as Easy as Patching
    Weights?", ICML 2023.
  """
  patches = list(patches)
  n_weights = len(weights) if not hasattr(weights, "shape") else weights.shape[0]
  if n_weights != len(patches):
    raise ValueError(
        f"len(weights)={n_weights} must equal the number of patches={len(patches)}"
    )
  for i, tau in enumerate(patches):
    _check_same_structure(base, tau, ("base", f"patches[{i}]"))
  out = base
  for i, tau in enumerate(patches):
    out = jax.tree.map(lambda p, t, i=i: p + weights[i] * t, out, tau)
  return out
