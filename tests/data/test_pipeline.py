"""Tests for reweight/data/pipeline.py: determinism, resume, eval padding."""

from __future__ import annotations

import json

import grain
import numpy as np
import pytest

from reweight.data import pipeline as pl
from reweight.data import samplers as sm


def _dataset(n=50):
  rng = np.random.default_rng(0)
  return {
      "x": rng.normal(size=(n, 4)).astype(np.float32),
      "label": rng.integers(0, 3, size=n).astype(np.int32),
      "id": np.arange(n, dtype=np.int32),
      "is_noisy": rng.random(n) < 0.3,
  }


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_batches_are_rows_of_shuffled_epochs():
  ds = _dataset()
  it = pl.train_iterator(ds, 8, seed=3)
  batches = _take(it, 12)  # 6 batches per epoch (2 examples dropped each epoch)
  for batch in batches:
    assert batch["x"].shape == (8, 4) and batch["label"].shape == (8,)
    assert batch["is_noisy"].dtype == bool
    np.testing.assert_array_equal(batch["x"], ds["x"][batch["id"]])
    np.testing.assert_array_equal(batch["label"], ds["label"][batch["id"]])
  for epoch in range(2):
    ids = np.concatenate([b["id"] for b in batches[6 * epoch : 6 * epoch + 6]])
    perm = np.random.default_rng([sm.EPOCH_SALT, 3, epoch]).permutation(50)
    np.testing.assert_array_equal(ids, perm[:48])
  e0 = np.concatenate([b["id"] for b in batches[:6]])
  e1 = np.concatenate([b["id"] for b in batches[6:]])
  assert not np.array_equal(e0, e1)


def test_train_iterator_deterministic_and_seed_dependent():
  ds = _dataset()
  first, second = pl.train_iterator(ds, 8, 1), pl.train_iterator(ds, 8, 1)
  _assert_batches_equal(_take(first, 9), _take(second, 9))
  a = np.concatenate([b["id"] for b in _take(pl.train_iterator(ds, 8, 1), 3)])
  b = np.concatenate([b["id"] for b in _take(pl.train_iterator(ds, 8, 2), 3)])
  assert not np.array_equal(a, b)


def test_resume_from_serialised_state():
  ds = _dataset()
  it = pl.train_iterator(ds, 8, seed=0)
  _take(it, 7)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 5)
  fresh = pl.train_iterator(ds, 8, seed=0)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 5), expected)
  started = pl.sampler_iterator(ds, sm.epoch_sampler(50, 8, 0), start_step=7)
  _assert_batches_equal(_take(started, 5), expected)


def test_resume_through_orbax(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  ds = _dataset()
  it = pl.train_iterator(ds, 8, seed=0)
  _take(it, 7)
  ckptr = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  ckptr.save(tmp_path / "ckpt", args=grain.checkpoint.CheckpointSave(it))
  expected = _take(it, 5)
  fresh = pl.train_iterator(ds, 8, seed=0)
  ckptr.restore(tmp_path / "ckpt", args=grain.checkpoint.CheckpointRestore(fresh))
  _assert_batches_equal(_take(fresh, 5), expected)


def test_sampler_iterator_follows_sampler():
  ds = _dataset()
  groups = (ds["label"] == 0).astype(np.int64)
  s = sm.mixture_sampler(groups, lambda t: [1.0, 0.0] if t < 3 else [0.0, 1.0], 6, seed=0)
  batches = _take(pl.sampler_iterator(ds, s), 6)
  for t, batch in enumerate(batches):
    np.testing.assert_array_equal(batch["id"], ds["id"][s.indices(t)])
    assert np.all((batch["label"] == 0) == (t >= 3))
  np.testing.assert_array_equal(pl.batch_dataset(ds, s)[4]["id"], batches[4]["id"])


def test_no_drop_remainder_gives_short_last_batch():
  ds = _dataset(10)
  sizes = [len(b["id"]) for b in _take(pl.train_iterator(ds, 4, 0, drop_remainder=False), 6)]
  assert sizes == [4, 4, 2, 4, 4, 2]


@pytest.mark.parametrize("n, batch_size", [(10, 4), (8, 4), (3, 5)])
def test_eval_batches_cover_every_example_once(n, batch_size):
  ds = _dataset(n)
  batches = list(pl.eval_batches(ds, batch_size))
  assert len(batches) == -(-n // batch_size)
  for b in batches:
    for k in ds:
      assert b[k].shape == (batch_size, *ds[k].shape[1:]) and b[k].dtype == ds[k].dtype
    assert b["mask"].dtype == bool
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == n and np.all(mask[:n])
  for k in ds:
    got = np.concatenate([b[k] for b in batches])
    np.testing.assert_array_equal(got[:n], ds[k])
    assert not np.any(got[n:])  # padding is zeros / False


def test_bad_inputs():
  ds = _dataset(10)
  with pytest.raises(ValueError, match=r"batch_size=20 exceeds the 10 examples"):
    pl.train_iterator(ds, 20, 0)
  with pytest.raises(ValueError, match=r"batch_size=0"):
    pl.eval_batches(ds, 0)
  with pytest.raises(ValueError, match="different leading lengths"):
    pl.train_iterator({"x": np.zeros(5), "y": np.zeros(4)}, 2, 0)
  with pytest.raises(ValueError, match="'mask'"):
    pl.eval_batches({"x": np.zeros(5), "mask": np.ones(5, bool)}, 2)
