"""The GRPO-difficulty experiment at a tiny size: it runs end to end, its prompts follow the
heavy-tailed recipe, every method spends the same rollouts, and its numbers are the runs'.

Rewards and pass@1 are recomputed here with integer arithmetic (the sum ``a + b`` and the
carry count ``(S(a) + S(b) - S(a + b)) / 9`` from digit sums ``S``) and a NumPy forward pass
of the saved parameters, not with the experiment's helpers.
"""

import json
import os

import numpy as np
import pytest

from configs import grpo_difficulty as config_lib
from experiments import grpo_difficulty as exp

METHODS = ("grpo", "prompt_rollout_gdro")


def tiny_config():
  c = config_lib.get_config()
  c.digits = 2
  c.train_prompts = 300
  c.val_per_class = 20
  c.test_per_class = 20  # = val_per_class: one compiled evaluation
  c.seeds = (0,)
  c.model_kwargs.hidden = (16,)
  c.pretrain_steps = 5
  c.steps = 2
  c.eval_every = 2
  c.prompts_per_step = 4
  c.rollouts_per_prompt = 4
  c.max_rollouts = 8
  c.k = 2
  c.learning_rates = (3e-3,)
  c.step_sizes = (0.2,)
  c.emas = (0.9,)
  c.methods = METHODS
  c.comparisons = (("prompt_rollout_gdro", "grpo"),)
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("grpo_difficulty"))
  config = tiny_config()
  return config, workdir, exp.run(config, workdir, progress=False)


def as_int(digits):
  """Integers from digit rows, least significant first."""
  return np.asarray(digits, np.int64) @ 10 ** np.arange(np.shape(digits)[1])


def digit_sum(v):
  v, s = np.asarray(v, np.int64).copy(), np.zeros(len(v), np.int64)
  while np.any(v):
    s, v = s + v % 10, v // 10
  return s


def carries(a, b):
  """Carry count of ``a + b``: each carry turns 10 into 1 in the digit sum."""
  return (digit_sum(a) + digit_sum(b) - digit_sum(a + b)) // 9


def mlp_logp(path, x, digits):
  with np.load(path) as p:
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  h = np.maximum(x @ p["hidden/0/kernel"] + p["hidden/0/bias"], 0.0)
  z = (h @ p["head/kernel"] + p["head/bias"]).reshape(len(x), digits + 1, 10)
  return z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(
      -1, keepdims=True)


def test_outputs_are_written(finished):
  _, workdir, out = finished
  with open(os.path.join(workdir, "table.md")) as f:
    assert f.read() == out["table"]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)["summary"]
  for criterion in exp.CRITERIA:
    assert set(summary[criterion]["methods"]) == set(METHODS)
  for name in ("hardest_curve.png", "sampler_weights.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert "cannot be judged at n = 1 seed" in out["table"]


def test_prompts_are_heavy_tailed_and_disjoint():
  config = tiny_config()
  data = exp.prepare_data(config, seed=0)
  keys = {}
  for name, split in data.items():
    a, b = as_int(split["a"]), as_int(split["b"])
    np.testing.assert_array_equal(split["carries"], carries(a, b))
    np.testing.assert_array_equal(as_int(split["y"]), a + b)
    keys[name] = set((a * 1000 + b).tolist())
    assert len(keys[name]) == len(a)  # no prompt twice
  assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"])
  assert not keys["val"] & keys["test"]
  counts = np.bincount(data["train"]["carries"], minlength=config.digits + 1)
  assert counts.sum() == config.train_prompts
  assert counts[0] > counts[1] > counts[2] > 0  # most easy, few hard
  np.testing.assert_array_equal(np.bincount(data["test"]["carries"]),
                                [config.test_per_class] * (config.digits + 1))


def test_equal_rollout_budget_and_rewards_are_exact_match(finished):
  config, workdir, _ = finished
  train = exp.prepare_data(config, seed=0)["train"]
  target = as_int(train["a"]) + as_int(train["b"])
  budget = config.prompts_per_step * config.rollouts_per_prompt
  totals = {}
  for method in METHODS:
    setting = exp.settings(config, method)[0]
    rdir = exp.run_dir(workdir, method, setting, 0)
    with open(os.path.join(rdir, "result.json")) as f:
      history = json.load(f)["history"]
    per_step = [n for row in history[1:] for n in row["rollouts_per_step"]]
    assert per_step == [budget] * config.steps
    totals[method] = history[-1]["rollouts"]
    assert sum(history[-1]["rollouts_by_class"]) == totals[method]
    with np.load(os.path.join(rdir, "rollouts.npz")) as r:
      answers, prompt, reward = r["answers"], r["prompt"], r["reward"]
    assert len(reward) == budget
    np.testing.assert_array_equal(reward, (as_int(answers) == target[prompt]).astype(float))
  assert len(set(totals.values())) == 1 and totals["grpo"] == budget * config.steps


def test_test_pass_at_1_recomputed(finished):
  config, workdir, out = finished
  test = exp.prepare_data(config, seed=0)["test"]
  target = as_int(test["a"]) + as_int(test["b"])
  cls = carries(as_int(test["a"]), as_int(test["b"]))
  mix = config.tail ** np.arange(config.digits + 1)
  mix = mix / mix.sum()
  for method in METHODS:
    row = out["selected"]["hardest"][method][0]
    setting = exp.settings(config, method)[0]
    lp = mlp_logp(os.path.join(exp.run_dir(workdir, method, setting, 0), "params.npz"),
                  test["x"].astype(np.float64), config.digits)
    greedy = as_int(np.argmax(lp, -1)) == target
    digits = np.stack([target // 10 ** i % 10 for i in range(config.digits + 1)], 1)
    sampled = np.exp(np.take_along_axis(lp, digits[..., None], -1)[..., 0].sum(-1))
    by_class = [greedy[cls == c].mean() for c in range(config.digits + 1)]
    np.testing.assert_allclose(row["test_greedy_by_class"], by_class, atol=1e-12)
    np.testing.assert_allclose(row["test_greedy_overall"], np.dot(by_class, mix), atol=1e-12)
    np.testing.assert_allclose(row["test_sampled_hardest"],
                               sampled[cls == config.digits].mean(), rtol=1e-4)


def test_restart_reuses_the_finished_runs(finished):
  config, workdir, out = finished
  setting = exp.settings(config, "grpo")[0]
  path = os.path.join(exp.run_dir(workdir, "grpo", setting, 0), "result.json")
  before = os.stat(path).st_mtime_ns
  again = exp.run(config, workdir, progress=False)
  assert again["table"] == out["table"]
  assert os.stat(path).st_mtime_ns == before  # not trained again


def test_selection_is_the_validation_argmax_with_its_tie_breaks():
  vals = [(0.2, 0.5), (0.3, 0.1), (0.3, 0.4), (0.1, 0.9), (0.3, 0.4)]  # (hardest, overall)
  results = [{"val": {"greedy_hardest": h, "greedy_overall": o}} for h, o in vals]
  assert exp.select(results, "hardest") == 2  # max hardest, then overall, then first
  assert exp.select(results, "overall") == 3
  with pytest.raises(ValueError, match="criterion"):
    exp.select(results, "worst")
