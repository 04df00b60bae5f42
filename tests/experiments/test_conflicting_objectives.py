"""The conflicting-objectives experiment at a tiny size: it runs end to end, its data follow
the documented recipe, its objective values are those of the saved parameters (recomputed
in NumPy), the MGDA run is redone in NumPy (K = 2 closed form at every step), the
multiplier follows dual ascent on the recorded gaps, and the Lagrangian's choice is the
documented validation rule."""

import json
import os

import numpy as np
import pytest
from experiment_checks import table_row

from configs import conflicting_objectives as config_lib
from experiments import conflicting_objectives as exp
from reweight.data import datasets
from reweight.train.models import functional, make_model


def tiny_config():
  c = config_lib.get_config()
  c.seeds = (0,)
  c.steps = 25
  c.record_every = 1
  c.linear_weights = (0.0,)
  c.threshold_factors = (1.0,)
  c.dual_step_sizes = (10.0,)
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("conflicting_objectives"))
  config = tiny_config()
  return config, workdir, exp.run(config, workdir, progress=False)


def expected_data(config, seed):
  """Train / val / test rebuilt with the recipe of the module docstring."""
  def degrade(x, s):
    rng = np.random.default_rng([exp.GROUP_SALT, seed, s])
    g = rng.random(len(x)) < config.degraded_fraction
    b = config.block
    low = x.reshape(-1, 8, 8).copy()
    for i in range(0, 8, b):  # every b x b block replaced by its mean
      for j in range(0, 8, b):
        low[:, i:i + b, j:j + b] = low[:, i:i + b, j:j + b].mean((1, 2))[:, None, None]
    return np.where(g[:, None], low.reshape(-1, 64), x), g.astype(int)

  raw, test = datasets.load("digits", "train"), datasets.load("digits", "test")
  x, g = degrade(np.asarray(raw["x"], np.float64), 0)
  n = len(x)
  val = np.sort(np.random.default_rng([exp.VAL_SALT, seed]).permutation(n)[
      :int(round(config.val_fraction * n))])
  train = np.setdiff1d(np.arange(n), val)
  tx, tg = degrade(np.asarray(test["x"], np.float64), 1)
  y = np.asarray(raw["label"])
  return {"train": (x[train], y[train], g[train]), "val": (x[val], y[val], g[val]),
          "test": (tx, np.asarray(test["label"]), tg)}


def np_objectives(w, b, x, y, g):
  """CE, |gap|, accuracies and the two objectives' gradients of a linear softmax model,
  in float64."""
  logits = x @ w + b
  logits = logits - logits.max(1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -logp[np.arange(len(y)), y]
  signed = ce[g == 1].mean() - ce[g == 0].mean()
  dlogits = np.exp(logp)
  dlogits[np.arange(len(y)), y] -= 1.0  # d ce_j / d logits_j
  per = lambda weights: (x.T @ (weights[:, None] * dlogits), weights @ dlogits)
  grad_ce = per(np.full(len(y), 1.0 / len(y)))
  grad_gap = per(np.sign(signed) * np.where(g == 1, 1 / np.sum(g == 1), -1 / np.sum(g == 0)))
  correct = logits.argmax(1) == y
  return {"ce": ce.mean(), "gap": abs(signed), "accuracy": correct.mean(),
          "accuracy_clean": correct[g == 0].mean(),
          "accuracy_degraded": correct[g == 1].mean()}, grad_ce, grad_gap


def load(workdir, method, name="result.json"):
  path = os.path.join(exp.run_dir(workdir, method, 0), name)
  if name.endswith(".npz"):
    with np.load(path) as f:
      return {k: np.asarray(v, np.float64) for k, v in f.items()}
  with open(path) as f:
    return json.load(f)


def test_data_follow_the_recipe():
  config = tiny_config()
  data = exp.prepare_data(config, 0)
  want = expected_data(config, 0)
  for split in ("train", "val", "test"):
    x, y, g = want[split]
    np.testing.assert_allclose(data[split]["x"], x, atol=1e-6)
    np.testing.assert_array_equal(data[split]["label"], y)
    np.testing.assert_array_equal(data[split]["group"], g)
  assert 0.4 < data["train"]["group"].mean() < 0.6


def test_reported_objectives_are_the_saved_models(finished):
  config, workdir, out = finished
  want = expected_data(config, 0)
  methods = ["linear_w0", "mgda"] + [
      f"lagrangian_f1_eta{e:g}" for e in config.dual_step_sizes]
  for method in methods:
    p, saved = load(workdir, method, "params.npz"), load(workdir, method)
    for split in ("val", "test"):
      got, _, _ = np_objectives(p["head/kernel"], p["head/bias"], *want[split])
      for key, value in got.items():
        assert saved[split][key] == pytest.approx(value, abs=2e-5), (method, split, key)
  for method in ("linear_w0", "mgda", "lagrangian"):
    rec = out["results"][method][0]
    row = table_row(out["table"], "Objectives and accuracy", method)
    assert row[1:5] == [f"{rec[s][k]:.3f}" for s in ("val", "test") for k in ("ce", "gap")]
    assert row[5] == f"{100 * rec['test']['accuracy']:.1f}"
  # MGDA trades CE for a smaller gap than the CE-only run: the objectives conflict.
  w0, mgda = out["results"]["linear_w0"][0], out["results"]["mgda"][0]
  assert mgda["val"]["gap"] < w0["val"]["gap"] and mgda["val"]["ce"] > w0["val"]["ce"]


def test_mgda_run_is_reproduced_in_numpy(finished):
  """The whole MGDA run redone in float64 NumPy: at every step the K = 2 closed form
  ``alpha = clip((g2 - g1).g2 / |g1 - g2|^2, 0, 1)`` of the NumPy gradients, then the step
  along ``alpha g1 + (1 - alpha) g2`` with heavy-ball momentum (optax.sgd's trace)."""
  config, workdir, _ = finished
  fn = functional(make_model(config.model, seed=0, num_classes=10, **dict(config.model_kwargs)))
  w = np.asarray(fn.params["head"]["kernel"], np.float64)  # the runs' initialisation
  b = np.asarray(fn.params["head"]["bias"], np.float64)
  train = expected_data(config, 0)["train"]
  trace_w, trace_b, alphas = np.zeros_like(w), np.zeros_like(b), []
  for _ in range(config.steps):
    _, g1, g2 = np_objectives(w, b, *train)
    v1, v2 = (np.concatenate([a.ravel() for a in g]) for g in (g1, g2))
    alpha = np.clip((v2 - v1) @ v2 / np.sum((v1 - v2) ** 2), 0, 1)
    alphas.append(alpha)
    trace_w = alpha * g1[0] + (1 - alpha) * g2[0] + config.momentum * trace_w
    trace_b = alpha * g1[1] + (1 - alpha) * g2[1] + config.momentum * trace_b
    w, b = w - config.learning_rate * trace_w, b - config.learning_rate * trace_b
  saved = np.array(load(workdir, "mgda")["trajectory"]["weights"])
  np.testing.assert_allclose(saved[:, 0], alphas, atol=2e-3)
  np.testing.assert_allclose(saved.sum(1), 1.0, atol=1e-6)
  assert 0.05 < min(alphas[5:]) and max(alphas[5:]) < 0.95  # interior: they conflict
  p = load(workdir, "mgda", "params.npz")
  np.testing.assert_allclose(p["head/kernel"], w, atol=2e-4)
  np.testing.assert_allclose(p["head/bias"], b, atol=2e-4)


def test_multiplier_is_dual_ascent_and_the_choice_follows_the_rule(finished):
  config, workdir, out = finished
  tau = config.target_fraction * load(workdir, "linear_w0")["val"]["gap"]
  runs = {}
  for eta in config.dual_step_sizes:
    saved = load(workdir, f"lagrangian_f1_eta{eta:g}")
    assert saved["target"] == pytest.approx(tau) and saved["threshold"] == pytest.approx(tau)
    lam, expect = 0.0, []
    for gap in saved["trajectory"]["train_gap"]:  # recorded before each step's update
      lam = max(0.0, lam + eta * (gap - tau))
      expect.append(lam)
    np.testing.assert_allclose(np.array(saved["trajectory"]["weights"])[:, 1], expect,
                               rtol=1e-4, atol=1e-5)
    runs[eta] = saved
  feasible = [e for e, r in runs.items() if r["val"]["gap"] <= tau]
  want = (min(feasible, key=lambda e: runs[e]["val"]["ce"]) if feasible
          else min(runs, key=lambda e: runs[e]["val"]["gap"]))
  chosen = out["results"]["lagrangian"][0]
  assert chosen["step_size"] == want
  row = table_row(out["table"], "Lagrangian: target per seed", "0")
  assert row[1] == f"{tau:.3f}" and row[3] == f"{want:g}"
  assert row[7] == ("yes" if chosen["test"]["gap"] <= tau else "no")


def test_outputs_and_restart(finished):
  config, workdir, out = finished
  for name in ("table.md", "summary.json", "front.png", "weights.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert "cannot be judged at n = 1 seed" in out["table"]
  path = os.path.join(exp.run_dir(workdir, "mgda", 0), "result.json")
  before = os.stat(path).st_mtime_ns
  assert exp.run(config, workdir, progress=False)["table"] == out["table"]
  assert os.stat(path).st_mtime_ns == before  # not trained again
