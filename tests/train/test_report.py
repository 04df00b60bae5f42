"""Report statistics against scipy / NumPy, verdict sentences, and whole-or-absent JSON."""

import os

import numpy as np
import pytest
from scipy import stats

from reweight.train import report


def test_paired_difference_is_the_t_interval():
  a, b = [1.0, 1.2, 0.9, 1.4], [1.5, 1.6, 1.4, 1.45]
  d = np.array(a) - np.array(b)
  lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
  p = report.paired_difference(a, b)
  np.testing.assert_allclose(p["ci95"], [lo, hi], rtol=1e-12)
  assert p["n"] == 4 and p["differences"] == pytest.approx(d.tolist())
  ttest = stats.ttest_rel(a, b)
  assert p["p"] == pytest.approx(ttest.pvalue, rel=1e-10)
  assert p["sem"] == pytest.approx(stats.sem(d), rel=1e-12)
  assert report.paired_difference([1.0], [0.5])["ci95"] is None
  with pytest.raises(ValueError, match="paired by seed"):
    report.paired_difference([], [])


def test_verdicts_follow_the_interval_and_the_direction():
  lower, higher = [1.0, 1.2, 0.9], [1.5, 1.6, 1.4]
  p = report.paired_difference(lower, higher)  # entirely below zero
  assert report.verdict(p, "x", "y", "loss", higher_is_better=False).startswith(
      "x beats y on loss (x − y = -0.4667, 95% CI [")
  assert report.verdict(p, "x", "y", "accuracy", higher_is_better=True).startswith(
      "y beats x on accuracy")
  p = report.paired_difference([1.0, 2.0, 0.0], [1.0, 1.0, 1.0])
  assert report.verdict(p, "x", "y", "loss", higher_is_better=False).startswith(
      "no clear difference at 3 seeds between x and y on loss")
  one = report.paired_difference([1.0], [2.0])
  assert "cannot be judged at n = 1" in report.verdict(one, "x", "y", "loss",
                                                       higher_is_better=False)


def test_mean_std_is_the_sample_std():
  assert report.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
  assert report.mean_std([0.8, 0.7, 0.9])[1] == pytest.approx(np.std([0.8, 0.7, 0.9], ddof=1))
  assert report.mean_std([1.0]) == (1.0, None)


def test_write_json_is_whole_or_absent(tmp_path):
  path = str(tmp_path / "runs" / "a" / "result.json")
  report.write_json(path, {"x": [1, 2]})
  assert report.read_json(path) == {"x": [1, 2]}
  assert not os.path.exists(path + ".tmp")


def test_formatting_of_spreads_and_differences():
  assert report.format_mean_std((0.9031, 0.0094), 1, 100.0) == "90.3 ± 0.9"
  assert report.format_mean_std((2.5, None), 3) == "2.500"
  p = report.paired_difference([2.0, 2.1, 2.2], [1.0, 1.0, 1.1])
  lo, hi = p["ci95"]
  assert report.format_difference(p, 2) == f"+1.07 [{lo:+.2f}, {hi:+.2f}]"
  assert report.format_difference(report.paired_difference([0.5], [0.25]), 1, 100.0) == "+25.0"
