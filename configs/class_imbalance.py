"""Long-tailed digits (imbalance ratio 10 and 100): balanced accuracy of reweighting methods.

python experiments/class_imbalance.py --config=configs/class_imbalance.py \
    --workdir=workdir/class_imbalance

A balanced meta set of 10 examples per class is taken out of TRAIN first (for every method,
so all train on the same examples), then 15% of every class of the rest is held out as a
balanced validation split, then the rest is subsampled to the long-tailed profile
``n_c = floor(n_max * ratio ** (-c / 9))``.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.imbalance_ratios = (10.0, 100.0)
  c.meta_per_class = 10  # balanced meta set for l2rw / meta_weight_net, taken from TRAIN
  # Validation: 15% of every class of the rest of TRAIN, held out BEFORE the long-tail
  # subsampling (balanced, like the test split); the best method is chosen on its balanced
  # accuracy, never on test.
  c.val_fraction = 0.15
  c.seeds = (0, 1, 2)

  # As configs/noisy_labels.py (learning rate chosen there on a validation split of TRAIN).
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 64, "hidden": (256,)})
  c.optimizer = "adam"
  c.learning_rate = 3e-3
  c.weight_decay = 0.0
  c.steps = 1000
  c.batch_size = 128
  c.microbatches = 1
  c.eval_every = 50

  # Not tuned: focal gamma=2 (Lin et al. 2017), class-balanced beta=0.999 (Cui et al. 2019),
  # loss-based as in configs/default.py, meta methods with the library defaults.
  warmup = 100
  loss_based = lambda strategy, r: {"weighting": "loss_based", "weighting_kwargs": {
      "strategy": strategy, "r": r, "warmup_steps": warmup}}
  c.methods = ml_collections.ConfigDict({
      "ce": {"loss": "ce"},
      "focal": {"loss": "focal", "loss_kwargs": {"gamma": 2.0}},
      "class_balanced": {"weighting": "class_balanced", "weighting_kwargs": {
          "class_counts": "from_train", "beta": 0.999}},
      "loss_based/linupper": loss_based("linupper", 1.0),
      "loss_based/quadratic": loss_based("quadratic", 1.0),
      "loss_based/extremes": loss_based("extremes", 0.4),
      "loss_based/upper": loss_based("upper", 1.0),
      "l2rw": {"weighting": "l2rw"},
      "mw_net": {"weighting": "meta_weight_net"},
  })
  c.reference = "ce"
  return c
