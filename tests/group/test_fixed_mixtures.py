"""stratified, proportional, temperature and upsample_at_end against their closed forms."""

import jax
import numpy as np
import pytest

import reweight
from reweight import group


def test_closed_forms():
  sizes = np.array([1000.0, 100.0, 10.0, 0.0])
  np.testing.assert_allclose(group.stratified(4).init().probs, 0.25)
  np.testing.assert_allclose(group.proportional(sizes).init().probs, sizes / sizes.sum())
  for tau in (0.5, 1.0, 3.0, 100.0):
    p = np.where(sizes > 0, sizes, 0.0) ** (1.0 / tau)
    np.testing.assert_allclose(group.temperature(sizes, tau).init().probs, p / p.sum(),
                               rtol=1e-5, atol=1e-7)
  # tau = 1 is proportional; huge sizes do not overflow.
  np.testing.assert_allclose(group.temperature([1e300, 1e300], 0.01).init().probs, [0.5, 0.5])


def test_upsample_switches_at_the_boundary_and_jits():
  base, target = [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]
  for fraction, total, switch in [(0.1, 100, 90), (0.3, 10, 7), (0.0, 10, 10), (1.0, 10, 0)]:
    policy = group.upsample_at_end(base, target, fraction, total)
    update = jax.jit(policy.update)
    state = policy.init()
    for t in range(total):
      state = update(state, step=t)
      np.testing.assert_allclose(state.probs, target if t >= switch else base, rtol=1e-6)
  # Without a step the update count is the step.
  policy = group.upsample_at_end(base, target, 0.5, 4)
  state = policy.init()
  seen = []
  for _ in range(4):
    state = policy.update(state)
    seen.append(float(state.probs[2]))
  np.testing.assert_allclose(seen, [0.1, 0.1, 0.6, 0.6], rtol=1e-6)


def test_policies_ignore_unused_inputs_and_count():
  state = group.stratified(3).update(group.stratified(3).init(), step=4, eval_losses=[1, 2])
  assert int(state.count) == 1 and reweight.group.probs_of(state).shape == (3,)


def test_bad_input():
  with pytest.raises(ValueError, match="num_groups=0"):
    group.stratified(0)
  with pytest.raises(ValueError, match="sizes=.* must be finite, non-negative"):
    group.proportional([1, -1])
  with pytest.raises(ValueError, match="tau=0 must be a positive"):
    group.temperature([1, 2], 0)
  with pytest.raises(ValueError, match=r"base_probs=\[0.5, 0.6\] sums to 1.1, not 1"):
    group.upsample_at_end([0.5, 0.6], [0.5, 0.5], 0.1, 10)
  with pytest.raises(ValueError, match="target_probs has 3 entries but num_groups=2"):
    group.upsample_at_end([0.5, 0.5], [0.2, 0.3, 0.5], 0.1, 10)
  with pytest.raises(ValueError, match="fraction=1.5"):
    group.upsample_at_end([0.5, 0.5], [0.5, 0.5], 1.5, 10)
  with pytest.raises(ValueError, match="has no `probs` field"):
    group.probs_of(reweight.EmptyState())
