"""reweight.losses: every loss of the library, one module per method.

Per-example classification losses (`reweight.losses.classification`): `softmax_cross_entropy`
(label smoothing, z-loss), `focal`, `generalized_cross_entropy`, `symmetric_cross_entropy`,
`poly1`, `z_loss`, `log_likelihood`, `sequence_mean`, and `get` / ``LOSSES`` by short name.

Per-example losses of one method each:

* `reweight.losses.saf` — SAF's trajectory loss `saf_loss` and its per-example logit memory
  (`saf_memory`, `read_memory`, `update_memory`, `saf_memory_writer`);
* `reweight.losses.ensloss` — EnsLoss (`ensloss`, `ensloss_derivatives`, `binary_margins`);
* `reweight.losses.multi_sample_dropout` — `multi_sample_dropout` and `dropout_masks`.

Batch-level losses: AnyLoss (`reweight.losses.anyloss`: `f_beta_loss`,
`balanced_accuracy_loss`, `soft_confusion`, `amplify`).

Losses over other units than examples, defined in their own modules (which do not import
this package) and re-exported here: `info_nce` / `info_nce_global` (contrastive pairs,
`reweight.contrastive`), `dpo` / `sparse_po` (preference pairs, `reweight.preference`),
`anchored_token_probability` (tokens, `reweight.token_losses`), `grpo` (prompt groups,
`reweight.grpo`), `load_balancing` / `router_z_loss` (experts, `reweight.load_balancing`).

Examples:
  >>> import jax.numpy as jnp
  >>> from reweight import losses
  >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
  >>> [round(x, 4) for x in losses.softmax_cross_entropy(logits, jnp.array([0, 0])).tolist()]
  [0.1269, 2.1269]
"""

from reweight.contrastive import info_nce, info_nce_global
from reweight.grpo import group_advantages, grpo
from reweight.load_balancing import load_balancing, router_z_loss
from reweight.losses.anyloss import (
    SoftConfusion,
    amplify,
    balanced_accuracy_loss,
    f_beta_loss,
    soft_confusion,
)
from reweight.losses.classification import (
    LOSSES,
    focal,
    generalized_cross_entropy,
    get,
    log_likelihood,
    poly1,
    sequence_mean,
    softmax_cross_entropy,
    symmetric_cross_entropy,
    z_loss,
)
from reweight.losses.ensloss import binary_margins, ensloss, ensloss_derivatives
from reweight.losses.multi_sample_dropout import dropout_masks, multi_sample_dropout
from reweight.losses.saf import (
    SAFMemory,
    read_memory,
    saf_loss,
    saf_memory,
    saf_memory_writer,
    update_memory,
)
from reweight.preference import dpo, dpo_rewards, sparse_po, sparse_po_rewards
from reweight.token_losses import anchored_token_probability

__all__ = [
    "LOSSES", "SAFMemory", "SoftConfusion",
    "amplify", "anchored_token_probability", "balanced_accuracy_loss", "binary_margins",
    "dpo", "dpo_rewards", "dropout_masks", "ensloss", "ensloss_derivatives", "f_beta_loss",
    "focal", "generalized_cross_entropy", "get", "group_advantages", "grpo", "info_nce",
    "info_nce_global", "load_balancing", "log_likelihood", "multi_sample_dropout", "poly1",
    "read_memory", "router_z_loss", "saf_loss", "saf_memory", "saf_memory_writer",
    "sequence_mean", "soft_confusion", "softmax_cross_entropy", "sparse_po",
    "sparse_po_rewards", "symmetric_cross_entropy", "update_memory", "z_loss",
]
