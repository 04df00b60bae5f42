#!/usr/bin/env bash
# GPU numbers: every ratio of benchmarks/ at GPU sizes (Transformer d=1024, sequence 512,
# batch 128, bfloat16) in one run of at most 8 minutes on one GPU.
#
#   benchmarks/gpu.sh [options of benchmarks/gpu.py, e.g. --batch 256 --d-model 512]
#
# Writes benchmarks/results/gpu.json and prints a Markdown table headed by the device name.
# Exits 2 at once when JAX sees no GPU (benchmarks/gpu.sh --allow-cpu --tiny is a smoke
# test of the script on a CPU), 3 when the time budget cut some variants, 124 when the
# 8-minute limit stopped it. PYTHON overrides the interpreter (default: the repository's
# .venv if there is one, else python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# One process owns the GPU: let XLA take most of its memory up front (its default), and
# keep the persistent compilation cache out of the first-step times (gpu.py turns it off).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

status=0
timeout --signal=TERM --kill-after=10 480 "$PYTHON" benchmarks/gpu.py "$@" || status=$?
if [[ $status -eq 124 ]]; then
  echo "benchmarks/gpu.sh: stopped after 8 minutes; lower --budget-s or the sizes" >&2
fi
exit "$status"
