"""Every optimizer factory of `reweight.optim` under the usual optax idioms, jitted.

The factories are enumerated from ``reweight.optim.__all__`` (every public function that
returns an optax transformation), so a new factory without a case here fails
`test_every_factory_has_a_case`. Each case runs

* alone (the reference),
* under `optax.chain` (after a no-op clip: the same updates),
* under `optax.inject_hyperparams` (the learning rate injected where the factory takes one,
  every other numeric argument traced as optax does; only structural integers are named in
  ``static_args``): the same updates as the direct call,
* under `optax.MultiSteps` (each gradient fed twice: every second update is the reference's),
* under `optax.partition` (one leaf routed to plain SGD: the other leaves get the reference's
  updates computed without that leaf),

all with `jax.jit`-ed ``update`` calls, and checks that every update is finite.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from reweight import optim

STEPS = 3
TOL = dict(rtol=1e-5, atol=1e-6)


def _dense_params():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  return {"dense": {"kernel": jax.random.normal(k1, (4, 3)),
                    "bias": 0.1 * jax.random.normal(k2, (3,))},
          "other": jax.random.normal(k3, (2,))}


def _lora_params():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
  return {"l0/kernel": {"lora_a": jax.random.normal(k1, (5, 3)),
                        "lora_e": jax.random.normal(k2, (3,)),
                        "lora_b": jax.random.normal(k3, (3, 4))},
          "other": jax.random.normal(k4, (2,))}


@dataclasses.dataclass(frozen=True)
class Case:
  """How to build one factory: ``factory(**kwargs)``; ``static`` for inject_hyperparams."""

  kwargs: dict[str, Any]
  static: tuple[str, ...] = ()
  params: Callable[[], Any] = _dense_params


CASES: dict[str, Case] = {
    "adalora_budget": Case(
        dict(total_steps=8, init_rank=3, target_rank=1, tinit=0, tfinal=2, delta_t=1),
        static=("total_steps", "init_rank", "target_rank", "tinit", "tfinal", "delta_t"),
        params=_lora_params),
    "adamp": Case(dict(learning_rate=1e-2, weight_decay=1e-2)),
    "add_penalty_gradient": Case(
        dict(penalty=lambda p: sum(jnp.sum(x ** 4) for x in jax.tree.leaves(p)), weight=0.1),
        static=("penalty",)),
    "ema_params": Case(dict(decay=0.9)),
    "lift": Case(dict(inner=optax.adam(1e-2), rank=2, lora_rank=1, refresh_every=2),
                 static=("rank", "lora_rank", "refresh_every")),
    "normalize_and_project": Case({}),
    "project_radial": Case(dict(inner=optax.sgd(0.1), learning_rate=0.1, weight_decay=0.1)),
    "record_grad_norms": Case(dict(capacity=8), static=("capacity",)),
    "scale_by_lr_table": Case(dict(lrs=jnp.array([1.0, 0.5, 0.25]))),
    "sgdp": Case(dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-2)),
    "spectral_clip": Case(dict(max_sv=1.0)),
    "spectral_hammer": Case(dict(max_sv=1.0)),
    "spectral_normalize": Case(dict(max_sv=1.0)),
    "swa": Case(dict(start=2)),
}


def _factories() -> dict[str, Callable[..., Any]]:
  out = {}
  for name in optim.__all__:
    obj = getattr(optim, name)
    if not inspect.isfunction(obj):
      continue
    ret = inspect.signature(obj).return_annotation
    if "GradientTransformation" in str(ret):
      out[name] = obj
  return out


FACTORIES = _factories()


def test_every_factory_has_a_case():
  assert FACTORIES, "no factory found in reweight.optim.__all__"
  assert sorted(FACTORIES) == sorted(CASES)


def _grads(params, step):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(100 + step), len(leaves))
  return treedef.unflatten(
      [0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)])


def _run(tx, params, grad_steps, repeat=1):
  """Jitted updates of ``tx`` from ``params``, each gradient fed ``repeat`` times."""
  tx = optax.with_extra_args_support(tx)
  update = jax.jit(tx.update)
  state = jax.jit(tx.init)(params)
  out = []
  for g in grad_steps:
    for _ in range(repeat):
      u, state = update(g, state, params, grads=g)
      chex.assert_tree_all_finite(u)
      chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
      out.append(u)
      params = optax.apply_updates(params, u)
  return out, state


def _setup(name):
  case = CASES[name]
  params = case.params()
  grads = [_grads(params, t) for t in range(STEPS)]
  return FACTORIES[name], case, params, grads


@pytest.mark.parametrize("name", sorted(CASES))
def test_chain(name):
  factory, case, params, grads = _setup(name)
  ref, _ = _run(factory(**case.kwargs), params, grads)
  got, _ = _run(optax.chain(optax.clip_by_global_norm(1e6), factory(**case.kwargs)),
                params, grads)
  chex.assert_trees_all_close(got, ref, **TOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_inject_hyperparams(name):
  factory, case, params, grads = _setup(name)
  ref, _ = _run(factory(**case.kwargs), params, grads)
  injected = optax.inject_hyperparams(factory, static_args=case.static)(**case.kwargs)
  got, state = _run(injected, params, grads)
  chex.assert_trees_all_close(got, ref, **TOL)
  if "learning_rate" in inspect.signature(factory).parameters:
    assert "learning_rate" in state.hyperparams


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_inject_learning_rate_only(name):
  """The plain idiom, as for optax's aliases: only the learning rate given, nothing static."""
  factory, _, params, grads = _setup(name)
  ref, _ = _run(factory(learning_rate=1e-3), params, grads)
  got, _ = _run(optax.inject_hyperparams(factory)(learning_rate=1e-3), params, grads)
  chex.assert_trees_all_close(got, ref, **TOL)
  # The injected learning rate is live: halving it halves the step of the first update.
  tx = optax.inject_hyperparams(factory)(learning_rate=1e-3)
  state0 = tx.init(params)
  state0.hyperparams["learning_rate"] = jnp.asarray(5e-4)
  half, _ = jax.jit(tx.update)(grads[0], state0, params)
  chex.assert_trees_all_close(half, jax.tree.map(lambda u: u / 2, ref[0]), **TOL)


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_traced_channel_axis_says_how_to_fix(name):
  factory = FACTORIES[name]
  params = _dense_params()
  tx = optax.inject_hyperparams(factory)(learning_rate=1e-3, channel_axis=0)
  with pytest.raises(TypeError, match="static_args"):
    _run(tx, params, [_grads(params, 0)])
  tx = optax.inject_hyperparams(factory, static_args="channel_axis")(
      learning_rate=1e-3, channel_axis=0)
  _run(tx, params, [_grads(params, 0)])


@pytest.mark.parametrize("name", sorted(CASES))
def test_multi_steps(name):
  factory, case, params, grads = _setup(name)
  ref, _ = _run(factory(**case.kwargs), params, grads)
  multi = optax.MultiSteps(factory(**case.kwargs), every_k_schedule=2)
  # ``multi.gradient_transformation()`` would drop the extra arguments (``grads=``).
  multi = optax.GradientTransformationExtraArgs(multi.init, multi.update)
  got, _ = _run(multi, params, grads, repeat=2)
  chex.assert_trees_all_close(got[1::2], ref, **TOL)
  chex.assert_trees_all_close(got[0::2], jax.tree.map(jnp.zeros_like, ref), **TOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_partition(name):
  factory, case, params, grads = _setup(name)
  labels = {k: jax.tree.map(lambda _, k=k: "sgd" if k == "other" else "tx", v)
            for k, v in params.items()}
  tx = optax.partition({"tx": factory(**case.kwargs), "sgd": optax.sgd(0.1)}, labels,
                       mask_compatible_extra_args=True)
  got, _ = _run(tx, params, grads)
  drop = lambda tree: {k: v for k, v in tree.items() if k != "other"}  # noqa: E731
  ref, _ = _run(factory(**case.kwargs), drop(params), [drop(g) for g in grads])
  chex.assert_trees_all_close([drop(u) for u in got], ref, **TOL)
  chex.assert_trees_all_close([u["other"] for u in got], [-0.1 * g["other"] for g in grads],
                              **TOL)
