"""HESSO / HESSO-CRIC on the accelerator at hand: step time per phase, memory, compile, inference.

Two models with synthetic data: a ResNet-50-shaped CNN (flax.linen, bottleneck blocks 3/4/6/3,
BatchNorm in train mode, fp32, 224x224x3) and a ~1B-parameter Llama-shaped decoder
(``benchmarks/llama_nnx.py`` "1B": d 2048, 16 layers, FFN 5632, vocab 32000, bf16 params,
layers stacked with ``nnx.scan``). For each model it measures

(a) the jitted train step (grad + update + apply) of ``hj.hesso(adam)`` and ``hj.hesso_cric(adam)``
    relative to plain ``adam``, separately in every phase of the schedule: HESSO warm-up /
    selection (a period's first step: saliency + global ranking) / forgetting; CRIC warm-up /
    probing / cycle / selection (the termination step) / forgetting (hybrid training). Each phase
    is timed at a state reached by running the schedule; the same state is fed every call, and the
    plain step is timed interleaved with it (ratios: median of per-round ratios);
(b) memory: the compiled step's ``memory_analysis()`` (arguments + outputs + temporaries -
    aliased; exact per variant, also on CPU), the optimizer state's bytes, and the device's
    ``peak_bytes_in_use`` high-water mark after each variant ran ("n/a" where the backend has no
    ``memory_stats()``, e.g. CPU);
(c) compile time (``lower`` + ``compile``) of each variant;
(d) inference latency of ``hj.compress``-ed models vs the full model at 30/50/70% group sparsity
    (lowest-norm groups per space zeroed) with ``multiple_of`` 1, 8 and 128, against the FLOP
    ratio (``hj.count``).

    python -m benchmarks.bench_accelerator            # the full run (one GPU: < 8 min)
    python -m benchmarks.bench_accelerator --tiny     # tiny shapes, one sparsity: CPU smoke run

Writes ``results/bench_accelerator.json`` (or ``--out``) and prints readable tables. A time
budget (``--budget-s``) skips the remaining inference variants (recorded as skipped) rather than
overrunning.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hesso_jax as hj
from benchmarks.common import RESULTS, env_info, interleaved, paired_ratio, table

# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
  """ResNet-50 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (x4), BN after each, projection shortcut."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    y = nn.relu(bn()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
    y = nn.relu(bn()(nn.Conv(self.features, (3, 3), self.strides, padding="SAME",
                             use_bias=False)(y)))
    y = bn()(nn.Conv(4 * self.features, (1, 1), use_bias=False)(y))
    if self.strides != 1 or x.shape[-1] != 4 * self.features:
      x = bn()(nn.Conv(4 * self.features, (1, 1), self.strides, use_bias=False)(x))
    return nn.relu(x + y)


class ResNet50(nn.Module):
  """ResNet-50's shape (stem 7x7/2 + max-pool, stages of bottlenecks); widths, depths settable."""

  widths: tuple = (64, 128, 256, 512)
  depths: tuple = (3, 4, 6, 3)
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.widths[0], (7, 7), 2, padding="SAME", use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
    for s, (w, d) in enumerate(zip(self.widths, self.depths, strict=True)):
      for b in range(d):
        x = Bottleneck(w, 2 if (s > 0 and b == 0) else 1)(x, train)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


SHAPES = {
    "full": dict(resnet=dict(widths=(64, 128, 256, 512), depths=(3, 4, 6, 3), classes=1000,
                             image=224, batch=64),
                 llama=dict(config="1B", batch=8, seq=512), reps=10,
                 sparsities=(0.3, 0.5, 0.7), multiples=(1, 8, 128), xla_options={}),
    # every code path, smallest shapes: two bottleneck stages, one sparsity; XLA's backend
    # optimisation off (halves CPU compile time; tiny timings mean nothing anyway)
    "tiny": dict(resnet=dict(widths=(4, 8), depths=(1, 1), classes=10, image=16, batch=2),
                 llama=dict(config="tiny", batch=2, seq=8), reps=2,
                 sparsities=(0.5,), multiples=(1, 8, 128),
                 xla_options={"xla_backend_optimization_level": 0}),
}


@dataclasses.dataclass
class Task:
  """A model ready to train and to compress.

  ``loss(params, extra, x, y) -> (loss, new_extra)`` (``extra``: BatchNorm statistics or ``{}``);
  ``infer(variables, x)`` is the inference function given to ``hj.compress`` with
  ``variables = merge(params, extra)``; ``space`` is over ``params`` (for the optimizers),
  ``infer_space`` over ``variables`` (for ``compress``).
  """

  name: str
  params: Any
  extra: Any
  batch: tuple
  loss: Callable
  infer: Callable
  merge: Callable
  space: Any
  infer_space: Any
  infer_x: Any


def resnet_task(s: dict) -> Task:
  model = ResNet50(widths=s["widths"], depths=s["depths"], num_classes=s["classes"])
  key = jax.random.key(0)
  x = jax.random.normal(key, (s["batch"], s["image"], s["image"], 3), jnp.float32)
  y = jax.random.randint(key, (s["batch"],), 0, s["classes"])
  v = jax.jit(lambda k: model.init(k, x[:1]))(key)

  def loss(params, bs, x, y):
    logits, new = model.apply({"params": params, "batch_stats": bs}, x, train=True,
                              mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

  infer = lambda v, x: model.apply(v, x, train=False)
  merge = lambda p, bs: {"params": p, "batch_stats": bs}
  full_space = hj.discover(infer, v, x)
  return Task("resnet50", v["params"], v["batch_stats"], (x, y), loss, infer, merge,
              full_space.subtree("params"), full_space, x)


def llama_task(s: dict) -> Task:
  from flax import nnx

  from benchmarks.llama_nnx import CONFIGS, abstract_model

  cfg = dataclasses.replace(CONFIGS[s["config"]], scan=True, max_len=s["seq"])
  graphdef, abstract = abstract_model(cfg)

  def init(key):  # bf16 weights straight from the abstract shapes (nothing materialised twice)
    flat, tdef = jax.tree_util.tree_flatten_with_path(abstract)
    keys = jax.random.split(key, len(flat))
    out = [jnp.ones(a.shape, jnp.bfloat16) if "scale" in jax.tree_util.keystr(p)
           else (0.02 * jax.random.normal(k, a.shape)).astype(jnp.bfloat16)
           for (p, a), k in zip(flat, keys, strict=True)]
    return jax.tree_util.tree_unflatten(tdef, out)

  params = jax.jit(init)(jax.random.key(0))
  ids = jax.random.randint(jax.random.key(1), (s["batch"], s["seq"]), 0, cfg.vocab)
  infer = lambda p, ids: nnx.merge(graphdef, p)(ids)

  def loss(params, extra, ids, tgt):
    logits = infer(params, ids).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean(), extra

  abs_ids = jax.ShapeDtypeStruct(ids.shape, ids.dtype)
  space = hj.discover(infer, jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params), abs_ids)
  return Task(f"llama_{s['config']}", params, {}, (ids, jnp.roll(ids, -1, axis=1)), loss, infer,
              lambda p, e: p, space, space, ids)


# ----------------------------------------------------------------------------------------------
# (a)-(c): train step per phase, memory, compile time
# ----------------------------------------------------------------------------------------------

HESSO_KW = dict(warmup_steps=2, pruning_steps=4, pruning_periods=2)
CRIC_KW = dict(start_cric_step=1, sampling_steps=2, max_cycle_period=1, hybrid_training_steps=2,
               trial_sparsities=(0.5,))


def make_tx(kind: str, space) -> optax.GradientTransformation:
  base = optax.adam(1e-4)
  if kind == "plain":
    return base
  if kind == "hesso":
    return hj.hesso(base, space, target_group_sparsity=0.5, **HESSO_KW)
  return hj.hesso_cric(base, space, target_group_sparsity=0.5, **CRIC_KW)


def phase_of(kind: str, t: int, before, after, sched: dict) -> str:
  """The phase of step ``t`` (0-based) of ``kind``'s schedule, from the states around it."""
  if kind == "hesso":
    w, period = HESSO_KW["warmup_steps"], HESSO_KW["pruning_steps"] // HESSO_KW["pruning_periods"]
    if t < w:
      return "warmup"
    if t < w + HESSO_KW["pruning_steps"]:
      return "select" if (t - w) % period == 0 else "forget"
    return "after"
  if t < sched["probe_start"]:
    return "warmup"
  if t < sched["cycles_start"]:
    return "probe"
  end_before, end_after = int(before.end), int(after.end)
  if end_before == np.iinfo(np.int32).max:
    return "select" if end_after != end_before else "cycle"
  return "forget" if t < end_before + CRIC_KW["hybrid_training_steps"] else "after"


def _step_fn(task: Task, tx) -> Callable:
  def step(params, extra, state, x, y):
    (loss, extra), g = jax.value_and_grad(task.loss, has_aux=True)(params, extra, x, y)
    u, state = tx.update(g, state, params, value=loss)
    return optax.apply_updates(params, u), extra, state, loss

  return step


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _nbytes(tree) -> int:
  leaves = jax.tree_util.tree_leaves(tree)
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves))


def _peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def compile_step(task: Task, tx, state, xla_options: dict) -> tuple[Callable, dict]:
  """AOT-compile the step; its compile time and ``memory_analysis()``."""
  t0 = time.perf_counter()
  lowered = jax.jit(_step_fn(task, tx)).lower(task.params, task.extra, state, *task.batch)
  t1 = time.perf_counter()
  compiled = lowered.compile(xla_options)
  t2 = time.perf_counter()
  info = {"lower_s": t1 - t0, "compile_s": t2 - t1}
  try:
    m = compiled.memory_analysis()
    info["compiled_bytes"] = int(m.argument_size_in_bytes + m.output_size_in_bytes
                                 + m.temp_size_in_bytes - m.alias_size_in_bytes)
    info["temp_bytes"] = int(m.temp_size_in_bytes)
  except Exception as e:  # not every backend implements it
    info["compiled_bytes"] = info["temp_bytes"] = None
    info["memory_analysis_error"] = f"{type(e).__name__}: {e}"[:200]
  return compiled, info


def train_section(task: Task, shapes: dict) -> tuple[list, list]:
  """Rows of (a) per phase and rows of (b)+(c) per variant."""
  reps, opts = shapes["reps"], shapes["xla_options"]
  plain_tx = make_tx("plain", task.space)
  plain, info = compile_step(task, plain_tx, plain_tx.init(task.params), opts)
  p_state = plain_tx.init(task.params)
  p_args = (task.params, task.extra, p_state)
  jax.block_until_ready(plain(*p_args, *task.batch))
  mem_rows = [dict(model=task.name, variant="plain", state_bytes=_nbytes(p_state),
                   peak_bytes=_peak_bytes(), **info)]
  phase_rows = []
  sched = hj.optim.cric.cric_schedule(task.space, **{k: v for k, v in CRIC_KW.items()})
  for kind in ("hesso", "cric"):
    tx = make_tx(kind, task.space)
    state = tx.init(task.params)
    fn, info = compile_step(task, tx, state, opts)
    params, extra, seen, t = task.params, task.extra, set(), 0
    while True:
      out = fn(params, extra, state, *task.batch)
      phase = phase_of(kind, t, state, out[2], sched)
      if phase == "after":
        break
      if t > sched["latest_done"] + HESSO_KW["warmup_steps"] + HESSO_KW["pruning_steps"]:
        raise RuntimeError(f"{task.name} {kind}: the schedule did not end by step {t}")
      if phase not in seen:  # the first step of each phase: time it against the plain step
        seen.add(phase)
        times = interleaved({"plain": lambda: plain(*p_args, *task.batch),
                             kind: lambda: fn(params, extra, state, *task.batch)},  # noqa: F821 (the loop's, called here)
                            repeats=reps)
        r = paired_ratio(times[kind], times["plain"])
        phase_rows.append(dict(model=task.name, variant=kind, phase=phase, step=t,
                               ratio=r["median"], q25=r["q25"], q75=r["q75"],
                               min_ratio=r["min_ratio"], ms=1e3 * float(np.median(times[kind])),
                               plain_ms=1e3 * float(np.median(times["plain"]))))
      params, extra, state = out[0], out[1], out[2]
      t += 1
    _log(f"{task.name} {kind}: compile {info['compile_s']:.1f}s, {t} steps")
    mem_rows.append(dict(model=task.name, variant=kind, state_bytes=_nbytes(state),
                         peak_bytes=_peak_bytes(),
                         pruned=int(np.sum(np.asarray(hj.pruned_mask(state)))),
                         num_groups=int(task.space.num_groups), **info))
    del state, out, params
  return phase_rows, mem_rows


# ----------------------------------------------------------------------------------------------
# (d): compressed inference
# ----------------------------------------------------------------------------------------------


def lowest_norm_keep(space, params, sparsity: float) -> np.ndarray:
  """Per prunable space: keep all but the floor(s*n) lowest-norm groups (at least one)."""
  norms = np.asarray(jax.device_get(space.group_norms(params))).astype(np.float64)
  keep = np.ones(space.num_groups, bool)
  for s, off in zip(space.prunable_spaces, space.group_offsets, strict=True):
    n = s.size
    drop = min(n - 1, int(np.floor(sparsity * n)))
    keep[off + np.argsort(norms[off:off + n], kind="stable")[:drop]] = False
  return keep


def inference_section(task: Task, shapes: dict, deadline: float) -> list:
  variables = task.merge(task.params, task.extra)
  full = jax.jit(task.infer, compiler_options=shapes["xla_options"])
  full_flops = hj.count(task.infer, variables, task.infer_x)["flops"]
  rows = []
  reps = shapes["reps"]
  for sp in shapes["sparsities"]:
    keep = lowest_norm_keep(task.infer_space, variables, sp)
    z = task.infer_space.zero_groups(variables, np.flatnonzero(~keep))
    for m in shapes["multiples"]:
      row = dict(model=task.name, sparsity=sp, multiple_of=m)
      if time.perf_counter() > deadline:
        rows.append({**row, "skipped": "time budget"})
        continue
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped groups are exactly zero; nothing to warn about
        small_fn, small = hj.compress(task.infer, z, task.infer_space, task.infer_x, keep=keep,
                                      multiple_of=m)
      small_jit = jax.jit(small_fn, compiler_options=shapes["xla_options"])
      ref = full(z, task.infer_x)  # the masked model: the function compress must keep
      err = float(jnp.max(jnp.abs(small_jit(small, task.infer_x).astype(jnp.float32)
                                  - ref.astype(jnp.float32))))
      times = interleaved({"full": lambda: full(variables, task.infer_x),
                           "small": lambda: small_jit(small, task.infer_x)}, repeats=reps)
      r = paired_ratio(times["small"], times["full"])
      flops = hj.count(small_fn, small, task.infer_x)["flops"]
      rows.append({**row, "flop_ratio": flops / full_flops, "latency_ratio": r["median"],
                   "min_ratio": r["min_ratio"], "full_ms": 1e3 * float(np.median(times["full"])),
                   "small_ms": 1e3 * float(np.median(times["small"])),
                   "param_ratio": _nbytes(small) / _nbytes(variables), "max_abs_err": err,
                   "out_scale": float(jnp.max(jnp.abs(ref.astype(jnp.float32)))),
                   "out_dtype": str(ref.dtype)})
      _log(f"{task.name} inference {sp:.0%} multiple_of={m} done")
  return rows


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def run(tiny: bool, models: list[str], budget_s: float) -> dict:
  shapes = SHAPES["tiny" if tiny else "full"]
  t_start = time.perf_counter()
  deadline = t_start + budget_s
  out = {"mode": "tiny" if tiny else "full", "xla_options": shapes["xla_options"],
         "phase_rows": [], "memory_rows": [],
         "inference_rows": [], "models": {}}
  for name in models:
    t0 = time.perf_counter()
    task = resnet_task(shapes["resnet"]) if name == "resnet" else llama_task(shapes["llama"])
    n = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(task.params)))
    out["models"][task.name] = dict(params=n, num_groups=int(task.space.num_groups),
                                    setup_s=time.perf_counter() - t0,
                                    prunable_spaces=len(task.space.prunable_spaces))
    _log(f"{task.name}: set up in {time.perf_counter() - t0:.1f}s")
    ph, mem = train_section(task, shapes)
    out["phase_rows"] += ph
    out["memory_rows"] += mem
    out["inference_rows"] += inference_section(task, shapes, deadline)
    out["models"][task.name]["seconds"] = time.perf_counter() - t0
    del task
  out["total_s"] = time.perf_counter() - t_start
  return out


def report(res: dict) -> str:
  mib = lambda b: "n/a" if b is None else f"{b / 2**20:.1f}"
  mem = [{**r, "state_MiB": mib(r["state_bytes"]), "compiled_MiB": mib(r["compiled_bytes"]),
          "peak_MiB": mib(r["peak_bytes"])} for r in res["memory_rows"]]
  parts = [
      f"backend {res['env']['backend']} ({len(res['env']['devices'])} devices), "
      f"mode {res['mode']}, "
      f"total {res['total_s']:.1f} s, XLA options {res['xla_options'] or 'default'}",
      "(a) train step time, variant / plain adam, by phase",
      table(res["phase_rows"], ["model", "variant", "phase", "step", "ratio", "q25", "q75",
                                "min_ratio", "ms", "plain_ms"]),
      "(b)+(c) memory and compile time (peak: device high-water mark after the variant ran)",
      table(mem, ["model", "variant", "state_MiB", "compiled_MiB", "peak_MiB", "lower_s",
                  "compile_s"]),
      "(d) compressed / full inference",
      table(res["inference_rows"], ["model", "sparsity", "multiple_of", "flop_ratio",
                                    "latency_ratio", "min_ratio", "param_ratio", "max_abs_err",
                                    "skipped"]),
  ]
  return "\n\n".join(parts)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU, CI)")
  ap.add_argument("--models", nargs="+", choices=["resnet", "llama"], default=["resnet", "llama"])
  ap.add_argument("--budget-s", type=float, default=420.0,
                  help="inference variants past this many seconds are skipped")
  ap.add_argument("--out", default=os.path.join(RESULTS, "bench_accelerator.json"))
  a = ap.parse_args(argv)
  res = {"benchmark": "accelerator", "env": env_info(), **run(a.tiny, a.models, a.budget_s)}
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as fh:
    json.dump(res, fh, indent=2, default=float)
  print(report(res))
  print(f"\nwritten: {a.out}")
  return res


if __name__ == "__main__":
  main()
