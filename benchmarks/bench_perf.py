"""Where a warm-up step's extra CPU time goes, by runtime component (Linux ``perf`` samples).

``bench_warmup`` says how much HESSO's warm-up step costs over SGD's, ``bench_thunks`` which
compiled kernels run. This benchmark samples the whole process with ``perf record`` (CPU clock,
every thread) while it runs one donated optimizer-only step in a loop (the ``bench_thunks``
setup: SGD with momentum, HESSO and HESSO-CRIC in their warm-up, on the MLP of ``--widths``), and
sorts the samples by where they fall:

* ``kernels``: the compiled kernels themselves (perf's ``[JIT]`` code) and the library kernels
  they call (YNNPACK's matrix products and reductions);
* ``malloc``: glibc's allocator (``malloc``/``free``/``memalign`` and ``malloc_consolidate``,
  which a ``free`` of a chunk of 64 KiB or more runs: the compiled step's temporary buffer is
  allocated and freed on every execution);
* ``thread pool``: the intra-op thread pool (Eigen's run queues and work stealing, futexes,
  context switches): dispatching kernels to the pool and the workers spinning for the next;
* ``runtime``: the rest of XLA's CPU runtime and PjRt (executing the thunk sequence, buffers);
* ``dispatch``: JAX's C++ call path (argument flattening, array objects);
* ``python`` and ``os`` (the rest of the kernel's time) and ``other``.

Each optimizer runs in its own process (compiled once, warmed up, then sampled for
``--seconds``; ``--train``: the whole donated train step, forward and backward included); the
process stamps every step, so the samples are divided by the number of steps
that ran inside the sampling window: microseconds of CPU time per step, per component. ``sgd`` is
sampled twice, first and last (``sgd_again``), and the extra of every run over the mean of the
two SGD runs is split by component (the two SGD rows then show how far "no difference" reads
on this machine: the drift between the first and the last run, halved). Needs ``perf`` (Linux) with
permission to attach to a child process.

    python -m benchmarks.bench_perf [--small] [--train] [--widths 1024] [--seconds 12]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax

from benchmarks.bench_thunks import _calls
from benchmarks.bench_warmup import no_selection
from benchmarks.common import table, write_json

#: component -> (dso pattern, symbol pattern) alternatives; the first component that matches wins
COMPONENTS: dict[str, tuple[tuple[str, str], ...]] = {
  # compiled kernels and the library kernels XLA:CPU calls (YNNPACK's matmuls and reductions)
  "kernels": ((r"^\[JIT\]", r""), (r"", r"^ynn::|^xnn_|^slinky::")),
  "malloc": ((r"^libc\.so", r"malloc|free|memalign|consolidate|unlink_chunk|realloc|calloc"),),
  "thread pool": ((r"", r"Eigen::|ThreadPool|RunQueue|EigenEnvironment|futex|finish_task_switch"
                       r"|condition_variable|pthread_cond|sched_yield|Worker::Parallelize"),),
  "runtime": ((r"^libjax_common", r"xla::|tsl::|absl::|stream_executor"),),
  "dispatch": ((r"^libjax_common", r"jax::|nanobind::|nb::"),),
  "python": ((r"^libpython|^_multiarray|^python", r""),),
  "os": ((r"^\[kernel", r""),),
}


def component(dso: str, symbol: str) -> str:
  """The :data:`COMPONENTS` entry a perf sample's ``(dso, symbol)`` belongs to (or ``other``)."""
  for name, alternatives in COMPONENTS.items():
    if any(re.search(d, dso) and re.search(s, symbol) for d, s in alternatives):
      return name
  return "other"


def parse_report(text: str) -> dict[tuple[str, str], int]:
  """Samples per ``(component, symbol)`` from ``perf report -n --sort dso,symbol --stdio``
  output (all compiled kernels count as one symbol, ``jit``)."""
  out: dict[tuple[str, str], int] = {}
  for line in text.splitlines():
    m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\[JIT\] tid \d+|\S+)\s+\[.\]\s+(.*)$", line)
    if m:
      sym = re.split(r"\s{2,}", m.group(3).strip())[0]  # perf pads the column
      c = component(m.group(2), sym)
      key = (c, "jit" if c == "kernels" else sym[:80])
      out[key] = out.get(key, 0) + int(m.group(1))
  return out


#: what each run is: ``sgd`` (first and last, as ``sgd_again``), ``hesso``, ``cric``, and
#: ``hesso_no_select``: HESSO with its selection ``lax.cond`` removed (``unittest.mock`` patch of
#: ``optim._hesso._select``, for this measurement only; what a warm-up step pays for carrying
#: the branch it does not take)
OPTIMIZERS = ("sgd", "hesso", "cric", "hesso_no_select", "sgd_again")


def _child(name: str, width: str, ready: str, stamps: str, train: bool) -> None:
  """Run one optimizer's step in a loop, stamping every step, until SIGTERM."""
  if name == "hesso_no_select":
    no_selection().start()  # for this process only
    name = "hesso"
  call = _calls(width, train)[name]
  for _ in range(20):
    jax.block_until_ready(call())
  times: list[float] = []

  def stop(*_):
    with open(stamps, "w") as fh:
      json.dump(times, fh)
    os._exit(0)

  signal.signal(signal.SIGTERM, stop)
  with open(ready, "w") as fh:
    fh.write(str(os.getpid()))
  while True:
    jax.block_until_ready(call())
    times.append(time.time())


def sample(name: str, width: str, seconds: float, freq: int, train: bool = False) -> dict:
  """Sample one optimizer's step loop: CPU microseconds per step by component, and wall time."""
  with tempfile.TemporaryDirectory() as d:
    ready, stamps, data = (os.path.join(d, f) for f in ("ready", "stamps.json", "perf.data"))
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_perf", "--child", name,
                              "--widths", width, "--ready", ready, "--stamps", stamps]
                             + (["--train"] if train else []))
    try:
      while not os.path.exists(ready):
        if child.poll() is not None:
          raise RuntimeError(f"the {name} step process exited ({child.returncode})")
        time.sleep(0.2)
      time.sleep(0.5)  # the pid is written just before the loop starts
      t0 = time.time()
      subprocess.run(["perf", "record", "-q", "-F", str(freq), "-o", data, "-p", str(child.pid),
                      "--", "sleep", str(seconds)], check=True, capture_output=True)
      t1 = time.time()
    finally:
      child.send_signal(signal.SIGTERM)
      child.wait(timeout=60)
    with open(stamps) as fh:
      ts = [t for t in json.load(fh) if t0 <= t <= t1]
    report = subprocess.run(["perf", "report", "-i", data, "-n", "--no-children", "--sort",
                             "dso,symbol", "--stdio"], check=True, capture_output=True,
                            text=True).stdout
  steps = max(len(ts) - 1, 1)
  symbols = {k: n * 1e6 / freq / steps for k, n in parse_report(report).items()}
  per_step: dict[str, float] = {}
  for (c, _), us in symbols.items():
    per_step[c] = per_step.get(c, 0.0) + us
  return {"optimizer": name, "width": width, "steps": steps,
          "wall_us": (ts[-1] - ts[0]) * 1e6 / steps if len(ts) > 1 else None,
          "cpu_us": sum(per_step.values()), "components_us": per_step, "symbols_us": symbols}


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true", help="a width-256 MLP, 3 s per optimizer")
  ap.add_argument("--widths", help="comma-separated MLP widths (default 1024)")
  ap.add_argument("--seconds", type=float, help="sampling time per optimizer (default 12)")
  ap.add_argument("--freq", type=int, default=4000, help="perf sampling frequency (Hz)")
  ap.add_argument("--optimizers", default="sgd,hesso,cric,sgd_again",
                  help=f"comma-separated, from {','.join(OPTIMIZERS)} (sgd is always first)")
  ap.add_argument("--train", action="store_true",
                  help="the whole train step (forward, backward, update) instead of the update")
  ap.add_argument("--child", help=argparse.SUPPRESS)
  ap.add_argument("--ready", help=argparse.SUPPRESS)
  ap.add_argument("--stamps", help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.child:
    return _child(a.child, a.widths, a.ready, a.stamps, a.train)
  if shutil.which("perf") is None:
    sys.exit("bench_perf needs Linux perf (e.g. apt-get install linux-perf)")
  widths = a.widths.split(",") if a.widths else (["256"] if a.small else ["1024"])
  seconds = a.seconds or (3.0 if a.small else 12.0)
  names = ["sgd", *[n for n in a.optimizers.split(",") if n != "sgd"]]
  unknown = set(names) - set(OPTIMIZERS)
  if unknown:
    ap.error(f"--optimizers: unknown {sorted(unknown)}; known: {list(OPTIMIZERS)}")
  rows = []
  for w in widths:
    runs = {}
    for name in names:
      runs[name] = sample(name.removesuffix("_again"), w, seconds, a.freq, a.train)
      print(f"  {w} {name}: {runs[name]['cpu_us']:.0f} us CPU per step", flush=True)
    # the baseline: SGD's first run, or the mean of its two runs (machine drift over the runs
    # then biases the others by at most half of what separates the two)
    sgds = [runs[n] for n in ("sgd", "sgd_again") if n in runs]
    base = {"cpu_us": sum(r["cpu_us"] for r in sgds) / len(sgds),
            "components_us": {c: sum(r["components_us"].get(c, 0.0) for r in sgds) / len(sgds)
                              for c in [*COMPONENTS, "other"]},
            "symbols_us": {k: sum(r["symbols_us"].get(k, 0.0) for r in sgds) / len(sgds)
                           for k in {k for r in sgds for k in r["symbols_us"]}}}
    for name, r in runs.items():
      extra = {c: r["components_us"].get(c, 0.0) - base["components_us"].get(c, 0.0)
               for c in [*COMPONENTS, "other"]}
      sym = {k: r["symbols_us"].get(k, 0.0) - base["symbols_us"].get(k, 0.0)
             for k in {*r["symbols_us"], *base["symbols_us"]}}
      top = sorted(sym.items(), key=lambda kv: -kv[1])[:10]
      rows.append({**{k: v for k, v in r.items() if k != "symbols_us"}, "optimizer": name,
                   "cpu_ratio": r["cpu_us"] / base["cpu_us"], "extra_us": extra,
                   "top_extra": [{"component": c, "symbol": s_, "us": round(us, 1)}
                                 for (c, s_), us in top]})
  write_json("perf", {"small": a.small, "train": a.train, "seconds": seconds, "freq": a.freq,
                      "rows": rows})
  what = "train step" if a.train else "optimizer-only step"
  print(f"\n== CPU time per warm-up {what} (perf samples, all threads), ratio to SGD(momentum) (the mean "
        "of its two runs), and "
        "the extra over SGD by component (us per step) ==")
  cols = ["width", "optimizer", "steps", "wall_us", "cpu_us", "cpu_ratio"]
  flat = [{**{k: r[k] for k in cols}, **{c: r["extra_us"][c] for c in [*COMPONENTS, "other"]}}
          for r in rows]
  fmt = {"wall_us": "{:.0f}", "cpu_us": "{:.0f}", "cpu_ratio": "{:.3f}"}
  fmt.update({c: "{:+.1f}" for c in [*COMPONENTS, "other"]})
  print(table(flat, [*cols, *COMPONENTS, "other"], fmt))
  for r in rows:
    if r["optimizer"] != "sgd":
      tops = "; ".join(f"{t['symbol']} ({t['component']}) {t['us']:+.1f}" for t in r["top_extra"][:6])
      print(f"  {r['width']}/{r['optimizer']} largest extras (us/step): {tops}")


if __name__ == "__main__":
  main()
