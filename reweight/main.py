"""Runs an experiment from a config: ``python -m reweight.main --config=configs/default.py
--workdir=DIR``. Override any field on the command line: ``--config.steps=500``.

Devices: ``--config.mesh="data:4,fsdp:2"`` trains on a 2-D mesh, the batch split over both
axes and the parameters, optimizer and weighting state over ``fsdp``; the numbers are those
of one device (the default ``"data"`` puts every device on the data axis).

Preemption: on SIGTERM the run in progress finishes its step, is checkpointed at that step,
and the program exits with status 143 (128 + SIGTERM) and a one-line message on stderr.
Running the same command again resumes it and ends with the table of an uninterrupted run.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from reweight.train import experiment, loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py",
                                          "Path to an ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Where runs, tables and plots go.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  config = _CONFIG.value
  try:
    with loop.Preemption() as preemption:  # puts the previous SIGTERM handler back after
      out = experiment.run(config, _WORKDIR.value, preemption=preemption)
  except loop.Preempted as e:
    print(f"\nreweight.main: {e}", file=sys.stderr, flush=True)
    sys.exit(loop.PREEMPTED_EXIT_CODE)
  print()
  print(f"{config.dataset}, {100 * config.noise_rate:.0f}% {config.noise_kind} label noise, "
        f"{config.model}, {config.steps} steps, seeds {tuple(config.seeds)}")
  print(out["table"])
  print("\nplots: " + ", ".join(out["plots"]))


if __name__ == "__main__":
  app.run(main)
