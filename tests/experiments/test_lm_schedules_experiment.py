"""LM schedules experiment at a tiny size: runs, writes outputs, numbers come from the runs."""

import json
import os
import re

import jax.numpy as jnp
import numpy as np
import optax
import scipy.ndimage

from configs import lm_schedules as config_lib
from experiments import lm_schedules as exp
from reweight.optim.lr_table import scale_by_lr_table


def tiny_config():
  c = config_lib.get_config()
  c.corpus_bytes = 200_000
  c.validation_every = 5
  c.seq_len = 16
  c.eval_windows = 16
  c.model_kwargs = {"d_model": 16, "num_heads": 2, "num_layers": 1, "max_len": 16}
  c.steps = 30
  c.batch_size = 4
  c.warmup_steps = 3
  c.eval_every = 3
  c.annealing_fit_from = 6
  c.schedules = {"constant": {"kind": "constant"}, "cosine": {"kind": "cosine"},
                 "refined": {"kind": "refined", "source": "linear"},
                 "linear": {"kind": "linear"},
                 "wsd/exp": {"kind": "wsd", "shape": "exp"}}
  c.lr_grid = (1e-2, 3e-2)
  c.lr_select_schedules = ("constant", "cosine")
  c.seeds = (0,)
  return c


def _areas(lrs, lam, warmup):
  """S1, S2 of Tissue et al. by the plain recursion (independent of reweight)."""
  eta = np.array(lrs, np.float64)
  eta[:warmup] = eta.max()
  s1 = np.cumsum(eta)
  m, s2, acc = 0.0, np.zeros_like(eta), 0.0
  for i in range(len(eta)):
    m = lam * m + (eta[i - 1] - eta[i] if i else 0.0)
    acc += m
    s2[i] = acc
  return s1, s2


def test_runs_end_to_end_and_numbers_come_from_the_runs(tmp_path):

  c = tiny_config()
  out = exp.run(c, str(tmp_path), progress=False)
  for name in ("table.md", "summary.json", "curves.png", "schedules.png",
               "annealing_law.png"):
    assert os.path.getsize(tmp_path / name) > 0
  # The peak LR: the grid value with the lowest mean final validation loss of the selection
  # runs (seed 0); every reported run used it.
  sweep = {lr: np.mean([json.load(open(tmp_path / "runs" / f"lr{lr:g}" / n / "seed0" /
                                       "result.json"))["final_val_loss"]
                        for n in c.lr_select_schedules]) for lr in c.lr_grid}
  peak = min(sweep, key=sweep.get)
  assert out["peak"] == peak
  runs_dir = tmp_path / "runs" / f"lr{peak:g}"
  names = ("constant", "cosine", "refined", "linear", "wsd/exp")
  all_runs = {n: [json.load(open(runs_dir / n / f"seed{k}" / "result.json"))
                  for k in c.seeds] for n in names}
  for n, rs in all_runs.items():
    s = out["summary"][n]
    for key in ("final_val_loss", "final_test_loss"):
      assert s[key] == [rs[0][key], None]  # one seed: no std
  runs = {n: rs[0] for n, rs in all_runs.items()}
  fit = out["fits"][0]
  for name, r in runs.items():
    assert [h["step"] for h in r["history"]] == list(range(3, 31, 3))
    assert r["final_val_loss"] == r["history"][-1]["val_loss"]
    assert len(r["grad_norms"]) == 30 and min(r["grad_norms"]) > 0
    # The annealing law's numbers, re-derived from its fitted parameters.
    p = fit["params"]
    s1, s2 = _areas(out["lrs"][name], c.annealing_lam, c.warmup_steps)
    steps = np.arange(6, 31, 3)
    pred = p.L0 + p.A * s1[steps - 1] ** -p.alpha - p.C * s2[steps - 1]
    meas = np.array([h["val_loss"] for h in r["history"] if h["step"] >= 6])
    s = out["summary"][name]
    np.testing.assert_allclose(fit["per_run"][name]["pred_final"], pred[-1], rtol=1e-9)
    np.testing.assert_allclose(fit["per_run"][name]["final_abs_error"],
                               abs(pred[-1] - meas[-1]), rtol=1e-9)
    np.testing.assert_allclose(fit["per_run"][name]["curve_mae"],
                               np.mean(np.abs(pred - meas)), rtol=1e-9)
    label = name + (" (fit)" if name in ("constant", "cosine") else "")
    final = re.escape(f"{r['final_val_loss']:.4f} ± – | {r['final_test_loss']:.4f} ± –")
    assert re.search(rf"^\| (\*\*)?{re.escape(label)}(\*\*)? \| {final} \|",
                     out["table"], re.M)
  # The refined run used the schedule refined from the linear run's l1 gradient norms
  # (Defazio et al.: median filter, w = 1/G, eta_t ∝ w_t sum_{p>t} w_p), re-derived here.
  g = scipy.ndimage.median_filter(np.asarray(runs["linear"]["grad_norms"]), size=3,
                                  mode="nearest")
  w = 1.0 / g
  v = np.array([w[t] * w[t + 1:].sum() for t in range(30)])
  np.testing.assert_allclose(out["lrs"]["refined"], peak * v / v.max(), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(out["lrs"]["constant"][c.warmup_steps:], peak, rtol=1e-6)
  # A restart finds every run on disk and reproduces the summary.
  again = exp.run(c, str(tmp_path), progress=False)
  assert again["summary"] == out["summary"]


def test_summary_is_sample_statistics_and_paired_t_intervals_over_seeds():
  from scipy import stats

  rng = np.random.default_rng(1)
  names = ("constant", "cosine", "wsd/linear")
  results = {n: [{"final_val_loss": 2.0 + 0.1 * i + 0.01 * rng.standard_normal(),
                  "final_test_loss": 2.1 + 0.1 * i + 0.01 * rng.standard_normal()}
                 for _ in range(3)] for i, n in enumerate(names)}
  fits = [{"per_run": {n: {k: rng.random() for k in ("pred_final", "final_abs_error",
                                                      "curve_mae")} for n in names}}
          for _ in range(3)]
  summary = exp.summarize(results, fits)
  for n in names:
    s = summary[n]
    for key in ("final_val_loss", "final_test_loss"):
      v = [r[key] for r in results[n]]
      np.testing.assert_allclose(s[key], [np.mean(v), np.std(v, ddof=1)], rtol=1e-12)
    v = [f["per_run"][n]["curve_mae"] for f in fits]
    np.testing.assert_allclose(s["curve_mae"], [np.mean(v), np.std(v, ddof=1)], rtol=1e-12)
    for ref in ("constant", "cosine"):
      if ref == n:
        assert f"vs_{ref}" not in s
        continue
      a = [r["final_test_loss"] for r in results[n]]
      b = [r["final_test_loss"] for r in results[ref]]
      t = stats.ttest_rel(a, b)
      np.testing.assert_allclose(s[f"vs_{ref}"]["ci95"], t.confidence_interval(0.95),
                                 rtol=1e-9)
      np.testing.assert_allclose(s[f"vs_{ref}"]["p"], t.pvalue, rtol=1e-9)
    assert "vs_linear" not in s  # not a schedule here
  table = exp.format_table(summary, ("constant",))
  lo, hi = summary["wsd/linear"]["vs_constant"]["ci95"]
  assert lo > 0  # 0.2 nats higher with 0.014-nat noise: the interval excludes zero
  m = summary["wsd/linear"]["vs_constant"]["mean"]
  assert f"| wsd/linear | {m:+.4f} [{lo:+.4f}, {hi:+.4f}] * |" in table
  assert "| **constant (fit)** |" in table  # the lowest validation loss is in bold


def test_held_out_files_alternate_between_validation_and_test():
  c = tiny_config()
  corpus = exp.text.stdlib_corpus(c.corpus_bytes, c.validation_every,
                                  max_file_bytes=c.max_file_bytes)
  sp = exp.held_out_splits(corpus)
  files = corpus.validation_files
  assert sp["validation_files"] == files[0::2] and sp["test_files"] == files[1::2]
  for name in ("validation", "test"):  # each split is its files' bytes, read from disk
    blob = b"".join(open(os.path.join(corpus.root, *f.split("/")), "rb").read()
                    for f in sp[name + "_files"])
    assert sp[name].tobytes() == blob
  assert set(sp["test_files"]).isdisjoint(corpus.train_files)


def test_lr_table_matches_optax_adamw_with_the_schedule():
  c = tiny_config()
  c.steps = 6
  schedule = optax.cosine_decay_schedule(0.1, 6)
  ours = optax.chain(optax.adamw(1.0, b1=0.9, b2=0.95, weight_decay=c.weight_decay),
                     scale_by_lr_table(schedule(jnp.arange(6))))
  full = exp.make_optimizer(c, schedule(jnp.arange(6)))
  ref = optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=c.weight_decay)
  p0 = {"w": jnp.array([1.0, -2.0, 3.0])}
  ps, states = [p0, p0, p0], [ours.init(p0), full.init(p0), ref.init(p0)]
  for t in range(6):  # the table's length: a run takes exactly that many steps
    g = {"w": jnp.array([0.5, -1.0, 2.0]) * (t + 1)}
    for i, opt in enumerate((ours, full, ref)):
      u, states[i] = opt.update(g, states[i], ps[i])
      ps[i] = optax.apply_updates(ps[i], u)
    np.testing.assert_allclose(ps[0]["w"], ps[2]["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ps[1]["w"], ps[2]["w"], rtol=1e-6, atol=1e-7)


def test_refined_runs_after_its_source_and_bad_names():
  import pytest

  specs = {"refined": {"kind": "refined", "source": "linear"}, "linear": {"kind": "linear"}}
  assert exp._run_order(specs) == ["linear", "refined"]
  with pytest.raises(ValueError, match="source='cosine'"):
    exp._run_order({"refined": {"kind": "refined", "source": "cosine"}})
  c = tiny_config()
  with pytest.raises(ValueError, match="kind='step' is not one of"):
    exp.make_schedule({"kind": "step"}, c, {})
