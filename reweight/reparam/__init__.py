"""reweight.reparam: parameter reparameterizations (LoRA family, Bone/MiSS, AdaLoRA, ...).

Every reparameterization is a `Reparam` ``(init, apply)``: ``init(params, key, **data) ->
(trainable, frozen)`` and ``apply(trainable, frozen) -> params``; only ``trainable`` is
optimized. Targets are regexes over '/'-joined parameter paths.
"""

from reweight.reparam._core import Reparam, select
from reweight.reparam.adalora import adalora, orthogonal_penalty
from reweight.reparam.bone import bone
from reweight.reparam.compander import compand, compand_inverse, compander
from reweight.reparam.eva import collect_inputs, eva, eva_fit, redistribute_ranks
from reweight.reparam.factored import NotFactorableError, factored
from reweight.reparam.lora import dora, lora
from reweight.reparam.merge import init_train, merge, tree_bytes, unmerge
from reweight.reparam.modules_to_save import modules_to_save
from reweight.reparam.patches import (
    apply_patches,
    patch,
    patch_add,
    patch_remove,
    patch_scale,
    project_off,
)
from reweight.reparam.with_data import with_data

__all__ = [
    "NotFactorableError",
    "Reparam",
    "adalora",
    "apply_patches",
    "collect_inputs",
    "compand",
    "compand_inverse",
    "eva",
    "eva_fit",
    "factored",
    "patch",
    "redistribute_ranks",
    "bone",
    "compander",
    "dora",
    "init_train",
    "lora",
    "merge",
    "modules_to_save",
    "orthogonal_penalty",
    "patch_add",
    "patch_remove",
    "patch_scale",
    "project_off",
    "select",
    "tree_bytes",
    "unmerge",
    "with_data",
]
