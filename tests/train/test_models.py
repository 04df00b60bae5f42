"""Tests for reweight.train.models: forward passes against NumPy re-derivations."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf

from reweight.train import models

MLP_KW = dict(in_features=6, hidden=(5, 4), num_classes=3)
CNN2_KW = dict(in_shape=(6, 6, 2), num_classes=3, channels=(3, 4))
CNN1_KW = dict(in_shape=(12,), num_classes=3, channels=(3, 4))
TF_KW = dict(vocab_size=7, d_model=8, num_heads=2, num_layers=1, max_len=6)


def _randomize(params, seed):
  """Replaces every leaf by N(0, 0.5^2) draws so biases / LN affine parts are exercised."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: np.asarray(0.5 * rng.standard_normal(p.shape), np.float32), params
  )


def _paths(tree):
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)] = leaf
  return out


# ------------------------------------------------------------------ NumPy references


def _np_mlp(p, x):
  h = x.reshape(x.shape[0], -1).astype(np.float64)
  for i in range(len(p["hidden"])):
    h = np.maximum(h @ p["hidden"][i]["kernel"] + p["hidden"][i]["bias"], 0.0)
  return h @ p["head"]["kernel"] + p["head"]["bias"]


def _np_conv_same(x, kernel, bias):
  """Cross-correlation with zero 'SAME' padding, stride 1; x [B, *S, C], kernel [*K, C, O]."""
  nd = kernel.ndim - 2
  pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in kernel.shape[:nd]] + [(0, 0)]
  xp = np.pad(x, pads)
  win = sliding_window_view(xp, kernel.shape[:nd], axis=tuple(range(1, nd + 1)))
  # win: [B, *S, C, *K]
  if nd == 1:
    return np.einsum("blck,kco->blo", win, kernel) + bias
  return np.einsum("bhwcij,ijco->bhwo", win, kernel) + bias


def _np_max_pool(x, p):
  nd = x.ndim - 2
  for ax in range(1, nd + 1):
    n = x.shape[ax] // p
    x = np.take(x, np.arange(n * p), axis=ax)
    shape = x.shape[:ax] + (n, p) + x.shape[ax + 1 :]
    x = x.reshape(shape).max(axis=ax + 1)
  return x


def _np_cnn(p, x, in_shape, pool=2):
  h = x.reshape(x.shape[0], *in_shape).astype(np.float64)
  for i in range(len(p["convs"])):
    h = np.maximum(_np_conv_same(h, p["convs"][i]["kernel"], p["convs"][i]["bias"]), 0.0)
    h = _np_max_pool(h, pool)
  return h.reshape(h.shape[0], -1) @ p["head"]["kernel"] + p["head"]["bias"]


def _np_ln(x, ln, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * ln["scale"] + ln["bias"]


def _np_attention(p, x, num_heads, causal):
  """Multi-head self-attention, one head at a time with explicit per-position loops."""
  b, t, d = x.shape
  dh = d // num_heads
  q = x @ p["query"]["kernel"] + p["query"]["bias"]
  k = x @ p["key"]["kernel"] + p["key"]["bias"]
  v = x @ p["value"]["kernel"] + p["value"]["bias"]
  y = np.zeros_like(q)
  for hd in range(num_heads):
    sl = slice(hd * dh, (hd + 1) * dh)
    for i in range(t):
      n = i + 1 if causal else t
      s = np.einsum("bd,bsd->bs", q[:, i, sl], k[:, :n, sl]) / np.sqrt(dh)
      a = np.exp(s - s.max(-1, keepdims=True))
      a /= a.sum(-1, keepdims=True)
      y[:, i, sl] = np.einsum("bs,bsd->bd", a, v[:, :n, sl])
  return y @ p["out"]["kernel"] + p["out"]["bias"]


def _np_sinusoidal(t, d):
  table = np.zeros((t, d))
  for pos in range(t):
    for i in range(d):
      angle = pos / 10000 ** ((i - i % 2) / d)
      table[pos, i] = np.sin(angle) if i % 2 == 0 else np.cos(angle)
  return table


def _np_transformer(p, tokens, *, num_heads, causal=True, pos=None, classify=False):
  h = p["embed"]["embedding"][tokens].astype(np.float64)
  h = h + (p["pos_embed"][: tokens.shape[1]] if pos is None else pos)
  for i in range(len(p["blocks"])):
    blk = p["blocks"][i]
    h = h + _np_attention(blk["attn"], _np_ln(h, blk["ln1"]), num_heads, causal)
    z = _np_ln(h, blk["ln2"]) @ blk["mlp"]["fc1"]["kernel"] + blk["mlp"]["fc1"]["bias"]
    z = 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))
    h = h + z @ blk["mlp"]["fc2"]["kernel"] + blk["mlp"]["fc2"]["bias"]
  h = _np_ln(h, p["ln_f"])
  if classify:
    h = h.mean(1)
  return h @ p["head"]["kernel"] + p["head"]["bias"]


# ------------------------------------------------------------------ tests


def test_output_shapes():
  fn = models.functional(models.make_model("mlp", **MLP_KW))
  assert jax.jit(fn.apply)(fn.params, jnp.ones((4, 2, 3))).shape == (4, 3)
  fn = models.functional(models.make_model("cnn", **CNN2_KW))
  for shape in [(4, 6, 6, 2), (4, 72)]:
    assert jax.jit(fn.apply)(fn.params, jnp.ones(shape)).shape == (4, 3)
  fn = models.functional(models.make_model("cnn", in_shape=(6, 6), ndim=2, num_classes=5))
  assert jax.jit(fn.apply)(fn.params, jnp.ones((2, 6, 6))).shape == (2, 5)
  fn = models.functional(models.make_model("cnn", **CNN1_KW))
  for shape in [(4, 12), (4, 12, 1)]:
    assert jax.jit(fn.apply)(fn.params, jnp.ones(shape)).shape == (4, 3)
  fn = models.functional(models.make_model("transformer", **TF_KW))
  assert jax.jit(fn.apply)(fn.params, jnp.zeros((2, 5), jnp.int32)).shape == (2, 5, 7)
  fn = models.functional(models.make_model("transformer", num_classes=4, **TF_KW))
  assert jax.jit(fn.apply)(fn.params, jnp.zeros((2, 5), jnp.int32)).shape == (2, 4)
  assert fn.rest == {}


def test_param_paths_and_regex():
  kw = dict(TF_KW, num_layers=2)
  flat = _paths(models.functional(models.make_model("transformer", **kw)).params)
  hits = sorted(p for p in flat if re.fullmatch(r".*(query|value)/kernel", p))
  assert hits == [f"blocks/{i}/attn/{n}/kernel" for i in (0, 1) for n in ("query", "value")]
  assert all(flat[p].shape == (8, 8) for p in hits)
  assert flat["embed/embedding"].shape == (7, 8)
  assert flat["pos_embed"].shape == (6, 8)
  assert flat["blocks/1/mlp/fc1/kernel"].shape == (8, 32)
  assert flat["head/kernel"].shape == (8, 7)
  flat = _paths(models.functional(models.make_model("mlp", **MLP_KW)).params)
  assert sorted(flat) == sorted(
      [f"hidden/{i}/{n}" for i in (0, 1) for n in ("kernel", "bias")]
      + ["head/kernel", "head/bias"]
  )
  flat = _paths(models.functional(models.make_model("cnn", **CNN2_KW)).params)
  assert flat["convs/1/kernel"].shape == (3, 3, 3, 4)
  assert "pos_embed" not in _paths(
      models.functional(models.make_model("transformer", positions="sinusoidal", **TF_KW)).params
  )


def test_mlp_matches_numpy():
  fn = models.functional(models.make_model("mlp", **MLP_KW))
  params = _randomize(fn.params, 0)
  x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(fn.apply)(params, x), _np_mlp(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [CNN2_KW, CNN1_KW, dict(CNN1_KW, in_shape=(13, 2))])
def test_cnn_matches_numpy(kw):
  kw = dict(kw, ndim=1) if len(kw["in_shape"]) == 2 else kw
  fn = models.functional(models.make_model("cnn", **kw))
  params = _randomize(fn.params, 2)
  in_shape = tuple(kw["in_shape"]) + ((1,) if len(kw["in_shape"]) == 1 else ())
  x = np.random.default_rng(3).standard_normal((3, *in_shape)).astype(np.float32)
  np.testing.assert_allclose(
      jax.jit(fn.apply)(params, x), _np_cnn(params, x, in_shape), rtol=1e-5, atol=1e-5
  )


def test_np_conv_matches_scipy():
  # The NumPy convolution used above is itself checked against scipy on one channel pair.
  from scipy.signal import correlate2d

  rng = np.random.default_rng(4)
  x, k = rng.standard_normal((1, 5, 4, 1)), rng.standard_normal((3, 3, 1, 1))
  ref = correlate2d(x[0, :, :, 0], k[:, :, 0, 0], mode="same")
  np.testing.assert_allclose(_np_conv_same(x, k, 0.0)[0, :, :, 0], ref, rtol=1e-12)


@pytest.mark.parametrize(
    "kw,classify",
    [
        (TF_KW, False),
        (dict(TF_KW, num_heads=4, causal=False), False),
        (dict(TF_KW, num_classes=3), True),
        (dict(TF_KW, positions="sinusoidal"), False),
    ],
)
def test_transformer_matches_numpy(kw, classify):
  fn = models.functional(models.make_model("transformer", seed=5, **kw))
  params = _randomize(fn.params, 6)
  tokens = np.random.default_rng(7).integers(0, 7, size=(3, 5))
  pos = _np_sinusoidal(5, 8) if kw.get("positions") == "sinusoidal" else None
  ref = _np_transformer(
      params, tokens, num_heads=kw["num_heads"], causal=kw.get("causal", True), pos=pos,
      classify=classify,
  )
  out = jax.jit(fn.apply)(params, jnp.asarray(tokens))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_transformer_is_causal():
  kw = dict(TF_KW, num_layers=2)
  fn = models.functional(models.make_model("transformer", **kw))
  apply = jax.jit(fn.apply)
  tokens = np.random.default_rng(8).integers(0, 7, size=(2, 6))
  base = apply(fn.params, tokens)
  for t in range(5):
    changed = tokens.copy()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % 7
    out = apply(fn.params, changed)
    np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], rtol=1e-6, atol=1e-6)
    assert np.abs(out[:, t + 1] - base[:, t + 1]).max() > 1e-3
  # Without the mask, a later token does change earlier logits.
  fn = models.functional(models.make_model("transformer", causal=False, **kw))
  apply = jax.jit(fn.apply)
  changed = tokens.copy()
  changed[:, -1] = (changed[:, -1] + 1) % 7
  assert np.abs(apply(fn.params, changed)[:, 0] - apply(fn.params, tokens)[:, 0]).max() > 1e-3


def test_jit_and_grad():
  fn = models.functional(models.make_model("transformer", seed=1, **TF_KW))
  params = _randomize(fn.params, 9)
  tokens = jnp.asarray(np.random.default_rng(10).integers(0, 7, size=(2, 5)))

  def loss(p):
    logits = fn.apply(p, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  # Directional derivative against a central finite difference in float64 arithmetic on the
  # NumPy re-derivation.
  rng = np.random.default_rng(11)
  direction = jax.tree.map(lambda p: rng.standard_normal(p.shape), params)
  np_tokens = np.asarray(tokens)

  def np_loss(p):
    logits = _np_transformer(p, np_tokens, num_heads=2)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, np_tokens[..., None], -1)[..., 0]
    return (logz - picked).mean()

  eps = 1e-5
  shift = lambda s: jax.tree.map(lambda p, d: np.float64(p) + s * eps * d, params, direction)
  fd = (np_loss(shift(1.0)) - np_loss(shift(-1.0))) / (2 * eps)
  pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
  ad = sum(float(jnp.vdot(g, d)) for g, d in pairs)
  np.testing.assert_allclose(value, np_loss(jax.tree.map(np.float64, params)), rtol=1e-5)
  np.testing.assert_allclose(ad, fd, rtol=1e-4)
  # optax updates apply to the pure-dict params.
  opt = optax.adam(1e-2)
  updates, _ = opt.update(grads, opt.init(params), params)
  assert jax.jit(loss)(optax.apply_updates(params, updates)) < value


def test_vmap_over_seeds():
  seeds = jnp.arange(3)
  init = lambda s: models.functional(models.make_model("cnn", seed=s, **CNN1_KW)).params
  stacked = jax.vmap(init)(seeds)
  fn = models.functional(models.make_model("cnn", seed=0, **CNN1_KW))
  x = jnp.asarray(np.random.default_rng(12).standard_normal((4, 12)), jnp.float32)
  batched = jax.jit(jax.vmap(fn.apply, in_axes=(0, None)))(stacked, x)
  apply = jax.jit(fn.apply)
  for i in range(3):
    single = init(i)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda a, i=i: a[i], stacked), single)
    np.testing.assert_allclose(batched[i], apply(single, x), rtol=1e-5, atol=1e-6)
  # Seeds give different parameters; the same seed gives the same parameters (int or key).
  assert not np.allclose(stacked["head"]["kernel"][0], stacked["head"]["kernel"][1])
  again = models.functional(models.make_model("cnn", seed=jax.random.key(2), **CNN1_KW)).params
  jax.tree.map(np.testing.assert_array_equal, again, init(2))


def test_dropout_needs_key_and_is_deterministic():
  fn = models.functional(models.make_model("mlp", dropout=0.5, **MLP_KW))
  x = jnp.ones((8, 6))
  with pytest.raises(ValueError, match="dropout=0.5 needs a PRNG key"):
    fn.apply(fn.params, x, train=True)
  train = jax.jit(lambda p, k: fn.apply(p, x, train=True, key=k))
  a, b = train(fn.params, jax.random.key(0)), train(fn.params, jax.random.key(0))
  c = train(fn.params, jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-3
  evaluate = jax.jit(fn.apply)
  assert np.abs(a - evaluate(fn.params, x)).max() > 1e-3
  # Each kept hidden unit is scaled by 1 / (1 - rate): with all-zero biases and an identity
  # head, the train-mode output of a 1-layer MLP is relu(x W) * mask / 0.5.
  fn1 = models.functional(models.make_model("mlp", in_features=6, hidden=(4,), num_classes=4,
                                            dropout=0.5))
  params = jax.tree.map(np.asarray, fn1.params)
  params["head"]["kernel"] = np.eye(4, dtype=np.float32)
  out = np.asarray(fn1.apply(params, x, train=True, key=jax.random.key(2)))
  ref = np.maximum(np.asarray(x) @ params["hidden"][0]["kernel"], 0.0) / 0.5
  kept = out != 0
  assert 0 < kept.sum() < kept.size
  np.testing.assert_allclose(out[kept], ref[kept], rtol=1e-6)
  # Eval mode ignores the key; a dropout-free model in train mode equals eval mode.
  np.testing.assert_array_equal(
      jax.jit(lambda p: fn.apply(p, x, key=jax.random.key(0)))(fn.params),
      evaluate(fn.params, x),
  )
  fn0 = models.functional(models.make_model("mlp", **MLP_KW))
  np.testing.assert_array_equal(
      jax.jit(lambda p: fn0.apply(p, x, train=True))(fn0.params), jax.jit(fn0.apply)(fn0.params, x)
  )


def test_orbax_roundtrip(tmp_path):
  fn = models.functional(models.make_model("transformer", seed=3, **dict(TF_KW, num_layers=2)))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "params", fn.params)
  ckpt.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, fn.params)
  restored = ckpt.restore(tmp_path / "params", target)
  assert jax.tree.structure(restored) == jax.tree.structure(fn.params)
  jax.tree.map(np.testing.assert_array_equal, restored, fn.params)
  tokens = jnp.zeros((1, 3), jnp.int32)
  apply = jax.jit(fn.apply)
  np.testing.assert_array_equal(apply(restored, tokens), apply(fn.params, tokens))
  # Without a target, list indices come back as strings: apply refuses them, and
  # nnx.restore_int_paths repairs them.
  untargeted = ckpt.restore(tmp_path / "params")
  with pytest.raises(ValueError, match="structure"):
    fn.apply(untargeted, tokens)
  repaired = nnx.restore_int_paths(untargeted)
  np.testing.assert_array_equal(apply(repaired, tokens), apply(fn.params, tokens))


def test_bad_inputs():
  valid = r"\['cnn', 'mlp', 'transformer'\]"
  with pytest.raises(ValueError, match=r"name='resnet' is not one of " + valid):
    models.make_model("resnet")
  with pytest.raises(ValueError, match="ambiguous"):
    models.make_model("cnn", in_shape=(8, 8), num_classes=3)
  with pytest.raises(ValueError, match="ndim=3"):
    models.make_model("cnn", in_shape=(4, 4, 4), num_classes=3, ndim=3)
  with pytest.raises(ValueError, match="too small"):
    models.make_model("cnn", in_shape=(3,), num_classes=3)
  with pytest.raises(ValueError, match="not divisible"):
    models.make_model("transformer", vocab_size=5, d_model=6, num_heads=4)
  with pytest.raises(ValueError, match="positions='rope'"):
    models.make_model("transformer", vocab_size=5, positions="rope")
  with pytest.raises(ValueError, match="dropout=1.0"):
    models.make_model("mlp", dropout=1.0, **MLP_KW)
  with pytest.raises(ValueError, match="seed=1.5"):
    models.make_model("mlp", seed=1.5, **MLP_KW)
  fn = models.functional(models.make_model("transformer", **TF_KW))
  with pytest.raises(ValueError, match="exceeds max_len=6"):
    fn.apply(fn.params, jnp.zeros((1, 7), jnp.int32))
  with pytest.raises(ValueError, match="integer array"):
    fn.apply(fn.params, jnp.zeros((1, 3)))
  fn = models.functional(models.make_model("mlp", **MLP_KW))
  with pytest.raises(ValueError, match="expected in_features=6"):
    fn.apply(fn.params, jnp.ones((2, 5)))
  fn = models.functional(models.make_model("cnn", **CNN1_KW))
  with pytest.raises(ValueError, match=r"expected in_shape=\(12, 1\)"):
    fn.apply(fn.params, jnp.ones((2, 13)))
