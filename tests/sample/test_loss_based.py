"""loss_based against a NumPy re-derivation of its formula, properties, and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reweight
from reweight import testing
from reweight.sample import loss_based

STRATEGIES = ["linupper", "quadratic", "extremes", "upper"]


def numpy_loss_based(losses, strategy, r, delta=1.0, mask=None):
  losses = np.asarray(losses, np.float64)
  valid = np.isfinite(losses) if mask is None else np.isfinite(losses) & mask
  lv = losses[valid]
  lmax, lmin = lv.max(), lv.min()
  span = max(lmax - lmin, 1e-6)
  h = 2 * delta * lv / span - delta * (lmax + lmin) / span
  f = {
      "linupper": np.minimum(h + delta, delta),
      "quadratic": 1 - h**2 / delta**2,
      "extremes": np.abs(h),
      "upper": 0.5 * h + 0.5 * delta,
  }[strategy]
  e = np.exp((f - f.max()) / r)
  w = np.zeros_like(losses)
  w[valid] = e / e.sum() * valid.sum()
  return w


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("r", [0.4, 1.0, 5.0])
def test_matches_numpy(strategy, r):
  rng = np.random.default_rng(0)
  losses = rng.gamma(2.0, 1.0, size=37).astype(np.float32)
  mask = rng.random(37) > 0.3
  w, _ = loss_based(strategy, r).update(jnp.asarray(losses), loss_based(strategy, r).init(),
                                        mask=jnp.asarray(mask))
  np.testing.assert_allclose(w, numpy_loss_based(losses, strategy, r, mask=mask), rtol=1e-5,
                             atol=1e-6)


def test_strategy_shapes_emphasis():
  losses = jnp.linspace(0.0, 1.0, 5)
  weights = {s: loss_based(s, 0.5).update(losses, loss_based(s, 0.5).init())[0]
             for s in STRATEGIES}
  assert np.argmax(weights["upper"]) == 4
  assert np.argmax(weights["quadratic"]) == 2
  assert weights["extremes"][0] == pytest.approx(weights["extremes"][4])
  assert weights["extremes"][2] < weights["extremes"][0]
  # linupper is flat on the upper half of the range.
  np.testing.assert_allclose(weights["linupper"][2:], weights["linupper"][4], rtol=1e-6)


def test_large_r_is_uniform_and_warmup():
  losses = jnp.array([0.1, 3.0, 7.0, 0.5])
  w, _ = loss_based("linupper", 1e6).update(losses, loss_based("linupper", 1e6).init())
  np.testing.assert_allclose(w, 1.0, atol=1e-5)
  wt = loss_based("upper", 0.1, warmup_steps=10)
  w, s = wt.update(losses, wt.init(), step=9)
  np.testing.assert_array_equal(w, 1.0)
  w, s = wt.update(losses, s, step=10)
  assert w.max() > 2.0
  # Without an explicit step the state's count is used.
  state = wt.init()
  for _ in range(10):
    w, state = wt.update(losses, state)
    np.testing.assert_array_equal(w, 1.0)
  w, state = wt.update(losses, state)
  assert w.max() > 2.0


def test_r_schedule():
  schedule = optax.linear_schedule(100.0, 0.5, 10)
  wt = loss_based("upper", schedule)
  losses = jnp.array([0.0, 1.0, 2.0])
  for step in [0, 5, 10]:
    w, _ = wt.update(losses, wt.init(), step=step)
    np.testing.assert_allclose(w, numpy_loss_based(losses, "upper", float(schedule(step))),
                               rtol=1e-5)
  with pytest.raises(ValueError, match="schedule"):
    reweight.base.resolve(schedule, None, "r")


finite_losses = hnp.arrays(np.float32, st.integers(2, 40),
                           elements=st.floats(-50, 50, width=32))


@settings(max_examples=40, deadline=None)
@given(finite_losses, st.sampled_from(STRATEGIES), st.floats(0.05, 10.0), st.data())
def test_properties(losses, strategy, r, data):
  wt = loss_based(strategy, r)
  mask = data.draw(hnp.arrays(bool, losses.shape))
  w = np.asarray(wt.update(jnp.asarray(losses), wt.init(), mask=jnp.asarray(mask))[0])
  assert np.all(np.isfinite(w)) and np.all(w >= 0)
  assert np.all(w[~mask] == 0)
  np.testing.assert_allclose(w.sum(), mask.sum(), rtol=1e-4, atol=1e-4)
  # Permutation equivariance.
  perm = data.draw(st.permutations(range(len(losses))))
  wp = np.asarray(wt.update(jnp.asarray(losses[perm]), wt.init(),
                            mask=jnp.asarray(mask[perm]))[0])
  np.testing.assert_allclose(wp, w[perm], rtol=1e-5, atol=1e-5)
  # Invariance to adding a constant to all losses. The shifted losses are rounded to float32
  # (about 4e-6 at |loss| <= 70), which the range normalization magnifies when the valid
  # losses span little more than that: the property is checked where the span is 0 or
  # well above the rounding.
  c = data.draw(st.floats(-20, 20))
  wc = np.asarray(wt.update(jnp.asarray(losses + np.float32(c)), wt.init(),
                            mask=jnp.asarray(mask))[0])
  span = float(np.ptp(losses[mask])) if mask.any() else 0.0
  if span == 0.0 or span > 0.1:
    np.testing.assert_allclose(wc, w, rtol=1e-3, atol=1e-3)


def test_nonfinite_losses_get_zero_weight_and_are_counted():
  losses = jnp.array([0.5, jnp.nan, 2.0, jnp.inf, -jnp.inf, 1.0])
  wt = loss_based("extremes", 0.5)
  w, _ = wt.update(losses, wt.init())
  assert np.all(np.isfinite(w))
  np.testing.assert_array_equal(np.asarray(w)[[1, 3, 4]], 0.0)
  np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-6)

  def per_example(params, batch):  # finite per-example gradients, non-finite values
    return batch["l"] + params**2

  loss_fn = reweight.weighted(per_example, reweight.uniform())
  (loss, (_, info)), g = jax.value_and_grad(loss_fn, has_aux=True)(
      jnp.float32(1.0), {"l": losses}, reweight.uniform().init())
  assert np.isfinite(loss) and np.isfinite(g)
  np.testing.assert_allclose(loss, (0.5 + 2.0 + 1.0) / 3 + 1.0, rtol=1e-6)  # w = 1 at r=inf
  assert int(info["num_nonfinite"]) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "lin_upper"}, "'lin_upper' is not one of \\['extremes', 'linupper'"),
    ({"r": -1.0}, "r=-1.0 must be a positive"),
    ({"r": 0.0}, "r=0.0 must be a positive"),
    ({"delta": 0.0}, "delta=0.0"),
    ({"warmup_steps": -3}, "warmup_steps=-3"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    loss_based(**kwargs)


def test_bad_shapes():
  wt = loss_based()
  with pytest.raises(ValueError, match="shape \\[batch\\]"):
    wt.update(jnp.ones((2, 3)), wt.init())
  with pytest.raises(ValueError, match="mask has shape \\(2,\\)"):
    wt.update(jnp.ones(3), wt.init(), mask=jnp.ones(2, bool))


SHARDING_CODE = """
import json, numpy as np, jax, jax.numpy as jnp, reweight
from reweight import testing
rng = np.random.default_rng(0)
losses = rng.exponential(size=64).astype(np.float32)
mask = rng.random(64) > 0.2
res = {}
for s in ["linupper", "quadratic", "extremes", "upper"]:
  make = lambda axis_name=None, s=s: reweight.sample.loss_based(s, r=0.5, axis_name=axis_name)
  out = testing.layouts(make, losses, mask=mask, steps=2)
  res[s] = {m: testing.max_difference(out, "single", m) for m in out}
def per_example(params, batch):
  logits = batch["x"] @ params["w"] + params["b"]
  return reweight.losses.softmax_cross_entropy(logits, batch["y"])
batch = {"x": rng.normal(size=(64, 5)).astype(np.float32),
         "y": rng.integers(0, 3, 64).astype(np.int32), "mask": mask}
params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros(3)}
out = testing.gradient_layouts(
    lambda axis_name=None: reweight.sample.loss_based("linupper", r=0.5, axis_name=axis_name),
    per_example, params, batch)
res["gradients"] = {m: testing.max_difference(out, "single", m) for m in out}
res["devices"] = len(jax.devices())
print(json.dumps(res))
"""


@pytest.mark.multidevice
def test_equal_on_1_device_8_devices_shard_map_and_pmap():
  res = testing.run_with_devices(SHARDING_CODE, num_devices=8)
  assert res.pop("devices") == 8
  testing.assert_layouts_agree(res)


def test_strategy_literal_lists_every_strategy():
  from typing import get_args

  from reweight.sample.loss_based import STRATEGIES, Strategy
  assert set(get_args(Strategy)) == set(STRATEGIES)
