"""Hardness weightings: focal weights, self-paced selection and ease (curriculum) weights.

Three ways of weighting an example by how hard it is, all following the `Weighting` contract
(weights zero on masked or non-finite examples, ``stop_gradient``, mean one over the valid
examples of the *global* batch):

=====================  ===========================================  ==========================
weighting              raw weight                                   emphasis
=====================  ===========================================  ==========================
`focal_weights`        ``(1 - p_t)^gamma``                          hard (misclassified)
`self_paced`           ``1[l_i < lambda(step)]``                    easy first, growing set
`ease_curriculum`      ``D_i (1 - e/m) + e/m`` for epoch ``e < m``  easy first, fades to 1
=====================  ===========================================  ==========================

``p_t`` is the model's probability of the true class (from the ``logits`` and ``labels``
extras that the per-example loss function returns in its aux dict), ``l_i`` the per-example
loss and ``D_i`` in [0, 1] a per-example *easiness* given as an extra or looked up in a
table by ``example_ids``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reweight._types import ScalarOrSchedule
from reweight.base import (
  CountState,
  Weighting,
  check_hyperparameter,
  current_step,
  normalize,
  resolve,
  valid_mask,
)
from reweight.losses import log_likelihood
from reweight.parallel import AxisName

Array = jax.Array

_FOCAL_EXTRAS_MESSAGE = (
    "focal_weights needs logits= and labels= extras; return them in the per-example loss "
    "fn's aux dict")


def _count_state(key=None) -> CountState:
  del key
  return CountState(jnp.zeros([], jnp.int32))


def log_p_true(logits: Array, labels: Array) -> Array:
  """``log p_t``, the log-probability of the true class, one value per example.

  ``logits [B, C]`` with integer ``labels [B]`` use a softmax; ``logits [B]`` (one score per
  example) with ``labels [B]`` in {0, 1} use a sigmoid (``p_t = sigmoid(s)`` if ``y = 1``,
  else ``sigmoid(-s)``).

  Raises:
    ValueError: on mismatched shapes, non-integer multi-class labels or (when the labels are
      concrete) out-of-range labels.

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.sample.hardness import log_p_true
    >>> [round(x, 4) for x in log_p_true(jnp.zeros((2, 4)), jnp.array([0, 3])).tolist()]
    [-1.3863, -1.3863]
    >>> [round(x, 4) for x in log_p_true(jnp.array([0.0, 2.0]), jnp.array([1, 0])).tolist()]
    [-0.6931, -2.1269]
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim == 1:
    if labels.shape != logits.shape:
      raise ValueError(f"binary logits of shape {logits.shape} need labels of shape "
                       f"{logits.shape}, got {labels.shape}")
    if not isinstance(labels, jax.core.Tracer) and labels.size:
      bad = ~np.isin(np.asarray(labels), (0, 1))
      if bad.any():
        raise ValueError(f"binary label {np.asarray(labels)[bad].flat[0].item()!r} is not one of "
                         "[0, 1]")
    s = logits.astype(jnp.float32)
    return jnp.where(labels.astype(bool), jax.nn.log_sigmoid(s), jax.nn.log_sigmoid(-s))
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"logits of shape {logits.shape} need labels of shape "
                     f"{logits.shape[:1]}; use logits [B, C] with integer labels [B] or "
                     f"binary logits [B] with labels in {{0, 1}}")
  return log_likelihood(logits, labels)


def focal_weights(gamma: ScalarOrSchedule = 2.0, *, axis_name: AxisName = None) -> Weighting:
  """Focal-loss weights ``w_i ∝ (1 - p_t)^gamma``, mean one over the valid examples.

  .. math::

    w_i = \\frac{n\\,(1 - p_{t,i})^\\gamma}{\\sum_{j \\in \\text{valid}} (1 - p_{t,j})^\\gamma}

  Used with cross-entropy this is the focal loss ``-(1 - p_t)^gamma log p_t`` with the
  modulating factor under stop-gradient and renormalized over the batch (so the loss scale
  does not shrink as the model gets confident). ``gamma = 0`` is uniform. If every valid
  example has ``p_t = 1`` the weights fall back to uniform.

  The weighting reads the ``logits`` and ``labels`` extras: return them in the per-example
  loss function's aux dict and `reweight.weighted` passes them on. ``logits [B, C]`` with
  integer labels use a softmax; ``logits [B]`` with labels in {0, 1} a sigmoid.

  Args:
    gamma: the focusing exponent (>= 0), a float or a schedule ``step -> gamma``.
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.

  Returns:
    A `Weighting` whose state counts updates (used as the step when none is passed).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.sample.hardness import focal_weights
    >>> w = focal_weights(gamma=2.0)
    >>> logits = jnp.array([[0.0, 0.0], [0.0, 0.0], [0.0, 20.0]])
    >>> weights, _ = w.update(jnp.zeros(3), w.init(), logits=logits,
    ...                       labels=jnp.array([0, 1, 1]))
    >>> [round(x, 4) for x in weights.tolist()]  # (1 - p_t)^2 = .25, .25, ~0
    [1.5, 1.5, 0.0]

  References:
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
  """
  check_hyperparameter(gamma, "gamma")

  def update(losses, state, *, mask=None, step=None, logits=None, labels=None, **extras):
    del extras
    if logits is None or labels is None:
      raise ValueError(_FOCAL_EXTRAS_MESSAGE)
    valid = valid_mask(losses, mask)
    logits = jnp.asarray(logits)
    if logits.shape[:1] != losses.shape:
      raise ValueError(f"logits of shape {logits.shape} do not match losses of shape "
                       f"{losses.shape} (one row per example)")
    t = current_step(state.count, step)
    g = resolve(gamma, t, "gamma")
    log_pt = jax.lax.stop_gradient(log_p_true(logits, labels))
    # 1 - p_t = -expm1(log p_t), accurate when p_t is close to one.
    raw = jnp.power(jnp.maximum(-jnp.expm1(log_pt), 0.0), g)
    return normalize(raw, valid, axis_name), CountState(state.count + 1)

  return Weighting(_count_state, update)


def self_paced(threshold: ScalarOrSchedule, *, axis_name: AxisName = None) -> Weighting:
  """Self-paced selection ``w_i ∝ 1[l_i < lambda(step)]``, mean one over the valid examples.

  .. math::

    v_i = \\mathbb{1}[\\ell_i < \\lambda(t)], \\qquad
    w_i = \\frac{n\\, v_i}{\\sum_{j \\in \\text{valid}} v_j}

  the closed-form minimizer over ``v in {0,1}^n`` of ``sum_i v_i l_i - lambda sum_i v_i``
  (hard self-paced regularizer). The threshold usually grows during training (``lambda =
  1/K`` with ``K`` shrinking in the paper), so harder examples enter the objective later. If
  no valid example is below the threshold the weights fall back to *uniform* over the valid
  examples (`reweight.base.normalize`'s rule), so a batch's loss never silently vanishes.

  Args:
    threshold: ``lambda``, a float or a schedule ``step -> lambda`` (e.g.
      ``optax.linear_schedule``).
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.

  Returns:
    A `Weighting` whose state counts updates (used as the step when none is passed).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.sample.hardness import self_paced
    >>> w = self_paced(threshold=1.0)
    >>> weights, _ = w.update(jnp.array([0.2, 0.5, 3.0, 0.9]), w.init())
    >>> [round(x, 4) for x in weights.tolist()]  # three of four selected, scaled by 4/3
    [1.3333, 1.3333, 0.0, 1.3333]

  References:
    Kumar, Packer and Koller, "Self-Paced Learning for Latent Variable Models", NeurIPS 2010.
  """
  if not callable(threshold):
    try:
      float(threshold)
    except (TypeError, ValueError):
      raise ValueError(f"threshold={threshold!r} must be a float or a schedule step -> "
                       "lambda") from None

  def update(losses, state, *, mask=None, step=None, **extras):
    del extras
    valid = valid_mask(losses, mask)
    t = current_step(state.count, step)
    lam = resolve(threshold, t, "threshold")
    raw = (jax.lax.stop_gradient(losses) < lam).astype(jnp.float32)
    return normalize(raw, valid, axis_name), CountState(state.count + 1)

  return Weighting(_count_state, update)


def ease_curriculum(*, steps_per_epoch: int, m: int = 20, easiness_key: str = "easiness",
                    easiness_table: Array | np.ndarray | None = None, anti: bool = False,
                    axis_name: AxisName = None) -> Weighting:
  """Curriculum ease weights (MacAvaney et al., SIGIR 2020), mean one over the valid examples.

  .. math::

    W_i = \\begin{cases} D_i\\,(1 - e/m) + e/m & e < m \\\\ 1 & e \\ge m \\end{cases},
    \\qquad e = \\lfloor \\text{step} / \\text{steps\\_per\\_epoch} \\rfloor

  with ``D_i`` in [0, 1] the easiness of example ``i`` (1: easy). In the first epoch the
  weights are proportional to the easiness; they move linearly towards uniform and are
  uniform from epoch ``m`` on. ``anti=True`` uses ``1 - D`` (hardest first).

  The easiness is read from the extra named ``easiness_key`` (an array ``[B]``, e.g. returned
  in the per-example loss function's aux dict) or, when ``easiness_table`` (``[N]``, one
  value per training example) is given, looked up by the ``example_ids`` extra (the batch's
  ``"id"`` field under `reweight.weighted`). Values outside [0, 1] are clipped.

  Memory: the ``easiness_table`` is stored as float32, 4 bytes per example, and is a
  constant of the compiled step, replicated on every device. To shard it by example id
  instead (``4 N / D`` bytes on each of ``D`` devices), pass it to the jitted step as an
  argument placed with `reweight.parallel.shard_examples` and give its rows as the easiness
  extra, e.g. return ``{"easiness": table[batch["id"]]}`` in the per-example loss
  function's aux dict: under `jax.jit` the lookup is a partitioned gather with the same
  values.

  Deviation from the paper: the paper multiplies each loss by ``W_i`` as is, so early epochs
  also train with a smaller effective learning rate. Here the weights are normalized to mean
  one over the batch (the `Weighting` contract), which keeps the relative emphasis and drops
  the global scale. If every valid ``W_i`` is 0 the weights are uniform.

  Args:
    steps_per_epoch: optimizer steps per epoch (> 0); the epoch is ``step //
      steps_per_epoch``.
    m: the epoch (> 0) from which the weights are uniform (the paper's ``m = 20``).
    easiness_key: the name of the extra holding ``D`` when no table is given.
    easiness_table: optional ``[N]`` easiness of every training example, indexed by
      ``example_ids``.
    anti: use ``1 - D`` (an anti-curriculum).
    axis_name: the batch axis name(s) inside `shard_map` / `pmap`.

  Returns:
    A `Weighting` whose state counts updates (used as the step when none is passed).

  Examples:
    >>> import jax.numpy as jnp
    >>> from reweight.sample.hardness import ease_curriculum
    >>> w = ease_curriculum(steps_per_epoch=10, m=2)
    >>> easiness = jnp.array([1.0, 0.0, 0.5, 0.5])
    >>> [round(x, 4) for x in w.update(jnp.zeros(4), w.init(), step=0,
    ...                                easiness=easiness)[0].tolist()]  # epoch 0: W = D
    [2.0, 0.0, 1.0, 1.0]
    >>> [round(x, 4) for x in w.update(jnp.zeros(4), w.init(), step=10,
    ...                                easiness=easiness)[0].tolist()]  # epoch 1: D/2 + 1/2
    [1.3333, 0.6667, 1.0, 1.0]

  References:
    MacAvaney, Nardini, Perego, Tonellotto, Goharian and Frieder, "Training Curricula for
    Open Domain Answer Re-Ranking", SIGIR 2020.
  """
  if not isinstance(steps_per_epoch, int | np.integer) or steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be a positive integer")
  if not m > 0:
    raise ValueError(f"m={m!r} must be positive (the epoch from which weights are uniform)")
  table = None
  if easiness_table is not None:
    table_np = np.asarray(easiness_table)
    if table_np.ndim != 1:
      raise ValueError(f"easiness_table must have shape [num_examples], got shape "
                       f"{table_np.shape}")
    if not np.all(np.isfinite(table_np)) or table_np.min(initial=0) < 0 or \
        table_np.max(initial=0) > 1:
      raise ValueError("easiness_table values must be finite and in [0, 1]; got min "
                       f"{table_np.min()!r} and max {table_np.max()!r}")
    table = jnp.asarray(table_np, jnp.float32)

  def easiness_of(losses, extras) -> Array:
    if table is not None:
      ids = extras.get("example_ids")
      if ids is None:
        raise ValueError("ease_curriculum with easiness_table= needs the example_ids= extra "
                         "(the batch's 'id' field under reweight.weighted)")
      ids = jnp.asarray(ids)
      if ids.shape != losses.shape:
        raise ValueError(f"example_ids have shape {ids.shape} but losses have shape "
                         f"{losses.shape}")
      return table[ids]
    d = extras.get(easiness_key)
    if d is None:
      raise ValueError(
          f"ease_curriculum needs the {easiness_key}= extra (easiness in [0, 1], one per "
          "example; return it in the per-example loss fn's aux dict) or easiness_table= "
          "with example_ids=")
    d = jnp.asarray(d)
    if d.shape != losses.shape:
      raise ValueError(f"{easiness_key} has shape {d.shape} but losses have shape "
                       f"{losses.shape}")
    return d

  def update(losses, state, *, mask=None, step=None, **extras):
    valid = valid_mask(losses, mask)
    d = jnp.clip(jax.lax.stop_gradient(easiness_of(losses, extras)).astype(jnp.float32),
                 0.0, 1.0)
    if anti:
      d = 1.0 - d
    t = current_step(state.count, step)
    epoch = (t // steps_per_epoch).astype(jnp.float32)
    progress = jnp.minimum(epoch / m, 1.0)
    raw = d * (1.0 - progress) + progress
    return normalize(raw, valid, axis_name), CountState(state.count + 1)

  return Weighting(_count_state, update)

