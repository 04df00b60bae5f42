"""Multi-sample dropout: NumPy re-derivation from the documented masks, properties, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight import testing
from reweight.losses.multi_sample_dropout import dropout_masks, multi_sample_dropout


def _masks_from_documented_keys(key, num_samples, shape, rate):
  """Sample m, example i keeps entries by bernoulli(fold_in(split(key, M)[m], i), 1 - rate)."""
  keys = jax.random.split(key, num_samples)
  return np.stack([
      np.stack([np.asarray(jax.random.bernoulli(jax.random.fold_in(k, i), 1 - rate, shape[1:]))
                for i in range(shape[0])]) for k in keys])


def numpy_ce_and_grad(h, w, labels):
  logits = h @ w
  logits = logits - logits.max(-1, keepdims=True)
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  ce = -np.log(p[np.arange(len(labels)), labels])
  grad_w = h.T @ (p - np.eye(w.shape[1])[labels])
  return ce, grad_w


@pytest.mark.parametrize("num_samples, rate", [(1, 0.5), (3, 0.75)])
def test_matches_numpy_mean_over_masks(num_samples, rate):
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(4, 5)).astype(np.float32)
  w = rng.normal(size=(5, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 4).astype(np.int32)
  key = jax.random.key(11)
  masks = _masks_from_documented_keys(key, num_samples, feats.shape, rate)
  ces, grads = zip(*[numpy_ce_and_grad(np.where(m, feats / (1 - rate), 0.0).astype(np.float64),
                                       w.astype(np.float64), labels) for m in masks], strict=True)

  def loss(w):
    def head(h):
      logp = jax.nn.log_softmax(h @ w)
      return -jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], 1)[:, 0]
    return multi_sample_dropout(head, jnp.asarray(feats), key, num_samples=num_samples,
                                rate=rate)

  np.testing.assert_allclose(loss(jnp.asarray(w)), np.mean(ces, 0), rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda w: loss(w).sum())(jnp.asarray(w))
  np.testing.assert_allclose(g, np.mean(grads, 0), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(dropout_masks(jax.random.split(key, num_samples)[0],
                                              feats.shape, rate), masks[0])


def test_averages_head_outputs_not_features():
  """With h = 1: identity gives k / (M (1 - r)), square k / (M (1 - r)^2), k kept of M."""
  m, rate = 5, 0.4
  out_id, out_sq = multi_sample_dropout(lambda h: (h, h * h), jnp.ones((16, 7)),
                                        jax.random.key(0), num_samples=m, rate=rate)
  kept = np.asarray(out_id) * m * (1 - rate)
  np.testing.assert_allclose(kept, np.round(kept), atol=1e-4)
  np.testing.assert_allclose(out_sq, np.asarray(out_id) / (1 - rate), rtol=1e-5)
  # Different samples get different masks (some entries kept in some samples, not all),
  # and different examples too.
  assert np.any((kept > 0.5) & (kept < m - 0.5))
  assert not np.all(kept == kept[0])


def test_keep_rate_and_scale():
  rate = 0.3
  out = multi_sample_dropout(lambda h: h, jnp.ones((64, 50)), jax.random.key(1),
                             num_samples=4, rate=rate)
  # E[out] = 1 and the kept fraction is 1 - rate: 12800 Bernoulli draws, 5 standard errors.
  kept_fraction = float(np.mean(out)) * (1 - rate)
  assert abs(kept_fraction - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / 12800)


def test_rate_zero_is_the_plain_head_and_bad_arguments():
  feats = jnp.arange(6.0).reshape(2, 3)
  head = lambda h: jnp.tanh(h).sum(-1)
  np.testing.assert_array_equal(
      multi_sample_dropout(head, feats, jax.random.key(0), rate=0.0), head(feats))
  with pytest.raises(ValueError, match="num_samples=0 must be a positive integer"):
    multi_sample_dropout(head, feats, jax.random.key(0), num_samples=0)
  with pytest.raises(ValueError, match="rate=1.0 must be a float in \\[0, 1\\)"):
    multi_sample_dropout(head, feats, jax.random.key(0), rate=1.0)
  with pytest.raises(ValueError, match="leading batch axis"):
    multi_sample_dropout(head, jnp.float32(1.0), jax.random.key(0))


LOSS_LAYOUTS = '''
import json, numpy as np, jax, jax.numpy as jnp
from reweight import testing


def loss_layouts(make_loss, params, batch):
  return testing.differences(testing.loss_layouts(make_loss, params, batch))
'''

SHARDING_CODE = LOSS_LAYOUTS + """
from reweight.base import weighted_mean
from reweight.losses.multi_sample_dropout import multi_sample_dropout
rng = np.random.default_rng(0)
B = 64
batch = {"x": rng.normal(size=(B, 6)).astype(np.float32),
         "y": rng.integers(0, 3, B).astype(np.int32), "mask": rng.random(B) > 0.2}
params = {"trunk": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
          "head": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}


def make_loss(axis_name):
  def f(p, b):
    features = jnp.tanh(b["x"] @ p["trunk"])

    def head(h):
      logp = jax.nn.log_softmax(h @ p["head"])
      return -jnp.take_along_axis(logp, b["y"][:, None], 1)[:, 0]

    per_example = multi_sample_dropout(head, features, jax.random.key(3), num_samples=4,
                                       rate=0.4, axis_name=axis_name)
    return weighted_mean(per_example, jnp.ones_like(per_example), b["mask"], axis_name), (
        per_example)
  return f


res = {"gradients": loss_layouts(make_loss, params, batch), "devices": len(jax.devices())}
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def sharding_results():
  return testing.run_with_devices(SHARDING_CODE, num_devices=8)


@pytest.mark.multidevice
def test_equal_on_1_device_8_devices_shard_map_and_pmap(sharding_results):
  res = dict(sharding_results)
  assert res.pop("devices") == 8
  testing.assert_layouts_agree({"gradients": res["gradients"]})
