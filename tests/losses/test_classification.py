"""Every loss against a NumPy re-derivation (float64), including extreme logits and bf16."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy.special import log_softmax as np_log_softmax
from scipy.special import logsumexp as np_logsumexp

from reweight import losses

C = 5


def np_ce(logits, labels, eps=0.0, zc=0.0):
  lp = np_log_softmax(logits.astype(np.float64), axis=-1)
  nll = -np.take_along_axis(lp, labels[..., None], -1)[..., 0]
  smooth = -lp.mean(-1)
  return (1 - eps) * nll + eps * smooth + zc * np_logsumexp(logits.astype(np.float64), -1) ** 2


def np_py(logits, labels):
  lp = np_log_softmax(logits.astype(np.float64), axis=-1)
  return np.exp(np.take_along_axis(lp, labels[..., None], -1)[..., 0])


def np_focal(logits, labels, gamma):
  p = np_py(logits, labels)
  return -((1 - p) ** gamma) * np.log(p)


def np_gce(logits, labels, q):
  return (1 - np_py(logits, labels) ** q) / q


def np_sce(logits, labels, alpha, beta):
  probs = np.exp(np_log_softmax(logits.astype(np.float64), axis=-1))
  onehot = np.eye(logits.shape[-1])[labels]
  rce = -(probs * np.log(np.clip(onehot, 1e-4, 1.0))).sum(-1)
  return alpha * np_ce(logits, labels) + beta * rce


def np_poly1(logits, labels, eps):
  return np_ce(logits, labels) + eps * (1 - np_py(logits, labels))


CASES = {
    "ce": (lambda l, y: losses.softmax_cross_entropy(l, y), lambda l, y: np_ce(l, y)),
    "ce_smooth_z": (lambda l, y: losses.softmax_cross_entropy(l, y, label_smoothing=0.1,
                                                              z_loss_coeff=1e-4),
                    lambda l, y: np_ce(l, y, 0.1, 1e-4)),
    "focal": (lambda l, y: losses.focal(l, y, gamma=2.0), lambda l, y: np_focal(l, y, 2.0)),
    "gce": (lambda l, y: losses.generalized_cross_entropy(l, y, q=0.7),
            lambda l, y: np_gce(l, y, 0.7)),
    "sce": (lambda l, y: losses.symmetric_cross_entropy(l, y, alpha=0.1, beta=1.0),
            lambda l, y: np_sce(l, y, 0.1, 1.0)),
    "poly1": (lambda l, y: losses.poly1(l, y, epsilon=2.0), lambda l, y: np_poly1(l, y, 2.0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])
def test_against_numpy(name, scale):
  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(64, C)) * scale).astype(np.float32)
  labels = rng.integers(0, C, 64)
  ours, ref = CASES[name]
  out = np.asarray(ours(jnp.asarray(logits), jnp.asarray(labels)))
  expected = ref(logits, labels)
  assert out.dtype == np.float32 and out.shape == (64,)
  finite = np.isfinite(expected)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out[finite], expected[finite], rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_inputs_are_stable(name):
  rng = np.random.default_rng(2)
  logits = (rng.normal(size=(32, C)) * 50).astype(np.float32)
  labels = rng.integers(0, C, 32)
  ours, ref = CASES[name]
  bf = jnp.asarray(logits, jnp.bfloat16)
  out = np.asarray(ours(bf, jnp.asarray(labels)))
  expected = ref(np.asarray(bf.astype(jnp.float32)), labels)
  assert out.dtype == np.float32 and np.all(np.isfinite(out))
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=1e-5)


def test_mask_and_sequences():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(4, 6, C)).astype(np.float32)
  labels = rng.integers(0, C, (4, 6))
  tok_mask = rng.random((4, 6)) > 0.3
  tok_mask[2] = False
  tok = losses.softmax_cross_entropy(logits, labels, mask=tok_mask)
  expected_tok = np.where(tok_mask, np_ce(logits, labels), 0.0)
  np.testing.assert_allclose(tok, expected_tok, rtol=1e-5, atol=1e-6)
  seq = losses.sequence_mean(tok, tok_mask)
  counts = tok_mask.sum(1)
  expected = np.where(counts > 0, expected_tok.sum(1) / np.maximum(counts, 1), 0.0)
  np.testing.assert_allclose(seq, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.sequence_mean(tok), expected_tok.mean(1), rtol=1e-5)


def test_z_loss():
  logits = np.array([[1.0, 2.0, 3.0], [100.0, -100.0, 0.0]], np.float32)
  np.testing.assert_allclose(losses.z_loss(logits, 1e-4),
                             1e-4 * np_logsumexp(logits.astype(np.float64), -1) ** 2, rtol=1e-6)


@pytest.mark.parametrize("fn", [losses.softmax_cross_entropy, losses.focal,
                                losses.generalized_cross_entropy, losses.poly1,
                                losses.symmetric_cross_entropy])
def test_bad_inputs(fn):
  logits = jnp.zeros((3, C))
  with pytest.raises(ValueError, match="label 7 is out of range: valid labels are 0..4"):
    fn(logits, jnp.array([0, 7, 1]))
  with pytest.raises(ValueError, match="label -1 is out of range"):
    fn(logits, jnp.array([0, -1, 1]))
  with pytest.raises(ValueError, match="need labels of shape \\(3,\\)"):
    fn(logits, jnp.array([0, 1]))
  with pytest.raises(ValueError, match="labels must be integers"):
    fn(logits, jnp.array([0.0, 1.0, 2.0]))


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match="q=0.0 must be in"):
    losses.generalized_cross_entropy(jnp.zeros((1, 2)), jnp.array([0]), q=0.0)
  with pytest.raises(ValueError, match="gamma=-1"):
    losses.focal(jnp.zeros((1, 2)), jnp.array([0]), gamma=-1)
  with pytest.raises(ValueError, match="label_smoothing=1.5"):
    losses.softmax_cross_entropy(jnp.zeros((1, 2)), jnp.array([0]), label_smoothing=1.5)
  with pytest.raises(ValueError, match="'hinge' is not one of"):
    losses.get("hinge")


class LossesVariantsTest(chex.TestCase):
  """The losses are pure functions: the same values with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*sorted(CASES))
  def test_against_numpy(self, name):
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=(4, 8, C)) * 30.0).astype(np.float32)
    labels = rng.integers(0, C, (4, 8))
    ours, ref = CASES[name]
    out = self.variant(ours)(jnp.asarray(logits), jnp.asarray(labels))
    chex.assert_shape(out, (4, 8))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
    np.testing.assert_allclose(out, ref(logits, labels), rtol=2e-5, atol=1e-5)
