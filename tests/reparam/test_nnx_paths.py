"""Reparam targets on Flax NNX state, whose leaf paths end in ``/value``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reweight import reparam
from reweight.reparam._core import flatten_with_paths, select


class MLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(5, 8, rngs=rngs)
    self.out = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


def _perturbed(trainable, key):
  """LoRA's B starts at zero; make it non-zero so the adapter changes the output."""
  leaves, treedef = jax.tree_util.tree_flatten(trainable)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_nnx_state_paths_end_in_value():
  state = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
  assert set(flatten_with_paths(state)) == {
      "hidden/kernel/value", "hidden/bias/value", "out/kernel/value", "out/bias/value"}


def test_kernel_regex_matches_nnx_state():
  state = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
  assert sorted(select(state, ".*kernel")) == ["hidden/kernel/value", "out/kernel/value"]
  assert select(state, "out/kernel") == ["out/kernel/value"]
  assert select(state, "out/kernel/value") == ["out/kernel/value"]  # the full path still works
  with pytest.raises(ValueError, match="matches no parameter"):
    select(state, ".*bias")  # 1-D leaves are not LoRA targets
  assert sorted(select(state, ".*bias", ndim=None)) == ["hidden/bias/value", "out/bias/value"]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_on_nnx_linear_equals_materialized_reference(method):
  model = MLP(nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  rp = (reparam.lora(2, 4.0, ".*kernel") if method == "lora"
        else reparam.dora(2, 4.0, ".*kernel"))
  trainable, frozen = rp.init(params, jax.random.key(1))
  assert sorted(trainable) == ["hidden/kernel/value", "out/kernel/value"]
  trainable = _perturbed(trainable, jax.random.key(2))

  x = jax.random.normal(jax.random.key(3), (7, 5))
  merged = rp.apply(trainable, frozen)
  y = nnx.merge(graphdef, merged)(x)

  # Reference: the same MLP with the effective kernels written out by hand.
  k, b = (lambda name: flatten_with_paths(params)[name + "/kernel/value"],
          lambda name: flatten_with_paths(params)[name + "/bias/value"])
  scale = 4.0 / 2

  def kernel(name):
    t = trainable[name + "/kernel/value"]
    w = k(name) + scale * t["lora_a"] @ t["lora_b"]
    if method == "dora":  # column norms of W' rescaled to the learned magnitude
      w = t["lora_magnitude"] * w / jnp.linalg.norm(w, axis=0, keepdims=True)
    return w

  h = jax.nn.relu(x @ kernel("hidden") + b("hidden"))
  ref = h @ kernel("out") + b("out")
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  assert not np.allclose(y, model(x), atol=1e-4)  # the adapter did change the output
