"""GPU numbers: every ratio of the CPU benchmarks, at GPU sizes, in one run of a few minutes.

One Transformer (pre-LN, classification of token sequences; by default d=1024, 16 heads,
4 layers, sequence 512, batch 128, meta batch 32, vocabulary 32768) trained with Adam in
bfloat16 mixed precision (float32 master parameters and optimizer state; the forward and
backward run on bfloat16 copies of the parameters, logits cast back to float32). On it, the
ratios of the other scripts of ``benchmarks/``, built with their own step builders:

* ``step/<variant>``: step time of each variant over the plain step (median over
  interleaved rounds, with the interquartile range), as in ``overhead.py`` (every
  weighting through `reweight.weighted`), ``meta_cost.py`` (its variants that
  ``overhead.py`` lacks, e.g. L2RW's lookahead and MW-Net's exact second order) and
  ``peft.py`` (``lora``: a rank-8 adapter on the query and value kernels against full
  fine-tuning, which is the plain step);
* ``flops/<variant>``: XLA's compiled flop count over the plain step's (``overhead.py``,
  ``meta_cost.py``);
* ``first_step/<variant>``: time to first step (trace + lower, compile, first run, with
  JAX's caches cleared and the persistent compilation cache off) over the plain step's,
  as in ``compile_time.py``;
* ``peft/opt_state_bytes``, ``peft/trainable_params``, ``peft/merged_inference`` and
  ``peft/unmerged_inference`` (``peft.py``: Adam state and trainable parameters of LoRA
  over full fine-tuning; forward of the merged LoRA model and of the unmerged adapter over
  the base model's forward);
* ``sampler/update_every=1`` and ``sampler/update_every=10``: batches per second of
  `reweight.data.online_mixture_sampler` drawing byte windows of the batch's shape from
  `reweight.data.domain_corpus`, over plain steps per second (``sampler_throughput.py``;
  the target there is >= 20).

Each step is compiled once (``jit(step).lower(...).compile()``): that compilation is the
first-step measurement, gives the flop count, and is the executable that is timed. Writes
``benchmarks/results/gpu.json`` and prints a Markdown table headed by the device name
(``jax.devices()[0].device_kind``).

It refuses to run without a GPU, unless ``--allow-cpu``; ``--tiny`` shrinks every size so
that ``--allow-cpu --tiny`` is a smoke test of the script on a CPU (its numbers mean
nothing). ``--budget-s`` bounds the run (default 420 s, so that ``benchmarks/gpu.sh`` fits
in 8 minutes with start-up): the timed rounds are cut to fit, and variants that cannot be
compiled in time are listed under ``skipped`` (exit status 3).

  python benchmarks/gpu.py [--tiny] [--allow-cpu] [--d-model 1024] [--layers 4]
      [--seq-len 512] [--batch 128] [--dtype bfloat16] [--rounds 5] [--steps 3]
      [--budget-s 420] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The sibling benchmarks (``overhead``, ``meta_cost``, ``compile_time``,
# ``sampler_throughput``) and `reweight` are imported by the functions that use them, after
# the device check, so that a machine without a GPU is told so in about two seconds.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Realistic GPU sizes (issue 9: Transformer d=512-1024, sequence 512, batch 64-256, bf16).
GPU_SIZES = {"d_model": 1024, "num_heads": 16, "num_layers": 4, "seq_len": 512,
             "batch": 128, "meta_batch": 32, "vocab": 32768, "num_classes": 10, "rank": 8,
             "corpus_bytes": 1 << 18, "corpus_validation_every": 10}
# A smoke test of the script on a CPU (its cost is the ~20 compilations); numbers mean nothing.
TINY_SIZES = {"d_model": 16, "num_heads": 2, "num_layers": 1, "seq_len": 8, "batch": 8,
              "meta_batch": 4, "vocab": 32, "num_classes": 10, "rank": 2,
              "corpus_bytes": 1 << 16, "corpus_validation_every": 4}
LORA_TARGETS = r".*(query|value)/kernel"
DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}
# The variants measured first are the ones to keep if the time budget runs out.
FIRST = ("uniform", "loss_based/linupper", "l2rw", "meta_weight_net", "lora")
PEFT_KEYS = ("peft/opt_state_bytes", "peft/trainable_params", "peft/merged_inference",
             "peft/unmerged_inference")
SAMPLER_UPDATE_EVERY = (1, 10)


class NoGPUError(RuntimeError):
  """No GPU is visible to JAX and ``--allow-cpu`` was not given."""


def weightings() -> dict:
  """``{name: () -> Weighting}``: every weighting of ``overhead.py``, then the variants of
  ``meta_cost.py`` that ``overhead.py`` does not time (L2RW lookahead, MW-Net exact)."""
  import meta_cost
  import overhead

  out = dict(overhead.weightings())
  for name, weighting in meta_cost.weightings().items():
    if name not in out:
      out[name] = lambda weighting=weighting: weighting
  return out


def variants(only: str = "") -> list[str]:
  """The variants timed against ``plain``, most important first: all of them, or the
  comma-separated names in ``only``.

  Raises:
    ValueError: if ``only`` names an unknown variant.
  """
  rest = [*weightings(), "lora"]
  every = [*[v for v in FIRST if v in rest], *[v for v in rest if v not in FIRST]]
  if not only:
    return every
  chosen = [v.strip() for v in only.split(",") if v.strip()]
  unknown = [v for v in chosen if v not in every]
  if unknown:
    raise ValueError(f"unknown variants {unknown}; choose among {every}")
  return [v for v in every if v in chosen]


def expected_keys(only: str = "") -> list[str]:
  """Every key of ``ratios`` in ``gpu.json`` after a complete run (of ``--only`` variants).

  The ``peft/*`` ratios need the ``lora`` variant.
  """
  chosen = variants(only)
  keys = [f"{kind}/{v}" for v in chosen for kind in ("step", "flops", "first_step")]
  peft = PEFT_KEYS if "lora" in chosen else ()
  return [*keys, *peft, *(f"sampler/update_every={u}" for u in SAMPLER_UPDATE_EVERY)]


def check_device(allow_cpu: bool) -> jax.Device:
  """The first device, which must be a GPU unless ``allow_cpu``.

  Raises:
    NoGPUError: with what JAX sees and what to do, when there is no GPU.
  """
  device = jax.devices()[0]
  if device.platform == "gpu" or allow_cpu:
    return device
  raise NoGPUError(
      f"no GPU: JAX's default backend is {jax.default_backend()!r} with devices "
      f"{jax.devices()}. Run this on a machine with a GPU and a CUDA build of jaxlib "
      "(pip install -U 'jax[cuda12]'), or pass --allow-cpu --tiny for a smoke test of the "
      "script itself (its numbers mean nothing).")


class Deadline:
  """Seconds left of the run's time budget."""

  def __init__(self, budget_s: float):
    self.end = time.perf_counter() + budget_s

  def left(self) -> float:
    return self.end - time.perf_counter()


def cast_floats(tree, dtype):
  """``tree`` with every floating-point leaf cast to ``dtype``."""
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def problem(sizes: dict, dtype) -> tuple:
  """The Transformer, its batches and a mixed-precision per-example loss.

  Returns:
    ``(fn, params, batch, meta, per_example)``, where ``(params, batch, meta, per_example)``
    is the problem format of ``overhead.py`` and ``compile_time.py``, and ``fn`` the model.
  """
  import overhead

  from reweight.losses import softmax_cross_entropy
  from reweight.train.models import functional, make_model

  fn = functional(make_model(
      "transformer", seed=0, vocab_size=sizes["vocab"], num_classes=sizes["num_classes"],
      d_model=sizes["d_model"], num_heads=sizes["num_heads"], num_layers=sizes["num_layers"],
      max_len=sizes["seq_len"]))
  rng = np.random.default_rng(0)

  def tokens(n):
    return jnp.asarray(rng.integers(0, sizes["vocab"], (n, sizes["seq_len"])), jnp.int32)

  batch = overhead._classification_batch(tokens(sizes["batch"]), sizes["num_classes"], rng)
  meta = overhead._classification_batch(tokens(sizes["meta_batch"]), sizes["num_classes"],
                                        rng)

  def per_example(params, batch):
    logits = fn.apply(cast_floats(params, dtype), batch["x"]).astype(jnp.float32)
    return softmax_cross_entropy(logits, batch["label"]), {"logits": logits,
                                                          "labels": batch["label"]}

  return fn, fn.params, batch, meta, per_example


def builders(prob: tuple, rank: int) -> dict:
  """``{variant: () -> (fresh jitted step, its arguments)}`` for ``plain`` and every variant.

  ``plain``, ``lora`` and the weightings of ``compile_time.py`` come from its ``builders``;
  the other weightings use ``overhead.make_steps`` in the same way.
  """
  import compile_time
  import overhead

  _, params, batch, meta, per_example = prob
  out = compile_time.builders((params, batch, meta, per_example), LORA_TARGETS, rank=rank)
  optimizer = optax.adam(1e-3)
  for name, make in weightings().items():
    if name in out:
      continue

    def build(make=make):
      weighting = make()
      _, step = overhead.make_steps(params, per_example, weighting, optimizer)
      return step, (params, optimizer.init(params), weighting.init(jax.random.PRNGKey(0)),
                    batch, meta)

    out[name] = build
  return out


def compile_first_step(build) -> dict:
  """Builds a step and compiles it once, timing the first step as ``compile_time.py`` does.

  Returns:
    ``{"compiled", "args", "first_step_s", "lower_s", "compile_s", "run_s", "flops"}``.
  """
  import compile_time

  compiled, args, seconds = compile_time.compile_first_step(build)
  cost = compiled.cost_analysis()
  cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
  flops = float(cost.get("flops", math.nan))
  return {"compiled": compiled, "args": args, "first_step_s": seconds["total"],
          "lower_s": seconds["lower"], "compile_s": seconds["compile"], "run_s": seconds["run"],
          "flops": flops if flops > 0 else math.nan}


def _time_calls(fn, args, n: int) -> float:
  """Mean seconds of ``fn(*args)`` over ``n`` calls dispatched back to back."""
  out = None
  t0 = time.perf_counter()
  for _ in range(n):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / n


def _summary(ratios) -> dict:
  ratios = np.asarray(ratios, float)
  return {"ratio": float(np.median(ratios)),
          "iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))]}


def _rounds_that_fit(round_s: float, wanted: int, seconds: float) -> int:
  """How many rounds of ``round_s`` seconds fit in ``seconds`` (at least 1, at most wanted)."""
  return max(1, min(wanted, int(seconds / max(round_s, 1e-9))))


def measure_steps(prob, sizes, args, deadline: Deadline, reserve_s: float) -> dict:
  """Compiles every variant once, then times them in interleaved rounds against ``plain``."""
  build = builders(prob, sizes["rank"])
  # As in compile_time.py: one untimed first step pays JAX's one-time costs (backend start,
  # the first trace of each library function) that would otherwise count against plain.
  compile_first_step(build["plain"])
  steps, skipped = {}, []
  for name in ("plain", *variants(args.only)):
    # A meta weighting compiles in up to about 3x the plain step's time.
    if name != "plain" and deadline.left() < reserve_s + 3 * steps["plain"]["first_step_s"]:
      skipped.append(name)
      continue
    steps[name] = compile_first_step(build[name])
    if name != "plain" and name != "lora":
      # Every step but LoRA's starts from Adam's (zero) state of the full parameters: share
      # the plain step's copy instead of holding one per variant in device memory.
      a, shared = steps[name]["args"], steps["plain"]["args"][1]
      if jax.tree.structure(a[1]) == jax.tree.structure(shared):
        steps[name]["args"] = (a[0], shared, *a[2:])
    print(f"  compiled {name}: first step {steps[name]['first_step_s']:.2f} s", flush=True)

  # Warm-up, then as many interleaved rounds as the budget allows (at most --rounds).
  for s in steps.values():
    _time_calls(s["compiled"], s["args"], 1)
  round_s = sum(s["run_s"] for s in steps.values()) * args.steps
  rounds = _rounds_that_fit(round_s, args.rounds, deadline.left() - reserve_s)
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, s in steps.items():
      times[name].append(_time_calls(s["compiled"], s["args"], args.steps))

  plain = steps["plain"]
  ratios = {}
  for name, s in steps.items():
    if name == "plain":
      continue
    ratios[f"step/{name}"] = _summary(np.asarray(times[name]) / np.asarray(times["plain"]))
    ratios[f"flops/{name}"] = {"ratio": s["flops"] / plain["flops"], "iqr": None}
    ratios[f"first_step/{name}"] = {"ratio": s["first_step_s"] / plain["first_step_s"],
                                    "iqr": None}
  detail = {name: {"median_ms": 1e3 * float(np.median(times[name])),
                   **{k: s[k] for k in ("first_step_s", "lower_s", "compile_s", "run_s",
                                        "flops")}}
            for name, s in steps.items()}
  # A trained adapter (one LoRA step from zero) for the inference ratios.
  lora_state = None
  if "lora" in steps:
    lora_args = steps["lora"]["args"]  # (trainable, opt_state, frozen, batch)
    lora_state = (steps["lora"]["compiled"](*lora_args)[0], lora_args[2], lora_args[1])
  return {"ratios": ratios, "detail": detail, "skipped": skipped, "rounds": rounds,
          "lora_state": lora_state}


def measure_peft(prob, sizes, dtype, lora_state, args, deadline: Deadline) -> dict:
  """``peft.py``'s other ratios: Adam state, trainable parameters, merged inference.

  ``lora_state`` is ``(trained adapter, frozen parameters, the adapter's Adam state)``.
  """
  from reweight.reparam import lora, merge, tree_bytes

  fn, params, batch, _, _ = prob
  tuned, frozen, lora_opt_state = lora_state
  reparam = lora(sizes["rank"], 2.0 * sizes["rank"], LORA_TARGETS)
  optimizer = optax.adam(1e-3)
  ratios = {
      "peft/opt_state_bytes": {
          "ratio": tree_bytes(lora_opt_state) / tree_bytes(optimizer.init(params)),
          "iqr": None},
      "peft/trainable_params": {
          "ratio": (sum(np.size(x) for x in jax.tree.leaves(tuned))
                    / sum(np.size(x) for x in jax.tree.leaves(params))),
          "iqr": None},
  }
  merged = jax.block_until_ready(merge(reparam, tuned, frozen))
  forward = jax.jit(lambda p, x: fn.apply(cast_floats(p, dtype), x))
  unmerged = jax.jit(lambda t, f, x: fn.apply(cast_floats(reparam.apply(t, f), dtype), x))
  x = batch["x"]
  calls = {"base": (forward, (params, x)), "merged": (forward, (merged, x)),
           "unmerged": (unmerged, (tuned, frozen, x))}
  for f, a in calls.values():  # compile and warm up
    _time_calls(f, a, 1)
  round_s = sum(_time_calls(f, a, 1) for f, a in calls.values()) * args.steps
  rounds = _rounds_that_fit(round_s, args.rounds, deadline.left() - 10.0)
  times = {k: [] for k in calls}
  for _ in range(rounds):
    for k, (f, a) in calls.items():
      times[k].append(_time_calls(f, a, args.steps))
  base = np.asarray(times["base"])
  ratios["peft/merged_inference"] = _summary(np.asarray(times["merged"]) / base)
  ratios["peft/unmerged_inference"] = _summary(np.asarray(times["unmerged"]) / base)
  return {"ratios": ratios,
          "detail": {k: {"median_ms": 1e3 * float(np.median(v))} for k, v in times.items()}}


def measure_sampler(sizes, plain_step_s: float, draws: int) -> dict:
  """``sampler_throughput.py``'s ratio at this batch: sampler batches/s over plain steps/s.

  The sampler of its ``lm`` problem (proportions that change at every step, refreshed every
  ``update_every`` steps; windows of `domain_lm_batch`), drawing batches of this problem's
  shape ``[batch, seq_len]``.
  """
  import sampler_throughput

  from reweight.data import domain_text
  from reweight.data.online_mixture import online_mixture_sampler

  corpus = domain_text.domain_corpus(sizes["corpus_bytes"],
                                     validation_every=sizes["corpus_validation_every"])
  num_groups = len(corpus.names)
  table = sampler_throughput._policy_table(sampler_throughput.POLICY_STEPS, num_groups)
  ratios, detail = {}, {}
  for update_every in SAMPLER_UPDATE_EVERY:
    sampler = online_mixture_sampler(sizes["batch"], 0, num_groups=num_groups,
                                     update_every=update_every, process_index=0,
                                     process_count=1)
    state = [sampler.init()]

    def draw(t, sampler=sampler, state=state):
      state[0] = sampler.refresh(state[0], t, table[t % sampler_throughput.POLICY_STEPS])
      return domain_text.domain_lm_batch(corpus, sampler.groups(t, state[0]), t,
                                         seq_len=sizes["seq_len"], seed=0)

    sampler_throughput._timed(draw, 3)  # warm up
    draw_s = sampler_throughput._timed(lambda i: draw(1000 + i), draws)
    ratios[f"sampler/update_every={update_every}"] = {"ratio": plain_step_s / draw_s,
                                                      "iqr": None}
    detail[f"update_every={update_every}"] = {"sampler_ms": 1e3 * draw_s}
  return {"ratios": ratios, "detail": detail}


def _finite_or_none(tree):
  """``tree`` with NaN and infinite floats replaced by None (strict JSON)."""
  if isinstance(tree, dict):
    return {k: _finite_or_none(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_finite_or_none(v) for v in tree]
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree


def markdown(result: dict) -> str:
  """The results as a Markdown table (one row per variant, then the other ratios)."""
  meta, ratios = result["meta"], result["ratios"]

  def cell(key, digits=3):
    r = ratios.get(key)
    if r is None or not math.isfinite(r["ratio"]):
      return "n/a"
    text = f"{r['ratio']:.{digits}f}"
    if r.get("iqr"):
      text += f" ({r['iqr'][0]:.{digits}f}-{r['iqr'][1]:.{digits}f})"
    return text

  s = meta["sizes"]
  lines = [
      f"Device: **{meta['device_kind']}** ({meta['backend']}, jax {meta['jax']}). "
      f"Transformer d={s['d_model']}, {s['num_heads']} heads, {s['num_layers']} layers, "
      f"sequence {s['seq_len']}, batch {s['batch']} (meta batch {s['meta_batch']}), "
      f"vocabulary {s['vocab']}, {meta['dtype']} compute, Adam; plain step "
      f"{result['detail']['steps'].get('plain', {}).get('median_ms', math.nan):.2f} ms; "
      f"{meta['rounds']} rounds x {meta['steps']} steps.",
      "",
      "| variant | step time / plain (IQR) | flops / plain | first step / plain |",
      "|---|---|---|---|",
  ]
  for v in variants(meta["only"]):
    if f"step/{v}" in ratios:
      lines.append(f"| `{v}` | {cell(f'step/{v}')} | {cell(f'flops/{v}', 4)} | "
                   f"{cell(f'first_step/{v}', 2)} |")
  lines += ["", "| ratio | value (IQR) |", "|---|---|"]
  for key in (*PEFT_KEYS, *(f"sampler/update_every={u}" for u in SAMPLER_UPDATE_EVERY)):
    if key in ratios:
      digits = 4 if key in ("peft/opt_state_bytes", "peft/trainable_params") else 3
      lines.append(f"| `{key}` | {cell(key, digits)} |")
  if result["skipped"]:
    lines += ["", f"Skipped (time budget): {', '.join(result['skipped'])}"]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Runs every measurement, writes ``gpu.json``, prints the table; the exit status."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke test)")
  parser.add_argument("--allow-cpu", action="store_true",
                      help="run without a GPU (for a smoke test with --tiny)")
  for key, flag in (("d_model", "--d-model"), ("num_heads", "--heads"),
                    ("num_layers", "--layers"), ("seq_len", "--seq-len"),
                    ("batch", "--batch"), ("meta_batch", "--meta-batch"),
                    ("vocab", "--vocab"), ("rank", "--rank")):
    parser.add_argument(flag, dest=key, type=int, default=None,
                        help=f"{key.replace('_', ' ')} (default {GPU_SIZES[key]})")
  parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                      help="compute dtype of forward and backward (default bfloat16)")
  parser.add_argument("--rounds", type=int, default=None,
                      help="interleaved timing rounds (default 5; 2 with --tiny)")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed calls per variant per round (default 3; 1 with --tiny)")
  parser.add_argument("--draws", type=int, default=None,
                      help="sampler batches timed (default 100; 5 with --tiny)")
  parser.add_argument("--only", default="",
                      help="comma-separated variants to time against plain (default: all)")
  parser.add_argument("--budget-s", type=float, default=420.0,
                      help="time budget of the measurements in seconds (default 420)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "results"),
                      help="directory for gpu.json")
  args = parser.parse_args(argv)
  deadline = Deadline(args.budget_s)
  if args.tiny:
    # Cheaper host (CPU) code generation: the smoke test compiles about 20 steps. Set before
    # JAX creates its backends, which the device check below does.
    os.environ["XLA_FLAGS"] = " ".join(filter(None, (
        os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true")))
  try:
    device = check_device(args.allow_cpu)
  except NoGPUError as e:
    print(f"benchmarks/gpu.py: {e}", file=sys.stderr)
    return 2

  try:
    variants(args.only)
  except ValueError as e:
    parser.error(str(e))
  sizes = dict(TINY_SIZES if args.tiny else GPU_SIZES)
  for key in sizes:
    if getattr(args, key, None) is not None:
      sizes[key] = getattr(args, key)
  args.rounds = args.rounds or (2 if args.tiny else 5)
  args.steps = args.steps or (1 if args.tiny else 3)
  draws = args.draws or (5 if args.tiny else 100)
  dtype = DTYPES[args.dtype]
  jax.config.update("jax_enable_compilation_cache", False)
  print(f"benchmarks/gpu.py on {device.device_kind} ({jax.default_backend()}): {sizes}, "
        f"{args.dtype}", flush=True)

  prob = problem(sizes, dtype)
  # Time kept back for the PEFT inference ratios and the sampler after the train steps.
  reserve_s = 5.0 if args.tiny else 45.0
  steps = measure_steps(prob, sizes, args, deadline, reserve_s)
  ratios, detail = dict(steps["ratios"]), {"steps": steps["detail"]}
  skipped = list(steps["skipped"])
  if steps["lora_state"] is not None:
    peft = measure_peft(prob, sizes, dtype, steps["lora_state"], args, deadline)
    ratios.update(peft["ratios"])
    detail["peft"] = peft["detail"]
  elif "lora" in variants(args.only):
    skipped += list(PEFT_KEYS)
  plain_s = steps["detail"]["plain"]["median_ms"] / 1e3
  sampler = measure_sampler(sizes, plain_s, draws)
  ratios.update(sampler["ratios"])
  detail["sampler"] = sampler["detail"]

  result = {
      "meta": {"device_kind": str(device.device_kind), "backend": jax.default_backend(),
               "jax": jax.__version__, "machine": platform.machine(),
               "cpus": os.cpu_count(), "sizes": sizes, "dtype": args.dtype,
               "tiny": args.tiny, "only": args.only, "rounds": steps["rounds"], "steps": args.steps,
               "draws": draws, "budget_s": args.budget_s,
               "wall_s": args.budget_s - deadline.left(), "compilation_cache": False},
      "ratios": ratios, "detail": detail, "skipped": skipped,
  }
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "gpu.json")
  with open(path, "w") as f:
    json.dump(_finite_or_none(result), f, indent=1)
  print(markdown(result))
  print(f"\nwrote {path} ({result['meta']['wall_s']:.0f} s)")
  if skipped:
    print(f"benchmarks/gpu.py: incomplete, the time budget ran out before: "
          f"{', '.join(skipped)}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
