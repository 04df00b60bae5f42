"""Smoke tests of `benchmarks/gpu.py` on a CPU (the GPU numbers themselves need a GPU).

Every run forces ``JAX_PLATFORMS=cpu``, so nothing here needs or uses a GPU.
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu  # noqa: E402


def _run(*args, out=None, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  cmd = [sys.executable, SCRIPT, *args, *(("--out", str(out)) if out else ())]
  return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                        timeout=timeout, check=False)


def _check_results(out_dir, only=""):
  with open(os.path.join(out_dir, "gpu.json")) as f:
    result = json.load(f)
  expected = gpu.expected_keys(only)
  assert sorted(result["ratios"]) == sorted(expected)
  for key in expected:
    ratio = result["ratios"][key]["ratio"]
    assert ratio is not None and math.isfinite(ratio) and ratio > 0, (key, ratio)
  assert result["skipped"] == []
  assert result["meta"]["tiny"] and result["meta"]["device_kind"]
  return result


def test_refuses_to_run_without_a_gpu(tmp_path):
  out = _run(out=tmp_path, timeout=120)
  assert out.returncode == 2, out.stderr
  assert "no GPU" in out.stderr and "--allow-cpu" in out.stderr
  assert not (tmp_path / "gpu.json").exists()


def test_every_benchmark_ratio_is_covered():
  # Every weighting of overhead.py and meta_cost.py, and LoRA (peft.py, compile_time.py).
  import meta_cost
  import overhead

  names = {*overhead.weightings(), *meta_cost.weightings(), "lora"}
  keys = set(gpu.expected_keys())
  for name in names:
    assert {f"step/{name}", f"flops/{name}", f"first_step/{name}"} <= keys, name
  assert set(gpu.PEFT_KEYS) <= keys
  assert {"sampler/update_every=1", "sampler/update_every=10"} <= keys
  with pytest.raises(ValueError, match="unknown variants"):
    gpu.variants("nope")


def test_tiny_cpu_smoke(tmp_path):
  only = "uniform,lora"
  out = _run("--allow-cpu", "--tiny", "--only", only, out=tmp_path)
  assert out.returncode == 0, out.stderr
  result = _check_results(tmp_path, only)
  assert "| `lora` |" in out.stdout and result["meta"]["device_kind"] in out.stdout


@pytest.mark.slow
def test_tiny_cpu_every_ratio(tmp_path):
  out = _run("--allow-cpu", "--tiny", out=tmp_path, timeout=1200)
  assert out.returncode == 0, out.stderr
  _check_results(tmp_path)
