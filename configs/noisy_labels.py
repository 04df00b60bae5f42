"""Noisy labels on digits and MNIST-1D: robust losses, loss-based and meta reweighting.

python experiments/noisy_labels.py --config=configs/noisy_labels.py --workdir=workdir/noisy
python experiments/noisy_labels.py --config=configs/noisy_labels.py:digits --workdir=...

The optional argument after ``:`` is a comma-separated list of datasets (default: both).
Every setting (dataset x noise) trains every method on the same train split: 10 clean
examples per class are taken out of TRAIN first (the meta set of L2RW and MW-Net), for every
method, then the labels of the rest are corrupted.
"""

import ml_collections

# Learning rates chosen once with `experiments/noisy_labels.py --validate` (CE on the clean
# labels, a validation split of 20% of TRAIN, 2 seeds), never on the test split; the steps
# are a fixed budget past the plateau of that validation curve. See
# experiments/README.md.
TRAINING = {
    "digits": {
        "model": "mlp",
        "model_kwargs": {"in_features": 64, "hidden": (256,)},
        "learning_rate": 3e-3,
        "steps": 1000,  # validation accuracy flat from ~150-400 steps on
        "eval_every": 50,
    },
    "mnist1d": {
        "model": "cnn",
        "model_kwargs": {"in_shape": (40,), "channels": (32, 32), "pool": 4},
        "learning_rate": 3e-3,
        "steps": 1000,  # validation accuracy flat from ~900 steps on
        "eval_every": 100,
    },
}


def get_config(datasets: str = "digits,mnist1d"):
  c = ml_collections.ConfigDict()
  c.datasets = tuple(datasets.split(","))
  c.noise_settings = (("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6),
                      ("pairflip", 0.4))
  c.meta_per_class = 10  # clean meta set for l2rw / meta_weight_net, taken from TRAIN
  # Validation: 15% of every class of the rest of TRAIN, held out after the label noise (as
  # noisy as the training labels); the best method is chosen on it, never on test.
  c.val_fraction = 0.15
  c.seeds = (0, 1, 2)

  c.training = ml_collections.ConfigDict(TRAINING)  # per dataset
  c.optimizer = "adam"
  c.weight_decay = 0.0
  c.batch_size = 128
  c.microbatches = 1

  # Literature defaults, not tuned: GCE q=0.7 (Zhang & Sabuncu 2018), SCE alpha=0.1, beta=1
  # (Wang et al. 2019, CIFAR-10), focal gamma=2 (Lin et al. 2017), loss-based as in
  # configs/default.py (Sow et al. 2025), meta methods with the library defaults.
  warmup = 100  # uniform weights first (loss-based, self-taught)
  loss_based = lambda strategy, r: {"weighting": "loss_based", "weighting_kwargs": {
      "strategy": strategy, "r": r, "warmup_steps": warmup}}
  c.methods = ml_collections.ConfigDict({
      "ce": {"loss": "ce"},
      "gce": {"loss": "gce", "loss_kwargs": {"q": 0.7}},
      "sce": {"loss": "sce", "loss_kwargs": {"alpha": 0.1, "beta": 1.0}},
      "focal": {"loss": "focal", "loss_kwargs": {"gamma": 2.0}},
      "loss_based/linupper": loss_based("linupper", 1.0),
      "loss_based/quadratic": loss_based("quadratic", 1.0),
      "loss_based/extremes": loss_based("extremes", 0.4),
      "loss_based/upper": loss_based("upper", 1.0),
      "l2rw": {"weighting": "l2rw"},
      "mw_net": {"weighting": "meta_weight_net"},
      "self_taught": {"weighting": "self_taught", "weighting_kwargs": {"warmup_steps": warmup}},
      "ce_clean": {"loss": "ce", "clean_labels": True},  # upper bound
  })
  c.reference = "ce"  # the gap is reference (noisy labels) -> upper_bound (clean labels)
  c.upper_bound = "ce_clean"
  c.uses_clean_data = ("l2rw", "mw_net", "ce_clean")  # the rest never see a clean label

  # --validate: CE on the clean labels with a validation split carved out of TRAIN.
  c.validation = ml_collections.ConfigDict({
      "fraction": 0.2,
      "seeds": (0, 1),
      "learning_rates": (1e-3, 3e-3),
      "max_steps_factor": 1.5,  # curves up to 1.5x the configured steps
  })
  return c
