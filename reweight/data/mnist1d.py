"""MNIST-1D as a TFDS builder (array_record, no TensorFlow), generated locally.

The data come from ``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())``, which
synthesises the standard 5000 examples (seed 42) from ten hard-coded templates: no network.
(``mnist1d.data.get_dataset`` would download a pickle first; it is never called.)
``make_dataset`` reseeds Python's and NumPy's global random generators; their states are
saved and restored around the call, so building has no side effect on them.

Splits: the standard 4000 train / 1000 test split of ``make_dataset`` (its own order).

Features:

* ``x``: float32 ``(40,)``, the standardised signal as returned by ``make_dataset``;
* ``label``: a `tfds.features.ClassLabel` with 10 classes (int64 on disk);
* ``id``: int64, the position of the example in its split (``0..n_split-1``).

References:
  Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024.
"""

from __future__ import annotations

import random

import numpy as np
import tensorflow_datasets as tfds

from reweight.data._builder import SPLITS, ArrayBuilder

NUM_CLASSES = 10


def mnist1d_arrays() -> dict[str, dict[str, np.ndarray]]:
  """Generates the standard MNIST-1D splits in memory (about 3 s, no network).

  Examples:
    >>> ds = mnist1d_arrays()
    >>> ds["train"]["x"].shape, ds["test"]["x"].shape
    ((4000, 40), (1000, 40))

  Returns:
    ``{split: {"x": float32 [n, 40], "label": int64 [n], "id": int64 [n]}}`` for
    ``split`` in ``("train", "test")``.
  """
  from mnist1d import data as mnist1d_data

  py_state, np_state = random.getstate(), np.random.get_state()
  try:
    raw = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
  finally:
    random.setstate(py_state)
    np.random.set_state(np_state)
  out = {}
  for split, (xk, yk) in zip(SPLITS, [("x", "y"), ("x_test", "y_test")], strict=True):
    x, y = np.asarray(raw[xk]), np.asarray(raw[yk])
    out[split] = {
        "x": x.astype(np.float32),
        "label": y.astype(np.int64),
        "id": np.arange(len(y), dtype=np.int64),
    }
  return out


class Mnist1d(ArrayBuilder):
  """TFDS builder for MNIST-1D (standard 4000/1000 split), generated without network."""

  name = "mnist1d"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: make_dataset(get_dataset_args()), 4000/1000."}
  NUM_FEATURES = 40
  NUM_CLASSES = NUM_CLASSES
  DESCRIPTION = ("MNIST-1D: 1-D signals of length 40 in 10 classes, generated locally with "
                 "mnist1d.data.make_dataset(get_dataset_args()); standard 4000/1000 split.")
  HOMEPAGE = "https://github.com/greydanus/mnist1d"

  def _arrays(self):
    return mnist1d_arrays()
