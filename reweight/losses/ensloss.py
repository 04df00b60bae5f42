"""EnsLoss: stochastic calibrated loss ensembles for binary classification (Dai, 2024).

EnsLoss never writes a loss down. SGD only sees a loss through its derivative at each
example's margin ``z_i = y_i f(x_i)`` (``y`` in {-1, +1}), so every step draws a fresh set of
*valid* loss derivatives: negative (the loss decreases in the margin, needed for
calibration) and non-decreasing in the margin (convexity). Sorting random draws against the
sorted margins gives exactly that, and

.. math::

  \\ell_i = \\text{sg}(g_i)\\, z_i, \\qquad
  \\frac{\\partial \\ell_i}{\\partial z_i} = g_i

is a surrogate whose gradient is the drawn derivative. One step:

1. draw ``r_j ~ N(0, 1)`` and ``g_j = -BoxCox^{-1}_lambda(r_j)`` (``lambda = 0``:
   ``g = -exp(r)``, minus a log-normal), clip ``g >= -1``;
2. sort the ``g`` ascending and give the ``k``-th smallest margin the ``k``-th smallest
   (most negative) derivative, so the worst-classified examples get the steepest ones;
3. *superlinear tail* (authors' code): for margins ``z > 1`` divide the derivative by ``z``
   (the derivative of a loss like ``-log z`` there, which decays to 0 as in the logistic loss);
4. subtract ``1e-6`` (authors' code), so every derivative is strictly negative;
5. ``loss = mean_i sg(g_i) z_i`` over the valid examples.

Steps 3-4 follow the authors' repository (``ensLoss.forward`` in ``losses.py``); the paper's
description stops at step 2. Set ``superlinear_tail=False`` for the bare construction.
Masked or non-finite margins take no rank and contribute 0.

**Sharding.** The sort is over the *global* batch. Under `jax.jit` with the batch sharded
this holds by construction. Inside `shard_map` / `pmap` pass ``axis_name``: the margins and
masks are all-gathered (``B`` floats and bools per device), every device draws the same
``[B_global]`` normals from the same (replicated) ``key``, ranks globally and keeps its own
slice. The per-example losses are therefore identical in every layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reweight import parallel
from reweight.parallel import AxisName

Array = jax.Array


def binary_margins(scores: Array, labels: Array) -> Array:
  """Margins ``z = y f(x)`` with ``y = 2 * labels - 1`` for labels in {0, 1}.

  Args:
    scores: ``[B]`` real-valued scores ``f(x)`` (or ``[B, 1]``).
    labels: ``[B]`` labels in {0, 1} (ints or bools).

  Returns:
    ``[B]`` float32 margins.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.losses import binary_margins
    >>> binary_margins(jnp.array([2.0, 2.0, -0.5]), jnp.array([1, 0, 0])).tolist()
    [2.0, -2.0, 0.5]
  """
  scores = jnp.asarray(scores)
  labels = jnp.asarray(labels)
  if scores.ndim == 2 and scores.shape[1] == 1:
    scores = scores[:, 0]
  if scores.ndim != 1 or labels.shape != scores.shape:
    raise ValueError(f"scores of shape {scores.shape} need labels of shape {scores.shape[:1]}"
                     f" (binary labels in {{0, 1}}), got labels of shape {labels.shape}")
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    bad = ~np.isin(np.asarray(labels), (0, 1))
    if bad.any():
      raise ValueError(f"binary label {np.asarray(labels)[bad].flat[0].item()!r} is not one of "
                       "[0, 1]")
  y = 2.0 * labels.astype(jnp.float32) - 1.0
  return scores.astype(jnp.float32) * y


def _inverse_box_cox(r: Array, lam: float) -> Array:
  if lam == 0.0:
    return jnp.exp(r)
  return jnp.power(jnp.maximum(1.0 + lam * r, 0.0), 1.0 / lam)


def _derivatives(margins, key, mask, axis_name, superlinear_tail, box_cox_lambda):
  """``(g, valid)``: the drawn derivatives (0 where invalid) and the valid mask."""
  margins = jnp.asarray(margins)
  if margins.ndim != 1:
    raise ValueError(f"margins must have shape [batch], got shape {margins.shape}")
  z = jax.lax.stop_gradient(margins).astype(jnp.float32)
  valid = jnp.isfinite(z)
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != margins.shape:
      raise ValueError(f"mask has shape {mask.shape} but margins have shape {margins.shape}")
    valid = valid & mask.astype(bool)
  local_size = z.shape[0]
  axis_name = parallel.resolve_axis_name(axis_name)
  if axis_name is not None:
    z_all = jax.lax.all_gather(z, axis_name, tiled=True)
    valid_all = jax.lax.all_gather(valid, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * local_size
  else:
    z_all, valid_all, offset = z, valid, 0
  size = z_all.shape[0]
  # Draws at invalid positions are pushed past the end, so the first n_valid sorted draws
  # are an i.i.d. sample of size n_valid.
  draws = -_inverse_box_cox(jax.random.normal(key, (size,), jnp.float32), box_cox_lambda)
  draws = jnp.maximum(jnp.sort(jnp.where(valid_all, draws, jnp.inf)), -1.0)
  order = jnp.argsort(jnp.where(valid_all, z_all, jnp.inf), stable=True)
  rank = jnp.zeros(size, jnp.int32).at[order].set(jnp.arange(size, dtype=jnp.int32))
  g = jax.lax.dynamic_slice_in_dim(draws[rank], offset, local_size)
  if superlinear_tail:
    g = jnp.where(z > 1.0, g / jnp.where(z > 1.0, z, 1.0), g)
  g = g - 1e-6
  return jax.lax.stop_gradient(jnp.where(valid, g, 0.0)), valid


def ensloss_derivatives(margins: Array, key: Array, mask: Array | None = None, *,
                        axis_name: AxisName = None, superlinear_tail: bool = True,
                        box_cox_lambda: float = 0.0) -> Array:
  """The random loss derivatives ``g [B]`` of one `ensloss` step (0 on invalid examples).

  ``ensloss(z, key, ...) == ensloss_derivatives(z, key, ...) * z`` on valid examples; the
  arguments are those of `ensloss`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.losses import ensloss_derivatives
    >>> g = ensloss_derivatives(jnp.array([0.3, -1.0, 2.0]), jax.random.key(0),
    ...                         mask=jnp.array([True, True, False]))
    >>> bool(g[1] <= g[0] < 0), float(g[2])
    (True, 0.0)
  """
  _check_box_cox(box_cox_lambda)
  return _derivatives(margins, key, mask, axis_name, superlinear_tail,
                      float(box_cox_lambda))[0]


def _check_box_cox(box_cox_lambda):
  if not isinstance(box_cox_lambda, int | float) or not np.isfinite(box_cox_lambda):
    raise ValueError(f"box_cox_lambda={box_cox_lambda!r} must be a finite float")


def ensloss(margins: Array, key: Array, mask: Array | None = None, *,
            axis_name: AxisName = None, superlinear_tail: bool = True,
            box_cox_lambda: float = 0.0) -> Array:
  """Per-example EnsLoss ``sg(g_i) * z_i`` with freshly drawn, margin-sorted derivatives.

  .. math::

    g = \\text{sort}\\big(\\max(-e^{r}, -1)\\big),\\ r \\sim N(0, I), \\qquad
    g_{\\pi(k)} = g_{(k)} \\text{ for margins sorted } z_{\\pi(1)} \\le \\dots, \\qquad
    \\ell_i = \\text{sg}(g_i)\\, z_i

  (then, by default, ``g_i /= z_i`` where ``z_i > 1`` and ``g -= 1e-6``; see the module
  docstring). The values are not a loss to monitor (they are negative); their gradient is
  the drawn derivatives. Average them over the valid examples, e.g. with
  ``reweight.weighted(per_example_fn, reweight.uniform())``; pass a new ``key`` every step.

  Args:
    margins: ``[B]`` margins ``y f(x)`` (see `binary_margins`); gradients flow through them.
    key: a PRNG key, the same on every device (replicated) and new every step.
    mask: optional ``[B]`` booleans; masked examples take no rank and get loss 0.
    axis_name: inside `shard_map` / `pmap`, the batch axis name(s): margins are
      all-gathered so the sort is global (see the module docstring).
    superlinear_tail: divide the derivative by the margin where ``z > 1`` (authors' code).
    box_cox_lambda: the inverse Box-Cox transform of the normal draws; 0 gives ``exp``.

  Returns:
    ``[B]`` per-example losses (0 where masked or where the margin is not finite).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.losses import ensloss
    >>> z = jnp.array([0.3, -1.0, 0.1, 0.5])
    >>> losses = ensloss(z, jax.random.key(0))
    >>> g = jax.grad(lambda z: ensloss(z, jax.random.key(0)).sum())(z)
    >>> bool(jnp.all(g < 0)), bool(jnp.all(jnp.diff(g[jnp.argsort(z)]) >= 0))
    (True, True)

  References:
    Dai, "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in
    Classification", arXiv:2409.00908, 2024 (code: github.com/statmlben/ensLoss).
  """
  _check_box_cox(box_cox_lambda)
  g, valid = _derivatives(margins, key, mask, axis_name, superlinear_tail,
                          float(box_cox_lambda))
  margins = jnp.asarray(margins).astype(jnp.float32)
  return jnp.where(valid, g * jnp.where(valid, margins, 0.0), 0.0)
