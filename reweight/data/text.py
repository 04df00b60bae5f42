"""An offline text corpus: the Python standard library's own source files, as bytes.

Every Python installation ships its standard library as ``.py`` source, so a
language-modelling corpus of real text is available offline, with no download and no
extra package. `stdlib_corpus` reads a deterministic subset of those files (from
``sysconfig.get_paths()["stdlib"]`` of the running interpreter, or another ``root``),
tokenizes them at the byte level (vocabulary 256, token = byte value) and splits them
into train and validation **by file**, so no file contributes to both.

File order and split (fixed for a given installation, whatever ``max_bytes``):

1. Candidates are the ``*.py`` files under ``root`` (recursively; directories named in
   `EXCLUDED_DIRS` are skipped), of size 1 .. ``max_file_bytes``, named by their
   '/'-joined path relative to ``root``.
2. They are sorted by ``(crc32(path), path)``: a fixed pseudo-random order over the whole
   library (sorting by name alone would take ``__future__.py``, ``_aix_support.py``, ...
   first).
3. The corpus is the longest prefix of that order whose total size is <= ``max_bytes``.
4. The file at position i of the order goes to validation iff
   ``i % validation_every == validation_every - 1``, otherwise to train. Since the
   position does not depend on ``max_bytes``, a larger corpus keeps every file of a
   smaller one in the same split.

Batches (`lm_batch`) are windows of ``seq_len + 1`` consecutive tokens of a split at
start positions drawn from ``np.random.default_rng([WINDOW_SALT, seed, step])``, so the
batch of a step depends only on ``(seed, step)`` (resuming at step t draws what an
uninterrupted run draws). Inputs are the first ``seq_len`` tokens, targets the last
``seq_len`` (next-byte prediction). Files are concatenated without separator; a window
may span a file boundary. `eval_windows` cuts a split into fixed non-overlapping windows
for validation.
"""

from __future__ import annotations

import functools
import os
import sysconfig
import zlib
from typing import NamedTuple

import numpy as np

from reweight._checks import check_int

VOCAB_SIZE = 256
EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__")
WINDOW_SALT = 0x74657874


class TextCorpus(NamedTuple):
  """Byte tokens of the train and validation files.

  Attributes:
    train: uint8 [n_train], the train files' bytes, concatenated in corpus order.
    validation: uint8 [n_val], the validation files' bytes, concatenated.
    train_files: relative '/'-joined paths of the train files, in order.
    validation_files: relative paths of the validation files, in order.
    train_offsets: int64 [len(train_files) + 1]; file j is
      ``train[train_offsets[j]:train_offsets[j + 1]]``.
    validation_offsets: int64 [len(validation_files) + 1], likewise.
    root: the directory the files were read from.
  """

  train: np.ndarray
  validation: np.ndarray
  train_files: tuple[str, ...]
  validation_files: tuple[str, ...]
  train_offsets: np.ndarray
  validation_offsets: np.ndarray
  root: str


def stdlib_root() -> str:
  """The running interpreter's standard-library directory (``sysconfig`` ``"stdlib"``).

  Examples:
    >>> import os
    >>> os.path.isfile(os.path.join(stdlib_root(), "os.py"))
    True
  """
  return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=8)
def _listing(root: str) -> tuple[tuple[str, int], ...]:
  """All ``(relative path, size)`` of the ``.py`` files under ``root``, by name."""
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
    for name in filenames:
      if not name.endswith(".py"):
        continue
      path = os.path.join(dirpath, name)
      if not os.path.isfile(path):  # a dangling link
        continue
      rel = os.path.relpath(path, root).replace(os.sep, "/")
      out.append((rel, os.path.getsize(path)))
  return tuple(sorted(out))


def source_files(root: str | None = None, max_file_bytes: int = 65536
                 ) -> list[tuple[str, int]]:
  """The candidate files in corpus order: ``[(relative path, size), ...]``.

  Every ``*.py`` file under ``root`` (not inside `EXCLUDED_DIRS`) with
  ``1 <= size <= max_file_bytes``, sorted by ``(zlib.crc32(path), path)``.

  Args:
    root: directory to read (default: `stdlib_root`).
    max_file_bytes: skip larger files (a few generated tables dominate otherwise).

  Returns:
    A list of ``(path, size)`` pairs.

  Examples:
    >>> files = source_files(max_file_bytes=4096)
    >>> all(0 < size <= 4096 for _, size in files) and len(files) > 10
    True
  """
  root = stdlib_root() if root is None else os.fspath(root)
  if not os.path.isdir(root):
    raise ValueError(f"root={root!r} is not a directory")
  max_file_bytes = check_int("max_file_bytes", max_file_bytes, 1)
  files = [(p, s) for p, s in _listing(os.path.abspath(root)) if 0 < s <= max_file_bytes]
  return sorted(files, key=lambda f: (zlib.crc32(f[0].encode("utf-8")), f[0]))


def stdlib_corpus(max_bytes: int = 1 << 20, validation_every: int = 10,
                  root: str | None = None, max_file_bytes: int = 65536) -> TextCorpus:
  """Reads up to ``max_bytes`` of Python source into byte-token train / validation splits.

  The files are the longest prefix of `source_files` (crc32 order) with total size
  <= ``max_bytes``; file i of that order is a validation file iff
  ``i % validation_every == validation_every - 1`` (about 1 / ``validation_every`` of
  the files), a train file otherwise. Bytes are read as they are on disk (no decoding),
  so ``train[train_offsets[j]:train_offsets[j + 1]].tobytes()`` is the file
  ``train_files[j]`` byte for byte.

  Args:
    max_bytes: the byte budget of train + validation together.
    validation_every: one file in this many goes to validation (>= 2).
    root: directory to read (default: the interpreter's standard library).
    max_file_bytes: files larger than this are skipped.

  Returns:
    A `TextCorpus`.

  Raises:
    ValueError: when the budget leaves a split without a file.

  Examples:
    >>> corpus = stdlib_corpus(max_bytes=300_000)
    >>> corpus.train.dtype.name, len(corpus.train) + len(corpus.validation) <= 300_000
    ('uint8', True)
    >>> set(corpus.train_files).isdisjoint(corpus.validation_files)
    True
  """
  max_bytes = check_int("max_bytes", max_bytes, 1)
  validation_every = check_int("validation_every", validation_every, 2)
  root = stdlib_root() if root is None else os.fspath(root)
  files = source_files(root, max_file_bytes)
  chosen, total = [], 0
  for path, size in files:
    if total + size > max_bytes:
      break
    chosen.append(path)
    total += size
  is_val = [i % validation_every == validation_every - 1 for i in range(len(chosen))]
  train_files = tuple(p for p, v in zip(chosen, is_val, strict=True) if not v)
  val_files = tuple(p for p, v in zip(chosen, is_val, strict=True) if v)
  if not train_files or not val_files:
    raise ValueError(
        f"max_bytes={max_bytes} selects {len(train_files)} train and {len(val_files)} "
        f"validation files (validation_every={validation_every}); raise max_bytes")

  def read(paths):
    blobs = []
    for p in paths:
      with open(os.path.join(root, *p.split("/")), "rb") as f:
        blobs.append(f.read())
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets

  train, train_offsets = read(train_files)
  val, val_offsets = read(val_files)
  return TextCorpus(train, val, train_files, val_files, train_offsets, val_offsets, root)


def encode(text: str | bytes) -> np.ndarray:
  """Byte-level tokens of ``text`` (UTF-8 for a ``str``): uint8 values in [0, 256).

  Examples:
    >>> encode("hé").tolist()
    [104, 195, 169]
  """
  data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
  return np.frombuffer(data, dtype=np.uint8).copy()


def decode(tokens) -> bytes:
  """The bytes of byte-level ``tokens`` (the inverse of `encode`).

  Examples:
    >>> decode(encode("hé")).decode("utf-8")
    'hé'
  """
  t = np.asarray(tokens)
  if t.size and (t.min() < 0 or t.max() >= VOCAB_SIZE):
    raise ValueError(f"tokens span [{t.min()}, {t.max()}], outside [0, {VOCAB_SIZE})")
  return t.astype(np.uint8).tobytes()


def window_starts(num_tokens: int, seq_len: int, batch_size: int, seed: int, step: int
                  ) -> np.ndarray:
  """Start positions of the training windows of ``step``.

  ``np.random.default_rng([WINDOW_SALT, seed, step]).integers(0, num_tokens - seq_len,
  size=batch_size)``: uniform over every start that leaves room for ``seq_len + 1``
  tokens, with replacement, independent across steps.

  Args:
    num_tokens: length of the token array.
    seq_len: T, tokens per input sequence.
    batch_size: B.
    seed: non-negative int.
    step: non-negative int.

  Returns:
    int64 [B].

  Examples:
    >>> s = window_starts(1000, 64, 4, seed=0, step=3)
    >>> s.shape, bool((s >= 0).all() and (s + 64 < 1000).all())
    ((4,), True)
  """
  num_tokens = check_int("num_tokens", num_tokens, 1)
  seq_len = check_int("seq_len", seq_len, 1)
  batch_size = check_int("batch_size", batch_size, 1)
  seed = check_int("seed", seed, 0)
  step = check_int("step", step, 0)
  if num_tokens < seq_len + 1:
    raise ValueError(f"num_tokens={num_tokens} is too short for seq_len={seq_len} (+1 target)")
  rng = np.random.default_rng([WINDOW_SALT, seed, step])
  return rng.integers(0, num_tokens - seq_len, size=batch_size)


def windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  """Inputs and next-token targets of the windows starting at ``starts``.

  ``x[b] = tokens[s_b : s_b + T]`` and ``label[b] = tokens[s_b + 1 : s_b + T + 1]``, as
  int32 ``[B, T]``.

  Examples:
    >>> out = windows(np.arange(10, dtype=np.uint8), np.array([0, 5]), seq_len=3)
    >>> out["x"].tolist(), out["label"].tolist()
    ([[0, 1, 2], [5, 6, 7]], [[1, 2, 3], [6, 7, 8]])
  """
  tokens = np.asarray(tokens)
  starts = np.asarray(starts, dtype=np.int64)
  seq_len = check_int("seq_len", seq_len, 1)
  if starts.size and (starts.min() < 0 or starts.max() + seq_len >= len(tokens)):
    raise ValueError(
        f"starts span [{starts.min()}, {starts.max()}]: windows of {seq_len} + 1 tokens "
        f"must fit in {len(tokens)} tokens")
  idx = starts[:, None] + np.arange(seq_len + 1)
  w = tokens[idx].astype(np.int32)
  return {"x": w[:, :-1], "label": w[:, 1:]}


def lm_batch(tokens: np.ndarray, step: int, *, seq_len: int, batch_size: int, seed: int
             ) -> dict[str, np.ndarray]:
  """The training batch of ``step``: ``windows(tokens, window_starts(...), seq_len)``.

  Args:
    tokens: a split of a `TextCorpus` (``corpus.train``).
    step: the training step.
    seq_len: T.
    batch_size: B.
    seed: the data seed.

  Returns:
    ``{"x": int32 [B, T], "label": int32 [B, T]}``.

  Examples:
    >>> toks = encode("abcdefghij" * 10)
    >>> a = lm_batch(toks, 7, seq_len=8, batch_size=2, seed=1)
    >>> b = lm_batch(toks, 7, seq_len=8, batch_size=2, seed=1)
    >>> bool((a["x"] == b["x"]).all()), bool((a["x"][:, 1:] == a["label"][:, :-1]).all())
    (True, True)
  """
  starts = window_starts(len(tokens), seq_len, batch_size, seed, step)
  return windows(tokens, starts, seq_len)


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None
                 ) -> dict[str, np.ndarray]:
  """Non-overlapping validation windows: starts ``0, T, 2T, ...``, ``label`` = next tokens.

  Window k covers ``tokens[kT : kT + T + 1]`` (inputs and shifted targets), for the
  ``floor((n - 1) / T)`` windows that fit, or the first ``max_windows`` of them; every
  target token is predicted at most once.

  Args:
    tokens: a split (``corpus.validation``).
    seq_len: T.
    max_windows: cap on the number of windows (None: all).

  Returns:
    ``{"x": int32 [K, T], "label": int32 [K, T]}``.

  Examples:
    >>> out = eval_windows(np.arange(10, dtype=np.uint8), seq_len=4)
    >>> out["x"].tolist(), out["label"].tolist()
    ([[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 2, 3, 4], [5, 6, 7, 8]])
  """
  seq_len = check_int("seq_len", seq_len, 1)
  count = (len(tokens) - 1) // seq_len
  if max_windows is not None:
    count = min(count, check_int("max_windows", max_windows, 1))
  if count < 1:
    raise ValueError(f"{len(tokens)} tokens hold no window of seq_len={seq_len} (+1 target)")
  return windows(tokens, np.arange(count, dtype=np.int64) * seq_len, seq_len)


__all__ = [
    "EXCLUDED_DIRS",
    "VOCAB_SIZE",
    "WINDOW_SALT",
    "TextCorpus",
    "decode",
    "encode",
    "eval_windows",
    "lm_batch",
    "source_files",
    "stdlib_corpus",
    "stdlib_root",
    "window_starts",
    "windows",
]
