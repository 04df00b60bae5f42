"""A group method's per-group diagnostics reach `weighted`'s info, the step and the JSONL."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

import reweight
from reweight.train import loop, plots
from reweight.train import state as state_lib
from reweight.train.step import classification_loss, make_train_step


def linear_apply(params, x, *, train=False, key=None):
  del train, key
  return x @ params["w"]


def data(n=96, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(n, 4)).astype(np.float32),
          "label": rng.integers(0, 3, n).astype(np.int32),
          "group": rng.integers(0, 3, n).astype(np.int32),
          "id": np.arange(n, dtype=np.int32)}


def test_info_and_step_metrics_hold_group_diagnostics():
  batch = data(24)
  params = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)}
  weighting = reweight.group.group_dro(3, step_size=0.5)
  per_example = classification_loss(linear_apply)
  for micro in (1, 2):
    step = jax.jit(make_train_step(per_example, weighting, optax.sgd(0.1), microbatches=micro))
    st = state_lib.create(params, optax.sgd(0.1), weighting, jax.random.PRNGKey(0))
    _, m = step(st, batch)
    losses = np.asarray(per_example(params, batch)[0], np.float64)
    g, w = batch["group"], np.asarray(m["weights"], np.float64)
    for k in range(3):
      np.testing.assert_allclose(m["group_loss"][k], losses[g == k].mean(), rtol=1e-5)
      np.testing.assert_allclose(m["group_weight_share"][k], w[g == k].sum() / w.sum(),
                                 rtol=1e-5)
    np.testing.assert_allclose(m["group_count"], np.bincount(g, minlength=3))
    q = np.exp(0.5 * np.array([losses[g == k].mean() for k in range(3)]))
    np.testing.assert_allclose(m["probs"], q / q.sum(), rtol=1e-5)
  # A non-group weighting adds nothing.
  step = jax.jit(make_train_step(per_example, reweight.uniform(), optax.sgd(0.1)))
  _, m = step(state_lib.create(params, optax.sgd(0.1), reweight.uniform(),
                               jax.random.PRNGKey(0)), batch)
  assert "probs" not in m and "group_loss" not in m


def test_loop_writes_probs_to_jsonl_and_plots(tmp_path):
  train_ds, test_ds = data(96, 0), data(48, 1)
  params = {"w": jnp.zeros((4, 3))}
  weighting = reweight.group.group_dro(3, step_size=0.2)
  result = loop.train(apply_fn=linear_apply, params=params,
                      per_example_loss=classification_loss(linear_apply), weighting=weighting,
                      optimizer=optax.sgd(0.1), train_ds=train_ds, test_ds=test_ds,
                      num_classes=3, steps=6, batch_size=32, seed=0, eval_every=3,
                      workdir=str(tmp_path), progress=False)
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [3, 6]
  for r in rows:
    assert len(r["probs"]) == 3 and abs(sum(r["probs"]) - 1) < 1e-5
    assert abs(sum(r["group_weight_share"]) - 1) < 1e-5
  np.testing.assert_allclose(rows[-1]["probs"], result.state.weighting_state.probs, rtol=1e-6)
  steps, probs = plots.history_probs([result.history, result.history])
  np.testing.assert_array_equal(steps, [3, 6])
  np.testing.assert_allclose(probs[1], rows[-1]["probs"])
  path = plots.proportions({"group_dro": (steps, probs)}, str(tmp_path / "probs.png"),
                           ["a", "b", "c"])
  assert (tmp_path / "probs.png").stat().st_size > 0 and path.endswith("probs.png")
