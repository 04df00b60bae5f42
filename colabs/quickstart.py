# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # reweight quickstart: loss-based reweighting under label noise
#
# Runs top to bottom on a CPU in about a minute. We corrupt 40% of the digits training
# labels, train a small MLP with plain cross-entropy and with `extremes` loss-based
# reweighting, and look at where the weight goes.
#
# In Colab: `!pip install git+<this repository>` first.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import reweight
from reweight import data
from reweight.train.models import functional, make_model

STEPS = int(os.environ.get("REWEIGHT_COLAB_STEPS", "600"))

# %% [markdown]
# ## Data: digits with 40% symmetric label noise (ground truth kept in `is_noisy`)

# %%
train = data.label_noise(data.load("digits", "train"), "symmetric", 0.4, num_classes=10, seed=0)
test = data.load("digits", "test")
print({k: v.shape for k, v in train.items()}, "noisy:", train["is_noisy"].mean())

# %% [markdown]
# ## A per-example loss and a weighted loss

# %%
model = functional(make_model("mlp", seed=0, in_features=64, hidden=(256,), num_classes=10))


def per_example_loss(params, batch):
  logits = model.apply(params, batch["x"])
  return reweight.losses.softmax_cross_entropy(logits, batch["label"])


def train_with(weighting):
  loss_fn = reweight.weighted(per_example_loss, weighting)
  optimizer = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state, wstate, batch, t):
    (loss, (wstate, info)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch, wstate, step=t)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, wstate, info["weights"]

  params, wstate = model.params, weighting.init()
  opt_state = optimizer.init(params)
  it = data.train_iterator(train, batch_size=128, seed=0)
  noisy_share = []
  for t in range(STEPS):
    b = next(it)
    batch = {"x": b["x"], "label": b["label"]}
    params, opt_state, wstate, w = step(params, opt_state, wstate, batch, t)
    noisy_share.append(float(jnp.sum(w * b["is_noisy"]) / jnp.sum(w)))
  acc = float(jnp.mean(jnp.argmax(model.apply(params, test["x"]), -1) == test["label"]))
  return acc, np.array(noisy_share)


# %% [markdown]
# ## Uniform vs `extremes` (r = 0.4, uniform for the first 100 steps)

# %%
results = {
    "uniform": train_with(reweight.uniform()),
    "extremes": train_with(reweight.sample.loss_based("extremes", r=0.4, warmup_steps=100)),
}
for name, (acc, share) in results.items():
  print(f"{name:10s} test accuracy {acc:.3f}   weight on noisy examples (last 100 steps) "
        f"{share[-100:].mean():.3f}")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for name, (_, share) in results.items():
  ax.plot(np.convolve(share, np.ones(20) / 20, mode="valid"), label=name)
ax.axhline(0.4, color="gray", ls=":", label="noisy share of the data")
ax.set_xlabel("step")
ax.set_ylabel("share of weight on noisy labels")
ax.legend()
plt.show()
