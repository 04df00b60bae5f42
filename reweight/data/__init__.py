"""reweight.data: offline datasets (TFDS array_record, no TensorFlow), corruptions, samplers.

* `load(name, split)` builds (once) and reads ``"digits"`` or ``"mnist1d"`` into a dict
  of NumPy arrays ``{"x", "label", "id"}``; `num_classes(name)`.
* Corruptions of the train split that keep the ground truth: `label_noise`,
  `class_imbalance`, `domains`, `split_meta`, `spurious_marker` (group shift).
* Samplers, pure functions ``step -> batch indices`` deterministic in ``(seed, step)``:
  `epoch_sampler`, `mixture_sampler`, `curriculum_sampler`, `random_subset_per_epoch`.
* Mixing groups online: `online_mixture_sampler` draws each global batch in the
  proportions of a policy state (re-read every ``update_every`` steps, checkpointable).
* Multi-domain byte-level text (`domain_corpus`, `domain_lm_batch`,
  `domain_eval_windows`, `domain_stats`): code, prose, licences, tables, noise and a
  duplicated text, all shipped with Python and the dependencies.
* Pipeline: `train_iterator` / `sampler_iterator` (grain iterators whose state
  ``{"next_index": step}`` goes into the checkpoint), `eval_batches` (padded, with
  ``mask``), `take`, `batch_dataset`.
"""

import importlib

from reweight.data.corruptions import (
    NOISE_KINDS,
    class_imbalance,
    domains,
    label_noise,
    split_meta,
    spurious_marker,
)
from reweight.data.domain_text import (
    DomainCorpus,
    domain_corpus,
    domain_eval_windows,
    domain_lm_batch,
    domain_stats,
)
from reweight.data.online_mixture import (
    OnlineMixtureSampler,
    OnlineMixtureState,
    online_mixture_sampler,
)
from reweight.data.pipeline import (
    batch_dataset,
    eval_batches,
    sampler_iterator,
    take,
    train_iterator,
)
from reweight.data.samplers import (
    Sampler,
    curriculum_sampler,
    epoch_sampler,
    mixture_sampler,
    random_subset_per_epoch,
)
from reweight.data.text import TextCorpus, eval_windows, lm_batch, stdlib_corpus

# The datasets import tensorflow_datasets (about 0.3 s), so they are loaded on first access
# (PEP 562): ``reweight.data.load``, ``from reweight.data import Digits`` and
# ``reweight.data.datasets`` work as before, but ``import reweight.data`` (and the trainer,
# which needs only the pipeline) does not import tensorflow_datasets.
_LAZY = {
    "DATASETS": "datasets", "builder": "datasets", "load": "datasets",
    "num_classes": "datasets", "Digits": "digits", "Mnist1d": "mnist1d",
}
_LAZY_MODULES = ("_builder", "datasets", "digits", "mnist1d")


def __getattr__(name: str):
  """Imports the TFDS-backed names and submodules of `reweight.data` on first access."""
  if name in _LAZY:
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
  elif name in _LAZY_MODULES:
    value = importlib.import_module(f"{__name__}.{name}")
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LAZY) | set(_LAZY_MODULES))


__all__ = [
    "TextCorpus", "eval_windows", "lm_batch", "stdlib_corpus",
    "DATASETS",
    "NOISE_KINDS",
    "Digits",
    "DomainCorpus",
    "Mnist1d",
    "Sampler",
    "batch_dataset",
    "builder",
    "class_imbalance",
    "curriculum_sampler",
    "domain_corpus",
    "domain_eval_windows",
    "domain_lm_batch",
    "domain_stats",
    "domains",
    "epoch_sampler",
    "eval_batches",
    "label_noise",
    "load",
    "mixture_sampler",
    "num_classes",
    "OnlineMixtureSampler",
    "OnlineMixtureState",
    "online_mixture_sampler",
    "random_subset_per_epoch",
    "sampler_iterator",
    "split_meta",
    "spurious_marker",
    "take",
    "train_iterator",
]
