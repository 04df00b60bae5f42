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
# # Noisy labels: learning example weights from a small clean set
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/reweight-dev/reweight/blob/main/colabs/noisy_labels.ipynb)
#
# With 40% of the training labels corrupted, cross-entropy (CE) fits the wrong labels too.
# Meta reweighting uses a small **clean** meta set (10 examples per class, taken out of the
# training split before the labels are corrupted) to decide, at every step, how much each
# training example counts:
#
# * **L2RW** (Ren et al. 2018): an example's weight is how much one step on it would lower
#   the loss of the meta batch (zero if it would raise it).
# * **Meta-Weight-Net** (Shu et al. 2019): a tiny network maps an example's loss to its
#   weight and is itself trained so that the lookahead step lowers the meta loss.
#
# Both read the meta batch from the `meta_batch=` keyword of the weighted loss.
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

STEPS = int(os.environ.get("REWEIGHT_COLAB_STEPS", "500"))  # tests set a small value

# %% [markdown]
# ## Data: a clean meta set, then 40% symmetric label noise on the rest

# %%
rest, meta = data.split_meta(data.load("digits", "train"), per_class=10, seed=0)
train = data.label_noise(rest, "symmetric", 0.4, num_classes=10, seed=0)
test = data.load("digits", "test")
meta_batch = {"x": meta["x"], "label": meta["label"]}  # the same keys as a training batch
print(f"train {len(train['label'])} examples ({train['is_noisy'].mean():.0%} noisy), "
      f"clean meta set {len(meta['label'])}, test {len(test['label'])}")

# %% [markdown]
# ## Model and per-example loss

# %%
class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(256)(x)))


model = MLP()
init_params = model.init(jax.random.key(0), train["x"][:1])


def per_example_loss(params, batch):
  logits = model.apply(params, batch["x"])
  return reweight.losses.softmax_cross_entropy(logits, batch["label"])


def accuracy(params, ds):
  return float(jnp.mean(jnp.argmax(model.apply(params, ds["x"]), -1) == ds["label"]))

# %% [markdown]
# ## One loop for every weighting
# The only difference from a plain weighted loss is the keyword `meta_batch=meta_batch`:
# `reweight.weighted` hands it to the weighting together with `params`, the per-example
# loss function and the batch. Weightings that do not need it (here `uniform`) ignore it.

# %%
def train_with(weighting, steps=STEPS, eval_every=25):
  loss_fn = reweight.weighted(per_example_loss, weighting)
  optimizer = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, wstate, batch, t):
    (loss, (wstate, info)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch, wstate, step=t, meta_batch=meta_batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, wstate, info["weights"]

  params, wstate = init_params, weighting.init()
  opt_state = optimizer.init(params)
  batches = data.train_iterator(train, batch_size=100, seed=0)
  log = {"step": [], "test_acc": [], "noisy_share": []}
  for t in range(steps):
    b = next(batches)
    params, opt_state, wstate, w = step(
        params, opt_state, wstate, {"x": b["x"], "label": b["label"]}, t)
    w = np.asarray(w)
    log["noisy_share"].append(float((w * b["is_noisy"]).sum() / w.sum()))
    if (t + 1) % eval_every == 0 or t + 1 == steps:
      log["step"].append(t + 1)
      log["test_acc"].append(accuracy(params, test))
  last = {"weights": w, "is_noisy": b["is_noisy"], "wstate": wstate}
  return {k: np.array(v) for k, v in log.items()}, last


methods = {
    "CE (uniform)": reweight.uniform(),
    "L2RW": reweight.sample.l2rw(),
    "Meta-Weight-Net": reweight.sample.meta_weight_net(hidden=100, inner_lr=0.1),
}
results = {name: train_with(w) for name, w in methods.items()}
for name, (log, _) in results.items():
  print(f"{name:16s} final test accuracy {log['test_acc'][-1]:.3f}   "
        f"weight on noisy labels (last 100 steps) {log['noisy_share'][-100:].mean():.3f}")

# %% [markdown]
# ## Accuracy, and where the weight went

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for name, (log, _) in results.items():
  axes[0].plot(log["step"], log["test_acc"], label=name)
  n = min(20, len(log["noisy_share"]))
  axes[1].plot(np.arange(n - 1, len(log["noisy_share"])),
               np.convolve(log["noisy_share"], np.ones(n) / n, mode="valid"), label=name)
axes[0].set(xlabel="step", ylabel="test accuracy", title="Test accuracy")
axes[1].axhline(train["is_noisy"].mean(), color="gray", ls=":", label="noisy share of the data")
axes[1].set(xlabel="step", ylabel="share of the batch's weight\n(20-step average)",
            title="Weight on examples with a corrupted label", ylim=(0, 0.75))
axes[0].legend(loc="lower center")
axes[1].legend(loc="upper right", ncol=2, fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# The weights of the last batch, split by whether the label was corrupted (the methods never
# see `is_noisy`):

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
for ax, name in zip(axes, ["L2RW", "Meta-Weight-Net"]):
  last = results[name][1]
  bins = np.linspace(0, max(last["weights"].max(), 1e-6), 25)
  ax.hist(last["weights"][~last["is_noisy"]], bins, alpha=0.6, label="clean label")
  ax.hist(last["weights"][last["is_noisy"]], bins, alpha=0.6, label="corrupted label")
  ax.set(xlabel="example weight (mean one)", ylabel="examples", title=f"{name}: last batch")
  ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Meta-Weight-Net's learned map from loss to weight (`weight_net_apply` on the net in its
# state). Corrupted labels have high losses; a map that falls with the loss down-weights them.

# %%
net = results["Meta-Weight-Net"][1]["wstate"].net
losses = jnp.linspace(0.0, 6.0, 100)
v = reweight.sample.meta.weight_net_apply(net, losses[:, None])
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(losses, np.ravel(v), label="V(loss), after training")
ax.set(xlabel="per-example loss", ylabel="weight net output V", title="Meta-Weight-Net")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Reading it: both meta methods move weight off the corrupted labels without ever seeing
# `is_noisy`. L2RW's weights are recomputed from scratch each step (noisy, with many
# zeros); Meta-Weight-Net learns one smooth map, here close to a threshold on the loss.
# Meta-Weight-Net's `inner_lr` is the lookahead step size α (0.1, as in
# `experiments/noisy_labels.py`); with a much smaller α its meta-gradient is too weak to
# move the net in a few hundred steps. The full comparison (more settings, seeds, robust
# losses) is `experiments/noisy_labels.py`.
