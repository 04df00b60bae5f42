"""Factored evaluation of low-rank additive reparameterizations (LoRA without the full kernel).

`reweight.reparam.lora` (and rsLoRA, PiSSA, SoMA, AdaLoRA, EVA) compute an effective kernel

    K' = K + s * L @ R,        L: (in, r),   R: (r, out)     (AdaLoRA: L = lora_a * lora_e),

and the model then contracts an activation with ``K'``. Materializing ``K'`` costs a
kernel-sized product in the forward pass and, worse, makes the backward pass form the full
``(in, out)`` gradient ``x^T g`` before projecting it onto the factors. `factored` evaluates
the model with every contraction that consumes such a kernel rewritten as

    x @ K' = x @ K + s * (x @ L) @ R,

so neither ``K'`` nor its gradient is formed: the backward pass only needs ``(in, r)`` and
``(r, out)``-sized products (as ``flax.nnx.LoRALinear`` does for its own layers), for any
model written as a pure function of its parameters.

How. Two jaxprs are evaluated by a small interpreter (JAX's "custom interpreter" pattern).
First ``reparam.apply(trainable, frozen)``: every ``dot_general`` there is kept as a lazy
low-rank term, and scalings, casts and additions of a kernel are applied to the terms, so each
targeted kernel comes out as ``K + sum_i s_i L_i R_i``. Then the model ``fn(params, ...)``:
a ``dot_general`` with such a kernel as either operand (any contracting dimensions, e.g.
``x @ K``, ``jnp.dot``, ``lax.dot_general``, ``einsum``, Flax ``Dense`` / ``DenseGeneral`` /
``nnx.Linear``) is computed factor by factor; transposes, slices and splits (fused ``qkv``
kernels), reshapes that keep the input and the output dimensions apart,
``convert_element_type`` and ``jit`` / ``custom_jvp`` / ``remat`` sub-jaxprs are followed.
Any other use of a targeted kernel (an elementwise op, a norm, a reshape mixing its input and
output dimensions, a loop carrying it) raises `NotFactorableError` naming the parameter and
the primitive; the materialized path ``fn(reparam.apply(trainable, frozen), ...)`` stays
available for such models.

References:
  Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
  JAX documentation, "Writing custom Jaxpr interpreters in JAX".
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from reweight._types import PyTree
from reweight.reparam._core import Reparam, path_str, sub_jaxpr

__all__ = ["NotFactorableError", "factored"]

# Higher-order primitives whose single sub-jaxpr is evaluated inline when a low-rank kernel
# flows into it (custom differentiation rules of such a call are not used for it).
_CALLS = frozenset({
    "jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
    "custom_vjp_call_jaxpr", "checkpoint", "remat", "remat2",
})
_PLAIN_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call"})
_IDENTITY = frozenset({"copy", "copy_p", "optimization_barrier"})


class NotFactorableError(ValueError):
  """A targeted kernel is used in a way `factored` cannot compute from its factors."""


class _LowRank:
  """A kernel ``base + sum_i scale_i * einsum('...r,r...', left_i, right_i)``.

  ``left_i`` has shape ``kernel.shape[:k_i] + (r_i,)`` and ``right_i`` has shape
  ``(r_i,) + kernel.shape[k_i:]``: each term's kernel dimensions are a block owned by
  ``left_i`` followed by a block owned by ``right_i``. ``base`` is a dense array of the kernel's
  shape or None (zero). Not a pytree: it is a leaf wherever it sits in a tree.
  """

  def __init__(self, shape, dtype, base, terms, path=None):
    self.shape = tuple(shape)
    self.dtype = jnp.dtype(dtype)
    self.base = base
    self.terms = tuple(terms)  # (left, right, scale)
    self.path = path

  @property
  def ndim(self):
    return len(self.shape)

  def replace(self, **kw):
    args = {"shape": self.shape, "dtype": self.dtype, "base": self.base, "terms": self.terms,
            "path": self.path}
    args.update(kw)
    return _LowRank(**args)

  def materialize(self):
    out = jnp.zeros(self.shape, self.dtype) if self.base is None else self.base
    for left, right, scale in self.terms:
      prod = jnp.tensordot(left, right, axes=1)
      out = out + (scale * prod).astype(self.dtype)
    return out


def _name(v: _LowRank) -> str:
  return repr(v.path) if v.path is not None else "a targeted kernel"


def _fail(v: _LowRank, prim: str, why: str = "") -> None:
  raise NotFactorableError(
      f"parameter {_name(v)} (shape {v.shape}) is used by `{prim}`{why}, which factored LoRA "
      "cannot compute from the factors; only contractions (dot_general / einsum / matmul), "
      "transposes, slices, reshapes keeping the input and output dimensions apart and dtype "
      "casts of a targeted kernel are supported. Use the materialized path "
      "fn(reparam.apply(trainable, frozen), ...) for this model.")


# --------------------------------------------------------------------------------------
# Structural rules shared by both passes
# --------------------------------------------------------------------------------------


def _swap(left, right):
  """The term with the right block first: ``(R-block, L-block)`` ordering."""
  return jnp.moveaxis(right, 0, -1), jnp.moveaxis(left, -1, 0)


def _transpose(v: _LowRank, perm) -> _LowRank | None:
  perm = tuple(int(p) for p in perm)
  terms = []
  for left, right, scale in v.terms:
    k = left.ndim - 1
    n = v.ndim
    if all(p < k for p in perm[:k]) and all(p >= k for p in perm[k:]):
      terms.append((jnp.transpose(left, perm[:k] + (k,)),
                    jnp.transpose(right, (0,) + tuple(p - k + 1 for p in perm[k:])), scale))
    elif all(p >= k for p in perm[:n - k]) and all(p < k for p in perm[n - k:]):
      sl, sr = _swap(left, right)  # kernel order (R-block, L-block): R dims are 0..n-k-1
      m = n - k
      remap = tuple((p - k) if p >= k else (p + m) for p in perm)
      terms.append((jnp.transpose(sl, remap[:m] + (m,)),
                    jnp.transpose(sr, (0,) + tuple(p - m + 1 for p in remap[m:])), scale))
    else:
      return None
  base = None if v.base is None else jnp.transpose(v.base, perm)
  return v.replace(shape=tuple(v.shape[p] for p in perm), base=base, terms=terms)


def _reshape(v: _LowRank, new_shape) -> _LowRank | None:
  new_shape = tuple(int(d) for d in new_shape)
  terms = []
  for left, right, scale in v.terms:
    size_l = math.prod(left.shape[:-1])
    cum = np.cumprod((1,) + new_shape)
    splits = [i for i, c in enumerate(cum) if c == size_l]
    if not splits:
      return None
    k = splits[0]
    r = left.shape[-1]
    terms.append((left.reshape(new_shape[:k] + (r,)), right.reshape((r,) + new_shape[k:]),
                  scale))
  base = None if v.base is None else v.base.reshape(new_shape)
  return v.replace(shape=new_shape, base=base, terms=terms)


def _convert(v: _LowRank, dtype) -> _LowRank:
  dtype = jnp.dtype(dtype)
  if dtype == v.dtype:
    return v
  base = None if v.base is None else v.base.astype(dtype)
  terms = [(left.astype(dtype), right.astype(dtype), scale) for left, right, scale in v.terms]
  return v.replace(dtype=dtype, base=base, terms=terms)


def _slice(v: _LowRank, starts, limits, strides=None) -> _LowRank:
  """``kernel[starts:limits:strides]``: each factor slices the dimensions it owns."""
  strides = (1,) * v.ndim if strides is None else tuple(strides)
  index = tuple(slice(int(a), int(b), int(c)) for a, b, c in zip(starts, limits, strides,
                                                                 strict=True))
  terms = []
  for left, right, scale in v.terms:
    k = left.ndim - 1
    terms.append((left[index[:k] + (slice(None),)], right[(slice(None),) + index[k:]], scale))
  base = None if v.base is None else v.base[index]
  shape = tuple(len(range(*i.indices(n))) for i, n in zip(index, v.shape, strict=True))
  return v.replace(shape=shape, base=base, terms=terms)


def _split(v: _LowRank, sizes, axis: int) -> list[_LowRank]:
  """``jnp.split`` of a low-rank kernel along ``axis`` into pieces of ``sizes``."""
  outs, start = [], 0
  for size in sizes:
    starts = [0] * v.ndim
    limits = list(v.shape)
    starts[axis], limits[axis] = start, start + int(size)
    outs.append(_slice(v, starts, limits))
    start += int(size)
  return outs


def _structural(name: str, v: _LowRank, params) -> _LowRank | None:
  """Transpose / reshape / squeeze / slice / cast of a low-rank kernel, or None."""
  if name == "slice":
    return _slice(v, params["start_indices"], params["limit_indices"], params["strides"])
  if name in _IDENTITY:
    return v
  if name == "transpose":
    return _transpose(v, params["permutation"])
  if name == "reshape":
    if params.get("dimensions") is not None:
      return None
    return _reshape(v, params["new_sizes"])
  if name == "squeeze":
    dims = {d % v.ndim for d in params["dimensions"]}
    return _reshape(v, [d for i, d in enumerate(v.shape) if i not in dims])
  if name == "convert_element_type":
    return _convert(v, params["new_dtype"])
  return None


# --------------------------------------------------------------------------------------
# Contraction of an activation with a low-rank kernel
# --------------------------------------------------------------------------------------


def _contract(eqn, x, v: _LowRank, kernel_is_lhs: bool):
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  xc, kc = (rc, lc) if kernel_is_lhs else (lc, rc)
  xb, kb = (rb, lb) if kernel_is_lhs else (lb, rb)
  if kb or xb:
    _fail(v, "dot_general", " with batch dimensions on the kernel")
  precision = eqn.params.get("precision")
  pref = eqn.params.get("preferred_element_type")
  out_dtype = eqn.outvars[0].aval.dtype
  letters = iter(string.ascii_letters)
  k_sub = [next(letters) for _ in range(v.ndim)]
  x_sub = [None] * x.ndim
  for a, b in zip(xc, kc, strict=True):
    x_sub[a] = k_sub[b]
  for i in range(x.ndim):
    if x_sub[i] is None:
      x_sub[i] = next(letters)
  r_sub = next(letters)
  x_free = [x_sub[i] for i in range(x.ndim) if i not in set(xc)]
  k_free = [k_sub[i] for i in range(v.ndim) if i not in set(kc)]
  out_sub = "".join(k_free + x_free if kernel_is_lhs else x_free + k_free)
  x_str = "".join(x_sub)

  def ein(spec, a, b):
    return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=pref)

  if v.base is not None:
    base_args = (v.base, x) if kernel_is_lhs else (x, v.base)
    out = eqn.primitive.bind(*base_args, **eqn.params)
  else:
    out = jnp.zeros(eqn.outvars[0].aval.shape, out_dtype)
  kc_set = set(kc)
  for left, right, scale in v.terms:
    k = left.ndim - 1
    l_sub, r_subs = k_sub[:k], k_sub[k:]
    l_con = [s for i, s in enumerate(l_sub) if i in kc_set]
    r_con = [s for i, s in enumerate(r_subs) if i + k in kc_set]
    first_left = bool(l_con) or not r_con
    if first_left:  # x with L over the contracted L dims, then with R.
      t_sub = [s for s in x_sub if s not in l_con] + [s for s in l_sub if s not in l_con]
      t = ein(f"{x_str},{''.join(l_sub)}{r_sub}->{''.join(t_sub)}{r_sub}", x, left)
      t = t * jnp.asarray(scale, t.dtype)
      term = ein(f"{''.join(t_sub)}{r_sub},{r_sub}{''.join(r_subs)}->{out_sub}", t, right)
    else:  # only R dims are contracted: x with R first, then L.
      t_sub = [s for s in x_sub if s not in r_con] + [s for s in r_subs if s not in r_con]
      t = ein(f"{x_str},{r_sub}{''.join(r_subs)}->{''.join(t_sub)}{r_sub}", x, right)
      t = t * jnp.asarray(scale, t.dtype)
      term = ein(f"{''.join(t_sub)}{r_sub},{''.join(l_sub)}{r_sub}->{out_sub}", t, left)
    out = out + term.astype(out_dtype)
  return out.astype(out_dtype)


# --------------------------------------------------------------------------------------
# The interpreter
# --------------------------------------------------------------------------------------


def _bind(eqn, invals):
  bind_params = eqn.primitive.get_bind_params(eqn.params)
  if isinstance(bind_params, tuple):  # older jax: (subfuns, params)
    subfuns, bind_params = bind_params
    invals = [*subfuns, *invals]
  outs = eqn.primitive.bind(*invals, **bind_params)
  return list(outs) if eqn.primitive.multiple_results else [outs]


def _is_scalar(x) -> bool:
  return not isinstance(x, _LowRank) and math.prod(np.shape(x)) == 1


def _delta_rule(eqn, invals):
  """Pass 1 (``reparam.apply``): builds the low-rank terms; None means "evaluate densely"."""
  name = eqn.primitive.name
  lows = [isinstance(x, _LowRank) for x in invals]
  if name == "dot_general" and not any(lows):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    a, b = invals
    if lb or rb or len(lc) != 1 or np.ndim(a) < 1 or np.ndim(b) < 1:
      return None
    left = jnp.moveaxis(a, lc[0], -1)
    right = jnp.moveaxis(b, rc[0], 0)
    aval = eqn.outvars[0].aval
    if left.dtype != aval.dtype:
      left, right = left.astype(aval.dtype), right.astype(aval.dtype)
    return _LowRank(aval.shape, aval.dtype, None, [(left, right, 1.0)])
  if not any(lows):
    return None
  if name in ("mul", "div") and len(invals) == 2:
    (i_low, i_s) = (0, 1) if lows[0] else (1, 0)
    v, s = invals[i_low], invals[i_s]
    if _is_scalar(s) and not (name == "div" and i_low == 1):
      s = jnp.reshape(s, ())
      f = (lambda z: z * s) if name == "mul" else (lambda z: z / s)
      base = None if v.base is None else f(v.base).astype(v.dtype)
      return v.replace(base=base, terms=[(lt, rt, f(sc)) for lt, rt, sc in v.terms])
    return None
  if name == "neg":
    return _neg(invals[0])
  if name in ("add", "add_any", "sub") and len(invals) == 2:
    a, b = invals
    if np.shape(a) != np.shape(b):
      return None
    if name == "sub":
      b = _neg(b) if isinstance(b, _LowRank) else -b
    parts = [a, b]
    base, terms = None, []
    for p in parts:
      pb = p.base if isinstance(p, _LowRank) else p
      if isinstance(p, _LowRank):
        terms.extend(p.terms)
      if pb is not None:
        base = pb if base is None else base + pb
    aval = eqn.outvars[0].aval
    return _LowRank(aval.shape, aval.dtype, base, terms)
  if len(invals) == 1:
    return _structural(name, invals[0], eqn.params)
  return None


def _neg(v: _LowRank) -> _LowRank:
  base = None if v.base is None else -v.base
  return v.replace(base=base, terms=[(lt, rt, -sc) for lt, rt, sc in v.terms])


def _eval(jaxpr, consts, args, mode: str, used: list):
  """Evaluates ``jaxpr`` on ``args`` (arrays or `_LowRank`) in ``mode`` "delta" or "model"."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jex.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts, strict=True):
    env[v] = c
  for v, a in zip(jaxpr.invars, args, strict=True):
    env[v] = a
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    lows = [isinstance(x, _LowRank) for x in invals]
    name = eqn.primitive.name
    outs = None
    if mode == "delta":
      if name == "split" and lows[0]:
        outs = _split(invals[0], eqn.params["sizes"], eqn.params["axis"])
      else:
        out = _delta_rule(eqn, invals)
        outs = None if out is None else [out]
    elif any(lows):
      if name == "dot_general":
        if all(lows):
          _fail(invals[0], "dot_general", f" together with {_name(invals[1])}")
        outs = [_contract(eqn, invals[1 - lows.index(True)], invals[lows.index(True)],
                          kernel_is_lhs=lows[0])]
      elif name == "split":
        outs = _split(invals[0], eqn.params["sizes"], eqn.params["axis"])
      elif len(invals) == 1 and name not in _CALLS:
        out = _structural(name, invals[0], eqn.params)
        if out is None:
          _fail(invals[0], name, f" with params {_short(eqn.params)}")
        outs = [out]
    sub = sub_jaxpr(eqn) if outs is None and name in _CALLS else None
    # Calls receiving a low-rank kernel are evaluated inline; pass 1 also looks into plain
    # jitted helpers, where the delta ``A @ B`` may be built.
    has_low = any(isinstance(x, _LowRank) for x in invals)
    if sub is not None and (has_low or (mode == "delta" and name in _PLAIN_CALLS)):
      if len(sub[0].invars) == len(invals):
        outs = _eval(sub[0], sub[1], invals, mode, used)
    if outs is None and has_low:
      if mode == "delta":
        used.append(name)
        invals = [x.materialize() if isinstance(x, _LowRank) else x for x in invals]
      else:
        _fail(next(x for x in invals if isinstance(x, _LowRank)), name)
    if outs is None:
      outs = _bind(eqn, invals)
    for v, o in zip(eqn.outvars, outs, strict=True):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


def _short(params) -> str:
  text = ", ".join(f"{k}={v}" for k, v in params.items() if k != "sharding")
  return text if len(text) < 120 else text[:117] + "..."


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _lowrank_params(reparam: Reparam, trainable: PyTree, frozen: PyTree) -> PyTree:
  """``reparam.apply(trainable, frozen)`` with targeted kernels kept in factored form.

  Returns the parameter tree whose targeted leaves are opaque low-rank kernels (usable only
  through `factored`) and whose other leaves are arrays.

  Raises:
    NotFactorableError: if a leaf that depends on ``trainable`` is not ``K + low-rank`` (nor
      a trainable leaf passed through unchanged), e.g. Bone, DoRA or the compander.
  """
  t_leaves = jax.tree.leaves(trainable)
  f_leaves = jax.tree.leaves(frozen)
  closed, out_shape = jax.make_jaxpr(reparam.apply, return_shape=True)(trainable, frozen)
  used: list[str] = []
  outs = _eval(closed.jaxpr, closed.consts, t_leaves + f_leaves, "delta", used)
  # Which outputs depend on trainable: a dependency pass over the jaxpr.
  dep = _depends(closed.jaxpr, [True] * len(t_leaves) + [False] * len(f_leaves))
  passthrough = set(closed.jaxpr.invars[:len(t_leaves)])
  paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(out_shape)[0]]
  result = []
  for path, o, d, var in zip(paths, outs, dep, closed.jaxpr.outvars, strict=True):
    if isinstance(o, _LowRank):
      o.path = path
      if not o.terms:
        o = o.materialize()
    elif d and var not in passthrough:
      why = f" (it uses {sorted(set(used))})" if used else ""
      raise NotFactorableError(
          f"reparam.apply does not give parameter {path!r} as a kernel plus a low-rank "
          f"product{why}: the reparameterization is not low-rank additive (as Bone, DoRA or "
          "the compander are not). Use the materialized path "
          "fn(reparam.apply(trainable, frozen), ...) instead.")
    result.append(o)
  return jax.tree.unflatten(jax.tree.structure(out_shape), result)


def _depends(jaxpr, flags) -> list[bool]:
  dep = {v for v, f in zip(jaxpr.invars, flags, strict=True) if f}
  for eqn in jaxpr.eqns:
    if any((not isinstance(v, jex.Literal)) and v in dep for v in eqn.invars):
      dep.update(eqn.outvars)
  return [(not isinstance(v, jex.Literal)) and v in dep for v in jaxpr.outvars]


def _is_array(x) -> bool:
  return isinstance(x, jax.Array | np.ndarray | np.generic) or hasattr(x, "aval")


def factored(fn: Callable[..., Any], reparam: Reparam) -> Callable[..., Any]:
  r"""``fn`` on reparameterized parameters, each low-rank update kept factored.

  For ``apply(trainable, frozen)`` giving targeted kernels ``K' = K + s L R`` (LoRA, rsLoRA,
  PiSSA, SoMA, EVA: ``L = lora_a``, ``R = lora_b``; AdaLoRA: ``L = lora_a * lora_e``), every
  contraction of an activation ``x`` with ``K'`` inside ``fn`` is computed as

      x @ K' = x @ K + s * (x @ L) @ R,

  and likewise for any contracting dimensions (``K'^T``, ``einsum``, ``DenseGeneral``), so the
  outputs equal ``fn(reparam.apply(trainable, frozen), *args, **kwargs)`` (to float rounding)
  while the full ``K'`` and the full kernel gradient ``x^T g`` are never formed: gradients with
  respect to ``trainable`` cost ``O(r (in + out))`` per example instead of ``O(in * out)``.

  Array leaves of ``args`` / ``kwargs`` are traced; other leaves (None, bools, Python
  numbers, strings) are static. The result composes with ``jax.jit``, ``jax.grad`` and
  ``jax.vmap``; trace it under ``jax.jit`` (it re-traces ``fn`` on every eager call).

  Args:
    fn: ``fn(params, *args, **kwargs)``, a pure function of the parameter pytree (a plain
      function, ``linen_module.apply``, or an NNX model merged from ``params``).
    reparam: a low-rank additive `Reparam` (`lora`, `adalora`, `eva`, ...).

  Returns:
    ``f(trainable, frozen, *args, **kwargs)`` with the outputs of
    ``fn(reparam.apply(trainable, frozen), *args, **kwargs)``.

  Raises:
    NotFactorableError: (a ``ValueError``) when called, if ``reparam`` is not low-rank
      additive (Bone, DoRA, compander) or ``fn`` uses a targeted kernel other than in a
      contraction, transpose, slice, dimension-preserving reshape or dtype cast; the message
      names the parameter and the primitive. The materialized path stays available.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.reparam import factored, lora
    >>> params = {"w": jnp.ones((4, 3))}
    >>> rp = lora(2, 4.0, "w")
    >>> trainable, frozen = rp.init(params, jax.random.key(0))
    >>> trainable = jax.tree.map(jnp.ones_like, trainable)
    >>> fn = lambda p, x: jnp.tanh(x @ p["w"])
    >>> f = jax.jit(factored(fn, rp))
    >>> x = jnp.arange(8.0).reshape(2, 4) / 8
    >>> bool(jnp.allclose(f(trainable, frozen, x), fn(rp.apply(trainable, frozen), x)))
    True

  References:
    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
  """

  def wrapped(trainable: PyTree, frozen: PyTree, *args, **kwargs):
    params = _lowrank_params(reparam, trainable, frozen)
    p_leaves, p_tree = jax.tree.flatten(params)
    leaves, tree = jax.tree.flatten((args, kwargs))
    dynamic = [i for i, x in enumerate(leaves) if _is_array(x)]

    def model(p_list, dyn):
      full = list(leaves)
      for i, x in zip(dynamic, dyn, strict=True):
        full[i] = x
      a, kw = jax.tree.unflatten(tree, full)
      return fn(jax.tree.unflatten(p_tree, p_list), *a, **kw)

    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in p_leaves]
    dyn = [leaves[i] for i in dynamic]
    closed, out_shape = jax.make_jaxpr(model, return_shape=True)(shapes, dyn)
    outs = _eval(closed.jaxpr, closed.consts, p_leaves + jax.tree.leaves(dyn), "model", [])
    for o in outs:
      if isinstance(o, _LowRank):
        _fail(o, "<output of fn>")
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

  return wrapped
