"""Online data mixing: each global batch drawn from the groups in a policy's current proportions.

A sampling-side group method (`reweight.group.MixturePolicy`, or the ``probs`` of
`reweight.group.group_dro` / `doremi`) moves a distribution over groups during training;
`online_mixture_sampler` turns it into batches. The count rule is the one of
`reweight.data.samplers.mixture_sampler` (exact expected counts), with the proportions
read from a small checkpointable state instead of a fixed schedule. Random numbers of step
t: the uniforms ``u`` are draws ``[t M, (t + 1) M)`` of one counter-based stream,
``Philox(SeedSequence([ONLINE_MIXTURE_SALT, seed]))`` (`step_uniforms`; each step owns
``M = 4 ceil((G + 5 B) / 4)`` draws, so a run of steps is one contiguous read), and the
rare extra draws come from ``rng_t = step_rng(seed, t)``, the step's own block of a second
stream (``EXTRA_SALT``):

* **Plan** of step t (`OnlineMixtureSampler.plan`), for proportions p (normalised) and the
  global batch size B: group g gets ``floor(p_g B)`` slots, and the
  ``r = B - sum_g floor(p_g B)`` remaining slots go one by one to group g with probability
  ``frac_g / sum(frac)`` (``frac_g = p_g B - floor(p_g B)``; r categorical draws, i.e. a
  multinomial), so ``E[count_g] = p_g B`` exactly and no count strays from ``p_g B`` by
  r or more. Remainder slot j goes to the group whose interval of ``cumsum(frac)`` holds
  ``u_j sum(frac)``, and the plan (the group of every slot) is
  ``np.repeat(arange(G), counts)[argsort(u[r:r + B], kind="stable")]``, a random order.
* **Members** (`OnlineMixtureSampler.indices`, when ``group_ids`` of an indexable dataset
  are given; ``n_g`` members of group g, in ascending example order): the first draw of
  slot s of group g is member ``floor(u[r + B + s] n_g)``. A group with ``count_g > n_g``
  keeps these (with replacement, as it must). A dense group (``n_g / 2 < count_g <= n_g``)
  instead takes ``rng_t.permutation(n_g)[:count_g]`` for its slots in slot order (groups
  in ascending order). In a sparse group (``count_g <= n_g / 2``), a slot keeps its first
  draw unless an earlier slot (in slot order) has the same one; those *redraw slots*, in
  slot order, then each take the first candidate that no slot holds yet (neither a kept
  first draw nor the pick of an earlier redraw slot). Candidates are one sequence shared
  by the redraw slots of the step, each consumed once, kept or skipped: ``c_i = u[r + 2 B
  + i]`` for ``i < M - r - 2 B`` (at least 3 B + 1 of them), then ``rng_t.random()``
  draws, one at a time; candidate c for a slot of group g is member ``floor(c n_g)``. So
  the members of a group with ``count_g <= n_g`` are distinct: the kept first draws, then
  draws uniform among the members still free (rejection), so by symmetry under
  relabelling its members they are a uniformly random ``count_g``-subset (as with
  ``rng.choice(..., replace=False)``). With ~B^2 / (2 n) redraw slots of a few candidates
  each, a step costs a few NumPy calls and a short Python loop, whatever the number of
  groups.
* **Processes**: the plan and members are those of the global batch; process k of K
  returns slots ``[k B / K, (k + 1) B / K)``, so the union of the slices of all processes
  is the global batch of a single-process run.
* **Proportions in use** (`OnlineMixtureState`): ``refresh(state, step, probs)`` adopts
  ``probs`` only when ``step % update_every == 0`` (and keeps the state otherwise). The
  state is two arrays, saved with the train state, so a resumed run plans from the same
  proportions and draws the same batches as an uninterrupted one.

Everything is a pure function of ``(seed, step, probs)``. Since the proportions cannot
change between refreshes, with ``update_every > 1`` the steps up to the next refresh (at
most `MAX_BLOCK`) are drawn at once, vectorized over steps, and served from a one-block
cache: the same numbers, computed faster. Throughput (``benchmarks/sampler_throughput.py``,
digits MLP, B = 128, 10 groups): about 35 microseconds per batch with new proportions at
every step (``refresh``, plan, members and the gather of the rows).
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from reweight._checks import check_int
from reweight.group.policy import check_num_groups, check_probs

ONLINE_MIXTURE_SALT = 0x6F6E6D78
EXTRA_SALT = 0x6F6E6578  # the second stream: dense groups and late redraw rounds


class OnlineMixtureState(NamedTuple):
  """The proportions the sampler uses, and the step they were adopted at (checkpoint them).

  Attributes:
    probs: float64 [G], sums to one (read-only: the sampler caches what it derives from it).
    since_step: int64 scalar, the step of the last `refresh` that adopted ``probs``.
  """

  probs: np.ndarray
  since_step: np.ndarray


class OnlineMixtureSampler(NamedTuple):
  """Batches in a mixture that changes online (see the module docstring for the rule).

  Attributes:
    init: ``init(probs=None) -> OnlineMixtureState`` (default: uniform).
    refresh: ``refresh(state, step, probs) -> state``, adopting ``probs`` (an array or a
      policy state with ``probs``) iff ``step % update_every == 0``.
    plan: ``plan(step, probs) -> int32 [global_batch_size]``: the group of every slot of
      the global batch; ``probs`` may be an `OnlineMixtureState`.
    groups: ``groups(step, probs) -> int32 [local_batch_size]``: this process's slice of
      the plan (for generated data, e.g. `reweight.data.domain_lm_batch` with
      ``slot_offset = process_index * local_batch_size``).
    indices: ``indices(step, probs) -> int64 [local_batch_size]``: example indices of this
      process's slice (needs ``group_ids``).
    global_batch_size: B.
    local_batch_size: B / process_count.
    num_groups: G.
    update_every: steps between refreshes.
    process_index: this process's slice.
    process_count: number of slices.
  """

  init: Callable[..., OnlineMixtureState]
  refresh: Callable[..., OnlineMixtureState]
  plan: Callable[[int, Any], np.ndarray]
  groups: Callable[[int, Any], np.ndarray]
  indices: Callable[[int, Any], np.ndarray]
  global_batch_size: int
  local_batch_size: int
  num_groups: int
  update_every: int
  process_index: int
  process_count: int


_BLOCK = 1 << 64  # Philox counter values of a step's block in the second stream
MAX_BLOCK = 64  # steps drawn at once while the proportions cannot change
CANDIDATES = 32  # candidate draws of a step read with its plan (the rest on demand)


class _Streams(threading.local):
  """Per-thread Philox generators, one per base seed, rewound for every step."""

  def __init__(self):
    self.bases = {}


_STREAMS = _Streams()


def _generator(seed: int, salt: int):
  """``(bits, base state, generator, scratch state)`` of ``Philox(SeedSequence([salt, seed]))``."""
  key = (int(salt), int(seed))
  entry = _STREAMS.bases.get(key)
  if entry is None:
    bits = np.random.Philox(np.random.SeedSequence(list(key)))
    state = bits.state
    # A copy whose counter `_seek` sets (None if the base counter is not 0).
    moved = (None if state["state"]["counter"].any() else
             dict(state, state=dict(state["state"], counter=state["state"]["counter"].copy())))
    entry = _STREAMS.bases[key] = (bits, state, np.random.Generator(bits), moved)
  return entry


def _seek(seed: int, salt: int, position: int) -> np.random.Generator:
  """The generator of `_generator`, ``position`` counter values (4 draws each) past the base.

  The same as ``bits.state = base; bits.advance(position)``, in one state assignment: a
  Philox seeded by a `SeedSequence` starts at counter 0 (the fallback covers any other).
  """
  entry = _STREAMS.bases.get((salt, seed)) or _generator(seed, salt)
  bits, state, gen, moved = entry
  if moved is not None and 0 <= position < _BLOCK:
    moved["state"]["counter"][0] = position
    bits.state = moved
  else:
    bits.state = state
    bits.advance(position)
  return gen


def step_rng(seed: int, step: int, salt: int = EXTRA_SALT) -> np.random.Generator:
  """A generator of its own for ``step``: ``Philox(SeedSequence([salt, seed]))``, counter + t 2**64.

  Philox is counter-based: ``advance(step * 2**64)`` moves the counter to block ``step``,
  so the blocks of different steps are independent streams (unlike PCG64 jumped by powers
  of two, whose streams are correlated). Setting it up costs a few microseconds (a cached
  copy of the base state, rewound and advanced, one per thread) against about 20 for
  ``np.random.default_rng([...])``. The generator returned is reused by the next call of
  the same thread with the same ``(seed, salt)``: draw from it before calling again.

  Examples:
    >>> a = step_rng(0, 5).random(3)
    >>> bits = np.random.Philox(np.random.SeedSequence([EXTRA_SALT, 0]))
    >>> bool((a == np.random.Generator(bits.advance(5 * 2**64)).random(3)).all())
    True
  """
  bits, state, gen, _ = _generator(seed, salt)
  bits.state = state
  bits.advance(int(step) * _BLOCK)
  return gen


def step_uniforms(seed: int, start: int, count: int, width: int, used: int | None = None,
                  salt: int = ONLINE_MIXTURE_SALT) -> np.ndarray:
  """Uniforms of steps ``start .. start + count - 1``: row k holds draws ``[t M, t M + used)``.

  Step t owns draws ``[t M, (t + 1) M)`` (``M = width``, a multiple of 4: one Philox
  counter value gives 4 draws) of the single stream ``Philox(SeedSequence([salt, seed]))``,
  so any run of steps is one contiguous read: ``advance(start M / 4)``, then
  ``random(count M)``.

  Returns:
    float64 [count, used] (``used`` defaults to ``width``).

  Examples:
    >>> u = step_uniforms(0, 3, 2, width=8)
    >>> ref = np.random.Generator(np.random.Philox(np.random.SeedSequence(
    ...     [ONLINE_MIXTURE_SALT, 0]))).random(40)
    >>> bool((u == ref[24:40].reshape(2, 8)).all())
    True
  """
  if width % 4:
    raise ValueError(f"width={width} must be a multiple of 4")
  u = _seek(seed, salt, int(start) * (width // 4)).random(count * width).reshape(count, width)
  return u if used is None or used == width else u[:, :used]


SMALL_GROUPS = 32  # up to this many groups, the layout and counts are Python lists


class _Layout(NamedTuple):
  """What a step's plan needs from the proportions alone (computed once per ``probs``).

  ``floor`` and ``cdf`` are Python lists for at most `SMALL_GROUPS` groups (a few Python
  operations per group cost less than a NumPy call each), NumPy arrays otherwise: the same
  numbers either way (``float(floor)`` is exact, and ``cumsum`` adds in order).
  """

  probs: np.ndarray   # float64 [G], normalised
  floor: Any          # int [G], floor(p B)
  remaining: int      # r = B - sum(floor)
  cdf: Any            # float64 [G], cumsum(frac)
  odd: list | None = None  # groups that may be dense or need replacement at a step


def _layout(p: np.ndarray, batch_size: int, half: list | None = None) -> _Layout:
  """The layout of normalised ``p``; with ``half = [n_g // 2]``, also the groups that may get
  ``count_g > n_g / 2`` (``count_g <= floor_g + r``)."""
  if len(p) <= SMALL_GROUPS:
    floor, cdf, acc = [], [], 0.0
    for x in p.tolist():
      target = x * batch_size
      f = int(target)  # floor, as target >= 0
      floor.append(f)
      acc += target - f
      cdf.append(acc)
    r = batch_size - sum(floor)
    odd = None
    if half is not None:  # (usually no group can: a cheap bound first)
      odd = ([g for g, (f, h) in enumerate(zip(floor, half)) if f + r > h]
             if max(floor) + r > min(half) else [])
    return _Layout(p, floor, r, cdf, odd)
  target = p * batch_size
  floor = target.astype(np.int64)
  r = batch_size - int(floor.sum())
  odd = None if half is None else np.flatnonzero(floor + r > np.asarray(half)).tolist()
  return _Layout(p, floor, r, np.cumsum(target - floor), odd)


def plan_counts(probs: np.ndarray, batch_size: int, u: np.ndarray) -> np.ndarray:
  """Slots per group: ``floor(p B)``, then r remaining slots by categorical draws on ``frac``.

  Args:
    probs: float [G], non-negative, sums to one.
    batch_size: B.
    u: at least ``r = B - sum(floor(p B))`` uniforms in [0, 1) (the first r are used):
      remaining slot j goes to the group g with ``cdf[g-1] <= u_j cdf[-1] < cdf[g]``,
      ``cdf = cumsum(p B - floor(p B))``.

  Returns:
    int64 [G] with sum B and ``E[count_g] = p_g B``.

  Examples:
    >>> plan_counts(np.array([0.5, 0.25, 0.25]), 8, np.zeros(0)).tolist()
    [4, 2, 2]
    >>> plan_counts(np.array([0.5, 0.5]), 3, np.array([0.7])).tolist()   # 1 + 1, then one
    [1, 2]
  """
  lay = _layout(np.asarray(probs, np.float64), batch_size)
  return np.asarray(_counts(lay, np.asarray(u, np.float64)), np.int64)


def _counts(lay: _Layout, u: np.ndarray):
  """Counts per group (a list when ``lay.floor`` is one, else int64 [G])."""
  r, cdf = lay.remaining, lay.cdf
  # u < 1 gives u * cdf[-1] < cdf[-1] in floating point, so picks < G.
  if isinstance(cdf, list):
    counts = lay.floor.copy()
    total = cdf[-1]
    for v in u[:r].tolist():  # bisect_right is searchsorted(side="right")
      counts[bisect_right(cdf, v * total)] += 1
    return counts
  if not r:
    return lay.floor
  picks = np.searchsorted(cdf, u[:r] * cdf[-1], side="right")
  return lay.floor + np.bincount(picks, minlength=len(cdf))


def online_mixture_sampler(global_batch_size: int, seed: int, *, num_groups: int | None = None,
                           group_ids: np.ndarray | None = None, update_every: int = 1,
                           process_index: int | None = None,
                           process_count: int | None = None) -> OnlineMixtureSampler:
  """A sampler whose global batches follow the proportions of a policy state, re-read online.

  Rule (module docstring, with every random number of step t drawn from ``(seed, t)``
  alone): ``floor(p_g B)`` slots per group, the remainder by categorical draws on the
  fractional parts (``E[count_g] = p_g B``), in a random order; members of group g drawn
  uniformly, distinct unless the group has fewer members than slots; process k returns
  slots ``[k B / K, (k + 1) B / K)`` of the global batch.

  Args:
    global_batch_size: B, the batch of all processes together.
    seed: non-negative int.
    num_groups: G (default: ``max(group_ids) + 1``; required without ``group_ids``).
    group_ids: int [n], the group of every example of an indexable dataset; None for
      generated data (then only `plan` / `groups` are usable).
    update_every: ``refresh`` adopts new proportions every this many steps.
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``); must divide B.

  Returns:
    An `OnlineMixtureSampler`. Its functions raise ValueError when the proportions are not
    a distribution over G groups (`reweight.group.policy.check_probs`) or put weight on a
    group without members.

  Examples:
    >>> groups = np.repeat([0, 1, 2], [10, 20, 30])
    >>> s = online_mixture_sampler(8, seed=0, group_ids=groups, update_every=5,
    ...                            process_index=0, process_count=1)
    >>> state = s.init(np.array([0.5, 0.25, 0.25]))
    >>> np.bincount(s.plan(0, state), minlength=3).tolist()
    [4, 2, 2]
    >>> state = s.refresh(state, 3, np.array([0.0, 0.0, 1.0]))   # 3 % 5 != 0: kept
    >>> state.probs.tolist(), int(state.since_step)
    ([0.5, 0.25, 0.25], 0)
    >>> state = s.refresh(state, 5, np.array([0.0, 0.0, 1.0]))
    >>> sorted(set(groups[s.indices(5, state)].tolist()))
    [2]

  References:
    Xie et al., "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining",
    NeurIPS 2023. Albalak et al., "Efficient Online Data Mixing For Language Model
    Pre-Training", 2023.
  """
  batch = check_int("global_batch_size", global_batch_size, 1)
  seed = check_int("seed", seed, 0)
  update_every = check_int("update_every", update_every, 1)
  if process_index is None or process_count is None:
    import jax  # only when the caller leaves the process layout to JAX

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  process_count = check_int("process_count", process_count, 1)
  process_index = check_int("process_index", process_index, 0)
  if process_index >= process_count:
    raise ValueError(f"process_index={process_index} must be < process_count={process_count}")
  if batch % process_count:
    raise ValueError(f"global_batch_size={batch} is not divisible by "
                     f"process_count={process_count}")
  local = batch // process_count
  lo, hi = process_index * local, (process_index + 1) * local

  sizes = order = first = None
  if group_ids is not None:
    group_ids = np.asarray(group_ids)
    if group_ids.ndim != 1 or group_ids.size == 0 or not np.issubdtype(group_ids.dtype,
                                                                       np.integer):
      raise ValueError(f"group_ids must be a non-empty 1-D int array, got "
                       f"{group_ids.dtype}{group_ids.shape}")
    num_groups = (int(group_ids.max()) + 1 if num_groups is None
                  else check_num_groups(num_groups))
    bad = np.unique(group_ids[(group_ids < 0) | (group_ids >= num_groups)])
    if bad.size:
      raise ValueError(f"group_ids holds ids {bad.tolist()} outside [0, num_groups="
                       f"{num_groups})")
    order = np.argsort(group_ids, kind="stable").astype(np.int64)  # members, group by group
    sizes = np.bincount(group_ids, minlength=num_groups).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  elif num_groups is None:
    raise ValueError("online_mixture_sampler needs num_groups= when group_ids is None")
  num_groups = check_num_groups(num_groups)
  group_range = np.arange(num_groups, dtype=np.intp)  # int32 indices cost a conversion
  slot_range = np.arange(batch)
  last = [None, {}]  # the last proportions validated: its _Layout, {raw bytes: _Layout}
  shape = (num_groups,)
  has_empty = sizes is not None and bool((sizes == 0).any())
  half = None
  if sizes is not None:
    half = (sizes // 2).tolist()  # 2 count > n iff count > n // 2
    size_list, first_list = sizes.tolist(), first.tolist()
    size_float = sizes.astype(np.float64)
    total = len(order)
    scratch = threading.local()  # per thread: int64 [n + B], B everywhere between calls

  def layout(probs) -> _Layout:
    p = getattr(probs, "probs", probs)
    hit = last[0]
    if hit is not None and p is hit.probs:  # the state `refresh` just returned
      return hit
    p = np.asarray(p, np.float64)
    key = p.tobytes() if p.shape == shape else None
    hit = last[1].get(key)
    if hit is not None:
      return hit
    # check_probs (atol 1e-5), its accepting case first: a finite sum rules out nan and inf.
    s = float(p.sum()) if key is not None else np.nan
    if not (abs(s - 1.0) <= 1e-5 and
            (min(p.tolist()) if num_groups <= SMALL_GROUPS else p.min()) >= 0):
      p = check_probs(p, num_groups)  # raises
      s = float(p.sum())
    if has_empty:
      empty = np.flatnonzero((p > 0) & (sizes == 0))
      if empty.size:
        raise ValueError(f"probs={p.tolist()} puts weight on groups {empty.tolist()} that "
                         "have no example in group_ids")
    p = p / s
    p.flags.writeable = False
    lay = _layout(p, batch, half)
    last[0] = lay
    last[1] = {key: lay, p.tobytes(): lay}  # the raw and the normalised proportions
    return lay

  # Uniforms of a step: r remainder draws (r < G), B order keys, B first draws, then
  # candidates; each step owns `width` draws of the main stream (>= 3 B + 1 candidates).
  width = -(-(num_groups + 5 * batch) // 4) * 4

  def redraw(step, later, slots, cand, more, mark, rng):
    """Members of the redraw slots ``later``, in slot order: successive candidates, skipping
    those a slot holds (``mark[m] < B``: a first draw; ``taken``: an earlier redraw).

    ``cand``: the first candidate uniforms; then, if ``more`` is not None, draws
    ``[more, width)`` of the step (the rest of them); then draws of its second stream.
    """
    taken, picks = set(), []
    vs = cand[::-1].tolist()  # candidates to pop, the next one last
    for g in slots[later].tolist():
      f, n = first_list[g], size_list[g]
      while True:
        if vs:
          v = vs.pop()
        elif more is not None:  # draws [more, width) of the step
          skip = more % 4
          vs = _seek(seed, ONLINE_MIXTURE_SALT, (step * width + more) // 4).random(
              width - more + skip)[skip:][::-1].tolist()
          more = None
          continue
        else:
          rng = step_rng(seed, step) if rng is None else rng
          v = rng.random()
        m = f + int(v * n)  # floor(v n) < n for every double v < 1 and n < 2**53
        if mark[m] == batch and m not in taken:
          break
      taken.add(m)
      picks.append(m)
    return picks

  def finish(step, lay, slots, counts, members, cand, more=None):
    """Members of a step from its first draws ``members`` (changed in place): dense groups,
    then the redraw slots (`redraw`)."""
    keys = members
    rng = None  # the step's generator of the second stream, when needed
    if lay.odd:
      counts = np.asarray(counts)
      odd = np.array(lay.odd)
      odd = odd[counts[odd] > sizes[odd] // 2]  # dense or with replacement
      if odd.size:
        for g in odd[counts[odd] <= sizes[odd]].tolist():  # dense: a permutation prefix
          rng = step_rng(seed, step) if rng is None else rng
          members[slots == g] = first[g] + rng.permutation(sizes[g])[:counts[g]]
        is_odd = np.zeros(num_groups, bool)
        is_odd[odd] = True
        keys = np.where(is_odd[slots], total + slot_range, members)  # never collide
    mark = getattr(scratch, "mark", None)
    if mark is None:
      mark = scratch.mark = np.full(total + batch, batch, np.int64)
    try:
      # mark[k]: the least slot whose key is k (`minimum.at` is unbuffered, so exact); slot
      # s redraws iff an earlier slot has its key.
      np.minimum.at(mark, keys, slot_range)
      later = (mark[keys] != slot_range).nonzero()[0]
      if later.size:
        members[later] = redraw(step, later, slots, cand, more, mark, rng)
    finally:
      mark[keys] = batch
    return members

  def one(step: int, lay: _Layout):
    """The rule for one step: ``(slots intp [B], positions in `order` int64 [B] | None)``."""
    r = lay.remaining
    head = min(r + 2 * batch + CANDIDATES, width)  # the draws read now
    u = _seek(seed, ONLINE_MIXTURE_SALT, step * (width // 4)).random(head)
    counts = _counts(lay, u)
    keys = u[r:r + batch]
    perm = keys.argsort()  # the stable order unless two keys tie (then sorted again)
    in_order = keys[perm]
    if np.count_nonzero(in_order[1:] == in_order[:-1]):
      perm = keys.argsort(kind="stable")
    slots = group_range.repeat(counts)[perm]
    if order is None:
      return slots, None
    members = first[slots] + (u[r + batch:r + 2 * batch] * size_float[slots]).astype(np.int64)
    return slots, finish(step, lay, slots, counts, members, u[r + 2 * batch:], head)

  def block(start: int, count: int, lay: _Layout):
    """`one` for steps ``start .. start + count - 1`` at once (the same numbers): the plan and
    the first draws vectorized over steps, then `finish` step by step."""
    r = lay.remaining
    floor, cdf = np.asarray(lay.floor, np.int64), np.asarray(lay.cdf, np.float64)
    head = min(r + 2 * batch + CANDIDATES, width)  # as in `one`: the rest read on demand
    u = step_uniforms(seed, start, count, width, head)
    rows = np.arange(count)[:, None]
    if r:
      picks = np.searchsorted(cdf, u[:, :r] * cdf[-1], side="right")
      extra = np.bincount((picks + num_groups * rows).ravel(), minlength=count * num_groups)
      counts = floor + extra.reshape(count, num_groups)
    else:
      counts = np.broadcast_to(floor, (count, num_groups))
    # Row t of `repeated` is np.repeat(arange(G), counts[t]): one searchsorted for all rows.
    bounds = (np.cumsum(counts, axis=1) + batch * rows).ravel()
    repeated = (np.searchsorted(bounds, (np.arange(batch) + batch * rows).ravel(), side="right")
                .reshape(count, batch) - num_groups * rows)
    keys = u[:, r:r + batch]
    perm = keys.argsort(axis=1)  # the stable order in rows without ties, as in `one`
    in_order = np.take_along_axis(keys, perm, axis=1)
    tied = np.flatnonzero((in_order[:, 1:] == in_order[:, :-1]).any(axis=1))
    if tied.size:
      perm[tied] = keys[tied].argsort(axis=1, kind="stable")
    slots = np.take_along_axis(repeated, perm, axis=1)
    if order is None:
      return slots, None
    members = first[slots] + (u[:, r + batch:r + 2 * batch] * size_float[slots]).astype(
        np.int64)
    for k in range(count):
      finish(start + k, lay, slots[k], counts[k], members[k], u[k, r + 2 * batch:head], head)
    return slots, members

  cached = [None]  # (layout, first step, step count, slots, members) of the last block

  def rows_for(step, probs):
    step = check_int("step", step, 0)
    lay = layout(probs)
    c = cached[0]
    if c is not None and c[0] is lay and c[1] <= step < c[1] + c[2]:
      k = step - c[1]
      return c[3][k], None if c[4] is None else c[4][k]
    if update_every == 1:
      return one(step, lay)
    # The proportions cannot change before the next refresh: draw the steps up to it at once.
    count = min(update_every - step % update_every, MAX_BLOCK, max(1, (1 << 16) // batch))
    slots, members = block(step, count, lay)
    cached[0] = (lay, step, count, slots, members)
    return slots[0], None if members is None else members[0]

  def plan(step: int, probs) -> np.ndarray:
    return rows_for(step, probs)[0].astype(np.int32)

  def groups(step: int, probs) -> np.ndarray:
    return rows_for(step, probs)[0][lo:hi].astype(np.int32)

  def indices(step: int, probs) -> np.ndarray:
    if order is None:
      raise ValueError("indices needs group_ids= (the group of every example); use groups() "
                       "for generated data")
    return order[rows_for(step, probs)[1][lo:hi]]

  def init(probs=None) -> OnlineMixtureState:
    p = np.full(num_groups, 1.0 / num_groups) if probs is None else layout(probs).probs
    return OnlineMixtureState(np.array(p, np.float64), np.asarray(0, np.int64))

  def refresh(state: OnlineMixtureState, step: int, probs) -> OnlineMixtureState:
    step = check_int("step", step, 0)
    if step % update_every:
      return state
    return OnlineMixtureState(layout(probs).probs, np.asarray(step, np.int64))

  return OnlineMixtureSampler(init, refresh, plan, groups, indices, batch, local, num_groups,
                              update_every, process_index, process_count)


__all__ = [
    "CANDIDATES",
    "EXTRA_SALT",
    "MAX_BLOCK",
    "ONLINE_MIXTURE_SALT",
    "OnlineMixtureSampler",
    "OnlineMixtureState",
    "online_mixture_sampler",
    "plan_counts",
    "step_rng",
    "step_uniforms",
]
