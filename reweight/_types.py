"""Type aliases shared by the whole package (one definition each)."""

from __future__ import annotations

from typing import Any

import jax
import optax

PyTree = Any
"""Any JAX pytree (nested dicts, lists, tuples, NamedTuples, dataclasses of arrays)."""

ScalarOrSchedule = float | jax.Array | optax.Schedule
"""A constant (a Python float or a 0-d array) or an `optax.Schedule` of the step count."""

__all__ = ["PyTree", "ScalarOrSchedule"]
