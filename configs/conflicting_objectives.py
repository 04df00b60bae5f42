"""Two conflicting objectives on digits: accuracy vs a loss gap between two renderings.

python experiments/conflicting_objectives.py --config=configs/conflicting_objectives.py \
    --workdir=workdir/conflicting_objectives

Objective 1: the mean cross-entropy over the training split. Objective 2: the fairness gap
|mean CE(degraded) - mean CE(clean)| between two groups of images: each image (train,
validation and test alike) is, with probability ``degraded_fraction``, shown in a DEGRADED
rendering (every ``block`` x ``block`` block of the 8x8 image replaced by its mean: a 2x2
thumbnail for block = 4), else as is. The degraded group is harder, so closing the gap
costs accuracy on the clean group.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.val_fraction = 0.3  # of TRAIN, held out for every choice
  c.degraded_fraction = 0.5  # P(image is in the degraded group)
  c.block = 4  # the degraded rendering: block x block means (a 2x2 thumbnail)
  c.seeds = (0, 1, 2)

  # A linear softmax model (mlp with no hidden layer): small enough that the two
  # objectives stay in conflict on the training split.
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 64, "hidden": ()})
  # Full-batch gradient descent with momentum on the whole training split (so the two
  # objectives and their gradients are exact, as MGDA assumes), same for every method.
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.steps = 600
  c.record_every = 1  # train objectives / weights recorded along training

  # Linear scalarisation (1 - w) * CE + w * gap, at these w.
  c.linear_weights = (0.0, 0.1, 0.25, 0.5, 1.0)
  # Lagrangian: minimise CE subject to gap <= theta on the training split. The target is
  # tau = target_fraction * the validation gap of the w = 0 (CE only) run of the same seed;
  # the training threshold theta = factor * tau (factor in threshold_factors: the gap
  # generalises imperfectly, so a tighter training threshold may be needed) and the dual
  # step size (dual_step_sizes) are chosen together on validation: the lowest validation CE
  # among the runs whose validation gap is <= tau; if none is, the lowest validation gap.
  c.target_fraction = 0.5
  c.threshold_factors = (1.0, 0.5, 0.25)
  c.dual_step_sizes = (0.1, 1.0, 10.0)
  return c
