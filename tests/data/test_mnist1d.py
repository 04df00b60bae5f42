"""Tests for the MNIST-1D TFDS builder (reweight/data/mnist1d.py)."""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest
from mnist1d import data as mnist1d_data

from reweight.data import datasets
from reweight.data.mnist1d import mnist1d_arrays


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")

  def no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, "connect", no_network)
    mp.setattr(socket, "create_connection", no_network)
    out = {s: datasets.load("mnist1d", s, data_dir=data_dir) for s in ("train", "test")}
  return out


@pytest.fixture(scope="module")
def reference():
  return mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())


def test_sizes_and_dtypes(built):
  out = built
  assert len(out["train"]["label"]) == 4000
  assert len(out["test"]["label"]) == 1000
  for ds in out.values():
    n = len(ds["label"])
    assert ds["x"].shape == (n, 40) and ds["x"].dtype == np.float32
    assert ds["label"].dtype == np.int32
    np.testing.assert_array_equal(ds["id"], np.arange(n))


def test_equals_mnist1d_make_dataset(built, reference):
  out = built
  np.testing.assert_array_equal(out["train"]["x"], reference["x"].astype(np.float32))
  np.testing.assert_array_equal(out["train"]["label"], reference["y"])
  np.testing.assert_array_equal(out["test"]["x"], reference["x_test"].astype(np.float32))
  np.testing.assert_array_equal(out["test"]["label"], reference["y_test"])


def test_generation_leaves_global_rngs_untouched(monkeypatch):
  # make_dataset reseeds the global generators; a cheap stand-in does the same.
  def fake_make_dataset(args):
    random.seed(args.seed)
    np.random.seed(args.seed)
    x = np.random.normal(size=(5, 40))
    return {"x": x[:4], "y": np.arange(4), "x_test": x[4:], "y_test": np.arange(1)}

  monkeypatch.setattr(mnist1d_data, "make_dataset", fake_make_dataset)
  np.random.seed(123)
  random.seed(123)
  np_before, py_before = np.random.get_state(), random.getstate()
  out = mnist1d_arrays()
  np_after, py_after = np.random.get_state(), random.getstate()
  assert out["train"]["x"].shape == (4, 40) and out["test"]["x"].shape == (1, 40)
  assert py_before == py_after
  assert np_before[0] == np_after[0] and np_before[2:] == np_after[2:]
  np.testing.assert_array_equal(np_before[1], np_after[1])


def test_all_classes_present(built):
  out = built
  assert set(np.unique(out["train"]["label"]).tolist()) == set(range(10))
  assert datasets.num_classes("mnist1d") == 10
