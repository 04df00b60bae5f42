"""`reweight.reparam.factored`: outputs and gradients equal the materialized path.

Every additive low-rank method (LoRA, rsLoRA, PiSSA, AdaLoRA, EVA; SoMA shares PiSSA's code)
on every model kind (plain ``x @ w``, ``jnp.dot``, ``lax.dot_general``, transposed / einsum /
reshaped attention kernels, Flax linen ``Dense`` / ``DenseGeneral``, Flax NNX ``Linear``
through `reweight.train.models.functional`), the errors for unsupported uses and methods, the
trainer's use of the factored path, and the compiled flop count of a factored MLP step.
"""

from __future__ import annotations

import math

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from reweight.reparam import (
    NotFactorableError,
    adalora,
    bone,
    compander,
    dora,
    eva,
    factored,
    lora,
)
from reweight.reparam._core import flatten_with_paths, select
from reweight.train.models import functional, make_model

TOL = dict(rtol=1e-5, atol=1e-5)
D, H = 8, 2  # model width, heads


def _rand(key, shape, scale=0.5):
  return scale * jax.random.normal(key, shape, jnp.float32)


# ----------------------------------------------------------------------------------------
# Models: (fn(params, x), params, x, targets)
# ----------------------------------------------------------------------------------------


def _plain():
  ks = jax.random.split(jax.random.key(1), 4)
  params = {"w1": _rand(ks[0], (6, D)), "w2": _rand(ks[1], (D, D)), "w3": _rand(ks[2], (D, 3))}

  def fn(p, x):
    h = jnp.tanh(x @ p["w1"])                                        # matmul
    h = jnp.tanh(jnp.dot(h, p["w2"]))                                # jnp.dot
    # lax.dot_general with the kernel as the left operand.
    return jax.lax.dot_general(p["w3"], h, (((0,), (1,)), ((), ()))).T

  return fn, params, _rand(ks[3], (5, 6), 1.0), r"w\d"


def _attention():
  """Hand-written attention: einsum, reshaped, split, sliced and transposed kernels."""
  ks = jax.random.split(jax.random.key(2), 7)
  params = {"q": _rand(ks[0], (D, D)), "k": _rand(ks[1], (D, D)), "v": _rand(ks[2], (D, D)),
            "o": _rand(ks[3], (D, D)), "emb": _rand(ks[4], (11, D)),
            "qkv": _rand(ks[6], (D, 3 * D))}

  @jax.jit  # a nested jit (pjit) the interpreter follows
  def heads(w):
    return w.reshape(D, H, D // H)

  def fn(p, x):
    q = jnp.einsum("btd,dhe->bthe", x, heads(p["q"]))
    k = jnp.einsum("btd,dhe->bthe", x, p["k"].reshape(D, H, D // H))
    v = jnp.einsum("btd,de->bte", x, p["v"]).reshape(*x.shape[:2], H, D // H)
    att = jax.nn.softmax(jnp.einsum("bthe,bshe->bhts", q, k) / math.sqrt(D // H), axis=-1)
    y = jnp.einsum("bhts,bshe->bthe", att, v)
    y = jnp.einsum("bthe,hef->btf", y, p["o"].reshape(H, D // H, D))
    # A fused kernel, split and sliced.
    y = y + x @ jnp.split(p["qkv"], 3, axis=1)[1] + x @ p["qkv"][:, 2 * D:]
    return y @ p["emb"].T  # tied output embedding: contracts the kernel's second axis

  return fn, params, _rand(ks[5], (2, 3, D), 1.0), "q|k|v|o|emb|qkv"


class _Linen(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(D, name="fc1")(x))
    h = nn.DenseGeneral((H, D // H), name="proj")(h)  # kernel (D, H, D/H): not targeted
    h = h.reshape(h.shape[0], D)
    return nn.Dense(3, name="fc2")(h)


def _linen():
  model = _Linen()
  x = _rand(jax.random.key(3), (5, 6), 1.0)
  params = model.init(jax.random.key(4), x)
  return model.apply, params, x, r"params/fc\d/kernel"


def _nnx():
  fn = functional(make_model("mlp", seed=0, in_features=6, hidden=(D, D), num_classes=3))
  x = _rand(jax.random.key(5), (5, 6), 1.0)
  return fn.apply, fn.params, x, r"(hidden/\d+|head)/kernel"


def _nnx_transformer():
  fn = functional(make_model("transformer", seed=0, vocab_size=13, num_classes=3, d_model=D,
                             num_heads=H, num_layers=1, max_len=4))
  x = jnp.asarray(np.random.default_rng(0).integers(0, 13, (2, 4)), jnp.int32)
  return fn.apply, fn.params, x, r".*(query|key|value|out|fc1|fc2)/kernel"


MODELS = {"plain": _plain, "attention": _attention, "linen": _linen, "nnx": _nnx,
          "nnx_transformer": _nnx_transformer}


def _eva_data(params, targets):
  """Random layer inputs of the right widths (EVA's init only needs their statistics)."""
  flat = flatten_with_paths(params)
  paths = select(params, targets)
  keys = jax.random.split(jax.random.key(9), 2)
  return [{p: jax.random.normal(k, (16, flat[p].shape[0])) for p in paths} for k in keys]


METHODS = {
    "lora": lambda t, **_: lora(2, 4.0, t),
    "rslora": lambda t, **_: lora(2, 4.0, t, rslora=True, init="gaussian"),
    "pissa": lambda t, **_: lora(2, 4.0, t, init="pissa"),
    "adalora": lambda t, **_: adalora(3, 6.0, t),
    "eva": lambda t, **_: eva(2, 4.0, t, tau=0.5),
}


def _setup(model_name, method):
  fn, params, x, targets = MODELS[model_name]()
  rp = METHODS[method](targets)
  data = _eva_data(params, targets) if method == "eva" else None
  kw = {"data": data} if data is not None else {}
  with np.errstate(all="ignore"):
    trainable, frozen = rp.init(params, jax.random.key(0), **kw)
  # Move off the init (B = 0, E = 0) so that every factor matters.
  leaves, tree = jax.tree.flatten(trainable)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  trainable = jax.tree.unflatten(
      tree, [a + _rand(k, a.shape, 0.1) for a, k in zip(leaves, keys, strict=True)])
  return fn, rp, trainable, frozen, x


def _loss(out):
  return jnp.sum(jnp.sin(out))


# Every method on the plain model, every model with LoRA, and a few crossings.
CASES = ([("plain", m) for m in sorted(METHODS)]
         + [(m, "lora") for m in sorted(MODELS) if m != "plain"]
         + [("attention", "adalora"), ("linen", "pissa"),
            ("nnx", "adalora")])


@pytest.mark.filterwarnings("ignore:EVA components did not converge")
@pytest.mark.parametrize(("model_name", "method"), CASES)
def test_matches_materialized(model_name, method):
  fn, rp, trainable, frozen, x = _setup(model_name, method)

  def value_and_grad(call):
    def loss(t):
      out = call(t, frozen, x)
      return _loss(out), out
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(trainable)

  (lf, out_f), gf = value_and_grad(factored(fn, rp))
  (lm, out_m), gm = value_and_grad(lambda t, f, x: fn(rp.apply(t, f), x))
  np.testing.assert_allclose(out_f, out_m, **TOL)
  np.testing.assert_allclose(lf, lm, **TOL)
  for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gm), strict=True):
    scale = max(1.0, float(jnp.max(jnp.abs(b))))  # relative to the leaf's largest entry
    np.testing.assert_allclose(a / scale, b / scale, **TOL)


def _dot_shapes(jaxpr) -> set[tuple[int, ...]]:
  """Output shapes of every ``dot_general`` in a jaxpr and its sub-jaxprs."""
  out = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.add(tuple(eqn.outvars[0].aval.shape))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out |= _dot_shapes(sub)
  return out


def test_no_kernel_sized_products():
  """The factored forward and backward contain no contraction producing a full kernel."""
  fn, rp, trainable, frozen, x = _setup("plain", "lora")
  fac = factored(fn, rp)
  jaxpr = jax.make_jaxpr(jax.grad(lambda t: _loss(fac(t, frozen, x))))(trainable)
  kernel_shapes = {tuple(np.shape(v)) for v in jax.tree.leaves(frozen)}
  kernel_shapes |= {s[::-1] for s in kernel_shapes}

  assert not kernel_shapes & _dot_shapes(jaxpr.jaxpr)
  mat = jax.make_jaxpr(jax.grad(lambda t: _loss(fn(rp.apply(t, frozen), x))))(trainable)
  assert kernel_shapes & _dot_shapes(mat.jaxpr)  # the check would catch it


def test_unsupported_use_raises():
  fn, rp, trainable, frozen, x = _setup("plain", "lora")

  def elementwise(p, x):
    return x @ (2.0 * p["w1"])

  with pytest.raises(NotFactorableError, match=r"'w1'.*`mul`.*reparam.apply"):
    factored(elementwise, rp)(trainable, frozen, x)
  with pytest.raises(ValueError, match=r"'w1'.*`reduce_sum`"):
    factored(lambda p, x: x @ p["w1"] + jnp.sum(p["w1"]), rp)(trainable, frozen, x)
  with pytest.raises(NotFactorableError, match=r"output of fn"):
    factored(lambda p, x: p["w1"], rp)(trainable, frozen, x)
  # The materialized path still works for the same function.
  assert elementwise(rp.apply(trainable, frozen), x).shape == (5, D)


@pytest.mark.parametrize("make", [
    lambda: bone(2, r"w\d"),
    lambda: dora(2, 4.0, r"w\d"),
    lambda: compander(r"w\d"),
], ids=["bone", "dora", "compander"])
def test_not_low_rank_additive_raises(make):
  fn, params, x, _ = _plain()
  rp = make()
  trainable, frozen = rp.init(params, jax.random.key(0))
  with pytest.raises(NotFactorableError, match="not low-rank additive"):
    factored(fn, rp)(trainable, frozen, x)


def _flops(step, *args) -> float:
  cost = jax.jit(step).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost["flops"])


def test_factored_mlp_step_has_fewer_flops():
  fn = functional(make_model("mlp", seed=0, in_features=128, hidden=(256, 256),
                             num_classes=10))
  rp = lora(8, 16.0, r"hidden/\d+/kernel")
  trainable, frozen = rp.init(fn.params, jax.random.key(0))
  x = jnp.ones((64, 128))
  y = jnp.zeros((64,), jnp.int32)
  opt = optax.adam(1e-3)

  def step(loss_of):
    def run(t, s, f):
      g = jax.grad(lambda t: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          loss_of(t, f, x), y)))(t)
      u, s = opt.update(g, s, t)
      return optax.apply_updates(t, u), s
    return run

  state = opt.init(trainable)
  flops_f = _flops(step(factored(fn.apply, rp)), trainable, state, frozen)
  flops_m = _flops(step(lambda t, f, x: fn.apply(rp.apply(t, f), x)), trainable, state, frozen)
  assert flops_f < 0.75 * flops_m, (flops_f, flops_m)


@pytest.mark.parametrize("method", ["lora", "bone"])
def test_train_step_uses_factored_path_or_falls_back(method):
  """`make_train_step(reparam=...)`: factored for LoRA, materialized fallback for Bone."""
  import reweight
  from reweight.train import state as state_lib
  from reweight.train.step import classification_loss, make_train_step

  fn = functional(make_model("mlp", seed=0, in_features=6, hidden=(D,), num_classes=3))
  rp = lora(2, 4.0, r"hidden/0/kernel") if method == "lora" else bone(2, r"hidden/0/kernel")
  st = state_lib.create(fn.params, optax.sgd(0.1), reweight.uniform(), jax.random.key(0),
                        reparam=rp)
  st = st._replace(trainable=jax.tree.map(lambda a: a + 0.1, st.trainable))
  batch = {"x": _rand(jax.random.key(1), (5, 6), 1.0), "label": jnp.arange(5) % 3}
  loss = classification_loss(fn.apply)
  step = make_train_step(loss, reweight.uniform(), optax.sgd(0.1), reparam=rp)
  kernel_sized = bool({(6, D), (D, 6)} & _dot_shapes(jax.make_jaxpr(step)(st, batch).jaxpr))
  assert kernel_sized == (method == "bone")  # Bone is not low rank: materialized
  new, metrics = jax.jit(step)(st, batch)

  def reference(t):
    return jnp.mean(loss(rp.apply(t, st.frozen), batch)[0])

  value, grads = jax.value_and_grad(reference)(st.trainable)
  np.testing.assert_allclose(metrics["loss"], value, **TOL)
  expected = jax.tree.map(lambda t, g: t - 0.1 * g, st.trainable, grads)
  for a, b in zip(jax.tree.leaves(new.trainable), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, **TOL)
