"""The TFDS builder shared by the small datasets held as NumPy arrays."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

SPLITS = ("train", "test")


class ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes ``{"x": float32 [d], "label": ClassLabel, "id": int64}`` examples per split.

  A subclass sets ``name``, ``VERSION``, ``RELEASE_NOTES``, ``NUM_FEATURES``,
  ``NUM_CLASSES``, ``DESCRIPTION``, ``HOMEPAGE`` and implements ``_arrays()``, returning
  ``{split: {"x", "label", "id"}}`` as NumPy arrays.
  """

  # TFDS 4.9.10 resolves `code_path` of a builder defined in a package through the
  # `importlib_resources` backport, which it only declares for Python < 3.9
  # (tensorflow/datasets#11212). The path is only used to look for a checksums file.
  code_path = epath.Path(__file__)
  NUM_FEATURES: int
  NUM_CLASSES: int
  DESCRIPTION: str
  HOMEPAGE: str

  def _arrays(self) -> dict[str, dict[str, np.ndarray]]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(self.NUM_FEATURES,), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
            "id": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("x", "label"),
        homepage=self.HOMEPAGE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data are made or shipped locally.
    arrays = self._arrays()
    return {split: self._generate_examples(arrays[split]) for split in SPLITS}

  def _generate_examples(self, ds):
    for i in range(len(ds["id"])):
      yield int(ds["id"][i]), {k: v[i] for k, v in ds.items()}
