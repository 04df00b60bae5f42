"""Token-level preference optimisation on synthetic byte-level pairs: DPO vs SparsePO.

python experiments/preference_pairs.py --config=configs/preference_pairs.py \
    --workdir=workdir/preference_pairs
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # Data (`reweight.data.domain_corpus`, one natural domain): TRAIN pairs from random
  # windows of the domain's train split; VALIDATION / TEST pairs from windows evenly spaced
  # over the first / second half of its held-out bytes.
  c.max_bytes_per_domain = 1 << 19
  c.validation_every = 10
  c.domain = "prose"
  c.prompt_len = 32  # a pair: a prompt of this many bytes, then a response of
  c.response_len = 32  # this many; the rejected response corrupts `marked` of its bytes
  c.marked = 3
  # "model": each marked byte is replaced by a byte sampled from the reference model's
  # next-byte distribution (given the true prefix) with the true byte excluded, so the
  # corruption is plausible to the reference; "uniform": a printable ASCII byte (32..126)
  # other than the true one.
  c.corruption = "model"
  c.val_pairs = 128
  c.test_pairs = 256
  c.model_kwargs = ml_collections.ConfigDict(
      {"d_model": 64, "num_heads": 4, "num_layers": 2, "max_len": 64})
  # The reference model: pretrained on the domain's train split (plain token mean; the
  # settings of configs/token_weighting.py), one per seed.
  c.pretrain = ml_collections.ConfigDict({
      "steps": 300, "batch_size": 16, "learning_rate": 1e-2, "warmup_steps": 20,
      "final_ratio": 0.01, "weight_decay": 0.1})
  # Preference optimisation from the reference: AdamW (b2 = 0.95, no weight decay), warmup
  # then constant; beta chosen on VALIDATION reward accuracy per method (mean over seeds).
  c.train = ml_collections.ConfigDict({
      "steps": 100, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 10})
  c.betas = (0.1, 1.0)
  c.methods = ("dpo", "sparse_po_activation", "sparse_po_learned")
  c.sparsity = 0.001  # lambda_u = lambda_d of the learned mask (the authors' HH value)
  c.seeds = (0, 1, 2)
  return c
