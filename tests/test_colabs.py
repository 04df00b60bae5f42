"""Every notebook in colabs/ runs top to bottom, and each .ipynb matches its jupytext .py.

The notebooks run with ``REWEIGHT_COLAB_STEPS`` small, in a Jupyter kernel started from this
interpreter (a kernelspec written to a temporary directory, so a user's own ``python3``
kernel is never picked up).
"""

import glob
import os
import sys

import pytest

jupytext = pytest.importorskip("jupytext", reason="the colab tests need the [test] extra")
nbclient = pytest.importorskip("nbclient", reason="the colab tests need the [test] extra")
kernelspec = pytest.importorskip("ipykernel.kernelspec",
                                 reason="the colab tests need the [test] extra")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, "colabs")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLABS, "*.ipynb")))
SCRIPTS = sorted(glob.glob(os.path.join(COLABS, "*.py")))
NAMES = ("quickstart", "noisy_labels", "data_mixing", "peft", "schedules")
KERNEL = "reweight-test"


def _cells(path):
  return [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]


def test_every_notebook_is_there_and_paired():
  names = {os.path.splitext(os.path.basename(p))[0] for p in NOTEBOOKS}
  assert set(NAMES) <= names
  assert names == {os.path.splitext(os.path.basename(p))[0] for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_ipynb_in_sync_with_py(path):
  """Edit the .py, then `jupytext --sync colabs/<name>.py` (or `--to ipynb`)."""
  assert _cells(path) == _cells(path[:-3] + ".ipynb"), (
      f"{os.path.basename(path)} and its .ipynb differ: run `jupytext --sync {path}`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_first_cell_installs_only_in_colab(path):
  import tomllib

  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    url = tomllib.load(f)["project"]["urls"]["Repository"]
  code = [c for c in jupytext.read(path).cells if c.cell_type == "code"][0].source
  assert '"google.colab" in sys.modules' in code and f"git+{url}" in code


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
  root = tmp_path_factory.mktemp("jupyter")
  kernelspec.write_kernel_spec(
      str(root / "kernels" / KERNEL),
      overrides={"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                          "{connection_file}"], "display_name": "reweight tests"})
  mp = pytest.MonkeyPatch()
  mp.setenv("JUPYTER_PATH", str(root))
  mp.setenv("REWEIGHT_COLAB_STEPS", "20")
  mp.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
  yield KERNEL
  mp.undo()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, kernel_name):
  nb = jupytext.read(path)
  for cell in nb.cells:
    if cell.cell_type == "code":
      cell.outputs = []
  client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=300,
                                   resources={"metadata": {"path": COLABS}})
  client.execute()  # raises CellExecutionError on the first failing cell
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert images, "every notebook shows at least one plot"
