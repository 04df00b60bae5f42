# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # reweight quickstart: a weighted loss in your own optax loop
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/reweight-dev/reweight/blob/main/colabs/quickstart.ipynb)
#
# `reweight` turns a *per-example* loss into a *weighted* loss: a `Weighting` looks at the
# batch's losses and returns one weight per example (mean one), and
# `reweight.weighted(per_example_loss, weighting)` is an ordinary function you can
# differentiate with `jax.value_and_grad` inside your own training step.
#
# Here: digits with 40% of the training labels flipped at random, a small Flax MLP, Adam.
# We compare uniform weights (plain cross-entropy) with the `extremes` loss-based weighting
# and look at how much of the weight lands on the corrupted examples.
# About a minute on a CPU.

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # in Colab only: install reweight from its repository
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "git+https://github.com/reweight-dev/reweight"], check=True)

# %%
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import reweight
from reweight import data

STEPS = int(os.environ.get("REWEIGHT_COLAB_STEPS", "600"))  # tests set a small value

# %% [markdown]
# ## Data
# `data.label_noise` corrupts 40% of the labels and keeps the ground truth in `is_noisy`,
# which only the plots below use.

# %%
train = data.label_noise(data.load("digits", "train"), "symmetric", 0.4, num_classes=10, seed=0)
test = data.load("digits", "test")
print({k: v.shape for k, v in train.items()})
print("share of noisy labels:", train["is_noisy"].mean().round(3))

# %% [markdown]
# ## Your model and your per-example loss
# Any model works; the loss must return one value per example, shape `[B]`.

# %%
class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256)(x))
    return nn.Dense(10)(x)


model = MLP()
init_params = model.init(jax.random.key(0), train["x"][:1])


def per_example_loss(params, batch):
  logits = model.apply(params, batch["x"])
  return reweight.losses.softmax_cross_entropy(logits, batch["label"])


def accuracy(params, ds):
  return float(jnp.mean(jnp.argmax(model.apply(params, ds["x"]), -1) == ds["label"]))

# %% [markdown]
# ## The training step
# `reweight.weighted` returns `loss_fn(params, batch, weighting_state, **kw) ->
# (loss, (new_weighting_state, info))`. The weighting state is a small pytree that you
# carry along like the optimizer state; `info` holds the weights and diagnostics
# (effective sample size, max weight, ...).

# %%
def train_with(weighting, steps=STEPS):
  loss_fn = reweight.weighted(per_example_loss, weighting)
  optimizer = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state, wstate, batch, t):
    (loss, (wstate, info)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch, wstate, step=t)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, wstate, info

  params, wstate = init_params, weighting.init()
  opt_state = optimizer.init(params)
  batches = data.train_iterator(train, batch_size=128, seed=0)
  log = {"noisy_share": [], "ess": []}
  for t in range(steps):
    b = next(batches)
    batch = {"x": b["x"], "label": b["label"]}
    params, opt_state, wstate, info = step(params, opt_state, wstate, batch, t)
    w = np.asarray(info["weights"])
    log["noisy_share"].append(float((w * b["is_noisy"]).sum() / w.sum()))
    log["ess"].append(float(reweight.effective_sample_size(info["weights"])))
  return accuracy(params, test), {k: np.array(v) for k, v in log.items()}

# %% [markdown]
# ## Uniform vs `extremes`
# `extremes` (Sow et al. 2025) keeps the weights uniform for the first 100 steps, then
# moves weight to the examples with the lowest and highest losses (`r=0.4` sets how far).

# %%
results = {
    "uniform (cross-entropy)": train_with(reweight.uniform()),
    "extremes": train_with(reweight.sample.loss_based("extremes", r=0.4, warmup_steps=100)),
}
for name, (acc, log) in results.items():
  last = max(1, len(log["noisy_share"]) // 5)
  print(f"{name:24s} test accuracy {acc:.3f}   weight on noisy labels (last 20% of steps) "
        f"{log['noisy_share'][-last:].mean():.3f}")

# %%
def smooth(y, n=20):
  """Moving average over n steps, plotted at the last step of each window."""
  n = min(n, len(y))
  return np.arange(n - 1, len(y)), np.convolve(y, np.ones(n) / n, mode="valid")


fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for name, (_, log) in results.items():
  axes[0].plot(*smooth(log["noisy_share"]), label=name)
  axes[1].plot(*smooth(log["ess"]), label=name)
axes[0].axhline(0.4, color="gray", ls=":", label="noisy share of the data")
axes[0].set(xlabel="step", ylabel="share of the batch's weight\n(20-step average)",
            title="Weight on examples with a corrupted label")
axes[1].set(xlabel="step", ylabel="effective sample size (of 128)",
            title="How concentrated the weights are")
for ax in axes:
  ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Uniform weights put 40% of the weight on corrupted labels, as the data does; `extremes`
# moves weight away from them once its warmup ends. Next: `noisy_labels.ipynb` learns the
# weights from a small clean set (L2RW, Meta-Weight-Net).
