"""Tests for reweight/data/corruptions.py; numbers re-derived with NumPy from the recipes."""

from __future__ import annotations

import numpy as np
import pytest

from reweight.data import corruptions as cr

C = 10


def _dataset(n=3000, num_classes=C, seed=0):
  rng = np.random.default_rng(seed + 1000)
  return {
      "x": rng.normal(size=(n, 3)).astype(np.float32),
      "label": rng.integers(0, num_classes, size=n).astype(np.int32),
      "id": np.arange(n, dtype=np.int32),
  }


def _reference_flips(labels, rates, kind, num_classes, rng):
  u = rng.random(len(labels))
  k = rng.integers(1, num_classes, size=len(labels))
  flip = u < rates
  new = labels.copy()
  if kind == "symmetric":
    new[flip] = (labels[flip] + k[flip]) % num_classes
  else:
    new[flip] = (labels[flip] + 1) % num_classes
  return new


# ---------------------------------------------------------------- label_noise


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45])
def test_label_noise_matches_recipe(kind, rate):
  ds = _dataset()
  out = cr.label_noise(ds, kind, rate, C, seed=3)
  rng = np.random.default_rng([cr.LABEL_NOISE_SALT, 3])
  expected = _reference_flips(ds["label"], rate, kind, C, rng)
  np.testing.assert_array_equal(out["label"], expected)
  np.testing.assert_array_equal(out["clean_label"], ds["label"])
  np.testing.assert_array_equal(out["is_noisy"], out["label"] != out["clean_label"])
  assert out["is_noisy"].dtype == bool and out["label"].dtype == ds["label"].dtype
  np.testing.assert_array_equal(out["x"], ds["x"])
  # Realised rate within 4 binomial standard deviations of the requested one.
  n = len(ds["label"])
  assert abs(out["is_noisy"].mean() - rate) <= 4 * np.sqrt(rate * (1 - rate) / n) + 1e-12


def test_symmetric_flips_to_every_other_class_uniformly():
  ds = {"label": np.zeros(20000, dtype=np.int64)}
  out = cr.label_noise(ds, "symmetric", 0.5, C, seed=0)
  noisy = out["label"][out["is_noisy"]]
  assert 0 not in noisy  # "other class": a flip always changes the label
  freq = np.bincount(noisy, minlength=C)[1:] / len(noisy)
  np.testing.assert_allclose(freq, np.full(C - 1, 1 / (C - 1)), atol=0.01)


def test_pairflip_mapping():
  ds = _dataset()
  out = cr.label_noise(ds, "pairflip", 0.4, C, seed=1)
  m = out["is_noisy"]
  np.testing.assert_array_equal(out["label"][m], (ds["label"][m] + 1) % C)
  np.testing.assert_array_equal(out["label"][~m], ds["label"][~m])


def test_noise_sets_nested_across_rates_and_kinds():
  ds = _dataset()
  low = cr.label_noise(ds, "symmetric", 0.2, C, seed=5)["is_noisy"]
  high = cr.label_noise(ds, "symmetric", 0.4, C, seed=5)["is_noisy"]
  pair = cr.label_noise(ds, "pairflip", 0.2, C, seed=5)["is_noisy"]
  assert np.all(high[low])
  np.testing.assert_array_equal(low, pair)


def test_label_noise_keeps_first_clean_label_and_does_not_mutate():
  ds = _dataset()
  before = {k: v.copy() for k, v in ds.items()}
  once = cr.label_noise(ds, "symmetric", 0.3, C, seed=0)
  twice = cr.label_noise(once, "pairflip", 0.3, C, seed=1)
  np.testing.assert_array_equal(twice["clean_label"], ds["label"])
  np.testing.assert_array_equal(twice["is_noisy"], twice["label"] != ds["label"])
  for k in ds:
    np.testing.assert_array_equal(ds[k], before[k])
  assert "clean_label" not in ds


def test_label_noise_seed_changes_draws():
  ds = _dataset()
  a = cr.label_noise(ds, "symmetric", 0.3, C, seed=0)["is_noisy"]
  b = cr.label_noise(ds, "symmetric", 0.3, C, seed=1)["is_noisy"]
  assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(kind="uniform", rate=0.2), r"kind='uniform'.*\['symmetric', 'pairflip'\]"),
        (dict(kind="symmetric", rate=1.0), r"rate=1\.0.*\[0, 1\)"),
        (dict(kind="symmetric", rate=-0.1), r"rate=-0\.1.*\[0, 1\)"),
        (dict(kind="pairflip", rate=float("nan")), r"rate=nan.*\[0, 1\)"),
    ],
)
def test_label_noise_bad_input(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    cr.label_noise(_dataset(100), num_classes=C, seed=0, **kwargs)


def test_label_noise_label_out_of_range():
  with pytest.raises(ValueError, match="num_classes=5"):
    cr.label_noise(_dataset(100), "symmetric", 0.1, 5, seed=0)


# ------------------------------------------------------------ class_imbalance


@pytest.mark.parametrize("ratio", [1.0, 10.0, 50.0])
def test_class_imbalance_counts_follow_formula(ratio):
  ds = _dataset()
  out = cr.class_imbalance(ds, ratio, C, seed=2)
  n_max = np.bincount(ds["label"], minlength=C).min()
  expected = [int(np.floor(n_max * ratio ** (-c / (C - 1)))) for c in range(C)]
  assert np.bincount(out["label"], minlength=C).tolist() == expected
  assert expected[0] == n_max and expected[-1] == int(np.floor(n_max / ratio))


def test_class_imbalance_selection_and_ids():
  ds = _dataset()
  out = cr.class_imbalance(ds, 10.0, C, seed=4)
  # Recipe: per class, permute its members with one shared rng, keep the first quota.
  rng = np.random.default_rng([cr.CLASS_IMBALANCE_SALT, 4])
  n_max = np.bincount(ds["label"], minlength=C).min()
  keep = []
  for c in range(C):
    quota = int(np.floor(n_max * 10.0 ** (-c / (C - 1))))
    keep.extend(rng.permutation(np.flatnonzero(ds["label"] == c))[:quota].tolist())
  keep = np.sort(keep)
  np.testing.assert_array_equal(out["orig_id"], ds["id"][keep])
  np.testing.assert_array_equal(out["id"], np.arange(len(keep)))
  np.testing.assert_array_equal(out["x"], ds["x"][keep])
  np.testing.assert_array_equal(out["label"], ds["label"][keep])


def test_class_imbalance_uses_clean_labels_and_keeps_orig_id():
  ds = cr.label_noise(_dataset(), "symmetric", 0.4, C, seed=0)
  out = cr.class_imbalance(ds, 5.0, C, seed=0)
  n_max = np.bincount(ds["clean_label"], minlength=C).min()
  expected = [int(np.floor(n_max * 5.0 ** (-c / (C - 1)))) for c in range(C)]
  assert np.bincount(out["clean_label"], minlength=C).tolist() == expected
  np.testing.assert_array_equal(out["is_noisy"], out["label"] != out["clean_label"])
  # Composing subsamples keeps ids pointing at the ORIGINAL split.
  rest, meta = cr.split_meta(out, 2, seed=0)
  np.testing.assert_array_equal(ds["x"][meta["orig_id"]], meta["x"])
  np.testing.assert_array_equal(ds["x"][rest["orig_id"]], rest["x"])


@pytest.mark.parametrize(
    "ratio, pattern",
    [(0.5, r"ratio=0\.5.*>= 1"), (float("inf"), r"ratio=inf"), (1e6, r"ratio=1000000\.0.*<= ")],
)
def test_class_imbalance_bad_ratio(ratio, pattern):
  with pytest.raises(ValueError, match=pattern):
    cr.class_imbalance(_dataset(500), ratio, C, seed=0)


# -------------------------------------------------------------------- domains


def test_domains_match_recipe():
  ds = _dataset()
  rates = [0.0, 0.2, 0.6]
  out = cr.domains(ds, rates, C, seed=7, proportions=[2, 1, 1])
  n = len(ds["label"])
  rng = np.random.default_rng([cr.DOMAINS_SALT, 7])
  sizes = [1500, 750, 750]
  perm = rng.permutation(n)
  domain = np.empty(n, dtype=int)
  start = 0
  for d, size in enumerate(sizes):
    domain[perm[start : start + size]] = d
    start += size
  expected = _reference_flips(ds["label"], np.asarray(rates)[domain], "symmetric", C, rng)
  np.testing.assert_array_equal(out["domain"], domain)
  np.testing.assert_array_equal(out["label"], expected)
  np.testing.assert_array_equal(out["is_noisy"], out["label"] != ds["label"])
  assert not out["is_noisy"][domain == 0].any()
  for d, r in enumerate(rates[1:], start=1):
    m = out["is_noisy"][domain == d]
    assert abs(m.mean() - r) <= 4 * np.sqrt(r * (1 - r) / m.size)


def test_domains_sizes_largest_remainder():
  out = cr.domains(_dataset(10), [0.1, 0.1, 0.1], C, seed=0)
  assert np.bincount(out["domain"]).tolist() == [4, 3, 3]


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(rates=[0.1, 1.2]), r"rates\[1\]=1\.2.*\[0, 1\)"),
        (dict(rates=[0.1], kind="flip"), r"kind='flip'"),
        (dict(rates=[0.1, 0.2], proportions=[1, -1]), r"proportions=\[1, -1\]"),
        (dict(rates=[0.1, 0.2], proportions=[1]), r"proportions=\[1\]"),
    ],
)
def test_domains_bad_input(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    cr.domains(_dataset(100), num_classes=C, seed=0, **kwargs)


# ----------------------------------------------------------------- split_meta


def test_split_meta_clean_disjoint_and_balanced():
  ds = cr.label_noise(_dataset(), "symmetric", 0.5, C, seed=0)
  rest, meta = cr.split_meta(ds, per_class=10, seed=3, num_classes=C)
  assert np.bincount(meta["label"], minlength=C).tolist() == [10] * C
  assert not meta["is_noisy"].any()
  np.testing.assert_array_equal(meta["label"], meta["clean_label"])
  assert not set(meta["orig_id"].tolist()) & set(rest["orig_id"].tolist())
  assert sorted(meta["orig_id"].tolist() + rest["orig_id"].tolist()) == list(range(3000))
  for part in (rest, meta):
    np.testing.assert_array_equal(part["id"], np.arange(len(part["id"])))
    np.testing.assert_array_equal(part["x"], ds["x"][part["orig_id"]])
    np.testing.assert_array_equal(part["label"], ds["label"][part["orig_id"]])
  # Recipe: per class, permute the clean members with one shared rng, take the first 10.
  rng = np.random.default_rng([cr.SPLIT_META_SALT, 3])
  expected = []
  for c in range(C):
    cand = np.flatnonzero(~ds["is_noisy"] & (ds["clean_label"] == c))
    expected.extend(rng.permutation(cand)[:10].tolist())
  np.testing.assert_array_equal(meta["orig_id"], np.sort(expected))


def test_split_meta_not_enough_clean_examples():
  ds = {"label": np.array([0, 0, 1, 1, 1]), "id": np.arange(5)}
  with pytest.raises(ValueError, match=r"per_class=3.*class 0 has only 2"):
    cr.split_meta(ds, 3, seed=0)
  with pytest.raises(ValueError, match=r"per_class=0"):
    cr.split_meta(ds, 0, seed=0)
  with pytest.raises(ValueError, match=r"class 2 has only 0"):
    cr.split_meta(ds, 1, seed=0, num_classes=3)


def test_mismatched_lengths_raise():
  with pytest.raises(ValueError, match="leading length"):
    cr.label_noise({"label": np.zeros(4, int), "x": np.zeros(3)}, "symmetric", 0.1, C, 0)


# ------------------------------------------------------------------ spurious_marker


def _binary_images(n=2000, seed=0):
  rng = np.random.default_rng(seed + 2000)
  return {
      "x": rng.random((n, 8, 8)).astype(np.float32),
      "label": rng.integers(0, 2, size=n).astype(np.int64),
      "id": np.arange(n, dtype=np.int32),
      "clean_label": rng.integers(0, 10, size=n),
  }


@pytest.mark.parametrize("agreement", [0.0, 0.7, 0.95, 1.0])
def test_spurious_marker_matches_recipe(agreement):
  ds = _binary_images()
  before = {k: v.copy() for k, v in ds.items()}
  out = cr.spurious_marker(ds, agreement, seed=4, pixels=(0, 9, 63), value=0.8)
  # Recipe: u ~ U[0, 1) from the salted stream; the marker is the label iff u < agreement.
  u = np.random.default_rng([cr.SPURIOUS_MARKER_SALT, 4]).random(len(ds["label"]))
  marker = np.where(u < agreement, ds["label"], 1 - ds["label"])
  np.testing.assert_array_equal(out["marker"], marker)
  np.testing.assert_array_equal(out["group"], 2 * ds["label"] + marker)
  flat, orig = out["x"].reshape(-1, 64), ds["x"].reshape(-1, 64)
  np.testing.assert_array_equal(flat[:, [0, 9, 63]],
                                np.repeat(np.float32(0.8) * marker[:, None], 3, 1))
  rest = np.setdiff1d(np.arange(64), [0, 9, 63])
  np.testing.assert_array_equal(flat[:, rest], orig[:, rest])
  assert out["x"].shape == ds["x"].shape and out["x"].dtype == ds["x"].dtype
  for key in ("label", "id", "clean_label"):  # ground truth and other fields kept
    np.testing.assert_array_equal(out[key], ds[key])
  for key, value in before.items():  # pure: the input is not modified
    np.testing.assert_array_equal(ds[key], value)
  if agreement in (0.0, 1.0):
    assert np.all((out["marker"] == ds["label"]) == (agreement == 1.0))
  else:  # realised agreement within 4 binomial standard deviations
    n = len(ds["label"])
    realised = np.mean(out["marker"] == ds["label"])
    assert abs(realised - agreement) <= 4 * np.sqrt(agreement * (1 - agreement) / n)


def test_spurious_marker_default_block_is_the_top_left_corner():
  ds = {"x": np.full((4, 64), 0.5, np.float32), "label": np.array([0, 1, 0, 1])}
  out = cr.spurious_marker(ds, 1.0, seed=0)
  image = out["x"].reshape(4, 8, 8)
  np.testing.assert_array_equal(image[:, :2, :2], np.array([0, 1, 0, 1.0])[:, None, None]
                                * np.ones((4, 2, 2)))
  assert np.all(image[:, 2:, :] == 0.5) and np.all(image[:, :, 2:] == 0.5)
  assert out["group"].tolist() == [0, 3, 0, 3]


@pytest.mark.parametrize(
    "ds, kwargs, pattern",
    [
        ({"x": np.zeros((3, 4)), "label": np.array([0, 1, 2])}, {}, r"binary.*\[0, 1, 2\]"),
        ({"x": np.zeros((3, 4)), "label": np.array([0, 1, 1])}, {"agreement": 1.5},
         r"agreement=1\.5"),
        ({"x": np.zeros((3, 4)), "label": np.array([0, 1, 1])}, {"pixels": (4,)},
         r"pixels=\[4\].*\[0, 4\)"),
        ({"label": np.array([0, 1, 1])}, {}, r"no 'x' field"),
    ],
)
def test_spurious_marker_bad_input(ds, kwargs, pattern):
  kwargs = {"agreement": 0.9, "seed": 0, **kwargs}
  with pytest.raises(ValueError, match=pattern):
    cr.spurious_marker(ds, **kwargs)
