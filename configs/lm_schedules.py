"""LR schedules on a small byte-level Transformer LM over Python stdlib source; annealing law.

python experiments/lm_schedules.py --config=configs/lm_schedules.py \
    --workdir=workdir/lm_schedules
"""

import ml_collections

WSD_SHAPES = ("linear", "cosine", "1-sqrt", "square", "exp", "inverse")


def get_config():
  c = ml_collections.ConfigDict()
  # Data: the first `corpus_bytes` of the stdlib's .py files (crc32 order), 1 file in 10
  # for validation; validation loss on `eval_windows` fixed windows of `seq_len` bytes.
  c.corpus_bytes = 1 << 20
  c.validation_every = 10
  c.max_file_bytes = 65536
  c.seq_len = 64
  # The held-out files alternate between validation (even) and test (odd).
  c.eval_windows = 128  # validation windows, evaluated every `eval_every` steps
  c.test_windows = None  # every window of the test files, evaluated once at the end

  c.model_kwargs = ml_collections.ConfigDict(
      {"d_model": 64, "num_heads": 4, "num_layers": 2, "max_len": 64})
  c.learning_rate = 1e-2  # AdamW peak LR (b2 = 0.95) when `lr_grid` holds one value
  # The peak LR is chosen on validation: each peak of the grid runs the selection schedules
  # for `lr_select_seed`; the lowest mean final validation loss wins.
  c.lr_grid = (3e-3, 1e-2)  # 3e-2 not tried (CPU budget)
  c.lr_select_schedules = ("cosine", "wsd/linear")  # the two decay families compared
  c.lr_select_seed = 0
  c.weight_decay = 0.1
  c.steps = 800
  c.batch_size = 16
  c.warmup_steps = 40
  c.final_ratio = 0.01  # every decay ends at 1% of the peak (exp / inverse need > 0)
  c.decay_fraction = 0.2  # WSD: decay over the last 20% of the steps

  c.schedules = ml_collections.ConfigDict({
      "constant": {"kind": "constant"},
      "cosine": {"kind": "cosine"},
      "linear": {"kind": "linear"},
      **{f"wsd/{shape}": {"kind": "wsd", "shape": shape} for shape in WSD_SHAPES},
      # Refined from the gradient norms of the linear-decay run (l1 norms for Adam).
      "refined": {"kind": "refined", "source": "linear"},
  })
  c.grad_norm = "l1"
  c.median_fraction = 0.1

  # LR-annealing law: fit on these runs' validation curves, predict the others.
  c.annealing_fit = ("constant", "cosine")
  c.annealing_lam = 0.999  # the paper's lambda (its runs are 10-100x longer than ours)
  c.annealing_fit_from = 100  # leave out the first 100 updates (warmup and fast transient)

  c.eval_every = 25
  c.seeds = (0, 1, 2, 3, 4)  # 5 seeds: the gaps between decays are small
  return c
