"""EnsLoss against a NumPy re-derivation of the authors' construction, properties, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reweight
from reweight import testing
from reweight.losses.ensloss import binary_margins, ensloss, ensloss_derivatives


def numpy_derivatives(margins, normals, valid, tail=True, lam=0.0):
  """Sorted draws -> ranks of the valid margins (authors' ensLoss.forward, in NumPy)."""
  margins = np.asarray(margins, np.float64)
  r = np.asarray(normals, np.float64)[valid]
  draws = -(np.exp(r) if lam == 0 else np.maximum(1 + lam * r, 0) ** (1 / lam))
  draws = np.maximum(np.sort(draws), -1.0)
  g = np.zeros_like(margins)
  idx = np.flatnonzero(valid)
  order = idx[np.argsort(margins[idx], kind="stable")]
  g[order] = draws
  if tail:
    big = valid & (margins > 1)
    g[big] /= margins[big]
  g[valid] -= 1e-6
  return g


@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_matches_numpy(tail, lam):
  rng = np.random.default_rng(0)
  z = (rng.normal(size=40) * 2).astype(np.float32)
  mask = rng.random(40) > 0.25
  key = jax.random.key(3)
  normals = np.asarray(jax.random.normal(key, (40,), jnp.float32))
  expected = numpy_derivatives(z, normals, mask, tail, lam)
  losses = ensloss(jnp.asarray(z), key, jnp.asarray(mask), superlinear_tail=tail,
                   box_cox_lambda=lam)
  np.testing.assert_allclose(losses, expected * z, rtol=1e-5, atol=1e-7)
  grad = jax.grad(lambda z: ensloss(z, key, jnp.asarray(mask), superlinear_tail=tail,
                                    box_cox_lambda=lam).sum())(jnp.asarray(z))
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      ensloss_derivatives(jnp.asarray(z), key, jnp.asarray(mask), superlinear_tail=tail,
                          box_cox_lambda=lam), expected, rtol=1e-5, atol=1e-7)


def test_binary_margins():
  np.testing.assert_allclose(
      binary_margins(jnp.array([[1.5], [-2.0], [0.5]]), jnp.array([True, False, False])),
      [1.5, 2.0, -0.5])
  with pytest.raises(ValueError, match="binary label 2 is not one of"):
    binary_margins(jnp.zeros(2), jnp.array([0, 2]))
  with pytest.raises(ValueError, match="need labels of shape \\(3,\\)"):
    binary_margins(jnp.zeros(3), jnp.zeros(2, jnp.int32))


def test_bad_arguments():
  with pytest.raises(ValueError, match="margins must have shape \\[batch\\]"):
    ensloss(jnp.zeros((2, 2)), jax.random.key(0))
  with pytest.raises(ValueError, match="mask has shape \\(3,\\)"):
    ensloss(jnp.zeros(2), jax.random.key(0), jnp.ones(3, bool))
  with pytest.raises(ValueError, match="box_cox_lambda=nan must be a finite float"):
    ensloss(jnp.zeros(2), jax.random.key(0), box_cox_lambda=float("nan"))


_grad = jax.jit(jax.grad(lambda z, key, mask: ensloss(z, key, mask).sum()))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([6, 17]), st.integers(0, 2**31 - 1), st.data())
def test_derivatives_are_valid_loss_derivatives(n, seed, data):
  z = data.draw(hnp.arrays(np.float32, n, elements=st.floats(-5, 5, width=32,
                                                            allow_subnormal=False)))
  mask = data.draw(hnp.arrays(bool, n))
  bad = data.draw(hnp.arrays(bool, n))
  z = np.where(bad, np.float32(np.nan), z)
  g = np.asarray(_grad(jnp.asarray(z), jax.random.key(seed), jnp.asarray(mask)))
  valid = mask & np.isfinite(z)
  assert np.all(np.isfinite(g))
  assert np.all(g[~valid] == 0)
  # Calibration: strictly negative, at least -1 (clip), and non-decreasing in the margin
  # (a convex loss).
  gv, zv = g[valid], z[valid]
  assert np.all(gv < 0) and np.all(gv >= -1 - 1e-6)
  order = np.argsort(zv, kind="stable")
  assert np.all(np.diff(gv[order]) >= -1e-7)


def test_training_separates_two_gaussians():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(-1, 1, (64, 2)), rng.normal(1, 1, (64, 2))]).astype(np.float32)
  y = np.repeat([0, 1], 64)

  def per_example(w, batch, key):
    return ensloss(binary_margins(batch["x"] @ w, batch["y"]), key)

  loss_fn = jax.jit(reweight.weighted(per_example, reweight.uniform()))
  w = jnp.zeros(2)
  for step in range(50):
    (_, _), g = jax.value_and_grad(loss_fn, has_aux=True)(
        w, {"x": x, "y": y}, reweight.uniform().init(), key=jax.random.key(step))
    w = w - 0.5 * g
  accuracy = np.mean((x @ np.asarray(w) > 0) == (y == 1))
  assert accuracy > 0.85, accuracy


LOSS_LAYOUTS = '''
import json, numpy as np, jax, jax.numpy as jnp
from reweight import testing


def loss_layouts(make_loss, params, batch):
  return testing.differences(testing.loss_layouts(make_loss, params, batch))
'''

SHARDING_CODE = LOSS_LAYOUTS + """
import reweight
from reweight.base import weighted_mean
from reweight.losses.ensloss import binary_margins, ensloss
rng = np.random.default_rng(0)
B = 64
batch = {"x": rng.normal(size=(B, 3)).astype(np.float32),
         "y": rng.integers(0, 2, B).astype(np.int32), "mask": rng.random(B) > 0.2}
params = {"w": jnp.asarray(rng.normal(size=3), jnp.float32), "b": jnp.float32(0.1)}
# Some margins tie (identical rows), some are above 1 (tail).
batch["x"][5] = batch["x"][40]
batch["y"][5] = batch["y"][40]
res = {}
for tail in (True,):
  def make(axis_name, tail=tail):
    def f(p, b):
      z = binary_margins(b["x"] @ p["w"] + p["b"], b["y"])
      losses = ensloss(z, jax.random.key(7), b["mask"], axis_name=axis_name,
                       superlinear_tail=tail)
      return weighted_mean(losses, jnp.ones_like(losses), b["mask"], axis_name), losses
    return f
  res[f"tail={tail}"] = loss_layouts(make, params, batch)
res["devices"] = len(jax.devices())
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def sharding_results():
  return testing.run_with_devices(SHARDING_CODE, num_devices=8)


@pytest.mark.multidevice
def test_equal_on_1_device_8_devices_shard_map_and_pmap(sharding_results):
  res = dict(sharding_results)
  assert res.pop("devices") == 8
  assert len(res) == 1
  testing.assert_layouts_agree(res)
