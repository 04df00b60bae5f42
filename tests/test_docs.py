"""The API reference in docs/ builds offline from the docstrings (Sphinx autodoc + napoleon)."""

import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("sphinx", reason="building docs/ needs sphinx (the [test] extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def test_docs_config_needs_no_network():
  with open(os.path.join(DOCS, "conf.py")) as f:
    conf = f.read()
  assert "intersphinx" not in conf  # the only stock extension that fetches at build time


def test_docs_build(tmp_path):
  src = tmp_path / "docs"  # a copy, so the generated per-module pages stay out of the tree
  shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("_build", "api"))
  out = tmp_path / "html"
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "1", str(src), str(out)],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "autodoc: failed" not in proc.stderr, (
      proc.stderr[-3000:])
  for page, names in {
      "index.html": ["API reference"],
      "api/reweight.base.html": ["weighted", "Weighting"],
      "api/reweight.sample.meta.html": ["l2rw", "meta_weight_net"],
      "api/reweight.reparam.lora.html": ["lora", "dora"],
      "api/reweight.schedules.html": ["wsd_s"],
  }.items():
    html = (out / page).read_text()
    for name in names:
      assert name in html, f"{name} missing from {page}"
