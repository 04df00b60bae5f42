"""Tests for reweight/data/datasets.py (load, num_classes, data directory)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from reweight import data


def test_num_classes():
  assert data.num_classes("digits") == 10
  assert data.num_classes("mnist1d") == 10


@pytest.mark.parametrize("fn", [data.num_classes, lambda n: data.load(n, "train")])
def test_unknown_name_raises(fn):
  with pytest.raises(ValueError, match=r"name='cifar'.*\['digits', 'mnist1d'\]"):
    fn("cifar")


def test_unknown_split_raises(tmp_path):
  with pytest.raises(ValueError, match=r"split='validation'.*\['train', 'test'\]"):
    data.load("digits", "validation", data_dir=tmp_path)


def test_env_data_dir_and_raw_records(tmp_path, monkeypatch):
  monkeypatch.setenv("REWEIGHT_DATA_DIR", str(tmp_path))
  ds = data.load("digits", "test")
  assert (tmp_path / "digits" / "1.0.0" / "dataset_info.json").exists()
  # Independent read of the raw records: every record sits at row `id`.
  source = tfds.data_source("digits", split="test", data_dir=tmp_path, download=False)
  assert len(source) == len(ds["id"])
  for i in [0, 7, len(source) - 1]:
    record = source[i]
    np.testing.assert_array_equal(ds["x"][record["id"]], record["x"])
    assert ds["label"][record["id"]] == record["label"]
  # A second load reuses the files and returns the same arrays.
  again = data.load("digits", "test", data_dir=tmp_path)
  for k in ds:
    np.testing.assert_array_equal(again[k], ds[k])


def test_concurrent_build_by_another_process(tmp_path, monkeypatch):
  from reweight.data.digits import Digits

  expected = data.load("digits", "test", data_dir=tmp_path)
  # Simulate losing the race: this process saw no dataset, built it, and its final
  # rename failed because another process had just written the same directory.
  seen = iter([False])
  monkeypatch.setattr(Digits, "is_prepared", lambda self: next(seen, True))

  def lose_race(self, *args, **kwargs):
    raise OSError("Directory not empty")

  monkeypatch.setattr(Digits, "download_and_prepare", lose_race)
  got = data.load("digits", "test", data_dir=tmp_path)
  np.testing.assert_array_equal(got["x"], expected["x"])


def test_data_dir_precedence(monkeypatch):
  from reweight.data.datasets import data_dir_for

  monkeypatch.delenv("REWEIGHT_DATA_DIR", raising=False)
  assert data_dir_for(None) is None
  monkeypatch.setenv("REWEIGHT_DATA_DIR", "env_dir")
  assert data_dir_for(None) == "env_dir"
  assert data_dir_for("explicit") == "explicit"
