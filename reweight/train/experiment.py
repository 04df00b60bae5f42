"""An experiment: several methods x several seeds on one dataset, then a table and plots.

A method is a loss plus a weighting, named in the config::

  config.methods.linupper = dict(loss="ce", weighting="loss_based",
                                 weighting_kwargs=dict(strategy="linupper", r=1.0))

``weighting`` names a constructor in `reweight.sample` (or ``"uniform"``); ``loss`` a loss
in `reweight.losses`. A weighting argument given as ``"from_train"`` (``class_counts``) is
read off the training split. The weighting is built once per method, from the first seed's
data. ``clean_labels=True`` trains on the uncorrupted labels (an upper
bound). Each run lives in ``workdir/runs/<method>/seed<k>``; finished runs are not run again
when the experiment is restarted, unfinished ones resume from their last checkpoint (a
periodic one, or the one written on SIGTERM when a `loop.Preemption` is passed).

Honest resume: each run directory holds ``config.json``, the fields of the config that
produced it (`run_fingerprint`). A restarted experiment whose runs were made with other
values (or by a version that wrote no ``config.json``) is refused before anything trains
(`StaleWorkdirError`, naming the differing fields), unless ``overwrite=True`` deletes those
runs. Unknown method, loss, weighting, model or optimizer names and weighting or loss
arguments the constructor does not take are a `ConfigError` before anything trains too.

Validation: ``config.val_fraction`` (default `DEFAULT_VAL_FRACTION`) of every class of the
training split is held out (`split_validation`, seeded) after the clean meta set and after
the label noise, so its labels are as noisy as the training labels; with
``imbalance_ratio > 1`` it is taken before the long-tail subsampling, so it is balanced like
the test split. Every evaluation reports validation beside test; the summary's "best on
validation" method is chosen on validation accuracy only, and each method is compared with
``config.reference`` (default: the first method) on test accuracy by a paired t-interval
over seeds (`reweight.train.report`). The numbers are those of the last step: no checkpoint
is chosen, on any split.

Metrics: the trainer logs the loss and test metrics; the noisy-label bookkeeping (the share
of the weight on ``is_noisy`` examples, `NOISY_LABELS`) is this module's `loop.MetricsHook`.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

import reweight
from reweight import losses as losses_lib
from reweight import parallel
from reweight.data import corruptions, datasets
from reweight.train import loop, plots, report
from reweight.train.models import MODELS, functional, make_model
from reweight.train.step import classification_loss, make_eval_step, make_train_step


class ConfigError(ValueError):
  """A config that cannot run: an unknown name or argument, or a stale workdir. One line."""


class StaleWorkdirError(ConfigError):
  """The workdir holds runs made with another config (see `run`'s ``overwrite``)."""


def _noisy_sums(batch, metrics):
  w = metrics["weights"]
  return {"noisy_w": jnp.sum(w * batch["is_noisy"]), "total_w": jnp.sum(w)}


def _noisy_row(totals):
  return {"noisy_weight_share": totals["noisy_w"] / max(totals["total_w"], 1e-12)}


# The noisy-label bookkeeping of a run on data with ``is_noisy``: the share of the weight on
# noisy examples over the steps since the last evaluation (``noisy_weight_share`` in each
# row), and the last epoch's ``is_noisy`` flags beside its weights (for the table's
# "weight on noisy" column and the histograms). One object, so every run shares its step.
NOISY_LABELS = loop.MetricsHook(names=("noisy_w", "total_w"), sums=_noisy_sums,
                                row=_noisy_row, final_fields=("is_noisy",))

# Fields of a method's spec.
METHOD_FIELDS = ("loss", "loss_kwargs", "weighting", "weighting_kwargs", "clean_labels")

# Config fields that do not change what a run computes, left out of its fingerprint: the
# seeds and the other methods (each run is one seed of one method), how often it is
# checkpointed (a resumed run equals an uninterrupted one), the device mesh (the numbers are
# those of one device, up to float rounding), the debug checks, and the reference method
# of the table's paired comparisons (a choice of the report, not of a run).
COSMETIC_FIELDS = ("seeds", "methods", "checkpoint_every", "mesh", "check_inputs",
                   "reference")

# The share of every class of the training split held out as validation, when the config
# does not say (``config.val_fraction``; 0 holds out nothing).
DEFAULT_VAL_FRACTION = 0.15
VALIDATION_SALT = 0x76616C64


def _plain(value):
  """JSON's view of a config value (tuples are lists, ConfigDicts dicts)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return json.loads(json.dumps(value, sort_keys=True, default=repr))


def run_fingerprint(config: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
  """The fields of ``config`` that the runs of ``method`` depend on, flattened
  (``model_kwargs.hidden``, ``method.weighting_kwargs.r``): every field but
  `COSMETIC_FIELDS`, plus ``method.*``, this method's spec."""
  out = {}

  def flatten(prefix, value):
    if isinstance(value, Mapping) and value:
      for k in sorted(value):
        flatten(f"{prefix}.{k}" if prefix else str(k), value[k])
    else:
      out[prefix] = value

  flatten("", {k: v for k, v in _plain(config).items() if k not in COSMETIC_FIELDS})
  flatten("method", _plain(config.methods[method]))
  return out


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
  return [f"{k} ({saved.get(k, '<unset>')!r} then, {now.get(k, '<unset>')!r} now)"
          for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


def _near(name: str, valid) -> str:
  close = difflib.get_close_matches(str(name), list(valid), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _check_kwargs(what: str, fn, kwargs: Mapping[str, Any], positional: int = 0) -> None:
  """``fn`` takes keyword arguments ``kwargs`` (after ``positional`` positional ones)."""
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return
  if any(p.kind == p.VAR_KEYWORD for p in params.values()):
    return
  names = [n for i, (n, p) in enumerate(params.items())
           if i >= positional and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
  for k in kwargs:
    if k not in names:
      raise ConfigError(f"{what} takes no argument {k!r}{_near(k, names)}; it takes "
                        f"{names}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` (one line) for a config that would fail mid-experiment: unknown
  method fields, loss, weighting, model or optimizer names, and loss or weighting
  arguments that the named function does not take."""
  weightings = ["uniform", *reweight.sample.WEIGHTINGS, *reweight.group.WEIGHTINGS]
  if config.model not in MODELS:
    raise ConfigError(f"model={config.model!r} is not one of {sorted(MODELS)}"
                      f"{_near(config.model, MODELS)}")
  if config.optimizer not in ("adam", "sgd"):
    raise ConfigError(f"optimizer={config.optimizer!r} is not one of ['adam', 'sgd']"
                      f"{_near(config.optimizer, ['adam', 'sgd'])}")
  for method, spec in dict(config.methods).items():
    spec = dict(spec)
    where = f"config.methods[{method!r}]"
    for k in spec:
      if k not in METHOD_FIELDS:
        raise ConfigError(f"{where} has no field {k!r}{_near(k, METHOD_FIELDS)}; its fields "
                          f"are {list(METHOD_FIELDS)}")
    loss = spec.get("loss", "ce")
    if loss not in losses_lib.LOSSES:
      raise ConfigError(f"{where}: loss={loss!r} is not one of {sorted(losses_lib.LOSSES)}"
                        f"{_near(loss, losses_lib.LOSSES)}")
    _check_kwargs(f"{where}: loss {loss!r}", losses_lib.LOSSES[loss],
                  dict(spec.get("loss_kwargs", {})), positional=2)
    name = spec.get("weighting", "uniform")
    if name not in weightings:
      raise ConfigError(f"{where}: weighting={name!r} is not one of {weightings}"
                        f"{_near(name, weightings)}")
    ctor = reweight.uniform if name == "uniform" else getattr(
        reweight.sample if name in reweight.sample.WEIGHTINGS else reweight.group, name)
    _check_kwargs(f"{where}: weighting {name!r}", ctor, dict(spec.get("weighting_kwargs", {})))


def make_weighting(name: str, **kwargs) -> reweight.Weighting:
  """A weighting by name: ``"uniform"``, a constructor of `reweight.sample`, or a group
  weighting of `reweight.group` (which takes ``num_groups``)."""
  if name == "uniform":
    return reweight.uniform(**kwargs)
  for module in (reweight.sample, reweight.group):
    if name in module.WEIGHTINGS:
      return getattr(module, name)(**kwargs)
  raise ValueError(f"weighting={name!r} is not one of "
                   f"{['uniform', *reweight.sample.WEIGHTINGS, *reweight.group.WEIGHTINGS]}")


def resolve_data_kwargs(kwargs: Mapping[str, Any], train: Mapping[str, np.ndarray],
                        num_classes: int) -> dict[str, Any]:
  """Replaces the value ``"from_train"`` by what the training data says.

  Supported: ``class_counts`` (examples per class of the training labels).
  """
  out = dict(kwargs)
  for key, value in kwargs.items():
    if value == "from_train":
      if key != "class_counts":
        raise ValueError(f"{key}='from_train' is not supported; only class_counts can be "
                         "taken from the training data")
      out[key] = np.bincount(train["label"], minlength=num_classes).tolist()
  return out


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam(W) or SGD with momentum, as named by ``config.optimizer``."""
  if config.optimizer == "adam":
    return optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  if config.optimizer == "sgd":
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(config.learning_rate, momentum=0.9))
  raise ValueError(f"optimizer={config.optimizer!r} is not one of ['adam', 'sgd']")


def split_validation(ds: Mapping[str, np.ndarray], fraction: float, seed: int
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """``(train, val)``: ``round(fraction * n_c)`` random examples of every class c go to val.

  The class is the true label (``clean_label`` when the labels were corrupted, else
  ``label``). With ``rng = np.random.default_rng([VALIDATION_SALT, seed])``, for each class
  c present (ascending) the examples of class c (ascending) are permuted with
  ``rng.permutation`` and the first ``round(fraction * n_c)`` go to val. Both parts keep
  their rows in ascending order, with ``id`` renumbered ``0..n'-1`` (it indexes the
  returned arrays, as per-example weighting state needs) and ``orig_id`` kept.

  Examples:
    >>> import numpy as np
    >>> ds = {"x": np.arange(100.0), "label": np.arange(100) % 4, "id": np.arange(100)}
    >>> train, val = split_validation(ds, 0.2, seed=0)
    >>> np.bincount(val["label"]).tolist(), len(train["label"])
    ([5, 5, 5, 5], 80)

  Args:
    ds: dict of arrays with ``label`` (and usually ``id``).
    fraction: in ``[0, 1)``; 0 gives an empty val.
    seed: non-negative int.
  """
  if not 0.0 <= float(fraction) < 1.0:
    raise ValueError(f"val_fraction={fraction!r} is not a number in [0, 1)")
  y = np.asarray(ds["clean_label"] if "clean_label" in ds else ds["label"])
  rng = np.random.default_rng([VALIDATION_SALT, int(seed)])
  val = [rng.permutation(np.flatnonzero(y == c))[:int(round(fraction * np.sum(y == c)))]
         for c in np.unique(y)]
  val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
  rest = np.setdiff1d(np.arange(len(y)), val)

  def subset(rows):
    out = {k: np.asarray(v)[rows] for k, v in ds.items()}
    orig = np.asarray(ds["orig_id"] if "orig_id" in ds else ds.get("id", np.arange(len(y))))
    out["orig_id"] = orig[rows]
    out["id"] = np.arange(len(rows), dtype=np.asarray(ds["id"]).dtype if "id" in ds
                          else np.int32)
    return out

  return subset(rest), subset(val)


class Splits(NamedTuple):
  """The data of one seed: ``train`` (what the methods fit), ``val`` (held out of TRAIN, or
  None with ``val_fraction=0``), ``meta`` (the clean meta set, or None), ``test``."""

  train: dict[str, np.ndarray]
  val: dict[str, np.ndarray] | None
  meta: dict[str, np.ndarray] | None
  test: dict[str, np.ndarray]
  num_classes: int


def prepare_splits(config: ml_collections.ConfigDict, seed: int) -> Splits:
  """Train, validation, meta and test splits of one seed, in this order:

  1. ``meta_per_class > 0``: a balanced CLEAN meta set is taken out of TRAIN (for the meta
     weightings; every method trains without it);
  2. ``noise_rate > 0``: the labels of the rest are corrupted;
  3. ``val_fraction`` of every (true) class of the rest is held out as validation
     (`split_validation`): its labels are as noisy as the training labels;
  4. ``imbalance_ratio > 1``: the training part is subsampled to the long tail (the
     validation part stays balanced, like the test split).

  ``config.group_by="label"`` adds a ``group`` field, the (observed) class, for the group
  weightings of `reweight.group` (e.g. Group DRO over classes).
  """
  train = datasets.load(config.dataset, "train")
  test = datasets.load(config.dataset, "test")
  num_classes = datasets.num_classes(config.dataset)
  meta = val = None
  if config.get("meta_per_class", 0) > 0:  # first: a balanced meta set, unbiased noise rate
    train, meta = corruptions.split_meta(train, config.meta_per_class, seed,
                                         num_classes=num_classes)
  if config.noise_rate > 0:
    train = corruptions.label_noise(train, config.noise_kind, config.noise_rate, num_classes,
                                    seed=seed)
  fraction = config.get("val_fraction", DEFAULT_VAL_FRACTION)
  if fraction > 0:
    train, val = split_validation(train, fraction, seed)
  if config.get("imbalance_ratio", 1.0) > 1.0:
    train = corruptions.class_imbalance(train, config.imbalance_ratio, num_classes, seed=seed)
  group_by = config.get("group_by", "")
  if group_by:  # the groups a group weighting (reweight.group) reads
    if group_by != "label":
      raise ValueError(f"group_by={group_by!r} is not one of ['', 'label']")
    train = dict(train, group=train["label"])
    if val is not None:
      val = dict(val, group=val["label"])
  return Splits(train, val, meta, test, num_classes)


# Per-seed numbers of a run's last evaluation that the summary keeps: (summary key, row key).
FINAL_METRICS = (("val_accuracy", "val_accuracy"),
                 ("val_balanced_accuracy", "val_balanced_accuracy"),
                 ("final_accuracy", "test_accuracy"),
                 ("final_balanced_accuracy", "test_balanced_accuracy"))


def summarize(histories: list[list[dict]], final_weights: list[dict]) -> dict[str, Any]:
  """Mean ± sample std (`report.mean_std`, ddof=1) over seeds of the last evaluation's
  validation and test accuracy, and of the noisy weight share.

  Returns:
    ``{"n": seeds, key: (mean, std), ..., "per_seed": {key: [value of seed k, ...]}}`` for
    the keys of `FINAL_METRICS` present in the rows and ``noisy_weight_share``; std is None
    for one seed. The per-seed lists follow the order of the seeds (for paired
    comparisons).
  """
  per_seed = {}
  for key, row_key in FINAL_METRICS:
    if all(row_key in h[-1] for h in histories):
      per_seed[key] = [float(h[-1][row_key]) for h in histories]
  shares = []
  for fw in final_weights:
    if "is_noisy" in fw:
      w = np.asarray(fw["weights"], np.float64)
      shares.append(float(np.sum(w * fw["is_noisy"]) / np.sum(w)))
  if shares:
    per_seed["noisy_weight_share"] = shares
  out: dict[str, Any] = {"n": len(histories)}
  out.update({k: report.mean_std(v) for k, v in per_seed.items()})
  out["per_seed"] = per_seed
  return out


def format_pm(stat) -> str:
  """``"90.3 ± 0.9"`` (in %) of a `report.mean_std` pair; ``"90.3"`` for one seed."""
  return report.format_mean_std(stat, 1, 100.0)


def format_difference(p: Mapping[str, Any]) -> str:
  """``"+2.4 [+0.1, +4.7]"`` (points): a `report.paired_difference` and its 95% interval;
  ``"+2.4 (n = 1)"`` without one."""
  if p["ci95"] is None:
    return f"{100 * p['mean']:+.1f} (n = {p['n']})"
  lo, hi = p["ci95"]
  return f"{100 * p['mean']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def in_points(p: Mapping[str, Any]) -> dict[str, Any]:
  """A `report.paired_difference` of fractions in points (x100), for `report.verdict`."""
  scale = lambda v: None if v is None else 100 * v  # noqa: E731
  return dict(p, mean=100 * p["mean"], sem=scale(p["sem"]),
              ci95=None if p["ci95"] is None else [100 * v for v in p["ci95"]])


def best_on_validation(summary: Mapping[str, Mapping], candidates=None,
                       key: str = "val_accuracy") -> str:
  """The candidate (default: every method) with the highest mean validation ``key``; ties go
  to the earlier candidate. Test numbers play no part."""
  candidates = list(summary if candidates is None else candidates)
  if not candidates:
    raise ValueError("no candidates to choose from")
  missing = [m for m in candidates if key not in summary[m]]
  if missing:
    raise ValueError(f"methods {missing} have no {key!r} (was validation held out?)")
  return max(candidates, key=lambda m: summary[m][key][0])


def format_table(summary: Mapping[str, Mapping[str, Any]], noise_rate: float | None = None,
                 reference: str | None = None, val_fraction: float | None = None) -> str:
  """A Markdown table, one row per method, and notes: the number of seeds, the method best on
  validation (with its test accuracy) and each method's paired test-accuracy difference
  from ``reference`` (default: the first method) with its 95% t-interval."""
  methods = list(summary)
  reference = reference if reference in summary else methods[0]
  cols = [("val_accuracy", "val acc"), ("final_accuracy", "test acc"),
          ("final_balanced_accuracy", "test balanced acc"),
          ("noisy_weight_share", "weight on noisy (last epoch)")]
  cols = [c for c in cols if any(c[0] in s for s in summary.values())]
  diff_title = f"test acc − {reference} (95% CI)"
  titles = [t for _, t in cols[:2]] + [diff_title] + [t for _, t in cols[2:]]
  lines = ["| method | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
  for method, s in summary.items():
    cells = [format_pm(s[key]) if key in s else "–" for key, _ in cols]
    diff = "–"
    if method != reference:
      diff = format_difference(report.paired_difference(
          s["per_seed"]["final_accuracy"], summary[reference]["per_seed"]["final_accuracy"]))
    cells.insert(2, diff)
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  n = summary[methods[0]]["n"]
  notes = [f"Mean ± sample std (ddof=1) over n = {n} seeds, in %, at the last step (no "
           "checkpoint selection); the difference is paired by seed, in points."]
  if any("val_accuracy" in s for s in summary.values()):
    held = f"{100 * val_fraction:.0f}% of every class of TRAIN" if val_fraction else "TRAIN"
    noisy = ", labels as noisy as the training labels" if noise_rate else ""
    best = best_on_validation(summary)
    notes.append(f"Validation: {held}, held out{noisy}. Best on validation: {best} (val "
                 f"{format_pm(summary[best]['val_accuracy'])}, test "
                 f"{format_pm(summary[best]['final_accuracy'])}).")
  if noise_rate:
    notes.append(f"Noisy share of the training labels: {100 * noise_rate:.0f}%; uniform "
                 "weighting puts about that share of the weight on them.")
  return "\n".join(lines) + "\n\n" + "\n".join(notes)


def _shared_eval_step(apply_fn, num_classes: int):
  """One jitted eval step for every method: it sees only the state's model part.

  The optimizer and weighting states differ in structure from method to method; dropping them
  (they are not read) makes every method's call hit the same compiled step.
  """
  jitted = jax.jit(make_eval_step(apply_fn, num_classes))

  def eval_step(state, batch):
    return jitted(state._replace(opt_state=None, weighting_state=None), batch)

  return eval_step


def _all_agree(flag: bool) -> bool:
  """Process 0's ``flag``, on every process (itself on one process).

  Whether a run is finished is read from process 0's files, so that all processes take the
  same branch (and make the same collective calls) even when a file is still being written.
  """
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _check_workdir(config: ml_collections.ConfigDict, workdir: str, overwrite: bool) -> None:
  """Refuses (or with ``overwrite`` deletes) runs of ``workdir`` made with another config;
  writes the fingerprint of every run about to be made. Process 0 reads and writes; all
  processes take its decision."""
  writer = jax.process_index() == 0
  stale, fields = [], []
  for method in config.methods:
    now = run_fingerprint(config, method)
    for seed in config.seeds:
      run_dir = os.path.join(workdir, "runs", method, f"seed{seed}")
      path = os.path.join(run_dir, "config.json")
      if not writer or not os.path.isdir(run_dir) or not (
          set(os.listdir(run_dir)) - {"config.json"}):
        continue  # nothing computed there yet
      if not os.path.exists(path):
        stale.append(run_dir)
        fields.append("config.json (none: made before runs recorded their config)")
        continue
      with open(path) as f:
        diff = _differences(json.load(f), now)
      if diff:
        stale.append(run_dir)
        fields.extend(d for d in diff if d not in fields)
  if _all_agree(bool(stale)):
    if not overwrite:
      shown = ", ".join(fields[:6]) + (f" and {len(fields) - 6} more" if len(fields) > 6 else "")
      raise StaleWorkdirError(
          f"{workdir} holds {len(stale)} run(s) made with a different config: {shown}; "
          "use a new --workdir, or --overwrite to delete those runs")
    if writer:
      for run_dir in stale:
        shutil.rmtree(run_dir)
    if jax.process_count() > 1:  # the others read no checkpoint before it is gone
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("reweight.experiment.overwrite")
  if writer:
    for method in config.methods:
      text = json.dumps(run_fingerprint(config, method), indent=1, sort_keys=True)
      for seed in config.seeds:
        run_dir = os.path.join(workdir, "runs", method, f"seed{seed}")
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
          f.write(text + "\n")


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
        preemption: loop.Preemption | None = None, overwrite: bool = False) -> dict:
  """Runs every method of ``config`` for every seed; writes the table and plots.

  Each method's train step is compiled once (its seeds share it), the eval step once for the
  whole experiment.

  Args:
    config: the experiment (see ``configs/default.py``).
    workdir: where runs, table and plots go; a restarted experiment skips finished runs and
      resumes unfinished ones.
    progress: show progress bars.
    preemption: an entered `loop.Preemption`; on its notice the run in progress is saved and
      `loop.Preempted` raised (``reweight.main`` passes one).
    overwrite: delete the runs of ``workdir`` made with another config instead of refusing
      (`StaleWorkdirError`).

  Returns:
    ``{"summary": {method: {...}}, "table": str, "plots": [paths]}``. On several processes
    all train every run; only process 0 writes the runs' results, table and plots (the
    others return the same summary and table, and no plots).

  Raises:
    ConfigError: before anything trains, for unknown names or arguments (`validate`), and
      as `StaleWorkdirError` for runs of ``workdir`` made with another config.
  """
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  _check_workdir(config, workdir, overwrite)
  mesh = parallel.make_mesh_from_spec(config.get("mesh", ""))
  writer = jax.process_index() == 0  # on several processes, only the first writes files
  progress = progress and writer
  runs: dict[str, list] = {}
  finals: dict[str, list] = {}
  prepared: dict[int, tuple] = {}
  methods = dict(config.methods)
  total = len(methods) * len(config.seeds)
  outer = tqdm(total=total, desc="runs", disable=not progress)
  eval_step = None  # one for all methods: the same model and test set
  skip_nonfinite = bool(config.get("skip_nonfinite", False))
  check_inputs = bool(config.get("check_inputs", False))
  try:
    for method, spec in methods.items():
      spec = ml_collections.ConfigDict(spec)
      optimizer = make_optimizer(config)
      weighting = train_step = None
      runs[method], finals[method] = [], []
      for seed in config.seeds:
        run_dir = os.path.join(workdir, "runs", method, f"seed{seed}")
        done = os.path.join(run_dir, "result.json")
        if _all_agree(os.path.exists(done)):
          with open(done) as f:
            saved = json.load(f)
          runs[method].append(saved["history"])
          finals[method].append({k: np.asarray(v) for k, v in saved["final_weights"].items()})
          outer.update()
          continue
        if seed not in prepared:  # the same for every method: read and corrupt once
          prepared[seed] = prepare_splits(config, seed)
        train, val, meta, test, num_classes = prepared[seed]
        if spec.get("clean_labels", False) and "clean_label" in train:
          train = dict(train, label=train["clean_label"])
        fn = functional(make_model(config.model, seed=seed, num_classes=num_classes,
                                   **dict(config.model_kwargs)))
        per_example = classification_loss(fn.apply, spec.get("loss", "ce"),
                                          **dict(spec.get("loss_kwargs", {})))
        if weighting is None:
          weighting = make_weighting(spec.get("weighting", "uniform"),
                                     **resolve_data_kwargs(spec.get("weighting_kwargs", {}),
                                                           train, num_classes))
        if train_step is None:
          train_step = loop.jit_train_step(make_train_step(
              per_example, weighting, optimizer, microbatches=config.microbatches,
              skip_nonfinite=skip_nonfinite, check_inputs=check_inputs,
              num_classes=num_classes))
        if eval_step is None:
          eval_step = _shared_eval_step(fn.apply, num_classes)
        loss_kwargs = {}
        if meta is not None:  # weightings that do not use it ignore it
          loss_kwargs["meta_batch"] = {"x": meta["x"], "label": meta["label"]}
        result = loop.train(
            apply_fn=fn.apply, params=fn.params, per_example_loss=per_example,
            weighting=weighting, optimizer=optimizer, train_ds=train, test_ds=test,
            val_ds=val, num_classes=num_classes, steps=config.steps, batch_size=config.batch_size,
            seed=seed, eval_every=config.eval_every, workdir=run_dir,
            checkpoint_every=config.checkpoint_every, loss_kwargs=loss_kwargs, mesh=mesh,
            progress=progress, desc=f"{method}/seed{seed}", train_step=train_step,
            eval_step=eval_step, preemption=preemption,
            metrics_hook=NOISY_LABELS if "is_noisy" in train else None,
            skip_nonfinite=skip_nonfinite)
        if writer:
          with open(done, "w") as f:
            json.dump({"history": result.history,
                       "final_weights": {k: v.tolist()
                                         for k, v in result.final_weights.items()}}, f)
        runs[method].append(result.history)
        finals[method].append(result.final_weights)
        outer.update()
  finally:
    outer.close()

  summary = {m: summarize(runs[m], finals[m]) for m in methods}
  table = format_table(summary, config.noise_rate if config.noise_rate > 0 else None,
                       reference=config.get("reference", None),
                       val_fraction=config.get("val_fraction", DEFAULT_VAL_FRACTION))
  if not writer:
    return {"summary": summary, "table": table, "plots": []}
  paths = [plots.curves(runs, os.path.join(workdir, "curves.png"))]
  merged = {m: {k: np.concatenate([fw[k] for fw in finals[m]]) for k in finals[m][0]}
            for m in methods if finals[m] and finals[m][0]}
  hist = plots.weight_histograms(merged, os.path.join(workdir, "weights.png"))
  if hist:
    paths.append(hist)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return {"summary": summary, "table": table, "plots": paths}
