"""The sharding harness itself: it must detect a weighting that is wrong under sharding."""

import numpy as np
import pytest

from reweight import testing

CODE = """
import json, numpy as np, jax, jax.numpy as jnp
import reweight
from reweight import base, testing

def local_mean_weighting(axis_name=None):
  # Deliberately wrong under shard_map: normalizes with the LOCAL sum only.
  def update(losses, state, *, mask=None, **kw):
    valid = base.valid_mask(losses, mask)
    raw = jnp.where(valid, jnp.exp(losses), 0.0)
    return raw / raw.sum() * valid.sum(), state
  return base.Weighting(lambda key=None: base.EmptyState(), update)

losses = np.linspace(0, 2, 32).astype(np.float32)
bad = testing.layouts(local_mean_weighting, losses)
good = testing.layouts(lambda axis_name=None: reweight.sample.loss_based(
    "upper", 1.0, axis_name=axis_name), losses)

def make_loss(axis_name):  # a mean: right only with psum-ed numerator AND denominator
  def loss(p, b):
    per_example = (b["x"] * p) ** 2
    total = jnp.sum(per_example)
    count = jnp.float32(per_example.shape[0])
    if axis_name is not None:
      typed = reweight.parallel.is_typed(per_example, axis_name)
      total = reweight.parallel.global_sum(total, axis_name, typed)
      count = jax.lax.psum(count, axis_name)
    return total / count, per_example
  return loss

def make_bad_loss(axis_name):  # psum-ed numerator over the LOCAL count: 8 times too large
  def loss(p, b):
    per_example = (b["x"] * p) ** 2
    total = jnp.sum(per_example)
    if axis_name is not None:
      typed = reweight.parallel.is_typed(per_example, axis_name)
      total = reweight.parallel.global_sum(total, axis_name, typed)
    return total / per_example.shape[0], per_example
  return loss

batch = {"x": np.linspace(-1, 1, 32).astype(np.float32)}
print(json.dumps({"bad": testing.differences(bad), "good": testing.differences(good),
                  "loss_good": testing.differences(testing.loss_layouts(make_loss, 1.5, batch)),
                  "loss_bad": testing.differences(
                      testing.loss_layouts(make_bad_loss, 1.5, batch))}))
"""


@pytest.mark.multidevice
def test_harness_catches_local_normalization():
  res = testing.run_with_devices(CODE, 8)
  assert res["bad"]["jit_sharded"] <= 1e-6  # global-view code is right by construction
  assert res["bad"]["shard_map"] > 0.1 and res["bad"]["pmap"] > 0.1
  assert max(res["good"].values()) <= 1e-6
  assert max(res["loss_good"].values()) <= 1e-6
  assert res["loss_bad"]["jit_sharded"] <= 1e-6 and res["loss_bad"]["shard_map"] > 0.1
  assert res["loss_bad"]["pmap"] > 0.1


def test_max_difference_and_errors():
  a = {"x": {"w": np.array([1.0, 2.0])}, "y": {"w": np.array([1.0, 2.5])}}
  assert testing.max_difference(a, "x", "y") == 0.5
  with pytest.raises(ValueError, match="different outputs"):
    testing.max_difference({"x": {"w": 1}, "y": {"v": 1}}, "x", "y")
  with pytest.raises(ValueError, match="mode 'tpu' is not one of"):
    testing.layouts(lambda axis_name=None: None, np.zeros(2), modes=("tpu",))
  with pytest.raises(RuntimeError, match="subprocess failed"):
    testing.run_with_devices("raise SystemExit(3)", 2)


def test_assert_layouts_agree():
  ok = {m: 0.0 for m in testing.MODES}
  testing.assert_layouts_agree({"a": ok, "b": dict(ok, pmap=1e-7)})
  with pytest.raises(AssertionError, match="pmap"):
    testing.assert_layouts_agree({"a": dict(ok, pmap=1e-5)})
  with pytest.raises(AssertionError):
    testing.assert_layouts_agree({"a": {"single": 0.0, "shard_map": 0.0}})
