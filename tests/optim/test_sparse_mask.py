"""Tests for reweight.optim.sparse_mask (LIFT) against a NumPy re-derivation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reweight.optim.sparse_mask import lift, principal_mask_indices


def _np_mask(w, f, k):
  u, s, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
  approx = (u[:, :f] * s[:f]) @ vt[:f]
  scores = np.abs(approx).ravel()
  order = np.argsort(-scores, kind="stable")
  # The top-k set is well defined only if the k-th and (k+1)-th scores are separated.
  if k < scores.size:
    assert scores[order[k - 1]] - scores[order[k]] > 1e-4
  return np.sort(order[:k])


def _params(rng):
  return {
      "a": {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)},
      "b": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)},
  }


def test_mask_is_numpy_topk_of_low_rank_approximation():
  rng = np.random.default_rng(0)
  for shape, f, k in [((6, 5), 2, 11), ((4, 7), 1, 9), ((5, 5), 3, 25)]:
    w = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(principal_mask_indices(jnp.asarray(w), f, k),
                                  _np_mask(w, f, k))


def test_default_k_and_only_masked_entries_change():
  params = _params(np.random.default_rng(1))
  opt = lift(optax.adamw(0.1, weight_decay=0.1), rank=2, lora_rank=1, refresh_every=5)
  state = opt.init(params)
  assert state.indices["a/kernel"].shape == (11,)  # (6 + 5) * 1
  assert state.indices["b/kernel"].shape == (7,)   # (4 + 3) * 1
  for path in ("a/kernel", "b/kernel"):
    name = path.split("/")[0]
    np.testing.assert_array_equal(state.indices[path],
                                  _np_mask(params[name]["kernel"], 2, state.indices[path].size))
  grads = jax.tree.map(lambda x: jnp.ones_like(x), params)
  u, _ = jax.jit(opt.update)(grads, state, params)
  for name in ("a", "b"):
    changed = np.flatnonzero(np.asarray(u[name]["kernel"]).ravel() != 0)
    np.testing.assert_array_equal(changed, state.indices[f"{name}/kernel"])
  assert np.all(np.asarray(u["a"]["bias"]) != 0)  # others="inner": bias is trained


def test_freeze_others_and_state_size():
  params = _params(np.random.default_rng(2))
  opt = lift(optax.adam(0.1), rank=1, k=4, targets=r"a/kernel", others="freeze")
  state = opt.init(params)
  mu = state.inner[0].mu
  assert jax.tree.leaves(mu)[0].shape == (4,) and len(jax.tree.leaves(mu)) == 1
  u, _ = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
  assert np.count_nonzero(np.asarray(u["a"]["kernel"])) == 4
  assert not np.any(np.asarray(u["a"]["bias"])) and not np.any(np.asarray(u["b"]["kernel"]))


def _np_lift_adamw(params, grads, f, lora_rank, every, lr, b1, b2, eps, wd):
  """NumPy LIFT with AdamW on the masked entries and plain AdamW on the bias."""
  p = {k: np.asarray(v, np.float64).copy() for k, v in params.items()}
  k = {n: min(p[n].size, sum(p[n].shape) * lora_rank) for n in ("ak", "bk")}
  idx = {n: _np_mask(p[n], f, k[n]) for n in ("ak", "bk")}
  m = {n: np.zeros(k[n]) for n in ("ak", "bk")}
  v = {n: np.zeros(k[n]) for n in ("ak", "bk")}
  m["bias"], v["bias"] = np.zeros(p["bias"].size), np.zeros(p["bias"].size)
  overlaps = []
  for t, g in enumerate(grads):
    if t > 0 and t % every == 0:
      for n in ("ak", "bk"):
        new = _np_mask(p[n], f, k[n])
        old_pos = {int(i): j for j, i in enumerate(idx[n])}
        keep = [old_pos.get(int(i)) for i in new]
        overlaps.append(sum(x is not None for x in keep))
        m[n] = np.array([m[n][j] if j is not None else 0.0 for j in keep])
        v[n] = np.array([v[n][j] if j is not None else 0.0 for j in keep])
        idx[n] = new
    step = t + 1
    for n in ("ak", "bk", "bias"):
      sel = idx[n] if n != "bias" else np.arange(p[n].size)
      gv = np.asarray(g[n], np.float64).ravel()[sel]
      m[n] = b1 * m[n] + (1 - b1) * gv
      v[n] = b2 * v[n] + (1 - b2) * gv**2
      mh, vh = m[n] / (1 - b1**step), v[n] / (1 - b2**step)
      flat = p[n].reshape(-1)
      flat[sel] -= lr * (mh / (np.sqrt(vh) + eps) + wd * flat[sel])
  return p, idx, m, v, overlaps


def test_two_refresh_cycles_match_numpy_adamw():
  rng = np.random.default_rng(3)
  params = {"ak": rng.normal(size=(6, 5)).astype(np.float32),
            "bk": rng.normal(size=(4, 3)).astype(np.float32),
            "bias": rng.normal(size=(5,)).astype(np.float32)}
  grads = [{n: rng.normal(size=x.shape).astype(np.float32) for n, x in params.items()}
           for _ in range(7)]
  lr, b1, b2, eps, wd = 0.3, 0.9, 0.999, 1e-8, 0.01
  ref_p, ref_idx, ref_m, ref_v, overlaps = _np_lift_adamw(
      params, grads, f=2, lora_rank=1, every=3, lr=lr, b1=b1, b2=b2, eps=eps, wd=wd)
  # Refreshes at steps 3 and 6 for both targets; the masks changed only partially, so the
  # test exercises both kept and reset moments.
  assert len(overlaps) == 4 and any(0 < o < 11 for o in overlaps[::2])

  opt = lift(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd), rank=2, lora_rank=1,
             refresh_every=3, targets=r".k")
  p = jax.tree.map(jnp.asarray, params)
  state = opt.init(p)
  step = jax.jit(opt.update)
  for g in grads:
    u, state = step(jax.tree.map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, u)
  for n in params:
    np.testing.assert_allclose(p[n], ref_p[n], rtol=1e-5, atol=1e-5, err_msg=n)
  mu, nu = state.inner[0].mu, state.inner[0].nu
  for n in ("ak", "bk"):
    np.testing.assert_array_equal(state.indices[n], ref_idx[n])
    np.testing.assert_allclose(mu[n], ref_m[n], atol=1e-6)
    np.testing.assert_allclose(nu[n], ref_v[n], atol=1e-6)
  np.testing.assert_allclose(mu["bias"], ref_m["bias"], atol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match="others='all'"):
    lift(optax.adam(0.1), rank=1, others="all")
  with pytest.raises(ValueError, match="rank=0"):
    lift(optax.adam(0.1), rank=0)
  opt = lift(optax.adam(0.1), rank=1, targets="nothing")
  with pytest.raises(ValueError, match="targets='nothing' matches no parameter with ndim=2"):
    opt.init(_params(np.random.default_rng(0)))
  opt = lift(optax.adam(0.1), rank=1, targets=r".*bias")  # 1-D leaves are never targets
  with pytest.raises(ValueError, match="available paths: \\['a/bias', 'a/kernel'"):
    opt.init(_params(np.random.default_rng(0)))


def test_targets_are_matched_as_in_reparam():
  """The same leaves as `reweight.tree_paths.select` (and so `reweight.reparam`), including
  Flax NNX state paths ending in ``/value`` for a regex that leaves it out."""
  from reweight.tree_paths import select

  rng = np.random.default_rng(3)
  nnx_like = {name: {"kernel": {"value": jnp.asarray(rng.normal(size=shape), jnp.float32)},
                     "bias": {"value": jnp.zeros(shape[1], jnp.float32)}}
              for name, shape in (("l0", (6, 5)), ("l1", (4, 3)))}
  opt = lift(optax.sgd(1.0), rank=1, k=3, targets=r".*l0/kernel", others="freeze")
  state = opt.init(nnx_like)
  assert sorted(state.indices) == select(nnx_like, r".*l0/kernel") == ["l0/kernel/value"]
  w = nnx_like["l0"]["kernel"]["value"]
  np.testing.assert_array_equal(state.indices["l0/kernel/value"], _np_mask(w, 1, 3))
  grads = jax.tree.map(jnp.ones_like, nnx_like)
  u, _ = opt.update(grads, state, nnx_like)
  expected = np.zeros(w.size)
  expected[_np_mask(w, 1, 3)] = -1.0  # SGD(lr=1) on the masked entries, zero elsewhere
  np.testing.assert_array_equal(np.asarray(u["l0"]["kernel"]["value"]).ravel(), expected)
  assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(u["l1"]))
