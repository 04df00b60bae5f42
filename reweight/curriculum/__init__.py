"""reweight.curriculum: difficulty scoring, orderings and pacing.

`scoring` gives each example a difficulty (higher = harder) and turns scores into an
easiest-first order or quality tiers; `pacing` gives, for each step, how much of that
order is available (a ``step -> fraction`` schedule, like the LR schedules of
`reweight.schedules`).
"""

from reweight.curriculum import pacing, scoring
from reweight.curriculum.pacing import (
    PACING_KINDS,
    deepspeed_fixed_discrete,
    deepspeed_fixed_root,
    exp,
    hacohen_exponential,
    linear,
    log,
    pacing_function,
    quad,
    root,
    step,
)
from reweight.curriculum.scoring import (
    LossEmaState,
    from_external,
    from_reference,
    init_loss_ema,
    loss_ema_scores,
    order,
    quality_tiers,
    update_loss_ema,
)

__all__ = [
    "PACING_KINDS",
    "LossEmaState",
    "deepspeed_fixed_discrete",
    "deepspeed_fixed_root",
    "exp",
    "from_external",
    "from_reference",
    "hacohen_exponential",
    "init_loss_ema",
    "linear",
    "log",
    "loss_ema_scores",
    "order",
    "pacing",
    "pacing_function",
    "quad",
    "quality_tiers",
    "root",
    "scoring",
    "step",
    "update_loss_ema",
]
