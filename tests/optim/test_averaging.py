"""Tests for reweight.optim.averaging against NumPy loops, optax.ema and orbax round trips."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from reweight.optim import averaging


def trajectory(extra, steps=6, seed=0):
  """Runs adam + ``extra`` (last in the chain); returns the params after each update."""
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=3), jnp.float32)}
  opt = optax.chain(optax.adam(0.1), extra)
  plain = optax.adam(0.1)
  state, pstate = opt.init(params), plain.init(params)
  update, plain_update = jax.jit(opt.update), jax.jit(plain.update)
  history = [params]
  for _ in range(steps):
    g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    u, state = update(g, state, params)
    pu, pstate = plain_update(g, pstate, params)
    chex.assert_trees_all_close(u, pu, rtol=1e-5, atol=1e-8)
    params = optax.apply_updates(params, u)
    history.append(params)
  return history, state


def test_ema_params_matches_numpy_loop():
  d = 0.8
  history, state = trajectory(averaging.ema_params(d))
  for key in ("w", "b"):
    ema = np.asarray(history[0][key], np.float64)
    for p in history[1:]:
      ema = d * ema + (1 - d) * np.asarray(p[key], np.float64)
    np.testing.assert_allclose(averaging.averaged_params(state)[key], ema, rtol=1e-5)
  assert isinstance(state[1], averaging.EmaParamsState) and int(state[1].count) == 6


def test_ema_params_with_decay_schedule_matches_numpy_loop():
  sched = lambda count: jnp.minimum(0.9, (1.0 + count) / (10.0 + count))
  history, state = trajectory(averaging.ema_params(sched))
  ema = np.asarray(history[0]["w"], np.float64)
  for t, p in enumerate(history[1:]):
    d = min(0.9, (1.0 + t) / (10.0 + t))
    ema = d * ema + (1 - d) * np.asarray(p["w"], np.float64)
  np.testing.assert_allclose(averaging.averaged_params(state)["w"], ema, rtol=1e-5)


def test_ema_params_debiased_equals_optax_ema_of_the_params():
  d = 0.9
  history, state = trajectory(averaging.ema_params(d, debias=True))
  ref = optax.ema(d, debias=True)
  rstate = ref.init(history[0])
  for p in history[1:]:
    out, rstate = ref.update(p, rstate)
  chex.assert_trees_all_close(averaging.averaged_params(state), out, rtol=1e-5, atol=1e-7)


def test_swa_matches_numpy_mean_of_snapshots():
  start, every = 3, 2
  history, state = trajectory(averaging.swa(start, every), steps=10)
  picked = [k for k in range(1, 11) if k >= start and (k - start) % every == 0]  # 3,5,7,9
  for key in ("w", "b"):
    ref = np.mean([np.asarray(history[k][key], np.float64) for k in picked], axis=0)
    np.testing.assert_allclose(averaging.averaged_params(state, kind="swa")[key], ref,
                               rtol=1e-5, atol=1e-7)
  swa_state = state[1]
  assert int(swa_state.num_averaged) == len(picked) and int(swa_state.count) == 10


def test_swa_before_start_holds_initial_params():
  history, state = trajectory(averaging.swa(start=50), steps=3)
  np.testing.assert_array_equal(averaging.averaged_params(state)["w"], history[0]["w"])


def test_transform_errors():
  t = averaging.ema_params(0.9)
  state = t.init({"w": jnp.zeros(2)})
  with pytest.raises(ValueError, match="needs `params`"):
    t.update({"w": jnp.zeros(2)}, state)
  with pytest.raises(ValueError, match="decay=1.0"):
    averaging.ema_params(1.0)
  with pytest.raises(ValueError, match="needs a constant decay"):
    averaging.ema_params(lambda c: 0.9, debias=True)
  with pytest.raises(ValueError, match="every=0"):
    averaging.swa(1, every=0)
  both = optax.chain(averaging.ema_params(0.9), averaging.swa(1)).init({"w": jnp.zeros(2)})
  with pytest.raises(ValueError, match="found 2; pass kind"):
    averaging.averaged_params(both)
  np.testing.assert_array_equal(averaging.averaged_params(both, kind="ema")["w"], 0.0)
  with pytest.raises(ValueError, match="found 0"):
    averaging.averaged_params(optax.sgd(0.1).init({"w": jnp.zeros(2)}))
  with pytest.raises(ValueError, match="kind='avg'"):
    averaging.averaged_params(both, kind="avg")


# ----------------------------------------------------------------------------------------
# Checkpoint averaging.


def np_weights(k, scheme, d):
  if scheme == "uniform":
    return np.full(k, 1 / k)
  if scheme == "linear":
    w = np.arange(1, k + 1, dtype=np.float64)
    return w / w.sum()
  # EMA over checkpoints, initialized at the oldest: run the recursion on basis vectors.
  acc = np.eye(k)[0]
  for j in range(1, k):
    acc = d * acc + (1 - d) * np.eye(k)[j]
  return acc


@pytest.mark.parametrize("scheme", ["uniform", "linear", "ema"])
def test_checkpoint_weights(scheme):
  for k in (1, 2, 5):
    w = averaging.checkpoint_weights(k, scheme, ema_decay=0.7)
    np.testing.assert_allclose(w, np_weights(k, scheme, 0.7), rtol=1e-12)
    assert w.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(averaging.checkpoint_weights(3, [1.0, 1.0, 2.0]),
                             [0.25, 0.25, 0.5])


def make_checkpoints(n=5, seed=0):
  rng = np.random.default_rng(seed)
  return [{"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
           "h": jnp.asarray(rng.normal(size=4), jnp.bfloat16),
           "n": {"x": rng.normal(size=2)},  # NumPy float64
           "step": np.int64(10 * i)} for i in range(n)]


@pytest.mark.parametrize("scheme", ["uniform", "linear", "ema"])
def test_checkpoint_average_matches_numpy(scheme):
  ckpts = make_checkpoints()
  out = averaging.checkpoint_average(ckpts, scheme, k=3, ema_decay=0.6)
  w = np_weights(3, scheme, 0.6)
  last = ckpts[-3:]
  for path in (("w",), ("n", "x")):
    get = lambda t, path=path: t[path[0]] if len(path) == 1 else t[path[0]][path[1]]
    ref = sum(wj * np.asarray(get(c), np.float64) for wj, c in zip(w, last, strict=True))
    np.testing.assert_allclose(np.asarray(get(out), np.float64), ref, rtol=1e-6)
  ref_h = sum(wj * np.asarray(c["h"], np.float64) for wj, c in zip(w, last, strict=True))
  np.testing.assert_allclose(np.asarray(out["h"], np.float64), ref_h, rtol=1e-2)
  assert out["w"].dtype == jnp.float32 and out["h"].dtype == jnp.bfloat16
  assert isinstance(out["n"]["x"], np.ndarray) and out["n"]["x"].dtype == np.float64
  assert out["step"] == 40  # non-float leaves come from the newest checkpoint


def test_checkpoint_average_errors():
  ckpts = make_checkpoints(3)
  with pytest.raises(ValueError, match=r"k=4 must be an integer in \[1, 3\]"):
    averaging.checkpoint_average(ckpts, k=4)
  with pytest.raises(ValueError, match=r"weights='mean' is not one of \['ema', 'linear'"):
    averaging.checkpoint_average(ckpts, "mean")
  with pytest.raises(ValueError, match="explicit weights must be 2"):
    averaging.checkpoint_average(ckpts, [1.0, 2.0, 3.0], k=2)
  with pytest.raises(ValueError, match="empty"):
    averaging.checkpoint_average([])


def test_average_orbax_checkpoints(tmp_path):
  rng = np.random.default_rng(3)
  trees = [{"params": {"w": rng.normal(size=(2, 3)).astype(np.float32),
                       "b": jnp.asarray(rng.normal(size=3), jnp.float32)}}
           for _ in range(4)]
  single, composite = tmp_path / "single", tmp_path / "composite"
  with ocp.CheckpointManager(single) as mgr:
    for step, tree in zip((10, 20, 30, 40), trees, strict=True):
      mgr.save(step, args=ocp.args.StandardSave(tree))
  with ocp.CheckpointManager(composite) as mgr:
    for step, tree in zip((1, 2, 3, 4), trees, strict=True):
      mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                             meta=ocp.args.JsonSave({"step": step})))
  w = np_weights(3, "ema", 0.5)
  ref = {key: sum(wj * np.asarray(t["params"][key], np.float64)
                  for wj, t in zip(w, trees[1:], strict=True)) for key in ("w", "b")}
  out = averaging.average_orbax_checkpoints(single, k=3, weights="ema", ema_decay=0.5)
  out2 = averaging.average_orbax_checkpoints(composite, k=3, weights="ema", ema_decay=0.5,
                                             item="state", select=lambda s: s["params"])
  for key in ("w", "b"):
    np.testing.assert_allclose(np.asarray(out["params"][key]), ref[key], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out2[key]), ref[key], rtol=1e-6)
  uni = averaging.average_orbax_checkpoints(single)
  np.testing.assert_allclose(np.asarray(uni["params"]["w"]),
                             np.mean([t["params"]["w"] for t in trees], axis=0), rtol=1e-6)
  with pytest.raises(ValueError, match=r"k=5 must be an integer in \[1, 4\]"):
    averaging.average_orbax_checkpoints(single, k=5)
  with pytest.raises(ValueError, match="does not exist"):
    averaging.average_orbax_checkpoints(tmp_path / "missing", k=1)


def test_ema_float32_accumulator_for_bfloat16_params_and_inject_hyperparams():
  d = 0.99
  params = {"w": jnp.zeros(3, jnp.bfloat16)}
  opt = optax.chain(optax.sgd(1.0), averaging.ema_params(d, accumulator_dtype=jnp.float32))
  state = opt.init(params)
  ref, x = 0.0, np.zeros(3)
  for _ in range(5):
    u, state = opt.update({"w": -jnp.full(3, 1.0, jnp.bfloat16)}, state, params)
    params = optax.apply_updates(params, u)
    x = np.asarray(params["w"], np.float64)
    ref = d * ref + (1 - d) * x
  avg = averaging.averaged_params(state)["w"]
  assert avg.dtype == jnp.float32 and params["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(avg, ref, rtol=1e-5)  # 0.01 * (1 + ...) survives in float32
  # The decay as an injected (array) hyperparameter, under jit.
  inj = optax.inject_hyperparams(averaging.ema_params)(decay=0.5)
  p = {"w": jnp.zeros(2)}
  s = inj.init(p)
  _, s = jax.jit(inj.update)({"w": jnp.ones(2)}, s, p)
  np.testing.assert_allclose(averaging.averaged_params(s)["w"], 0.5)
