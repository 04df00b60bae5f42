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
# # PEFT on your own Flax model: LoRA, DoRA, PiSSA, and merging
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/reweight-dev/reweight/blob/main/colabs/peft.ipynb)
#
# `reweight.reparam` works on parameter **pytrees**, so it needs nothing from your model
# but its parameters: a `Reparam` splits them into a small `trainable` tree (the adapters)
# and a `frozen` one, and `apply(trainable, frozen)` (the same as `merge`) gives back
# parameters of the original structure. Targets are a regular expression over the
# '/'-joined parameter paths.
#
# Here: a small Flax NNX MLP is pretrained on digits, then adapted to **mirrored** digits
# (each 8×8 image flipped left to right) by full fine-tuning, LoRA, DoRA and PiSSA, all of
# rank 4. About a minute on a CPU.

# %%
import subprocess
import sys

if "google.colab" in sys.modules:  # in Colab only: install reweight from its repository
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "git+https://github.com/reweight-dev/reweight"], check=True)

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import reweight
from reweight import data, reparam

STEPS = int(os.environ.get("REWEIGHT_COLAB_STEPS", "400"))  # tests set a small value

# %% [markdown]
# ## Your model (Flax NNX) and the two tasks

# %%
class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden1 = nnx.Linear(64, 128, rngs=rngs)
    self.hidden2 = nnx.Linear(128, 128, rngs=rngs)
    self.head = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.hidden1(x))
    x = jax.nn.relu(self.hidden2(x))
    return self.head(x)


def mirrored(ds):
  return {**ds, "x": ds["x"].reshape(-1, 8, 8)[:, :, ::-1].reshape(-1, 64)}


train, test = data.load("digits", "train"), data.load("digits", "test")
new_train, new_test = mirrored(train), mirrored(test)

# %% [markdown]
# Split the model into its static graph and its parameter state. Every function below sees
# plain pytrees; `nnx.merge(graphdef, params)` rebuilds a model from them.

# %%
graphdef, pretrained = nnx.split(MLP(nnx.Rngs(0)), nnx.Param)


def logits_of(params, x):
  return nnx.merge(graphdef, params)(x)


def accuracy(params, ds):
  return float(jnp.mean(jnp.argmax(logits_of(params, ds["x"]), -1) == ds["label"]))


def fit(loss_of, trainable, optimizer, ds, steps, eval_fn, eval_every=20):
  """A plain optax loop over `trainable`; `eval_fn(trainable)` is logged along the way."""
  opt_state = optimizer.init(trainable)

  @jax.jit
  def step(trainable, opt_state, batch):
    grads = jax.grad(loss_of)(trainable, batch)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state

  batches = data.train_iterator(ds, batch_size=64, seed=0)
  curve = []
  for t in range(steps):
    b = next(batches)
    trainable, opt_state = step(trainable, opt_state, {"x": b["x"], "label": b["label"]})
    if (t + 1) % eval_every == 0 or t + 1 == steps:
      curve.append((t + 1, eval_fn(trainable)))
  return trainable, np.array(curve)

# %% [markdown]
# ## Pretraining on the original digits

# %%
def ce(params, batch):
  return reweight.losses.softmax_cross_entropy(logits_of(params, batch["x"]),
                                               batch["label"]).mean()


pretrained, _ = fit(ce, pretrained, optax.adam(1e-3), train, STEPS,
                    lambda p: accuracy(p, test))
print(f"pretrained: accuracy {accuracy(pretrained, test):.3f} on digits, "
      f"{accuracy(pretrained, new_test):.3f} on mirrored digits")

# %% [markdown]
# ## Adapting to mirrored digits
# NNX parameter paths end in `/value` (`hidden1/kernel/value`); target regexes may leave
# that component out, so `".*kernel"` selects the three kernels. `reparam.init_train` splits
# the parameters and initializes the optimizer on the trainable part only.

# %%
print("LoRA targets:", reparam.select(pretrained, ".*kernel"))

adapters = {
    "LoRA": reparam.lora(4, 8.0, ".*kernel"),
    "DoRA": reparam.dora(4, 8.0, ".*kernel"),
    "PiSSA": reparam.lora(4, 8.0, ".*kernel", init="pissa"),  # top-4 singular directions
}
n_params = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))

runs = {}
_, curve = fit(ce, pretrained, optax.adam(1e-3), new_train, STEPS,
               lambda p: accuracy(p, new_test))
runs["full fine-tuning"] = (n_params(pretrained), curve, None)

for name, rp in adapters.items():
  trainable, frozen, _ = reparam.init_train(rp, pretrained, jax.random.key(1), optax.adam(3e-3))
  loss_of = lambda tr, batch, rp=rp, frozen=frozen: ce(rp.apply(tr, frozen), batch)
  eval_fn = lambda tr, rp=rp, frozen=frozen: accuracy(rp.apply(tr, frozen), new_test)
  trainable, curve = fit(loss_of, trainable, optax.adam(3e-3), new_train, STEPS, eval_fn)
  runs[name] = (n_params(trainable), curve, (rp, trainable, frozen))

for name, (n, curve, _) in runs.items():
  print(f"{name:18s} {n:6d} trainable parameters   mirrored-digits accuracy {curve[-1, 1]:.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
ax.axhline(accuracy(pretrained, new_test), color="gray", ls=":", label="pretrained, no adaptation")
for name, (n, curve, _) in runs.items():
  ax.plot(curve[:, 0], curve[:, 1], label=f"{name} ({n:,} trainable)")
ax.set(xlabel="fine-tuning step", ylabel="test accuracy on mirrored digits",
       title="Adapting a pretrained NNX MLP (rank 4 adapters)")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Rank-4 adapters train about a tenth of the parameters. At the default size they end
# within about a point of full fine-tuning here; PiSSA starts from the top singular
# directions of the pretrained kernels (its first evaluation is the highest) and ends a
# little lower at this learning rate.

# %% [markdown]
# ## Merging
# `reparam.merge(rp, trainable, frozen)` is `rp.apply`: parameters of the original
# structure. Build a plain NNX model from them with `nnx.merge` and the adapters are gone:
# same outputs, no extra parameters, no extra compute.

# %%
rp, trainable, frozen = runs["LoRA"][2]
merged = reparam.merge(rp, trainable, frozen)
model = nnx.merge(graphdef, merged)  # a plain MLP holding the merged weights
adapted = logits_of(rp.apply(trainable, frozen), new_test["x"])
print("merged model reproduces the adapted one:",
      bool(jnp.allclose(model(new_test["x"]), adapted, atol=1e-5)))
print("parameters:", n_params(nnx.state(model, nnx.Param)), "(as many as before)")

# LoRA is additive, so it can also be taken out again: unmerge gives back the frozen base.
base = reparam.unmerge(rp, trainable, merged)
print("unmerge recovers the pretrained weights:", all(
    bool(jnp.allclose(a, b, atol=1e-5)) for a, b in zip(jax.tree_util.tree_leaves(base),
                                                        jax.tree_util.tree_leaves(pretrained))))

# %% [markdown]
# The same calls work on Flax linen parameters (`model.init(...)` returns a dict; paths
# look like `params/Dense_0/kernel`) and on any other pytree. The library also has AdaLoRA,
# EVA, Bone/MiSS and more in `reweight.reparam`; `experiments/peft.py` compares them with
# Hugging Face PEFT.
