"""Weighting combinators, diagnostics and the `weighted` loss transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reweight
from reweight import base
from reweight.sample import loss_based


def np_softmax_weights(f, valid):
  e = np.where(valid, np.exp(f - f[valid].max()), 0.0)
  return e / e.sum() * valid.sum()


def test_uniform_and_masks():
  w, _ = reweight.uniform().update(jnp.array([1.0, jnp.nan, 3.0, 4.0]), None,
                                   mask=jnp.array([True, True, False, True]))
  np.testing.assert_array_equal(w, [1.0, 0.0, 0.0, 1.0])


def test_chain_is_renormalized_product():
  losses = jnp.array([0.0, 1.0, 2.0, 5.0])
  a, b = loss_based("upper", 1.0), loss_based("quadratic", 0.5)
  wa, _ = a.update(losses, a.init())
  wb, _ = b.update(losses, b.init())
  w, state = reweight.chain(a, b).update(losses, reweight.chain(a, b).init())
  prod = np.asarray(wa) * np.asarray(wb)
  np.testing.assert_allclose(w, prod / prod.sum() * 4, rtol=1e-6)
  assert len(state) == 2
  nw, nstate = reweight.named_chain(("a", a), ("b", b)).update(
      losses, reweight.named_chain(("a", a), ("b", b)).init())
  np.testing.assert_allclose(nw, w, rtol=1e-6)
  assert set(nstate) == {"a", "b"}
  with pytest.raises(ValueError, match="unique"):
    reweight.named_chain(("a", a), ("a", b))


def test_interpolate_blends_with_uniform():
  losses = jnp.array([0.0, 1.0, 3.0])
  inner = loss_based("upper", 0.5)
  wi = np.asarray(inner.update(losses, inner.init())[0])
  sched = optax.linear_schedule(0.0, 1.0, 10)
  w = reweight.interpolate(inner, sched)
  for step in [0, 3, 10]:
    out, _ = w.update(losses, w.init(), step=step)
    s = float(sched(step))
    np.testing.assert_allclose(out, 1 + s * (wi - 1), rtol=1e-6)


def test_clip_caps_and_redistributes():
  losses = jnp.array([0.0, 0.1, 0.2, 9.0, 10.0])
  inner = loss_based("upper", 0.05)
  w, _ = reweight.clip(inner, 1.5).update(losses, inner.init())
  w = np.asarray(w)
  # Independent water-filling: find c with sum(min(c*u, M)) = n by bisection.
  u = np.asarray(inner.update(losses, inner.init())[0], np.float64)
  lo, hi = 0.0, 1e12
  for _ in range(400):
    c = (lo + hi) / 2
    lo, hi = (c, hi) if np.minimum(c * u, 1.5).sum() < 5 else (lo, c)
  np.testing.assert_allclose(w, np.minimum(c * u, 1.5), rtol=1e-5, atol=1e-6)
  assert w.max() <= 1.5 + 1e-6
  with pytest.raises(ValueError, match="max_weight=0.5 must be >= 1"):
    reweight.clip(inner, 0.5)


def test_diagnostics_closed_forms():
  w = jnp.array([1.0, 1.0, 2.0, 0.0])
  losses = jnp.array([1.0, 2.0, 3.0, jnp.nan])
  d = reweight.diagnostics(w, losses)
  np.testing.assert_allclose(d["ess"], 16 / 6, rtol=1e-6)
  p = np.array([0.25, 0.25, 0.5])
  np.testing.assert_allclose(d["weight_entropy"], -(p * np.log(p)).sum(), rtol=1e-6)
  assert float(d["max_weight"]) == 2.0 and int(d["num_nonfinite"]) == 1
  assert float(d["num_valid"]) == 3.0
  np.testing.assert_allclose(reweight.weight_entropy(jnp.ones(8)), np.log(8), rtol=1e-6)


def test_weighted_loss_and_gradient_against_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 3)).astype(np.float32)
  y = rng.integers(0, 4, 16)
  mask = rng.random(16) > 0.25
  theta = rng.normal(size=(3, 4)).astype(np.float32)

  def per_example(params, batch):
    logits = batch["x"] @ params
    return reweight.losses.softmax_cross_entropy(logits, batch["y"]), {"logits": logits}

  seen = {}

  def spy():
    inner = loss_based("upper", 0.7)

    def update(losses, state, **kw):
      seen.update(kw)
      return inner.update(losses, state, **kw)
    return base.Weighting(inner.init, update)

  weighting = spy()
  loss_fn = reweight.weighted(per_example, weighting)
  batch = {"x": x, "y": y, "mask": mask, "id": np.arange(16), "group": y % 2}
  (loss, (_, info)), g = jax.value_and_grad(loss_fn, has_aux=True)(
      jnp.asarray(theta), batch, weighting.init(), step=3, ref_losses=jnp.zeros(16))
  # What the weighting saw (the rule of `reweight.base.weighting_inputs`).
  assert {"mask", "groups", "example_ids", "logits", "params", "batch", "loss_fn", "step",
          "ref_losses"} <= set(seen)
  np.testing.assert_array_equal(seen["example_ids"], np.arange(16))
  assert int(seen["step"]) == 3
  # NumPy: losses, weights, loss and gradient.
  z = x.astype(np.float64) @ theta
  lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
  l = lse - z[np.arange(16), y]
  lv = l[mask]
  span = lv.max() - lv.min()
  h = 2 * l / span - (lv.max() + lv.min()) / span
  w = np_softmax_weights((0.5 * h + 0.5) / 0.7, mask)
  np.testing.assert_allclose(info["weights"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss, (w * l).sum() / mask.sum(), rtol=1e-5)
  p = np.exp(z - lse[:, None])
  dz = (p - np.eye(4)[y]) * (w / mask.sum())[:, None]
  np.testing.assert_allclose(g, x.T @ dz, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(info["loss"], lv.mean(), rtol=1e-5)


def test_weighted_forwards_only_accepted_kwargs_and_tuple_batches():
  def per_example(params, batch, *, scale=1.0):
    x, y = batch
    return scale * (x * params - y) ** 2

  loss_fn = reweight.weighted(per_example, reweight.uniform())
  batch = (jnp.arange(4.0), jnp.zeros(4))
  loss, _ = loss_fn(jnp.float32(1.0), batch, None, scale=2.0, meta_batch=batch)
  np.testing.assert_allclose(loss, 2.0 * np.mean(np.arange(4.0) ** 2), rtol=1e-6)


def test_bad_per_example_outputs():
  loss_fn = reweight.weighted(lambda p, b: (b, b, b), reweight.uniform())
  with pytest.raises(ValueError, match="tuple of length 3"):
    loss_fn(0.0, jnp.ones(2), None)
  loss_fn = reweight.weighted(lambda p, b: (b, [1]), reweight.uniform())
  with pytest.raises(ValueError, match="aux must be a dict"):
    loss_fn(0.0, jnp.ones(2), None)
  loss_fn = reweight.weighted(lambda p, b: b, reweight.uniform())
  with pytest.raises(ValueError, match="shape \\[batch\\]"):
    loss_fn(0.0, jnp.ones((2, 2)), None)


def test_entry_point_checks_name_the_argument():
  """chex checks at `weighted` and `valid_mask`: the error names the offending argument."""
  loss_fn = reweight.weighted(lambda p, b: b, reweight.uniform())
  with pytest.raises(ValueError, match="per_example_loss_fn must return losses of shape"):
    loss_fn(0.0, jnp.ones((2, 2)), None)
  with pytest.raises(TypeError, match="per_example_loss_fn must return float losses"):
    loss_fn(0.0, jnp.ones(2, jnp.int32), None)
  bad = base.Weighting(lambda key=None: None, lambda losses, state, **kw: (jnp.ones(3), state))
  with pytest.raises(ValueError, match=r"weights of shape \(3,\) for per-example losses of shape"):
    reweight.weighted(lambda p, b: b, bad)(0.0, jnp.ones(2), None)
  with pytest.raises(ValueError, match=r"losses must have shape \[batch\]"):
    base.valid_mask(jnp.ones((2, 2)))
  with pytest.raises(ValueError, match=r"mask has shape \(3,\) but losses have shape \(2,\)"):
    base.valid_mask(jnp.ones(2), jnp.ones(3, bool))
  # Under jit the shapes are static: the same errors at trace time.
  with pytest.raises(ValueError, match="mask has shape"):
    jax.jit(base.valid_mask)(jnp.ones(2), jnp.ones(3, bool))
