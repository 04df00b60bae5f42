"""merge / unmerge round trips, optimizer set-up on the trainable tree, and byte counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reweight.reparam.adalora import adalora
from reweight.reparam.bone import bone
from reweight.reparam.lora import dora, lora
from reweight.reparam.merge import init_train, merge, tree_bytes, unmerge


def mlp_params(key, sizes=(64, 128, 10)):
  keys = jax.random.split(key, len(sizes) - 1)
  return {f"dense{i}": {"kernel": jax.random.normal(k, (m, n)) / np.sqrt(m), "bias": jnp.zeros(n)}
          for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))}


def randomize(tree, key):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  new = [0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
  return jax.tree.unflatten(treedef, new)


REPARAMS = {
    "lora": lambda: lora(4, 8.0, r"dense\d/kernel"),
    "pissa": lambda: lora(4, 8.0, r"dense\d/kernel", init="pissa"),
    "adalora": lambda: adalora(4, 8.0, r"dense\d/kernel"),
    "bone": lambda: bone(4, r"dense\d/kernel"),
    "bone_mini": lambda: bone(5, r"dense\d/kernel", mode="mini", mini_r=2),
    "bone_bat": lambda: bone(2, r"dense\d/kernel", mode="bat"),
}


@pytest.mark.parametrize("name", sorted(REPARAMS))
def test_unmerge_recovers_frozen(name):
  rp = REPARAMS[name]()
  params = mlp_params(jax.random.key(0), sizes=(12, 8, 6))
  trainable, frozen = rp.init(params, jax.random.key(1))
  trainable = randomize(trainable, jax.random.key(2))
  merged = merge(rp, trainable, frozen)
  # The adapters changed the kernels, and unmerging gives the frozen tree back.
  assert not np.allclose(merged["dense0"]["kernel"], frozen["dense0"]["kernel"])
  back = unmerge(rp, trainable, merged)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), back, frozen)


def test_unmerge_not_invertible_raises():
  rp = dora(2, 4.0, r"dense\d/kernel")
  trainable, frozen = rp.init(mlp_params(jax.random.key(0)), jax.random.key(1))
  with pytest.raises(ValueError, match="no inverse"):
    unmerge(rp, trainable, frozen)


def numpy_adam_bytes(shapes):
  # Adam keeps mu and nu (float32) per parameter plus one int32 step count.
  return 2 * 4 * sum(int(np.prod(s)) for s in shapes) + 4


def test_init_train_lora_vs_full_adam_state():
  params = mlp_params(jax.random.key(0))
  opt = optax.adam(1e-3)
  trainable, frozen, opt_state = init_train(lora(4, 8.0, r"dense\d/kernel"), params,
                                            jax.random.key(1), opt)
  assert frozen is params
  lora_shapes = [(64, 4), (4, 128), (128, 4), (4, 10)]
  assert sorted(x.shape for x in jax.tree.leaves(trainable)) == sorted(lora_shapes)
  assert tree_bytes(opt_state) == numpy_adam_bytes(lora_shapes)
  full_shapes = [x.shape for x in jax.tree.leaves(params)]
  assert tree_bytes(opt.init(params)) == numpy_adam_bytes(full_shapes)
  # The optimizer state has the trainable tree's structure.
  assert jax.tree.structure(opt_state[0].mu) == jax.tree.structure(trainable)


def test_tree_bytes_numpy_and_shape_structs():
  tree = {"a": jnp.zeros((2, 3)), "b": (np.zeros(5, np.int8), jnp.zeros((), jnp.bfloat16))}
  expected = sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))
  assert tree_bytes(tree) == expected
  assert tree_bytes(jax.eval_shape(lambda t: t, tree)) == expected
