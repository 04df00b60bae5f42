"""Group and domain mixing: how much each group's loss counts, and how often it is drawn.

Both kinds keep their distribution over groups in a state with a ``probs`` field, so the
same state drives loss weights, a sampler (`reweight.data.online_mixture_sampler`), logs,
plots and checkpoints.

* Loss weightings (`reweight.Weighting`s that read ``groups=``): `group_dro` (online Group
  DRO), `doremi` (DoReMi's proxy weighting; ``avg_probs`` is its output mixture).
* Mixture policies (`MixturePolicy`: ``init() -> state``, ``update(state, *, step, ...) ->
  state``): `stratified`, `proportional`, `temperature`, `upsample_at_end`, `skill_it`,
  `aioli` (with `learn_params_mixtures` and `mixing_matrix`), `exp3` and `ucb1` (FLAD
  bandits; reward `gradient_alignment`).
* Selection: `color_filter` (CoLoR-Filter). Random subsets per epoch (RS2) are
  `reweight.data.random_subset_per_epoch`.
* Shared pieces: `probs_of`, `check_probs`, `group_diagnostics`.
"""

from reweight.group.aioli import aioli, learn_params_mixtures, mixing_matrix
from reweight.group.color_filter import color_filter
from reweight.group.doremi import DoReMiState, doremi
from reweight.group.fixed_mixtures import proportional, stratified, temperature, upsample_at_end
from reweight.group.flad import exp3, gradient_alignment, ucb1
from reweight.group.group_dro import GroupDROState, group_dro
from reweight.group.policy import (
    MixturePolicy,
    MixtureState,
    check_probs,
    group_diagnostics,
    probs_of,
)
from reweight.group.skill_it import skill_it

WEIGHTINGS = ("doremi", "group_dro")
POLICIES = ("aioli", "exp3", "proportional", "skill_it", "stratified", "temperature", "ucb1",
            "upsample_at_end")

__all__ = [
    "POLICIES", "WEIGHTINGS",
    "DoReMiState", "GroupDROState", "MixturePolicy", "MixtureState",
    "aioli", "check_probs", "color_filter", "doremi", "exp3", "gradient_alignment",
    "group_diagnostics", "group_dro", "learn_params_mixtures", "mixing_matrix", "probs_of",
    "proportional", "skill_it", "stratified", "temperature", "ucb1", "upsample_at_end",
]
