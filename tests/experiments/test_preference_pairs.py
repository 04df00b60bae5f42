"""Preference-pairs experiment at a tiny size: runs, writes outputs, numbers come from the runs."""

import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs import preference_pairs as config_lib
from experiments import preference_pairs as exp
from tests.experiments.experiment_checks import table_row


def tiny_config():
  c = config_lib.get_config()
  c.max_bytes_per_domain = 1 << 16
  c.validation_every = 4
  c.prompt_len = 8
  c.response_len = 8
  c.marked = 2
  c.val_pairs = 16
  c.test_pairs = 16
  c.model_kwargs = {"d_model": 16, "num_heads": 2, "num_layers": 1, "max_len": 16}
  c.pretrain.steps = 0  # the reference is the initialisation: one compile fewer
  c.pretrain.warmup_steps = 0
  c.pretrain.batch_size = 4
  c.train.steps = 4
  c.train.warmup_steps = 1
  c.train.batch_size = 4
  c.betas = (0.5,)
  c.seeds = (0,)
  return c


def _check_run(tmp_path, c):
  out = exp.run(c, str(tmp_path), progress=False)
  for name in ("table.md", "summary.json", "preference_pairs.png"):
    assert os.path.getsize(tmp_path / name) > 0
  summary, table = out["summary"], open(tmp_path / "table.md").read()
  t = c.prompt_len + c.response_len
  for method in c.methods:
    beta = summary["chosen"][method]
    run_dir = tmp_path / "runs" / method / f"beta{beta}" / "seed0"
    r = json.load(open(run_dir / "result.json"))["test"]
    o = np.load(run_dir / "test_outputs.npz")
    n = c.test_pairs
    marked, mask = o["marked"], o["response_mask"]
    # The marked positions: `marked` per pair, all in the response.
    assert marked.shape == (n, t) and (marked.sum(1) == c.marked).all()
    assert not marked[:, :c.prompt_len].any()
    np.testing.assert_array_equal(mask, np.arange(t) >= c.prompt_len)
    # Reward accuracy and log-ratio accuracy recomputed from the saved rewards / ratios.
    assert r["reward_acc"] == pytest.approx(np.mean(o["rewards_chosen"] > o["rewards_rejected"]))
    ratio = o["ratio"]
    lr = (ratio * mask).sum(-1)
    assert r["logratio_acc"] == pytest.approx(np.mean(lr[:n] > lr[n:]))
    # Mask AUROC on rejected responses (scikit-learn) and the mass share on marked tokens.
    resp = np.broadcast_to(mask > 0, marked.shape)
    mr = o["masks"][n:][resp]
    if method == "dpo":
      # DPO's rewards are beta * sum of response log-ratios; its "mask" is all ones.
      np.testing.assert_allclose(o["rewards_chosen"], float(beta) * lr[:n], rtol=1e-4,
                                 atol=1e-5)
      np.testing.assert_allclose(o["rewards_rejected"], float(beta) * lr[n:], rtol=1e-4,
                                 atol=1e-5)
      assert r["mask_auroc_rejected"] == pytest.approx(0.5)
    else:
      assert r["mask_auroc_rejected"] == pytest.approx(roc_auc_score(marked[resp], mr))
      assert (o["masks"] >= 0).all()
    assert r["mask_share_marked"] == pytest.approx(mr[marked[resp]].sum() / mr.sum(),
                                                   rel=1e-6)
    assert r["ratio_auroc_rejected"] == pytest.approx(
        roc_auc_score(marked[resp], np.abs(ratio[n:][resp])))
    # The table's row is the run's (one seed: the mean is the run's value).
    cells = table_row(table, "Token-weighted preference optimisation", method)
    assert cells[2] == f"{r['reward_acc']:.3f}"
  return out


def test_runs_end_to_end_and_numbers_come_from_the_runs(tmp_path):
  c = tiny_config()
  c.methods = ("dpo", "sparse_po_learned")
  out = _check_run(tmp_path, c)
  # The synthesised pairs: chosen and rejected differ exactly at the marked targets, and
  # the rejected inputs are the rejected targets shifted by one.
  setup = out["setup"]
  ref = exp.pretrain(setup, 0, str(tmp_path))
  pairs = exp.datasets(setup, 0, ref)["test"]
  np.testing.assert_array_equal(pairs.yc != pairs.yr, pairs.marked)
  np.testing.assert_array_equal(pairs.xr[:, 1:], pairs.yr[:, :-1])
  np.testing.assert_array_equal(pairs.xc[:, 1:], pairs.yc[:, :-1])
  saved = np.load(tmp_path / "runs" / "dpo" / "beta0.5" / "seed0" / "test_outputs.npz")
  np.testing.assert_array_equal(saved["marked"], pairs.marked)
  # The block outputs the masks read give the model's own logits.
  logits, hs = setup.hidden_states(ref, pairs.xc)
  np.testing.assert_allclose(logits, setup.fn.apply(ref, pairs.xc), rtol=1e-5, atol=1e-5)
  assert len(hs) == c.model_kwargs["num_layers"]


@pytest.mark.slow
def test_all_methods_uniform_corruption_and_restart(tmp_path):
  c = tiny_config()
  c.corruption = "uniform"
  out = _check_run(tmp_path, c)
  again = exp.run(c, str(tmp_path), progress=False)
  assert again["summary"]["methods"] == out["summary"]["methods"]
