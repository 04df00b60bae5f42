"""The loop on real data: resume from a checkpoint continues the same trajectory."""

import jax
import numpy as np
import optax

import reweight
from reweight.data import corruptions, datasets
from reweight.train import loop
from reweight.train.models import functional, make_model
from reweight.train.step import classification_loss


def setup(seed=0):
  train = corruptions.label_noise(datasets.load("digits", "train"), "symmetric", 0.4, 10, seed)
  test = datasets.load("digits", "test")
  fn = functional(make_model("mlp", seed=seed, in_features=64, hidden=(32,), num_classes=10))
  return dict(apply_fn=fn.apply, params=fn.params,
              per_example_loss=classification_loss(fn.apply),
              weighting=reweight.sample.loss_based("linupper", 0.5, warmup_steps=5),
              optimizer=optax.adam(1e-2), train_ds=train, test_ds=test, num_classes=10,
              batch_size=64, seed=seed, eval_every=10, progress=False)


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
