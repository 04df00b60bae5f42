"""MoE load-balancing experiment at a tiny size: runs, writes outputs, numbers come from the
saved per-run counts (mutual information recomputed in NumPy as H(D) + H(E) - H(D, E))."""

import json
import os

import numpy as np

from configs import moe_balancing as config_lib
from experiments import moe_balancing as exp
from tests.experiments.experiment_checks import table_row


def tiny_config():
  c = config_lib.get_config()
  c.max_bytes_per_domain = 1 << 16
  c.validation_every = 4
  c.seq_len = 16
  c.val_windows = 4
  c.test_windows = 4  # the same shapes as validation: one compiled evaluation
  c.model_kwargs = {"d_model": 16, "num_heads": 2, "num_layers": 1, "max_len": 16,
                    "num_experts": 4, "experts_per_token": 1, "expert_hidden": 16}
  c.steps = 3
  c.warmup_steps = 1
  c.batch_size = 8
  c.microbatches = 1  # one pass: both scopes then train identically (checked below)
  c.seeds = (0,)
  return c


def entropy(p):
  p = np.asarray(p, np.float64).ravel()
  p = p[p > 0] / p.sum()
  return -float(np.sum(p * np.log(p)))


def test_runs_end_to_end_and_mutual_information_from_counts(tmp_path):
  c = tiny_config()
  out = exp.run(c, str(tmp_path), progress=False)
  for name in ("table.md", "summary.json", "load_heatmap.png", "training.png"):
    assert os.path.getsize(tmp_path / name) > 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["alpha"] == 0.01 and summary["domains"] == ["code", "prose", "licenses",
                                                             "tables"]
  for scope in ("global", "micro"):
    path = tmp_path / "runs" / scope / "a0.01" / "seed0" / "result.json"
    r = json.loads(path.read_text())
    counts = np.asarray(r["test_counts"])  # [layers, domains, experts]
    # Every test token of every domain is routed to exactly one expert (top-1).
    np.testing.assert_array_equal(counts.sum(-1), np.full((1, 4), c.test_windows * c.seq_len))
    for layer, n in enumerate(counts):
      mi = entropy(n.sum(1)) + entropy(n.sum(0)) - entropy(n)
      np.testing.assert_allclose(r["test_mi"][layer], mi, rtol=1e-9, atol=1e-12)
      assert 0.0 <= mi <= np.log(4) + 1e-12
    assert np.isfinite(r["val_loss"]) and np.isfinite(r["test_loss"])
    # The table prints the run's numbers (n = 1: no std).
    assert f"{r['test_loss']:.4f}" in table_row(out["table"], "MoE load balancing: global vs "
                                                "micro-batch", "test loss (nats/byte)")[
                                                    1 if scope == "global" else 2]
  # With one micro-batch on one device the two scopes are the same loss: same training.
  runs = {s: out["results"][(s, 0.01, 0)] for s in ("global", "micro")}
  np.testing.assert_allclose(runs["global"]["test_loss"], runs["micro"]["test_loss"],
                             rtol=1e-6)
  np.testing.assert_array_equal(runs["global"]["test_counts"], runs["micro"]["test_counts"])
  # A restart skips the finished runs (no training) and returns the same results.
  again = exp.run_all(out["setup"], str(tmp_path), progress=False)
  assert again == {k: json.loads(json.dumps(v)) for k, v in out["results"].items()}
