"""DPO and SparsePO at token level against NumPy re-derivations and the published formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import reweight
from reweight import preference


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _batch(seed=0, b=5, tc=7, tr=4):
  rng = np.random.default_rng(seed)
  lp = lambda *s: np.log(rng.uniform(0.05, 1.0, s)).astype(np.float32)
  pc, rc = lp(b, tc), lp(b, tc)
  pr, rr = lp(b, tr), lp(b, tr)
  len_c = rng.integers(1, tc + 1, b)
  len_r = rng.integers(1, tr + 1, b)
  mc = (np.arange(tc)[None] < len_c[:, None]).astype(np.float32)
  mr = (np.arange(tr)[None] < len_r[:, None]).astype(np.float32)
  return pc, pr, rc, rr, mc, mr, rng


def _np_dpo(pc, pr, rc, rr, mc, mr, beta, wc=None, wr=None):
  wc = np.ones_like(pc) if wc is None else wc
  wr = np.ones_like(pr) if wr is None else wr
  loss = np.zeros(pc.shape[0])
  for i in range(pc.shape[0]):  # one pair at a time, a loop over tokens
    z = 0.0
    for t in range(pc.shape[1]):
      if mc[i, t]:
        z += wc[i, t] * (float(pc[i, t]) - float(rc[i, t]))
    for t in range(pr.shape[1]):
      if mr[i, t]:
        z -= wr[i, t] * (float(pr[i, t]) - float(rr[i, t]))
    loss[i] = -_log_sigmoid(beta * z)
  return loss


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_token_level_equals_numpy(beta):
  pc, pr, rc, rr, mc, mr, rng = _batch()
  pc[mc == 0] = np.nan  # padding never leaks
  wc = rng.uniform(0, 2, pc.shape).astype(np.float32)
  wr = rng.uniform(0, 2, pr.shape).astype(np.float32)
  got = preference.dpo(pc, pr, rc, rr, beta=beta, chosen_mask=mc, rejected_mask=mr,
                       token_weights=(wc, wr))
  np.testing.assert_allclose(got, _np_dpo(pc, pr, rc, rr, mc, mr, beta, wc, wr), rtol=1e-5)
  plain = preference.dpo(pc, pr, rc, rr, beta=beta, chosen_mask=mc, rejected_mask=mr)
  np.testing.assert_allclose(plain, _np_dpo(pc, pr, rc, rr, mc, mr, beta), rtol=1e-5)


def test_dpo_sequence_level_equals_published_formula():
  pc, pr, rc, rr, mc, mr, _ = _batch(1)
  beta = 0.1
  seq = lambda lp, m: (lp * m).sum(1)  # sequence log-prob = sum of tokens
  pi_w, pi_l, ref_w, ref_l = seq(pc, mc), seq(pr, mr), seq(rc, mc), seq(rr, mr)
  published = -_log_sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))
  token = preference.dpo(pc, pr, rc, rr, beta=beta, chosen_mask=mc, rejected_mask=mr)
  sequence = preference.dpo(pi_w, pi_l, ref_w, ref_l, beta=beta)  # [B] inputs
  np.testing.assert_allclose(token, published, rtol=1e-5)
  np.testing.assert_allclose(sequence, published, rtol=1e-5)


def test_dpo_token_weights_ones_is_plain_dpo_and_rewards():
  pc, pr, rc, rr, mc, mr, _ = _batch(2)
  kw = dict(beta=0.3, chosen_mask=mc, rejected_mask=mr)
  ones = (np.ones_like(pc), np.ones_like(pr))
  np.testing.assert_allclose(preference.dpo(pc, pr, rc, rr, token_weights=ones, **kw),
                             preference.dpo(pc, pr, rc, rr, **kw), rtol=1e-6)
  c, r = preference.dpo_rewards(pc, pr, rc, rr, **kw)
  np.testing.assert_allclose(c, 0.3 * ((pc - rc) * mc).sum(1), rtol=1e-5)
  np.testing.assert_allclose(preference.dpo(pc, pr, rc, rr, **kw),
                             -_log_sigmoid(np.asarray(c - r)), rtol=1e-5)


def test_dpo_gradient_jit_and_composes_with_weighted():
  pc, pr, rc, rr, mc, mr, _ = _batch(3)
  beta = 0.2

  def total(p):
    return preference.dpo(p, pr, rc, rr, beta=beta, chosen_mask=mc, rejected_mask=mr).sum()

  g = jax.jit(jax.grad(total))(jnp.asarray(pc))
  z = beta * (((pc - rc) * mc).sum(1) - ((pr - rr) * mr).sum(1))
  expected = -beta * (1 / (1 + np.exp(z)))[:, None] * mc  # d/dlogpi_c of -log sigma(z)
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)

  def per_pair(params, batch):
    return preference.dpo(batch["pc"] + params, pr, rc, rr, beta=beta, chosen_mask=mc,
                          rejected_mask=mr)

  w = reweight.uniform()
  loss, _ = reweight.weighted(per_pair, w)(jnp.float32(0.0), {"pc": pc}, w.init())
  np.testing.assert_allclose(loss, _np_dpo(pc, pr, rc, rr, mc, mr, beta).mean(), rtol=1e-5)


def test_dpo_rejects_bad_shapes():
  pc, pr, rc, rr, mc, mr, _ = _batch(4)
  with pytest.raises(ValueError, match="chosen_mask"):
    preference.dpo(pc, pr, rc, rr, beta=0.1, chosen_mask=mr, rejected_mask=mr)
  with pytest.raises(ValueError, match="token_weights"):
    preference.dpo(pc, pr, rc, rr, beta=0.1, token_weights=np.ones_like(pc))
  with pytest.raises(ValueError, match="beta"):
    preference.dpo(pc, pr, rc, rr, beta=0.0)


def _np_activation_masks(acts, mask):
  """The authors' recipe: feature mean, z-normalise (ddof=1), min-max rescale, average."""
  out = np.zeros(mask.shape)
  for a in acts:
    a = a.mean(-1)
    for i in range(a.shape[0]):
      v = mask[i] > 0
      x = a[i, v]
      z = (a[i] - x.mean()) / (x.std(ddof=1) + 1e-12)
      zv = z[v]
      out[i] += np.where(v, (z - zv.min()) / (zv.max() - zv.min()), 0.0)
  return out / len(acts)


def test_activation_masks_equal_numpy():
  _, _, _, _, mc, _, rng = _batch(5)
  mc[:, :2] = 1.0  # at least two valid tokens (the authors' std needs them)
  acts = [rng.normal(size=mc.shape + (6,)).astype(np.float32) for _ in range(3)]
  got = preference.activation_token_masks(acts, mc)
  np.testing.assert_allclose(got, _np_activation_masks(acts, mc), rtol=1e-4, atol=1e-5)
  assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0 + 1e-6
  flat = preference.activation_token_masks(jnp.ones((2, 3, 4)))  # constant: mask one
  np.testing.assert_array_equal(flat, np.ones((2, 3)))


def test_sparse_po_with_activation_masks_equals_numpy():
  pc, pr, rc, rr, mc, mr, rng = _batch(6)
  mc[:, :2] = 1.0
  mr[:, :2] = 1.0
  acts_c = [rng.normal(size=mc.shape + (4,)).astype(np.float32) for _ in range(2)]
  acts_r = [rng.normal(size=mr.shape + (4,)).astype(np.float32) for _ in range(2)]
  kc = rng.uniform(0, 0.5, pc.shape).astype(np.float32)
  kr = rng.uniform(0, 0.5, pr.shape).astype(np.float32)
  beta = 0.8
  masks = (preference.activation_token_masks(acts_c, mc),
           preference.activation_token_masks(acts_r, mr))
  got = preference.sparse_po(pc, pr, rc, rr, beta=beta, chosen_mask=mc, rejected_mask=mr,
                             reward_masks=masks, token_kls=(kc, kr))
  nc, nr = _np_activation_masks(acts_c, mc), _np_activation_masks(acts_r, mr)
  u = (nc * mc * (pc - rc)).sum(1) - (nr * mr * (pr - rr)).sum(1)
  d = (nc * mc * kc).sum(1) - (nr * mr * kr).sum(1)
  np.testing.assert_allclose(got, -_log_sigmoid(beta * (u + d)), rtol=1e-4)
  # the authors' convention: logits = (u_c - u_r) - (d_c - d_r), d = mask * (-KL(ref||pi))
  authors = -_log_sigmoid(beta * (u - (-(nc * mc * kc).sum(1) + (nr * mr * kr).sum(1))))
  np.testing.assert_allclose(got, authors, rtol=1e-4)
  c, r = preference.sparse_po_rewards(pc, pr, rc, rr, beta=beta, chosen_mask=mc,
                                      rejected_mask=mr, reward_masks=masks,
                                      token_kls=(kc, kr))
  np.testing.assert_allclose(c - r, beta * (u + d), rtol=1e-4, atol=1e-6)


def test_sparse_po_reduces_to_dpo_and_sparsity_terms():
  pc, pr, rc, rr, mc, mr, rng = _batch(7)
  kw = dict(beta=0.1, chosen_mask=mc, rejected_mask=mr)
  np.testing.assert_allclose(preference.sparse_po(pc, pr, rc, rr, **kw),
                             preference.dpo(pc, pr, rc, rr, **kw), rtol=1e-6)
  ones = (np.ones_like(pc), np.ones_like(pr))
  np.testing.assert_allclose(preference.sparse_po(pc, pr, rc, rr, reward_masks=ones, **kw),
                             preference.dpo(pc, pr, rc, rr, **kw), rtol=1e-6)
  um = (rng.uniform(0, 1, pc.shape), rng.uniform(0, 1, pr.shape))
  dm = (rng.uniform(0, 1, pc.shape), rng.uniform(0, 1, pr.shape))
  kls = (rng.uniform(0, 1, pc.shape), rng.uniform(0, 1, pr.shape))
  base = preference.sparse_po(pc, pr, rc, rr, reward_masks=um, kl_masks=dm, token_kls=kls,
                              **kw)
  sparse = preference.sparse_po(pc, pr, rc, rr, reward_masks=um, kl_masks=dm, token_kls=kls,
                                sparsity_reward=0.01, sparsity_kl=0.02, **kw)
  l1 = lambda m, mask: (np.abs(m) * mask).sum(1)
  extra = 0.01 * (l1(um[0], mc) + l1(um[1], mr)) + 0.02 * (l1(dm[0], mc) + l1(dm[1], mr))
  np.testing.assert_allclose(np.asarray(sparse) - np.asarray(base), extra, rtol=1e-4)
  with pytest.raises(ValueError, match="sparsity_reward"):
    preference.sparse_po(pc, pr, rc, rr, sparsity_reward=-1.0, **kw)


def test_learned_masks_train_and_become_sparse():
  """The learned variant: a TokenMaskHead trained on the SparsePO loss with its L1 term."""
  pc, pr, rc, rr, mc, mr, rng = _batch(8, b=4, tc=5, tr=5)
  hc = [jnp.asarray(rng.normal(size=(4, 5, 8)), jnp.float32) for _ in range(2)]
  hr = [jnp.asarray(rng.normal(size=(4, 5, 8)), jnp.float32) for _ in range(2)]
  head = preference.TokenMaskHead(2, 8, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(head)

  def loss(params, lam):
    h = nnx.merge(graphdef, params)
    masks = (h(hc, mc), h(hr, mr))
    return preference.sparse_po(pc, pr, rc, rr, beta=0.5, chosen_mask=mc, rejected_mask=mr,
                                reward_masks=masks, sparsity_reward=lam).mean()

  def l1(params):
    h = nnx.merge(graphdef, params)
    return float(preference.mask_l1(h(hc, mc), mc).sum())

  grads = jax.grad(loss)(params, 0.0)
  assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
  step = jax.jit(lambda p, lam: jax.tree.map(lambda x, g: x - 0.2 * g, p,
                                             jax.grad(loss)(p, lam)))
  trained = {}
  for lam in (0.0, 1.0):
    p = params
    for _ in range(20):
      p = step(p, lam)
    trained[lam] = p
  assert l1(trained[1.0]) < 0.5 * min(l1(params), l1(trained[0.0]))
  masks = nnx.merge(graphdef, trained[1.0])(hc, mc)
  zeros = float(((masks == 0) & (mc > 0)).sum() / mc.sum())
  assert float(masks.min()) >= 0.0 and zeros > 0.5  # ReLU + L1: exact zeros
