"""``import reweight`` stays fast: heavy optional dependencies are imported on first use.

No timings are asserted (they depend on the machine); each test imports in a fresh
interpreter and checks which modules ended up in ``sys.modules``.
`benchmarks/import_time.py` measures the time itself.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("scipy", "matplotlib", "tensorflow_datasets", "tensorflow")


def _loaded_after(code: str) -> list[str]:
  """The ``HEAVY`` modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300, check=False)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import reweight",
    "import reweight.data",
    "import reweight.train",
])
def test_import_does_not_load_heavy_dependencies(code):
  assert _loaded_after(code) == []


def test_plots_import_matplotlib_on_first_figure_only():
  assert "matplotlib" not in _loaded_after("import reweight.train.plots")


def test_lazy_names_still_resolve():
  # The TFDS-backed names of reweight.data are imported on first access, and work.
  code = ("import reweight.data as d\n"
          "assert d.DATASETS == ('digits', 'mnist1d') and d.num_classes('digits') == 10\n"
          "from reweight.data import Digits, Mnist1d, builder, load\n"
          "assert d.datasets.load is load and d.digits.Digits is Digits\n"
          "assert {'Digits', 'load', 'datasets'} <= set(dir(d))\n"
          "import reweight.annealing_law, reweight.schedules")
  assert "tensorflow_datasets" in _loaded_after(code)
