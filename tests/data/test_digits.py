"""Tests for the digits TFDS builder (reweight/data/digits.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from reweight.data import datasets, digits


def _reference_split():
  """The documented split recipe, re-derived: per-class permutation, first 20% to test."""
  y = load_digits().target
  rng = np.random.default_rng(0)
  test = []
  for c in range(10):
    members = np.flatnonzero(y == c)
    n_test = int(np.floor(0.2 * len(members) + 0.5))
    test.extend(rng.permutation(members)[:n_test].tolist())
  test = np.array(sorted(test))
  train = np.array(sorted(set(range(len(y))) - set(test.tolist())))
  return train, test


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tf_before = "tensorflow" in sys.modules
  data_dir = tmp_path_factory.mktemp("tfds")
  out = {split: datasets.load("digits", split, data_dir=data_dir) for split in ("train", "test")}
  return out, data_dir, tf_before


def test_sizes_dtypes_and_ids(built):
  out, _, _ = built
  assert len(out["train"]["label"]) == 1438
  assert len(out["test"]["label"]) == 359
  for ds in out.values():
    n = len(ds["label"])
    assert set(ds) == {"x", "label", "id"}
    assert ds["x"].shape == (n, 64) and ds["x"].dtype == np.float32
    assert ds["label"].dtype == np.int32 and ds["id"].dtype == np.int32
    np.testing.assert_array_equal(ds["id"], np.arange(n))
    assert ds["x"].min() == 0.0 and ds["x"].max() == 1.0


def test_equals_sklearn_source_arrays(built):
  out, _, _ = built
  source = load_digits()
  for split, idx in zip(("train", "test"), _reference_split(), strict=True):
    np.testing.assert_array_equal(out[split]["x"], (source.data[idx] / 16.0).astype(np.float32))
    np.testing.assert_array_equal(out[split]["label"], source.target[idx])


def test_split_indices_match_recipe_and_partition():
  idx = digits.digits_split_indices()
  ref_train, ref_test = _reference_split()
  np.testing.assert_array_equal(idx["train"], ref_train)
  np.testing.assert_array_equal(idx["test"], ref_test)
  assert not set(idx["train"].tolist()) & set(idx["test"].tolist())
  assert len(idx["train"]) + len(idx["test"]) == 1797


def test_split_is_stratified(built):
  out, _, _ = built
  y = load_digits().target
  n_c = np.bincount(y, minlength=10)
  test_c = np.bincount(out["test"]["label"], minlength=10)
  train_c = np.bincount(out["train"]["label"], minlength=10)
  np.testing.assert_array_equal(train_c + test_c, n_c)
  # Each class's test share is 20% up to rounding to a whole example.
  assert np.all(np.abs(test_c - 0.2 * n_c) <= 0.5)


def test_written_as_array_record_without_tensorflow(built):
  _, data_dir, tf_before = built
  files = sorted(p.name for p in (data_dir / "digits" / "1.0.0").iterdir())
  assert any(f.startswith("digits-train.array_record") for f in files), files
  assert any(f.startswith("digits-test.array_record") for f in files), files
  if not tf_before:
    assert "tensorflow" not in sys.modules


def test_builder_metadata(tmp_path):
  b = datasets.builder("digits", data_dir=tmp_path)
  assert b.name == "digits" and str(b.version) == "1.0.0"
  assert b.info.features["label"].num_classes == 10
  assert b.info.features["x"].shape == (64,)


def test_digits_arrays_rejects_bad_split():
  with pytest.raises(ValueError, match=r"split='val'.*\['train', 'test'\]"):
    digits.digits_arrays("val")
