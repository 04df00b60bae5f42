"""The noisy-pairs experiment at a tiny size: its pairs follow the mismatch rule, its test
retrieval is what the saved encoders give, its choice is the validation argmax, and its table
holds the runs' numbers.

The split and the mismatch are rebuilt here from the documented recipe, the retrieval
accuracies with a float64 NumPy forward pass of the saved parameters.
"""

import json
import os

import numpy as np
import pytest
from experiment_checks import table_row

from configs import noisy_pairs as config_lib
from experiments import noisy_pairs as exp
from reweight.data import datasets

METHODS = ("infonce", "gated", "oracle")


def tiny_config():
  c = config_lib.get_config()
  c.seeds = (0,)
  c.model_kwargs.hidden = ()  # linear encoders: the smallest program to compile
  c.embed_dim = 8
  c.steps = 20
  c.eval_every = 10
  c.temperatures = (0.1,)
  c.gate_gammas = (1.0, 4.0)
  c.methods = {m: c.methods[m] for m in METHODS}
  c.comparisons = (("gated", "infonce"), ("oracle", "infonce"))
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("noisy_pairs"))
  config = tiny_config()
  out = exp.run(config, workdir, progress=False)
  return config, workdir, out


@pytest.fixture(scope="module")
def data():
  return exp.prepare_data(tiny_config(), seed=0)


def load(workdir, method, seed=0):
  with open(os.path.join(workdir, "runs", method, f"seed{seed}.json")) as f:
    return json.load(f)


def embed(p, prefix, x):
  """``unit(relu(... relu(x W0 + b0) ...) Wh + bh)`` in float64 from the saved parameters."""
  h, i = x, 0
  while f"{prefix}/hidden/{i}/kernel" in p:
    h = np.maximum(h @ p[f"{prefix}/hidden/{i}/kernel"] + p[f"{prefix}/hidden/{i}/bias"], 0.0)
    i += 1
  z = h @ p[f"{prefix}/head/kernel"] + p[f"{prefix}/head/bias"]
  return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_pairs_follow_the_mismatch_rule(data):
  config = tiny_config()
  raw = datasets.load("digits", "train")
  n = len(raw["label"])
  rng = np.random.default_rng([exp.SPLIT_SALT, 0])
  perm = rng.permutation(n)
  n_val = int(round(config.val_fraction * n))
  val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  np.testing.assert_array_equal(data["val"]["a"], raw["x"][val])
  np.testing.assert_array_equal(data["train"]["a"], raw["x"][train])
  m = len(train)
  mis = data["train"]["mismatched"]
  assert mis.sum() == round(0.3 * m)  # exactly 30% of the training pairs (345 of 1150)
  assert abs(mis.mean() - 0.3) < 1 / m
  # the documented derangement: M = permutation[:|M|], source[M[k]] = M[k + 1 mod |M|]
  members = rng.permutation(m)[:round(0.3 * m)]
  want = np.arange(m)
  want[members] = np.roll(members, -1)
  np.testing.assert_array_equal(data["train"]["source"], want)
  assert np.all(want[mis] != np.flatnonzero(mis)) and np.all(want[~mis] == np.flatnonzero(~mis))
  # a mismatched b is the (clean) b of its source example; c stays with its own image
  clean = exp.prepare_data(_no_mismatch(config), seed=0)
  np.testing.assert_array_equal(data["train"]["b"], clean["train"]["b"][want])
  np.testing.assert_array_equal(data["train"]["c"], clean["train"]["c"])
  # views B and C of a pair are two independent renderings of its image
  assert not np.allclose(data["train"]["b"][~mis], data["train"]["c"][~mis])


def _no_mismatch(config):
  c = config.copy_and_resolve_references()
  c.mismatch_fraction = 0.0
  return c


def test_outputs_are_written(finished):
  _, workdir, out = finished
  with open(os.path.join(workdir, "table.md")) as f:
    assert f.read() == out["table"]
  with open(os.path.join(workdir, "summary.json")) as f:
    assert list(json.load(f)["summary"]["methods"]) == ["infonce", "gated", "oracle"]
  for name in ("retrieval.png", "gate_weights.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert "cannot be judged at n = 1 seed" in out["table"]


def test_restart_reuses_the_finished_runs(finished):
  config, workdir, out = finished
  path = os.path.join(workdir, "runs", "gated", "seed0.json")
  before = os.stat(path).st_mtime_ns
  again = exp.run(config, workdir, progress=False)
  assert again["table"] == out["table"]
  assert os.stat(path).st_mtime_ns == before  # not trained again


def test_test_retrieval_is_what_the_saved_encoders_give(finished, data):
  _, workdir, _ = finished
  test = data["test"]
  n = len(test["a"])
  for method in METHODS:
    r = load(workdir, method)
    with np.load(os.path.join(workdir, "runs", method, "seed0_params.npz")) as f:
      p = {k: np.asarray(v, np.float64) for k, v in f.items()}
    s = embed(p, "a", test["a"].astype(np.float64)) @ embed(p, "b", test["b"]).T
    a2b = np.mean(np.argmax(s, 1) == np.arange(n))
    b2a = np.mean(np.argmax(s, 0) == np.arange(n))
    # float32 vs float64 may break a near-tie differently: one pair at most
    assert abs(r["test_a2b"] - a2b) <= 1.01 / n, method
    assert abs(r["test_b2a"] - b2a) <= 1.01 / n, method
    assert r["test_retrieval"] == pytest.approx((r["test_a2b"] + r["test_b2a"]) / 2)


def test_choice_is_the_validation_argmax_and_weights_are_reported(finished):
  config, workdir, out = finished
  for method in METHODS:
    r = load(workdir, method)
    val = (np.asarray(r["val_a2b"]) + np.asarray(r["val_b2a"])) / 2  # [G, T]
    g, t = np.unravel_index(np.argmax(val), val.shape)  # first maximum: grid, then step
    assert (r["chosen"], r["step"]) == (g, r["steps"][t]), method
    assert r["val_retrieval"] == pytest.approx(val[g, t])
    assert len(r["grid"]) == (2 if method == "gated" else 1)
    row = table_row(out["table"], "Test retrieval and where the weight went", method)
    assert row[1] == f"{100 * r['test_retrieval']:.1f}"
    mis, cor = np.asarray(r["weight_mismatched"]), np.asarray(r["weight_correct"])
    if method == "infonce":
      np.testing.assert_allclose([mis, cor], 1.0, rtol=1e-6)
    if method == "oracle":  # 0 on every mismatched pair, mean one over the batch
      np.testing.assert_allclose(mis, 0.0, atol=1e-7)
      assert np.all(cor > 1.0)
      np.testing.assert_allclose(r["weight_share_mismatched"], 0.0, atol=1e-7)
  assert r["mismatched_fraction"] == pytest.approx(round(0.3 * r["n_train"]) / r["n_train"])
