"""Token weighting for fine-tuning a byte-level LM: SFT vs DFT vs anchored DFT.

python experiments/token_weighting.py --config=configs/token_weighting.py \
    --workdir=workdir/token_weighting
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # Data (`reweight.data.domain_corpus`, natural domains only): up to
  # `max_bytes_per_domain` bytes of each domain, one file in `validation_every` held out.
  # The held-out bytes of a domain are cut in two contiguous halves: VALIDATION (the first:
  # every choice) and TEST (the second: the reported numbers).
  c.max_bytes_per_domain = 1 << 19
  c.validation_every = 10
  c.source = "code"  # pretraining domain (forgetting is measured on it)
  c.target = "prose"  # fine-tuning domain
  c.seq_len = 64
  c.val_windows = 64  # per domain, evenly spaced over the validation half
  c.test_windows = 128  # per domain, evenly spaced over the test half
  c.model_kwargs = ml_collections.ConfigDict(
      {"d_model": 64, "num_heads": 4, "num_layers": 2, "max_len": 64})

  # Pretraining on the source domain (one model per seed, shared by every method):
  # AdamW (b2 = 0.95), warmup then cosine to 1% (the settings of configs/domain_mixing.py).
  c.pretrain = ml_collections.ConfigDict({
      "steps": 300, "batch_size": 16, "learning_rate": 1e-2, "warmup_steps": 20,
      "final_ratio": 0.01, "weight_decay": 0.1})
  # Fine-tuning on the target domain: the same optimizer, shorter warmup, cosine to 10%;
  # the peak LR (and the anchor's KL coefficient) is chosen on validation per method.
  c.finetune = ml_collections.ConfigDict({
      "steps": 100, "batch_size": 16, "warmup_steps": 10, "final_ratio": 0.1,
      "weight_decay": 0.1})
  # Per-method peak-LR grids (DFT's unnormalised weights p_t < 1 shrink its steps, but it
  # diverges at the higher LRs: its grid is shifted down).
  c.learning_rates = ml_collections.ConfigDict({
      "sft": (3e-4, 1e-3, 3e-3), "dft": (1e-4, 3e-4, 1e-3), "anchored": (3e-4, 1e-3, 3e-3)})
  c.kl_coeffs = (0.1, 1.0)  # anchored: lambda of KL(p_ref || p_theta)
  c.methods = ("sft", "dft", "anchored")
  # Selection on VALIDATION, per method, the mean over seeds of: "target" (target loss) or
  # "target+source" (target loss + source loss after fine-tuning: learn without forgetting).
  c.select_on = "target+source"
  c.seeds = (0, 1, 2)
  return c
