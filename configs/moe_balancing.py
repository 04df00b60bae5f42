"""Global- vs micro-batch load balancing of a small MoE Transformer on four text domains.

python experiments/moe_balancing.py --config=configs/moe_balancing.py \
    --workdir=workdir/moe_balancing
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # Data (`reweight.data.domain_corpus`, natural domains only: code, prose, licenses,
  # tables): up to `max_bytes_per_domain` bytes each, one file in `validation_every` held
  # out; the held-out bytes are cut in two contiguous halves, VALIDATION (first) and TEST.
  c.max_bytes_per_domain = 1 << 19
  c.validation_every = 10
  c.seq_len = 64
  c.val_windows = 32  # per domain
  c.test_windows = 64  # per domain

  # Transformer with a top-1 MoE feed-forward (4 experts) in both blocks.
  c.model_kwargs = ml_collections.ConfigDict({
      "d_model": 64, "num_heads": 4, "num_layers": 2, "max_len": 64, "num_experts": 4,
      "experts_per_token": 1, "expert_hidden": 128})
  c.learning_rate = 3e-3
  c.weight_decay = 0.1
  c.warmup_steps = 20
  c.final_ratio = 0.01
  c.steps = 300
  # Every batch: batch_size / 4 windows of each domain in a random order, split into
  # `microbatches` micro-batches (here 2 sequences each) for gradient accumulation.
  c.batch_size = 16
  c.microbatches = 8

  c.scopes = ("global", "micro")
  # The load-balancing coefficient alpha, the same for both scopes. One value: fixed (the
  # Switch Transformer's alpha = 1e-2); several: the one with the lowest validation loss
  # (mean over scopes and seeds) is reported.
  c.balance_coefs = (0.01,)
  c.z_coef = 0.0  # no router z-loss: the comparison is about the balancing loss only
  c.seeds = (0, 1, 2)
  return c
