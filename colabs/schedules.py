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
# # Learning-rate schedules: WSD, WSD-S and the annealing law
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/reweight-dev/reweight/blob/main/colabs/schedules.ipynb)
#
# Every schedule in `reweight.schedules` is an `optax.Schedule` (`step -> value`), so it
# goes wherever optax takes a learning rate.
#
# * **WSD** (warmup-stable-decay): constant at the peak, then a short decay at the end.
# * **WSD-S**: one run that yields a decayed model for *several* budgets: it decays, keeps
#   the decayed weights as the budget-k model, jumps back to the peak and carries on.
# * **The annealing law** (Tissue et al. 2024): `L(s) = L0 + A·S1(s)^-α − C·S2(s)`, where
#   `S1` is the area under the schedule ("how far you travelled") and `S2` the annealing
#   area ("how much you cooled down"). Fit it on two runs, predict any other schedule.
#
# The task is a small student MLP learning a noisy teacher from fresh samples every step
# (infinite data, as in pretraining), so the loss floor is set by SGD noise, which is what
# decaying the learning rate removes. Under a minute on a CPU.

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

from reweight import annealing_law, schedules

T = int(os.environ.get("REWEIGHT_COLAB_STEPS", "800"))  # total steps; tests set a small value
PEAK = 0.1
# WSD-S budgets: the run spends each earlier decay on top of the stable phase, so a
# second budget of T minus the first decay (0.2 * T/2) makes the whole run T steps.
BUDGETS = [T // 2, T - round(0.2 * (T // 2))]

# %% [markdown]
# ## The schedules

# %%
scheds = {
    "constant": optax.constant_schedule(PEAK),
    "cosine": optax.cosine_decay_schedule(PEAK, T),
    "WSD (20% linear decay)": schedules.wsd(PEAK, T, decay_fraction=0.2),
    "WSD-S (budgets T/2, 0.9T)": schedules.wsd_s(PEAK, budgets=BUDGETS, decay_fraction=0.2,
                                                 final_ratio=0.0),
}
lrs = {name: np.array([float(s(t)) for t in range(T)]) for name, s in scheds.items()}
print("WSD-S decay windows:", schedules.wsd_s_boundaries(BUDGETS, decay_fraction=0.2))

fig, ax = plt.subplots(figsize=(7, 3))
for name, lr in lrs.items():
  ax.plot(lr, label=name)
ax.set(xlabel="step", ylabel="learning rate", title="Schedules")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## A task where annealing matters
# A noisy teacher (targets with noise of standard deviation 0.5, so the best possible loss
# is 0.25), a student MLP, plain SGD with batch 16, and the loss on a fixed held-out set,
# averaged over 8 data streams (`jax.vmap` trains the 8 copies at once) to tame the noise.

# %%
D = 16


class MLP(nn.Module):
  width: int = 64

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.tanh(nn.Dense(self.width)(x)))[:, 0]


teacher = MLP(width=8)
teacher_params = teacher.init(jax.random.key(42), jnp.ones((1, D)))


def sample(key, n):
  kx, kn = jax.random.split(key)
  x = jax.random.normal(kx, (n, D))
  return x, teacher.apply(teacher_params, x) + 0.5 * jax.random.normal(kn, (n,))


x_eval, y_eval = sample(jax.random.key(7), 4096)
student = MLP()
init_params = student.init(jax.random.key(0), jnp.ones((1, D)))


def mse(params, x, y):
  return jnp.mean((student.apply(params, x) - y) ** 2)


SEEDS = 8  # independent data streams, trained side by side with jax.vmap
every = max(1, T // 80)  # evaluate every `every` steps
steps = np.arange(every, T + 1, every) - 1  # eval at losses[t]: after t + 1 updates


def run(schedule):
  optimizer = optax.sgd(schedule)

  def step(params, opt_state, t, seed):
    x, y = sample(jax.random.fold_in(jax.random.key(seed), t), 16)
    grads = jax.grad(mse)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  step = jax.jit(jax.vmap(step, in_axes=(0, 0, None, 0)))
  evaluate = jax.jit(jax.vmap(lambda p: mse(p, x_eval, y_eval)))
  seeds = jnp.arange(SEEDS)
  params = jax.tree.map(lambda x: jnp.stack([x] * SEEDS), init_params)
  opt_state, losses = jax.vmap(optimizer.init)(params), []
  for t in range(T):
    params, opt_state = step(params, opt_state, t, seeds)
    if t in steps:
      losses.append(float(evaluate(params).mean()))  # mean over the seeds
  return np.array(losses)  # at `steps`: after t + 1 updates, i.e. under lrs[:t + 1]


losses = {name: run(s) for name, s in scheds.items()}
for name, l in losses.items():
  print(f"{name:24s} final held-out loss {l[-1]:.4f}")

# %% [markdown]
# WSD-S's first decay ends at step `T/2`: the model there is the budget-`T/2` model, which
# a separate WSD run of `T/2` steps would have cost `T/2` extra steps to produce.

# %%
end_1 = schedules.wsd_s_boundaries(BUDGETS, decay_fraction=0.2)[0][1]
i = np.searchsorted(steps, end_1 - 1)  # the evaluation at (or just after) the first budget
print(f"after {steps[i] + 1} steps: WSD-S {losses['WSD-S (budgets T/2, 0.9T)'][i]:.4f},"
      f" constant LR {losses['constant'][i]:.4f}")

# %% [markdown]
# ## Fitting the annealing law on two runs, predicting the others
# `annealing_law.fit` takes the steps at which losses were measured, the losses and each
# run's per-step learning rates. We fit on *constant* and *cosine* only, then predict WSD
# and WSD-S from their schedules alone. The momentum `lam` sets how fast the benefit of a
# decay builds up; with a run of a few hundred steps a shorter memory (0.99) than the
# paper's 0.999 fits.

# %%
LAM = 0.99
fit_on = ["constant", "cosine"]
law = annealing_law.fit([steps] * 2, [losses[n] for n in fit_on],
                        [lrs[n] for n in fit_on], lam=LAM)
print(law)

fig, ax = plt.subplots(figsize=(10, 4))
for i, name in enumerate(losses):
  color = f"C{i}"
  kind = "fitted on" if name in fit_on else "predicted"
  ax.plot(steps, losses[name], color=color, alpha=0.35, lw=1)
  ax.plot(steps, annealing_law.predict(law, lrs[name], steps, lam=LAM), color=color,
          ls="-" if kind == "fitted on" else "--", label=f"{name}: law ({kind})")
ax.plot([], [], color="gray", alpha=0.35, label="observed (faint lines)")
ax.axhline(0.25, color="black", ls=":", lw=1, label="noise floor (0.25)")
ax.set(xlabel="step", ylabel="held-out MSE", title="Annealing law: fit on two runs, predict two",
       ylim=(0.24, 0.42))
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Using the fitted law: how long should the decay be?
# The law predicts the final loss of any schedule without training it. Here: WSD with
# different decay lengths at the same budget.

# %%
for frac in (0.05, 0.1, 0.2, 0.4, 0.8):
  lr = np.array([float(schedules.wsd(PEAK, T, decay_fraction=frac)(t)) for t in range(T)])
  pred = annealing_law.predict(law, lr, [T - 1], lam=LAM)[0]
  print(f"WSD, decay over {frac:4.0%} of the run: predicted final loss {pred:.4f}")

# %% [markdown]
# Reading it: the loss plateaus at a level set by the learning rate and drops when the
# learning rate decays (WSD's drop at the end, WSD-S's drop at each budget). The law, fitted
# on constant + cosine only, predicts where both drops happen from the schedules alone; on
# this small, noisy run it gets their depth only roughly (at the default size it predicts
# WSD's final drop about 0.02 short and cosine's end too low), so read its decay-length
# advice as a trend, not a number. The same tools at language-model scale are in
# `experiments/lm_schedules.py`.
