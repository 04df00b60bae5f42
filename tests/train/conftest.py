"""Fixtures of the trainer tests: counting XLA compilations."""

import collections
import contextlib
import logging
import re

import jax
import pytest


class _CompileCounter(logging.Handler):
  """Counts XLA compilations by jitted function name while ``jax.log_compiles`` is on."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.counts = collections.Counter()

  def emit(self, record):
    m = re.match(r"Finished XLA compilation of jit\((\w+)\)", record.getMessage())
    if m:
      self.counts[m.group(1)] += 1


@contextlib.contextmanager
def _count_compiles():
  counter = _CompileCounter()
  logger = logging.getLogger("jax")
  logger.addHandler(counter)
  try:
    with jax.log_compiles(True):
      yield counter.counts
  finally:
    logger.removeHandler(counter)


@pytest.fixture
def count_compiles():
  """``with count_compiles() as counts:`` -> ``counts["eval_step"]``: compilations by name.

  Uses JAX's own log line ("Finished XLA compilation of jit(name)"), which
  ``jax.log_compiles`` raises to WARNING; a persistent-cache hit is still counted.
  """
  return _count_compiles
