"""focal_weights, self_paced, ease_curriculum: NumPy re-derivations, properties, sharding."""

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
from reweight.sample.hardness import ease_curriculum, focal_weights, self_paced


def _mean_one(raw, valid):
  raw = np.where(valid, raw, 0.0)
  w = np.zeros_like(raw, dtype=np.float64)
  if raw.sum() > 0:
    w[valid] = raw[valid] / raw.sum() * valid.sum()
  else:
    w[valid] = 1.0
  return w


def numpy_focal(logits, labels, gamma, valid):
  logits = np.asarray(logits, np.float64)
  if logits.ndim == 1:
    p1 = 1.0 / (1.0 + np.exp(-logits))
    pt = np.where(labels == 1, p1, 1.0 - p1)
  else:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    pt = (e / e.sum(-1, keepdims=True))[np.arange(len(labels)), labels]
  return _mean_one((1.0 - pt) ** gamma, valid)


def numpy_self_paced(losses, lam, valid):
  return _mean_one((np.asarray(losses) < lam).astype(np.float64), valid)


def numpy_ease(d, epoch, m, valid):
  d = np.clip(np.asarray(d, np.float64), 0, 1)
  w = d * (1 - epoch / m) + epoch / m if epoch < m else np.ones_like(d)
  return _mean_one(w, valid)


RNG = np.random.default_rng(0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("binary", [False, True])
def test_focal_matches_numpy(gamma, binary):
  n = 29
  logits = RNG.normal(size=(n,) if binary else (n, 5)).astype(np.float32) * 2
  labels = RNG.integers(0, 2 if binary else 5, n).astype(np.int32)
  mask = RNG.random(n) > 0.3
  wt = focal_weights(gamma)
  w, state = wt.update(jnp.asarray(RNG.random(n), jnp.float32), wt.init(),
                       mask=jnp.asarray(mask), logits=jnp.asarray(logits),
                       labels=jnp.asarray(labels))
  np.testing.assert_allclose(w, numpy_focal(logits, labels, gamma, mask), rtol=2e-5, atol=1e-6)
  assert int(state.count) == 1


def test_focal_hard_examples_weigh_more_and_schedule():
  logits = jnp.array([[3.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
  labels = jnp.array([0, 0, 0])
  w, _ = focal_weights(2.0).update(jnp.zeros(3), focal_weights().init(), logits=logits,
                                   labels=labels)
  assert w[0] < w[1] < w[2]
  schedule = optax.linear_schedule(0.0, 4.0, 10)
  wt = focal_weights(schedule)
  for step in (0, 5, 10):
    w, _ = wt.update(jnp.zeros(3), wt.init(), step=step, logits=logits, labels=labels)
    np.testing.assert_allclose(
        w, numpy_focal(np.asarray(logits), np.asarray(labels), float(schedule(step)),
                       np.ones(3, bool)), rtol=1e-5)
  # Without step, the state's count is the step.
  state = wt.init()
  for _ in range(6):
    w, state = wt.update(jnp.zeros(3), state, logits=logits, labels=labels)
  np.testing.assert_allclose(
      w, numpy_focal(np.asarray(logits), np.asarray(labels), float(schedule(5)),
                     np.ones(3, bool)), rtol=1e-5)


def test_focal_needs_logits_and_labels():
  wt = focal_weights()
  msg = ("focal_weights needs logits= and labels= extras; return them in the per-example "
         "loss fn's aux dict")
  with pytest.raises(ValueError, match=msg):
    wt.update(jnp.zeros(3), wt.init())
  with pytest.raises(ValueError, match=msg):
    wt.update(jnp.zeros(3), wt.init(), logits=jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="label 7 is out of range"):
    wt.update(jnp.zeros(2), wt.init(), logits=jnp.zeros((2, 3)), labels=jnp.array([0, 7]))
  with pytest.raises(ValueError, match="do not match losses"):
    wt.update(jnp.zeros(2), wt.init(), logits=jnp.zeros((3, 3)), labels=jnp.array([0, 1, 2]))
  with pytest.raises(ValueError, match="binary label 2"):
    wt.update(jnp.zeros(2), wt.init(), logits=jnp.zeros(2), labels=jnp.array([0, 2]))
  with pytest.raises(ValueError, match="gamma=-1.0 must be a non-negative"):
    focal_weights(-1.0)


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.5])
def test_self_paced_matches_numpy(lam):
  losses = RNG.exponential(size=31).astype(np.float32)
  mask = RNG.random(31) > 0.2
  wt = self_paced(lam)
  w, _ = wt.update(jnp.asarray(losses), wt.init(), mask=jnp.asarray(mask))
  np.testing.assert_allclose(w, numpy_self_paced(losses, lam, mask), rtol=1e-6)


def test_self_paced_schedule_and_uniform_fallback():
  losses = jnp.array([0.1, 0.4, 0.9, 2.0])
  wt = self_paced(optax.linear_schedule(0.2, 1.0, 4))
  w, state = wt.update(losses, wt.init())  # count 0 -> lambda 0.2: only the first
  np.testing.assert_allclose(w, [4.0, 0.0, 0.0, 0.0])
  w, state = wt.update(losses, state)  # count 1 -> lambda 0.4 (0.4 itself is not below)
  np.testing.assert_allclose(w, [4.0, 0.0, 0.0, 0.0])
  for _ in range(3):
    w, state = wt.update(losses, state)
  np.testing.assert_allclose(w, [4 / 3, 4 / 3, 4 / 3, 0.0], rtol=1e-6)  # count 4 -> 1.0
  # Nothing below the threshold: uniform over the valid examples.
  w, _ = self_paced(0.01).update(losses, wt.init(), mask=jnp.array([1, 1, 0, 1], bool))
  np.testing.assert_array_equal(w, [1.0, 1.0, 0.0, 1.0])
  with pytest.raises(ValueError, match="threshold='a'"):
    self_paced("a")


@pytest.mark.parametrize("anti", [False, True])
def test_ease_matches_numpy_over_epochs(anti):
  n, m, spe = 23, 4, 3
  d = RNG.random(n).astype(np.float32)
  mask = RNG.random(n) > 0.2
  wt = ease_curriculum(steps_per_epoch=spe, m=m, anti=anti)
  for step in range(0, spe * (m + 2)):
    w, _ = wt.update(jnp.zeros(n), wt.init(), step=step, mask=jnp.asarray(mask),
                     easiness=jnp.asarray(d))
    np.testing.assert_allclose(w, numpy_ease(1 - d if anti else d, step // spe, m, mask),
                               rtol=2e-6, atol=1e-6)
  np.testing.assert_array_equal(w, mask.astype(np.float32))  # uniform from epoch m on


def test_ease_table_lookup_key_and_count():
  table = np.linspace(0.0, 1.0, 11).astype(np.float32)
  ids = np.array([10, 0, 5, 5, 2])
  wt = ease_curriculum(steps_per_epoch=2, m=3, easiness_table=table)
  state = wt.init()
  for _ in range(3):  # steps 0, 1, 2 -> epoch 1 on the third call
    w, state = wt.update(jnp.zeros(5), state, example_ids=jnp.asarray(ids))
  np.testing.assert_allclose(w, numpy_ease(table[ids], 1, 3, np.ones(5, bool)), rtol=1e-6)
  wk = ease_curriculum(steps_per_epoch=1, m=2, easiness_key="ease")
  d = np.array([0.2, 1.5, -1.0])  # clipped to [0, 1]
  w, _ = wk.update(jnp.zeros(3), wk.init(), step=0, ease=jnp.asarray(d))
  np.testing.assert_allclose(w, numpy_ease(d, 0, 2, np.ones(3, bool)), rtol=1e-6)


@pytest.mark.parametrize("kwargs, update_kw, match", [
    ({"steps_per_epoch": 0}, None, "steps_per_epoch=0 must be a positive integer"),
    ({"steps_per_epoch": 1, "m": 0}, None, "m=0 must be positive"),
    ({"steps_per_epoch": 1, "easiness_table": [0.5, 1.2]}, None, "in \\[0, 1\\]"),
    ({"steps_per_epoch": 1, "easiness_table": [[0.5]]}, None, "shape \\[num_examples\\]"),
    ({"steps_per_epoch": 1, "easiness_table": [0.5, 0.2]}, {}, "needs the example_ids="),
    ({"steps_per_epoch": 1}, {}, "needs the easiness= extra"),
    ({"steps_per_epoch": 1}, {"easiness": jnp.ones(2)}, "easiness has shape \\(2,\\)"),
])
def test_ease_bad_arguments(kwargs, update_kw, match):
  with pytest.raises(ValueError, match=match):
    wt = ease_curriculum(**kwargs)
    wt.update(jnp.zeros(3), wt.init(), **update_kw)


def _make(name, **kw):
  if name == "focal":
    return focal_weights(2.0, **kw)
  if name == "self_paced":
    return self_paced(1.0, **kw)
  return ease_curriculum(steps_per_epoch=1, m=3, **kw)


_JITTED = {name: jax.jit(_make(name).update) for name in ("focal", "self_paced", "ease")}


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([5, 16]), st.sampled_from(sorted(_JITTED)), st.data())
def test_properties(n, name, data):
  losses = data.draw(hnp.arrays(np.float32, n, elements=st.floats(-20, 20, width=32)))
  mask = data.draw(hnp.arrays(bool, n))
  bad = data.draw(hnp.arrays(bool, n))
  losses = np.where(bad, data.draw(st.sampled_from([np.nan, np.inf, -np.inf])), losses)
  logits = data.draw(hnp.arrays(np.float32, (n, 3), elements=st.floats(-30, 30, width=32)))
  labels = data.draw(hnp.arrays(np.int32, n, elements=st.integers(0, 2)))
  easiness = data.draw(hnp.arrays(np.float32, n, elements=st.floats(0, 1, width=32)))
  step = data.draw(st.integers(0, 5))
  w, _ = _JITTED[name](jnp.asarray(losses, jnp.float32), _make(name).init(),
                       mask=jnp.asarray(mask), step=step, logits=jnp.asarray(logits),
                       labels=jnp.asarray(labels), easiness=jnp.asarray(easiness))
  w = np.asarray(w)
  valid = mask & np.isfinite(losses)
  assert np.all(np.isfinite(w)) and np.all(w >= 0)
  assert np.all(w[~valid] == 0)
  np.testing.assert_allclose(w.sum(), valid.sum(), rtol=1e-5, atol=1e-5)


def test_weighted_loss_and_gradient_match_numpy():
  x = RNG.normal(size=(12, 4)).astype(np.float32)
  y = RNG.integers(0, 3, 12).astype(np.int32)
  params = RNG.normal(size=(4, 3)).astype(np.float32)

  def per_example(params, batch):
    logits = batch["x"] @ params
    return reweight.losses.softmax_cross_entropy(logits, batch["y"]), {
        "logits": logits, "labels": batch["y"]}

  loss_fn = reweight.weighted(per_example, focal_weights(2.0))
  (loss, (_, info)), g = jax.value_and_grad(loss_fn, has_aux=True)(
      jnp.asarray(params), {"x": jnp.asarray(x), "y": jnp.asarray(y)}, focal_weights().init())
  logits = x.astype(np.float64) @ params
  w = numpy_focal(logits, y, 2.0, np.ones(12, bool))
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ce = -np.log(p[np.arange(12), y])
  np.testing.assert_allclose(loss, np.mean(w * ce), rtol=1e-5)
  onehot = np.eye(3)[y]
  np.testing.assert_allclose(g, x.T @ ((p - onehot) * w[:, None]) / 12, rtol=1e-4, atol=1e-6)


SHARDING_CODE = """
import json, numpy as np, jax, jax.numpy as jnp, reweight
from reweight import testing
from reweight.sample.hardness import ease_curriculum, focal_weights, self_paced
rng = np.random.default_rng(1)
B, N = 64, 100
losses = rng.exponential(size=B).astype(np.float32)
mask = rng.random(B) > 0.2
logits = rng.normal(size=(B, 4)).astype(np.float32)
labels = rng.integers(0, 4, B).astype(np.int32)
ids = rng.permutation(N)[:B].astype(np.int32)
table = rng.random(N).astype(np.float32)
easiness = rng.random(B).astype(np.float32)
makers = {
  "focal": (lambda axis_name=None: focal_weights(2.0, axis_name=axis_name),
            {"logits": logits, "labels": labels}),
  "self_paced": (lambda axis_name=None: self_paced(1.2, axis_name=axis_name), {}),
  "ease_extra": (lambda axis_name=None: ease_curriculum(steps_per_epoch=1, m=3,
                 axis_name=axis_name), {"easiness": easiness}),
  "ease_table": (lambda axis_name=None: ease_curriculum(steps_per_epoch=1, m=3,
                 easiness_table=table, axis_name=axis_name), {"example_ids": ids}),
}
# A non-empty `replicated` works around a jax 0.10.2 pmap bug: an empty-pytree argument with
# in_axes=None misaligns the flat in_axes of the arguments around it.
dummy = {"unused_extra": np.zeros(1, np.float32)}
res = {}
for name, (make, per_example) in makers.items():
  if name == "ease_extra":  # same weights as ease_table; covered by the gradient run below
    continue
  out = testing.layouts(make, losses, mask=mask, per_example=per_example, replicated=dummy,
                        steps=2)
  res[name] = {m: testing.max_difference(out, "single", m) for m in out}
def per_example(params, batch):
  logits = batch["x"] @ params["w"] + params["b"]
  return reweight.losses.softmax_cross_entropy(logits, batch["y"]), {
      "logits": logits, "labels": batch["y"], "easiness": batch["e"]}
batch = {"x": rng.normal(size=(B, 5)).astype(np.float32), "y": labels, "mask": mask,
         "id": ids, "e": easiness}
params = {"w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32), "b": jnp.zeros(4)}
# One gradient run for all weightings at once: their product (each with its axis_name).
def make_chain(axis_name=None):
  return reweight.chain(*(make(axis_name=axis_name) for make, _ in makers.values()),
                        axis_name=axis_name)
out = testing.gradient_layouts(make_chain, per_example, params, batch, replicated_kwargs=dummy)
res["gradients"] = {m: testing.max_difference(out, "single", m) for m in out}
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
  assert len(res) == 4
  testing.assert_layouts_agree(res)
