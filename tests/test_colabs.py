"""Every colab runs top to bottom (at a reduced number of steps)."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.py")))


def test_there_are_colabs():
  assert COLABS


@pytest.mark.parametrize("path", COLABS, ids=os.path.basename)
def test_colab_runs(path):
  env = dict(os.environ, REWEIGHT_COLAB_STEPS="20", MPLBACKEND="Agg")
  proc = subprocess.run([sys.executable, path], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
