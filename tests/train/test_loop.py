"""The loop on real data: resume from a checkpoint (periodic, or saved on SIGTERM) continues
the same trajectory; each step compiles once per run."""

import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import reweight
from reweight.data import corruptions, datasets
from reweight.train import experiment, loop
from reweight.train.models import functional, make_model
from reweight.train.step import classification_loss, make_train_step


def setup(seed=0):
  train = corruptions.label_noise(datasets.load("digits", "train"), "symmetric", 0.4, 10, seed)
  test = datasets.load("digits", "test")
  fn = functional(make_model("mlp", seed=seed, in_features=64, hidden=(32,), num_classes=10))
  return dict(apply_fn=fn.apply, params=fn.params,
              per_example_loss=classification_loss(fn.apply),
              weighting=reweight.sample.loss_based("linupper", 0.5, warmup_steps=5),
              optimizer=optax.adam(1e-2), train_ds=train, test_ds=test, num_classes=10,
              batch_size=64, seed=seed, eval_every=10, progress=False,
              metrics_hook=experiment.NOISY_LABELS)


def test_resume_continues_the_same_trajectory(tmp_path):
  straight = loop.train(steps=40, workdir=str(tmp_path / "a"), **setup())
  first = loop.train(steps=20, workdir=str(tmp_path / "b"), **setup())
  assert int(first.state.step) == 20
  resumed = loop.train(steps=40, workdir=str(tmp_path / "b"), **setup())
  assert int(resumed.state.step) == 40
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r["step"] for r in resumed.history] == [10, 20, 30, 40]
  for ra, rb in zip(straight.history, resumed.history):
    assert ra["test_accuracy"] == rb["test_accuracy"]
  # Last-epoch weights for the histograms: one weight per example seen, noisy flags kept.
  fw = resumed.final_weights
  assert fw["weights"].shape == fw["is_noisy"].shape and len(fw["weights"]) > 0


def test_learns_and_tracks_noisy_weight_share():
  s = setup()
  res = loop.train(steps=60, **s)
  # The caller's params are not donated away (the step donates its own copy).
  assert np.isfinite(np.asarray(jax.tree.leaves(s["params"])[0]).sum())
  hist = res.history
  assert hist[-1]["test_accuracy"] > 0.8  # digits with 40% noise, 60 steps of Adam
  assert all(0.0 <= r["noisy_weight_share"] <= 1.0 for r in hist)
  # Uniform over the first steps (warm-up): the noisy share is the batch's noisy fraction.
  w = res.final_weights["weights"]
  share = np.sum(w * res.final_weights["is_noisy"]) / np.sum(w)
  assert 0.0 < share < 1.0


def test_evaluate_matches_numpy():
  s = setup()
  res = loop.train(steps=10, **s)
  from reweight import parallel
  from reweight.train.step import make_eval_step
  test = s["test_ds"]
  out = loop.evaluate(jax.jit(make_eval_step(s["apply_fn"], 10)), res.state, test, 100,
                      parallel.make_mesh())
  logits = np.asarray(s["apply_fn"](res.state.trainable, test["x"]))
  pred = logits.argmax(1)
  acc = np.mean(pred == test["label"])
  bal = np.mean([np.mean(pred[test["label"] == c] == c) for c in range(10)])
  np.testing.assert_allclose(out["accuracy"], acc, rtol=1e-6)
  np.testing.assert_allclose(out["balanced_accuracy"], bal, rtol=1e-6)


def test_train_and_eval_steps_compile_once_per_run(tmp_path, count_compiles):
  with count_compiles() as counts:
    loop.train(steps=25, workdir=str(tmp_path), checkpoint_every=10, **setup())
  assert counts["full_batch_step"] == 1 and counts["eval_step"] == 1, counts
  with count_compiles() as counts:  # resumed from the checkpoint at step 20: still once
    loop.train(steps=45, workdir=str(tmp_path), checkpoint_every=10, **setup())
  assert counts["full_batch_step"] == 1 and counts["eval_step"] == 1, counts


def sigterm_at_call(step_fn, n):
  """``step_fn`` that sends this process SIGTERM during its ``n``-th call."""
  calls = []

  def wrapped(*args, **kwargs):
    calls.append(1)
    if len(calls) == n:
      os.kill(os.getpid(), signal.SIGTERM)
    return step_fn(*args, **kwargs)

  return wrapped


def test_sigterm_saves_the_step_in_progress_and_resumes_exactly(tmp_path):
  s = setup()
  straight = loop.train(steps=40, workdir=str(tmp_path / "a"), checkpoint_every=10, **s)
  s = setup()
  step = jax.jit(make_train_step(s["per_example_loss"], s["weighting"], s["optimizer"]),
                 donate_argnums=0)
  previous = signal.getsignal(signal.SIGTERM)
  # SIGTERM during step 17 (mid-interval) and during step 36 (in the last epoch, whose weights
  # the run keeps for the histograms): each time the step finishes, is saved, and it stops.
  with pytest.raises(loop.Preempted, match="at step 17 of 40") as err:
    with loop.Preemption() as p:
      loop.train(steps=40, workdir=str(tmp_path / "b"), checkpoint_every=10, preemption=p,
                 train_step=sigterm_at_call(step, 17), **s)
  assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
  assert err.value.step == 17
  ckpts = sorted(int(d) for d in os.listdir(tmp_path / "b" / "checkpoints") if d.isdigit())
  assert ckpts == [10, 17]
  with pytest.raises(loop.Preempted, match="at step 36 of 40"):
    with loop.Preemption() as p:
      loop.train(steps=40, workdir=str(tmp_path / "b"), checkpoint_every=10, preemption=p,
                 train_step=sigterm_at_call(step, 36 - 17), **s)
  with loop.Preemption() as p:
    resumed = loop.train(steps=40, workdir=str(tmp_path / "b"), checkpoint_every=10,
                         preemption=p, **s)
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed.history == straight.history  # train loss sums carried across the stops
  assert sorted(resumed.final_weights) == sorted(straight.final_weights)
  for k, v in straight.final_weights.items():
    np.testing.assert_array_equal(resumed.final_weights[k], v)
    assert resumed.final_weights[k].dtype == v.dtype


def test_preemption_on_the_last_step_then_nothing_left_to_run(tmp_path):
  s = setup()
  straight = loop.train(steps=20, **s)
  s = setup()
  step = jax.jit(make_train_step(s["per_example_loss"], s["weighting"], s["optimizer"]),
                 donate_argnums=0)
  with pytest.raises(loop.Preempted, match="at step 20 of 20"):
    with loop.Preemption() as p:
      loop.train(steps=20, workdir=str(tmp_path), preemption=p,
                 train_step=sigterm_at_call(step, 20), **s)
  done = loop.train(steps=20, workdir=str(tmp_path), **s)  # restores, no step to take
  assert done.history == straight.history
  for k, v in straight.final_weights.items():
    np.testing.assert_array_equal(done.final_weights[k], v)


DISTRIBUTED_SCRIPT = """
import os, signal, socket, sys, time
import jax
s = socket.socket(); s.bind(("localhost", 0)); port = s.getsockname()[1]; s.close()
jax.distributed.initialize(f"localhost:{port}", num_processes=1, process_id=0)
sys.path.insert(0, os.path.join(ROOT, "tests", "train"))
from test_loop import setup, sigterm_at_call
from reweight.train import experiment, loop
from reweight.train.step import make_train_step

s = setup()
step = jax.jit(make_train_step(s["per_example_loss"], s["weighting"], s["optimizer"]))
calls = []
def slow(*args, **kwargs):  # JAX's notice takes a while (about 1 s) to become a sync point
  calls.append(1)
  if len(calls) > 5:
    time.sleep(0.1)
  return step(*args, **kwargs)
with loop.Preemption() as p:
  assert p._mode == "jax"
  try:
    loop.train(steps=STEPS, workdir=WORKDIR, preemption=p, train_step=sigterm_at_call(slow, 5),
               **s)
  except loop.Preempted as e:
    print("STOPPED", e.step, os.path.isdir(os.path.join(WORKDIR, "checkpoints", str(e.step))))
jax.distributed.shutdown()
"""


def test_sigterm_through_jax_preemption_service(tmp_path):
  """With `jax.distributed` (one process here), JAX's service catches SIGTERM and names the
  step through `reached_preemption_sync_point`, the path multi-process runs take."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  script = f"ROOT = {root!r}\nWORKDIR = {str(tmp_path)!r}\nSTEPS = 60\n" + DISTRIBUTED_SCRIPT
  proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  m = re.search(r"STOPPED (\d+) True", proc.stdout)  # a checkpoint at the step it stopped
  assert m, proc.stdout + proc.stderr[-3000:]
  assert 5 <= int(m.group(1)) < 60  # resuming from it is the same in every mode (above)
