"""Tests for reweight.optim.projections: AdamP/SGDP vs the PyPI `adamp` package, NaP and
spectral projections vs NumPy."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reweight.optim.projections import (
    adamp,
    normalize_and_project,
    project_radial,
    sgdp,
    spectral_clip,
    spectral_hammer,
    spectral_normalize,
)

torch = pytest.importorskip("torch")
adamp_lib = pytest.importorskip("adamp")

# ----------------------------------------------------------------------------------------
# AdamP / SGDP parity with the reference torch implementation.
# ----------------------------------------------------------------------------------------

_RNG = np.random.default_rng(0)
_X = _RNG.normal(size=(8, 6)).astype(np.float32)
_Y = _RNG.normal(size=(8, 2)).astype(np.float32)
_T = _RNG.normal(size=(3, 2, 2, 2)).astype(np.float32)  # torch conv layout (out, in, kh, kw)
# Torch-layout initial parameters: w1 (4, 6) is channel-wise scale invariant, w2 (3, 4)
# layer-wise scale invariant, w3 (2, 3) not scale invariant, conv (3, 2, 2, 2) channel-wise.
_INIT = {
    "w1": _RNG.normal(size=(4, 6)).astype(np.float32),
    "w2": _RNG.normal(size=(3, 4)).astype(np.float32),
    "w3": _RNG.normal(size=(2, 3)).astype(np.float32),
    "conv": _RNG.normal(size=(3, 2, 2, 2)).astype(np.float32),
    "b": _RNG.normal(size=(3,)).astype(np.float32),
}


def _torch_loss(p):
  a = p["w1"] / p["w1"].norm(dim=1, keepdim=True)
  h = torch.tanh(torch.from_numpy(_X) @ a.T)
  b = p["w2"] / p["w2"].norm()
  h2 = torch.tanh(h @ b.T + p["b"])
  o = h2 @ p["w3"].T
  c = p["conv"] / p["conv"].reshape(3, -1).norm(dim=1).reshape(3, 1, 1, 1)
  return ((o - torch.from_numpy(_Y)) ** 2).mean() + torch.sin(c * torch.from_numpy(_T)).sum()


def _to_flax(name, w):
  if name == "conv":
    return np.transpose(w, (2, 3, 1, 0))  # (kh, kw, in, out)
  return w.T if w.ndim == 2 else w


def _from_flax(name, w):
  if name == "conv":
    return np.transpose(w, (3, 2, 0, 1))
  return w.T if w.ndim == 2 else w


def _jax_loss(p, layout):
  if layout == "torch":
    w1, w2, w3 = p["w1"].T, p["w2"].T, p["w3"].T
    conv = jnp.transpose(p["conv"], (2, 3, 1, 0))
  else:
    w1, w2, w3, conv = p["w1"], p["w2"], p["w3"], p["conv"]
  a = w1 / jnp.linalg.norm(w1, axis=0, keepdims=True)
  h = jnp.tanh(_X @ a)
  b = w2 / jnp.linalg.norm(w2)
  h2 = jnp.tanh(h @ b + p["b"])
  o = h2 @ w3
  c = conv / jnp.sqrt(jnp.sum(conv**2, axis=(0, 1, 2), keepdims=True))
  t = np.transpose(_T, (2, 3, 1, 0))
  return jnp.mean((o - _Y) ** 2) + jnp.sum(jnp.sin(c * t))


def _run_torch(make_opt, steps=20):
  p = {k: torch.tensor(v, requires_grad=True) for k, v in _INIT.items()}
  opt = make_opt(list(p.values()))
  for _ in range(steps):
    opt.zero_grad()
    _torch_loss(p).backward()
    opt.step()
  return {k: v.detach().numpy() for k, v in p.items()}


def _run_jax(opt, layout, steps=20):
  if layout == "flax":
    p = {k: jnp.asarray(_to_flax(k, v)) for k, v in _INIT.items()}
  else:
    p = {k: jnp.asarray(v) for k, v in _INIT.items()}
  state = opt.init(p)

  @jax.jit
  def step(p, state):
    g = jax.grad(_jax_loss)(p, layout)
    u, state = opt.update(g, state, p)
    return optax.apply_updates(p, u), state

  for _ in range(steps):
    p, state = step(p, state)
  p = {k: np.asarray(v) for k, v in p.items()}
  if layout == "flax":
    p = {k: _from_flax(k, v) for k, v in p.items()}
  return p


def test_initial_gradients_exercise_every_branch():
  # The parity tests are meaningful only if the channel branch (w1, conv), the layer branch
  # (w2) and no projection (w3) all occur: check with the torch gradients.
  p = {k: torch.tensor(v, requires_grad=True) for k, v in _INIT.items()}
  _torch_loss(p).backward()

  def cos(g, w):
    g, w = g.reshape(g.shape[0], -1), w.reshape(w.shape[0], -1)
    return np.abs((g * w).sum(1)) / np.linalg.norm(g, axis=1) / np.linalg.norm(w, axis=1)

  g = {k: v.grad.numpy() for k, v in p.items()}
  for name in ("w1", "conv"):
    w = _INIT[name]
    assert cos(g[name], w).max() < 0.1 / math.sqrt(w[0].size)
  w = _INIT["w2"]
  assert cos(g["w2"], w).max() > 0.1 / math.sqrt(w[0].size)
  assert cos(g["w2"].reshape(1, -1), w.reshape(1, -1)).max() < 0.1 / math.sqrt(w.size)
  w = _INIT["w3"]
  assert cos(g["w3"].reshape(1, -1), w.reshape(1, -1)).max() > 0.1 / math.sqrt(w.size)


@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.1), (True, 0.1)])
def test_adamp_matches_reference(nesterov, weight_decay):
  kw = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, nesterov=nesterov)
  ref = _run_torch(lambda ps: adamp_lib.AdamP(ps, **kw))
  ours = _run_jax(adamp(0.01, weight_decay=weight_decay, nesterov=nesterov), "flax")
  for k in _INIT:
    np.testing.assert_allclose(ours[k], ref[k], atol=1e-5, rtol=0, err_msg=k)
    assert np.abs(ref[k] - _INIT[k]).max() > 1e-2  # every parameter moved


@pytest.mark.parametrize(
    "momentum,dampening,nesterov,weight_decay",
    [(0.9, 0.0, False, 0.1), (0.9, 0.0, True, 0.1), (0.5, 0.2, False, 0.0)],
)
def test_sgdp_matches_reference(momentum, dampening, nesterov, weight_decay):
  kw = dict(lr=0.05, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov)
  ref = _run_torch(lambda ps: adamp_lib.SGDP(ps, **kw))
  ours = _run_jax(sgdp(0.05, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                       nesterov=nesterov), "flax")
  for k in _INIT:
    np.testing.assert_allclose(ours[k], ref[k], atol=1e-5, rtol=0, err_msg=k)


def test_adamp_torch_layout_with_channel_axis_0():
  kw = dict(lr=0.01, weight_decay=0.1, nesterov=True)
  ref = _run_torch(lambda ps: adamp_lib.AdamP(ps, **kw))
  ours = _run_jax(adamp(0.01, weight_decay=0.1, nesterov=True, channel_axis=0), "torch")
  for k in _INIT:
    np.testing.assert_allclose(ours[k], ref[k], atol=1e-5, rtol=0, err_msg=k)


def test_project_radial_wraps_any_optimizer():
  # optax.adam has the same (non-Nesterov) moments as AdamP: the combinator around it must
  # reproduce the reference AdamP without weight decay.
  ref = _run_torch(lambda ps: adamp_lib.AdamP(ps, lr=0.01))
  ours = _run_jax(project_radial(optax.adam(0.01)), "flax")
  for k in _INIT:
    np.testing.assert_allclose(ours[k], ref[k], atol=1e-5, rtol=0, err_msg=k)


def test_inject_hyperparams():
  # Hyperparameters passed as arrays (optax.inject_hyperparams) give the same trajectory.
  ref = _run_torch(lambda ps: adamp_lib.SGDP(ps, lr=0.05, momentum=0.9, weight_decay=0.1))
  inject = optax.inject_hyperparams(sgdp)  # the plain idiom: nothing static to name
  ours = _run_jax(inject(learning_rate=0.05, momentum=0.9, weight_decay=0.1), "flax")
  for k in _INIT:
    np.testing.assert_allclose(ours[k], ref[k], atol=1e-5, rtol=0, err_msg=k)


def test_project_radial_needs_params():
  opt = project_radial(optax.sgd(0.1))
  p = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="needs `params`"):
    opt.update(p, opt.init(p))


# ----------------------------------------------------------------------------------------
# NaP
# ----------------------------------------------------------------------------------------


def test_normalize_and_project_keeps_initial_norms():
  rng = np.random.default_rng(1)
  p = {"k": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
       "conv": jnp.asarray(rng.normal(size=(2, 2, 3, 2)), jnp.float32),
       "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
  n0 = {k: np.linalg.norm(np.asarray(v)) for k, v in p.items()}
  opt = optax.chain(optax.adam(0.3), normalize_and_project())
  ref = optax.adam(0.3)
  state, ref_state = opt.init(p), ref.init(p)
  for _ in range(5):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32) + x, p)
    u_ref, ref_state = ref.update(g, ref_state, p)
    u, state = opt.update(g, state, p)
    new = optax.apply_updates(p, u)
    for k in ("k", "conv"):
      raw = np.asarray(p[k], np.float64) + np.asarray(u_ref[k], np.float64)
      np.testing.assert_allclose(new[k], raw * n0[k] / np.linalg.norm(raw), atol=1e-5)
      np.testing.assert_allclose(np.linalg.norm(np.asarray(new[k])), n0[k], rtol=1e-5)
    np.testing.assert_allclose(new["b"], np.asarray(p["b"]) + np.asarray(u_ref["b"]), atol=1e-6)
    p = new


# ----------------------------------------------------------------------------------------
# Spectral projections vs NumPy SVD
# ----------------------------------------------------------------------------------------


def _with_singular_values(rng, shape, s):
  """Flax-layout tensor whose (fan_in, fan_out) matrix has singular values ``s``."""
  fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
  u, _ = np.linalg.qr(rng.normal(size=(fan_in, len(s))))
  v, _ = np.linalg.qr(rng.normal(size=(fan_out, len(s))))
  return ((u * s) @ v.T).reshape(shape).astype(np.float32)


def _np_svd(w):
  m = np.asarray(w, np.float64).reshape(-1, w.shape[-1])
  c = math.sqrt(m.shape[1] / m.shape[0])
  u, s, vt = np.linalg.svd(m / c, full_matrices=False)
  return m, c, u, s, vt


def _params_and_update(rng):
  c1 = math.sqrt(3 / 5)
  c2 = math.sqrt(4 / 12)
  p = {
      # RMS->RMS singular values 3, 1.5, 0.5 (raw singular values times c).
      "k": jnp.asarray(_with_singular_values(rng, (5, 3), c1 * np.array([3.0, 1.5, 0.5]))),
      "conv": jnp.asarray(_with_singular_values(rng, (2, 2, 3, 4),
                                                c2 * np.array([2.0, 1.0, 0.7, 0.2]))),
      "small": jnp.asarray(_with_singular_values(rng, (4, 4), np.array([0.8, 0.4, 0.2, 0.1]))),
      "b": jnp.asarray(rng.normal(size=(3,)) * 5, jnp.float32),
  }
  u = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 1e-3, jnp.float32), p)
  return p, u


def test_spectral_clip_matches_numpy():
  rng = np.random.default_rng(2)
  p, u = _params_and_update(rng)
  opt = spectral_clip(max_sv=1.0)
  out, _ = jax.jit(opt.update)(u, opt.init(p), p)
  new = optax.apply_updates(p, out)
  for k in ("k", "conv", "small"):
    _, c, uu, s, vt = _np_svd(np.asarray(p[k]) + np.asarray(u[k]))
    expected = (c * (uu * np.minimum(s, 1.0)) @ vt).reshape(p[k].shape)
    np.testing.assert_allclose(new[k], expected, atol=1e-5)
  np.testing.assert_allclose(new["b"], np.asarray(p["b"]) + np.asarray(u["b"]))


def test_spectral_normalize_matches_numpy_and_keeps_vector():
  rng = np.random.default_rng(3)
  p, u = _params_and_update(rng)
  opt = spectral_normalize(num_iters=2, max_sv=1.0)
  state = jax.jit(opt.init)(p)
  out, state = jax.jit(opt.update)(u, state, p)
  new = optax.apply_updates(p, out)
  for k in ("k", "conv", "small"):
    m, c, _, s, vt = _np_svd(np.asarray(p[k]) + np.asarray(u[k]))
    expected = (c * (m / c) / max(1.0, s[0])).reshape(p[k].shape)
    np.testing.assert_allclose(new[k], expected, atol=1e-5)
    # The persistent vector is the top right singular vector of W / c.
    assert abs(np.dot(np.asarray(state.vectors[k]), vt[0])) > 1 - 1e-5
  np.testing.assert_allclose(new["b"], np.asarray(p["b"]) + np.asarray(u["b"]))


def test_spectral_hammer_matches_numpy():
  rng = np.random.default_rng(4)
  p, u = _params_and_update(rng)
  # The hammer's error is first order in the error of the power-iteration vector (which
  # shrinks by (s2 / s1)^2 = 1/4 per iteration here), so use enough warm-started iterations.
  opt = spectral_hammer(num_iters=10, max_sv=1.0)
  out, _ = jax.jit(opt.update)(u, jax.jit(opt.init)(p), p)
  new = optax.apply_updates(p, out)
  for k in ("k", "conv", "small"):
    m, c, uu, s, vt = _np_svd(np.asarray(p[k]) + np.asarray(u[k]))
    expected = (c * (m / c + (1.0 - s[0]) * np.outer(uu[:, 0], vt[0]))).reshape(p[k].shape)
    np.testing.assert_allclose(new[k], expected, atol=1e-5)
    s_new = _np_svd(np.asarray(new[k]))[3]
    np.testing.assert_allclose(np.sort(s_new)[::-1], np.sort(np.r_[1.0, s[1:]])[::-1],
                               atol=1e-5)
  np.testing.assert_allclose(new["b"], np.asarray(p["b"]) + np.asarray(u["b"]))


def test_spectral_bad_arguments():
  with pytest.raises(ValueError, match="max_sv=0"):
    spectral_clip(max_sv=0)
  with pytest.raises(ValueError, match="momentum=1.0"):
    sgdp(0.1, momentum=1.0)
