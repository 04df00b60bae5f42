"""class_balanced against the closed form of Cui et al., and under sharding."""

import jax.numpy as jnp
import numpy as np
import pytest

from reweight import testing
from reweight.sample.class_balanced import class_balanced


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.99999])
def test_matches_effective_number(beta):
  counts = np.array([500, 120, 30, 5])
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 40)
  mask = rng.random(40) > 0.2
  w, _ = class_balanced(counts, beta).update(jnp.zeros(40), None, mask=jnp.asarray(mask),
                                             labels=jnp.asarray(labels))
  eff = (1 - beta ** counts.astype(np.float64)) / (1 - beta) if beta else np.ones(4)
  raw = np.where(mask, 1 / eff[labels], 0)
  np.testing.assert_allclose(w, raw / raw.sum() * mask.sum(), rtol=1e-5)


def test_beta_to_one_is_inverse_frequency():
  counts = np.array([100, 10])
  w, _ = class_balanced(counts, 0.999999).update(jnp.zeros(2), None, labels=jnp.array([0, 1]))
  np.testing.assert_allclose(w[1] / w[0], 10.0, rtol=1e-3)


def test_bad_input():
  with pytest.raises(ValueError, match="must be a non-empty list of positive"):
    class_balanced([3, 0])
  with pytest.raises(ValueError, match="beta=1.0 must be in"):
    class_balanced([3, 4], beta=1.0)
  with pytest.raises(ValueError, match="needs the labels= extra"):
    class_balanced([3, 4]).update(jnp.zeros(2), None)


CODE = """
import json, numpy as np, jax, reweight
from reweight import testing
from reweight.sample.class_balanced import class_balanced
rng = np.random.default_rng(0)
losses = rng.exponential(size=64).astype(np.float32)
labels = rng.integers(0, 4, 64).astype(np.int32)
make = lambda axis_name=None: class_balanced([400, 100, 20, 4], 0.99, axis_name=axis_name)
out = testing.layouts(make, losses, mask=rng.random(64) > 0.2, per_example={"labels": labels})
print(json.dumps({m: testing.max_difference(out, "single", m) for m in out}))
"""


@pytest.mark.multidevice
def test_sharding_layouts_agree():
  res = testing.run_with_devices(CODE, 8)
  testing.assert_layouts_agree({"class_balanced": res})
