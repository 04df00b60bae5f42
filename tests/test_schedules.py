"""Tests for reweight.schedules against NumPy closed forms and optax's own schedules."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage
from absl.testing import parameterized

from reweight import schedules


def values(schedule, steps):
  return np.asarray(jax.jit(schedule)(jnp.asarray(steps)), np.float64)


# ----------------------------------------------------------------------------------------
# WSD.


def np_wsd(t, peak, total, warmup, decay, shape, r, init):
  """Per-step reference, written with Python math."""
  if t < warmup:
    return peak * (init + (1 - init) * t / warmup)
  if decay == 0 or t < total - decay:
    return peak
  p = min((t - (total - decay)) / decay, 1.0)
  phi = {
      "linear": lambda: r + (1 - r) * (1 - p),
      "cosine": lambda: r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p)),
      "1-sqrt": lambda: r + (1 - r) * (1 - math.sqrt(p)),
      "square": lambda: r + (1 - r) * (1 - p * p),
      "exp": lambda: r**p,
      "inverse": lambda: 1 / (1 + (1 / r - 1) * p),
  }[shape]()
  return peak * phi


@pytest.mark.parametrize("shape", schedules.DECAY_SHAPES)
def test_wsd_matches_closed_form_for_every_shape(shape):
  peak, total, warmup, decay, r, init = 3e-3, 120, 10, 30, 0.1, 0.2
  s = schedules.wsd(peak, total, warmup, decay_steps=decay, shape=shape, final_ratio=r,
                    init_ratio=init)
  t = np.arange(0, total + 10)
  ref = [np_wsd(int(x), peak, total, warmup, decay, shape, r, init) for x in t]
  np.testing.assert_allclose(values(s, t), ref, rtol=1e-5, atol=1e-9)
  # Endpoints exactly: init, peak at the end of warmup and at the start of the decay,
  # peak * final_ratio at the end and after.
  assert float(s(0)) == pytest.approx(init * peak, rel=1e-6)
  assert float(s(warmup)) == pytest.approx(peak, rel=1e-6)
  assert float(s(total - decay)) == pytest.approx(peak, rel=1e-6)
  assert float(s(total)) == pytest.approx(r * peak, rel=1e-5)
  assert float(s(total + 1000)) == pytest.approx(r * peak, rel=1e-5)
  # Non-increasing after warmup.
  assert np.all(np.diff(values(s, np.arange(warmup, total + 5))) <= 1e-9)


def test_wsd_decay_fraction_rounds_to_steps():
  a = schedules.wsd(1.0, 1000, 0, decay_fraction=0.2, shape="cosine")
  b = schedules.wsd(1.0, 1000, 0, decay_steps=200, shape="cosine")
  t = np.arange(1100)
  np.testing.assert_array_equal(values(a, t), values(b, t))


def test_wsd_without_stable_phase_is_optax_warmup_cosine():
  peak, total, warmup, r, init = 2.0, 100, 10, 0.05, 0.1
  ours = schedules.wsd(peak, total, warmup, decay_steps=total - warmup, shape="cosine",
                       final_ratio=r, init_ratio=init)
  ref = optax.warmup_cosine_decay_schedule(init * peak, peak, warmup, total, r * peak)
  t = np.arange(0, total + 20)
  np.testing.assert_allclose(values(ours, t), values(ref, t), rtol=1e-5, atol=1e-7)


def test_linear_decay_is_optax_linear_schedule():
  peak, total, warmup, r = 0.5, 80, 8, 0.1
  ours = schedules.linear_decay(peak, total, warmup, final_ratio=r)
  ref = optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup),
       optax.linear_schedule(peak, r * peak, total - warmup)], [warmup])
  t = np.arange(0, total + 20)
  np.testing.assert_allclose(values(ours, t), values(ref, t), rtol=1e-5, atol=1e-7)
  no_warm = schedules.linear_decay(peak, total)
  np.testing.assert_allclose(values(no_warm, t),
                             values(optax.linear_schedule(peak, 0.0, total), t),
                             rtol=1e-5, atol=1e-7)


def test_moderate_decay_and_rewarm_match_optax_warmup_cosine():
  peak, total, warmup = 1.0, 60, 6
  t = np.arange(0, total + 10)
  mod = schedules.moderate_decay(peak, total, final_ratio=0.3, warmup_steps=warmup)
  ref = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, 0.3 * peak)
  np.testing.assert_allclose(values(mod, t), values(ref, t), rtol=1e-5, atol=1e-7)
  # rewarm's levels are fractions of its peak: init 0.1 * 2 = 0.2, final 0.1 * 2 = 0.2.
  re = schedules.rewarm(2.0, total, warmup, init_ratio=0.1, final_ratio=0.1)
  ref = optax.warmup_cosine_decay_schedule(0.2, 2.0, warmup, total, 0.2)
  np.testing.assert_allclose(values(re, t), values(ref, t), rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="init_ratio=1.5 must be <= 1.0"):
    schedules.rewarm(2.0, total, warmup, init_ratio=1.5)
  lin = schedules.moderate_decay(peak, total, final_ratio=0.5, shape="linear")
  np.testing.assert_allclose(values(lin, t), values(optax.linear_schedule(1.0, 0.5, total), t),
                             rtol=1e-6)


def test_schedules_jit_with_traced_step_and_drive_optax():
  s = schedules.wsd(0.1, 20, 4, decay_fraction=0.25, shape="1-sqrt", final_ratio=0.1)
  jitted = jax.jit(s)
  for t in range(25):
    assert float(jitted(jnp.int32(t))) == pytest.approx(float(s(t)), rel=1e-6)
  # As an optax learning rate: SGD's update at count c is -lr(c) * g.
  opt = optax.sgd(learning_rate=s)
  params = jnp.zeros(2)
  state = opt.init(params)
  update = jax.jit(opt.update)
  for c in range(8):
    u, state = update(jnp.ones(2), state, params)
    np.testing.assert_allclose(u, -np.full(2, np_wsd(c, 0.1, 20, 4, 5, "1-sqrt", 0.1, 0.0)),
                               rtol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: schedules.wsd_s(1.0, [100, 200, 400], warmup_steps=5),
    lambda: schedules.cyclic_cosine(1.0, 50, warmup_steps=5),
    lambda: schedules.cyclic_cosine(1.0, [50, 70]),
    lambda: schedules.infinite(1.0, 5, 10, 0.5, 60, 80, 0.01, cooldown="inv_sqrt"),
    lambda: schedules.refined(np.linspace(1.0, 2.0, 30)),
])
def test_all_schedules_jit(make):
  s = make()
  t = np.arange(0, 130)
  jitted = jax.jit(s)
  np.testing.assert_allclose([float(jitted(jnp.int32(x))) for x in t[::7]],
                             values(s, t[::7]), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape="cosin", decay_steps=10), r"shape='cosin' is not one of \['1-sqrt'"),
    (dict(warmup_steps=-1, decay_steps=10), "warmup_steps=-1"),
    (dict(decay_steps=10, decay_fraction=0.1), "exactly one of"),
    (dict(), "exactly one of"),
    (dict(decay_steps=-3), "decay_steps=-3"),
    (dict(warmup_steps=60, decay_steps=50), "exceeds total_steps=100"),
    (dict(decay_steps=10, shape="exp"), "final_ratio=0.0 must be > 0"),
    (dict(decay_steps=10, shape="inverse"), "final_ratio=0.0 must be > 0"),
    (dict(decay_steps=10, final_ratio=1.5), "final_ratio=1.5"),
    (dict(decay_fraction=1.2), "decay_fraction=1.2"),
])
def test_wsd_validates(kwargs, match):
  with pytest.raises(ValueError, match=match):
    schedules.wsd(1.0, 100, **kwargs)


# ----------------------------------------------------------------------------------------
# WSD-S.


def test_wsd_s_boundaries_closed_form():
  got = schedules.wsd_s_boundaries([12_500, 25_000, 50_000], 0.1)
  assert [x for pair in got for x in pair] == [11250, 12500, 23750, 26250, 48750, 53750]
  # The general closed form: start_k = 0.9 B_k + sum_{j<k} 0.1 B_j, end_k = start_k + 0.1 B_k.
  budgets = [1000, 3000, 4000, 9000, 20000]
  got = schedules.wsd_s_boundaries(budgets, 0.1)
  for k, (start, end) in enumerate(got):
    assert start == round(0.9 * budgets[k] + 0.1 * sum(budgets[:k]))
    assert end == round(start + 0.1 * budgets[k])


def test_wsd_s_values():
  peak, budgets, r, f = 2.0, [100, 200, 400], 0.1, 0.1
  s = schedules.wsd_s(peak, budgets, decay_fraction=f, final_ratio=r, warmup_steps=10)
  windows = [(90, 100), (190, 210), (390, 430)]
  ref = []
  for t in range(0, 460):
    v = peak
    for a, b in windows:
      if a <= t < b:
        v = peak * (r + (1 - r) * (1 - (t - a) / (b - a)))
    if t >= 430:
      v = peak * r
    if t < 10:
      v = peak * t / 10
    ref.append(v)
  np.testing.assert_allclose(values(s, np.arange(460)), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(budgets=[100, 100]), "strictly increasing"),
    (dict(budgets=[200, 100]), "strictly increasing"),
    (dict(budgets=[]), "non-empty"),
    (dict(budgets=[100, 200], warmup_steps=95), "before the first decay"),
    (dict(budgets=[100], decay_fraction=0.0), "decay_fraction=0.0"),
])
def test_wsd_s_validates(kwargs, match):
  with pytest.raises(ValueError, match=match):
    schedules.wsd_s(1.0, **kwargs)


# ----------------------------------------------------------------------------------------
# Cyclic cosine, infinite.


def test_cyclic_cosine_repeats_optax_warmup_cosine():
  peak, c, w, r = 1.5, 40, 5, 0.1
  s = schedules.cyclic_cosine(peak, c, final_ratio=r, warmup_steps=w)
  one_cycle = optax.warmup_cosine_decay_schedule(0.0, peak, w, c, r * peak)
  t = np.arange(0, 3 * c)
  np.testing.assert_allclose(values(s, t), values(one_cycle, t % c), rtol=1e-5, atol=1e-7)


def test_cyclic_cosine_with_cycle_lengths():
  peak, r = 1.0, 0.1
  s = schedules.cyclic_cosine(peak, [30, 50], final_ratio=r)
  t = np.arange(0, 100)
  ref = np.where(
      t < 30, r + (1 - r) * 0.5 * (1 + np.cos(np.pi * t / 30)),
      np.where(t < 80, r + (1 - r) * 0.5 * (1 + np.cos(np.pi * (t - 30) / 50)), r))
  np.testing.assert_allclose(values(s, t), peak * ref, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="warmup_steps=30"):
    schedules.cyclic_cosine(1.0, [30, 50], warmup_steps=30)


@pytest.mark.parametrize("cooldown", ["cosine", "inv_sqrt"])
def test_infinite_matches_piecewise_closed_form(cooldown):
  peak, w, cd, const, t_ann, t_end, lo, alpha = 2.0, 10, 20, 0.6, 60, 100, 0.02, 5.0
  # eta_const = const_ratio * peak and eta_min = final_ratio * peak.
  s = schedules.infinite(peak, w, cd, const / peak, t_ann, t_end, lo / peak,
                         cooldown=cooldown, alpha=alpha)
  ref = []
  for t in range(0, 120):
    if t < w:
      v = peak * t / w
    elif t < w + cd:
      x = (t - w) / cd
      if cooldown == "cosine":
        v = const + (peak - const) * 0.5 * (1 + math.cos(math.pi * x))
      else:
        h = lambda y: 1 / math.sqrt(1 + alpha * y) - 1
        v = peak + (const - peak) * h(x) / h(1.0)
    elif t < t_ann:
      v = const
    else:
      v = const * (lo / const) ** ((min(t, t_end) - t_ann) / (t_end - t_ann))
    ref.append(v)
  got = values(s, np.arange(120))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-8)
  assert got[w + cd] == pytest.approx(const, rel=1e-6)  # lands exactly on the constant
  assert got[t_end] == pytest.approx(lo, rel=1e-5)
  with pytest.raises(ValueError, match="cooldown='sqrt' is not one of"):
    schedules.infinite(peak, w, cd, 0.3, t_ann, t_end, 0.01, cooldown="sqrt")
  with pytest.raises(ValueError, match="anneal_start=20"):
    schedules.infinite(peak, w, cd, 0.3, 20, t_end, 0.01)
  with pytest.raises(ValueError, match="final_ratio=0.5 must be <= 0.3"):
    schedules.infinite(peak, w, cd, 0.3, t_ann, t_end, 0.5)
  with pytest.raises(ValueError, match="const_ratio=1.5 must be <= 1.0"):
    schedules.infinite(peak, w, cd, 1.5, t_ann, t_end, 0.01)


# ----------------------------------------------------------------------------------------
# Refined.


def np_refined(g, norm, width):
  """Defazio et al.'s refinement with explicit loops and an edge-padded median filter."""
  g = np.asarray(g, np.float64)
  if width > 1:
    assert width % 2 == 1
    h = width // 2
    padded = np.pad(g, h, mode="edge")
    g = np.array([np.median(padded[i:i + width]) for i in range(len(g))])
  w = g ** (-2.0 if norm == "l2" else -1.0)
  eta = np.array([w[t] * sum(w[p] for p in range(t + 1, len(w))) for t in range(len(w))])
  return eta / eta.max()


def test_refined_constant_norms_is_exactly_linear_decay_to_zero():
  T, peak = 37, 0.7
  s = schedules.refined(np.full(T, 3.0), peak=peak)
  t = np.arange(T + 5)
  ref = peak * np.maximum(1 - t / (T - 1), 0.0)
  np.testing.assert_allclose(values(s, t), ref, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(values(s, t), values(schedules.linear_decay(peak, T - 1), t),
                             rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_refined_matches_loop_reference(norm):
  rng = np.random.default_rng(0)
  T = 50
  g = np.exp(rng.normal(size=T)) * np.linspace(1.0, 3.0, T)
  ref = np_refined(g, norm, width=5)  # 0.1 * 50 = 5
  np.testing.assert_allclose(schedules.refined_values(g, norm, 0.1), ref, rtol=1e-10)
  s = schedules.refined(g, norm=norm, median_fraction=0.1, peak=2.0)
  np.testing.assert_allclose(values(s, np.arange(T)), 2.0 * ref, rtol=1e-5, atol=1e-7)
  # Linear interpolation between steps; eta_{T-1} = 0.
  assert float(s(10.5)) == pytest.approx(float(s(10)) / 2 + float(s(11)) / 2, rel=1e-5)
  assert float(s(T - 1)) == 0.0
  # No smoothing.
  np.testing.assert_allclose(schedules.refined_values(g, norm, 0.0), np_refined(g, norm, 1),
                             rtol=1e-10)
  # The filter is scipy's median filter with edge ("nearest") padding.
  sm = scipy.ndimage.median_filter(g, size=5, mode="nearest")
  np.testing.assert_allclose(schedules.refined_values(sm, norm, 0.0), ref, rtol=1e-10)


@pytest.mark.parametrize("args, match", [
    ((np.ones(10), "l3"), r"norm='l3' is not one of \['l1', 'l2'\]"),
    ((np.ones(1),), "at least 2 steps"),
    ((np.array([1.0, 0.0, 1.0]),), "finite and positive"),
    ((np.array([1.0, np.nan]),), "finite and positive"),
])
def test_refined_validates(args, match):
  with pytest.raises(ValueError, match=match):
    schedules.refined(*args)


def test_annealing_law_importable_from_schedules():
  from reweight.schedules import annealing_law
  assert hasattr(annealing_law, "fit") and hasattr(annealing_law, "areas")


# ----------------------------------------------------------------------------------------
# With and without jit (chex variants, as optax's own tests).

_VARIANT_SCHEDULES = {
    "wsd_s": lambda: schedules.wsd_s(1.0, [100, 200, 400], warmup_steps=5),
    "cyclic_cosine": lambda: schedules.cyclic_cosine(1.0, [50, 70], warmup_steps=5),
    "infinite": lambda: schedules.infinite(1.0, 5, 10, 0.5, 60, 80, 0.01, cooldown="inv_sqrt"),
    "refined": lambda: schedules.refined(np.linspace(1.0, 2.0, 30)),
    "moderate_decay": lambda: schedules.moderate_decay(1.0, 100, warmup_steps=5),
}


class SchedulesVariantsTest(chex.TestCase):
  """Every schedule is a pure function of the step: the same values with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*schedules.DECAY_SHAPES)
  def test_wsd_closed_form(self, shape):
    peak, total, warmup, decay, r, init = 3e-3, 60, 5, 20, 0.1, 0.2
    s = self.variant(schedules.wsd(peak, total, warmup, decay_steps=decay, shape=shape,
                                   final_ratio=r, init_ratio=init))
    t = np.arange(0, total + 5)
    ref = [np_wsd(int(x), peak, total, warmup, decay, shape, r, init) for x in t]
    np.testing.assert_allclose(np.asarray(s(jnp.asarray(t)), np.float64), ref, rtol=1e-5,
                               atol=1e-9)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*sorted(_VARIANT_SCHEDULES))
  def test_vectorized_equals_per_step(self, name):
    s = _VARIANT_SCHEDULES[name]()
    t = np.arange(0, 130, 7)
    got = self.variant(s)(jnp.asarray(t))
    chex.assert_shape(got, t.shape)
    chex.assert_tree_all_finite(got)
    per_step = [float(s(int(x))) for x in t]
    np.testing.assert_allclose(np.asarray(got, np.float64), per_step, rtol=1e-6)
