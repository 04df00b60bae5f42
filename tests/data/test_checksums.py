"""Pinned data: the generated datasets every experiment reads are the bytes the README's
numbers were made from.

MNIST-1D is generated locally (`reweight.data.mnist1d`: the legacy global NumPy generator
seeded 42, float64 arithmetic, float32 output), and the text corpora are read from the
interpreter's standard library and the installed packages. A machine that builds other
bytes (another ``mnist1d`` or NumPy, another platform) fails here instead of silently
moving the results in ``experiments/README.md``.

The SHA-256 covers each array's dtype, shape and bytes, in split order. The text corpora
depend on the installation by design: their digests are pinned for the interpreter version
(and, for the domain corpus, the installed distributions' versions) they were taken on; on
another installation the corpus test is skipped with the reason, while MNIST-1D must match
everywhere.
"""

import hashlib
import sys

import numpy as np
import pytest

from configs import domain_mixing as domain_config
from configs import lm_schedules as lm_config
from reweight.data import datasets, domain_text, text


def digest(*arrays) -> str:
  """SHA-256 over (dtype, shape, bytes) of each array, in order."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(a.dtype.str.encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()


MNIST1D = {
    "train": "fce149856d7976198ae3c3c93fa3fd55279f980982d79fa45dd156fe57d32e75",
    "test": "47eb99b0f9cfdda72b2b1c34e5ae6d194b488c6806d2d8dce748a3c8bf3657f9",
}
# Taken on CPython 3.11.7 with configs/lm_schedules.py's corpus settings (968,423 train and
# 66,845 held-out bytes).
STDLIB_PYTHON = "3.11.7"
STDLIB = "6f45a3a9dedc6c26f4bcad09e906836e15dadc7b6a901768496bf4dc0b5f7820"
# configs/domain_mixing.py's corpus, for this interpreter and these distributions.
DOMAIN_FINGERPRINT = "32b98689391bebd93ad63e30c31385eec3e8e511dc3cc8cb57813dba22fe115f"
DOMAIN = "fce4b563356f4c0cd3e1a0eac5ac7eb7a628084e23fe346fc650091e58179a02"


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist1d_arrays_are_the_pinned_ones(split):
  ds = datasets.load("mnist1d", split)
  assert {k: v.shape for k, v in ds.items()} == {
      "x": ({"train": 4000, "test": 1000}[split], 40),
      "label": ({"train": 4000, "test": 1000}[split],),
      "id": ({"train": 4000, "test": 1000}[split],)}
  assert digest(ds["x"], ds["label"], ds["id"]) == MNIST1D[split], (
      f"MNIST-1D {split} differs from the pinned arrays: this machine generates other data, "
      "so the MNIST-1D numbers of experiments/README.md do not apply to it")


def test_digest_sees_a_one_ulp_change():
  x = np.linspace(-1, 1, 40, dtype=np.float32).reshape(4, 10)
  y = x.copy()
  y[2, 3] = np.nextafter(y[2, 3], np.float32(2))
  assert digest(x) != digest(y)
  assert digest(x) != digest(x.astype(np.float64))  # the dtype counts
  assert digest(x) != digest(x.reshape(10, 4))  # and the shape


def test_lm_schedules_corpus_is_the_pinned_one():
  version = ".".join(map(str, sys.version_info[:3]))
  if version != STDLIB_PYTHON:
    pytest.skip(f"the stdlib corpus is pinned for CPython {STDLIB_PYTHON}; this is {version}, "
                "whose standard library gives other text (and other LM numbers)")
  c = lm_config.get_config()
  corpus = text.stdlib_corpus(c.corpus_bytes, c.validation_every,
                              max_file_bytes=c.max_file_bytes)
  assert digest(corpus.train, corpus.validation, corpus.train_offsets,
                corpus.validation_offsets) == STDLIB, (
      "the stdlib corpus of configs/lm_schedules.py differs from the pinned bytes")


def domain_fingerprint() -> str:
  """The interpreter version and the versions of the distributions the domain corpus reads."""
  dists = sorted(f"{d.metadata['Name']}=={d.version}"
                 for d in domain_text._distributions(domain_text.PROJECT))
  return hashlib.sha256(" ".join([sys.version.split()[0], *dists]).encode()).hexdigest()


def test_domain_corpus_is_the_pinned_one():
  if domain_fingerprint() != DOMAIN_FINGERPRINT:
    pytest.skip("the domain corpus is pinned for another interpreter or other versions of the "
                "installed distributions (its text follows them by design)")
  c = domain_config.get_config()
  corpus = domain_text.domain_corpus(c.max_bytes_per_domain,
                                     validation_every=c.validation_every)
  assert digest(corpus.tokens, corpus.offsets, *corpus.validation) == DOMAIN, (
      "the domain corpus of configs/domain_mixing.py differs from the pinned bytes")
