"""Loading the offline datasets: TFDS array_record files read with `tfds.data_source`.

Both datasets (``"digits"``, ``"mnist1d"``) are `tfds.core.GeneratorBasedBuilder`s that are
written with ``file_format="array_record"`` and read back with `tfds.data_source`. This
path needs no TensorFlow (tensorflow-datasets >= 4.9.9): array_record's own reader fetches
the records and TFDS decodes the features with NumPy.

The datasets are tiny, so `load` reads every record once into a dict of NumPy arrays
(sorted by ``id``, i.e. in split order; TFDS shuffles records on disk) and the training
pipeline (`reweight.data.pipeline`) indexes those arrays. Decoding records one by one in
the training loop would cost milliseconds per batch.

Data directory: ``data_dir`` if given, else the environment variable
``REWEIGHT_DATA_DIR``, else TFDS's default (``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from reweight.data import digits as _digits
from reweight.data import mnist1d as _mnist1d
from reweight.data._builder import SPLITS

BUILDERS = {"digits": _digits.Digits, "mnist1d": _mnist1d.Mnist1d}
DATASETS = tuple(BUILDERS)
_NUM_CLASSES = {"digits": _digits.NUM_CLASSES, "mnist1d": _mnist1d.NUM_CLASSES}
DATA_DIR_ENV = "REWEIGHT_DATA_DIR"


def _check_name(name: str) -> None:
  if name not in BUILDERS:
    raise ValueError(f"name={name!r} is not one of {list(DATASETS)}")


def data_dir_for(data_dir: str | os.PathLike | None = None) -> str | None:
  """The data directory used: ``data_dir``, else ``$REWEIGHT_DATA_DIR``, else None (TFDS's).

  Examples:
    >>> data_dir_for("/tmp/x")
    '/tmp/x'
  """
  if data_dir is not None:
    return os.fspath(data_dir)
  return os.environ.get(DATA_DIR_ENV) or None


def num_classes(name: str) -> int:
  """Number of classes of the dataset ``name``.

  Examples:
    >>> num_classes("mnist1d")
    10

  Args:
    name: one of ``"digits"``, ``"mnist1d"``.

  Returns:
    The number of classes.
  """
  _check_name(name)
  return _NUM_CLASSES[name]


def builder(name: str, *, data_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``name`` writing array_record files under the data directory.

  Examples:
    >>> import tempfile
    >>> b = builder("digits", data_dir=tempfile.mkdtemp())
    >>> b.name, str(b.version)
    ('digits', '1.0.0')

  Args:
    name: one of ``"digits"``, ``"mnist1d"``.
    data_dir: see the module docstring.

  Returns:
    A `tfds.core.GeneratorBasedBuilder`; call ``download_and_prepare()`` to build it.
  """
  _check_name(name)
  return BUILDERS[name](data_dir=data_dir_for(data_dir), file_format="array_record")


def load(
    name: str, split: str, *, data_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
  """Builds ``name`` if needed and reads the whole ``split`` into NumPy arrays.

  Records are read with `tfds.data_source` (no TensorFlow) and sorted by ``id``, so
  ``out["id"] == arange(n)`` and row ``i`` is example ``i`` of the split.

  Examples:
    >>> import contextlib, io, tempfile
    >>> with contextlib.redirect_stdout(io.StringIO()):  # TFDS reports the first build
    ...   ds = load("digits", "test", data_dir=tempfile.mkdtemp())
    >>> {k: (v.shape, v.dtype.name) for k, v in ds.items()}
    {'x': ((359, 64), 'float32'), 'label': ((359,), 'int32'), 'id': ((359,), 'int32')}

  Args:
    name: one of ``"digits"``, ``"mnist1d"``.
    split: ``"train"`` or ``"test"``.
    data_dir: see the module docstring.

  Returns:
    ``{"x": float32 [n, d], "label": int32 [n], "id": int32 [n]}``.
  """
  _check_name(name)
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
  b = builder(name, data_dir=data_dir)
  if not b.is_prepared():
    try:
      b.download_and_prepare()
    except OSError:
      # Another process built the same dataset first: TFDS's final rename then fails.
      if not builder(name, data_dir=data_dir).is_prepared():
        raise
  source = tfds.data_source(name, split=split, data_dir=b.data_dir_root, download=False)
  records = source.__getitems__(range(len(source)))
  ids = np.asarray([r["id"] for r in records], dtype=np.int64)
  order = np.argsort(ids, kind="stable")
  if not np.array_equal(ids[order], np.arange(len(ids))):
    raise ValueError(f"{name}/{split}: ids are not 0..{len(ids) - 1}; rebuild the dataset")
  return {
      "x": np.stack([records[i]["x"] for i in order]).astype(np.float32),
      "label": np.asarray([records[i]["label"] for i in order], dtype=np.int32),
      "id": np.arange(len(ids), dtype=np.int32),
  }
