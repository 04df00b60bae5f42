"""Curriculum x LR decay (Luo et al., 2025) on MNIST-1D with label-noise quality tiers.

python experiments/curriculum_lr_decay.py --config=configs/curriculum_lr_decay.py \
    --workdir=workdir/curriculum_lr_decay
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "mnist1d"
  # Five equal tiers; tier d has symmetric label noise at rate tier_levels[d] (quality is
  # known exactly). The ascending order trains on the 0.8 tier first, the clean tier last.
  c.tier_kind = "label_noise"  # or "input_noise": Gaussian noise of std level * std(x)
  c.tier_levels = (0.8, 0.6, 0.4, 0.2, 0.0)
  c.noise_kind = "symmetric"
  # Held out of the training split before the tiers are made, clean: every choice (the best
  # recipe of each order) is made on it; the test split is reported, never chosen on.
  c.val_fraction = 0.1

  c.model = "cnn"
  c.model_kwargs = ml_collections.ConfigDict({"in_shape": (40,), "channels": (32, 64)})
  c.learning_rate = 3e-3  # AdamW peak LR
  c.weight_decay = 1e-4
  c.epochs = 6  # passes over the data; few, so that the order matters (675 steps)
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

  # Averaging: the last `average_k` of the checkpoints taken every `checkpoint_every` steps.
  c.checkpoint_every = 10
  c.average_k = 6
  c.ema_decay = 0.5  # checkpoint EMA: the newest gets 1 - d, the one before (1 - d) d, ...

  c.eval_every = 25
  c.seeds = (0, 1, 2, 3, 4)  # 5 seeds: several gains are borderline at 3
  return c
