"""The reference trainer: state, step, loop, experiment, models and plots."""

from reweight.train.loop import (
    InputCheckError,
    MetricsHook,
    NonFiniteError,
    RunResult,
    evaluate,
    train,
)
from reweight.train.models import (
    CNN,
    MLP,
    MODELS,
    Functional,
    Transformer,
    functional,
    make_model,
    split_model,
)
from reweight.train.state import TrainState, create, params_of
from reweight.train.step import classification_loss, make_eval_step, make_train_step

__all__ = [
    "CNN", "MLP", "MODELS", "Functional", "InputCheckError", "MetricsHook", "NonFiniteError",
    "RunResult", "TrainState", "Transformer",
    "classification_loss", "create", "evaluate", "functional", "make_eval_step", "make_model",
    "make_train_step", "params_of", "split_model", "train",
]
