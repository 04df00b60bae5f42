"""reweight.losses holds every loss; earlier public names still resolve to the same objects."""

from __future__ import annotations

import importlib

import pytest

import reweight
from reweight import losses


@pytest.mark.parametrize("module, names", [
    ("classification", ["softmax_cross_entropy", "focal", "generalized_cross_entropy",
                        "symmetric_cross_entropy", "poly1", "z_loss", "log_likelihood",
                        "sequence_mean", "get", "LOSSES"]),
    ("saf", ["saf_loss", "SAFMemory", "saf_memory", "read_memory", "update_memory",
             "saf_memory_writer"]),
    ("ensloss", ["ensloss", "ensloss_derivatives", "binary_margins"]),
    ("multi_sample_dropout", ["multi_sample_dropout", "dropout_masks"]),
    ("anyloss", ["f_beta_loss", "balanced_accuracy_loss", "soft_confusion", "amplify"]),
])
def test_each_loss_is_defined_in_its_module_and_exported(module, names):
  mod = importlib.import_module(f"reweight.losses.{module}")
  for name in names:
    assert getattr(losses, name) is getattr(mod, name), name
    assert name in losses.__all__


@pytest.mark.parametrize("name, home", [
    ("info_nce", "contrastive"), ("info_nce_global", "contrastive"), ("grpo", "grpo"),
    ("group_advantages", "grpo"), ("load_balancing", "load_balancing"),
    ("router_z_loss", "load_balancing"), ("dpo", "preference"), ("dpo_rewards", "preference"),
    ("sparse_po", "preference"), ("sparse_po_rewards", "preference"),
    ("anchored_token_probability", "token_losses"),
])
def test_losses_of_other_units_are_re_exported(name, home):
  assert getattr(losses, name) is getattr(importlib.import_module(f"reweight.{home}"), name)


def test_sample_keeps_earlier_loss_names_as_aliases():
  for name in ("saf_loss", "SAFMemory", "saf_memory", "read_memory", "update_memory",
               "saf_memory_writer", "ensloss", "ensloss_derivatives", "binary_margins",
               "multi_sample_dropout", "dropout_masks"):
    assert getattr(reweight.sample, name) is getattr(losses, name), name
  # The losses are not listed among the weightings.
  assert not set(reweight.sample.WEIGHTINGS) & {"saf_loss", "ensloss", "multi_sample_dropout"}
