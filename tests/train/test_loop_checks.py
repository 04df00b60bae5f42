"""Loud failures and TensorBoard: a non-finite loss or gradient stops the run naming the step
(or, with ``skip_nonfinite``, the step is skipped and counted); ``check_inputs`` catches a
label out of range under jit; the rows go to TensorBoard event files, each step once across a
resume."""

import glob
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reweight
from reweight.data.samplers import epoch_sampler
from reweight.train import loop
from reweight.train import state as state_lib
from reweight.train.step import classification_loss, make_train_step

N, BATCH, SEED = 96, 16, 0


def linear_apply(params, x, *, train=False, key=None):
  del train, key
  return x @ params["w"]


def data(n=N, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(n, 4)).astype(np.float32),
          "label": rng.integers(0, 3, n).astype(np.int32),
          "id": np.arange(n, dtype=np.int32)}


def kwargs(train_ds, **kw):
  return dict(apply_fn=linear_apply, params={"w": jnp.zeros((4, 3))},
              per_example_loss=classification_loss(linear_apply), weighting=reweight.uniform(),
              optimizer=optax.adam(0.1), train_ds=train_ds, test_ds=data(48, 1),
              num_classes=3, batch_size=BATCH, seed=SEED, eval_every=5, progress=False, **kw)


def steps_with_row(row, steps):
  """The (1-based) steps whose batch holds training row ``row``."""
  sampler = epoch_sampler(N, BATCH, SEED)
  return [t + 1 for t in range(steps) if row in sampler.indices(t)]


def test_nan_in_one_input_row_stops_at_its_step():
  train_ds = data()
  train_ds["x"][37, 2] = np.nan
  first = steps_with_row(37, 30)[0]
  with pytest.raises(loop.NonFiniteError, match=rf"non-finite loss \(1 non-finite per-example "
                     rf"loss\) and gradient \(\d+ non-finite entries\) at step {first} of 30 "
                     "during train; .*skip_nonfinite") as err:
    loop.train(steps=30, **kwargs(train_ds))
  assert err.value.step == first and err.value.loss == 1 and err.value.grads > 0


def test_skip_nonfinite_leaves_the_model_and_counts_the_steps(tmp_path):
  train_ds = data()
  train_ds["x"][37, 2] = np.nan
  res = loop.train(steps=30, skip_nonfinite=True, workdir=str(tmp_path), **kwargs(train_ds))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(res.state.trainable))
  bad = steps_with_row(37, 30)
  counted = {r["step"]: r["skipped_steps"] for r in res.history}
  for end, n in counted.items():
    assert n == sum(end - 5 < t <= end for t in bad), (end, n, bad)
  assert sum(counted.values()) == len(bad) > 0
  assert all(np.isfinite(r["train_loss"]) for r in res.history)
  # One step on its own: the update is all or nothing.
  w = reweight.uniform()
  per_example = classification_loss(linear_apply)
  step = jax.jit(make_train_step(per_example, w, optax.adam(0.1), skip_nonfinite=True))
  st = state_lib.create({"w": jnp.ones((4, 3))}, optax.adam(0.1), w, jax.random.PRNGKey(0))
  batch = {k: v[:8] for k, v in train_ds.items()}
  batch["x"] = batch["x"].copy()
  batch["x"][3] = np.inf
  new, m = step(st, batch)
  assert int(m["skipped"]) == 1 and int(m["nonfinite_loss"]) == 1
  assert int(new.step) == 1
  for a, b in zip(jax.tree.leaves((st.trainable, st.opt_state)),
                  jax.tree.leaves((new.trainable, new.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  clean = {k: v[8:16] for k, v in train_ds.items()}
  new, m = step(st, clean)
  assert int(m["skipped"]) == 0 and int(m["nonfinite_grads"]) == 0
  assert not np.array_equal(np.asarray(new.trainable["w"]), np.ones((4, 3)))


def test_check_inputs_names_a_label_out_of_range():
  train_ds = data()
  train_ds["label"][50] = 7
  first = steps_with_row(50, 30)[0]
  with pytest.raises(loop.InputCheckError,
                     match=rf"1 label outside \[0, 3\) in the batch of step {first} of 30"):
    loop.train(steps=30, check_inputs=True, **kwargs(train_ds))
  # Off (the default), the label's loss is NaN under jit: a non-finite loss, less clearly.
  with pytest.raises(loop.NonFiniteError, match=f"at step {first} of 30"):
    loop.train(steps=30, **kwargs(train_ds))
  step = jax.jit(make_train_step(classification_loss(linear_apply), reweight.uniform(),
                                 optax.sgd(0.1), check_inputs=True, num_classes=3))
  st = state_lib.create({"w": jnp.zeros((4, 3))}, optax.sgd(0.1), reweight.uniform(),
                        jax.random.PRNGKey(0))
  bad = {"x": np.zeros((8, 4), np.float32), "label": np.zeros((7,), np.int32)}
  with pytest.raises(ValueError, match=r"batch\['x'\] has shape \(8, 4\)"):
    step(st, bad)


def read_events(logdir):
  """``{tag: [(step, value), ...]}`` of every event file in ``logdir`` (TFRecord framing:
  length, its CRC, the record, its CRC)."""
  from tensorboardX.proto import event_pb2

  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      raw = f.read()
    pos = 0
    while pos < len(raw):
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_tensorboard_holds_the_rows_once_across_a_resume(tmp_path):
  straight = loop.train(steps=20, workdir=str(tmp_path / "a"), **kwargs(data()))
  events = read_events(tmp_path / "a" / "tensorboard")
  for key in ("train_loss", "test_accuracy", "test_loss", "test_balanced_accuracy"):
    assert events[key] == [(r["step"], pytest.approx(r[key], rel=1e-6))
                           for r in straight.history], key
  loop.train(steps=10, workdir=str(tmp_path / "b"), **kwargs(data()))
  resumed = loop.train(steps=20, workdir=str(tmp_path / "b"), **kwargs(data()))
  assert resumed.history == straight.history
  events = read_events(tmp_path / "b" / "tensorboard")
  assert len(glob.glob(str(tmp_path / "b" / "tensorboard" / "events.*"))) == 2
  assert [s for s, _ in events["test_accuracy"]] == [5, 10, 15, 20]
