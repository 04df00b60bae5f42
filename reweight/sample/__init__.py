"""Per-example weightings: which examples count.

Weightings (`reweight.Weighting`): `loss_based`, `focal_weights`, `self_paced`,
`ease_curriculum`, `class_balanced`, `l2rw`, `meta_weight_net`, `self_taught`,
`saf_memory_writer` (keeps SAF's logit memory), `token_probability` (token weights for
`reweight.weighted_tokens`) and `consistency_gate` (gates for contrastive pairs).

The losses that used to live here (SAF, EnsLoss, multi-sample dropout) are in
`reweight.losses`; their earlier names ``reweight.sample.saf_loss`` etc. still work as
aliases.
"""

from reweight.contrastive import consistency_gate

# Aliases of the losses that moved to reweight/losses/ (ensloss.py, multi_sample_dropout.py,
# saf.py), kept under their earlier public names reweight.sample.<name>.
from reweight.losses.ensloss import binary_margins, ensloss, ensloss_derivatives
from reweight.losses.multi_sample_dropout import (
    dropout_masks,
    multi_sample_dropout,
)
from reweight.losses.saf import (
    SAFMemory,
    read_memory,
    saf_loss,
    saf_memory,
    saf_memory_writer,  # a weighting: uniform weights, its state is SAF's logit memory
    update_memory,
)
from reweight.sample.class_balanced import class_balanced
from reweight.sample.hardness import ease_curriculum, focal_weights, self_paced
from reweight.sample.loss_based import loss_based
from reweight.sample.meta import l2rw, meta_weight_net, self_taught
from reweight.sample.token_probability import token_probability

WEIGHTINGS = ("class_balanced", "consistency_gate", "ease_curriculum", "focal_weights", "l2rw",
              "loss_based", "meta_weight_net", "saf_memory_writer", "self_paced", "self_taught",
              "token_probability")

__all__ = [
    "WEIGHTINGS", "SAFMemory",
    "binary_margins", "class_balanced", "consistency_gate", "dropout_masks", "ease_curriculum",
    "ensloss", "ensloss_derivatives", "focal_weights", "l2rw", "loss_based", "meta_weight_net",
    "multi_sample_dropout", "read_memory", "saf_loss", "saf_memory", "saf_memory_writer",
    "self_paced", "self_taught", "token_probability", "update_memory",
]
