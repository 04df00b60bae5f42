"""optax transformations: averaging, gradient-norm recording, budgets, masks, projections,
penalty gradients."""

from reweight.optim import averaging, grad_norms
from reweight.optim.adalora_budget import AdaLoraBudgetState, adalora_budget, budget_table
from reweight.optim.averaging import (
    EmaParamsState,
    SwaState,
    average_orbax_checkpoints,
    averaged_params,
    checkpoint_average,
    checkpoint_weights,
    ema_params,
    swa,
)
from reweight.optim.grad_norms import (
    GradNormsState,
    find_grad_norms_state,
    record_grad_norms,
    recorded_norms,
)
from reweight.optim.lr_table import LrTableState, scale_by_lr_table
from reweight.optim.penalty import add_penalty_gradient
from reweight.optim.projections import (
    NormalizeAndProjectState,
    ProjectRadialState,
    SGDPState,
    SpectralState,
    adamp,
    normalize_and_project,
    project_radial,
    sgdp,
    spectral_clip,
    spectral_hammer,
    spectral_normalize,
)
from reweight.optim.sparse_mask import LiftState, lift, principal_mask_indices

__all__ = [
    "AdaLoraBudgetState", "EmaParamsState", "GradNormsState", "SwaState", "adalora_budget",
    "add_penalty_gradient",
    "average_orbax_checkpoints", "averaged_params", "averaging", "budget_table",
    "checkpoint_average", "checkpoint_weights", "ema_params", "find_grad_norms_state",
    "grad_norms", "record_grad_norms", "recorded_norms", "swa",
    "LiftState", "LrTableState", "scale_by_lr_table",
    "NormalizeAndProjectState", "ProjectRadialState", "SGDPState", "SpectralState",
    "adamp", "lift", "normalize_and_project", "principal_mask_indices", "project_radial",
    "sgdp", "spectral_clip", "spectral_hammer", "spectral_normalize",
]
