"""What a ``lax.cond`` that is *not taken* costs per step, and what in its branch makes it cost.

HESSO's selection and CRIC's probes, cycles and final ranking sit behind ``lax.cond``s, so a
warm-up step runs none of them. This benchmark measures what such a cond still costs on the
current backend: a donated elementwise step (4096 floats, a stand-in for the base update) with one
``lax.cond`` whose predicate is always false. Two kinds of branch, ``n`` steps each, on a
2048-vector (the size of HESSO's ``(G,)`` bookkeeping):

* ``reduce``: an elementwise op, a reshape-sum and a reverse per step (one reduction each);
* ``matmul``: a small matrix product and an add per step (no reduction).

``n = 0`` is the cond with an empty branch; ``plain`` has no cond at all. Each row also counts the
compiled program's buffer allocations (``benchmarks.common.compile_counting_allocations``), and among them
the *thread-local* ones: the scalar values of the sub-computations that reductions, sorts and
scatters call.

If the not-taken branch were free, every row would cost what ``n = 0`` costs. On XLA:CPU the
``reduce`` rows grow with ``n`` and the ``matmul`` rows barely do, although both branches compile
to a similar number of kernels: the cost follows the thread-local allocations (printed as
microseconds per allocation), which the runtime handles on every execution of the program. So a
branch is cheap to carry when it has few reductions, sorts and scatters, which is how HESSO's
selection branch is written. The same is measured with and without a large ``malloc`` trim
threshold (``--no-malloc-env`` skips that), to separate allocator work from the runtime's.

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

from benchmarks.common import (
  compile_counting_allocations,
  interleaved_clocks,
  markdown_table,
  table,
  write_json,
)

SIZES = {"reduce": (0, 10, 25, 50, 100), "matmul": (10, 50, 100)}


def _branch(n: int, kind: str = "reduce"):
  def run(m):
    v = m.astype(jnp.float32)
    for i in range(n):
      if kind == "reduce":  # an elementwise op, a small reduction and a reverse
        v = (v * (i + 1.0)).reshape(64, 32).sum(0).repeat(64) + v[::-1]
      else:  # a small matrix product: no sub-computation
        v = (v.reshape(64, 32) @ jnp.full((32, 32), i + 1.0)).reshape(-1) + v
    return v > 0
  return run


def _step(n: int | None, kind: str = "reduce"):
  def step(x, m, c):
    y = x * 0.9 + 1.0
    if n is None:
      return y, m
    return y, lax.cond(c > 100, _branch(n, kind), lambda mm: mm, m)  # c is 0: never taken
  return jax.jit(step, donate_argnums=(0, 1))


def _args():
  return jnp.ones((4096,)), jnp.zeros((2048,), bool), jnp.int32(0)


class _Carry:
  def __init__(self, fn):
    self.fn, (self.x, self.m, self.c) = fn, _args()

  def __call__(self):
    self.x, self.m = self.fn(self.x, self.m, self.c)
    return self.x


def _variants() -> dict[str, tuple[str | None, int | None]]:
  out: dict[str, tuple[str | None, int | None]] = {"plain": (None, None)}
  for kind, sizes in SIZES.items():
    out.update({f"{kind} n={n}": (kind, n) for n in sizes})
  return out


def measure(repeats: int, inner: int) -> list[dict]:
  variants = _variants()
  calls, allocs = {}, {}
  for name, (kind, n) in variants.items():
    step, allocs[name] = compile_counting_allocations(_step(n, kind or "reduce").lower(*_args()))
    calls[name] = _Carry(step)
  clocks = interleaved_clocks(calls, repeats=repeats, inner=inner, warmup=5)
  us = {c: {name: 1e6 * float(np.median(t)) for name, t in ts.items()} for c, ts in clocks.items()}
  return [{"variant": name, "kind": kind, "n": n, "wall_us": us["wall"][name],
           "cpu_us": us["cpu"][name], "over_plain_wall_us": us["wall"][name] - us["wall"]["plain"],
           "allocations": allocs[name].get("total"),
           "thread_local": allocs[name].get("thread_local")}
          for name, (kind, n) in variants.items()]


def _slope(rows: list[dict], key: str, x: str = "n", kind: str | None = "reduce") -> float:
  """Least-squares slope of ``key`` against ``x`` over the rows of ``kind`` (every kind: None)."""
  pts = [(r[x], r[key]) for r in rows
         if r["kind"] is not None and kind in (None, r["kind"]) and r[x] is not None]
  n, t = np.array(pts, dtype=float).T
  return float(np.polyfit(n, t, 1)[0]) if np.ptp(n) > 0 else float("nan")


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
         "matmul_slope_wall_us_per_op": _slope(rows, "wall_us", kind="matmul"),
         # over both kinds: time against thread-local allocations
         "slope_wall_us_per_thread_local": _slope(rows, "wall_us", "thread_local", kind=None),
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
  cols = ["variant", "wall_us", "cpu_us", "over_plain_wall_us", "allocations", "thread_local"]
  for name, r in runs.items():
    print(f"\n== a never-taken lax.cond, by the size and kind of its branch ({name}) ==")
    print(table(r["rows"], cols, fmt))
    print(f"slope (reduce): {r['slope_wall_us_per_op']:.2f} us (wall) / "
          f"{r['slope_cpu_us_per_op']:.2f} us (cpu) per branch step; (matmul): "
          f"{r['matmul_slope_wall_us_per_op']:.2f} us (wall) per branch step; "
          f"{r['slope_wall_us_per_thread_local']:.2f} us (wall) per thread-local allocation")
  print()
  over = {k: {x["variant"]: x["over_plain_wall_us"] for x in r["rows"]} for k, r in runs.items()}
  big = max(SIZES["matmul"])
  print(markdown_table(
    [{"allocator": k, "reduce n=0": over[k]["reduce n=0"], f"reduce n={big}": over[k][f"reduce n={big}"],
      f"matmul n={big}": over[k][f"matmul n={big}"],
      "us per thread-local": r["slope_wall_us_per_thread_local"]} for k, r in runs.items()],
    ["allocator", "reduce n=0", f"reduce n={big}", f"matmul n={big}", "us per thread-local"],
    {"reduce n=0": "{:.1f}", f"reduce n={big}": "{:.1f}", f"matmul n={big}": "{:.1f}",
     "us per thread-local": "{:.2f}"}))


if __name__ == "__main__":
  main()
