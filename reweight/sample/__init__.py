"""Per-example weightings: which examples count."""

from reweight.sample.class_balanced import class_balanced
from reweight.sample.loss_based import loss_based
from reweight.sample.meta import l2rw, meta_weight_net, self_taught

__all__ = ["class_balanced", "l2rw", "loss_based", "meta_weight_net", "self_taught"]
