"""`reweight.token_losses.anchored_token_probability` against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight.token_losses import anchored_token_probability

V = 5


def _batch(rng, lengths, t):
  """A bigram-LM batch whose sequences have the given numbers of valid tokens."""
  b = len(lengths)
  inputs = rng.integers(0, V, (b, t)).astype(np.int32)
  targets = rng.integers(0, V, (b, t)).astype(np.int32)
  mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
  return {"inputs": inputs, "targets": targets, "token_mask": mask}


def per_token_ce(params, batch):
  logp = jax.nn.log_softmax(params[batch["inputs"]])
  return -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]


def _np_ce(params, batch):
  logits = np.asarray(params, np.float64)[batch["inputs"]]
  logits = logits - logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]


@pytest.fixture
def setup():
  rng = np.random.default_rng(0)
  batch = _batch(rng, [1, 16, 3, 9], 16)
  params = rng.normal(size=(V, V)).astype(np.float32)
  return params, batch


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_anchored_token_probability_matches_numpy(direction):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, V)).astype(np.float32)
  ref = rng.normal(size=(2, 4, V)).astype(np.float32)
  labels = rng.integers(0, V, (2, 4))
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
  out = anchored_token_probability(logits, labels, ref, kl_coeff=0.3, power=1.5,
                                   kl_direction=direction, mask=mask)
  lp, lr = _np_log_softmax(logits), _np_log_softmax(ref)
  lpt = np.take_along_axis(lp, labels[..., None], -1)[..., 0]
  if direction == "forward":
    kl = (np.exp(lr) * (lr - lp)).sum(-1)
  else:
    kl = (np.exp(lp) * (lp - lr)).sum(-1)
  np.testing.assert_allclose(out, np.where(mask, -np.exp(1.5 * lpt) * lpt + 0.3 * kl, 0),
                             rtol=1e-5, atol=1e-6)


def test_anchored_gradients_and_dft_limit():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(3, V)), jnp.float32)
  ref = jnp.asarray(rng.normal(size=(3, V)), jnp.float32)
  labels = jnp.array([0, 2, 4])
  # Forward KL's gradient w.r.t. the logits is p_theta - p_ref; the reference gets none.
  g, g_ref = jax.grad(lambda x, r: anchored_token_probability(
      x, labels, r, kl_coeff=1.0, power=0.0).sum() - (-jax.nn.log_softmax(x)[
          jnp.arange(3), labels]).sum(), argnums=(0, 1))(logits, ref)
  np.testing.assert_allclose(g, jax.nn.softmax(logits) - jax.nn.softmax(ref), atol=1e-6)
  assert not np.asarray(g_ref).any()
  # kl_coeff = 0 is the DFT token loss: its gradient is sg(p_t) times SFT's.
  dft = jax.grad(lambda x: anchored_token_probability(x, labels, ref, kl_coeff=0.0).sum())(
      logits)
  sft = jax.grad(lambda x: -jax.nn.log_softmax(x)[jnp.arange(3), labels].sum())(logits)
  p_t = jax.nn.softmax(logits)[jnp.arange(3), labels]
  np.testing.assert_allclose(dft, p_t[:, None] * sft, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="kl_direction"):
    anchored_token_probability(logits, labels, ref, kl_direction="both")
