"""SAF: loss and gradient against closed forms, the logit memory against a history, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reweight
from reweight import testing
from reweight.losses.saf import (
    read_memory,
    saf_loss,
    saf_memory,
    saf_memory_writer,
    update_memory,
)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def numpy_saf(logits, labels, past, tau, lam, active, mask):
  """Loss and d loss / d logits: CE + lam tau^2 KL(q || p_tau), q = softmax(past / tau)."""
  n, c = logits.shape
  log_p = _log_softmax(logits)
  log_q = _log_softmax(past / tau)
  log_pt = _log_softmax(logits / tau)
  onehot = np.eye(c)[labels]
  ce = -log_p[np.arange(n), labels]
  kl = np.sum(np.exp(log_q) * (log_q - log_pt), -1)
  loss = np.where(mask, ce + np.where(active, lam * tau**2 * kl, 0.0), 0.0)
  # d CE = p - y;  d tau^2 KL(q || softmax(z / tau)) = tau (softmax(z / tau) - q).
  grad = np.exp(log_p) - onehot + (active * lam * tau)[:, None] * (np.exp(log_pt) - np.exp(log_q))
  return loss, np.where(mask[:, None], grad, 0.0)


@pytest.mark.parametrize("tau, lam", [(5.0, 0.3), (1.0, 0.8), (2.5, 0.0)])
def test_loss_and_gradient_match_numpy(tau, lam):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(13, 4)) * 3).astype(np.float32)
  past = (rng.normal(size=(13, 4)) * 3).astype(np.float32)
  labels = rng.integers(0, 4, 13).astype(np.int32)
  active = rng.random(13) > 0.3
  mask = rng.random(13) > 0.2
  loss, grad = numpy_saf(logits, labels, past, tau, lam, active, mask)

  def f(z, past):
    return saf_loss(z, jnp.asarray(labels), past, tau, lam, jnp.asarray(active),
                    mask=jnp.asarray(mask))

  np.testing.assert_allclose(f(jnp.asarray(logits), jnp.asarray(past)), loss, rtol=2e-5,
                             atol=1e-5)
  g_z, g_past = jax.grad(lambda z, p: f(z, p).sum(), argnums=(0, 1))(
      jnp.asarray(logits), jnp.asarray(past))
  np.testing.assert_allclose(g_z, grad, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(g_past, 0.0)  # the past logits are a fixed target


def test_scalar_active_and_nonfinite_past():
  logits = jnp.array([[1.0, -1.0], [0.0, 2.0]])
  labels = jnp.array([0, 1])
  past = jnp.array([[jnp.nan, 0.0], [3.0, 0.0]])
  off = saf_loss(logits, labels, past, active=False)
  ce, _ = numpy_saf(np.asarray(logits), np.asarray(labels), np.zeros((2, 2)), 5.0, 0.0,
                    np.zeros(2, bool), np.ones(2, bool))
  np.testing.assert_allclose(off, ce, rtol=1e-6)
  on = saf_loss(logits, labels, past, active=True)
  assert np.isfinite(on).all() and on[0] == off[0] and on[1] > off[1]


def test_bad_arguments():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="memory_logits have shape \\(2, 2\\)"):
    saf_loss(z, jnp.array([0, 1]), jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="tau=0.0 must be positive"):
    saf_loss(z, jnp.array([0, 1]), z, tau=0.0)
  with pytest.raises(ValueError, match="labels must be integers"):
    saf_loss(z, jnp.array([0.0, 1.0]), z)
  with pytest.raises(ValueError, match="epochs_ago=0 must be a positive integer"):
    saf_memory(4, 3, epochs_ago=0)
  memory = saf_memory(4, 3)
  with pytest.raises(ValueError, match="example id 4 is out of range: .* ids 0..3"):
    read_memory(memory, jnp.array([0, 4]), 1)
  with pytest.raises(ValueError, match="logits have shape \\(2, 2\\); expected \\(2, 3\\)"):
    update_memory(memory, jnp.array([0, 1]), jnp.zeros((2, 2)), epoch=0)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_memory_returns_logits_from_exactly_E_epochs_ago(epochs_ago, seed):
  """Random epochs over random subsets, against a dict of everything ever written."""
  rng = np.random.default_rng(seed)
  n, c, batch = 12, 3, 4
  memory = saf_memory(n, c, epochs_ago=epochs_ago)
  read = jax.jit(read_memory)
  write = jax.jit(update_memory)
  history = {}
  for epoch in range(7):
    ids = rng.permutation(n)[: rng.integers(1, 3) * batch]  # a random subset this epoch
    for start in range(0, len(ids), batch):
      b = ids[start:start + batch]
      logits = rng.normal(size=(len(b), c)).astype(np.float32)
      mask = rng.random(len(b)) > 0.2
      past, has_past = read(memory, jnp.asarray(b), epoch)
      for i, idx in enumerate(b):
        expected = history.get((int(idx), epoch - epochs_ago))
        assert bool(has_past[i]) == (expected is not None)
        if expected is not None:
          np.testing.assert_array_equal(past[i], expected)
      memory = write(memory, jnp.asarray(b), jnp.asarray(logits), epoch=epoch,
                     mask=jnp.asarray(mask))
      for i, idx in enumerate(b):
        if mask[i]:
          history[(int(idx), epoch)] = logits[i]


def test_training_recipe_with_memory_writer():
  """The module docstring's recipe: memory as weighting state, past logits as loss kwargs."""
  rng = np.random.default_rng(3)
  n, c, batch_size, spe = 16, 3, 8, 2
  x = rng.normal(size=(n, 4)).astype(np.float32)
  y = rng.integers(0, c, n).astype(np.int32)
  writer = saf_memory_writer(n, c, steps_per_epoch=spe)

  def per_example(w, batch, past, active):
    z = batch["x"] @ w
    return saf_loss(z, batch["y"], past, 5.0, 0.3, active), {"logits": z}

  grad_fn = jax.jit(jax.value_and_grad(reweight.weighted(per_example, writer), has_aux=True))
  w, memory, seen = jnp.asarray(rng.normal(size=(4, c)), jnp.float32), writer.init(), {}
  for step in range(3 * spe):
    epoch = step // spe
    if step % spe == 0:
      order = rng.permutation(n)  # each example once per epoch
    ids = order[(step % spe) * batch_size:(step % spe + 1) * batch_size]
    batch = {"x": x[ids], "y": y[ids], "id": jnp.asarray(ids)}
    past, has_past = read_memory(memory, batch["id"], epoch)
    expected_has = np.array([(int(i), epoch - 1) in seen for i in ids])
    np.testing.assert_array_equal(has_past, expected_has)
    (loss, (memory, info)), g = grad_fn(w, batch, memory, step=step, past=past,
                                        active=has_past)
    z = x[ids] @ np.asarray(w, np.float64)
    ref_past = np.stack([seen.get((int(i), epoch - 1), np.zeros(c)) for i in ids])
    ref, _ = numpy_saf(z, y[ids], ref_past, 5.0, 0.3, expected_has, np.ones(len(ids), bool))
    np.testing.assert_allclose(loss, ref.mean(), rtol=1e-4)
    np.testing.assert_array_equal(info["weights"], 1.0)
    for i, row in zip(ids, z, strict=True):
      seen[(int(i), epoch)] = row
    w = w - 0.1 * g
  assert int((memory.written >= 0).sum()) == n
  with pytest.raises(ValueError, match="needs step=, example_ids= and logits="):
    writer.update(jnp.ones(2), writer.init(), step=0)


def test_memory_skips_nonfinite_rows_and_stores_bfloat16():
  memory = saf_memory(3, 2, dtype=jnp.bfloat16)
  memory = update_memory(memory, jnp.array([0, 1]), jnp.array([[1.5, jnp.inf], [0.25, -2.0]]),
                         epoch=0)
  past, has_past = read_memory(memory, jnp.array([0, 1, 2]), 1)
  assert memory.logits.dtype == jnp.bfloat16 and past.dtype == jnp.float32
  np.testing.assert_array_equal(has_past, [False, True, False])
  np.testing.assert_array_equal(past[1], [0.25, -2.0])


SHARDING_CODE = """
import json, numpy as np, jax, jax.numpy as jnp
from reweight import testing
from reweight.losses.saf import read_memory, saf_loss, saf_memory, saf_memory_writer
from reweight.losses.saf import update_memory
rng = np.random.default_rng(0)
B, N, C = 64, 100, 5
ids = rng.permutation(N)[:B].astype(np.int32)
logits = rng.normal(size=(B, C)).astype(np.float32)
mask = rng.random(B) > 0.2
losses = rng.exponential(size=B).astype(np.float32)
# A non-empty `replicated` works around a jax 0.10.2 pmap bug: an empty-pytree argument with
# in_axes=None misaligns the flat in_axes of the arguments around it.
dummy = {"unused_extra": np.zeros(1, np.float32)}


def make(axis_name=None):  # epoch = step; with E = 2, step 2 overwrites what step 0 wrote
  return saf_memory_writer(N, C, steps_per_epoch=1, epochs_ago=2, axis_name=axis_name)


res = {}
out = testing.layouts(make, losses, mask=mask, per_example={"example_ids": ids, "logits": logits},
                      replicated=dummy, steps=3)
res["memory"] = {m: testing.max_difference(out, "single", m) for m in out}
written = out["single"]["state/1"]  # [E, N]: the epoch of each entry
res["check"] = {"filled": int((written >= 0).sum()), "valid": int(mask.sum()),
                "epochs": sorted(set(np.unique(written).tolist()))}

# The weighted SAF loss's gradient (and the memory write) with a filled memory.
memory = update_memory(saf_memory(N, C), jnp.asarray(ids), jnp.asarray(logits) * 3.0, epoch=0)
batch = {"x": rng.normal(size=(B, 4)).astype(np.float32),
         "y": rng.integers(0, C, B).astype(np.int32), "id": ids, "mask": mask}
params = {"w": jnp.asarray(rng.normal(size=(4, C)), jnp.float32)}


def per_example(p, b):
  past, has_past = read_memory(memory, b["id"], 1)
  z = b["x"] @ p["w"]
  return saf_loss(z, b["y"], past, 5.0, 0.3, has_past), {"logits": z}


writer = lambda axis_name=None: saf_memory_writer(N, C, steps_per_epoch=1, axis_name=axis_name)
out = testing.gradient_layouts(writer, per_example, params, batch, replicated_kwargs=dummy)
res["gradients"] = {m: testing.max_difference(out, "single", m) for m in out}
res["devices"] = len(jax.devices())
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def sharding_results():
  return testing.run_with_devices(SHARDING_CODE, num_devices=8)


@pytest.mark.multidevice
def test_memory_and_gradients_equal_in_every_layout(sharding_results):
  res = dict(sharding_results)
  assert res.pop("devices") == 8
  check = res.pop("check")
  # Epochs 0, 1, 2 with a 2-slot ring: slot 0 holds epoch 2 (over epoch 0), slot 1 epoch 1,
  # each with the valid rows of the batch.
  assert check["epochs"] == [-1, 1, 2]
  assert check["filled"] == 2 * check["valid"]
  assert len(res) == 2
  testing.assert_layouts_agree(res)
