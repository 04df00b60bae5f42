"""Token weighting: `weighted_tokens`, `per_sequence`, `sample.token_probability` and
`token_losses.anchored_token_probability`, against NumPy re-derivations and across layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reweight
from reweight import testing
from tests.token_batches import bigram_setup, np_per_token_ce, per_token_ce


@pytest.fixture
def setup():
  return bigram_setup()


def test_weighted_tokens_token_probability_matches_numpy(setup):
  params, batch = setup
  power = 2.0  # power 1 (DFT) is checked below
  w = reweight.sample.token_probability(power)
  fn = jax.jit(reweight.weighted_tokens(per_token_ce, w))
  (loss, (state, info)), grads = jax.value_and_grad(fn, has_aux=True)(params, batch, w.init())
  ce, m = np_per_token_ce(params, batch), batch["token_mask"]
  n = m.sum()
  u = np.where(m, np.exp(-power * ce), 0.0)
  w_np = n * u / u.sum()
  np.testing.assert_allclose(info["weights"], w_np, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss, (w_np * np.where(m, ce, 0)).sum() / n, rtol=1e-5)
  np.testing.assert_allclose(info["loss"], ce[m].mean(), rtol=1e-5)
  assert int(info["num_valid"]) == n and int(state.count) == 1
  # The gradient is that of sum(w l) / N with the NumPy weights held constant.
  ref = jax.grad(lambda p: jnp.sum(jnp.asarray(w_np, jnp.float32) * jnp.where(
      m, per_token_ce(p, batch), 0.0)) / n)(params)
  np.testing.assert_allclose(grads, ref, rtol=1e-4, atol=1e-6)


def test_power_zero_is_plain_token_mean_and_naive_mean_of_means_differs(setup):
  params, batch = setup
  ce, m = np_per_token_ce(params, batch), batch["token_mask"]
  for w in (reweight.uniform(), reweight.sample.token_probability(0.0),
            reweight.per_sequence(reweight.uniform())):
    loss = reweight.weighted_tokens(per_token_ce, w)(params, batch, w.init())[0]
    np.testing.assert_allclose(loss, ce[m].mean(), rtol=1e-5)
  seq_means = np.array([ce[i][m[i]].mean() for i in range(len(ce))])
  naive = seq_means.mean()  # the mean of per-sequence means: the bug
  assert abs(naive - ce[m].mean()) > 0.05
  # ... which is what per-example `weighted` on sequence means computes.
  naive_fn = reweight.weighted(
      lambda p, b: reweight.losses.sequence_mean(per_token_ce(p, b), b["token_mask"]),
      reweight.uniform())
  np.testing.assert_allclose(naive_fn(params, batch, ())[0], naive, rtol=1e-5)


def _np_loss_based_upper(losses, r, delta=1.0):
  lmax, lmin = losses.max(), losses.min()
  span = max(lmax - lmin, 1e-6)
  h = 2 * delta * losses / span - delta * (lmax + lmin) / span
  f = 0.5 * h + 0.5 * delta
  e = np.exp((f - f.max()) / r)
  return len(losses) * e / e.sum()


def test_per_sequence_matches_numpy(setup):
  params, batch = setup
  batch = dict(batch)
  batch["token_mask"] = batch["token_mask"].copy()
  batch["token_mask"][2] = False  # a sequence without valid tokens gets no weight
  w = reweight.per_sequence(reweight.sample.loss_based("upper", r=0.5))
  fn = reweight.weighted_tokens(per_token_ce, w)
  loss, (_, info) = fn(params, batch, w.init())
  ce, m = np_per_token_ce(params, batch), batch["token_mask"]
  rows = [i for i in range(len(ce)) if m[i].any()]
  u = np.zeros(len(ce))
  u[rows] = _np_loss_based_upper(np.array([ce[i][m[i]].mean() for i in rows]), 0.5)
  raw = np.where(m, u[:, None], 0.0)
  w_np = m.sum() * raw / raw.sum()
  np.testing.assert_allclose(info["weights"], w_np, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss, (w_np * np.where(m, ce, 0)).sum() / m.sum(), rtol=1e-5)


def test_masks_from_aux_and_sequence_mask(setup):
  params, batch = setup
  m = batch["token_mask"]
  no_mask = {k: v for k, v in batch.items() if k != "token_mask"}
  ce = np_per_token_ce(params, batch)

  def with_aux(p, b):
    return per_token_ce(p, b), {"token_mask": m}

  w = reweight.uniform()
  loss = reweight.weighted_tokens(with_aux, w)(params, no_mask, w.init())[0]
  np.testing.assert_allclose(loss, ce[m].mean(), rtol=1e-5)
  loss = reweight.weighted_tokens(per_token_ce, w)(params, no_mask, w.init())[0]
  np.testing.assert_allclose(loss, ce.mean(), rtol=1e-5)
  seq = np.array([True, False, True, True])
  loss, (_, info) = reweight.weighted_tokens(per_token_ce, w)(
      params, {**batch, "mask": seq}, w.init())
  np.testing.assert_allclose(loss, ce[m & seq[:, None]].mean(), rtol=1e-5)
  assert not np.asarray(info["weights"])[1].any()


def test_nonfinite_tokens_get_zero_weight(setup):
  params, batch = setup

  def nan_first(p, b):
    l = per_token_ce(p, b)
    return l.at[1, 0].set(jnp.nan)

  w = reweight.sample.token_probability()
  fn = reweight.weighted_tokens(nan_first, w)
  (loss, (_, info)), g = jax.value_and_grad(fn, has_aux=True)(params, batch, w.init())
  assert np.isfinite(loss) and np.isfinite(np.asarray(g)).all()
  assert float(info["weights"][1, 0]) == 0.0 and int(info["num_nonfinite"]) == 1


def test_bad_shapes(setup):
  params, batch = setup
  w = reweight.uniform()
  with pytest.raises(ValueError, match=r"shape \[batch, tokens\]"):
    reweight.weighted_tokens(lambda p, b: per_token_ce(p, b)[:, 0], w)(params, batch, ())
  with pytest.raises(ValueError, match="token_mask has shape"):
    reweight.weighted_tokens(per_token_ce, w)(
        params, {**batch, "token_mask": batch["token_mask"][:, :3]}, ())
  with pytest.raises(ValueError, match="sequence_ids"):
    reweight.per_sequence(w).update(jnp.ones(3), ())
  with pytest.raises(ValueError, match="power"):
    reweight.sample.token_probability(-1.0)


LAYOUT_CODE = """
import json, numpy as np, jax, jax.numpy as jnp, reweight
from reweight import testing
V = 7
rng = np.random.default_rng(0)
B, T = 16, 32
# Very different lengths; device k gets rows 2k, 2k+1, so shards hold 2 to 64 tokens.
lengths = np.array([1, 1, 32, 30, 2, 3, 32, 32, 5, 1, 17, 2, 1, 1, 28, 31])
params = jnp.asarray(2.0 * rng.normal(size=(V, V)), jnp.float32)
inputs = rng.integers(0, V, (B, T)).astype(np.int32)
# Long sequences have easy targets, short ones hard ones: a mean of means is far off.
logits = np.asarray(params)[inputs]
targets = np.where(lengths[:, None] >= 16, logits.argmax(-1), logits.argmin(-1))
batch = {"inputs": inputs, "targets": targets.astype(np.int32),
         "token_mask": np.arange(T)[None, :] < lengths[:, None]}

def per_token_ce(p, b):
  logp = jax.nn.log_softmax(p[b["inputs"]])
  return -jnp.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]

def maker(make_weighting):
  def make_loss(axis_name):
    w = make_weighting()
    fn = reweight.weighted_tokens(per_token_ce, w, axis_name=axis_name)
    def f(p, b):
      loss, (_, info) = fn(p, b, w.init())
      return loss, info["weights"]
    return f
  return make_loss

res = {}
for name, make in [
    ("uniform", reweight.uniform),
    ("token_probability", lambda: reweight.sample.token_probability(1.0)),
    ("per_sequence", lambda: reweight.per_sequence(
        reweight.sample.loss_based("upper", r=0.5)))]:
  out = testing.loss_layouts(maker(make), params, batch,
                             modes=("single", "jit_sharded", "shard_map"))
  res[name] = {m: testing.max_difference(out, "single", m) for m in out}
  if name == "uniform":
    res["uniform_loss"] = float(out["single"]["loss"])
    res["shard_map_loss"] = float(out["shard_map"]["loss"])

# The naive per-device mean of token means, for comparison.
ce = np.asarray(per_token_ce(params, batch))
m = batch["token_mask"]
dev = [ce[2 * k:2 * k + 2][m[2 * k:2 * k + 2]].mean() for k in range(8)]
res["token_mean"] = float(ce[m].mean())
res["per_device_mean_of_means"] = float(np.mean(dev))
res["devices"] = len(jax.devices())
print(json.dumps(res))
"""


@pytest.mark.multidevice
def test_equal_on_1_device_8_devices_jit_and_shard_map():
  res = testing.run_with_devices(LAYOUT_CODE, num_devices=8)
  assert res.pop("devices") == 8
  token_mean = res.pop("token_mean")
  naive = res.pop("per_device_mean_of_means")
  np.testing.assert_allclose(res.pop("uniform_loss"), token_mean, rtol=1e-5)
  np.testing.assert_allclose(res.pop("shard_map_loss"), token_mean, rtol=1e-5)
  assert abs(naive - token_mean) > 0.5  # the per-device mean of means differs
  for name, diffs in res.items():
    assert set(diffs) == {"single", "jit_sharded", "shard_map"}, (name, diffs)
    for mode, d in diffs.items():
      assert d <= 1e-5, (name, mode, d)
