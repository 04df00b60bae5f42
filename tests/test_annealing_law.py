"""Tests for reweight.annealing_law: the areas against a loop, fits that recover the law."""

import numpy as np
import pytest

from reweight import annealing_law, schedules


def loop_areas(lrs, lam):
  """The paper's definition, one step at a time."""
  s1, s2, m, c1, c2 = [], [], 0.0, 0.0, 0.0
  for i, eta in enumerate(lrs):
    if i > 0:
      m = lam * m + (lrs[i - 1] - eta)
    c1 += eta
    c2 += m
    s1.append(c1)
    s2.append(c2)
  return np.array(s1), np.array(s2)


@pytest.mark.parametrize("lam", [0.0, 0.9, 0.999])
def test_areas_match_python_loop(lam):
  rng = np.random.default_rng(0)
  lrs = list(np.abs(rng.normal(size=400)) * 1e-3)
  s1, s2 = annealing_law.areas(lrs, lam)
  r1, r2 = loop_areas(lrs, lam)
  np.testing.assert_allclose(s1, r1, rtol=1e-12)
  np.testing.assert_allclose(s2, r2, rtol=1e-9, atol=1e-15)


def test_areas_treat_warmup_as_peak():
  lrs = np.asarray(schedules.wsd(1e-3, 300, warmup_steps=30, decay_steps=100)(np.arange(300)),
                   np.float64)
  s1, s2 = annealing_law.areas(lrs, 0.99, warmup_steps=30)
  flat = lrs.copy()
  flat[:30] = lrs.max()
  r1, r2 = loop_areas(list(flat), 0.99)
  np.testing.assert_allclose(s1, r1, rtol=1e-12)
  np.testing.assert_allclose(s2, r2, rtol=1e-9, atol=1e-15)


def test_predict_is_the_law():
  lrs = np.linspace(2e-3, 1e-4, 200)
  p = annealing_law.AnnealingLawParams(L0=1.7, A=0.4, alpha=0.6, C=2.0)
  r1, r2 = loop_areas(list(lrs), 0.999)
  ref = 1.7 + 0.4 * r1**-0.6 - 2.0 * r2
  np.testing.assert_allclose(annealing_law.predict(p, lrs), ref, rtol=1e-12)
  steps = np.array([0, 10, 199])
  np.testing.assert_allclose(annealing_law.predict(p, lrs, steps), ref[steps], rtol=1e-12)


TRUE = annealing_law.AnnealingLawParams(L0=2.2, A=0.35, alpha=0.45, C=0.6)


def curve(kind, n=2000, peak=2e-3):
  t = np.arange(n)
  if kind == "wsd":
    s = schedules.wsd(peak, n, decay_fraction=0.2, final_ratio=0.0)
  elif kind == "cosine":
    s = schedules.moderate_decay(peak, n, final_ratio=0.1)
  else:
    s = lambda t: np.full(np.shape(t), peak)
  return np.asarray(s(t), np.float64)


def test_fit_recovers_known_params_from_one_wsd_curve():
  lrs = curve("wsd")
  steps = np.arange(25, 2000, 25)
  losses = annealing_law.predict(TRUE, lrs, steps)
  fitted = annealing_law.fit(steps, losses, lrs)
  np.testing.assert_allclose(np.array(fitted), np.array(TRUE), rtol=1e-2)


def test_fit_recovers_known_params_from_two_runs_and_predicts_a_third():
  runs = [curve("cosine"), curve("constant")]
  steps = [np.arange(50, 2000, 50)] * 2
  losses = [annealing_law.predict(TRUE, lrs, st) for lrs, st in zip(runs, steps, strict=True)]
  fitted = annealing_law.fit(steps, losses, runs)
  np.testing.assert_allclose(np.array(fitted), np.array(TRUE), rtol=1e-2)
  wsd = curve("wsd")
  np.testing.assert_allclose(annealing_law.predict(fitted, wsd)[10:],
                             annealing_law.predict(TRUE, wsd)[10:], rtol=1e-3)


def test_fit_is_robust_to_noise():
  rng = np.random.default_rng(1)
  lrs = curve("wsd")
  steps = np.arange(10, 2000, 10)
  losses = annealing_law.predict(TRUE, lrs, steps) * np.exp(rng.normal(0, 2e-4, steps.size))
  fitted = annealing_law.fit(steps, losses, lrs)
  pred = annealing_law.predict(fitted, lrs, steps)
  true = annealing_law.predict(TRUE, lrs, steps)
  assert np.max(np.abs(pred / true - 1)) < 2e-3


@pytest.mark.parametrize("call, match", [
    (lambda: annealing_law.areas([1.0, 2.0], lam=1.0), "lam=1.0"),
    (lambda: annealing_law.areas([1.0, -2.0]), "non-negative"),
    (lambda: annealing_law.areas([]), "non-empty"),
    (lambda: annealing_law.fit(np.array([0, 1, 2, 5]), np.ones(4), np.ones(4)),
     r"integer indices into lrs \(in \[0, 3\]\)"),
    (lambda: annealing_law.fit(np.arange(4), -np.ones(4), np.ones(4)), "positive"),
    (lambda: annealing_law.fit(np.arange(4), np.ones(4), np.zeros(4)), "S1 is 0"),
])
def test_validation(call, match):
  with pytest.raises(ValueError, match=match):
    call()
