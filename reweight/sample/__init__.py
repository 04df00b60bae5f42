"""Per-example weightings: which examples count."""

from reweight.sample.loss_based import loss_based

__all__ = ["loss_based"]
