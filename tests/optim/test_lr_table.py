"""scale_by_lr_table equals optax's own schedule handling."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reweight.optim.lr_table import scale_by_lr_table
from reweight.schedules import wsd


def test_chain_equals_adamw_with_the_schedule():
  schedule = wsd(1e-2, total_steps=12, warmup_steps=3, decay_fraction=0.5, shape="cosine")
  reference = optax.adamw(schedule, weight_decay=0.1)
  ours = optax.chain(optax.adamw(1.0, weight_decay=0.1),
                     scale_by_lr_table(schedule(jnp.arange(12))))
  rng = np.random.default_rng(0)
  p_ref = p_ours = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
  s_ref, s_ours = reference.init(p_ref), ours.init(p_ours)
  for _ in range(12):
    g = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
    u, s_ref = reference.update(g, s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u)
    u, s_ours = ours.update(g, s_ours, p_ours)
    p_ours = optax.apply_updates(p_ours, u)
    np.testing.assert_allclose(p_ours["w"], p_ref["w"], rtol=1e-6, atol=1e-7)


def test_holds_the_last_value_after_the_end():
  tx = scale_by_lr_table(jnp.array([3.0, 2.0]))
  s = tx.init(None)
  outs = []
  for _ in range(4):
    u, s = tx.update({"w": jnp.ones(1)}, s)
    outs.append(float(u["w"][0]))
  assert outs == [3.0, 2.0, 2.0, 2.0]


def test_one_compiled_step_serves_every_table():
  tx_a, tx_b = scale_by_lr_table(jnp.ones(4)), scale_by_lr_table(jnp.arange(4.0))
  step = jax.jit(lambda u, s: tx_a.update(u, s))  # tx_a's function, tx_b's state
  s = tx_b.init(None)
  for t in range(4):
    out, s = step({"w": jnp.ones(2)}, s)
    assert out["w"].tolist() == [float(t)] * 2


def test_bad_table():
  with pytest.raises(ValueError, match="non-empty 1-D"):
    scale_by_lr_table(jnp.zeros((2, 2)))
