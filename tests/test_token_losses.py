"""`reweight.token_losses.anchored_token_probability` against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reweight.token_losses import anchored_token_probability
from tests.token_batches import V, np_log_softmax


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_anchored_token_probability_matches_numpy(direction):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, V)).astype(np.float32)
  ref = rng.normal(size=(2, 4, V)).astype(np.float32)
  labels = rng.integers(0, V, (2, 4))
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
  out = anchored_token_probability(logits, labels, ref, kl_coeff=0.3, power=1.5,
                                   kl_direction=direction, mask=mask)
  lp, lr = np_log_softmax(logits), np_log_softmax(ref)
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
