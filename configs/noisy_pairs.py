"""Noisy pairs in contrastive learning: InfoNCE vs decoupled vs consistency-gated InfoNCE.

python experiments/noisy_pairs.py --config=configs/noisy_pairs.py --workdir=workdir/noisy_pairs

View A: a digits image; view B: a second rendering of it (shifted by up to one pixel,
blurred, noisy); view C (the gate's "synthetic caption"): another, independent rendering of
view A's own image. 30% of the training pairs get another example's view B; validation
(20% of TRAIN, carved out before the mismatching) and test are clean.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.val_fraction = 0.2  # of TRAIN, clean, for every choice
  c.mismatch_fraction = 0.3  # of the remaining training pairs
  # The rendering of views B and C: integer shift in [-max_shift, max_shift]^2 (zero fill),
  # Gaussian blur of this sigma (pixels), then N(0, noise^2) pixel noise.
  c.max_shift = 1
  c.blur_sigma = 0.6
  c.noise = 0.1
  c.seeds = (0, 1, 2)

  # Two encoders (A and B), each an MLP 64 -> hidden -> embed_dim; cosine similarities.
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 64, "hidden": (128,)})
  c.embed_dim = 32
  c.learning_rate = 1e-3  # AdamW
  c.weight_decay = 1e-4
  c.batch_size = 128
  c.steps = 800
  c.eval_every = 25  # early-stopping candidates, chosen on validation retrieval
  # Chosen on validation per method and seed (the gate's gamma too, for gated methods).
  c.temperatures = (0.1, 0.2, 0.5, 1.0)
  c.gate_gammas = (1.0, 2.0, 4.0)
  c.gate_momentum = 0.9

  c.methods = ml_collections.ConfigDict({
      "infonce": {"decoupled": False, "weighting": "uniform"},
      "decoupled": {"decoupled": True, "weighting": "uniform"},
      "gated": {"decoupled": False, "weighting": "consistency_gate"},
      "decoupled_gated": {"decoupled": True, "weighting": "consistency_gate"},
      # Reference, not a method: weight 0 on the mismatched pairs (known here only).
      "oracle": {"decoupled": False, "weighting": "oracle"},
  })
  # Paired per-seed differences (first − second), each with a 95% t-interval.
  c.comparisons = (("decoupled", "infonce"), ("gated", "infonce"),
                   ("decoupled_gated", "infonce"), ("oracle", "infonce"))
  return c
