"""Meta-reweighting (L2RW, Meta-Weight-Net, self-taught) against NumPy re-derivations.

The model is a multinomial logistic regression, whose per-example gradients have the closed
form ``dl_i/dW = x_i (p_i - e_{y_i})^T``, ``dl_i/db = p_i - e_{y_i}``; the NumPy side builds
every per-example gradient explicitly, checks the chain rule by finite differences, and
re-derives the weights (L2RW: ``u_i = alpha <grad l_i, grad L_meta>`` at eps = 0, one JVP;
MW-Net: the chain rule through the one-step lookahead).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reweight
from reweight import testing
from reweight.sample.meta import MetaNetState, l2rw, meta_weight_net, self_taught

D, C = 3, 3


# ------------------------------------------------------------------------ the model


def per_example(params, batch):  # cross-entropy, in the inputs' precision
  logits = batch["x"] @ params["w"] + params["b"]
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, batch["y"][:, None], axis=-1)[:, 0], {"logits": logits}


def losses_only(params, batch):
  return per_example(params, batch)[0]


def make_data(seed, b=16, m=8, dtype=np.float32):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(D, C)).astype(dtype), "b": rng.normal(size=C).astype(dtype)}
  batch = {"x": rng.normal(size=(b, D)).astype(dtype), "y": rng.integers(0, C, b)}
  meta = {"x": rng.normal(size=(m, D)).astype(dtype), "y": rng.integers(0, C, m)}
  return params, batch, meta


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_theta(params):
  return np.concatenate([np.asarray(params["w"], np.float64).ravel(),
                         np.asarray(params["b"], np.float64)])


def np_unflatten(theta):
  return theta[:D * C].reshape(D, C), theta[D * C:]


def np_ce(theta, batch):
  """Per-example losses, logits and gradients ``[B, D*C + C]`` (flattened like np_theta)."""
  w, b = np_unflatten(theta)
  x = np.asarray(batch["x"], np.float64)
  z = x @ w + b
  p = np_softmax(z)
  onehot = np.eye(C)[np.asarray(batch["y"])]
  losses = -np.log((p * onehot).sum(-1))
  r = p - onehot
  grads = np.concatenate([(x[:, :, None] * r[:, None, :]).reshape(len(x), -1), r], axis=1)
  return losses, z, grads


def np_meta_loss(theta, meta):
  return np_ce(theta, meta)[0].mean()


def np_normalize(raw, valid):
  raw = np.where(valid, np.maximum(raw, 0.0), 0.0)
  if raw.sum() <= 0:
    return valid.astype(np.float64)
  return raw / raw.sum() * valid.sum()


# ---------------------------------------------------------------------------- L2RW


def np_l2rw_u(params, batch, meta, alpha, valid):
  theta = np_theta(params)
  _, _, g = np_ce(theta, batch)
  g_meta = np_ce(theta, meta)[2].mean(0)
  return np.where(valid, alpha * g @ g_meta, 0.0)


def fd_l2rw_u(params, batch, meta, alpha, h=1e-5):
  """u_i = -d/d eps_i L_meta(theta - alpha sum_j eps_j grad l_j) at 0, central differences."""
  theta = np_theta(params)
  _, _, g = np_ce(theta, batch)
  return np.array([
      -(np_meta_loss(theta - alpha * h * gi, meta) - np_meta_loss(theta + alpha * h * gi, meta))
      / (2 * h) for gi in g])


def run_update(weighting, losses, state, params, batch, meta=None, mask=None, step=None,
               logits=None):
  extras = {"params": params, "batch": batch}
  if meta is not None:
    extras["meta_batch"] = meta
  if logits is not None:
    extras["logits"] = logits
  fn = jax.jit(lambda losses, state, mask, step, extras: weighting.update(
      losses, state, mask=mask, step=step, loss_fn=losses_only, **extras))
  return fn(losses, state, mask, step, extras)


@pytest.mark.parametrize("method", ["jvp", "lookahead"])
def test_l2rw_matches_numpy_and_finite_differences(method):
  params, batch, meta = make_data(0)
  rng = np.random.default_rng(1)
  mask = rng.random(16) > 0.25
  alpha = 0.3
  u = np_l2rw_u(params, batch, meta, alpha, np.ones(16, bool))
  # L2RW's identity -d/d eps_i L_meta(theta_hat(eps)) = alpha <grad l_i, grad L_meta> at
  # eps = 0, checked independently of JAX by finite differences.
  np.testing.assert_allclose(u, fd_l2rw_u(params, batch, meta, alpha), rtol=1e-6, atol=1e-9)
  assert (u > 0).any() and (u < 0).any()

  wt = l2rw(alpha, method=method)
  losses = jnp.asarray(np_ce(np_theta(params), batch)[0], jnp.float32)
  w, state = run_update(wt, losses, wt.init(), params, batch, meta, mask=jnp.asarray(mask))
  expected = np_normalize(np.where(mask, u, 0.0), mask)
  np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
  assert int(state.count) == 1


def test_l2rw_methods_agree_in_float64():
  with jax.enable_x64(True):
    params, batch, meta = make_data(2, dtype=np.float64)
    losses = jnp.asarray(np_ce(np_theta(params), batch)[0])
    out = {}
    for method in ["jvp", "lookahead"]:
      wt = l2rw(0.1, method=method)
      out[method] = np.asarray(run_update(wt, losses, wt.init(), params, batch, meta)[0])
    np.testing.assert_allclose(out["jvp"], out["lookahead"], rtol=1e-6, atol=1e-7)
    u = np_l2rw_u(params, batch, meta, 0.1, np.ones(16, bool))
    np.testing.assert_allclose(out["jvp"], np_normalize(u, np.ones(16, bool)), rtol=1e-6,
                               atol=1e-7)


def test_l2rw_downweights_flipped_labels():
  # Two well-separated classes; the meta set is clean, a quarter of the batch is flipped.
  rng = np.random.default_rng(3)
  centers = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
  y = rng.integers(0, 2, 32)
  x = (centers[y] + 0.3 * rng.normal(size=(32, 3))).astype(np.float32)
  flipped = np.arange(32) % 4 == 0
  noisy_y = np.where(flipped, 1 - y, y)
  my = rng.integers(0, 2, 16)
  meta = {"x": (centers[my] + 0.3 * rng.normal(size=(16, 3))).astype(np.float32), "y": my}
  params = {"w": np.zeros((3, C), np.float32), "b": np.zeros(C, np.float32)}
  batch = {"x": x, "y": noisy_y}
  wt = l2rw(0.1)
  losses = jnp.asarray(np_ce(np_theta(params), batch)[0], jnp.float32)
  w = np.asarray(run_update(wt, losses, wt.init(), params, batch, meta)[0])
  np.testing.assert_array_equal(w[flipped], 0.0)
  assert np.all(w[~flipped] > 0)


def test_l2rw_all_negative_is_uniform_and_meta_mask():
  # Every example's gradient opposes the meta gradient: uniform fallback.
  def sq(w, batch):
    return (batch["x"] * w - batch["y"]) ** 2

  wt = l2rw(0.1)
  update = jax.jit(lambda mask, meta: wt.update(
      jnp.ones(3), wt.init(), params=jnp.float32(0.0), loss_fn=sq,
      batch={"x": jnp.ones(3), "y": -jnp.ones(3)}, meta_batch=meta, mask=mask)[0])
  w = update(jnp.array([True, False, True]),
             {"x": jnp.ones(2), "y": jnp.ones(2), "mask": jnp.ones(2, bool)})
  np.testing.assert_array_equal(w, [1.0, 0.0, 1.0])
  # meta_batch["mask"] drops meta examples: only the first (y = -1) counts, so all agree.
  w = update(jnp.ones(3, bool),
             {"x": jnp.ones(2), "y": jnp.array([-1.0, 1.0]), "mask": jnp.array([True, False])})
  np.testing.assert_allclose(w, [1.0, 1.0, 1.0])


# ------------------------------------------------------------------ Meta-Weight-Net


def np_net(net, feats):
  w1, b1 = np.asarray(net["w1"], np.float64), np.asarray(net["b1"], np.float64)
  w2, b2 = np.asarray(net["w2"], np.float64), np.asarray(net["b2"], np.float64)
  a = feats @ w1 + b1
  h = np.maximum(a, 0.0)
  v = 1.0 / (1.0 + np.exp(-(h @ w2[:, 0] + b2[0])))
  return v, a, h


def np_lookahead(net, feats, params, batch, alpha, valid):
  v, _, _ = np_net(net, feats)
  theta = np_theta(params)
  _, _, g = np_ce(theta, batch)
  n = valid.sum()
  return theta - alpha / n * (np.where(valid, v, 0.0) @ g)


def np_meta_net_grad(net, feats, params, batch, meta_grad_fn, alpha, valid):
  """The meta-gradient w.r.t. the net by the chain rule, written out (MW-Net step 2)."""
  v, a, h = np_net(net, feats)
  theta = np_theta(params)
  _, _, g = np_ce(theta, batch)
  n = valid.sum()
  theta_hat = theta - alpha / n * (np.where(valid, v, 0.0) @ g)
  g_meta = meta_grad_fn(theta_hat)
  c = np.where(valid, -alpha / n * (g @ g_meta), 0.0)
  dz = c * v * (1 - v)
  w2 = np.asarray(net["w2"], np.float64)[:, 0]
  da = dz[:, None] * w2[None, :] * (a > 0)
  return {"w1": feats.T @ da, "b1": da.sum(0), "w2": (h.T @ dz)[:, None],
          "b2": np.array([dz.sum()])}


def fd_meta_net_grad(net, feats, params, batch, meta_loss_fn, alpha, valid, h=1e-6):
  out = {}
  for name, value in net.items():
    value = np.asarray(value, np.float64)
    grad = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
      vals = []
      for sign in (1, -1):
        pert = {k: np.asarray(v, np.float64).copy() for k, v in net.items()}
        pert[name][idx] += sign * h
        vals.append(meta_loss_fn(np_lookahead(pert, feats, params, batch, alpha, valid)))
      grad[idx] = (vals[0] - vals[1]) / (2 * h)
    out[name] = grad
  return out


def to_f64_state(state, optimizer):
  net = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state.net)
  return MetaNetState(state.count, net, optimizer.init(net))


@pytest.mark.parametrize("method", ["jvp", "exact_second_order"])
def test_meta_weight_net_matches_numpy(method):
  params, batch, meta = make_data(4, b=12)
  rng = np.random.default_rng(5)
  mask = rng.random(12) > 0.2
  alpha, lr = 0.5, 3.0
  losses64 = np_ce(np_theta(params), batch)[0]
  feats = np.where(mask, losses64, 0.0)[:, None]
  wt = meta_weight_net(hidden=6, optimizer=optax.sgd(lr), inner_lr=alpha, key=7, method=method)
  state = wt.init()
  meta_grad = lambda th: np_ce(th, meta)[2].mean(0)
  g = np_meta_net_grad(state.net, feats, params, batch, meta_grad, alpha, mask)
  g_fd = fd_meta_net_grad(state.net, feats, params, batch,
                          lambda th: np_meta_loss(th, meta), alpha, mask)
  for k in g:  # the written-out chain rule against finite differences
    np.testing.assert_allclose(g[k], g_fd[k], rtol=1e-5, atol=1e-9)
  assert max(np.abs(x).max() for x in g.values()) > 1e-4

  new_net = {k: np.asarray(v, np.float64) - lr * g[k] for k, v in state.net.items()}
  expected = np_normalize(np_net(new_net, feats)[0], mask)
  w, new_state = run_update(wt, jnp.asarray(losses64, jnp.float32), state, params, batch, meta,
                            mask=jnp.asarray(mask))
  np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
  for k in new_net:
    np.testing.assert_allclose(new_state.net[k], new_net[k], rtol=1e-5, atol=1e-6)
  assert int(new_state.count) == 1


def test_meta_weight_net_methods_agree_in_float64_with_adam():
  with jax.enable_x64(True):
    params, batch, meta = make_data(6, b=12, dtype=np.float64)
    losses = np_ce(np_theta(params), batch)[0]
    mask = np.arange(12) % 5 != 0
    opt = optax.adam(1e-2)
    out = {}
    for method in ["jvp", "exact_second_order"]:
      wt = meta_weight_net(hidden=5, optimizer=opt, inner_lr=0.2, key=1, method=method)
      state = to_f64_state(wt.init(), opt)
      w, state = run_update(wt, jnp.asarray(losses), state, params, batch, meta,
                            mask=jnp.asarray(mask))
      out[method] = (np.asarray(w), jax.tree.map(np.asarray, state))
      # Adam's first step: -lr * g / (|g| + eps) with the bias-corrected moments.
      g = np_meta_net_grad(jax.tree.map(np.asarray, to_f64_state(wt.init(), opt).net),
                           np.where(mask, losses, 0.0)[:, None], params, batch,
                           lambda th: np_ce(th, meta)[2].mean(0), 0.2, mask)
      for k, v in wt.init().net.items():
        np.testing.assert_allclose(state.net[k], v - 1e-2 * g[k] / (np.abs(g[k]) + 1e-8),
                                   rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["jvp"][0], out["exact_second_order"][0], rtol=1e-6,
                               atol=1e-7)
    chex.assert_trees_all_close(out["jvp"][1], out["exact_second_order"][1], rtol=1e-10,
                                atol=1e-12)


def test_meta_weight_net_init_key_and_schedule():
  wt = meta_weight_net(hidden=4, key=3)
  a, b, c = wt.init(), wt.init(), wt.init(jax.random.PRNGKey(4))
  np.testing.assert_array_equal(a.net["w1"], b.net["w1"])
  assert not np.allclose(a.net["w1"], c.net["w1"])
  assert a.net["w1"].shape == (1, 4) and a.net["w2"].shape == (4, 1)
  bound = 1.0  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 1
  assert np.all(np.abs(a.net["w1"]) <= bound) and np.all(np.abs(a.net["w2"]) <= 0.5)
  # A schedule for inner_lr equal to a constant gives the constant's result.
  params, batch, meta = make_data(8, b=8)
  losses = jnp.asarray(np_ce(np_theta(params), batch)[0], jnp.float32)
  ws = meta_weight_net(hidden=4, optimizer=optax.sgd(1.0), inner_lr=lambda t: 0.1 * (t + 1))
  wc = meta_weight_net(hidden=4, optimizer=optax.sgd(1.0), inner_lr=0.3)
  w1, _ = run_update(ws, losses, ws.init(), params, batch, meta, step=jnp.asarray(2))
  w2, _ = run_update(wc, losses, wc.init(), params, batch, meta, step=jnp.asarray(2))
  np.testing.assert_allclose(w1, w2, rtol=1e-6)


# --------------------------------------------------------------------- self-taught


def np_features(losses, logits, valid):
  p = np_softmax(np.asarray(logits, np.float64))
  srt = np.sort(p, -1)[:, ::-1]
  ent = -(p * np.log(p)).sum(-1) / math.log(p.shape[-1])
  f = np.stack([np.log1p(np.maximum(losses, 0)), srt[:, 0], ent, srt[:, 0] - srt[:, 1]], -1)
  return np.where(valid[:, None], f, 0.0)


def np_top_fraction(scores, valid, fraction):
  n = valid.sum()
  k = min(max(math.ceil(fraction * n), 1), n)
  order = sorted(np.flatnonzero(valid), key=lambda i: (-scores[i], i))
  sel = np.zeros(len(scores), bool)
  sel[order[:k]] = True
  return sel


@pytest.mark.parametrize("warm", [False, True])
def test_self_taught_matches_numpy(warm):
  params, batch, _ = make_data(9, b=16)
  rng = np.random.default_rng(10)
  mask = rng.random(16) > 0.2
  alpha, lr, frac = 0.5, 2.0, 0.3
  losses64, logits, _ = np_ce(np_theta(params), batch)
  wt = self_taught(hidden=6, optimizer=optax.sgd(lr), inner_lr=alpha, meta_fraction=frac,
                   warmup_steps=5 if warm else 0, key=2)
  state = wt.init()
  feats = np_features(losses64, logits, mask)
  score = -losses64 if warm else np_net(state.net, feats)[0]
  sel = np_top_fraction(score, mask, frac)
  assert sel.sum() == math.ceil(frac * mask.sum())

  def meta_grad(th):
    return np_ce(th, batch)[2][sel].mean(0)

  g = np_meta_net_grad(state.net, feats, params, batch, meta_grad, alpha, mask)
  g_fd = fd_meta_net_grad(state.net, feats, params, batch,
                          lambda th: np_ce(th, batch)[0][sel].mean(), alpha, mask)
  for k in g:
    np.testing.assert_allclose(g[k], g_fd[k], rtol=1e-5, atol=1e-9)
  new_net = {k: np.asarray(v, np.float64) - lr * g[k] for k, v in state.net.items()}
  expected = mask.astype(float) if warm else np_normalize(np_net(new_net, feats)[0], mask)

  w, new_state = run_update(wt, jnp.asarray(losses64, jnp.float32), state, params, batch,
                            mask=jnp.asarray(mask), logits=jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
  for k in new_net:
    np.testing.assert_allclose(new_state.net[k], new_net[k], rtol=1e-5, atol=1e-6)


def test_top_fraction_mask_ties_and_masks():
  from reweight.sample.meta import top_fraction_mask
  select = jax.jit(top_fraction_mask, static_argnums=2)
  scores = jnp.array([1.0, 2.0, 2.0, 0.5, 2.0, 3.0])
  valid = jnp.array([True, True, True, True, False, True])
  sel = select(scores, valid, 0.5)  # k = ceil(2.5) = 3: 3.0, then the first two 2.0
  np.testing.assert_array_equal(sel, [False, True, True, False, False, True])
  np.testing.assert_array_equal(select(scores, jnp.zeros(6, bool), 0.5), False)
  np.testing.assert_array_equal(select(scores, valid, 1e-6).sum(), 1)


# ------------------------------------------------------------------- properties


B = 10
_PROPS = {}


def _prop_setup(name):
  if name not in _PROPS:
    params, batch, meta = make_data(11, b=B)
    logits = np_ce(np_theta(params), batch)[1].astype(np.float32)
    wt = {"l2rw": l2rw(0.1), "l2rw_lookahead": l2rw(0.1, method="lookahead"),
          "mwnet": meta_weight_net(hidden=4, optimizer=optax.sgd(5.0)),
          "self_taught": self_taught(hidden=4, optimizer=optax.sgd(5.0))}[name]
    fn = jax.jit(lambda losses, mask: wt.update(
        losses, wt.init(), mask=mask, params=params, loss_fn=losses_only, batch=batch,
        meta_batch=meta, logits=logits)[0])
    _PROPS[name] = fn
  return _PROPS[name]


@settings(max_examples=15, deadline=None)
@given(hnp.arrays(np.float32, B, elements=st.one_of(
    st.floats(0, 20, width=32), st.sampled_from([np.nan, np.inf, -np.inf]))),
       hnp.arrays(bool, B), st.sampled_from(["l2rw", "l2rw_lookahead", "mwnet", "self_taught"]))
def test_properties(losses, mask, name):
  w = np.asarray(_prop_setup(name)(jnp.asarray(losses), jnp.asarray(mask)))
  valid = mask & np.isfinite(losses)
  assert np.all(np.isfinite(w)) and np.all(w >= 0)
  assert np.all(w[~valid] == 0)
  np.testing.assert_allclose(w.sum(), valid.sum(), rtol=1e-5, atol=1e-5)


def test_nonfinite_loss_through_weighted():
  # The per-example function returns +inf for one example (its gradient stays finite).
  def inf_loss(params, batch):
    losses, aux = per_example(params, batch)
    return losses + batch["offset"], aux

  params, batch, meta = make_data(12, b=8)
  batch["offset"] = np.where(np.arange(8) == 3, np.inf, 0.0).astype(np.float32)
  meta["offset"] = np.zeros(8, np.float32)
  for wt in [l2rw(0.1), meta_weight_net(hidden=4), self_taught(hidden=4)]:
    loss_fn = jax.jit(reweight.weighted(inf_loss, wt))
    (loss, (state, info)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch, wt.init(), meta_batch=meta)
    w = np.asarray(info["weights"])
    assert np.isfinite(loss) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
    assert w[3] == 0 and np.all(np.isfinite(w)) and w.sum() == pytest.approx(7.0, rel=1e-6)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("make, match", [
    (lambda: l2rw(method="grad"), "method='grad' is not one of \\['jvp', 'lookahead'\\]"),
    (lambda: l2rw(0.0), "inner_lr=0.0 must be a positive"),
    (lambda: meta_weight_net(method="jvp2"), "method='jvp2' is not one of"),
    (lambda: meta_weight_net(hidden=0), "hidden=0 must be a positive int"),
    (lambda: meta_weight_net(inner_lr=-1.0), "inner_lr=-1.0"),
    (lambda: self_taught(meta_fraction=0.0), "meta_fraction=0.0 must be in \\(0, 1\\]"),
    (lambda: self_taught(meta_fraction=1.5), "meta_fraction=1.5"),
    (lambda: self_taught(warmup_steps=-1), "warmup_steps=-1"),
    (lambda: self_taught(hidden=2.5), "hidden=2.5"),
])
def test_bad_arguments(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_missing_extras_and_bad_logits():
  params, batch, meta = make_data(13, b=4)
  losses = jnp.ones(4)
  with pytest.raises(ValueError, match="needs the extras \\['meta_batch'\\]"):
    l2rw().update(losses, l2rw().init(), params=params, loss_fn=losses_only, batch=batch)
  with pytest.raises(ValueError, match="\\['batch', 'loss_fn', 'meta_batch', 'params'\\]"):
    meta_weight_net().update(losses, meta_weight_net().init())
  wt = self_taught()
  with pytest.raises(ValueError, match="needs the extras \\['logits'\\]"):
    wt.update(losses, wt.init(), params=params, loss_fn=losses_only, batch=batch)
  with pytest.raises(ValueError, match="logits of shape \\[batch, classes >= 2\\]"):
    wt.update(losses, wt.init(), params=params, loss_fn=losses_only, batch=batch,
              logits=jnp.ones((4,)))


# ------------------------------------------------------------------- sharding


SHARDING_CODE = """
import json, numpy as np, jax, jax.numpy as jnp, optax, reweight
from reweight import testing
from reweight.sample.meta import l2rw, meta_weight_net, self_taught
rng = np.random.default_rng(0)
B, M, D, C = 32, 16, 4, 3
def per_example(params, batch):  # cross-entropy, in the inputs' precision
  logits = batch["x"] @ params["w"] + params["b"]
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, batch["y"][:, None], axis=-1)[:, 0], {"logits": logits}
loss_fn = lambda p, b: per_example(p, b)[0]
params = {"w": rng.normal(size=(D, C)).astype(np.float32),
          "b": rng.normal(size=C).astype(np.float32)}
batch = {"x": rng.normal(size=(B, D)).astype(np.float32),
         "y": rng.integers(0, C, B).astype(np.int32)}
meta = {"x": rng.normal(size=(M, D)).astype(np.float32),
        "y": rng.integers(0, C, M).astype(np.int32)}
losses, aux = per_example(params, batch)
losses, logits = np.asarray(losses), np.asarray(aux["logits"])
mask = rng.random(B) > 0.2
makers = {
  "l2rw": lambda axis_name=None: l2rw(0.1, axis_name=axis_name),
  "l2rw_lookahead": lambda axis_name=None: l2rw(0.1, axis_name=axis_name, method="lookahead"),
  "mwnet": lambda axis_name=None: meta_weight_net(8, inner_lr=0.5, axis_name=axis_name),
  "mwnet_exact": lambda axis_name=None: meta_weight_net(
      8, inner_lr=0.5, axis_name=axis_name, method="exact_second_order"),
  "self_taught": lambda axis_name=None: self_taught(
      8, inner_lr=0.5, meta_fraction=0.3, warmup_steps=1, axis_name=axis_name),
}
res = {}
for name, make in makers.items():
  out = testing.layouts(make, losses, mask=mask,
                        per_example={"batch": batch, "logits": logits},
                        replicated={"params": params, "meta_batch": meta},
                        static={"loss_fn": loss_fn}, steps=2)
  res[name] = {m: testing.max_difference(out, "single", m) for m in out}
  res[name + "_nonuniform"] = float(np.abs(out["single"]["weights"][-1] - mask).max())
gbatch = dict(batch, mask=mask)
for name in ["mwnet", "self_taught"]:
  out = testing.gradient_layouts(makers[name], per_example, params, gbatch,
                                 replicated_kwargs={"meta_batch": meta})
  res[name + "_gradients"] = {m: testing.max_difference(out, "single", m) for m in out}
res["devices"] = len(jax.devices())
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def sharding_results():
  return testing.run_with_devices(SHARDING_CODE, num_devices=8)


@pytest.mark.multidevice
def test_equal_on_1_device_8_devices_shard_map_and_pmap(sharding_results):
  res = dict(sharding_results)
  assert res.pop("devices") == 8
  for name in [k for k in res if k.endswith("_nonuniform")]:
    assert res.pop(name) > 0.05, name  # the weights are not trivially uniform
  assert len(res) == 7
  testing.assert_layouts_agree(res)
