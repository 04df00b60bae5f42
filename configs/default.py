"""The main job: digits with 40% symmetric label noise; CE, loss-based reweighting, GCE, SCE.

python -m reweight.main --config=configs/default.py --workdir=workdir/default
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.noise_kind = "symmetric"
  c.noise_rate = 0.4
  c.imbalance_ratio = 1.0
  c.meta_per_class = 0
  # Held out of every class of TRAIN (after the label noise: as noisy as the rest); the
  # table's "best on validation" is chosen on it, never on test.
  c.val_fraction = 0.15

  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 64, "hidden": (256,)})
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.weight_decay = 0.0

  c.steps = 1000
  c.batch_size = 128
  c.microbatches = 1
  # Devices: "data" puts all on the data axis; "data:4,fsdp:2" shards params on "fsdp" too.
  c.mesh = "data"
  c.eval_every = 50
  c.checkpoint_every = 500
  c.seeds = (0, 1, 2)
  # A step with a non-finite loss or gradient stops the run with an error naming it; True:
  # such steps leave the model unchanged and are counted (skipped_steps in metrics.jsonl).
  c.skip_nonfinite = False
  # Debug: label-range and shape checks of every batch under jit (off: no cost).
  c.check_inputs = False

  warmup = 100  # uniform weights first, as in Sow et al.
  c.methods = ml_collections.ConfigDict({
      "ce": {"loss": "ce"},
      "loss_based/linupper": {"weighting": "loss_based", "weighting_kwargs": {
          "strategy": "linupper", "r": 1.0, "warmup_steps": warmup}},
      "loss_based/quadratic": {"weighting": "loss_based", "weighting_kwargs": {
          "strategy": "quadratic", "r": 1.0, "warmup_steps": warmup}},
      "loss_based/extremes": {"weighting": "loss_based", "weighting_kwargs": {
          "strategy": "extremes", "r": 0.4, "warmup_steps": warmup}},
      "loss_based/upper": {"weighting": "loss_based", "weighting_kwargs": {
          "strategy": "upper", "r": 1.0, "warmup_steps": warmup}},
      "gce": {"loss": "gce", "loss_kwargs": {"q": 0.7}},
      "sce": {"loss": "sce", "loss_kwargs": {"alpha": 0.1, "beta": 1.0}},
  })
  c.reference = "ce"  # every method's test accuracy is compared with it, paired by seed
  return c
