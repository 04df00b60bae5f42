"""Domain-mixing experiment at a tiny size: runs, writes outputs, numbers come from the runs."""

import json
import os

import numpy as np
import pytest

from configs import domain_mixing as config_lib
from experiments import domain_mixing as exp
from reweight.train import report
from reweight.train.models import functional, make_model
from tests.experiments.experiment_checks import table_row


def tiny_config():
  c = config_lib.get_config()
  c.max_bytes_per_domain = 1 << 16
  c.validation_every = 4
  c.noise_nominal_bytes = 1 << 16
  c.seq_len = 16
  c.val_windows = 4
  c.test_windows = 8
  c.model_kwargs = {"d_model": 16, "num_heads": 2, "num_layers": 1, "max_len": 16}
  c.steps = 12
  c.warmup_steps = 2
  c.batch_size = 8
  c.aioli.rounds = 2
  c.aioli.lp_steps = 1
  c.skill_it.rounds = 3
  c.exp3_target_batch = 4
  c.upsample.steps = 12
  c.upsample.fractions = (0.0, 0.25)
  c.seeds = (0,)
  return c


def _test_losses_numpy(run_dir, c, test):
  """Per-domain mean of the per-sequence token cross-entropy of the saved parameters: the
  model's logits, then a float64 log-softmax and the domain means in NumPy."""
  fn = functional(make_model("transformer", seed=0, vocab_size=256, **c.model_kwargs))
  params = report.load_params(os.path.join(run_dir, "params.npz"), fn.params)
  logits = np.asarray(fn.apply(params, test["x"]), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  y = np.asarray(test["y"])
  per_seq = -np.take_along_axis(logp, y[..., None], -1)[..., 0].mean(-1)
  g = np.asarray(test["group"])
  return np.array([per_seq[g == k].mean() for k in range(g.max() + 1)])


def test_runs_end_to_end_and_numbers_come_from_the_runs(tmp_path):
  c = tiny_config()
  out = exp.run(c, str(tmp_path), progress=False)
  for name in ("table.md", "summary.json", "proportions.png", "domain_losses.png",
               "upsample.png"):
    assert os.path.getsize(tmp_path / name) > 0
  setup = out["setup"]
  names = setup.names
  assert names == ("code", "prose", "licenses", "tables", "noise", "duplicated")
  natural = list(c.natural)
  # Validation and test windows come from disjoint halves of each domain's held-out bytes.
  for g, held in enumerate(setup.corpus.validation):
    half = len(held) // 2
    v = np.asarray(setup.val["x"])[np.asarray(setup.val["group"]) == g]
    t = np.asarray(setup.test["x"])[np.asarray(setup.test["group"]) == g]
    first, second = held[:half].tobytes(), held[half:].tobytes()
    assert all(bytes(w.astype(np.uint8)) in first for w in v)
    assert all(bytes(w.astype(np.uint8)) in second for w in t)

  runs = {m: json.load(open(tmp_path / "runs" / m / "seed0" / "result.json"))
          for m in c.methods}
  table = open(tmp_path / "table.md").read()
  sizes = np.array([len(x) for x in setup.corpus.train], np.float64)
  sizes[names.index("noise")] = c.noise_nominal_bytes
  for method, r in runs.items():
    # Probabilities are distributions, and the trajectory has one row per step.
    np.testing.assert_allclose(np.sum(r["final_probs"]), 1.0, atol=1e-5)
    traj = np.asarray(r["probs_trajectory"])
    assert traj.shape == (c.steps, len(names))
    np.testing.assert_allclose(traj.sum(1), 1.0, atol=1e-5)
    # The reported test losses are those of the saved parameters (NumPy loss).
    np.testing.assert_allclose([r["test_losses"][d] for d in names],
                               _test_losses_numpy(tmp_path / "runs" / method / "seed0", c,
                                                  setup.test), rtol=2e-4, atol=2e-4)
    # The table's numbers are the run's (one seed: the mean is the run's value).
    v = [r["test_losses"][d] for d in natural]
    cells = table_row(table, "Domain mixing", method)
    assert cells[1] == f"{np.mean(v):.4f}" and cells[2] == f"{np.max(v):.4f}"
    section = table.split("### Final proportions")[1].split("###")[0]
    row = [ln for ln in section.splitlines() if ln.startswith(f"| {method} |")][0]
    assert row == f"| {method} | " + " | ".join(f"{p:.3f}" for p in r["final_probs"]) + " |"
  # Fixed mixtures, from the sizes in NumPy.
  np.testing.assert_allclose(runs["stratified"]["final_probs"], np.full(6, 1 / 6), atol=1e-6)
  np.testing.assert_allclose(runs["proportional"]["final_probs"], sizes / sizes.sum(),
                             rtol=1e-5)
  t = sizes ** (1 / c.temperature_tau)
  np.testing.assert_allclose(runs["temperature"]["final_probs"], t / t.sum(), rtol=1e-5)
  # DoReMi's final model sampled from the proxy's average alpha (the mean of its trajectory).
  alpha = np.asarray(runs["doremi"]["proxy_alpha"])
  np.testing.assert_allclose(runs["doremi"]["final_probs"], alpha.mean(0), rtol=1e-4)
  # EXP3 played exactly one source per step.
  assert sum(runs["exp3"]["plays"]) == c.steps
  # Group DRO's reported q is the last of its trajectory.
  np.testing.assert_allclose(runs["group_dro"]["final_probs"],
                             runs["group_dro"]["probs_trajectory"][-1])
  # Upsampling: the switch step and the reported losses.
  up = {f: json.load(open(tmp_path / "runs" / "upsample" / f"f{f:g}" / "seed0" / "result.json"))
        for f in c.upsample.fractions}
  assert up[0.0]["switch_step"] == 12 and up[0.25]["switch_step"] == 9
  assert up[0.25]["final_probs"][names.index("prose")] == pytest.approx(0.5)
  rest = [d for d in natural if d != "prose"]
  for f, r in up.items():
    cells = table_row(table, "Upsampling at the end", f"{f:g}")
    assert cells[1] == f"{r['test_losses']['prose']:.4f}"
    assert cells[2] == f"{np.mean([r['test_losses'][d] for d in rest]):.4f}"
  # A restart finds every run on disk and reproduces the summary.
  again = exp.run(c, str(tmp_path), progress=False)
  assert again["summary"]["mixing"] == out["summary"]["mixing"]
  assert again["summary"]["upsample"] == out["summary"]["upsample"]
