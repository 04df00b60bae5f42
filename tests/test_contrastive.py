"""InfoNCE (symmetric, decoupled, weighted, global batch) and the ALIP-style gate vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reweight
from reweight import contrastive, testing


def _np_info_nce(s, tau, pair_weights=None, decoupled=False, mask=None):
  """Loops over pairs: for each, the a->b row and the b->a column cross-entropies."""
  b = s.shape[0]
  tau = np.broadcast_to(np.asarray(tau, np.float64), (b,))
  valid = np.ones(b, bool) if mask is None else np.asarray(mask, bool)
  w = None if pair_weights is None else np.asarray(pair_weights, np.float64)
  out = np.zeros(b)
  for i in range(b):
    if not valid[i]:
      continue
    terms = []
    for direction in (s, s.T):
      den = 0.0
      for j in range(b):
        if not valid[j] or (decoupled and j == i):
          continue
        wij = 1.0
        if w is not None and w.ndim == 2:
          wij = w[i, j] if direction is s else w[j, i]
        den += wij * np.exp(direction[i, j] / tau[i])
      terms.append(-direction[i, i] / tau[i] + np.log(den))
    out[i] = 0.5 * sum(terms)
    if w is not None and w.ndim == 1:
      out[i] *= w[i]
  return out


def _sim(seed=0, b=6, d=5):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(b, d))
  t = rng.normal(size=(b, d)) + 0.5 * a
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  return (a @ t.T).astype(np.float32), a.astype(np.float32), t.astype(np.float32), rng


@pytest.mark.parametrize("decoupled", [False, True])
def test_info_nce_equals_numpy(decoupled):
  s, _, _, rng = _sim()
  tau_vec = rng.uniform(0.05, 0.5, s.shape[0]).astype(np.float32)
  w_pair = rng.uniform(0.0, 2.0, s.shape[0]).astype(np.float32)
  w_den = rng.uniform(0.0, 2.0, s.shape).astype(np.float32)
  w_den[0, 3] = 0.0
  mask = np.array([1, 1, 0, 1, 1, 1], bool)
  cases = [dict(tau=0.07), dict(tau=tau_vec), dict(tau=0.1, pair_weights=w_pair),
           dict(tau=tau_vec, pair_weights=w_den), dict(tau=0.2, mask=mask)]
  for case in cases:
    tau = case.pop("tau")
    got = contrastive.info_nce(s, temperature=tau, decoupled=decoupled, **case)
    want = _np_info_nce(s.astype(np.float64), tau, decoupled=decoupled, **case)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=str(case.keys()))


def test_info_nce_mean_is_clip_loss_and_directions():
  s, _, _, _ = _sim(1)
  labels = jnp.arange(s.shape[0])
  i2t = optax.softmax_cross_entropy_with_integer_labels(s / 0.1, labels)
  t2i = optax.softmax_cross_entropy_with_integer_labels(s.T / 0.1, labels)
  got = contrastive.info_nce(s, temperature=0.1)
  np.testing.assert_allclose(got, 0.5 * (i2t + t2i), rtol=1e-5)
  # decoupled: the positive leaves the denominator, so the loss drops by a log-softmax term
  dec = contrastive.info_nce(s, temperature=0.1, decoupled=True)
  p_row = jax.nn.softmax(s / 0.1, axis=1).diagonal()
  p_col = jax.nn.softmax(s / 0.1, axis=0).diagonal()
  np.testing.assert_allclose(
      got - dec, -0.5 * (jnp.log1p(-p_row) + jnp.log1p(-p_col)), rtol=1e-4, atol=1e-6)


def test_info_nce_gradient_finite_and_jit():
  s, _, _, _ = _sim(2)
  mask = np.array([1, 0, 0, 0, 0, 0], bool)  # one valid pair: empty decoupled denominator
  fn = jax.jit(lambda x: contrastive.info_nce(x, temperature=0.1, decoupled=True,
                                              mask=mask).sum())
  assert np.isfinite(float(fn(s)))
  assert np.all(np.isfinite(jax.grad(fn)(jnp.asarray(s))))
  with pytest.raises(ValueError, match="temperature"):
    contrastive.info_nce(s, temperature=np.ones(3))
  with pytest.raises(ValueError, match="temperature"):
    contrastive.info_nce(s, temperature=0.0)
  with pytest.raises(ValueError, match="pair_weights"):
    contrastive.info_nce(s, temperature=0.1, pair_weights=np.ones(3))


def _np_gate(scores_per_step, gamma, momentum, masks=None):
  mu, out = None, []
  for k, s in enumerate(scores_per_step):
    v = np.ones(len(s), bool) if masks is None else masks[k]
    m = s[v].mean()
    mu = m if mu is None else momentum * mu + (1 - momentum) * m
    g = np.minimum(np.maximum(s, 0) / mu, 1.0) ** gamma
    g = np.where(v, g, 0.0)
    out.append(g * v.sum() / g.sum())
  return out, mu


def test_consistency_gate_weights_equal_numpy():
  rng = np.random.default_rng(3)
  steps = [rng.uniform(-0.2, 1.0, 8).astype(np.float32) for _ in range(3)]
  masks = [rng.random(8) > 0.2 for _ in range(3)]
  gate = contrastive.consistency_gate(gamma=1.5, momentum=0.8)
  want, mu = _np_gate(steps, 1.5, 0.8, masks)
  state = gate.init()
  update = jax.jit(gate.update)
  for s, m, w in zip(steps, masks, want, strict=True):
    got, state = update(jnp.zeros(8), state, mask=m, consistency=s)
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(got.sum()), m.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(state.mean_similarity), mu, rtol=1e-5)
  assert int(state.count) == 3


def test_consistency_gate_from_embeddings_and_errors():
  _, a, t, rng = _sim(4)
  view = t + rng.normal(scale=0.1, size=t.shape).astype(np.float32)
  view[1] = -t[1]  # a caption that contradicts the text
  gate = contrastive.consistency_gate(gamma=2.0, embedding_keys=("text", "caption"))
  w, _ = gate.update(jnp.zeros(6), gate.init(), text=t, caption=view)
  cos = (t * view).sum(1) / np.linalg.norm(t, axis=1) / np.linalg.norm(view, axis=1)
  np.testing.assert_allclose(w, _np_gate([cos], 2.0, 0.9)[0][0], rtol=1e-5, atol=1e-6)
  assert float(w[1]) == 0.0 and float(w.min()) >= 0.0
  with pytest.raises(ValueError, match="consistency"):
    gate.update(jnp.zeros(6), gate.init(), text=t)
  with pytest.raises(ValueError, match="momentum"):
    contrastive.consistency_gate(momentum=1.0)


def test_gate_composes_with_weighted_info_nce():
  """The gate reads the consistency from the loss's aux; the loss is sum(w l) / n."""
  _, a, t, rng = _sim(5)
  cons = rng.uniform(0.0, 1.0, 6).astype(np.float32)
  gate = contrastive.consistency_gate(gamma=1.0)

  def per_pair(scale, batch):
    s = batch["a"] @ batch["t"].T
    return contrastive.info_nce(s * scale, temperature=0.1), {"consistency": batch["c"]}

  loss_fn = reweight.weighted(per_pair, gate)
  (loss, (_, info)), _ = jax.value_and_grad(loss_fn, has_aux=True)(
      jnp.float32(1.0), {"a": a, "t": t, "c": cons}, gate.init())
  w = _np_gate([cons], 1.0, 0.9)[0][0]
  per = _np_info_nce((a @ t.T).astype(np.float64), 0.1)
  np.testing.assert_allclose(info["weights"], w, rtol=1e-5)
  np.testing.assert_allclose(loss, (w * per).sum() / 6, rtol=1e-5)


GLOBAL_CODE = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
from reweight import contrastive, parallel

rng = np.random.default_rng(0)
B, D = 16, 6
a = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
t = jnp.asarray(rng.normal(size=(B, D)) + a, jnp.float32)
tau = jnp.asarray(rng.uniform(0.05, 0.3, B), jnp.float32)
w = jnp.asarray(rng.uniform(0.0, 2.0, B), jnp.float32)
mask = jnp.asarray(rng.random(B) > 0.2)
mesh = parallel.make_mesh()

def one_device(a, t, decoupled):
  an = a / jnp.linalg.norm(a, axis=1, keepdims=True)
  tn = t / jnp.linalg.norm(t, axis=1, keepdims=True)
  return contrastive.info_nce(an @ tn.T, temperature=tau, pair_weights=w, decoupled=decoupled,
                              mask=mask)

out = {"ndev": len(mesh.devices.flat)}
for decoupled in (False, True):
  def local(a, t, tau, w, mask):
    per = contrastive.info_nce_global(a, t, axis_name="data", temperature=tau,
                                      pair_weights=w, decoupled=decoupled, mask=mask)
    return per, jax.lax.psum(per.sum(), "data") / B

  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"),) * 5,
                             out_specs=(P("data"), P()), check_vma=True))
  per, total = fn(a, t, tau, w, mask)
  grad_g = jax.jit(jax.grad(lambda a, t: fn(a, t, tau, w, mask)[1], argnums=(0, 1)))(a, t)
  ref = jax.jit(one_device, static_argnums=2)(a, t, decoupled)
  grad_1 = jax.jit(jax.grad(lambda a, t: one_device(a, t, decoupled).sum() / B,
                            argnums=(0, 1)))(a, t)
  out[str(decoupled)] = {
      "loss": float(jnp.max(jnp.abs(per - ref))),
      "total": float(jnp.abs(total - ref.sum() / B)),
      "grad": max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(grad_g, grad_1)),
      "scale": float(jnp.max(jnp.abs(ref))),
  }

from reweight import testing
cons = rng.uniform(-0.1, 1.0, B).astype(np.float32)
res = testing.layouts(lambda axis_name=None: contrastive.consistency_gate(
    gamma=1.5, axis_name=axis_name), np.zeros(B, np.float32), mask=np.asarray(mask),
    per_example={"consistency": cons}, steps=2)
out["gate"] = testing.differences(res)
out["gate_weights"] = np.asarray(res["single"]["weights"]).tolist()
print(json.dumps(out))
"""


@pytest.mark.multidevice
def test_info_nce_global_on_8_devices_equals_one_device():
  res = testing.run_with_devices(GLOBAL_CODE, 8)
  assert res["ndev"] == 8
  for decoupled in ("False", "True"):
    r = res[decoupled]
    assert r["scale"] > 0.1
    assert r["loss"] < 1e-4 and r["total"] < 1e-5 and r["grad"] < 1e-5, (decoupled, r)
  # the gate's running mean and weights are global-batch ones in every layout
  testing.assert_layouts_agree({"consistency_gate": res["gate"]}, atol=1e-5)
  rng = np.random.default_rng(0)  # the subprocess's draws, replayed: a, t, tau, w, mask, cons
  rng.normal(size=(2, 16, 6))
  rng.uniform(size=(2, 16))
  mask = rng.random(16) > 0.2
  cons = rng.uniform(-0.1, 1.0, 16).astype(np.float32)
  want, _ = _np_gate([cons, cons], 1.5, 0.9, [mask, mask])
  np.testing.assert_allclose(res["gate_weights"], want, rtol=1e-5, atol=1e-6)
