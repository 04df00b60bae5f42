"""Tests for reweight.curriculum.scoring against NumPy re-derivations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight import testing
from reweight.curriculum import scoring


def np_loss_ema(n, batches, decay):
  """Per-example EMA with a Python loop: duplicates in a batch are averaged first."""
  ema, count = np.zeros(n), np.zeros(n, np.int64)
  for ids, losses, mask in batches:
    per_id = {}
    for i, loss, m in zip(ids, losses, mask, strict=True):
      if m and np.isfinite(loss) and 0 <= i < n:
        per_id.setdefault(int(i), []).append(float(loss))
    for i, ls in per_id.items():
      mean = np.mean(ls)
      ema[i] = mean if count[i] == 0 else decay * ema[i] + (1 - decay) * mean
      count[i] += len(ls)
  return ema, count


def random_batches(rng, n, b, steps):
  out = []
  for _ in range(steps):
    ids = rng.integers(-2, n + 2, size=b)  # some out of range, many duplicates
    losses = rng.exponential(size=b).astype(np.float32)
    losses[rng.random(b) < 0.1] = np.nan
    mask = rng.random(b) > 0.2
    out.append((ids.astype(np.int32), losses, mask))
  return out


def test_update_loss_ema_matches_numpy_loop():
  rng = np.random.default_rng(0)
  n, decay = 12, 0.7
  batches = random_batches(rng, n, 16, 6)
  update = jax.jit(scoring.update_loss_ema)
  state = scoring.init_loss_ema(n)
  for ids, losses, mask in batches:
    state = update(state, ids, losses, decay, mask)
  ema, count = np_loss_ema(n, batches, decay)
  np.testing.assert_allclose(state.ema, ema, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(state.count, count)
  scores = scoring.loss_ema_scores(state)
  np.testing.assert_allclose(scores[count > 0], ema[count > 0], rtol=1e-5)
  assert np.all(np.isnan(np.asarray(scores)[count == 0]))


def test_update_loss_ema_without_mask_and_traced_decay():
  rng = np.random.default_rng(1)
  ids = rng.integers(0, 5, size=8).astype(np.int32)
  losses = rng.normal(size=8).astype(np.float32)
  state = scoring.init_loss_ema(5)
  state = scoring.update_loss_ema(state, ids, losses)
  state = jax.jit(scoring.update_loss_ema)(state, ids, losses + 1, jnp.float32(0.5))
  ema2, count2 = np_loss_ema(5, [(ids, losses, np.ones(8, bool)),
                                 (ids, losses + 1, np.ones(8, bool))], 0.5)
  np.testing.assert_allclose(state.ema, ema2, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(state.count, count2)
  with pytest.raises(ValueError, match="decay=1.0"):
    scoring.update_loss_ema(state, ids, losses, decay=1.0)
  with pytest.raises(ValueError, match="1-D of equal length"):
    scoring.update_loss_ema(state, ids, losses[:4])
  with pytest.raises(ValueError, match="num_examples=0"):
    scoring.init_loss_ema(0)


SHARDED = """
import json
import jax, jax.numpy as jnp, numpy as np
from reweight import parallel
from reweight.curriculum import scoring
rng = np.random.default_rng(0)
mesh = parallel.make_mesh()
state = scoring.init_loss_ema(10)
update = jax.jit(scoring.update_loss_ema)
for _ in range(3):
  ids = rng.integers(0, 10, size=16).astype(np.int32)
  losses = rng.exponential(size=16).astype(np.float32)
  batch = parallel.shard_batch({"ids": ids, "losses": losses}, mesh)
  state = update(state, batch["ids"], batch["losses"], 0.8)
print(json.dumps({"ema": np.asarray(state.ema).tolist(),
                  "count": np.asarray(state.count).tolist(),
                  "ndev": len(jax.devices()),
                  "spec": str(batch["ids"].sharding.spec)}))
"""


@pytest.mark.multidevice
def test_update_loss_ema_with_sharded_batch_matches_numpy():
  res = testing.run_with_devices(SHARDED, 8)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(3):
    ids = rng.integers(0, 10, size=16).astype(np.int32)
    losses = rng.exponential(size=16).astype(np.float32)
    batches.append((ids, losses, np.ones(16, bool)))
  ema, count = np_loss_ema(10, batches, 0.8)
  assert res["ndev"] == 8 and "data" in res["spec"]
  np.testing.assert_allclose(res["ema"], ema, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(res["count"], count)


def test_order_is_stable_argsort():
  rng = np.random.default_rng(2)
  x = rng.integers(0, 5, size=50).astype(np.float32)  # many ties
  np.testing.assert_array_equal(scoring.order(x), np.argsort(x, kind="stable"))
  np.testing.assert_array_equal(scoring.order(x, ascending=False),
                                np.argsort(-x, kind="stable"))
  y = x.copy()
  y[[3, 7]] = np.nan
  got = np.asarray(scoring.order(y))
  assert set(got[-2:]) == {3, 7}
  np.testing.assert_array_equal(got[:-2], np.argsort(y, kind="stable")[:-2])


@pytest.mark.parametrize("n, k", [(10, 3), (7, 7), (100, 1), (50, 4)])
def test_quality_tiers_match_numpy(n, k):
  rng = np.random.default_rng(n + k)
  x = rng.integers(0, 6, size=n).astype(np.float32)
  ranks = np.empty(n, np.int64)
  ranks[np.argsort(x, kind="stable")] = np.arange(n)
  np.testing.assert_array_equal(scoring.quality_tiers(x, k), ranks * k // n)
  sizes = np.bincount(np.asarray(scoring.quality_tiers(x, k)), minlength=k)
  assert sizes.max() - sizes.min() <= 1
  with pytest.raises(ValueError, match=rf"num_tiers=0 must be an integer in \[1, {n}\]"):
    scoring.quality_tiers(x, 0)


def test_reference_and_external_scores():
  ref = np.array([0.5, 2.0, 1.0])
  cur = np.array([1.0, 2.5, 3.0])
  np.testing.assert_allclose(scoring.from_reference(ref), ref)
  np.testing.assert_allclose(scoring.from_reference(ref, cur), cur - ref)
  np.testing.assert_allclose(scoring.from_external(ref, higher_is_harder=False), -ref)
  np.testing.assert_array_equal(
      scoring.order(scoring.from_external(ref, higher_is_harder=False)), [1, 2, 0])
  with pytest.raises(ValueError, match="must be 1-D"):
    scoring.from_external(np.ones((2, 2)))
  with pytest.raises(ValueError, match="equal shapes"):
    scoring.from_reference(ref, cur[:2])
