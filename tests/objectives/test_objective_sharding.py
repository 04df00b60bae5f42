"""Objective weights are the same on 1 device and on 8 CPU devices under jit sharding."""

import pytest

from reweight import testing

CODE = """
import json, numpy as np, jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from reweight import objectives as obj
assert jax.device_count() == 8
rng = np.random.default_rng(0)
x = rng.normal(size=(3, 64, 5)).astype(np.float32)  # one global batch per step
y = rng.normal(size=(3, 64, 3)).astype(np.float32)
params0 = {"w": rng.normal(size=(5, 4)).astype(np.float32), "v": np.ones(4, np.float32),
           "b": np.zeros(3, np.float32)}

def fns():  # three global-batch mean objectives
  out = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"][:, None] + p["b"]  # shared features
  return [lambda p, x, y: jnp.mean((out(p, x)[:, 0] - y[:, 0] - 2.0) ** 2),
          lambda p, x, y: jnp.mean((out(p, x)[:, 1] - y[:, 1]) ** 2),
          lambda p, x, y: jnp.mean((out(p, x)[:, 2] - y[:, 2] + 2.0) ** 2)]

schemes = {"linear": obj.linear([1.0, 0.5, 2.0]), "mgda": obj.mgda(3, max_iters=50),
           "lagrangian": obj.lagrangian([0.5, 0.3], 0.5),
           "hypervolume": obj.hypervolume_weights([20.0, 20.0, 20.0], ema=0.5),
           "gradient_reward": obj.gradient_reward_weights(3, 0.5)}

@jax.jit
def step(params, states, x, y):
  losses, grads = obj.objective_grads(fns(), params, x, y)
  states = {n: s.update(states[n], losses=losses, grads=grads) for n, s in schemes.items()}
  return states, losses

def run(put_batch, put_rep):
  params = put_rep(jax.tree.map(jnp.asarray, params0))
  states = put_rep({n: s.init() for n, s in schemes.items()})
  out = []
  for t in range(3):
    xs, ys = put_batch(jnp.asarray(x[t])), put_batch(jnp.asarray(y[t]))
    states, losses = step(params, states, xs, ys)
    out.append({"losses": np.asarray(losses),
                **{n: np.asarray(s.weights) for n, s in states.items()}})
  return out

dev0 = jax.devices()[0]
single = run(lambda a: jax.device_put(a, dev0), lambda t: jax.device_put(t, dev0))
mesh = jax.make_mesh((8,), ("data",))
sharded = run(lambda a: jax.device_put(a, NamedSharding(mesh, P("data"))),
              lambda t: jax.device_put(t, NamedSharding(mesh, P())))
# Largest difference, relative to max(1, |value|) (the losses are O(5)).
diff = {k: max(float(np.max(np.abs(a[k] - b[k]) / np.maximum(1.0, np.abs(a[k]))))
               for a, b in zip(single, sharded)) for k in single[0]}
moved = {k: float(np.max(np.abs(single[-1][k] - single[0][k]))) for k in single[0]}
print(json.dumps({"diff": diff, "moved": moved}))
"""


@pytest.mark.multidevice
def test_weights_equal_on_1_and_8_devices():
  res = testing.run_with_devices(CODE, 8)
  assert sorted(res["diff"]) == ["gradient_reward", "hypervolume", "lagrangian", "linear",
                                 "losses", "mgda"]
  assert max(res["diff"].values()) <= 1e-6, res["diff"]
  # The dynamic weights did change over the three steps (the comparison is not vacuous).
  for name in ("mgda", "lagrangian", "hypervolume", "gradient_reward"):
    assert res["moved"][name] > 1e-4, res["moved"]
