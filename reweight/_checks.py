"""Argument validators shared by the whole package (one definition each).

They run where a factory is *called*, on Python values. Under `optax.inject_hyperparams`
(or any other tracing of a factory's arguments) numeric arguments arrive as tracers: the
range checks then skip the value they cannot see, and `static_int` says how to keep a
structural integer static.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import jax
import numpy as np


def is_traced(value: Any) -> bool:
  """True for a `jax.core.Tracer` (a value only known when the traced function runs)."""
  return isinstance(value, jax.core.Tracer)


def _not_traced(name: str, value: Any) -> None:
  if is_traced(value):
    raise TypeError(
        f"{name} is structural and cannot be traced; with optax.inject_hyperparams pass "
        f"static_args=({name!r},) or leave it at its default")


def check_int(name: str, value: Any, minimum: int = 0, *, whole_floats: bool = False) -> int:
  """``int(value)`` for an integer (not a bool) ``>= minimum``; else ValueError.

  With ``whole_floats=True`` a whole float (``2.0``) is accepted too.

  Examples:
    >>> check_int("steps", 3, 1)
    3
    >>> check_int("num_groups", 2.0, 1, whole_floats=True)
    2
    >>> check_int("steps", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: steps=0 must be an integer >= 1
  """
  _not_traced(name, value)
  integer = isinstance(value, int | np.integer) or (
      whole_floats and isinstance(value, float | np.floating) and float(value).is_integer())
  if isinstance(value, bool) or not integer or value < minimum:
    raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
  return int(value)


def static_int(name: str, value: Any) -> int:
  """``int(value)`` for a concrete integer; a clear TypeError for a traced one.

  A structural integer (an axis, a size, a count of iterations unrolled in Python) cannot
  be a traced hyperparameter. `optax.inject_hyperparams` traces every ``int`` or ``float``
  argument it is given unless named in ``static_args``.

  Examples:
    >>> static_int("channel_axis", -1)
    -1
  """
  _not_traced(name, value)
  integer = isinstance(value, int | np.integer) or (
      isinstance(value, np.ndarray | jax.Array) and value.ndim == 0
      and np.issubdtype(value.dtype, np.integer))
  if isinstance(value, bool) or not integer:
    raise TypeError(f"{name}={value!r} must be an int")
  return int(value)


def check_positive(name: str, value: Any) -> None:
  """ValueError unless ``value > 0``; a traced value is not checked.

  Examples:
    >>> check_positive("max_sv", 0.0)
    Traceback (most recent call last):
    ...
    ValueError: max_sv=0.0 must be > 0
  """
  if not is_traced(value) and not value > 0:
    raise ValueError(f"{name}={value!r} must be > 0")


def check_open_unit(name: str, value: Any) -> None:
  """ValueError unless ``0 < value < 1``; a traced value is not checked.

  Examples:
    >>> check_open_unit("beta1", 1.0)
    Traceback (most recent call last):
    ...
    ValueError: beta1=1.0 must be in (0, 1)
  """
  if not is_traced(value) and not 0.0 < value < 1.0:
    raise ValueError(f"{name}={value!r} must be in (0, 1)")


def check_choice(name: str, value: Any, valid: Collection[Any]) -> Any:
  """``value`` if it is one of ``valid``; else ValueError naming the valid ones.

  Examples:
    >>> check_choice("norm", "l3", ("l2", "l1"))
    Traceback (most recent call last):
    ...
    ValueError: norm='l3' is not one of ['l1', 'l2']
  """
  if value not in valid:
    raise ValueError(f"{name}={value!r} is not one of {sorted(valid)}")
  return value


def require_params(params: Any, who: str, hint: str = "") -> None:
  """ValueError when an optax ``update`` that needs ``params`` was called without them.

  Examples:
    >>> require_params(None, "swa")
    Traceback (most recent call last):
    ...
    ValueError: swa needs `params`: call update(updates, state, params)
  """
  if params is None:
    raise ValueError(f"{who} needs `params`: call update(updates, state, params){hint}")


__all__ = [
    "check_choice", "check_int", "check_open_unit", "check_positive", "is_traced",
    "require_params", "static_int",
]
