"""What a ``lax.cond`` that is *not taken* costs per step, as a function of its branch's size.

HESSO's selection and CRIC's probes, cycles and final ranking sit behind ``lax.cond``s, so a
warm-up step runs none of them. This benchmark measures what such a cond still costs on the
current backend: a donated elementwise step (4096 floats, a stand-in for the base update) with one
``lax.cond`` whose predicate is always false, and whose taken branch would run ``n`` steps of an
elementwise op, a reshape-sum and a reverse on a 2048-vector (the size of HESSO's ``(G,)``
bookkeeping). ``n = 0`` is the cond with an empty branch; ``plain`` has no cond at all.

If the not-taken branch were free, every row would cost what ``n = 0`` costs. On XLA:CPU it does
not: the step's time grows with the size of the branch it never runs (the slope, in microseconds
per branch step, is printed), so HESSO's warm-up step carries a fixed cost set by the size of its
selection branch, independent of the model's size. The same is measured with and without a large
``malloc`` trim threshold (``--no-malloc-env`` skips that), to separate allocator work from the
runtime's per-op work.

    python -m benchmarks.bench_cond [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.common import interleaved_clocks, markdown_table, table, write_json

SIZES = (0, 10, 25, 50, 100)


def _branch(n: int):
  def run(m):
    v = m.astype(jnp.float32)
    for i in range(n):  # each step: an elementwise op, a small reduction and a reverse
      v = (v * (i + 1.0)).reshape(64, 32).sum(0).repeat(64) + v[::-1]
    return v > 0
  return run


def _step(n: int | None):
  def step(x, m, c):
    y = x * 0.9 + 1.0
    if n is None:
      return y, m
    return y, lax.cond(c > 100, _branch(n), lambda mm: mm, m)  # c is 0: never taken
  return jax.jit(step, donate_argnums=(0, 1))


class _Carry:
  def __init__(self, fn):
    self.fn, self.x, self.m = fn, jnp.ones((4096,)), jnp.zeros((2048,), bool)
    self.c = jnp.int32(0)

  def __call__(self):
    self.x, self.m = self.fn(self.x, self.m, self.c)
    return self.x


def measure(repeats: int, inner: int) -> list[dict]:
  calls = {"plain": _Carry(_step(None))}
  calls.update({f"n={n}": _Carry(_step(n)) for n in SIZES})
  clocks = interleaved_clocks(calls, repeats=repeats, inner=inner, warmup=5)
  us = {c: {name: 1e6 * float(np.median(t)) for name, t in ts.items()} for c, ts in clocks.items()}
  return [{"variant": name, "n": None if name == "plain" else int(name[2:]),
           "wall_us": us["wall"][name], "cpu_us": us["cpu"][name],
           "over_plain_wall_us": us["wall"][name] - us["wall"]["plain"]} for name in calls]


def _slope(rows: list[dict], key: str) -> float:
  pts = [(r["n"], r[key]) for r in rows if r["n"] is not None]
  n, t = np.array(pts, dtype=float).T
  return float(np.polyfit(n, t, 1)[0])


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true", help="fewer repeats")
  ap.add_argument("--no-malloc-env", action="store_true",
                  help="do not re-run with a large malloc trim/mmap threshold")
  ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  repeats, inner = (30, 5) if a.small else (200, 10)
  rows = measure(repeats, inner)
  out = {"small": a.small, "repeats": repeats, "inner": inner, "rows": rows,
         "slope_wall_us_per_op": _slope(rows, "wall_us"),
         "slope_cpu_us_per_op": _slope(rows, "cpu_us"),
         "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}
  if a._child:
    print("CHILD-JSON", json.dumps(out))
    return
  runs = {"default": out}
  if not a.no_malloc_env:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1000000000",
               MALLOC_TRIM_THRESHOLD_="2000000000", MALLOC_TOP_PAD_="268435456")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_cond", "--_child"]
                          + (["--small"] if a.small else []), env=env, capture_output=True,
                          text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("CHILD-JSON "))
    runs["no_malloc_trim"] = json.loads(line[len("CHILD-JSON "):])
  write_json("cond", {"runs": runs, "backend": jax.default_backend()})
  fmt = {"wall_us": "{:.1f}", "cpu_us": "{:.1f}", "over_plain_wall_us": "{:.1f}"}
  for name, r in runs.items():
    print(f"\n== a never-taken lax.cond, by the size of its branch ({name}) ==")
    print(table(r["rows"], ["variant", "wall_us", "cpu_us", "over_plain_wall_us"], fmt))
    print(f"slope: {r['slope_wall_us_per_op']:.2f} us (wall) / {r['slope_cpu_us_per_op']:.2f} us "
          "(cpu) per branch op")
  print()
  over = {k: {x["n"]: x["over_plain_wall_us"] for x in r["rows"]} for k, r in runs.items()}
  print(markdown_table([{"allocator": k, "n=0 over plain": over[k][0],
                         "n=100 over plain": over[k][max(SIZES)],
                         "us per branch op": r["slope_wall_us_per_op"]} for k, r in runs.items()],
                       ["allocator", "n=0 over plain", "n=100 over plain", "us per branch op"],
                       {"n=0 over plain": "{:.1f}", "n=100 over plain": "{:.1f}",
                        "us per branch op": "{:.2f}"}))


if __name__ == "__main__":
  main()
