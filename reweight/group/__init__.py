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
* Clients (federated): `fedau` (FedAU's online estimate of each client's aggregation
  weight from its participation intervals, state `FedAUState`) and `fedavg_weights`
  (FedAvg's weights proportional to client sizes); neither is a loss `Weighting`.
* Reasoning RL (GDRO over pass@k difficulty groups): `difficulty_groups` (online
  classifier), `prompt_gdro` (a mixture policy), `rollout_allocation` (rollouts per group at
  a fixed mean budget); the loss is `reweight.grpo.grpo`.
* Selection: `color_filter` (CoLoR-Filter). Random subsets per epoch (RS2) are
  `reweight.data.random_subset_per_epoch`.
* Shared pieces: `probs_of`, `check_probs`, `group_diagnostics`.
"""

from reweight.group.aioli import aioli, learn_params_mixtures, mixing_matrix
from reweight.group.color_filter import color_filter
from reweight.group.doremi import DoReMiState, doremi
from reweight.group.fedau import FedAU, FedAUState, fedau, fedavg_weights
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
from reweight.group.prompt_gdro import (
    DifficultyState,
    PromptGDROState,
    RolloutAllocation,
    difficulty_groups,
    prompt_gdro,
    rollout_allocation,
)
from reweight.group.skill_it import skill_it

WEIGHTINGS = ("doremi", "group_dro")
POLICIES = ("aioli", "exp3", "prompt_gdro", "proportional", "skill_it", "stratified",
            "temperature", "ucb1", "upsample_at_end")

__all__ = [
    "POLICIES", "WEIGHTINGS",
    "DoReMiState", "FedAU", "FedAUState", "GroupDROState", "MixturePolicy", "MixtureState",
    "aioli", "check_probs", "color_filter", "doremi", "exp3", "fedau", "fedavg_weights",
    "gradient_alignment", "group_diagnostics", "group_dro", "learn_params_mixtures",
    "mixing_matrix", "probs_of",
    "DifficultyState", "PromptGDROState", "RolloutAllocation", "difficulty_groups",
    "prompt_gdro", "rollout_allocation",
    "proportional", "skill_it", "stratified", "temperature", "ucb1", "upsample_at_end",
]
