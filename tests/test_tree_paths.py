"""`reweight.tree_paths`: leaf paths of a pytree, selecting leaves by regex, replacing them."""

import flax.nnx as nnx
import jax.numpy as jnp
import numpy as np
import pytest

from reweight import tree_paths

PARAMS = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
          "blocks": [{"kernel": jnp.full((3, 3), 2.0)}]}


def test_paths_are_slash_joined_keys_in_tree_order():
  assert list(tree_paths.flatten_with_paths(PARAMS)) == [
      "blocks/0/kernel", "dense/bias", "dense/kernel"]


def test_unflatten_inverts_flatten():
  flat = tree_paths.flatten_with_paths(PARAMS)
  back = tree_paths.unflatten_like(PARAMS, flat)
  np.testing.assert_array_equal(back["blocks"][0]["kernel"], PARAMS["blocks"][0]["kernel"])
  assert list(tree_paths.flatten_with_paths(back)) == list(flat)


def test_select_matches_whole_paths_of_the_given_rank():
  assert tree_paths.select(PARAMS, ".*kernel") == ["blocks/0/kernel", "dense/kernel"]
  assert tree_paths.select(PARAMS, "dense/.*", ndim=None) == ["dense/bias", "dense/kernel"]
  with pytest.raises(ValueError, match="matches no parameter.*available paths"):
    tree_paths.select(PARAMS, "kernel")  # fullmatch: a bare 'kernel' is no leaf's path


def test_select_accepts_nnx_value_suffix():
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  paths = list(tree_paths.flatten_with_paths(state))
  assert any(p.endswith("kernel/value") for p in paths), paths
  assert [p for p in tree_paths.select(state, ".*kernel")] == [
      p for p in paths if p.endswith("kernel/value")]


def test_replace_at_replaces_only_the_named_leaves():
  new = tree_paths.replace_at(PARAMS, {"dense/bias": jnp.ones(3)})
  np.testing.assert_array_equal(new["dense"]["bias"], np.ones(3))
  np.testing.assert_array_equal(new["dense"]["kernel"], PARAMS["dense"]["kernel"])
  with pytest.raises(ValueError, match="not leaves of the tree"):
    tree_paths.replace_at(PARAMS, {"dense/weight": jnp.ones(3)})
