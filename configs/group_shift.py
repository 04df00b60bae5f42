"""Group shift on digits with a spurious marker: ERM vs Group DRO on worst-group accuracy.

python experiments/group_shift.py --config=configs/group_shift.py --workdir=workdir/group_shift

Task: y = 1 iff the digit is >= 5. Marker m: the top-left 2x2 pixel block lit (m = 1) or
dark (m = 0). Groups g = 2 y + m. In train and validation (30% of TRAIN, carved out after
stamping) the marker agrees with y for 90% of the images, so groups 1 and 2 are the
minorities; the test split holds every test image twice, once with each marker, so all four
groups are measured on the same images.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.threshold = 5  # y = 1 iff digit >= threshold
  c.agreement = 0.9  # P(m == y) in train and validation
  c.marker_pixels = (0, 1, 8, 9)  # top-left 2x2 block of the 8x8 image
  c.marker_value = 1.0  # the brightest ink of the digits
  c.val_fraction = 0.3  # of every group of TRAIN, for the model selection
  c.seeds = (0, 1, 2)

  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 64, "hidden": (256,)})
  # SGD with momentum and an L2 penalty (lambda/2 |theta|^2), as Sagawa et al.
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.weight_decays = (1e-4, 1e-3, 1e-2, 1e-1)  # chosen on validation, per method and seed
  c.steps = 1000
  c.batch_size = 64
  c.eval_every = 20  # early-stopping candidates: every 20 steps

  c.methods = ml_collections.ConfigDict({
      "erm": {"weighting": "uniform"},
      # Group DRO with the paper's step size for q, no generalization adjustment.
      "group_dro": {"weighting": "group_dro", "weighting_kwargs": {"step_size": 0.01}},
      # Control: q frozen at uniform (step size 0), i.e. every group's loss counts 1/4:
      # static group-balanced reweighting. Tells what the online adversary adds.
      "group_balanced": {"weighting": "group_dro", "weighting_kwargs": {"step_size": 0.0}},
  })
  # Paired per-seed differences (first − second), each with a 95% t-interval.
  c.comparisons = (("group_dro", "erm"), ("group_balanced", "erm"),
                   ("group_dro", "group_balanced"))
  return c
