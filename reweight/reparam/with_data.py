"""Binding the data of a data-driven initialization to a reparameterization.

Some reparameterizations initialize their adapters from data (EVA: an SVD of each target's
layer inputs; AdaLoRA-style budgets, ...) and take it as keyword arguments of
``init(params, key, **data)``. Code that builds the split for any `Reparam` (a trainer's
state builder, `reweight.reparam.init_train` called with no data) does not know these
arguments. `with_data` binds them once, so the result is an ordinary `Reparam`:

    with_data(r, **data).init(params, key) = r.init(params, key, **data).
"""

from __future__ import annotations

from reweight._types import PyTree
from reweight.reparam._core import Reparam


def with_data(reparam: Reparam, **data) -> Reparam:
  """``reparam`` whose ``init`` always receives ``data``.

  .. math::

    \\text{init}'(\\theta, k, \\ldots) = \\text{reparam.init}(\\theta, k, **\\text{data})

  The keyword arguments given to the returned ``init`` are ignored (the bound ``data`` is
  what the initialization uses); ``apply`` and ``unapply`` are ``reparam``'s.

  Args:
    reparam: a reparameterization whose ``init`` takes data as keyword arguments (e.g.
      `reweight.reparam.eva`, which takes ``data=``).
    **data: the keyword arguments to pass to ``reparam.init``.

  Returns:
    A `Reparam` with the same ``apply`` and ``unapply``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.reparam import Reparam, with_data
    >>> shift = Reparam(lambda params, key, offset=0.0: ({"b": offset}, params),
    ...                 lambda t, frozen: {"w": frozen["w"] + t["b"]})
    >>> bound = with_data(shift, offset=2.0)
    >>> trainable, frozen = bound.init({"w": jnp.zeros(2)}, jax.random.key(0))
    >>> trainable, bound.apply(trainable, frozen)["w"].tolist()
    ({'b': 2.0}, [2.0, 2.0])
  """
  if not isinstance(reparam, Reparam):
    raise ValueError(f"reparam must be a reweight.reparam.Reparam, got {type(reparam).__name__}")

  def init(params: PyTree, key, **ignored) -> tuple[PyTree, PyTree]:
    del ignored
    return reparam.init(params, key, **data)

  return Reparam(init, reparam.apply, reparam.unapply)
