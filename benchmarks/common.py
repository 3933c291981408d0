"""Shared helpers: timing, JSON output, table printing."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def env_info() -> dict:
  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
          "platform": platform.platform(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def block(x):
  return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


#: The clocks :func:`interleaved_clocks` reads. ``wall``: elapsed time. ``cpu``: CPU time of this
#: process, all threads (``time.process_time``): the work done, without the time the (virtual)
#: machine spent running someone else, so it is far less noisy on a shared host.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_clocks(fns: dict[str, Callable[[], object]], repeats: int, inner: int = 1,
                       warmup: int = 2, prep: dict[str, Callable[[], object]] | None = None,
                       ) -> dict[str, dict[str, np.ndarray]]:
  """Time each zero-arg callable ``repeats`` times, interleaved round-robin (order rotated each
  round) so that background load hits all variants alike. Returns ``{clock: {name: per-call
  seconds}}`` for every clock in :data:`CLOCKS`, read around the same calls.

  ``prep[name]``, where given, runs untimed before each of ``name``'s calls (restoring a state
  that the call changes, so that every call runs the same phase)."""
  names = list(fns)
  prep = prep or {}
  if prep and inner != 1:
    raise ValueError(f"prep needs inner=1 (every timed call after its prep); got inner={inner}")
  nothing = lambda: None  # noqa: E731
  for n in names:
    for _ in range(warmup):
      prep.get(n, nothing)()
      block(fns[n]())
  times: dict[str, dict[str, list]] = {c: {n: [] for n in names} for c in CLOCKS}
  for r in range(repeats):
    order = names[r % len(names):] + names[:r % len(names)]
    for n in order:
      prep.get(n, nothing)()
      t0 = {c: f() for c, f in CLOCKS.items()}
      for _ in range(inner):
        out = fns[n]()
      block(out)
      for c, f in CLOCKS.items():
        times[c][n].append((f() - t0[c]) / inner)
  return {c: {n: np.asarray(v) for n, v in tc.items()} for c, tc in times.items()}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, inner: int = 1,
                warmup: int = 2) -> dict[str, np.ndarray]:
  """:func:`interleaved_clocks`' wall-clock times: ``{name: per-call seconds}``."""
  return interleaved_clocks(fns, repeats, inner, warmup)["wall"]


def paired_ratio(num: np.ndarray, den: np.ndarray) -> dict:
  """Median of per-round ratios (robust to load drift), its IQR, and the ratio of the fastest
  runs (min/min: the least-disturbed runs on a shared machine)."""
  r = num / den
  return {"median": float(np.median(r)), "q25": float(np.percentile(r, 25)),
          "q75": float(np.percentile(r, 75)), "min_ratio": float(np.min(num) / np.min(den))}


def clock_ratios(clocks: dict[str, dict[str, np.ndarray]], name: str, base: str,
                 base_label: str = "sgd") -> dict:
  """Per clock of :func:`interleaved_clocks`, ``name``'s median time and its :func:`paired_ratio`
  to ``base``: ``median_us``, ``<base_label>_us``, ``ratio``, ``q25``, ``q75``, ``min_ratio`` for
  wall time, the same prefixed ``<clock>_`` for the others."""
  row: dict = {}
  for clock, times in clocks.items():
    pre = "" if clock == "wall" else f"{clock}_"
    r = paired_ratio(times[name], times[base])
    row.update({f"{pre}median_us": 1e6 * float(np.median(times[name])),
                f"{pre}{base_label}_us": 1e6 * float(np.median(times[base])),
                f"{pre}ratio": r["median"], f"{pre}q25": r["q25"], f"{pre}q75": r["q75"],
                # best round of each against the best round of the base: the cost without
                # interference from whatever else runs (the medians carry that noise)
                f"{pre}min_ratio": r["min_ratio"]})
  return row


def compile_patched(patches: Sequence[Any], lower: Callable[[], Any]) -> tuple[Any, dict]:
  """:func:`compile_counting_allocations` of ``lower()`` with the ``unittest.mock`` patches
  active while it traces and compiles (the ablation variants of bench_warmup / bench_cycle)."""
  with contextlib.ExitStack() as stack:
    for p in patches:
      stack.enter_context(p)
    return compile_counting_allocations(lower())


def _cell(fmt: dict, c: str, v) -> str:
  if v is None:
    return "-"
  if c in fmt:
    return fmt[c].format(v)
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(rows: Sequence[dict], cols: Sequence[str], fmt: dict | None = None) -> str:
  fmt = fmt or {}
  cells = [[_cell(fmt, c, r.get(c)) for c in cols] for r in rows]
  w = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
  line = "  ".join(c.rjust(w[i]) for i, c in enumerate(cols))
  out = [line, "-" * len(line)]
  out += ["  ".join(x[i].rjust(w[i]) for i in range(len(cols))) for x in cells]
  return "\n".join(out)


def markdown_table(rows: Sequence[dict], cols: Sequence[str], fmt: dict | None = None) -> str:
  fmt = fmt or {}
  out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
  out += ["| " + " | ".join(_cell(fmt, c, r.get(c)) for c in cols) + " |" for r in rows]
  return "\n".join(out)


def write_json(name: str, payload: dict) -> str:
  os.makedirs(RESULTS, exist_ok=True)
  path = os.path.join(RESULTS, f"bench_{name}.json")
  payload = {"benchmark": name, "env": env_info(), **payload}
  with open(path, "w") as fh:
    json.dump(payload, fh, indent=2, default=float)
  print(json.dumps(payload, indent=2, default=float))
  return path


def compile_counting_allocations(lowered) -> tuple[Any, dict]:
  """Compile ``lowered`` (a ``jax.jit(f).lower(...)``) once, with XLA's dump on, and return the
  executable with the count of its buffer allocations: ``total`` and ``thread_local``, and the
  size of its temporary buffer (``temp_bytes``: XLA:CPU allocates and frees it on every execution;
  ``benchmarks/bench_perf.py``).
  Thread-local ones are the scalar values of the sub-computations that reductions, sorts and
  scatters call; on XLA:CPU each allocation is a per-execution cost, even inside a ``lax.cond``
  branch that is not taken (``benchmarks/bench_cond.py``). The counts are ``{}`` when the backend
  writes no buffer assignment, and when JAX's persistent compilation cache serves the executable
  (then nothing is compiled, and the dump options are not part of the cache key)."""
  with tempfile.TemporaryDirectory() as d:
    compiled = lowered.compile(compiler_options={"xla_dump_to": d})
    files = glob.glob(os.path.join(d, "*after_optimizations-buffer-assignment.txt"))
    if not files:
      return compiled, {}
    with open(max(files, key=os.path.getsize)) as f:
      text = f.read()
  allocs = re.findall(r"^allocation \d+: size \d+, ([^\n]*)$", text, flags=re.M)
  temp = re.findall(r"^allocation \d+: size (\d+), preallocated-temp", text, flags=re.M)
  return compiled, {"total": len(allocs),
                    "thread_local": sum("thread-local" in a for a in allocs),
                    "temp_bytes": sum(int(t) for t in temp)}
