"""The train step: weighted gradients against NumPy, and microbatching keeps global weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reweight
from reweight import testing
from reweight.train import state as state_lib
from reweight.train.step import classification_loss, make_eval_step, make_train_step


def linear_apply(params, x, *, train=False, key=None):
  del train, key
  return x @ params["w"] + params["b"]


def make_batch(n=32, d=6, c=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(n, d)).astype(np.float32),
          "label": rng.integers(0, c, n).astype(np.int32),
          "mask": rng.random(n) > 0.2,
          "id": np.arange(n, dtype=np.int32)}


def init_params(d=6, c=4, seed=1):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(d, c)), jnp.float32), "b": jnp.zeros(c)}


def test_sgd_step_matches_numpy():
  batch, params = make_batch(), init_params()
  weighting = reweight.sample.loss_based("upper", 0.5)
  lr = 0.1
  step = jax.jit(make_train_step(classification_loss(linear_apply), weighting, optax.sgd(lr)))
  st = state_lib.create(params, optax.sgd(lr), weighting, jax.random.PRNGKey(0))
  new, metrics = step(st, batch)
  x, y, m = batch["x"].astype(np.float64), batch["label"], batch["mask"]
  z = x @ np.asarray(params["w"], np.float64)
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  l = -np.log(p[np.arange(len(y)), y])
  lv = l[m]
  span = lv.max() - lv.min()
  f = 0.5 * (2 * l / span - (lv.max() + lv.min()) / span) + 0.5
  e = np.where(m, np.exp((f - f[m].max()) / 0.5), 0)
  w = e / e.sum() * m.sum()
  dz = (p - np.eye(4)[y]) * (w / m.sum())[:, None]
  np.testing.assert_allclose(new.trainable["w"], params["w"] - lr * (x.T @ dz), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(new.trainable["b"], -lr * dz.sum(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["weights"], w, rtol=1e-5, atol=1e-6)
  assert int(new.step) == 1 and int(new.weighting_state.count) == 1


@pytest.mark.parametrize("microbatches", [2, 4])
def test_microbatched_step_equals_full_batch(microbatches):
  batch, params = make_batch(), init_params()
  weighting = reweight.sample.loss_based("extremes", 0.4)
  opt = optax.adam(1e-2)
  per_example = classification_loss(linear_apply)
  full = jax.jit(make_train_step(per_example, weighting, opt))
  micro = jax.jit(make_train_step(per_example, weighting, opt, microbatches=microbatches))
  s_full = s_micro = state_lib.create(params, opt, weighting, jax.random.PRNGKey(0))
  for _ in range(3):
    s_full, m_full = full(s_full, batch)
    s_micro, m_micro = micro(s_micro, batch)
    np.testing.assert_allclose(m_micro["weights"], m_full["weights"], atol=1e-6)
    np.testing.assert_allclose(m_micro["loss"], m_full["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(s_micro), jax.tree.leaves(s_full)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="microbatches=0"):
    make_train_step(per_example, weighting, opt, microbatches=0)


def test_eval_step_counts():
  batch, params = make_batch(), init_params()
  ev = make_eval_step(linear_apply, 4)
  st = state_lib.create(params, optax.sgd(0.1), reweight.uniform(), jax.random.PRNGKey(0))
  out = ev(st, batch)
  pred = np.argmax(batch["x"] @ np.asarray(params["w"]), 1)
  ok = (pred == batch["label"]) & batch["mask"]
  assert int(out["correct"]) == ok.sum() and int(out["count"]) == batch["mask"].sum()
  for c in range(4):
    sel = (batch["label"] == c) & batch["mask"]
    assert int(out["class_count"][c]) == sel.sum()
    assert int(out["class_correct"][c]) == (ok & sel).sum()


SHARDED_STEP = """
import json, numpy as np, jax, optax, reweight
from reweight import parallel
from reweight.train import state as state_lib
from reweight.train.step import classification_loss, make_train_step
rng = np.random.default_rng(0)
batch = {"x": rng.normal(size=(64, 6)).astype(np.float32),
         "label": rng.integers(0, 4, 64).astype(np.int32), "mask": rng.random(64) > 0.2}
params = {"w": rng.normal(size=(6, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
apply = lambda p, x, train=False, key=None: x @ p["w"] + p["b"]
w = reweight.sample.loss_based("linupper", 0.5)
opt = optax.adam(1e-2)
outs = {}
for name, n, micro in [("one", 1, 1), ("eight", 8, 1), ("eight_micro", 8, 4)]:
  mesh = parallel.make_mesh(n)
  step = jax.jit(make_train_step(classification_loss(apply), w, opt, microbatches=micro))
  st = parallel.replicate(state_lib.create(params, opt, w, jax.random.PRNGKey(0)), mesh)
  for _ in range(3):
    st, m = step(st, parallel.shard_batch(batch, mesh))
  outs[name] = [np.asarray(x).tolist() for x in jax.tree.leaves((st.trainable, m["weights"]))]
def diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))
print(json.dumps({"eight": diff(outs["one"], outs["eight"]),
                  "eight_micro": diff(outs["one"], outs["eight_micro"])}))
"""


@pytest.mark.multidevice
def test_sharded_and_microbatched_steps_equal_single_device():
  res = testing.run_with_devices(SHARDED_STEP, 8)
  assert res["eight"] <= 1e-6 and res["eight_micro"] <= 1e-6, res
