"""Runs an experiment from a config: ``python -m reweight.main --config=configs/default.py
--workdir=DIR``. Override any field on the command line: ``--config.steps=500``.

Devices: ``--config.mesh="data:4,fsdp:2"`` trains on a 2-D mesh, the batch split over both
axes and the parameters, optimizer and weighting state over ``fsdp``; the numbers are those
of one device (the default ``"data"`` puts every device on the data axis).

Preemption: on SIGTERM the run in progress finishes its step, is checkpointed at that step,
and the program exits with status 143 (128 + SIGTERM) and a one-line message on stderr.
Running the same command again resumes it and ends with the table of an uninterrupted run.

Compilation: compiled steps are kept in JAX's persistent compilation cache
(``--compilation_cache_dir``, default ``~/.cache/reweight/jax``; ``--nocompilation_cache``
turns it off), so a rerun, a resumed run or another experiment with the same steps skips
compiling.

Several processes (hosts): start the same command on each, adding
``--coordinator_address=HOST:PORT --num_processes=N --process_id=K`` (K = 0 on the host at
HOST). Every process trains every run on its share of the devices and reads only its rows
of each global batch; process 0 writes the tables, plots and metrics, and all write the
orbax checkpoints together. On CPU the processes talk through gloo collectives. The numbers
are those of one process with all the devices.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from reweight import parallel
from reweight.train import experiment, loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py",
                                          "Path to an ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Where runs, tables and plots go.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, to train on several processes "
    "(with --num_processes and --process_id); unset: one process.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes train.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process, in [0, num_processes).")
_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "Keep compiled steps in JAX's persistent compilation cache, "
    "so a rerun or a resumed run skips compiling (--nocompilation_cache: off).")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "Where the compilation cache lives (default "
    "$REWEIGHT_CACHE_DIR/jax, else ~/.cache/reweight/jax).")


def compilation_cache_dir(flag_value: str | None) -> str:
  """The cache directory: the flag, else ``$REWEIGHT_CACHE_DIR/jax``, else
  ``~/.cache/reweight/jax``."""
  if flag_value:
    return flag_value
  base = os.environ.get("REWEIGHT_CACHE_DIR") or os.path.join(os.path.expanduser("~"),
                                                                ".cache", "reweight")
  return os.path.join(base, "jax")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  config = _CONFIG.value
  if _COORDINATOR.value is not None:
    parallel.initialize_processes(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _CACHE.value:  # every compilation is kept, however short (JAX's default skips < 1 s)
    jax.config.update("jax_compilation_cache_dir", compilation_cache_dir(_CACHE_DIR.value))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    with loop.Preemption() as preemption:  # puts the previous SIGTERM handler back after
      out = experiment.run(config, _WORKDIR.value, preemption=preemption)
  except loop.Preempted as e:
    print(f"\nreweight.main: {e}", file=sys.stderr, flush=True)
    sys.exit(loop.PREEMPTED_EXIT_CODE)
  if jax.process_index() != 0:
    return
  print()
  print(f"{config.dataset}, {100 * config.noise_rate:.0f}% {config.noise_kind} label noise, "
        f"{config.model}, {config.steps} steps, seeds {tuple(config.seeds)}")
  print(out["table"])
  print("\nplots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  app.run(main)
