"""The multi-domain corpus: selection and split re-derived, windows re-derived, errors."""

import gzip
import importlib.metadata
import os
import zlib

import numpy as np
import pytest

from reweight.data import domain_text as dt
from reweight.data import text

BUDGET = 1 << 17
EVERY = 4
CAP = 8192


@pytest.fixture(scope="module")
def corpus():
  return dt.domain_corpus(BUDGET, validation_every=EVERY, max_file_bytes=CAP)


def _read(source):
  if source.startswith("metadata:"):
    meta = importlib.metadata.metadata(source.split(":", 1)[1])
    return (meta.get_payload() or meta.get("Description") or "").encode("utf-8")
  with open(source, "rb") as f:
    data = f.read()
  return gzip.decompress(data) if source.endswith(".gz") else data


def _text_like(data):
  if b"\0" in data:
    return False
  for cut in range(4):  # the byte cap may split the last UTF-8 character
    try:
      data[:len(data) - cut].decode("utf-8")
      return True
    except UnicodeDecodeError:
      continue
  return False


def _rederive(domain, sources):
  chosen, seen, total = [], set(), 0
  for name, source in sources:
    data = _read(source)[:CAP]
    if not data or data in seen or (domain != "code" and not _text_like(data)):
      continue
    if total + len(data) > BUDGET:
      break
    seen.add(data)
    chosen.append((name, data))
    total += len(data)
  val = [c for i, c in enumerate(chosen) if i % EVERY == EVERY - 1]
  train = [c for i, c in enumerate(chosen) if i % EVERY != EVERY - 1]
  return train, val


def test_sources_order_and_kinds():
  src = dt.domain_sources()
  assert tuple(src) == dt.DOMAINS
  std = text.stdlib_root()
  assert [n for n, _ in src["code"]] == [
      "stdlib/" + p for p, _ in text.source_files(std, max_file_bytes=1 << 62)]
  for domain in ("prose", "licenses", "tables"):
    names = [n for n, _ in src[domain]]
    assert names == sorted(names, key=lambda n: (zlib.crc32(n.encode()), n))
    assert len(set(names)) == len(names) > 5
  base = lambda n: n.rsplit("/", 1)[-1].lower()
  assert all(base(n).startswith(("licen", "copying", "notice")) or "/licenses/" in n
             for n, _ in src["licenses"])
  assert all(base(n).endswith((".csv", ".tsv", ".dat", ".gz")) for n, _ in src["tables"])
  assert all(base(n).endswith((".md", ".rst", ".txt", "metadata")) for n, _ in src["prose"])
  names = {n for d in src.values() for n, _ in d}
  # Known files shipped by the dependencies and the stdlib, found without a machine path.
  assert "scikit-learn/sklearn/datasets/data/iris.csv" in names
  assert "numpy/METADATA" in names
  if os.path.isfile(os.path.join(std, "LICENSE.txt")):  # some distributions strip it
    assert "stdlib/LICENSE.txt" in names
  assert not any(n.startswith("reweight/") for n in names)  # the project itself is no data
  for _, path in src["tables"][:20]:
    assert os.path.isfile(path)


def test_selection_and_split_rederived(corpus):
  src = dt.domain_sources()
  for g, domain in enumerate(dt.DOMAINS):
    train, val = _rederive(domain, src[domain])
    assert corpus.names[g] == domain
    assert corpus.train_files[g] == tuple(n for n, _ in train)
    assert corpus.validation_files[g] == tuple(n for n, _ in val)
    assert corpus.train[g].tobytes() == b"".join(d for _, d in train)
    assert corpus.validation[g].tobytes() == b"".join(d for _, d in val)
    assert len(corpus.train[g]) + len(corpus.validation[g]) <= BUDGET
    assert set(corpus.train_files[g]).isdisjoint(corpus.validation_files[g])
    assert corpus.train[g].dtype == np.uint8


def test_domains_differ_in_character(corpus):
  def share(tokens, chars):
    return np.isin(tokens, np.frombuffer(chars, np.uint8)).mean()

  digits = [share(corpus.train[g], b"0123456789") for g in range(4)]
  assert digits[3] == max(digits) and digits[3] > 0.3            # tables are numbers
  assert share(corpus.train[0], b"():=_") > share(corpus.train[1], b"():=_")  # code
  lic = corpus.train[2].tobytes().lower()
  assert lic.count(b"copyright") + lic.count(b"licen") > 50


def test_noise_and_duplicated(corpus):
  names = corpus.names
  assert names == ("code", "prose", "licenses", "tables", "noise", "duplicated")
  noise, dup = names.index("noise"), names.index("duplicated")
  assert corpus.noise_id == noise and len(corpus.train[noise]) == 0
  n_val = max(1024, BUDGET // EVERY)
  expected = np.random.default_rng([dt.NOISE_VALIDATION_SALT]).integers(0, 256, n_val, np.uint8)
  np.testing.assert_array_equal(corpus.validation[noise], expected)
  tiny = dt.DUPLICATED_TEXT.encode()
  assert 100 <= len(tiny) <= 1000
  assert corpus.train[dup].tobytes() == tiny * max(2, BUDGET // len(tiny))
  assert corpus.validation[dup].tobytes() == tiny * max(2, BUDGET // EVERY // len(tiny))
  plain = dt.domain_corpus(BUDGET, validation_every=EVERY, max_file_bytes=CAP, noise=False,
                           duplicated=False)
  assert plain.names == dt.DOMAINS and plain.noise_id == -1
  assert plain.train[3].tobytes() == corpus.train[3].tobytes()


def test_stats_and_flat_tokens(corpus):
  rows = dt.domain_stats(corpus)
  for g, row in enumerate(rows):
    assert row == {"domain": corpus.names[g], "id": g,
                   "train_bytes": len(corpus.train[g]),
                   "validation_bytes": len(corpus.validation[g]),
                   "train_files": len(corpus.train_files[g]),
                   "validation_files": len(corpus.validation_files[g])}
    np.testing.assert_array_equal(
        corpus.tokens[corpus.offsets[g]:corpus.offsets[g + 1]], corpus.train[g])


def test_lm_batch_rederived(corpus):
  T, seed, step = 24, 3, 11
  groups = np.array([0, 1, 2, 3, 4, 5, 0, 4, 3, 3])
  b = dt.domain_lm_batch(corpus, groups, step, seq_len=T, seed=seed)
  u = np.random.default_rng([dt.DOMAIN_WINDOW_SALT, seed, step]).random(len(groups))
  rnd = np.random.default_rng([dt.NOISE_SALT, seed, step]).integers(
      0, 256, (len(groups), T + 1), np.uint8)
  assert b["x"].dtype == b["y"].dtype == b["group"].dtype == np.int32
  assert b["x"].shape == b["y"].shape == (len(groups), T)
  np.testing.assert_array_equal(b["group"], groups)
  assert b["label"] is b["y"]
  for i, g in enumerate(groups):
    if corpus.names[g] == "noise":
      window = rnd[i]
    else:
      tokens = corpus.train[g]
      start = int(np.floor(u[i] * (len(tokens) - T)))
      window = tokens[start:start + T + 1]
    np.testing.assert_array_equal(b["x"][i], window[:-1])
    np.testing.assert_array_equal(b["y"][i], window[1:])


def test_lm_batch_deterministic_per_slot(corpus):
  groups = np.array([0, 1, 2, 3, 4, 5])
  a = dt.domain_lm_batch(corpus, groups, 5, seq_len=16, seed=0)
  again = dt.domain_lm_batch(corpus, groups, 5, seq_len=16, seed=0)
  np.testing.assert_array_equal(a["x"], again["x"])
  # Changing the domain of slot 0 leaves every other slot unchanged.
  other = dt.domain_lm_batch(corpus, np.array([3, 1, 2, 3, 4, 5]), 5, seq_len=16, seed=0)
  np.testing.assert_array_equal(a["x"][1:], other["x"][1:])
  later = dt.domain_lm_batch(corpus, groups, 6, seq_len=16, seed=0)
  assert not np.array_equal(a["x"][4], later["x"][4])  # fresh noise every step
  other_seed = dt.domain_lm_batch(corpus, groups, 5, seq_len=16, seed=1)
  assert not np.array_equal(a["x"], other_seed["x"])


def test_process_slices_concatenate_to_the_global_batch(corpus):
  groups = np.array([0, 4, 1, 2, 3, 5, 4, 0])
  full = dt.domain_lm_batch(corpus, groups, 3, seq_len=12, seed=2)
  for k in (2, 4):
    local = len(groups) // k
    parts = [dt.domain_lm_batch(corpus, groups[i * local:(i + 1) * local], 3, seq_len=12,
                                seed=2, slot_offset=i * local) for i in range(k)]
    for key in ("x", "y", "group"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])


def test_eval_windows_rederived(corpus):
  T, K = 32, 5
  ev = dt.domain_eval_windows(corpus, T, K)
  row = 0
  for g, val in enumerate(corpus.validation):
    count = min(K, (len(val) - 1) // T)
    for k in range(count):
      np.testing.assert_array_equal(ev["x"][row], val[k * T:k * T + T])
      np.testing.assert_array_equal(ev["y"][row], val[k * T + 1:k * T + T + 1])
      assert ev["group"][row] == g
      row += 1
  assert row == len(ev["x"]) == len(ev["group"])


def test_errors(corpus):
  with pytest.raises(ValueError, match=r"group ids \[6, 9\] are outside \[0, 6\)"):
    dt.domain_lm_batch(corpus, np.array([0, 9, 6]), 0, seq_len=8, seed=0)
  with pytest.raises(ValueError, match="group ids"):
    dt.domain_lm_batch(corpus, np.array([-1]), 0, seq_len=8, seed=0)
  with pytest.raises(ValueError, match="1-D int array"):
    dt.domain_lm_batch(corpus, np.array([0.5]), 0, seq_len=8, seed=0)
  with pytest.raises(ValueError, match="seq_len"):
    dt.domain_lm_batch(corpus, np.array([0]), 0, seq_len=0, seed=0)
  with pytest.raises(ValueError, match="fewer than seq_len"):
    dt.domain_lm_batch(corpus, np.array([0]), 0, seq_len=10 ** 7, seed=0)
  with pytest.raises(ValueError, match="max_bytes_per_domain=100 selects"):
    dt.domain_corpus(100)
  with pytest.raises(ValueError, match="validation_every"):
    dt.domain_corpus(BUDGET, validation_every=1)
  with pytest.raises(ValueError, match="'no-such-distribution-xyz' is not installed"):
    dt.domain_sources(root="no-such-distribution-xyz")
