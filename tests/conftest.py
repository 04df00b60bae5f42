"""Shared test setup: datasets are built once per session into a temporary directory."""

import os
import tempfile

# Built datasets go to a fresh directory for the whole session (never the user's ~).
os.environ.setdefault("REWEIGHT_DATA_DIR", tempfile.mkdtemp(prefix="reweight-tfds-"))
# The main job's persistent compilation cache too (subprocesses inherit it).
os.environ.setdefault("REWEIGHT_CACHE_DIR", tempfile.mkdtemp(prefix="reweight-cache-"))
