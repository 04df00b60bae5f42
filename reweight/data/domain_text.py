"""A multi-domain byte-level text corpus from files that ship with Python and its packages.

For data-mixing experiments (which domains to draw, how often) a language model needs
several **domains** of different character, available offline. `domain_corpus` builds six
from what the running interpreter already has on disk, with no download:

* ``code``: the standard library's ``.py`` source (`reweight.data.text.source_files`).
* ``prose``: English documentation: the long descriptions in the installed distributions'
  ``METADATA`` (their READMEs), their ``.rst`` / ``.md`` files, and the standard library's
  ``.txt`` / ``.rst`` / ``.md`` files outside test directories (IDLE's help and news, ...).
* ``licenses``: licence texts: ``LICENSE*`` / ``COPYING*`` / ``NOTICE*`` files of the
  distributions (and their ``.dist-info/licenses/`` folders) and the standard library's
  ``LICENSE.txt``.
* ``tables``: numeric and tabular text: the ``.csv`` / ``.tsv`` / ``.dat`` files (gzipped
  or not) the distributions ship, e.g. scikit-learn's bundled datasets, matplotlib's sample
  data, NumPy's and SciPy's reference tables (download checksum lists are left out).
* ``noise`` (optional): uniformly random bytes, fresh for every training window; nothing
  to learn, the loss floor is ``log 256``.
* ``duplicated`` (optional): one tiny text (`DUPLICATED_TEXT`, a few hundred bytes)
  repeated; memorised quickly, then nothing more to learn.

The distributions are those the ``reweight`` distribution depends on (transitively,
extras excluded; in a source checkout that is not installed, the dependencies of its
``pyproject.toml``), found through `importlib.metadata` (each one's ``RECORD`` lists its
files); the standard library is found through `sysconfig`. No machine path is hard-coded,
and only the packages of the project's dependencies are read, so a fresh environment with
the same dependencies gives the same domains (their contents follow the installed
versions).

File order, budget and split, per domain (fixed for a given installation):

1. Each candidate file is named ``"<distribution>/<path in its RECORD>"`` or
   ``"stdlib/<relative path>"`` and the candidates are sorted by ``(crc32(name), name)``
   (the code domain keeps `reweight.data.text.source_files`' crc32 order of the relative
   path).
2. A file's text is its bytes (gunzipped for ``.gz``), cut to its first ``max_file_bytes``
   bytes. Files that are not text (a NUL byte or invalid UTF-8; non-code domains only),
   empty, or byte-identical to an earlier file of the domain are skipped.
3. The domain is the longest run of those texts, in order, whose total is
   ``<= max_bytes_per_domain``.
4. The i-th text of the domain goes to validation iff
   ``i % validation_every == validation_every - 1``, otherwise to train (split by file).

Batches (`domain_lm_batch`): slot i of a step draws a window of ``seq_len + 1`` tokens from
the train split of domain ``groups[i]``, at start ``floor(u_i (n_g - seq_len))`` with
``u = np.random.default_rng([DOMAIN_WINDOW_SALT, seed, step]).random(B)``; a noise slot
gets row i of ``np.random.default_rng([NOISE_SALT, seed, step]).integers(0, 256,
(B, T + 1), dtype=np.uint8)``. So slot i depends only on ``(seed, step, i, groups[i])``: a
resumed run draws the same batches, and changing another slot's domain changes nothing
else. The validation split of noise is fixed random bytes from another stream
(``NOISE_VALIDATION_SALT``); that of duplicated is the same tiny text.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import importlib.metadata
import os
import re
import zlib
from typing import NamedTuple

import numpy as np

from reweight._checks import check_int
from reweight.data import text

DOMAINS = ("code", "prose", "licenses", "tables")
NOISE = "noise"
DUPLICATED = "duplicated"
DOMAIN_WINDOW_SALT = 0x646F6D77
NOISE_SALT = 0x6E6F6973
NOISE_VALIDATION_SALT = 0x6E6F7661
PROJECT = "reweight"
DUPLICATED_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. "
    "Every one of these lines uses all twenty-six letters of the English alphabet, so a "
    "model that has seen them a thousand times has nothing new to learn here.\n"
)

_LICENSE_NAME = re.compile(r"^(licen[cs]e|copying|notice)([._-].*)?$", re.IGNORECASE)
_TABLE_SUFFIXES = (".csv", ".tsv", ".dat", ".csv.gz", ".tsv.gz", ".dat.gz")
_PROSE_SUFFIXES = (".rst", ".md")
_STDLIB_PROSE_SUFFIXES = (".txt", ".rst", ".md")
_TEST_DIRS = ("test", "tests", "idle_test")


class DomainCorpus(NamedTuple):
  """Byte tokens of every domain, split into train and validation by file.

  Attributes:
    names: the domain names; the index of a name is its domain (group) id.
    train: per domain, uint8 train tokens (the texts concatenated in order); empty for
      noise, whose windows are generated.
    validation: per domain, uint8 validation tokens.
    train_files: per domain, the names of the train texts, in order.
    validation_files: per domain, the names of the validation texts.
    tokens: uint8, every domain's train tokens concatenated (``train[g]`` is
      ``tokens[offsets[g]:offsets[g + 1]]``), for vectorized window gathers.
    offsets: int64 [G + 1].
    noise_id: the domain id of noise, or -1 without one.
  """

  names: tuple[str, ...]
  train: tuple[np.ndarray, ...]
  validation: tuple[np.ndarray, ...]
  train_files: tuple[tuple[str, ...], ...]
  validation_files: tuple[tuple[str, ...], ...]
  tokens: np.ndarray
  offsets: np.ndarray
  noise_id: int = -1


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(root: str) -> list[str]:
  """The requirement strings of ``root``: its metadata, or this checkout's pyproject.toml."""
  try:
    return list(importlib.metadata.requires(root) or ())
  except importlib.metadata.PackageNotFoundError:
    pass
  pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           os.pardir, "pyproject.toml")
  if _norm(root) == PROJECT and os.path.isfile(pyproject):  # a source checkout, not installed
    import tomllib

    with open(pyproject, "rb") as f:
      return list(tomllib.load(f)["project"]["dependencies"])
  raise ValueError(f"distribution {root!r} is not installed")


@functools.lru_cache(maxsize=4)
def _distributions(root: str) -> tuple[importlib.metadata.Distribution, ...]:
  """The installed distributions ``root`` requires, transitively (no extras, not root)."""
  installed = {}
  for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"]
    if name:
      installed.setdefault(_norm(name), dist)
  requires = {_norm(root): _requirements(root)}
  seen, todo = set(), [_norm(root)]
  while todo:
    name = todo.pop()
    if name in seen or (name not in installed and name not in requires):
      continue
    seen.add(name)
    reqs = requires[name] if name in requires else installed[name].requires or ()
    for req in reqs:
      if re.search(r"extra\s*==", req):
        continue
      todo.append(_norm(re.match(r"[A-Za-z0-9._-]+", req).group(0)))
  seen.discard(_norm(root))
  return tuple(installed[n] for n in sorted(seen) if n in installed)


def _is_license(name: str) -> bool:
  return bool(_LICENSE_NAME.match(name))


def _kind(path: str) -> str | None:
  """The domain of a file of a distribution (path as in its RECORD), or None."""
  parts = path.split("/")
  base, lower = parts[-1], parts[-1].lower()
  if _is_license(base) or (len(parts) >= 3 and parts[-3].endswith(".dist-info")
                           and parts[-2] == "licenses"):
    return "licenses"
  if lower.endswith(_TABLE_SUFFIXES) and not lower.startswith("checksum"):
    return "tables"
  if lower.endswith(_PROSE_SUFFIXES):
    return "prose"
  return None


@functools.lru_cache(maxsize=4)
def _candidates(root: str) -> dict[str, tuple[tuple[str, str], ...]]:
  """Per domain, ``(name, source)`` of every candidate, in corpus order (crc32 of name).

  ``source`` is a file path, or ``"metadata:<distribution>"`` for a METADATA description.
  """
  out = {d: [] for d in DOMAINS if d != "code"}
  for dist in _distributions(root):
    name = _norm(dist.metadata["Name"])
    out["prose"].append((f"{name}/METADATA", f"metadata:{dist.metadata['Name']}"))
    for f in dist.files or ():
      rel = str(f).replace(os.sep, "/")
      kind = _kind(rel)
      if kind is not None:
        out[kind].append((f"{name}/{rel}", str(dist.locate_file(f))))
  std = text.stdlib_root()
  for dirpath, dirnames, filenames in os.walk(std):
    dirnames[:] = sorted(d for d in dirnames
                         if d not in text.EXCLUDED_DIRS and d not in _TEST_DIRS)
    for base in filenames:
      path = os.path.join(dirpath, base)
      rel = "stdlib/" + os.path.relpath(path, std).replace(os.sep, "/")
      if _is_license(base):
        out["licenses"].append((rel, path))
      elif base.lower().endswith(_STDLIB_PROSE_SUFFIXES):
        out["prose"].append((rel, path))
      elif base.lower().endswith(_TABLE_SUFFIXES):
        out["tables"].append((rel, path))
  key = lambda c: (zlib.crc32(c[0].encode("utf-8")), c[0])
  return {d: tuple(sorted(set(c), key=key)) for d, c in out.items()}


def domain_sources(root: str = PROJECT) -> dict[str, tuple[tuple[str, str], ...]]:
  """The candidate files of every domain in corpus order: ``{domain: ((name, source), ...)}``.

  ``source`` is a file path, or ``"metadata:<distribution>"`` for a distribution's long
  description; `read_source` reads either. Candidates are sorted by
  ``(zlib.crc32(name), name)``; the code domain lists the standard library's ``.py``
  files as ``"stdlib/<relative path>"`` in `reweight.data.text.source_files` order.

  Args:
    root: the distribution whose (transitive) dependencies supply the files.

  Returns:
    A dict over `DOMAINS`.

  Examples:
    >>> src = domain_sources()
    >>> sorted(src) == sorted(DOMAINS) and all(len(c) > 0 for c in src.values())
    True
    >>> any(name.startswith("numpy/") for name, _ in src["licenses"])
    True
  """
  std = text.stdlib_root()
  code = tuple((f"stdlib/{p}", os.path.join(std, *p.split("/")))
               for p, _ in text.source_files(std, max_file_bytes=1 << 62))
  return {"code": code, **_candidates(root)}


def read_source(source: str) -> bytes:
  """The bytes of a candidate: the file (gunzipped if ``.gz``) or a METADATA description.

  Examples:
    >>> read_source("metadata:numpy")[:200].lower().count(b"numpy") > 0
    True
  """
  if source.startswith("metadata:"):
    meta = importlib.metadata.metadata(source[len("metadata:"):])
    body = meta.get_payload() or meta.get("Description") or ""
    return body.encode("utf-8")
  with open(source, "rb") as f:
    data = f.read()
  return gzip.decompress(data) if source.endswith(".gz") else data


def _is_text(data: bytes) -> bool:
  """No NUL byte and valid UTF-8 (a character cut at the end by ``max_file_bytes`` is fine)."""
  if b"\0" in data:
    return False
  try:
    codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
  except UnicodeDecodeError:
    return False
  return True


def _select(domain: str, sources, max_bytes: int, max_file_bytes: int) -> list[tuple[str, bytes]]:
  chosen, seen, total = [], set(), 0
  for name, source in sources:
    data = read_source(source)[:max_file_bytes]
    if domain != "code" and not _is_text(data):
      continue
    digest = hashlib.sha1(data).digest()
    if not data or digest in seen:
      continue
    if total + len(data) > max_bytes:
      break
    seen.add(digest)
    chosen.append((name, data))
    total += len(data)
  return chosen


def domain_corpus(max_bytes_per_domain: int = 1 << 19, *, validation_every: int = 10,
                  noise: bool = True, duplicated: bool = True, max_file_bytes: int = 16384,
                  root: str = PROJECT) -> DomainCorpus:
  """Reads up to ``max_bytes_per_domain`` bytes of every domain, split by file.

  Rule (module docstring): per domain, the longest run of candidate texts (crc32 order,
  each cut to ``max_file_bytes``, non-text / empty / duplicate texts skipped) totalling
  ``<= max_bytes_per_domain``; text i goes to validation iff
  ``i % validation_every == validation_every - 1``. Then, if asked, ``noise``: an empty
  train split, and ``n = max(1024, max_bytes_per_domain // validation_every)`` validation
  bytes ``default_rng([NOISE_VALIDATION_SALT]).integers(0, 256, n, dtype=np.uint8)``; and
  ``duplicated``: `DUPLICATED_TEXT` repeated ``max(2, max_bytes_per_domain // len)`` times
  for train and ``max(2, max_bytes_per_domain // validation_every // len)`` times for
  validation.

  Args:
    max_bytes_per_domain: byte budget of train + validation of each real domain.
    validation_every: one text in this many goes to validation (>= 2).
    noise: add the random-bytes domain.
    duplicated: add the repeated-tiny-text domain.
    max_file_bytes: each file contributes at most its first this many bytes.
    root: the distribution whose dependencies supply the files.

  Returns:
    A `DomainCorpus` with domains ``DOMAINS (+ "noise") (+ "duplicated")`` in that order.

  Raises:
    ValueError: on a bad argument, or when a domain's budget leaves a split without a file.

  Examples:
    >>> c = domain_corpus(1 << 16, validation_every=4)
    >>> c.names
    ('code', 'prose', 'licenses', 'tables', 'noise', 'duplicated')
    >>> all(len(t) + len(v) <= 1 << 16 for t, v in zip(c.train[:4], c.validation[:4]))
    True
    >>> len(c.train[4]), c.train[5][:9].tobytes()
    (0, b'The quick')
  """
  max_bytes = check_int("max_bytes_per_domain", max_bytes_per_domain, 1)
  every = check_int("validation_every", validation_every, 2)
  max_file_bytes = check_int("max_file_bytes", max_file_bytes, 1)
  names, train, val, train_files, val_files = [], [], [], [], []
  for domain, sources in domain_sources(root).items():
    chosen = _select(domain, sources, max_bytes, max_file_bytes)
    is_val = [i % every == every - 1 for i in range(len(chosen))]
    t = [c for c, v in zip(chosen, is_val) if not v]
    v = [c for c, v in zip(chosen, is_val) if v]
    if not t or not v:
      raise ValueError(
          f"max_bytes_per_domain={max_bytes} selects {len(t)} train and {len(v)} validation "
          f"files of domain {domain!r} (validation_every={every}, max_file_bytes="
          f"{max_file_bytes}); raise max_bytes_per_domain or lower validation_every")
    names.append(domain)
    for split, files, parts in ((train, train_files, t), (val, val_files, v)):
      split.append(np.frombuffer(b"".join(d for _, d in parts), dtype=np.uint8).copy())
      files.append(tuple(n for n, _ in parts))
  noise_id = -1
  if noise:
    noise_id = len(names)
    n_val = max(1024, max_bytes // every)
    names.append(NOISE)
    train.append(np.zeros(0, np.uint8))
    val.append(np.random.default_rng([NOISE_VALIDATION_SALT]).integers(
        0, text.VOCAB_SIZE, n_val, dtype=np.uint8))
    train_files.append(())
    val_files.append(())
  if duplicated:
    tiny = text.encode(DUPLICATED_TEXT)
    names.append(DUPLICATED)
    train.append(np.tile(tiny, max(2, max_bytes // len(tiny))))
    val.append(np.tile(tiny, max(2, max_bytes // every // len(tiny))))
    train_files.append(("DUPLICATED_TEXT",))
    val_files.append(("DUPLICATED_TEXT",))
  offsets = np.concatenate([[0], np.cumsum([len(t) for t in train])]).astype(np.int64)
  tokens = np.concatenate(train)
  train = tuple(tokens[offsets[g]:offsets[g + 1]] for g in range(len(names)))
  return DomainCorpus(tuple(names), train, tuple(val), tuple(train_files), tuple(val_files),
                      tokens, offsets, noise_id)


def domain_stats(corpus: DomainCorpus) -> list[dict]:
  """One row per domain: name, id, train / validation bytes and files (for tables).

  Examples:
    >>> rows = domain_stats(domain_corpus(1 << 16, validation_every=4))
    >>> rows[0]["domain"], rows[0]["train_bytes"] > 0, rows[4]["train_files"]
    ('code', True, 0)
  """
  return [{"domain": name, "id": g,
           "train_bytes": int(len(corpus.train[g])),
           "validation_bytes": int(len(corpus.validation[g])),
           "train_files": len(corpus.train_files[g]),
           "validation_files": len(corpus.validation_files[g])}
          for g, name in enumerate(corpus.names)]


def _check_groups(corpus: DomainCorpus, groups) -> np.ndarray:
  groups = np.asarray(groups)
  num = len(corpus.names)
  if groups.ndim != 1 or groups.size == 0 or not np.issubdtype(groups.dtype, np.integer):
    raise ValueError(f"groups must be a non-empty 1-D int array of domain ids, got "
                     f"{groups.dtype}{groups.shape}")
  if groups.min() < 0 or groups.max() >= num:
    bad = np.unique(groups[(groups < 0) | (groups >= num)])
    raise ValueError(f"group ids {bad.tolist()} are outside [0, {num}); domains are "
                     f"{dict(enumerate(corpus.names))}")
  return groups.astype(np.int64)


def domain_lm_batch(corpus: DomainCorpus, groups: np.ndarray, step: int, *, seq_len: int,
                    seed: int, slot_offset: int = 0) -> dict[str, np.ndarray]:
  """The training batch of ``step``: slot i is a random window of domain ``groups[i]``.

  Slot i is global slot ``j = slot_offset + i``. With
  ``u = default_rng([DOMAIN_WINDOW_SALT, seed, step]).random(slot_offset + B)`` the window
  of slot i starts at ``floor(u_j (n_g - T))`` of ``corpus.train[g]`` (``n_g`` its length,
  ``g = groups[i]``); a noise slot is row j of ``default_rng([NOISE_SALT, seed,
  step]).integers(0, 256, (slot_offset + B, T + 1), dtype=np.uint8)``. Inputs are the first
  T tokens, targets the last T. Windows may span a file boundary. In a multi-process run,
  process k passes its slice of the plan (`OnlineMixtureSampler.groups`) and
  ``slot_offset = k * local_batch_size``: the processes' batches then concatenate to the
  single-process batch of the global plan.

  Args:
    corpus: a `DomainCorpus`.
    groups: int [B], the domain of every slot (e.g. an `online_mixture_sampler` plan).
    step: the training step (>= 0).
    seq_len: T.
    seed: the data seed (>= 0).
    slot_offset: the global index of slot 0 (>= 0).

  Returns:
    ``{"x": int32 [B, T], "y": int32 [B, T], "label": the same array as "y",
    "group": int32 [B]}``.

  Examples:
    >>> c = domain_corpus(1 << 16, validation_every=4)
    >>> b = domain_lm_batch(c, np.array([0, 3, 4, 5]), 7, seq_len=16, seed=0)
    >>> b["x"].shape, b["group"].tolist(), bool((b["x"][:, 1:] == b["y"][:, :-1]).all())
    ((4, 16), [0, 3, 4, 5], True)
  """
  groups = _check_groups(corpus, groups)
  seq_len = check_int("seq_len", seq_len, 1)
  seed = check_int("seed", seed, 0)
  step = check_int("step", step, 0)
  offset = check_int("slot_offset", slot_offset, 0)
  lengths = np.diff(corpus.offsets)
  is_noise = groups == corpus.noise_id
  too_short = np.flatnonzero(lengths < seq_len + 1)
  too_short = too_short[too_short != corpus.noise_id]
  if too_short.size and np.isin(groups, too_short).any():
    short = np.intersect1d(groups, too_short)
    raise ValueError(
        f"domains {[corpus.names[g] for g in short]} have fewer than seq_len + 1 = "
        f"{seq_len + 1} train tokens ({lengths[short].tolist()})")
  u = np.random.default_rng([DOMAIN_WINDOW_SALT, seed, step]).random(offset + len(groups))
  u = u[offset:]
  span = np.maximum(lengths[groups] - seq_len, 1)
  starts = corpus.offsets[groups] + np.minimum((u * span).astype(np.int64), span - 1)
  if len(corpus.tokens) >= seq_len + 1:
    out = text.windows(corpus.tokens, np.where(is_noise, 0, starts), seq_len)
    x, y = out["x"], out["label"]
  else:  # only noise
    x = y = np.zeros((len(groups), seq_len), np.int32)
  if is_noise.any():
    rnd = np.random.default_rng([NOISE_SALT, seed, step]).integers(
        0, text.VOCAB_SIZE, (offset + len(groups), seq_len + 1), dtype=np.uint8)[offset:]
    x, y = x.copy(), y.copy()
    x[is_noise] = rnd[is_noise, :-1]
    y[is_noise] = rnd[is_noise, 1:]
  return {"x": x, "y": y, "label": y, "group": groups.astype(np.int32)}


def domain_eval_windows(corpus: DomainCorpus, seq_len: int, max_windows_per_domain: int
                        ) -> dict[str, np.ndarray]:
  """Fixed validation windows of every domain, domain after domain.

  Domain g contributes ``text.eval_windows(corpus.validation[g], seq_len,
  max_windows_per_domain)`` (non-overlapping windows from the start of its validation
  split), with ``group = g``.

  Args:
    corpus: a `DomainCorpus`.
    seq_len: T.
    max_windows_per_domain: cap on the windows of each domain.

  Returns:
    ``{"x": int32 [K, T], "y": int32 [K, T], "label": "y", "group": int32 [K]}``.

  Examples:
    >>> c = domain_corpus(1 << 16, validation_every=4)
    >>> ev = domain_eval_windows(c, seq_len=32, max_windows_per_domain=3)
    >>> ev["x"].shape, ev["group"].tolist()[:7]
    ((18, 32), [0, 0, 0, 1, 1, 1, 2])
  """
  max_windows = check_int("max_windows_per_domain", max_windows_per_domain, 1)
  xs, ys, gs = [], [], []
  for g, val in enumerate(corpus.validation):
    w = text.eval_windows(val, seq_len, max_windows)
    xs.append(w["x"])
    ys.append(w["label"])
    gs.append(np.full(len(w["x"]), g, np.int32))
  y = np.concatenate(ys)
  return {"x": np.concatenate(xs), "y": y, "label": y, "group": np.concatenate(gs)}


__all__ = [
    "DOMAINS",
    "DUPLICATED",
    "DUPLICATED_TEXT",
    "DOMAIN_WINDOW_SALT",
    "NOISE",
    "NOISE_SALT",
    "NOISE_VALIDATION_SALT",
    "DomainCorpus",
    "domain_corpus",
    "domain_eval_windows",
    "domain_lm_batch",
    "domain_sources",
    "domain_stats",
    "read_source",
]
