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

Errors of the command line or config (an unknown ``--config.x`` field or a bad value, an
unknown method, loss or weighting name, a workdir holding runs of another config) print one
line on stderr naming the field and the valid choices, and exit with status 2. Rerunning
into a workdir whose runs were made with another config is refused; ``--overwrite`` deletes
those runs instead (or use a new ``--workdir``). A run stopped by a non-finite loss or
gradient (see ``config.skip_nonfinite``) or by ``config.check_inputs`` prints one line naming
the step and exits with status 1.
"""

import difflib
import os
import runpy
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
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete the runs of --workdir made with a different config (they "
    "are refused otherwise) and run them again.")
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


USAGE_EXIT_CODE = 2  # a bad command line or config, as argparse


def _fail(message: str):
  print(f"reweight.main: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT_CODE)


def _override_problem(argv: list[str], error: str) -> str | None:
  """A one-line account of the first ``--config.x=v`` naming no field of the config file,
  or of the override that ``error`` (absl's message) is about."""
  path = "configs/default.py"
  overrides = []
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      overrides.append(arg[len("--config."):].split("=", 1)[0])
  try:
    config = runpy.run_path(path.split(":", 1)[0])["get_config"]()
  except Exception:  # noqa: BLE001 - the flag's own error says more
    return None
  for override in overrides:
    node, done = config, []
    for part in override.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        where = "config." + ".".join(done) if done else "the config"
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return (f"--config.{override}: {where} has no field {part!r}; {hint}"
                f"valid: {', '.join(sorted(keys))}")
      node = node[part]
      done.append(part)
    if f"--config.{override}=" in error:
      detail = error.split(": ", 1)[-1]
      return (f"--config.{override}: bad value ({detail}); config.{override} is a "
              f"{type(node).__name__}, default {node!r}")
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad ``--config.x`` override or value as one line and exit
  status 2 instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - every parse error becomes one line
    message = " ".join(str(e).split())
    problem = _override_problem(argv, message) or message
    _fail(problem)


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
      out = experiment.run(config, _WORKDIR.value, preemption=preemption,
                           overwrite=_OVERWRITE.value)
  except loop.Preempted as e:
    print(f"\nreweight.main: {e}", file=sys.stderr, flush=True)
    sys.exit(loop.PREEMPTED_EXIT_CODE)
  except experiment.ConfigError as e:
    _fail(str(e))
  except (loop.NonFiniteError, loop.InputCheckError) as e:  # one line, no traceback
    print(f"\nreweight.main: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if jax.process_index() != 0:
    return
  print()
  print(f"{config.dataset}, {100 * config.noise_rate:.0f}% {config.noise_kind} label noise, "
        f"{config.model}, {config.steps} steps, seeds {tuple(config.seeds)}")
  print(out["table"])
  print("\nplots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
