"""Corruptions of a dataset held as a dict of NumPy arrays, keeping the ground truth.

A dataset here is ``{"x": [n, ...], "label": [n], "id": [n], ...}`` (what
`reweight.data.load` returns): every value is an array with the same leading length.
Every function is pure (the input is not modified), deterministic given ``seed``, and
vectorised over examples. Apply them to the TRAIN split only.

Ground truth kept for analysis:

* `label_noise` / `domains` add ``clean_label`` and ``is_noisy = label != clean_label``
  (and ``domain``); applied to an already corrupted dataset they keep the first
  ``clean_label``.
* `spurious_marker` stamps a binary marker on the inputs and adds ``marker`` and
  ``group = 2 * label + marker``; unlike the others it is meant for every split (with the
  marker-label agreement of that split).
* `class_imbalance` / `split_meta` subsample: the returned ``id`` is renumbered
  ``0..n'-1`` so that it indexes the returned arrays (per-example weighting state can be
  a table of size n'), and ``orig_id`` holds the id in the original split (kept from the
  input when it already has one).

Random streams: each function draws from ``np.random.default_rng([SALT, seed])`` with its
own SALT constant (below), so one seed used for several corruptions and for the samplers
gives unrelated streams. The recipes are spelled out in each docstring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

NOISE_KINDS = ("symmetric", "pairflip")
LABEL_NOISE_SALT = 0x6E6F6973
CLASS_IMBALANCE_SALT = 0x696D6261
DOMAINS_SALT = 0x646F6D73
SPLIT_META_SALT = 0x6D657461
SPURIOUS_MARKER_SALT = 0x6D61726B

Dataset = Mapping[str, np.ndarray]


def _num_examples(ds: Dataset) -> int:
  if "label" not in ds:
    raise ValueError(f"the dataset has no 'label' field; fields are {sorted(ds)}")
  n = len(ds["label"])
  bad = {k: len(v) for k, v in ds.items() if len(v) != n}
  if bad:
    raise ValueError(f"fields {bad} do not have the leading length {n} of 'label'")
  return n


def _check_num_classes(num_classes: int, labels: np.ndarray) -> int:
  num_classes = int(num_classes)
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes!r} must be >= 2")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"labels span [{labels.min()}, {labels.max()}], outside [0, num_classes={num_classes})"
    )
  return num_classes


def _check_rate(rate: float, name: str = "rate") -> float:
  if not np.isscalar(rate) or not 0.0 <= float(rate) < 1.0:
    raise ValueError(f"{name}={rate!r} is not a number in [0, 1)")
  return float(rate)


def _check_kind(kind: str) -> None:
  if kind not in NOISE_KINDS:
    raise ValueError(f"kind={kind!r} is not one of {list(NOISE_KINDS)}")


def _copy(ds: Dataset) -> dict[str, np.ndarray]:
  return {k: np.array(v, copy=True) for k, v in ds.items()}


def _flip(labels, rates, kind, num_classes, rng):
  """Flips each label with its probability ``rates`` (one draw of each stream per example)."""
  n = len(labels)
  u = rng.random(n)
  offsets = rng.integers(1, num_classes, size=n)
  flip = u < rates
  if kind == "symmetric":
    noisy = (labels + offsets) % num_classes
  else:
    noisy = (labels + 1) % num_classes
  return np.where(flip, noisy, labels).astype(labels.dtype)


def _with_noisy_labels(ds: Dataset, new_labels: np.ndarray) -> dict[str, np.ndarray]:
  out = _copy(ds)
  clean = out["clean_label"] if "clean_label" in out else np.array(ds["label"], copy=True)
  out["clean_label"] = clean
  out["label"] = new_labels
  out["is_noisy"] = new_labels != clean
  return out


def _subset(ds: Dataset, keep: np.ndarray) -> dict[str, np.ndarray]:
  """Rows ``keep`` (ascending), with ``id`` renumbered and ``orig_id`` kept."""
  n = _num_examples(ds)
  if "orig_id" in ds:
    orig = np.asarray(ds["orig_id"])
  elif "id" in ds:
    orig = np.asarray(ds["id"])
  else:
    orig = np.arange(n)
  out = {k: np.asarray(v)[keep] for k, v in ds.items()}
  out["orig_id"] = orig[keep]
  id_dtype = np.asarray(ds["id"]).dtype if "id" in ds else np.int32
  out["id"] = np.arange(len(keep), dtype=id_dtype)
  return out


def label_noise(
    ds: Dataset, kind: str, rate: float, num_classes: int, seed: int
) -> dict[str, np.ndarray]:
  """Replaces each label, with probability ``rate``, by a wrong one.

  With ``rng = np.random.default_rng([LABEL_NOISE_SALT, seed])``, ``u = rng.random(n)`` and
  ``k = rng.integers(1, C, size=n)`` (both drawn for every kind), example ``i`` is flipped
  iff ``u_i < rate``, to

  * ``symmetric``: ``(y_i + k_i) mod C``, uniform over the C - 1 OTHER classes, so
    ``P(is_noisy) = rate`` exactly (the "any class" convention would give
    ``rate (C - 1) / C``);
  * ``pairflip``: ``(y_i + 1) mod C``.

  For a fixed seed the flipped set grows with ``rate`` (rate 0.2 flips a subset of what
  rate 0.4 flips) and is the same for both kinds.

  Examples:
    >>> import numpy as np
    >>> ds = {"label": np.arange(1000) % 10, "id": np.arange(1000)}
    >>> out = label_noise(ds, "pairflip", 0.3, num_classes=10, seed=0)
    >>> m = out["is_noisy"]
    >>> bool(np.all(out["label"][m] == (out["clean_label"][m] + 1) % 10))
    True
    >>> round(float(out["is_noisy"].mean()), 1)
    0.3

  Args:
    ds: dict of arrays with a ``label`` field of ints in ``[0, num_classes)``.
    kind: ``"symmetric"`` or ``"pairflip"``.
    rate: flip probability in ``[0, 1)``.
    num_classes: C >= 2.
    seed: non-negative int.

  Returns:
    A new dict with ``label`` replaced, ``clean_label`` (kept from ``ds`` if present) and
    ``is_noisy = label != clean_label`` (bool).

  References:
    Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy
    Labels", NeurIPS 2018 (symmetric and pair-flip noise).
  """
  _check_kind(kind)
  rate = _check_rate(rate)
  n = _num_examples(ds)
  labels = np.asarray(ds["label"])
  num_classes = _check_num_classes(num_classes, labels)
  rng = np.random.default_rng([LABEL_NOISE_SALT, int(seed)])
  new = _flip(labels, np.full(n, rate), kind, num_classes, rng)
  return _with_noisy_labels(ds, new)


def class_imbalance(
    ds: Dataset, ratio: float, num_classes: int, seed: int
) -> dict[str, np.ndarray]:
  """Long-tailed subsample: class c keeps ``floor(n_max * ratio ** (-c / (C - 1)))`` examples.

  ``n_max`` is the SMALLEST class count of ``ds`` (so every class can supply its quota),
  and ``ratio = n_0 / n_{C-1}`` is the imbalance factor (1 gives a balanced subsample).
  Classes are the true labels (``clean_label`` if present, else ``label``). With
  ``rng = np.random.default_rng([CLASS_IMBALANCE_SALT, seed])``, for ``c = 0..C-1`` in
  turn, the examples of class c (ascending) are permuted with ``rng.permutation`` and the
  first quota kept. Returned rows are in ascending original order.

  Examples:
    >>> import numpy as np
    >>> ds = {"label": np.arange(1000) % 10, "id": np.arange(1000)}
    >>> out = class_imbalance(ds, ratio=10, num_classes=10, seed=0)
    >>> np.bincount(out["label"]).tolist()
    [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    >>> bool(np.all(out["id"] == np.arange(len(out["id"]))))
    True

  Args:
    ds: dict of arrays with ``label`` (and usually ``id``).
    ratio: imbalance factor ``>= 1``.
    num_classes: C >= 2.
    seed: non-negative int.

  Returns:
    The subsampled dict, ``id`` renumbered ``0..n'-1`` and ``orig_id`` added (kept from
    ``ds`` if present).

  References:
    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
    NeurIPS 2019 (exponential long-tailed profile).
  """
  if not np.isscalar(ratio) or not np.isfinite(ratio) or float(ratio) < 1.0:
    raise ValueError(f"ratio={ratio!r} must be a finite number >= 1 (n_max / n_min)")
  _num_examples(ds)
  y = np.asarray(ds["clean_label"] if "clean_label" in ds else ds["label"])
  num_classes = _check_num_classes(num_classes, y)
  counts = np.bincount(y, minlength=num_classes)
  n_max = int(counts.min())
  quotas = np.floor(n_max * float(ratio) ** (-np.arange(num_classes) / (num_classes - 1)))
  quotas = quotas.astype(np.int64)
  if quotas.min() < 1:
    raise ValueError(
        f"ratio={ratio!r} leaves class {int(np.argmin(quotas))} empty: the smallest class "
        f"has n_max={n_max} examples, so ratio must be <= {n_max}"
    )
  rng = np.random.default_rng([CLASS_IMBALANCE_SALT, int(seed)])
  keep = [rng.permutation(np.flatnonzero(y == c))[: quotas[c]] for c in range(num_classes)]
  return _subset(ds, np.sort(np.concatenate(keep)))


def domains(
    ds: Dataset,
    rates: Sequence[float],
    num_classes: int,
    seed: int,
    *,
    kind: str = "symmetric",
    proportions: Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
  """Splits examples into domains of different quality: domain d has label noise ``rates[d]``.

  With ``rng = np.random.default_rng([DOMAINS_SALT, seed])``: domain sizes are
  ``floor(p_d n)`` plus one for the ``n - sum floor(p_d n)`` domains with the largest
  fractional parts (ties to the lower d), where ``p = proportions / sum(proportions)``
  (uniform by default); ``perm = rng.permutation(n)`` and consecutive blocks of ``perm``
  form domains 0, 1, ...; then labels flip as in `label_noise` with the same ``rng`` and
  per-example rate ``rates[domain_i]``.

  Examples:
    >>> import numpy as np
    >>> ds = {"label": np.arange(2000) % 10, "id": np.arange(2000)}
    >>> out = domains(ds, rates=[0.0, 0.5], num_classes=10, seed=0)
    >>> np.bincount(out["domain"]).tolist(), bool(out["is_noisy"][out["domain"] == 0].any())
    ([1000, 1000], False)

  Args:
    ds: dict of arrays with ``label``.
    rates: one noise rate in ``[0, 1)`` per domain.
    num_classes: C >= 2.
    seed: non-negative int.
    kind: ``"symmetric"`` or ``"pairflip"``.
    proportions: relative domain sizes (non-negative, positive sum); default equal.

  Returns:
    A new dict with ``domain`` (int32), ``label``, ``clean_label`` and ``is_noisy``.

  References:
    Sagawa et al., "Distributionally Robust Neural Networks for Group Shifts", ICLR 2020
    (groups of examples, evaluated by worst group).
  """
  _check_kind(kind)
  rates = np.asarray([_check_rate(r, f"rates[{i}]") for i, r in enumerate(rates)])
  num_domains = len(rates)
  if num_domains < 1:
    raise ValueError("rates=[] must name at least one domain")
  if proportions is None:
    p = np.full(num_domains, 1.0 / num_domains)
  else:
    p = np.asarray(proportions, dtype=np.float64)
    if p.shape != (num_domains,) or not np.all(np.isfinite(p)) or p.min() < 0 or p.sum() <= 0:
      raise ValueError(
          f"proportions={proportions!r} must be {num_domains} finite non-negative numbers "
          "with a positive sum (one per entry of rates)"
      )
    p = p / p.sum()
  n = _num_examples(ds)
  labels = np.asarray(ds["label"])
  num_classes = _check_num_classes(num_classes, labels)
  sizes = _largest_remainder(p, n)
  rng = np.random.default_rng([DOMAINS_SALT, int(seed)])
  perm = rng.permutation(n)
  domain = np.empty(n, dtype=np.int32)
  domain[perm] = np.repeat(np.arange(num_domains, dtype=np.int32), sizes)
  new = _flip(labels, rates[domain], kind, num_classes, rng)
  out = _with_noisy_labels(ds, new)
  out["domain"] = domain
  return out


def _largest_remainder(p: np.ndarray, n: int) -> np.ndarray:
  """Integer sizes summing to n, ``floor(p n)`` plus one for the largest remainders."""
  target = p * n
  sizes = np.floor(target).astype(np.int64)
  short = n - int(sizes.sum())
  if short > 0:
    order = np.argsort(-(target - sizes), kind="stable")
    sizes[order[:short]] += 1
  return sizes


def split_meta(
    ds: Dataset, per_class: int, seed: int, *, num_classes: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Takes ``per_class`` CLEAN examples of each class out of ``ds`` as a meta set.

  Clean means ``is_noisy`` is False (every example when ``ds`` has no ``is_noisy``); the
  class is the true label. With ``rng = np.random.default_rng([SPLIT_META_SALT, seed])``,
  for each class c (ascending), the clean examples of class c (ascending) are permuted
  with ``rng.permutation`` and the first ``per_class`` go to the meta set. To keep the
  noise rate of the rest unbiased, split before corrupting the labels.

  Examples:
    >>> import numpy as np
    >>> ds = {"label": np.arange(100) % 10, "id": np.arange(100)}
    >>> rest, meta = split_meta(ds, per_class=2, seed=0)
    >>> len(rest["id"]), len(meta["id"]), np.bincount(meta["label"]).tolist()
    (80, 20, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    >>> len(set(rest["orig_id"]) & set(meta["orig_id"]))
    0

  Args:
    ds: dict of arrays with ``label`` (the train split, possibly corrupted).
    per_class: meta examples per class, >= 1.
    seed: non-negative int.
    num_classes: if given, every class in ``[0, num_classes)`` must supply ``per_class``
      clean examples; by default the classes present in ``ds``.

  Returns:
    ``(rest, meta)``, both with ``id`` renumbered and ``orig_id`` added; rows ascending.

  References:
    Ren et al., "Learning to Reweight Examples for Robust Deep Learning", ICML 2018;
    Shu et al., "Meta-Weight-Net", NeurIPS 2019 (small clean meta sets).
  """
  if int(per_class) != per_class or per_class < 1:
    raise ValueError(f"per_class={per_class!r} must be an int >= 1")
  n = _num_examples(ds)
  y = np.asarray(ds["clean_label"] if "clean_label" in ds else ds["label"])
  clean = ~np.asarray(ds["is_noisy"], dtype=bool) if "is_noisy" in ds else np.ones(n, bool)
  if num_classes is None:
    classes = np.unique(y)
  else:
    classes = np.arange(_check_num_classes(num_classes, y))
  rng = np.random.default_rng([SPLIT_META_SALT, int(seed)])
  meta = []
  for c in classes:
    candidates = np.flatnonzero(clean & (y == c))
    if len(candidates) < per_class:
      raise ValueError(
          f"per_class={per_class!r} but class {int(c)} has only {len(candidates)} clean examples"
      )
    meta.append(rng.permutation(candidates)[:per_class])
  meta = np.sort(np.concatenate(meta))
  rest = np.setdiff1d(np.arange(n), meta)
  return _subset(ds, rest), _subset(ds, meta)


MARKER_PIXELS = (0, 1, 8, 9)  # the top-left 2x2 block of an 8x8 image, flattened


def spurious_marker(
    ds: Dataset,
    agreement: float,
    seed: int,
    *,
    pixels: Sequence[int] = MARKER_PIXELS,
    value: float = 1.0,
) -> dict[str, np.ndarray]:
  """Stamps a binary marker that agrees with a binary label with probability ``agreement``.

  A spurious feature for group-shift experiments (Sagawa et al. 2020): the marker is easy
  to read off the inputs and predicts the label only through its correlation with it.
  With ``rng = np.random.default_rng([SPURIOUS_MARKER_SALT, seed])`` and
  ``u = rng.random(n)``, example i gets

  * ``marker_i = label_i`` if ``u_i < agreement``, else ``1 - label_i``;
  * the flattened input features ``pixels`` set to ``value * marker_i`` (so the block
    holds only the marker: ``value`` when it is on, 0 when it is off, whatever was there);
  * ``group_i = 2 * label_i + marker_i``: groups 0 and 3 are where the marker agrees with
    the label, 1 and 2 where it does not.

  ``agreement=1`` (``0``) gives a marker equal to (the opposite of) the label everywhere.

  Examples:
    >>> import numpy as np
    >>> ds = {"x": np.full((1000, 64), 0.5, np.float32), "label": np.arange(1000) % 2}
    >>> out = spurious_marker(ds, agreement=0.9, seed=0)
    >>> round(float(np.mean(out["marker"] == out["label"])), 1)
    0.9
    >>> out["x"][0, :3].tolist(), int(out["marker"][0]), int(out["group"][0])
    ([0.0, 0.0, 0.5], 0, 0)

  Args:
    ds: dict of arrays with ``x`` (``[n, ...]``, flattened to features) and a binary
      ``label`` (ints 0 or 1).
    agreement: ``P(marker == label)`` in ``[0, 1]``.
    seed: non-negative int.
    pixels: indices into the flattened features of one example.
    value: the marker's intensity.

  Returns:
    A new dict with ``x`` stamped, ``marker`` (int32) and ``group`` (int32, in 0..3); the
    other fields are kept.

  References:
    Sagawa, Koh, Hashimoto, Liang, "Distributionally Robust Neural Networks for Group
    Shifts", ICLR 2020 (groups = label x spurious attribute; worst-group accuracy).
  """
  if not np.isscalar(agreement) or not 0.0 <= float(agreement) <= 1.0:
    raise ValueError(f"agreement={agreement!r} is not a number in [0, 1]")
  n = _num_examples(ds)
  if "x" not in ds:
    raise ValueError(f"the dataset has no 'x' field; fields are {sorted(ds)}")
  labels = np.asarray(ds["label"])
  if labels.size and not np.all((labels == 0) | (labels == 1)):
    raise ValueError(f"labels must be binary (0 or 1), got values {np.unique(labels).tolist()}")
  x = np.asarray(ds["x"])
  features = int(np.prod(x.shape[1:]))
  pixels = np.asarray(pixels, np.int64)
  if pixels.ndim != 1 or pixels.size == 0 or pixels.min() < 0 or pixels.max() >= features:
    raise ValueError(f"pixels={pixels.tolist()!r} must be indices in [0, {features})")
  rng = np.random.default_rng([SPURIOUS_MARKER_SALT, int(seed)])
  agree = rng.random(n) < float(agreement)
  marker = np.where(agree, labels, 1 - labels).astype(np.int32)
  out = _copy(ds)
  flat = out["x"].reshape(n, features)
  flat[:, pixels] = (float(value) * marker[:, None]).astype(flat.dtype)
  out["x"] = flat.reshape(x.shape)
  out["marker"] = marker
  out["group"] = (2 * labels + marker).astype(np.int32)
  return out
