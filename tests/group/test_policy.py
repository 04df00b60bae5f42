"""The shared pieces of reweight.group.policy against NumPy: checks, per-group sums, logs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight.group import policy


def test_group_sums_and_diagnostics_match_numpy():
  rng = np.random.default_rng(0)
  values = rng.exponential(size=40).astype(np.float32)
  weights = rng.uniform(0.1, 2.0, size=40).astype(np.float32)
  groups = rng.integers(0, 4, 40).astype(np.int32)
  valid = rng.random(40) > 0.2
  sums, counts = jax.jit(policy.group_sums, static_argnums=3)(values, groups, valid, 4)
  d = policy.group_diagnostics(jnp.asarray(weights), jnp.asarray(values), jnp.asarray(groups),
                               jnp.asarray(valid), 4)
  w_total = weights[valid].sum()
  for g in range(4):
    sel = valid & (groups == g)
    np.testing.assert_allclose(sums[g], values[sel].sum(), rtol=1e-5)
    assert counts[g] == sel.sum() == d["group_count"][g]
    np.testing.assert_allclose(d["group_loss"][g], values[sel].mean(), rtol=1e-5)
    np.testing.assert_allclose(d["group_weight_share"][g], weights[sel].sum() / w_total,
                               rtol=1e-5)


def test_out_of_range_ids_count_nowhere_under_jit():
  groups = jnp.array([0, 1, 5, -1])  # traced: no error, the last two are left out
  inside, ids = jax.jit(policy.in_range, static_argnums=2)(groups, jnp.ones(4, bool), 2)
  assert inside.tolist() == [True, True, False, False] and ids.tolist() == [0, 1, 0, 0]
  sums, counts = jax.jit(policy.group_sums, static_argnums=3)(
      jnp.array([1.0, 2.0, 4.0, 8.0]), groups, jnp.ones(4, bool), 2)
  assert sums.tolist() == [1.0, 2.0] and counts.tolist() == [1.0, 1.0]


def test_checks_name_the_bad_value():
  np.testing.assert_array_equal(policy.check_probs([0.25, 0.75], 2), [0.25, 0.75])
  with pytest.raises(ValueError, match=r"probs=\[0.5, 0.6\] sums to 1.1, not 1"):
    policy.check_probs([0.5, 0.6])
  with pytest.raises(ValueError, match="must be finite and non-negative"):
    policy.check_probs([1.5, -0.5])
  with pytest.raises(ValueError, match="must be a 1-D array over groups"):
    policy.check_probs([[1.0]])
  with pytest.raises(ValueError, match=r"group ids span \[0, 7\], outside \[0, num_groups=3\)"):
    policy.check_groups(jnp.array([0, 7]), 3)
  with pytest.raises(ValueError, match="must hold integer group ids"):
    policy.check_groups(jnp.array([0.0, 1.0]), 3)
  with pytest.raises(ValueError, match="num_groups=2.5 must be an integer >= 1"):
    policy.check_num_groups(2.5)
  with pytest.raises(ValueError, match="sizes=.* must be finite, non-negative"):
    policy.check_sizes([0, 0])
