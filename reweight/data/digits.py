"""scikit-learn's bundled 8x8 digits as a TFDS builder (array_record, no TensorFlow).

The 1797 images of `sklearn.datasets.load_digits` ship inside scikit-learn, so the
dataset is built offline. The train/test split is FIXED and stratified:

* for each class ``c = 0..9`` in turn, with one ``rng = np.random.default_rng(SPLIT_SEED)``
  (``SPLIT_SEED = 0``) shared across classes, the indices of class ``c`` (ascending) are
  permuted with ``rng.permutation`` and the first ``floor(TEST_FRACTION * n_c + 0.5)``
  (``TEST_FRACTION = 0.2``) go to ``test``;
* each split is stored in ascending order of the source index, giving 1438 train and
  359 test examples.

Features:

* ``x``: float32 ``(64,)``, the flattened 8x8 image scaled from [0, 16] to [0, 1];
* ``label``: the digit, a `tfds.features.ClassLabel` with 10 classes (int64 on disk);
* ``id``: int64, the position of the example in its split (``0..n_split-1``).

References:
  Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI ML Repository, 1998.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from reweight.data._builder import SPLITS, ArrayBuilder

NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def digits_split_indices() -> dict[str, np.ndarray]:
  """Source indices (into ``load_digits()``) of the fixed stratified train/test split.

  Examples:
    >>> idx = digits_split_indices()
    >>> len(idx["train"]), len(idx["test"])
    (1438, 359)

  Returns:
    ``{"train": idx, "test": idx}``, each int64, ascending, disjoint, covering 0..1796.
  """
  from sklearn.datasets import load_digits

  y = load_digits().target
  rng = np.random.default_rng(SPLIT_SEED)
  test = []
  for c in range(NUM_CLASSES):
    members = np.flatnonzero(y == c)
    n_test = int(np.floor(TEST_FRACTION * len(members) + 0.5))
    test.append(rng.permutation(members)[:n_test])
  test = np.sort(np.concatenate(test)).astype(np.int64)
  train = np.setdiff1d(np.arange(len(y)), test).astype(np.int64)
  return {"train": train, "test": test}


def digits_arrays(split: str) -> dict[str, np.ndarray]:
  """The arrays the `Digits` builder writes for ``split``, computed in memory.

  Examples:
    >>> ds = digits_arrays("test")
    >>> ds["x"].shape, ds["x"].dtype.name, float(ds["x"].max())
    ((359, 64), 'float32', 1.0)

  Args:
    split: ``"train"`` or ``"test"``.

  Returns:
    ``{"x": float32 [n, 64] in [0, 1], "label": int64 [n], "id": int64 [n]}``.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
  from sklearn.datasets import load_digits

  digits = load_digits()
  idx = digits_split_indices()[split]
  return {
      "x": (digits.data[idx] / 16.0).astype(np.float32),
      "label": digits.target[idx].astype(np.int64),
      "id": np.arange(len(idx), dtype=np.int64),
  }


class Digits(ArrayBuilder):
  """TFDS builder for scikit-learn's 8x8 digits with a fixed stratified 80/20 split."""

  name = "digits"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: flattened x in [0, 1], stratified 80/20 split."}
  NUM_FEATURES = 64
  NUM_CLASSES = NUM_CLASSES
  DESCRIPTION = ("scikit-learn's bundled 8x8 handwritten digits (1797 images), flattened to 64 "
                 "values in [0, 1], with a fixed stratified 80/20 train/test split (seed 0).")
  HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"

  def _arrays(self):
    return {split: digits_arrays(split) for split in SPLITS}
