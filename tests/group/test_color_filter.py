"""color_filter against a NumPy ranking of l_cond - l_prior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight import testing
from reweight.group.color_filter import color_filter


def np_select(prior, cond, keep):
  """Lowest scores first, ties to the lower index (lexsort: last key is primary)."""
  score = np.asarray(cond, np.float64) - np.asarray(prior, np.float64)
  return np.lexsort((np.arange(score.size), score))[:keep]


@pytest.mark.parametrize("n,keep", [(1, 1), (10, 3), (64, 16), (50, 50)])
def test_matches_numpy(n, keep):
  rng = np.random.default_rng(n)
  # integer-valued losses: plenty of exact ties, all representable in float32
  prior = rng.integers(0, 6, n).astype(np.float32)
  cond = rng.integers(0, 6, n).astype(np.float32)
  got = np.asarray(color_filter(prior, cond, keep))
  np.testing.assert_array_equal(got, np_select(prior, cond, keep))
  assert got.dtype == np.int32 and len(set(got.tolist())) == keep
  # jitted with keep static gives the same indices
  fn = jax.jit(color_filter, static_argnames="keep")
  np.testing.assert_array_equal(fn(jnp.asarray(prior), jnp.asarray(cond), keep=keep), got)


def test_properties():
  rng = np.random.default_rng(0)
  prior = rng.normal(3, 1, 100)
  cond = prior + rng.normal(0, 1, 100)
  kept = np.asarray(color_filter(prior, cond, 20))
  score = cond - prior
  rest = np.setdiff1d(np.arange(100), kept)
  assert score[kept].max() <= score[rest].min()          # the 20 lowest scores
  assert np.all(np.diff(score[kept]) >= 0)               # sorted, best first
  # a constant shift of both losses changes nothing; shifting only cond changes nothing
  np.testing.assert_array_equal(color_filter(prior + 5, cond + 5, 20), kept)
  np.testing.assert_array_equal(color_filter(prior, cond - 1, 20), kept)
  # ties are broken by index, NaN scores come last
  np.testing.assert_array_equal(color_filter(np.zeros(4), np.zeros(4), 3), [0, 1, 2])
  np.testing.assert_array_equal(
      color_filter(np.zeros(4), np.array([np.nan, 1.0, -1.0, 0.0]), 4), [2, 3, 1, 0])


def test_bad_input():
  with pytest.raises(ValueError, match=r"same shape .*got \(3,\) and \(4,\)"):
    color_filter(np.zeros(3), np.zeros(4), 1)
  with pytest.raises(ValueError, match=r"got \(2, 2\) and \(2, 2\)"):
    color_filter(np.zeros((2, 2)), np.zeros((2, 2)), 1)
  with pytest.raises(ValueError, match=r"keep=0 must be an int in \[1, n=3\]"):
    color_filter(np.zeros(3), np.zeros(3), 0)
  with pytest.raises(ValueError, match=r"keep=4 must be an int in \[1, n=3\]"):
    color_filter(np.zeros(3), np.zeros(3), 4)
  with pytest.raises(ValueError, match=r"keep=1.5 must be an int"):
    color_filter(np.zeros(3), np.zeros(3), 1.5)


CODE = """
import json, jax, numpy as np
from reweight import parallel
from reweight.group.color_filter import color_filter
rng = np.random.default_rng(0)
prior = rng.integers(0, 8, 64).astype(np.float32)
cond = rng.integers(0, 8, 64).astype(np.float32)
fn = jax.jit(color_filter, static_argnames="keep")
single = np.asarray(fn(*jax.device_put((prior, cond), jax.devices()[0]), keep=24))
sharded = np.asarray(fn(*parallel.shard_batch((prior, cond), parallel.make_mesh()), keep=24))
print(json.dumps({"same": bool(np.array_equal(single, sharded)),
                  "devices": len(jax.devices())}))
"""


@pytest.mark.multidevice
def test_sharded_candidates_select_the_same():
  res = testing.run_with_devices(CODE, 8)
  assert res == {"same": True, "devices": 8}
