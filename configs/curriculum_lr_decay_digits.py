"""Curriculum x LR decay (Luo et al., 2025) on scikit-learn digits (1438 train images).

python experiments/curriculum_lr_decay.py --config=configs/curriculum_lr_decay_digits.py \
    --workdir=workdir/curriculum_lr_decay_digits
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  # Five equal tiers; tier d has symmetric label noise at rate tier_levels[d].
  c.tier_kind = "label_noise"
  c.tier_levels = (0.8, 0.6, 0.4, 0.2, 0.0)
  c.noise_kind = "symmetric"
  # Held out of the training split before the tiers are made, clean: every choice (the best
  # recipe of each order) is made on it; the test split is reported, never chosen on.
  c.val_fraction = 0.1

  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 64, "hidden": (256,)})
  c.learning_rate = 1e-3  # AdamW peak LR
  c.weight_decay = 1e-4
  c.epochs = 6  # 242 steps of 32 (1294 train images after the validation split)
  c.batch_size = 32
  c.warmup_fraction = 0.02

  c.schedules = ml_collections.ConfigDict({
      "constant": {"kind": "constant"},
      "cosine": {"kind": "cosine", "final_ratio": 0.0},
      "wsd": {"kind": "wsd", "decay_fraction": 0.2, "shape": "linear", "final_ratio": 0.0},
      # Moderate decays (Luo et al.): the final LR is 0.3x the peak, not ~0.
      "moderate_cosine": {"kind": "moderate", "final_ratio": 0.3, "shape": "cosine"},
      "moderate_wsd": {"kind": "wsd", "decay_fraction": 0.2, "shape": "linear",
                       "final_ratio": 0.3},
  })

  c.checkpoint_every = 8  # the last 6 checkpoints span the last 48 steps
  c.average_k = 6
  c.ema_decay = 0.5

  c.eval_every = 20
  c.seeds = (0, 1, 2, 3, 4)  # 5 seeds: several gains are borderline at 3
  return c
