"""AnyLoss: NumPy re-derivation of the authors' formulas, scikit-learn at hard predictions,
finite-difference gradients, properties and sharding."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import balanced_accuracy_score, f1_score, fbeta_score

from reweight import testing
from reweight.losses.anyloss import amplify, balanced_accuracy_loss, f_beta_loss, soft_confusion

S = 1e-5


def numpy_anyloss(logits, labels, metric, beta=1.0, amplifier=73.0, mask=None,
                  multiclass="sigmoid"):
  """The authors' binary formulas (y1, y0, TP, sum(y_pred)); one-vs-rest macro for [B, C]."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  keep = np.ones(len(labels), bool) if mask is None else np.asarray(mask, bool)
  logits, labels = logits[keep], labels[keep]
  if logits.ndim == 1:
    p = 1 / (1 + np.exp(-logits))
    a = 1 / (1 + np.exp(-amplifier * (p - 0.5)))
    y = labels.astype(np.float64)
    y1, y0 = y.sum(), (1 - y).sum()
    tp = np.sum(y * a)
    tn = len(y) - y.sum() - a.sum() + tp
    if metric == "f":
      return 1 - (1 + beta**2) * tp / (beta**2 * y1 + a.sum() + S)
    return 1 - (y0 * tp + y1 * tn) / (2 * y1 * y0 + S)
  if multiclass == "softmax":
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
  else:
    p = 1 / (1 + np.exp(-logits))
  a = 1 / (1 + np.exp(-amplifier * (p - 0.5)))
  y = np.eye(logits.shape[1])[labels]
  tp, n_k, pred = (y * a).sum(0), y.sum(0), a.sum(0)
  present = n_k > 0
  if metric == "f":
    per_class = (1 + beta**2) * tp / (beta**2 * n_k + pred + S)
  else:
    per_class = tp / (n_k + S)
  return 1 - per_class[present].mean() if present.any() else 1.0


LOSSES = {"f": f_beta_loss, "ba": balanced_accuracy_loss}


@pytest.mark.parametrize("metric, beta", [("f", 1.0), ("f", 2.0), ("ba", 1.0)])
@pytest.mark.parametrize("classes, multiclass", [(0, "sigmoid"), (4, "sigmoid"),
                                                 (4, "softmax")])
def test_matches_numpy(metric, beta, classes, multiclass):
  rng = np.random.default_rng(0)
  shape = (40,) if classes == 0 else (40, classes)
  # Probabilities near 0.5 (softmax: some logits large enough to pass 0.5).
  logits = (rng.normal(size=shape) * (0.3 if multiclass == "sigmoid" else 2.0)).astype(
      np.float32)
  labels = rng.integers(0, 2 if classes == 0 else classes, 40).astype(np.int32)
  mask = rng.random(40) > 0.2
  kw = {"beta": beta} if metric == "f" else {}
  loss = LOSSES[metric](jnp.asarray(logits), jnp.asarray(labels), mask=jnp.asarray(mask),
                        multiclass=multiclass, **kw)
  expected = numpy_anyloss(logits, labels, metric, beta, mask=mask, multiclass=multiclass)
  assert 0.05 < expected < 0.95
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["f", "ba"])
@pytest.mark.parametrize("classes, multiclass", [(0, "sigmoid"), (3, "sigmoid"),
                                                 (3, "softmax")])
def test_gradient_matches_finite_differences(metric, classes, multiclass):
  rng = np.random.default_rng(1)
  shape = (12,) if classes == 0 else (12, classes)
  logits = rng.normal(size=shape) * 0.5
  labels = rng.integers(0, 2 if classes == 0 else classes, 12)
  amp = 6.0  # smooth enough for central differences
  g = jax.grad(lambda z: LOSSES[metric](z, jnp.asarray(labels), amplifier=amp,
                                        multiclass=multiclass))(jnp.asarray(logits, jnp.float32))
  fd = np.zeros_like(logits)
  eps = 1e-5
  for idx in np.ndindex(logits.shape):
    up, down = logits.copy(), logits.copy()
    up[idx] += eps
    down[idx] -= eps
    fd[idx] = (numpy_anyloss(up, labels, metric, amplifier=amp, multiclass=multiclass) -
               numpy_anyloss(down, labels, metric, amplifier=amp, multiclass=multiclass)
               ) / (2 * eps)
  np.testing.assert_allclose(g, fd, rtol=2e-3, atol=2e-5)


def test_hard_predictions_match_scikit_learn():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, 50)
  pred = np.where(rng.random(50) < 0.7, labels, 1 - labels)
  logits = jnp.asarray(np.where(pred == 1, 8.0, -8.0), jnp.float32)  # A(p) within 1e-6 of 0/1
  for beta in (0.5, 1.0, 2.0):
    np.testing.assert_allclose(f_beta_loss(logits, jnp.asarray(labels), beta),
                               1 - fbeta_score(labels, pred, beta=beta), atol=1e-4)
  np.testing.assert_allclose(balanced_accuracy_loss(logits, jnp.asarray(labels)),
                             1 - balanced_accuracy_score(labels, pred), atol=1e-4)
  labels = np.arange(60) % 4
  pred = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 4, 60))
  for multiclass, logits in (("softmax", np.eye(4)[pred] * 12.0),
                            ("sigmoid", np.eye(4)[pred] * 24.0 - 12.0)):
    logits = jnp.asarray(logits, jnp.float32)
    np.testing.assert_allclose(f_beta_loss(logits, jnp.asarray(labels), multiclass=multiclass),
                               1 - f1_score(labels, pred, average="macro"), atol=1e-4)
    np.testing.assert_allclose(
        balanced_accuracy_loss(logits, jnp.asarray(labels), multiclass=multiclass),
        1 - balanced_accuracy_score(labels, pred), atol=1e-4)


def test_amplifier_and_soft_confusion():
  p = np.array([0.0, 0.2, 0.5, 0.51, 1.0])
  np.testing.assert_allclose(amplify(jnp.asarray(p)), 1 / (1 + np.exp(-73 * (p - 0.5))),
                             rtol=1e-5, atol=1e-30)
  logits = jnp.array([[3.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
  c = soft_confusion(logits, jnp.array([0, 0, 1]), mask=jnp.array([True, True, False]),
                     multiclass="softmax")
  a = np.asarray(amplify(jax.nn.softmax(logits[:2])))
  y = np.eye(2)[[0, 0]]
  np.testing.assert_allclose(c.tp, (y * a).sum(0), rtol=1e-6)
  np.testing.assert_allclose(c.fp, ((1 - y) * a).sum(0), rtol=1e-6)
  np.testing.assert_allclose(c.fn, (y * (1 - a)).sum(0), rtol=1e-6)
  np.testing.assert_allclose(c.tn, ((1 - y) * (1 - a)).sum(0), rtol=1e-6)
  np.testing.assert_array_equal(c.positives, [2.0, 0.0])
  np.testing.assert_array_equal(c.negatives, [0.0, 2.0])


def test_bad_arguments():
  with pytest.raises(ValueError, match="beta=0.0 must be a positive float"):
    f_beta_loss(jnp.zeros(2), jnp.array([0, 1]), beta=0.0)
  with pytest.raises(ValueError, match="binary label 3 is not one of"):
    f_beta_loss(jnp.zeros(2), jnp.array([0, 3]))
  with pytest.raises(ValueError, match="label 5 is out of range"):
    balanced_accuracy_loss(jnp.zeros((2, 3)), jnp.array([0, 5]))
  with pytest.raises(ValueError, match="need labels of shape \\(2,\\)"):
    balanced_accuracy_loss(jnp.zeros((2, 3)), jnp.array([0, 1, 2]))
  with pytest.raises(ValueError, match="multiclass='ovr' is not one of"):
    f_beta_loss(jnp.zeros((2, 3)), jnp.array([0, 1]), multiclass="ovr")
  with pytest.raises(ValueError, match="mask has shape \\(3,\\)"):
    f_beta_loss(jnp.zeros(2), jnp.array([0, 1]), mask=jnp.ones(3, bool))


def _value_and_grad(fn, multiclass):
  def loss(z, labels, mask):
    return fn(z, labels, mask=mask, multiclass=multiclass)
  return jax.jit(jax.value_and_grad(loss))


_jitted = {(m, mc): _value_and_grad(fn, mc) for m, fn in LOSSES.items()
           for mc in ("sigmoid", "softmax")}


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["f", "ba"]), st.sampled_from([0, 3]),
       st.sampled_from(["sigmoid", "softmax"]), st.data())
def test_properties(metric, classes, multiclass, data):
  n = 10
  shape = (n,) if classes == 0 else (n, classes)
  logits = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-10, 10, width=32)))
  labels = data.draw(hnp.arrays(np.int32, n, elements=st.integers(0, max(classes, 2) - 1)))
  mask = data.draw(hnp.arrays(bool, n))
  bad = data.draw(hnp.arrays(bool, n)) & ~mask
  logits = np.where(bad if classes == 0 else bad[:, None], np.float32(np.nan), logits)
  fn = _jitted[metric, multiclass]
  loss, g = fn(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
  assert 0.0 <= float(loss) <= 1.0 + 1e-6
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~mask] == 0)
  # Masked rows (and their non-finite logits) do not matter: same as dropping them (the
  # dropped rows are replaced by masked copies of a kept row to keep the shape).
  keep = np.flatnonzero(mask)
  if keep.size:
    rows = np.where(mask, np.arange(n), keep[0])
    same, _ = fn(jnp.asarray(logits[rows]), jnp.asarray(labels[rows]), jnp.asarray(mask))
    np.testing.assert_allclose(same, loss, rtol=1e-5, atol=1e-6)
  # Permutation invariance.
  perm = np.asarray(data.draw(st.permutations(range(n))))
  loss_p, _ = fn(jnp.asarray(logits[perm]), jnp.asarray(labels[perm]), jnp.asarray(mask[perm]))
  np.testing.assert_allclose(loss_p, loss, rtol=1e-5, atol=1e-6)


def test_perfect_predictions_have_zero_loss():
  labels = jnp.array([0, 1, 2, 1])
  logits = jax.nn.one_hot(labels, 3) * 20.0 - 10.0
  for multiclass in ("sigmoid", "softmax"):
    assert float(f_beta_loss(logits, labels, multiclass=multiclass)) < 1e-4
    assert float(balanced_accuracy_loss(logits, labels, multiclass=multiclass)) < 1e-4


LOSS_LAYOUTS = '''
import json, numpy as np, jax, jax.numpy as jnp
from reweight import testing


def loss_layouts(make_loss, params, batch):
  return testing.differences(testing.loss_layouts(make_loss, params, batch))
'''

SHARDING_CODE = LOSS_LAYOUTS + """
from reweight.losses.anyloss import balanced_accuracy_loss, f_beta_loss
rng = np.random.default_rng(0)
B = 64
res = {"values": {}}
# Binary F2 and multi-class (one-vs-rest, macro) balanced accuracy: both count paths.
for classes, name, fn in ((0, "f2", lambda *a, **k: f_beta_loss(*a, beta=2.0, **k)),
                          (4, "ba", balanced_accuracy_loss)):
  out_dim = 1 if classes == 0 else classes
  batch = {"x": rng.normal(size=(B, 5)).astype(np.float32),
           "y": rng.integers(0, max(classes, 2), B).astype(np.int32),
           "mask": rng.random(B) > 0.2}
  params = {"w": jnp.asarray(rng.normal(size=(5, out_dim)) * 0.3, jnp.float32)}
  def make_loss(axis_name, fn=fn, classes=classes):
    def f(p, b):
      logits = b["x"] @ p["w"]
      logits = logits[:, 0] if classes == 0 else logits
      return fn(logits, b["y"], mask=b["mask"], axis_name=axis_name), logits
    return f
  key = f"{name}_classes={classes}"
  res[key] = loss_layouts(make_loss, params, batch)
  res["values"][key] = float(make_loss(None)(params, batch)[0])
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
  values = res.pop("values")
  assert all(0.05 < v < 0.95 for v in values.values()), values  # non-trivial losses
  assert len(res) == 2
  testing.assert_layouts_agree(res)
