"""Domain mixing on a byte-level Transformer LM (six text domains); upsampling at the end.

python experiments/domain_mixing.py --config=configs/domain_mixing.py \
    --workdir=workdir/domain_mixing
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # Data (`reweight.data.domain_corpus`): up to `max_bytes_per_domain` bytes of each natural
  # domain (code, prose, licenses, tables; their sizes differ), one file in
  # `validation_every` held out, plus the `noise` and `duplicated` domains. Each domain's
  # held-out bytes are cut in two contiguous halves: VALIDATION (first half: every choice,
  # every eval a method consumes) and TEST (second half: the reported numbers, once per run).
  c.max_bytes_per_domain = 1 << 21
  c.validation_every = 10
  c.noise_nominal_bytes = 1 << 21  # noise's size for proportional / temperature sampling
  c.seq_len = 64
  c.val_windows = 32  # per domain, evenly spaced over the validation half
  c.test_windows = 128  # per domain, evenly spaced over the test half

  c.model_kwargs = ml_collections.ConfigDict(
      {"d_model": 64, "num_heads": 4, "num_layers": 2, "max_len": 64})
  # AdamW (b2 = 0.95), warmup then cosine to 1% of the peak; the peak LR and weight decay
  # of configs/lm_schedules.py, not tuned here. The same for every method.
  c.learning_rate = 1e-2
  c.weight_decay = 0.1
  c.warmup_steps = 20
  c.final_ratio = 0.01
  c.steps = 400  # every method's final model trains exactly this many steps
  c.batch_size = 16

  c.methods = ("stratified", "proportional", "temperature", "group_dro", "doremi", "aioli",
               "skill_it", "exp3")
  c.natural = ("code", "prose", "licenses", "tables")  # averaged and worst-of in the report
  c.reference = "stratified"  # the baseline of the paired comparisons
  # Method hyperparameters: the papers' defaults.
  c.temperature_tau = 2.0
  c.group_dro_step_size = 0.01
  c.doremi = ml_collections.ConfigDict({"step_size": 1.0, "smoothing": 1e-3})
  c.aioli = ml_collections.ConfigDict(
      {"step_size": 0.2, "rounds": 4, "lp_rounds": 1, "lp_steps": 4, "smoothing": 0.625})
  c.skill_it = ml_collections.ConfigDict({"step_size": 0.5, "window": 3, "rounds": 6})
  c.exp3_target_batch = 16  # natural-domain validation windows per target gradient

  # Upsampling at the end: proportional over the natural domains, then `domain` at
  # `target_prob` (the others scaled down) for the last fraction f of the steps.
  c.upsample = ml_collections.ConfigDict({
      "domain": "prose",
      "target_prob": 0.5,
      "fractions": (0.0, 0.05, 0.1, 0.2, 0.3),
      "steps": 400,
  })
  c.parts = ("mixing", "upsample")
  c.seeds = (0, 1, 2)
  return c
