"""Three kinds of weighting on one small job: the check that scaling changes no number.

A sample weighting (loss-based), a meta weighting (L2RW, with a clean meta set) and a group
weighting (Group DRO over the observed classes) on digits with 40% symmetric label noise.
`tests/test_multihost.py` runs it on 2 processes x 4 CPU devices and on 1 process x 8
devices and compares the metrics and the final parameters; the README's "Scaling" section
uses it as the multi-host example:

  python -m reweight.main --config=configs/scaling.py --workdir=workdir/scaling \\
      --coordinator_address=localhost:1234 --num_processes=2 --process_id=0   # and =1
"""

import ml_collections

from configs import default


def get_config():
  c = default.get_config()
  c.steps = 200
  c.eval_every = 50
  c.checkpoint_every = 100
  c.seeds = (0,)
  c.meta_per_class = 5  # a clean, balanced meta set of 50 examples for L2RW
  c.group_by = "label"  # Group DRO's groups: the observed class
  c.methods = ml_collections.ConfigDict({
      "loss_based/linupper": {"weighting": "loss_based", "weighting_kwargs": {
          "strategy": "linupper", "r": 1.0}},
      "l2rw": {"weighting": "l2rw"},
      "group_dro": {"weighting": "group_dro", "weighting_kwargs": {
          "num_groups": 10, "step_size": 0.01}},
  })
  return c
