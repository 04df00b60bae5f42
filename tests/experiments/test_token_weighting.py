"""Token-weighting experiment at a tiny size: runs, writes outputs, numbers come from the runs."""

import json
import os

import numpy as np
import pytest

from configs import token_weighting as config_lib
from experiments import token_weighting as exp
from reweight.train import report
from tests.experiments.experiment_checks import table_row


def tiny_config():
  c = config_lib.get_config()
  c.max_bytes_per_domain = 1 << 16
  c.validation_every = 4
  c.seq_len = 16
  c.val_windows = 4
  c.test_windows = 4  # as many as validation: one compiled eval
  c.model_kwargs = {"d_model": 16, "num_heads": 2, "num_layers": 1, "max_len": 16}
  c.pretrain.steps = 6
  c.pretrain.warmup_steps = 2
  c.pretrain.batch_size = 4
  c.finetune.steps = 4
  c.finetune.warmup_steps = 1
  c.finetune.batch_size = 4
  c.learning_rates = {"sft": (1e-3, 1e-2), "dft": (1e-3,), "anchored": (1e-3,)}
  c.kl_coeffs = (0.5,)
  c.seeds = (0,)
  return c


def _token_ce_numpy(setup, params, windows):
  """Per-token cross-entropy ``[K, T]`` of ``params``: the model's logits, then a float64
  log-softmax in NumPy."""
  logits = np.asarray(setup.fn.apply(params, windows["x"]), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, np.asarray(windows["y"])[..., None], -1)[..., 0]


def _check_run(tmp_path, c):
  out = exp.run(c, str(tmp_path), progress=False)
  for name in ("table.md", "summary.json", "token_weighting.png"):
    assert os.path.getsize(tmp_path / name) > 0
  setup, summary = out["setup"], out["summary"]
  table = open(tmp_path / "table.md").read()
  # Validation and test windows come from disjoint halves of the held-out bytes.
  held = setup.corpus.validation[setup.target]
  half = len(held) // 2
  assert all(bytes(w.astype(np.uint8)) in held[:half].tobytes()
             for w in setup.val["target"]["x"])
  assert all(bytes(w.astype(np.uint8)) in held[half:].tobytes()
             for w in setup.test["target"]["x"])

  pre_dir = tmp_path / "runs" / "pretrain" / "seed0"
  pre_params = report.load_params(str(pre_dir / "params.npz"), setup.fn.params)
  source_before = _token_ce_numpy(setup, pre_params, setup.test["source"]).mean()
  for method in c.methods:
    chosen = summary["chosen"][method]
    # The chosen setting is the one with the lowest validation criterion (target + source).
    crit = {}
    for name in os.listdir(tmp_path / "runs" / method):
      r = json.load(open(tmp_path / "runs" / method / name / "seed0" / "result.json"))
      crit[name] = r["val"]["target"] + r["val"]["source"]
    assert chosen == min(crit, key=crit.get)
    run_dir = tmp_path / "runs" / method / chosen / "seed0"
    r = json.load(open(run_dir / "result.json"))
    params = report.load_params(str(run_dir / "params.npz"), setup.fn.params)
    # The reported token-mean losses are those of the saved parameters (NumPy), and the
    # saved per-token losses average to the reported target test loss.
    target_tokens = _token_ce_numpy(setup, params, setup.test["target"])
    np.testing.assert_allclose(r["test"]["target"], target_tokens.mean(), rtol=2e-4)
    saved = np.load(run_dir / "test_token_losses.npz")["target"]
    np.testing.assert_allclose(saved, target_tokens, rtol=2e-4, atol=2e-5)
    source_after = _token_ce_numpy(setup, params, setup.test["source"]).mean()
    np.testing.assert_allclose(r["forgetting_test"], source_after - source_before,
                               rtol=1e-3, atol=2e-5)
    # Fine-tuning moved the parameters.
    assert not np.allclose(params["head"]["kernel"], pre_params["head"]["kernel"])
    # The table's row is the run's (one seed: the mean is the run's value).
    cells = table_row(table, "Token weighting for fine-tuning", method)
    assert cells[2] == f"{r['test']['target']:.4f}"
    assert cells[3] == f"{r['forgetting_test']:.4f}"
  return summary


def test_runs_end_to_end_and_numbers_come_from_the_runs(tmp_path):
  """SFT and DFT (one compiled step each, shared with pretraining for SFT)."""
  c = tiny_config()
  c.methods = ("sft", "dft")
  summary = _check_run(tmp_path, c)
  assert set(summary["paired_vs_sft"]) == {"dft"}


@pytest.mark.slow
def test_anchored_and_restart(tmp_path):
  c = tiny_config()
  summary = _check_run(tmp_path, c)
  assert summary["methods"]["anchored"]["setting"]["kl"] == 0.5
  # A restart finds every run on disk and reproduces the summary.
  again = exp.run(c, str(tmp_path), progress=False)
  assert again["summary"]["methods"] == summary["methods"]
