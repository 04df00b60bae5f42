"""reweight: dynamic weighting in training for JAX.

Sample reweighting (which examples count), group and domain mixing (which data sources are
drawn), curricula and schedules (when data and step sizes arrive), and weight
reparameterization (which directions of the weights may move), as pure functions and optax
transforms.
"""

from reweight import (
    annealing_law,
    curriculum,
    group,
    losses,
    objectives,
    optim,
    parallel,
    reparam,
    sample,
    schedules,
    tree_paths,
)
from reweight.base import (
    EmptyState,
    Weighting,
    chain,
    clip,
    diagnostics,
    effective_sample_size,
    interpolate,
    max_weight,
    named_chain,
    normalize,
    num_nonfinite,
    uniform,
    valid_mask,
    weight_entropy,
    weighted,
)
from reweight.tokens import per_sequence, weighted_tokens

__version__ = "0.1.0"

__all__ = [
    "EmptyState", "Weighting", "chain", "clip", "diagnostics", "effective_sample_size",
    "interpolate", "losses", "max_weight", "named_chain", "normalize", "num_nonfinite",
    "parallel", "sample", "uniform", "valid_mask", "weight_entropy", "weighted",
    "per_sequence", "weighted_tokens",
    "annealing_law", "curriculum", "group", "objectives", "optim", "reparam", "schedules",
    "tree_paths",
]
