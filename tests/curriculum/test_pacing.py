"""Tests for reweight.curriculum.pacing against NumPy closed forms and DeepSpeed's rules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight.curriculum import pacing


def values(schedule, steps):
  return np.asarray(jax.jit(schedule)(jnp.asarray(steps)))


def np_wu(kind, t, T, a, b):
  """Wu et al.'s families (their code, as fractions of N before rounding), clipped."""
  x = t / (a * T)
  raw = {
      "linear": b + (1 - b) * x,
      "quad": b + (1 - b) * x**2,
      "root": b + (1 - b) * np.sqrt(x),
      "step": b + np.floor(x),
      "exp": b + (1 - b) / (np.exp(10) - 1) * (np.exp(10 * np.minimum(x, 2.0)) - 1),
      "log": b + (1 - b) * (1 + 0.1 * np.log(x + np.exp(-10))),
  }[kind]
  return np.clip(raw, b, 1.0)


@pytest.mark.parametrize("kind", pacing.PACING_KINDS)
@pytest.mark.parametrize("a, b", [(0.5, 0.2), (0.8, 0.0), (1.0, 0.1), (1.6, 0.4)])
def test_wu_families_match_closed_form(kind, a, b):
  T = 200
  t = np.arange(0, T + 20)
  g = pacing.pacing_function(kind, T, a, b)
  got = values(g, t)
  np.testing.assert_allclose(got, np_wu(kind, t.astype(np.float64), T, a, b), rtol=2e-5,
                             atol=2e-6)
  assert got[0] == pytest.approx(b, abs=1e-7)  # starts at b
  assert np.all(np.diff(got) >= 0)  # monotone
  assert np.all((got >= b) & (got <= 1.0))
  if a <= 1.0:
    full = int(math.ceil(a * T))
    assert got[full] == 1.0 and np.all(got[full:] == 1.0)  # full data from aT on
  else:
    assert got[-1] < 1.0


def test_step_with_stages_and_jit():
  g = pacing.step(100, a=0.8, b=0.2, num_stages=4)
  t = np.arange(0, 101)
  ref = np.clip(0.2 + 0.8 * np.floor(4 * t / 80) / 4, 0.2, 1.0)
  np.testing.assert_allclose(values(g, t), ref, rtol=1e-6)
  assert float(jax.jit(g)(jnp.int32(40))) == pytest.approx(0.6)


def test_pacing_errors():
  with pytest.raises(ValueError, match=r"kind='cubic' is not one of \['exp', 'linear'"):
    pacing.pacing_function("cubic", 100)
  with pytest.raises(ValueError, match="a=0.0 must be > 0"):
    pacing.linear(100, a=0.0)
  with pytest.raises(ValueError, match="b=1.5 must be in"):
    pacing.root(100, b=1.5)
  with pytest.raises(ValueError, match="total_steps=0"):
    pacing.quad(0)


@pytest.mark.parametrize("n, s, inc, length", [(1000, 0.04, 1.9, 100), (37, 0.1, 1.5, 7)])
def test_hacohen_exponential_matches_closed_form(n, s, inc, length):
  i = np.arange(0, 60 * length, max(1, length // 4))
  g = pacing.hacohen_exponential(n, s, inc, length)
  ref = np.floor(n * np.minimum(s * inc ** np.floor(i / length), 1.0)).astype(np.int64)
  got = values(g, i)
  np.testing.assert_array_equal(got, ref)
  assert got[0] == math.floor(n * s) and got[-1] == n
  assert np.all(np.diff(got) >= 0)
  frac = values(pacing.hacohen_exponential(n, s, inc, length, as_fraction=True), i)
  np.testing.assert_allclose(frac, ref / n, rtol=1e-6)
  with pytest.raises(ValueError, match="inc=1.0 must be > 1"):
    pacing.hacohen_exponential(n, s, 1.0, length)


def ds_fixed_root(t, lo, hi, total, root, ds):
  """DeepSpeed's CurriculumScheduler fixed_root rule, written out."""
  d = (float(t) / total) ** (1.0 / root)
  d = math.floor(d * (hi - lo) + lo)
  d -= d % ds
  return min(d, hi)


@pytest.mark.parametrize("lo, hi, total, root, ds", [
    (64, 1024, 1000, 2, 8),
    (10, 1020, 500, 2, 8),  # neither bound a multiple of the step
    (8, 2048, 300, 1, 16),  # fixed_linear
    (1, 100, 97, 3, 1),
    (5, 5, 10, 2, 4),  # min == max
])
def test_deepspeed_fixed_root_matches_rule(lo, hi, total, root, ds):
  d = pacing.deepspeed_fixed_root(lo, hi, total, root, ds)
  t = np.arange(0, 3 * total)
  ref = [ds_fixed_root(x, lo, hi, total, root, ds) for x in t]
  got = values(d, t)
  np.testing.assert_array_equal(got, ref)
  assert np.all(np.diff(got) >= 0)
  assert got[-1] == (hi if hi > lo else lo - lo % ds)
  if lo % ds == 0 and hi % ds == 0:
    assert got[0] == lo and got[total] == hi  # endpoints exactly


def test_deepspeed_fixed_discrete_matches_rule():
  diffs, max_steps = [16, 32, 64, 128], [5, 10, 40]
  d = pacing.deepspeed_fixed_discrete(diffs, max_steps)

  def rule(t):
    if t > max_steps[-1]:
      return diffs[-1]
    for i, m in enumerate(max_steps):
      if t <= m:
        return diffs[i]

  t = np.arange(0, 60)
  np.testing.assert_array_equal(values(d, t), [rule(x) for x in t])
  with pytest.raises(ValueError, match="one entry fewer"):
    pacing.deepspeed_fixed_discrete([1, 2], [5, 10])
  with pytest.raises(ValueError, match="strictly increasing"):
    pacing.deepspeed_fixed_discrete([1, 2, 3], [10, 5])
  with pytest.raises(ValueError, match="max_difficulty=4 must be >= min_difficulty=8"):
    pacing.deepspeed_fixed_root(8, 4, 100)
