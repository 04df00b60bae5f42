"""doremi against a NumPy port of the authors' update_domain_weights (doremiv1) and loss.

`ReferenceDoReMi` re-states ``DoReMiTrainer.update_domain_weights``, ``write_weights`` and
the loss rescaling of ``training_step`` of github sangmichaelxie/doremi
(``doremi/trainer.py``) in NumPy, with one score per example (``scores_mask`` = valid).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reweight
from reweight.group import doremi


class ReferenceDoReMi:

  def __init__(self, k, eta, eps, init=None):
    self.train_domain_weights = np.ones(k) / k if init is None else np.asarray(init, float)
    self.avg_domain_weights = np.zeros(k)
    self.perdomain_scores = np.zeros(k)
    self.update_counter = 0
    self.eta, self.eps = eta, eps

  def write_weights(self, weights):
    self.update_counter += 1
    self.train_domain_weights = weights
    self.avg_domain_weights = (self.avg_domain_weights * (self.update_counter - 1)
                               + weights) / self.update_counter

  def update_domain_weights(self, scores, scores_mask, domain_ids):
    perdomain_scores = []
    for domain_id in range(len(self.train_domain_weights)):
      domain_mask = domain_ids == domain_id
      perdomain_scores_mask = scores_mask[domain_mask]
      if domain_mask.sum() > 0:
        curr = np.clip(scores[domain_mask][perdomain_scores_mask], 0, None).mean()
      else:
        curr = self.perdomain_scores[domain_id]
      perdomain_scores.append(curr)
    self.perdomain_scores = np.array(perdomain_scores)
    logits = np.log(self.train_domain_weights) + self.eta * self.perdomain_scores
    new = np.exp(logits - logits.max())
    new /= new.sum()
    self.write_weights((1 - self.eps) * new + self.eps / len(new))

  def loss(self, pertoken_loss, token_mask, domain_ids):
    w = self.train_domain_weights[domain_ids] * token_mask
    return (pertoken_loss * w / w.sum()).sum()


def test_matches_reference_step_for_step():
  """alpha, its average, lambda and the proxy loss over 25 steps with absent domains."""
  k, eta, eps = 5, 1.0, 1e-3
  ref = ReferenceDoReMi(k, eta, eps)
  weighting = doremi(k, eta, eps)

  def per_example(params, batch):
    return (batch["x"] @ params - batch["y"]) ** 2

  loss_fn = jax.jit(reweight.weighted(per_example, weighting))
  rng = np.random.default_rng(0)
  theta = jnp.asarray(rng.normal(size=3), jnp.float32)
  state = weighting.init()
  for t in range(25):
    n = 24
    d = rng.integers(0, k, n).astype(np.int32)
    if t % 4 == 1:
      d[d == 4] = 0  # domain 4 absent: its lambda is kept
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.ones(3) + (1 + d) * 0.3 * rng.normal(size=n)).astype(np.float32)
    mask = rng.random(n) > 0.1
    losses = np.asarray(per_example(theta, {"x": x, "y": y}), np.float64)
    ref_losses = (losses * rng.uniform(0.3, 1.3, n)).astype(np.float32)
    batch = {"x": x, "y": y, "group": d, "mask": mask}
    loss, (state, info) = loss_fn(theta, batch, state, ref_losses=ref_losses)
    # The reference gathers every score, masked ones included, and masks inside a domain.
    ref.update_domain_weights(losses - ref_losses, mask, d)
    np.testing.assert_allclose(state.probs, ref.train_domain_weights, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.avg_probs, ref.avg_domain_weights, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.excess, ref.perdomain_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, ref.loss(losses, mask, d), rtol=1e-5)
    w = ref.train_domain_weights[d] * mask
    np.testing.assert_allclose(info["weights"], w / w.sum() * mask.sum(), rtol=1e-5)


def test_alpha_moves_to_the_domain_with_excess_loss():
  w = doremi(3, 1.0, 0.0)
  state = w.init()
  groups = jnp.array([0, 1, 2, 0, 1, 2])
  for _ in range(10):
    _, state = w.update(jnp.array([1.0, 1.0, 3.0, 1.0, 1.0, 3.0]), state, groups=groups,
                        ref_losses=jnp.array([1.5, 1.0, 1.0, 1.5, 1.0, 1.0]))
  # Domain 0 has a negative excess (clipped to 0), like domain 1; domain 2 gains.
  np.testing.assert_allclose(state.excess, [0.0, 0.0, 2.0])
  assert state.probs[2] > 0.99 and state.probs[0] == pytest.approx(state.probs[1])
  e = np.exp(2.0 * np.arange(1, 11))
  expected_avg = np.mean(e / (e + 2.0))
  np.testing.assert_allclose(state.avg_probs[2], expected_avg, rtol=1e-5)


def test_bad_input():
  w = doremi(2)
  with pytest.raises(ValueError, match="needs the ref_losses= extra"):
    w.update(jnp.ones(2), w.init(), groups=jnp.array([0, 1]))
  with pytest.raises(ValueError, match=r"ref_losses has shape \(3,\) but losses have shape"):
    w.update(jnp.ones(2), w.init(), groups=jnp.array([0, 1]), ref_losses=jnp.ones(3))
  with pytest.raises(ValueError, match=r"group ids span \[-1, 1\]"):
    w.update(jnp.ones(2), w.init(), groups=jnp.array([-1, 1]), ref_losses=jnp.ones(2))
  with pytest.raises(ValueError, match="smoothing=2"):
    doremi(2, smoothing=2)
  with pytest.raises(ValueError, match="sums to 0.9, not 1"):
    doremi(2, init_probs=[0.5, 0.4])
  with pytest.raises(ValueError, match="init_probs has 3 entries but num_groups=2"):
    doremi(2, init_probs=[0.5, 0.25, 0.25])
