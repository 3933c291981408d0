"""Run every benchmark: ``python -m benchmarks.run_all [--small] [--only NAME ...]``.

Each benchmark runs in its own subprocess (fresh JAX state, independent compile caches) and
writes results/bench_<name>.json; a summary of the headline numbers is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import RESULTS

BENCHMARKS = ("discovery", "latency", "align", "step", "masks", "warmup", "cycle", "thunks", "cond")


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true", help="fewer sizes/repeats (CI smoke run)")
  ap.add_argument("--only", nargs="*", choices=BENCHMARKS, default=None)
  a = ap.parse_args(argv)
  failed, wall = [], {}
  for name in a.only or BENCHMARKS:
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}"] + (["--small"] if a.small else [])
    print(f"\n##### {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall[name] = time.perf_counter() - t0
    if rc:
      failed.append(name)
  print("\n##### summary")
  for name in a.only or BENCHMARKS:
    path = os.path.join(RESULTS, f"bench_{name}.json")
    status = "FAILED" if name in failed else "ok"
    line = f"{name:10s} {status:6s} {wall[name]:6.1f} s"
    if name not in failed and os.path.exists(path):
      with open(path) as fh:
        r = json.load(fh)
      if name == "discovery":
        line += (f"  worst 7B discovery {r['max_7B_discover_s']:.2f} s "
                 f"(target < {r['target_7B_s']:.0f} s: {'met' if r['meets_target'] else 'MISSED'})")
      elif name == "latency":
        line += "  " + ", ".join(f"{x['variant']}: lat {x['latency_ratio']:.2f} / flop "
                                 f"{x['flop_ratio']:.2f}" for x in r["rows"] if "flop_ratio" in x
                                 and x["variant"] != "full")
      elif name == "step":
        line += "  " + ", ".join(f"{x['model']}/{x['optimizer']}/{x['phase']}: {x['ratio']:.2f}x"
                                 for x in r["rows"] if x["measure"] == "opt")
      elif name == "masks":
        line += "  " + ", ".join(f"{x['variant']}: {x['ratio']:.2f}x" for x in r["rows"])
      elif name == "warmup":
        line += "  " + ", ".join(f"{x['width']}/{x['variant']}: {x['ratio']:.2f}x" for x in r["rows"])
      elif name == "thunks":
        line += "  " + ", ".join(f"{x['model']}/{x['optimizer']}: {x['small_kernels']} small "
                                 f"kernels {x['small_us']:.0f} us" for x in r["rows"])
      elif name == "cycle":
        line += "  " + ", ".join(f"{x['variant']}: {x['cpu_ratio']:.2f}x" for x in r["rows"])
    print(line)
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  main()
