"""Checks that a weighting gives the same weights however the batch is laid out.

`layouts` runs a weighting for a few steps on the same global batch in four layouts:

* ``single``: `jax.jit` on one device;
* ``jit_sharded``: `jax.jit` over a `Mesh` of all devices with the batch sharded on
  ``"data"`` (global-view code, weighting built without an axis name);
* ``shard_map``: the weighting built with ``axis_name="data"`` inside `jax.shard_map` with
  JAX's default ``check_vma=True`` (so the state must come out typed replicated);
* ``pmap``: the same inside `jax.pmap` (skipped where jax no longer has it).

and returns every layout's weights (per step) and final state, so a test can compare them.
Run it in a process with several devices, e.g. with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set before jax is imported
(`run_with_devices` does that in a subprocess).

Examples:
  >>> import jax.numpy as jnp, numpy as np, reweight
  >>> from reweight import testing
  >>> out = testing.layouts(lambda axis_name=None: reweight.sample.loss_based(
  ...     "upper", r=1.0, axis_name=axis_name), np.arange(8.0, dtype=np.float32),
  ...     modes=("single", "shard_map"))
  >>> testing.max_difference(out, "single", "shard_map") < 1e-6
  True
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from reweight import parallel

Mode = Literal["single", "jit_sharded", "shard_map", "pmap"]
MODES = get_args(Mode)


def _check_modes(modes: Sequence[str]) -> None:
  for m in modes:
    if m not in MODES:
      raise ValueError(f"mode {m!r} is not one of {MODES}")


def _pack(arrays: Mapping[str, Any], prefix: str, tree: Any) -> dict[str, np.ndarray]:
  """``arrays`` and the leaves of ``tree`` (as ``prefix/i``), as numpy, for comparison."""
  res = {k: np.asarray(v) for k, v in arrays.items()}
  res.update({f"{prefix}/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))})
  return res


def _steps(make_weighting, axis_name, static, steps):
  weighting = make_weighting(axis_name=axis_name)

  def run(losses, mask, per_example, replicated, state):
    weights = []
    for t in range(steps):
      w, state = weighting.update(losses + t, state, mask=mask, step=jnp.asarray(t),
                                  **per_example, **replicated, **static)
      weights.append(w)
    return jnp.stack(weights), state

  return weighting, run


def layouts(make_weighting: Callable[..., Any], losses, *, mask=None,
            per_example: Mapping[str, Any] | None = None,
            replicated: Mapping[str, Any] | None = None,
            static: Mapping[str, Any] | None = None, steps: int = 2,
            modes: Sequence[str] = MODES, key=None) -> dict[str, dict[str, np.ndarray]]:
  """Weights (``[steps, B]``) and final state leaves of a weighting in several layouts.

  Args:
    make_weighting: ``make_weighting(axis_name=None) -> Weighting``.
    losses: ``[B]`` losses (``B`` divisible by the device count). Step ``t`` uses
      ``losses + t`` so that stateful weightings see changing inputs.
    mask: optional ``[B]`` booleans.
    per_example: extras with a leading batch axis (``groups``, ``logits``, ``labels``,
      ``example_ids``, ``batch``, ...): sharded like the losses.
    replicated: array extras every device sees whole (``params``, ``meta_batch``).
    static: non-array extras (``loss_fn``), closed over.
    steps: how many consecutive updates to run.
    modes: a subset of `MODES`.
    key: passed to ``init``.

  Returns:
    ``{mode: {"weights": [steps, B], "state/0": ..., ...}}`` as numpy arrays.
  """
  _check_modes(modes)
  losses = jnp.asarray(losses, jnp.float32)
  mask = jnp.ones(losses.shape, bool) if mask is None else jnp.asarray(mask, bool)
  per_example = dict(per_example or {})
  replicated = dict(replicated or {})
  static = dict(static or {})
  n = len(jax.devices())
  out = {}

  def pack(weights, state):
    return _pack({"weights": weights}, "state", state)

  args = (losses, mask, per_example, replicated)
  if "single" in modes:
    weighting, run = _steps(make_weighting, None, static, steps)
    dev = jax.devices()[0]
    placed = jax.device_put(args, dev)
    out["single"] = pack(*jax.jit(run)(*placed, weighting.init(key)))

  if "jit_sharded" in modes:
    mesh = parallel.make_mesh()
    weighting, run = _steps(make_weighting, None, static, steps)
    sharded = parallel.shard_batch((losses, mask, per_example), mesh)
    rep = parallel.replicate(replicated, mesh)
    out["jit_sharded"] = pack(*jax.jit(run)(*sharded, rep, weighting.init(key)))

  if "shard_map" in modes:
    mesh = parallel.make_mesh()
    weighting, run = _steps(make_weighting, "data", static, steps)

    def local(losses, mask, per_example, replicated, state):
      w, state = run(losses, mask, per_example, replicated, state)
      return w, state

    state0 = weighting.init(key)
    fn = jax.shard_map(
        local, mesh=mesh,
        in_specs=(P("data"), P("data"), P("data"), P(), P()),
        out_specs=(P(None, "data"), P()))
    out["shard_map"] = pack(*jax.jit(fn)(losses, mask, per_example, replicated, state0))

  if "pmap" in modes and hasattr(jax, "pmap"):
    weighting, run = _steps(make_weighting, "data", static, steps)

    def split(x):
      x = jnp.asarray(x)
      return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    state0 = weighting.init(key)
    # Replicated values are closed over: jax.pmap misreads in_axes=None for an empty pytree
    # argument (jax 0.10), which would leave the per-example arguments unsplit.
    fn = jax.pmap(lambda l, m, pe: run(l, m, pe, replicated, state0), axis_name="data")
    w, state = fn(split(losses), split(mask), jax.tree.map(split, per_example))
    w = jnp.moveaxis(w, 0, 1).reshape(steps, -1)
    out["pmap"] = pack(w, jax.tree.map(lambda x: x[0], state))
  return out


def gradient_layouts(make_weighting: Callable[..., Any], per_example_loss_fn: Callable,
                     params, batch: Mapping[str, Any], *, replicated_kwargs=None,
                     modes: Sequence[str] = MODES, key=None) -> dict[str, dict[str, np.ndarray]]:
  """Loss and gradient of `reweight.weighted` in several layouts (one step).

  The layouts are those of `layouts`, with replicated ``params`` and the batch sharded on
  ``"data"``, and each is the data-parallel training step of the `reweight.weighted`
  convention: ``shard_map`` (``check_vma=True``) returns the loss and the gradient as they
  are (``out_specs=P()``: JAX's AD has summed the gradient over the devices), ``pmap``
  ``psum``-s the gradient only (the loss is already the global one).
  """
  from reweight.base import weighted

  replicated_kwargs = dict(replicated_kwargs or {})
  out = {}

  def pack(loss, grads, weights):
    return _pack({"loss": loss, "weights": weights}, "grad", grads)

  def global_step(params, batch, kw, state):
    fn = weighted(per_example_loss_fn, make_weighting(axis_name=None))
    (loss, (_, info)), g = jax.value_and_grad(fn, has_aux=True)(params, batch, state,
                                                                step=jnp.asarray(0), **kw)
    return loss, g, info["weights"]

  def local_step(params, batch, kw, state):
    fn = weighted(per_example_loss_fn, make_weighting(axis_name="data"), axis_name="data")
    (loss, (_, info)), g = jax.value_and_grad(fn, has_aux=True)(params, batch, state,
                                                                step=jnp.asarray(0), **kw)
    return loss, g, info["weights"]

  def pmap_step(params, batch, kw, state):
    loss, g, weights = local_step(params, batch, kw, state)
    return loss, jax.lax.psum(g, "data"), weights

  state0 = make_weighting(axis_name=None).init(key)
  if "single" in modes:
    placed = jax.device_put((params, batch, replicated_kwargs), jax.devices()[0])
    out["single"] = pack(*jax.jit(global_step)(*placed, state0))
  if "jit_sharded" in modes:
    mesh = parallel.make_mesh()
    out["jit_sharded"] = pack(*jax.jit(global_step)(
        parallel.replicate(params, mesh), parallel.shard_batch(batch, mesh),
        parallel.replicate(replicated_kwargs, mesh), state0))
  if "shard_map" in modes:
    mesh = parallel.make_mesh()
    fn = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P("data"), P(), P()),
                       out_specs=(P(), P(), P("data")))
    out["shard_map"] = pack(*jax.jit(fn)(params, batch, replicated_kwargs, state0))
  if "pmap" in modes and hasattr(jax, "pmap"):
    n = len(jax.devices())
    split = lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:])
    fn = jax.pmap(lambda b: pmap_step(params, b, replicated_kwargs, state0), axis_name="data")
    loss, g, w = fn(jax.tree.map(split, batch))
    out["pmap"] = pack(loss[0], jax.tree.map(lambda x: x[0], g), w.reshape(-1))
  return out


def loss_layouts(make_loss: Callable[..., Callable], params, batch: Mapping[str, Any], *,
                 modes: Sequence[str] = MODES) -> dict[str, dict[str, np.ndarray]]:
  """Value, gradient and per-example output of a batch-level loss in several layouts.

  For losses that are not a `Weighting` (AnyLoss, EnsLoss, ...):
  ``make_loss(axis_name) -> f(params, batch) -> (loss, per_example output [B])``, where the
  loss follows the convention of `reweight.weighted`: with ``axis_name`` it is the global
  batch's on every device, typed replicated inside `jax.shard_map` (which runs with the
  default ``check_vma=True`` and returns loss and gradient as they are), and with this
  device's share of the gradient under ``pmap`` (whose gradients are ``psum``-ed).
  """

  def global_fn(p, b):
    (loss, per_example), g = jax.value_and_grad(make_loss(None), has_aux=True)(p, b)
    return loss, g, per_example

  def local_fn(p, b):
    (loss, per_example), g = jax.value_and_grad(make_loss("data"), has_aux=True)(p, b)
    return loss, g, per_example

  def pmap_fn(p, b):
    loss, g, per_example = local_fn(p, b)
    return loss, jax.lax.psum(g, "data"), per_example

  def pack(loss, grads, per_example):
    return _pack({"loss": loss, "per_example": per_example}, "grad", grads)

  out = {}
  if "single" in modes:
    out["single"] = pack(*jax.jit(global_fn)(*jax.device_put((params, batch),
                                                            jax.devices()[0])))
  if "jit_sharded" in modes:
    mesh = parallel.make_mesh()
    out["jit_sharded"] = pack(*jax.jit(global_fn)(parallel.replicate(params, mesh),
                                                  parallel.shard_batch(batch, mesh)))
  if "shard_map" in modes:
    mesh = parallel.make_mesh()
    fn = jax.shard_map(local_fn, mesh=mesh, in_specs=(P(), P("data")),
                       out_specs=(P(), P(), P("data")))
    out["shard_map"] = pack(*jax.jit(fn)(params, batch))
  if "pmap" in modes and hasattr(jax, "pmap"):
    n = len(jax.devices())
    split = lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:])
    loss, g, pe = jax.pmap(lambda b: pmap_fn(params, b), axis_name="data")(
        jax.tree.map(split, batch))
    out["pmap"] = pack(loss[0], jax.tree.map(lambda x: x[0], g),
                       pe.reshape((-1,) + pe.shape[2:]))
  return out


def differences(results: Mapping[str, Mapping[str, np.ndarray]],
                reference: Mode = "single") -> dict[str, float]:
  """`max_difference` of every layout against ``reference``."""
  return {m: max_difference(results, reference, m) for m in results}


def assert_layouts_agree(differences_by_name: Mapping[str, Mapping[str, float]],
                         atol: float = 1e-6) -> None:
  """Asserts every check ran in all `MODES` and stayed within ``atol`` of ``single``.

  Args:
    differences_by_name: ``{check: {mode: max difference to single}}``, e.g. one
      `differences` result per weighting.
    atol: the largest difference allowed.
  """
  for name, diffs in differences_by_name.items():
    assert set(diffs) == set(MODES), (name, sorted(diffs))
    for mode, d in diffs.items():
      assert d <= atol, (name, mode, d)


def max_difference(results: Mapping[str, Mapping[str, np.ndarray]], a: str, b: str) -> float:
  """Largest absolute difference between two layouts' outputs (all keys)."""
  ra, rb = results[a], results[b]
  if set(ra) != set(rb):
    raise ValueError(f"layouts {a!r} and {b!r} have different outputs: {sorted(ra)} vs "
                     f"{sorted(rb)}")
  worst = 0.0
  for k in ra:
    x, y = np.asarray(ra[k], np.float64), np.asarray(rb[k], np.float64)
    if x.shape != y.shape:
      raise ValueError(f"{k}: shape {x.shape} in {a!r} but {y.shape} in {b!r}")
    if x.size:
      worst = max(worst, float(np.max(np.abs(x - y))))
  return worst


def run_with_devices(code: str, num_devices: int = 8, timeout: float = 600) -> Any:
  """Runs ``code`` in a fresh Python with ``num_devices`` forced CPU devices.

  The code must print one JSON document as its last line of stdout; it is returned parsed.
  Used by tests so that the forced device count does not leak into the test process.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={num_devices}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def policy_layouts(make_policy: Callable[[], Any], inputs_per_step: Sequence[Mapping[str, Any]],
                   modes: Sequence[str] = MODES) -> dict[str, dict[str, np.ndarray]]:
  """``probs`` (per step) and final state of a mixture policy in several layouts.

  A `reweight.group.policy.MixturePolicy` is global and small: every device holds the
  whole state and sees the same inputs. This runs ``init()`` and then one ``update(state,
  **inputs_per_step[t])`` per step (``step`` is not passed, so the policy counts its own
  updates):

  * ``single``: `jax.jit` on one device;
  * ``jit_sharded``: `jax.jit` with the inputs and the state replicated over
    `reweight.parallel.make_mesh` (all devices);
  * ``shard_map``: inside `jax.shard_map` over that mesh, replicated in and out specs, JAX's
    default ``check_vma=True``;
  * ``pmap``: inside `jax.pmap` with the inputs broadcast to every device (skipped where
    jax no longer has it); device 0's result is returned.

  Args:
    make_policy: ``make_policy() -> MixturePolicy``.
    inputs_per_step: one mapping of keyword inputs (arrays, or pytrees of arrays) per step;
      every step must have the same keys and shapes (the steps are stacked).
    modes: a subset of `MODES`.

  Returns:
    ``{mode: {"probs": [steps, G], "state/0": ..., ...}}`` as numpy arrays, for
    `max_difference` / `differences`.

  Examples:
    >>> import numpy as np
    >>> from reweight import testing
    >>> from reweight.group.skill_it import skill_it
    >>> out = testing.policy_layouts(lambda: skill_it(np.eye(2)),
    ...                              [{"eval_losses": np.array([1.0, 2.0])}] * 2,
    ...                              modes=("single", "shard_map"))
    >>> out["single"]["probs"].shape, testing.max_difference(out, "single", "shard_map")
    ((2, 2), 0.0)
  """
  _check_modes(modes)
  if not inputs_per_step:
    raise ValueError("inputs_per_step must hold at least one step's inputs")
  keys = set(inputs_per_step[0])
  for t, inputs in enumerate(inputs_per_step):
    if set(inputs) != keys:
      raise ValueError(f"step {t} has inputs {sorted(inputs)}, step 0 has {sorted(keys)}")
  stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                         *[dict(inputs) for inputs in inputs_per_step])
  steps = len(inputs_per_step)
  policy = make_policy()
  state0 = policy.init()

  def run(inputs, state):
    probs = []
    for t in range(steps):
      state = policy.update(state, **jax.tree.map(lambda x, t=t: x[t], inputs))
      probs.append(state.probs)
    return jnp.stack(probs), state

  def pack(probs, state):
    return _pack({"probs": probs}, "state", state)

  out = {}
  if "single" in modes:
    placed = jax.device_put((stacked, state0), jax.devices()[0])
    out["single"] = pack(*jax.jit(run)(*placed))
  if "jit_sharded" in modes:
    mesh = parallel.make_mesh()
    out["jit_sharded"] = pack(*jax.jit(run)(*parallel.replicate((stacked, state0), mesh)))
  if "shard_map" in modes:
    mesh = parallel.make_mesh()
    fn = jax.shard_map(run, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()))
    out["shard_map"] = pack(*jax.jit(fn)(stacked, state0))
  if "pmap" in modes and hasattr(jax, "pmap"):
    n = len(jax.devices())
    broadcast = lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x))
    probs, state = jax.pmap(run, axis_name="data")(jax.tree.map(broadcast, stacked),
                                                   jax.tree.map(broadcast, state0))
    out["pmap"] = pack(probs[0], jax.tree.map(lambda x: x[0], state))
  return out
