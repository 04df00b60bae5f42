"""PEFT on a task shift, MNIST-1D: pretrain on classes 0-4, fine-tune on 5-9 with each method.

python experiments/peft.py --config=configs/peft_mnist1d.py --workdir=workdir/peft_mnist1d

Adapters sit on both hidden kernels (40x128, 128x128); ranks are chosen so that the adapter
parameter counts are close to LoRA r=4 (1,696): Bone r=7 (1,792), Bone-bat r=8 (2,048; the
block size must divide 40 and 128), DoRA r=4 (+256 magnitudes), AdaLoRA r 6 -> 4 (2,556
allocated, rank 4 on average at the end), EVA total rank 8 (1,344-2,048 after
redistribution), LIFT k = (in + out) * 4 entries per kernel (1,696). The head (645) is
trained by every method. An MLP, not the CNN: the reparameterizations act on 2-D kernels.
Learning rates: the best of `tune_learning_rates` on a validation split of the task-B
training set (`--config.mode=tune`, see experiments/README.md).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "final"  # or "tune": learning-rate sweep on the validation split
  c.dataset = "mnist1d"
  c.task_a = (0, 1, 2, 3, 4)
  c.task_b = (5, 6, 7, 8, 9)
  c.val_fraction = 0.15  # of task-B train, held out in both modes (used only for tuning)
  c.data_seed = 0

  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 40, "hidden": (128, 128)})
  c.targets = r"hidden/\d+/kernel"  # where the adapters go
  c.head = r"head/.*"  # trained fully by every method (PEFT's modules_to_save)

  c.pretrain_steps = 1000
  c.pretrain_learning_rate = 1e-3
  c.steps = 500
  c.batch_size = 64
  c.eval_every = 100
  c.weight_decay = 0.0
  c.seeds = (0, 1, 2)

  c.reference = "full"  # step-time ratios are relative to this method
  # Paired differences over seeds (method − reference, 95% CI) against each of these.
  c.paired_references = ("full", "lora")
  c.timing_rounds = 10
  c.timing_steps = 20

  c.tune_seed = 0
  c.tune_learning_rates = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)

  r, alpha = 4, 8.0
  c.methods = ml_collections.ConfigDict({
      "full": {"kind": "full", "learning_rate": 0.01},
      "head_only": {"kind": "head", "learning_rate": 0.03},
      "lora": {"kind": "lora", "rank": r, "alpha": alpha, "learning_rate": 0.003},
      "rslora": {"kind": "lora", "rank": r, "alpha": alpha, "rslora": True,
                 "learning_rate": 0.003},
      "pissa": {"kind": "lora", "rank": r, "alpha": alpha, "init": "pissa",
                "learning_rate": 0.01},
      # SoMA: minor singular components, weight decay annealed (cosine) from 0.05 to 1e-5.
      "soma": {"kind": "lora", "rank": r, "alpha": alpha, "init": "soma",
               "weight_decay": (0.05, 1e-5), "learning_rate": 0.003},
      "dora": {"kind": "dora", "rank": r, "alpha": alpha, "learning_rate": 0.01},
      "bone": {"kind": "bone", "rank": 7, "mode": "default", "learning_rate": 0.003},
      "bone_bat": {"kind": "bone", "rank": 8, "mode": "bat", "learning_rate": 0.003},
      "adalora": {"kind": "adalora", "init_rank": 6, "target_rank": r, "alpha": alpha,
                  "orth_reg": 0.1, "tinit_fraction": 0.1, "tfinal_fraction": 0.2,
                  "delta_t": 10, "learning_rate": 0.01},
      "eva": {"kind": "eva", "rank": r, "alpha": alpha, "rho": 2.0, "tau": 0.99,
              "learning_rate": 0.003},
      "lift": {"kind": "lift", "rank": r, "lora_rank": r, "refresh_every": 100,
               "learning_rate": 0.03},
  })
  return c
