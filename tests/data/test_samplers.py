"""Tests for reweight/data/samplers.py; orders re-derived with NumPy from the recipes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reweight.data import samplers as sm

# --------------------------------------------------------------- epoch_sampler


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_epoch_sampler_matches_permutations(drop_remainder):
  n, b = 23, 5
  s = sm.epoch_sampler(n, b, seed=9, drop_remainder=drop_remainder)
  spe = n // b if drop_remainder else math.ceil(n / b)
  assert s.steps_per_epoch == spe and s.batch_size == b
  for epoch in range(3):
    perm = np.random.default_rng([sm.EPOCH_SALT, 9, epoch]).permutation(n)
    got = np.concatenate([s.indices(epoch * spe + i) for i in range(spe)])
    np.testing.assert_array_equal(got, perm[: spe * b] if drop_remainder else perm)
  if not drop_remainder:
    assert len(s.indices(spe - 1)) == n - (spe - 1) * b


def test_epoch_sampler_epochs_differ_and_pure_in_step():
  s = sm.epoch_sampler(50, 10, seed=0)
  e0 = np.concatenate([s.indices(t) for t in range(5)])
  e1 = np.concatenate([s.indices(t) for t in range(5, 10)])
  assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(50))
  assert not np.array_equal(e0, e1)
  fresh = sm.epoch_sampler(50, 10, seed=0)
  for t in [17, 3, 9, 0, 17]:  # any call order
    np.testing.assert_array_equal(fresh.indices(t), s.indices(t))


def test_epoch_sampler_bad_batch_size():
  with pytest.raises(ValueError, match=r"batch_size=11 exceeds the 10 examples"):
    sm.epoch_sampler(10, 11, seed=0)
  with pytest.raises(ValueError, match=r"batch_size=0"):
    sm.epoch_sampler(10, 0, seed=0)
  with pytest.raises(ValueError, match=r"step=-1"):
    sm.epoch_sampler(10, 2, seed=0).indices(-1)


# ------------------------------------------------------------- mixture_sampler


def _groups():
  return np.repeat(np.arange(3), [40, 25, 5])


def test_mixture_counts_and_membership():
  groups = _groups()
  p = np.array([0.5, 0.3, 0.2])
  b = 16
  s = sm.mixture_sampler(groups, lambda step: p, b, seed=1)
  counts = np.stack([np.bincount(groups[s.indices(t)], minlength=3) for t in range(2000)])
  assert np.all(counts.sum(1) == b)
  base = np.floor(p * b)
  remaining = b - base.sum()
  assert np.all(counts >= base) and np.all(counts <= base + remaining)
  # E[count_g] = p_g B; 2000 steps: standard error of the mean < 0.02.
  np.testing.assert_allclose(counts.mean(0), p * b, atol=0.08)
  # Within a group, examples are uniform: group 2 (5 members) is hit evenly.
  hits = np.concatenate([s.indices(t) for t in range(2000)])
  hits2 = np.bincount(hits[groups[hits] == 2] - 65, minlength=5)
  np.testing.assert_allclose(hits2 / hits2.sum(), np.full(5, 0.2), atol=0.03)


def test_mixture_no_duplicates_when_group_large_enough():
  groups = _groups()
  s = sm.mixture_sampler(groups, [0.5, 0.5, 0.0], 20, seed=0)
  for t in range(50):
    idx = s.indices(t)
    assert len(np.unique(idx)) == len(idx)
    assert not np.any(groups[idx] == 2)


def test_mixture_proportions_change_with_step_and_normalise():
  groups = _groups()
  s = sm.mixture_sampler(groups, lambda t: [0, 0, 3] if t < 5 else [1, 0, 0], 8, seed=0)
  assert np.all(groups[s.indices(4)] == 2)  # 8 draws from a 5-example group: replacement
  assert np.all(groups[s.indices(5)] == 0)


def test_mixture_deterministic_in_seed_and_step():
  groups = _groups()
  a = sm.mixture_sampler(groups, [0.4, 0.4, 0.2], 10, seed=3)
  b = sm.mixture_sampler(groups, [0.4, 0.4, 0.2], 10, seed=3)
  c = sm.mixture_sampler(groups, [0.4, 0.4, 0.2], 10, seed=4)
  for t in [7, 0, 7, 100]:
    np.testing.assert_array_equal(a.indices(t), b.indices(t))
  assert any(not np.array_equal(a.indices(t), c.indices(t)) for t in range(5))


def test_mixture_bad_proportions():
  groups = _groups()
  with pytest.raises(ValueError, match=r"proportions_fn\(0\) = \[1, 1\].*3 finite"):
    sm.mixture_sampler(groups, [1, 1], 8, 0).indices(0)
  with pytest.raises(ValueError, match=r"proportions_fn\(0\) = \[1, -1, 1\]"):
    sm.mixture_sampler(groups, [1, -1, 1], 8, 0).indices(0)
  with pytest.raises(ValueError, match=r"empty groups \[3\]"):
    sm.mixture_sampler(groups, [1, 1, 1, 1], 8, 0, num_groups=4).indices(0)
  with pytest.raises(ValueError, match=r"num_groups=2"):
    sm.mixture_sampler(groups, [1, 1], 8, 0, num_groups=2)


# ---------------------------------------------------------- curriculum_sampler


def test_curriculum_only_emits_allowed_prefix():
  n, b = 200, 16
  order = np.random.default_rng(0).permutation(n)
  pacing = lambda t: min(1.0, 0.05 + 0.95 * t / 100)
  s = sm.curriculum_sampler(order, pacing, b, seed=2, num_examples=n)
  for t in range(0, 120, 3):
    k = min(n, math.ceil(pacing(t) * n - 1e-9))
    idx = s.indices(t)
    assert idx.shape == (b,)
    assert set(idx.tolist()) <= set(order[:k].tolist())
  # At full pacing, every example can appear.
  seen = np.concatenate([s.indices(t) for t in range(100, 400)])
  assert len(np.unique(seen)) == n


def test_curriculum_matches_recipe_and_is_pure():
  order = np.arange(50)[::-1].copy()
  pacing = lambda t: 0.1 if t < 10 else 0.7
  s = sm.curriculum_sampler(order, pacing, 8, seed=5)
  for t in [12, 3, 12]:
    k = 5 if t < 10 else 35  # ceil(0.1 * 50), ceil(0.7 * 50)
    rng = np.random.default_rng([sm.CURRICULUM_SALT, 5, t])
    expected = order[rng.choice(k, 8, replace=k < 8)]
    np.testing.assert_array_equal(s.indices(t), expected)
  assert set(s.indices(3).tolist()) <= {45, 46, 47, 48, 49}


def test_curriculum_bad_pacing_and_order():
  order = np.arange(10)
  for bad in [0.0, 1.5, float("nan")]:
    with pytest.raises(ValueError, match=r"pacing\(0\) = .*\(0, 1\]"):
      sm.curriculum_sampler(order, lambda t, v=bad: v, 4, 0).indices(0)
  with pytest.raises(ValueError, match=r"num_examples=5"):
    sm.curriculum_sampler(order, lambda t: 1.0, 4, 0, num_examples=5)


# ----------------------------------------------------- random_subset_per_epoch


def test_rs2_stream_recipe_and_no_repeats_until_exhausted():
  n, frac, b = 100, 0.3, 10
  s = sm.random_subset_per_epoch(n, frac, seed=4, batch_size=b)
  m = 30
  assert s.steps_per_epoch == 3
  epochs = 7
  got = np.concatenate([s.indices(t) for t in range(epochs * 3)])
  stream = np.concatenate(
      [np.random.default_rng([sm.RS2_SALT, 4, r]).permutation(n) for r in range(3)]
  )
  np.testing.assert_array_equal(got, stream[: epochs * m])
  # Every window of n consecutive stream positions aligned to a round is a permutation.
  assert sorted(got[:n].tolist()) == list(range(n))
  # The first three epochs (90 examples) are all distinct, and each epoch is a fresh subset.
  assert len(set(got[:90].tolist())) == 90


def test_rs2_drop_remainder_and_fraction_rounding():
  s = sm.random_subset_per_epoch(10, 0.7, seed=0, batch_size=3)  # m = 7 (not 8)
  assert s.steps_per_epoch == 2
  s2 = sm.random_subset_per_epoch(10, 0.7, seed=0, batch_size=3, drop_remainder=False)
  assert s2.steps_per_epoch == 3 and len(s2.indices(2)) == 1
  stream = np.random.default_rng([sm.RS2_SALT, 0, 0]).permutation(10)
  np.testing.assert_array_equal(np.concatenate([s2.indices(t) for t in range(3)]), stream[:7])
  # With drop_remainder the epoch's 7th example is skipped; epoch 1 starts at position 7.
  np.testing.assert_array_equal(s.indices(2), stream[7:10])


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.2])
def test_rs2_bad_fraction(fraction):
  with pytest.raises(ValueError, match=rf"fraction={fraction!r}.*\(0, 1\]"):
    sm.random_subset_per_epoch(10, fraction, 0, batch_size=2)
