"""Dynamic loss-based sample reweighting (Sow et al., ICLR 2025).

Over the *global* batch, losses are mapped affinely onto ``[-delta, delta]``:

.. math::

  h_i = \\frac{2\\delta\\, \\ell_i}{\\max(\\ell_{max}-\\ell_{min}, 10^{-6})}
        - \\frac{\\delta(\\ell_{max}+\\ell_{min})}{\\max(\\ell_{max}-\\ell_{min}, 10^{-6})}

then scored by a strategy ``f(h)``:

=============  ==============================  =======================================
strategy       f(h)                            emphasis
=============  ==============================  =======================================
``linupper``   ``min(h + delta, delta)``       high losses, flat at the top
``quadratic``  ``1 - h^2 / delta^2``           medium losses (drops both extremes)
``extremes``   ``|h|``                         both the easiest and the hardest
``upper``      ``0.5 h + 0.5 delta``           linear in the loss
=============  ==============================  =======================================

and the weights are the closed-form maximizer of ``sum_i w_i f_i - r KL(w || uniform)`` on
the simplex, ``w = softmax((f - max f) / r)``, scaled to mean one over the valid examples.
Large ``r`` tends to uniform. The paper trains uniformly for the first 1000-2000 steps
(``warmup_steps``), then uses ``r`` in [0.4, 1] (124M GPT-2: quadratic, r=1; 210M/684M:
extremes, r=0.4).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from reweight import parallel
from reweight._checks import check_choice
from reweight._types import ScalarOrSchedule
from reweight.base import (
  CountState,
  Weighting,
  current_step,
  resolve,
  softmax_weights,
  valid_mask,
)
from reweight.parallel import AxisName

STRATEGIES = {
    "linupper": lambda h, d: jnp.minimum(h + d, d),
    "quadratic": lambda h, d: 1.0 - h * h / (d * d),
    "extremes": lambda h, d: jnp.abs(h),
    "upper": lambda h, d: 0.5 * h + 0.5 * d,
}


def normalized_losses(losses, valid, delta: float = 1.0, axis_name: AxisName = None):
  """The affine map of the valid losses onto ``[-delta, delta]`` (global min/max)."""
  lmax = parallel.batch_max(losses, axis_name, where=valid)
  lmin = parallel.batch_min(losses, axis_name, where=valid)
  span = jnp.maximum(lmax - lmin, 1e-6)
  h = 2.0 * delta * losses / span - delta * (lmax + lmin) / span
  return jnp.where(valid, h, 0.0)


Strategy = Literal["linupper", "quadratic", "extremes", "upper"]


def loss_based(strategy: Strategy = "linupper", r: ScalarOrSchedule = 1.0, *, delta: float = 1.0,
               warmup_steps: int = 0, axis_name: AxisName = None) -> Weighting:
  """Loss-based reweighting: ``w = softmax(f(h(loss)) / r)``, mean one.

  Args:
    strategy: one of ``linupper``, ``quadratic``, ``extremes``, ``upper``.
    r: the KL regularizer (softmax temperature), a positive float or a schedule
      ``step -> r``. Large ``r`` gives nearly uniform weights.
    delta: half-width of the normalized loss range.
    warmup_steps: weights are uniform while ``step < warmup_steps``.
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.

  Returns:
    A `Weighting` whose state counts updates (used as the step when none is passed).

  Examples:
    >>> import jax.numpy as jnp, reweight
    >>> w = reweight.sample.loss_based("upper", r=1.0)
    >>> weights, state = w.update(jnp.array([0.0, 1.0]), w.init())
    >>> [round(x, 4) for x in weights.tolist()]  # 2 * softmax([0, 1])
    [0.5379, 1.4621]

  References:
    Sow et al., "Dynamic Loss-Based Sample Reweighting for Improved Large Language Model
    Pretraining", ICLR 2025.
  """
  check_choice("strategy", strategy, STRATEGIES)
  if not callable(r) and not r > 0:
    raise ValueError(f"r={r!r} must be a positive float (or a schedule step -> r)")
  if not delta > 0:
    raise ValueError(f"delta={delta!r} must be positive")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps={warmup_steps!r} must be >= 0")
  score = STRATEGIES[strategy]

  def init(key=None):
    del key
    return CountState(jnp.zeros([], jnp.int32))

  def update(losses, state, *, mask=None, step=None, **extras):
    del extras
    valid = valid_mask(losses, mask)
    t = current_step(state.count, step)
    temperature = resolve(r, t, "r")
    f = score(normalized_losses(losses.astype(jnp.float32), valid, delta, axis_name), delta)
    weights = softmax_weights(f / temperature, valid, axis_name)
    weights = jnp.where(t < warmup_steps, valid.astype(jnp.float32), weights)
    return jax.lax.stop_gradient(weights), CountState(state.count + 1)

  return Weighting(init, update)
