"""The online mixture sampler: plan and members re-derived with NumPy, resume, processes."""

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from reweight.data import online_mixture as om
from reweight.group.policy import MixtureState

GROUP_IDS = np.random.default_rng(123).integers(0, 4, 300)
GROUP_IDS[:3] = [0, 1, 2]  # every group of 0..2 has members; group 3 too (random)


def _sampler(batch=16, seed=0, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return om.online_mixture_sampler(batch, seed, **kw)


def _uniforms(seed, step, batch, groups):
  """The documented main stream: step `step` owns draws [t M, t M + M) of Philox."""
  width = 4 * -(-(groups + 5 * batch) // 4)
  gen = np.random.Generator(
      np.random.Philox(np.random.SeedSequence([om.ONLINE_MIXTURE_SALT, seed])))
  return gen.random((step + 1) * width)[step * width:]


def _rng(seed, step):
  """The documented second stream: counter block `step` of Philox([EXTRA_SALT, seed])."""
  bits = np.random.Philox(np.random.SeedSequence([om.EXTRA_SALT, seed]))
  return np.random.Generator(bits.advance(step * 2**64))


def _plan_numpy(seed, step, probs, batch):
  """Independent re-derivation of the documented rule."""
  p = np.asarray(probs, np.float64)
  p = p / p.sum()
  counts = np.floor(p * batch).astype(np.int64)
  r = int(batch - counts.sum())
  u = _uniforms(seed, step, batch, len(p))
  rng = _rng(seed, step)
  frac = p * batch - counts
  for j in range(r):   # remaining slot j: the group whose cdf interval holds u_j sum(frac)
    v, acc = u[j] * frac.sum(), 0.0
    for g in range(len(p)):
      acc += frac[g]
      if v < acc:
        counts[g] += 1
        break
  plan = np.repeat(np.arange(len(p)), counts)[np.argsort(u[r:r + batch], kind="stable")]
  return plan, counts, rng, u[r + batch:]   # first draws, then candidates


def _indices_numpy(seed, step, probs, batch, group_ids, stats=None):
  """The documented member rule, slot by slot in plain Python."""
  plan, counts, rng, u = _plan_numpy(seed, step, probs, batch)
  members = [np.flatnonzero(group_ids == g) for g in range(len(counts))]
  n = [len(m) for m in members]
  pos = [int(np.floor(u[s] * n[plan[s]])) for s in range(batch)]   # first draws
  for g in range(len(counts)):
    if n[g] < 2 * counts[g] <= 2 * n[g]:   # dense: a permutation prefix, in slot order
      perm = rng.permutation(n[g])[:counts[g]]
      for j, s in enumerate(np.flatnonzero(plan == g)):
        pos[s] = int(perm[j])
  sparse = [2 * c <= m for c, m in zip(counts, n)]
  held, redraw = set(), []   # kept first draws; slots repeating an earlier first draw
  for s in range(batch):
    if sparse[plan[s]]:
      if (plan[s], pos[s]) in held:
        redraw.append(s)
      held.add((plan[s], pos[s]))
  candidates = list(u[batch:])   # u[r + 2B + i] up to the end of the step's draws
  used = 0
  for s in redraw:   # in slot order: the first candidate no slot holds yet
    g = plan[s]
    while True:
      v = candidates[used] if used < len(candidates) else rng.random()
      used += 1
      m = int(np.floor(v * n[g]))
      if (g, m) not in held:
        break
    held.add((g, m))
    pos[s] = m
  if stats is not None:
    stats.update(redraw=len(redraw), candidates=used, in_stream=len(candidates))
  return np.array([members[plan[s]][pos[s]] for s in range(batch)])


@pytest.mark.parametrize("probs", [[0.1, 0.2, 0.3, 0.4], [0.7, 0.0, 0.3, 0.0],
                                   [1 / 3, 1 / 3, 1 / 3, 0.0], [0.0, 0.0, 0.0, 1.0]])
def test_plan_and_indices_rederived(probs):
  s = _sampler(batch=16, seed=7, group_ids=GROUP_IDS)
  for step in (0, 1, 5, 1000):
    plan, counts, _, _ = _plan_numpy(7, step, probs, 16)
    np.testing.assert_array_equal(s.plan(step, np.asarray(probs)), plan)
    np.testing.assert_array_equal(np.bincount(s.plan(step, probs), minlength=4), counts)
    idx = s.indices(step, probs)
    np.testing.assert_array_equal(idx, _indices_numpy(7, step, probs, 16, GROUP_IDS))
    np.testing.assert_array_equal(GROUP_IDS[idx], plan)
    assert s.plan(step, probs).dtype == np.int32 and idx.dtype == np.int64
    for g in range(4):  # without replacement within a group large enough
      assert len(set(idx[plan == g].tolist())) == counts[g]


def test_deterministic_in_seed_step_probs():
  s = _sampler(group_ids=GROUP_IDS)
  p = np.array([0.25, 0.25, 0.25, 0.25])
  np.testing.assert_array_equal(s.indices(3, p), _sampler(group_ids=GROUP_IDS).indices(3, p))
  assert not np.array_equal(s.indices(3, p), s.indices(4, p))
  assert not np.array_equal(s.indices(3, p), _sampler(seed=1, group_ids=GROUP_IDS).indices(3, p))
  q = np.array([0.1, 0.2, 0.3, 0.4])
  assert not np.array_equal(s.plan(3, p), s.plan(3, q))
  # A policy state, a jax array and an OnlineMixtureState give the same plan.
  state = MixtureState(jnp.asarray(q, jnp.float32), jnp.asarray(0))
  np.testing.assert_array_equal(s.plan(3, state), s.plan(3, q))
  np.testing.assert_array_equal(s.plan(3, s.init(q)), s.plan(3, q))


def test_counts_follow_probs():
  p = np.array([0.13, 0.37, 0.05, 0.45])
  batch, steps = 10, 4000
  s = _sampler(batch=batch, num_groups=4)
  counts = np.stack([np.bincount(s.plan(t, p), minlength=4) for t in range(steps)])
  floor = np.floor(p * batch)
  assert (counts.sum(1) == batch).all()
  assert ((counts >= floor) & (counts <= floor + (batch - floor.sum()))).all()
  # count = floor(p B) + multinomial(r, frac / sum(frac)): the mean over 4000 independent
  # steps is within 4 standard errors of p B.
  frac = p * batch - floor
  r = batch - floor.sum()                      # slots left after the floors
  q = frac / frac.sum()                        # multinomial(r, q) on top of the floors
  np.testing.assert_allclose(floor + r * q, p * batch)   # E[count] = p B exactly
  se = np.sqrt(r * q * (1 - q) / steps)
  assert (np.abs(counts.mean(0) - p * batch) < 4 * se).all()
  exact = _sampler(batch=8, num_groups=4).plan(0, [0.5, 0.25, 0.125, 0.125])
  np.testing.assert_array_equal(np.bincount(exact, minlength=4), [4, 2, 1, 1])


def test_small_group_with_replacement():
  ids = np.array([0] * 50 + [1] * 2)
  s = _sampler(batch=20, group_ids=ids)
  idx = s.indices(0, [0.5, 0.5])
  np.testing.assert_array_equal(idx, _indices_numpy(0, 0, [0.5, 0.5], 20, ids))
  assert set(idx[ids[idx] == 1].tolist()) <= {50, 51} and (ids[idx] == 1).sum() == 10
  assert len(set(idx[ids[idx] == 0].tolist())) == 10


def test_members_cover_dense_sparse_and_replacement_groups():
  # Sizes 3 (replacement), 10 (dense for 6 slots), 200 (sparse); every path re-derived.
  ids = np.repeat([0, 1, 2], [3, 10, 200])
  s = _sampler(batch=24, seed=5, group_ids=ids)
  probs = [0.25, 0.25, 0.5]
  for step in range(40):
    idx = s.indices(step, probs)
    np.testing.assert_array_equal(idx, _indices_numpy(5, step, probs, 24, ids))
    for g in (1, 2):
      assert len(set(idx[ids[idx] == g].tolist())) == (ids[idx] == g).sum()


def test_candidates_past_the_first_read_and_from_the_second_stream():
  # 50 slots in each of two groups of 100: ~10 redraw slots per group, and about half of
  # the candidates skipped, so steps use more than the CANDIDATES read with the plan.
  ids = np.repeat([0, 1], [100, 100])
  probs = [0.5, 0.5]
  single = _sampler(batch=100, seed=3, group_ids=ids)
  blocked = _sampler(batch=100, seed=3, group_ids=ids, update_every=4)
  past = 0
  for t in range(8):
    stats = {}
    ref = _indices_numpy(3, t, probs, 100, ids, stats)
    np.testing.assert_array_equal(single.indices(t, probs), ref)
    np.testing.assert_array_equal(blocked.indices(t, probs), ref)
    past += stats["candidates"] > om.CANDIDATES
    for g in (0, 1):
      assert len(set(ref[ids[ref] == g].tolist())) == 50
  assert past
  # 2 slots among 4 members: at this step the slots' first draws are equal and so are all
  # 8 candidates of the main stream (chance 4**-9), so the pick comes from rng_t.
  ids = np.zeros(4, np.int64)
  stats = {}
  ref = _indices_numpy(2, 302655, [1.0], 2, ids, stats)
  assert stats["in_stream"] == 8 and stats["candidates"] > 8
  np.testing.assert_array_equal(_sampler(batch=2, seed=2, group_ids=ids).indices(302655, [1.0]),
                                ref)
  assert ref[0] != ref[1]


@pytest.mark.parametrize("update_every", [3, 10, 200])
def test_blocks_between_refreshes_draw_the_same_numbers(update_every):
  # Small groups exercise every path of the member rule in a block: replacement (size 3),
  # dense (size 10), sparse with frequent duplicates (size 40) and large (size 300).
  ids = np.repeat([0, 1, 2, 3], [3, 10, 40, 300])
  probs = np.array([0.25, 0.25, 0.25, 0.25])
  single = _sampler(batch=24, seed=9, group_ids=ids)            # update_every=1: no blocks
  blocked = _sampler(batch=24, seed=9, group_ids=ids, update_every=update_every)
  steps = list(range(0, 25)) + [101, 7, 150, 149, 3]           # out of order too
  for t in steps:
    np.testing.assert_array_equal(blocked.indices(t, probs), single.indices(t, probs))
    np.testing.assert_array_equal(blocked.plan(t, probs), single.plan(t, probs))
  for t in (0, 5, 13):
    np.testing.assert_array_equal(single.indices(t, probs),
                                  _indices_numpy(9, t, probs, 24, ids))
  sparse = np.array([0.0, 0.0, 1.0, 0.0])  # 24 of 40: dense; 0.3 of it: sparse
  for p in (sparse, np.array([0.0, 0.1, 0.3, 0.6])):
    for t in range(12):
      np.testing.assert_array_equal(blocked.indices(t, p), single.indices(t, p))
      np.testing.assert_array_equal(single.indices(t, p), _indices_numpy(9, t, p, 24, ids))
  # 4 slots among 8 members (sparse, many duplicates): redraw slots often skip candidates.
  few = np.repeat([0, 1], [8, 400])
  q = np.array([4 / 24, 20 / 24])
  a = _sampler(batch=24, seed=9, group_ids=few)
  b = _sampler(batch=24, seed=9, group_ids=few, update_every=update_every)
  for t in range(30):
    np.testing.assert_array_equal(b.indices(t, q), a.indices(t, q))
    np.testing.assert_array_equal(a.indices(t, q), _indices_numpy(9, t, q, 24, few))
  groups_only = _sampler(batch=24, seed=9, num_groups=4, update_every=update_every)
  for t in steps:
    np.testing.assert_array_equal(groups_only.plan(t, probs), single.plan(t, probs))


def test_returned_arrays_are_fresh():
  s = _sampler(batch=8, seed=0, group_ids=GROUP_IDS, update_every=5)
  p = np.full(4, 0.25)
  a = s.plan(1, p)
  a[:] = -1
  assert (s.plan(1, p) >= 0).all()
  b = s.indices(1, p)
  b[:] = -1
  assert (s.indices(1, p) >= 0).all()


def test_members_are_uniform():
  ids = np.repeat([0, 1], [20, 20])
  s = _sampler(batch=8, seed=0, group_ids=ids)
  steps = 3000
  hits = np.bincount(np.concatenate([s.indices(t, [0.5, 0.5]) for t in range(steps)]),
                     minlength=40)
  # Each of 20 members of a group is in a batch with probability 4 / 20 (distinct picks).
  expected = steps * 4 / 20
  assert np.abs(hits - expected).max() < 5 * np.sqrt(expected * (1 - 4 / 20))
  # 4 slots among 8 members (most steps redraw): each of the 70 subsets equally likely.
  ids = np.repeat([0, 1], [8, 400])
  s = _sampler(batch=24, seed=1, group_ids=ids)
  steps = 7000
  subsets = {}
  for t in range(steps):
    idx = s.indices(t, [4 / 24, 20 / 24])
    key = tuple(sorted(idx[idx < 8].tolist()))
    subsets[key] = subsets.get(key, 0) + 1
  assert len(subsets) == 70 and all(len(k) == 4 for k in subsets)
  freq = np.array(list(subsets.values()))
  chi2 = ((freq - steps / 70) ** 2 / (steps / 70)).sum()
  assert chi2 < 69 + 5 * np.sqrt(2 * 69)   # 69 degrees of freedom: mean 69, sd 11.7


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_union_is_global_plan(process_count):
  p = np.array([0.1, 0.2, 0.3, 0.4])
  single = _sampler(batch=16, seed=2, group_ids=GROUP_IDS)
  parts = [_sampler(batch=16, seed=2, group_ids=GROUP_IDS, process_index=k,
                    process_count=process_count) for k in range(process_count)]
  assert all(s.local_batch_size == 16 // process_count for s in parts)
  for step in (0, 9):
    np.testing.assert_array_equal(np.concatenate([s.indices(step, p) for s in parts]),
                                  single.indices(step, p))
    np.testing.assert_array_equal(np.concatenate([s.groups(step, p) for s in parts]),
                                  single.plan(step, p))
    for s in parts:  # every process knows the same global plan
      np.testing.assert_array_equal(s.plan(step, p), single.plan(step, p))


def _policy(step):
  """A policy whose proportions change at every step."""
  z = np.array([np.sin(step), np.cos(step), 0.5, np.sin(2 * step)])
  e = np.exp(z)
  return e / e.sum()


def test_update_every_holds_proportions():
  s = _sampler(num_groups=4, update_every=3)
  state = s.init()
  np.testing.assert_array_equal(state.probs, np.full(4, 0.25))
  for t in range(10):
    state = s.refresh(state, t, _policy(t))
    adopted = 3 * (t // 3)
    np.testing.assert_allclose(state.probs, _policy(adopted), rtol=0, atol=1e-15)
    assert int(state.since_step) == adopted
    np.testing.assert_array_equal(s.plan(t, state), _plan_numpy(0, t, _policy(adopted), 16)[0])


def test_resume_from_checkpoint_draws_identical_batches(tmp_path):
  make = lambda: _sampler(batch=16, seed=4, group_ids=GROUP_IDS, update_every=3)

  def run(s, state, steps):
    out = []
    for t in steps:
      state = s.refresh(state, t, _policy(t))
      out.append(s.indices(t, state))
    return state, out

  s = make()
  _, full = run(s, s.init(), range(12))
  s = make()
  state, first = run(s, s.init(), range(7))          # interrupted after step 6
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "mix", state)
  ckpt.wait_until_finished()
  s = make()                                          # a new process
  restored = ckpt.restore(tmp_path / "mix", s.init())
  assert isinstance(restored, om.OnlineMixtureState)
  np.testing.assert_array_equal(restored.probs, state.probs)
  assert int(restored.since_step) == 6
  _, rest = run(s, restored, range(7, 12))
  for a, b in zip(full, first + rest):
    np.testing.assert_array_equal(a, b)
  # Without the saved proportions, step 7 (no refresh there) would draw another batch.
  _, fresh = run(s, s.init(), range(7, 8))
  assert not np.array_equal(fresh[0], full[7])


def test_errors():
  s = _sampler(group_ids=np.array([0, 0, 2, 2]))  # group 1 has no member
  with pytest.raises(ValueError, match="sums to 0.9"):
    s.plan(0, [0.5, 0.1, 0.3])
  with pytest.raises(ValueError, match="num_groups=3"):
    s.plan(0, [0.5, 0.5])
  with pytest.raises(ValueError, match="non-negative"):
    s.plan(0, [1.5, -0.5, 0.0])
  with pytest.raises(ValueError, match=r"groups \[1\] that have no example"):
    s.indices(0, [0.5, 0.5, 0.0])
  with pytest.raises(ValueError, match=r"step=-1"):
    s.plan(-1, [1.0, 0.0, 0.0])
  with pytest.raises(ValueError, match=r"ids \[-1, 5\] outside \[0, num_groups=3\)"):
    _sampler(group_ids=np.array([0, 5, -1, 2]), num_groups=3)
  with pytest.raises(ValueError, match="needs num_groups"):
    _sampler()
  with pytest.raises(ValueError, match="indices needs group_ids"):
    _sampler(num_groups=2).indices(0, [0.5, 0.5])
  with pytest.raises(ValueError, match="not divisible by process_count=3"):
    _sampler(batch=16, num_groups=2, process_count=3)
  with pytest.raises(ValueError, match="process_index=2 must be < process_count=2"):
    _sampler(num_groups=2, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="update_every=0"):
    _sampler(num_groups=2, update_every=0)
  with pytest.raises(ValueError, match="1-D int array"):
    _sampler(group_ids=np.array([0.0, 1.0]))


def test_default_process_layout():
  s = om.online_mixture_sampler(8, 0, num_groups=2)
  assert (s.process_index, s.process_count, s.local_batch_size) == (0, 1, 8)
