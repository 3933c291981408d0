"""What each compiled kernel of a warm-up step costs, from the JAX profiler (per-thunk times).

``bench_warmup`` says how much a warm-up step costs over SGD; this says where, kernel by kernel.
The donated optimizer-only steps of SGD with momentum, of HESSO in its warm-up and of HESSO-CRIC
in its warm-up (the ``bench_step`` setup on the 1.9 M MLP; ``--widths cnn`` for the digits CNN)
are run interleaved under ``jax.profiler.trace``; every executed thunk (a fused kernel, a copy, a
``lax.cond``) is a trace event with its duration, and the events of one execution share a
``run_id``. Per step the script reports the summed time of the *large* kernels (over
``--large-us``: the per-parameter passes) and of the *small* ones (bookkeeping on ``(G,)`` masks
and scalars, copies, conds), the number of small ones, and the most expensive small kernels by
name. Profiler timings are not comparable across programs for the large kernels (a traced run is
noisier than ``bench_warmup``'s clocks), but the small-kernel totals are the fixed cost a step
carries on this backend.

    python -m benchmarks.bench_thunks [--small] [--widths 1024,cnn] [--steps N]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hesso_jax as hj
from benchmarks.bench_step import (
  CRIC_KW,
  HESSO_KW,
  _Carry,
  _cnn_task,
  _mlp_task,
  _timed_opt,
  _timed_train,
)
from benchmarks.common import table, write_json


def _calls(width: int | str, train: bool = False) -> dict[str, _Carry]:
  """The donated optimizer-only step (``train``: the whole train step) of SGD with momentum,
  HESSO and HESSO-CRIC on bench_step's MLP of this width (or its digits CNN), carried."""
  key = jax.random.PRNGKey(0)
  params, aux, loss_fn, batch, space = (_cnn_task(key) if width == "cnn"
                                        else _mlp_task(key, int(width)))
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 1e-2), params)
  base = optax.sgd(1e-2, momentum=0.9)
  txs = {"sgd": (base, False), "hesso": (hj.hesso(base, space, **HESSO_KW), False),
         "cric": (hj.hesso_cric(base, space, **CRIC_KW), True)}
  if train:
    return {name: _Carry(_timed_train(tx, loss_fn, cric, True), params, aux, tx.init(params),
                         batch, True, True) for name, (tx, cric) in txs.items()}
  return {name: _Carry(_timed_opt(tx, cric, True), params, {}, tx.init(params), (grads,), False,
                       True) for name, (tx, cric) in txs.items()}


def _events_by_run(trace_dir: str) -> list[list[dict]]:
  """The thunk events of the trace, one list per execution, in execution order."""
  path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as fh:
    events = json.load(fh)["traceEvents"]
  runs: dict[str, list[dict]] = collections.defaultdict(list)
  for e in events:
    args = e.get("args", {})
    if e.get("ph") == "X" and "run_id" in args and "hlo_op" in args:
      runs[args["run_id"]].append(e)
  return sorted(runs.values(), key=lambda es: min(x["ts"] for x in es))


def bench(width: int | str, steps: int, large_us: float) -> list[dict]:
  calls = _calls(width)
  names = list(calls)
  for _ in range(5):  # compile and warm up
    for c in calls.values():
      jax.block_until_ready(c())
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(steps):
        for c in calls.values():
          jax.block_until_ready(c())
    runs = _events_by_run(d)
  if len(runs) != steps * len(names):
    raise RuntimeError(f"expected {steps * len(names)} executions in the trace, got {len(runs)}")
  rows = []
  for i, name in enumerate(names):
    mine = runs[i :: len(names)]  # the calls alternate in this order
    large = [sum(e["dur"] for e in es if e["dur"] > large_us) for es in mine]
    small = [[e for e in es if e["dur"] <= large_us] for es in mine]
    per_kernel: dict[str, list[float]] = collections.defaultdict(list)
    for es in small:
      for e in es:
        per_kernel[e["name"]].append(e["dur"])
    top = sorted(((float(np.median(v)), k) for k, v in per_kernel.items()), reverse=True)[:8]
    rows.append({"model": str(width), "optimizer": name,
                 "large_us": float(np.median(large)),
                 "small_us": float(np.median([sum(e["dur"] for e in es) for es in small])),
                 "small_kernels": int(np.median([len(es) for es in small])),
                 "top_small": [{"kernel": k, "us": round(t, 1)} for t, k in top]})
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true", help="a width-256 MLP, few steps (a check)")
  ap.add_argument("--widths", help="comma-separated MLP widths, or 'cnn' (default: 1024,cnn)")
  ap.add_argument("--steps", type=int, help="traced steps per optimizer (default 60; --small 5)")
  ap.add_argument("--large-us", type=float,
                  help="kernels longer than this (µs) count as large (default 100; --small 20)")
  a = ap.parse_args(argv)
  widths = ("256",) if a.small else ("1024", "cnn")
  widths = tuple(a.widths.split(",")) if a.widths else widths
  steps = a.steps or (5 if a.small else 60)
  large_us = a.large_us or (20.0 if a.small else 100.0)
  rows = [r for w in widths for r in bench(w, steps, large_us)]
  write_json("thunks", {"small": a.small, "steps": steps, "large_us": large_us, "rows": rows})
  print("\n== per-step kernel time from the profiler (donated optimizer-only step; HESSO and "
        "HESSO-CRIC in their warm-up) ==")
  print(table(rows, ["model", "optimizer", "large_us", "small_us", "small_kernels"],
              {"large_us": "{:.0f}", "small_us": "{:.1f}"}))
  for r in rows:
    tops = ", ".join(f"{t['kernel']} {t['us']:.1f}" for t in r["top_small"])
    print(f"  {r['model']}/{r['optimizer']}: {tops}")


if __name__ == "__main__":
  main()
