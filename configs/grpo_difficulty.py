"""GRPO on multi-digit addition with heavy-tailed difficulty: uniform vs Prompt-GDRO vs
Prompt+Rollout-GDRO at an equal rollout budget.

python experiments/grpo_difficulty.py --config=configs/grpo_difficulty.py \
    --workdir=workdir/grpo_difficulty

Prompt: two numbers of ``digits`` digits; answer: their sum, ``digits + 1`` digits.
Difficulty: the number of carries, 0 ... ``digits`` (the true groups, for the metrics).
The training pool draws difficulty c with probability proportional to ``tail ** c``
(heavy-tailed: most prompts easy, few hard).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.digits = 3
  c.tail = 0.3  # P(c carries) ∝ tail**c in the training pool
  c.train_prompts = 10000
  c.val_per_class = 300  # validation prompts per carry count (for every choice)
  c.test_per_class = 500  # test prompts per carry count (evaluated once)
  c.seeds = (0, 1, 2)

  c.model_kwargs = ml_collections.ConfigDict({"hidden": (256, 256)})
  # Supervised warm start on the pool's prompts with <= pretrain_max_carries carries (all of
  # them here: easy-only warm starts leave the hardest class at exactly 0%, see README).
  c.pretrain_max_carries = 3
  c.pretrain_steps = 400
  c.pretrain_lr = 3e-3
  c.pretrain_batch = 128

  # RL: every step draws `prompts_per_step` prompts and spends exactly
  # prompts_per_step * rollouts_per_prompt rollouts.
  c.steps = 300
  c.prompts_per_step = 32
  c.rollouts_per_prompt = 8
  c.clip_eps = 0.2
  c.learning_rates = (1e-3, 3e-3)  # chosen on validation for every method
  c.eval_every = 25

  # Online pass@k classifier (k + 1 groups, group 0 the hardest) and the GDRO knobs.
  c.k = 4
  c.classifier_ema = 0.5
  c.classifier_prior = 0.5
  c.step_sizes = (0.01, 0.05, 0.2)  # prompt_gdro step size, chosen on validation
  c.emas = (0.5, 0.9)  # prompt_gdro EMA, chosen on validation
  c.exploration = 0.2
  c.min_rollouts = 2
  c.max_rollouts = 16
  c.rollout_objective = "informative"

  c.methods = ("grpo", "prompt_gdro", "prompt_rollout_gdro")
  # Paired per-seed differences (first − second), each with a 95% t-interval.
  c.comparisons = (("prompt_gdro", "grpo"), ("prompt_rollout_gdro", "grpo"),
                   ("prompt_rollout_gdro", "prompt_gdro"))
  return c
