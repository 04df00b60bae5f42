"""Modules to save: train chosen leaves fully beside (or instead of) a reparameterization.

A parameter-efficient method adapts a few matrices and freezes the rest, but some modules
are usually trained as they are: the new classification head of a fine-tuned model, an
embedding that gets new tokens, a layer norm. PEFT calls them ``modules_to_save``. With
``M`` the leaves whose path matches ``modules`` and ``base`` any `Reparam`,

    trainable = {"adapter": t_base, "modules": {p: theta_p for p in M}},
    apply(trainable, frozen)_p = trainable["modules"][p]         for p in M,
                                 base.apply(t_base, frozen)_p   otherwise,

so the saved leaves start at their pretrained values and receive the full gradient, while
``base`` adapts its own targets. ``base=None`` trains only the saved leaves (a linear probe
when ``modules`` is the head).

References:
  Mangrulkar et al., "PEFT: State-of-the-art Parameter-Efficient Fine-Tuning methods",
  2022 (the ``modules_to_save`` option of its configs).
"""

from __future__ import annotations

from reweight._types import PyTree
from reweight.reparam._core import Reparam
from reweight.tree_paths import flatten_with_paths, replace_at, select


def modules_to_save(base: Reparam | None, modules: str) -> Reparam:
  """``base`` on its targets plus the leaves matching ``modules`` trained as they are.

  .. math::

    \\theta'_p = m_p \\ (p \\in M), \\qquad
    \\theta'_p = \\text{base.apply}(t, F)_p \\ (p \\notin M), \\qquad m_p^{(0)} = \\theta_p

  with ``M = select(params, modules, ndim=None)`` (leaves of any rank; a trailing ``/value``
  of Flax NNX state may be left out of the regex, as everywhere in `reweight.reparam`).

  The frozen tree is ``base``'s (or the parameters themselves with ``base=None``); it still
  holds the pretrained copies of the saved leaves, which ``apply`` overwrites. Leaves matched
  by both ``modules`` and ``base``'s targets end up as the saved copy: keep the two apart.

  Args:
    base: the reparameterization of the other leaves (e.g. `reweight.reparam.lora`), or
      None to train only the saved leaves.
    modules: regex over '/'-joined parameter paths (``re.fullmatch``) of the leaves to train
      fully, e.g. ``"head/.*"``.

  Returns:
    A `Reparam` with trainable tree ``{"adapter": base's trainable ({} without base),
    "modules": {path: leaf}}``. It has an ``unapply`` (for `reweight.reparam.unmerge`) when
    ``base`` has one or is None.

  Raises:
    ValueError: at ``init``, if ``modules`` matches no leaf (naming the available paths).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from reweight.reparam import lora, modules_to_save
    >>> params = {"body": {"kernel": jnp.ones((4, 4))}, "head": {"kernel": jnp.ones((4, 2)),
    ...                                                          "bias": jnp.zeros(2)}}
    >>> probe = modules_to_save(None, "head/.*")  # a linear probe: only the head trains
    >>> trainable, frozen = probe.init(params, jax.random.key(0))
    >>> sorted(trainable["modules"])
    ['head/bias', 'head/kernel']
    >>> rp = modules_to_save(lora(2, 2.0, "body/kernel"), "head/.*")  # LoRA + full head
    >>> trainable, frozen = rp.init(params, jax.random.key(0))
    >>> sorted(trainable["adapter"]), sorted(trainable["modules"])
    (['body/kernel'], ['head/bias', 'head/kernel'])
    >>> trainable["modules"]["head/bias"] = jnp.ones(2)
    >>> rp.apply(trainable, frozen)["head"]["bias"]
    Array([1., 1.], dtype=float32)

  References:
    Mangrulkar et al., "PEFT: State-of-the-art Parameter-Efficient Fine-Tuning methods",
    2022.
  """
  if not isinstance(modules, str):
    raise ValueError(f"modules={modules!r} must be a regex string over parameter paths")

  def init(params: PyTree, key, **data) -> tuple[PyTree, PyTree]:
    flat = flatten_with_paths(params)
    saved = {p: flat[p] for p in select(params, modules, ndim=None)}
    adapter, frozen = ({}, params) if base is None else base.init(params, key, **data)
    return {"adapter": adapter, "modules": saved}, frozen

  def apply(trainable: PyTree, frozen: PyTree) -> PyTree:
    params = frozen if base is None else base.apply(trainable["adapter"], frozen)
    return replace_at(params, trainable["modules"])

  def unapply(trainable: PyTree, params: PyTree) -> PyTree:
    return params if base is None else base.unapply(trainable["adapter"], params)

  invertible = base is None or base.unapply is not None
  return Reparam(init, apply, unapply if invertible else None)
