"""CPU inference latency of the study's compressed models against their dense model.

    python -m experiments.latency                        # results/study + results/study_align
    python -m experiments.latency --runs results/study/runs --batch 256

For every run record of ``experiments.study`` that carries a pruned-group mask (HESSO, L1,
HESSO-CRIC, ``hesso_ref``, ``hesso_m1``; scratch has HESSO's shapes), the task's model is built, the mask's groups are zeroed and the
network is compressed with ``hj.compress`` at the ``multiple_of`` the run used (8 unless the
record says otherwise). Latency depends on the shapes only, so trained weights are not needed.
Dense and compressed jitted forward passes on one batch of ``--batch`` test inputs are timed
interleaved (round-robin, medians of per-round ratios), on whatever else runs on the machine at
the time, so run it on a quiet machine. Writes ``latency.json`` and ``latency.md`` next to the
runs folder and prints the table; ``slower`` marks a compressed model slower than its dense one.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import hesso_jax as hj
from experiments import run as R
from experiments import train as T


def _time_interleaved(fns: dict, repeats: int, inner: int) -> dict[str, np.ndarray]:
  for f in fns.values():
    jax.block_until_ready(f())
  times: dict[str, list[float]] = {k: [] for k in fns}
  names = list(fns)
  for r in range(repeats):
    for k in names[r % len(names):] + names[:r % len(names)]:
      t0 = time.perf_counter()
      for _ in range(inner):
        out = fns[k]()
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t0) / inner)
  return {k: np.asarray(v) for k, v in times.items()}


class _Model:
  """A task's model, space and test batch, built once per (task, seed)."""

  def __init__(self, task: str, seed: int, batch: int, small: bool):
    cfg = R.CONFIGS[task]
    self.model, _, x_ex, _, _ = R.load_task(task, small, cfg, seed)
    self.fn = jax.jit(lambda v, xb: self.model.apply(v, xb, train=False))
    self.raw_fn = lambda v, xb: self.model.apply(v, xb, train=False)
    self.variables = T.init_variables(self.model, x_ex, seed=seed)
    self.space = hj.discover(self.raw_fn, self.variables, jnp.asarray(x_ex))
    self.space_p = self.space.subtree("params")
    reps = -(-batch // len(x_ex))
    self.x = jnp.asarray(np.concatenate([np.asarray(x_ex)] * reps)[:batch])

  def compressed(self, pruned: np.ndarray, multiple_of: int):
    mask = jnp.asarray(pruned)
    v = {**self.variables, "params": self.space_p.zero_groups(self.variables["params"], mask)}
    small_fn, small = hj.compress(self.raw_fn, v, self.space, self.x, keep=~mask,
                                  multiple_of=multiple_of)
    return jax.jit(small_fn), small


def measure(run_dirs: list[pathlib.Path], batch: int, repeats: int, inner: int) -> list[dict]:
  from tqdm.auto import tqdm

  recs = []
  for d in run_dirs:
    for f in sorted(d.glob("*.json")):
      r = json.loads(f.read_text())
      # scratch trains HESSO's architecture: the same shapes, so the same latency
      if "pruned" in r and r["key"]["method"] not in ("dense", "scratch"):
        recs.append((d, r))
  models: dict[tuple, _Model] = {}
  rows = []
  for d, r in tqdm(recs, desc="latency", dynamic_ncols=True):
    k = r["key"]
    mk = (k["task"], k["seed"], bool(k.get("small")))
    if mk not in models:
      models[mk] = _Model(k["task"], k["seed"], batch, bool(k.get("small")))
    m = models[mk]
    mult = int(r.get("multiple_of", k.get("multiple_of", 8)))
    small_fn, small = m.compressed(np.asarray(r["pruned"], bool), mult)
    t = _time_interleaved({"dense": lambda: m.fn(m.variables, m.x),
                           "small": lambda: small_fn(small, m.x)}, repeats, inner)
    ratio = t["small"] / t["dense"]
    rows.append({"task": k["task"], "seed": k["seed"], "method": k["method"],
                 "sparsity": k["sparsity"], "multiple_of": mult, "source": str(d),
                 "flops_kept_pct": r.get("flops_kept_pct"),
                 "params_kept_pct": r.get("params_kept_pct"),
                 "dense_ms": 1e3 * float(np.median(t["dense"])),
                 "compressed_ms": 1e3 * float(np.median(t["small"])),
                 "latency_ratio": float(np.median(ratio)),
                 "latency_ratio_q25": float(np.percentile(ratio, 25)),
                 "latency_ratio_q75": float(np.percentile(ratio, 75))})
  return rows


def summarise(rows: list[dict]) -> list[dict]:
  groups: dict[tuple, list[dict]] = {}
  seen = set()
  for r in rows:
    run = (r["task"], r["seed"], r["sparsity"], r["method"], r["multiple_of"])
    if run in seen:  # the same run found in two study folders (e.g. seed 0 HESSO): count it once
      continue
    seen.add(run)
    groups.setdefault((r["task"], r["sparsity"], r["method"], r["multiple_of"]), []).append(r)
  out = []
  for (task, sp, method, mult), rs in sorted(groups.items()):
    lat = np.array([r["latency_ratio"] for r in rs])
    out.append({"task": task, "sparsity": sp, "method": method, "multiple_of": mult,
                "n": len(rs), "flops_kept_pct": float(np.mean([r["flops_kept_pct"] for r in rs])),
                "latency_ratio_mean": float(lat.mean()), "latency_ratio_max": float(lat.max()),
                "slower": bool(lat.max() > 1.0)})
  return out


def markdown(summary: list[dict]) -> str:
  lines = ["| task | target | method | multiple_of | FLOPs kept | latency / dense (mean, worst "
           "seed) | slower than dense |", "|---|---:|---|---:|---:|---:|---|"]
  for s in summary:
    lines.append(f"| {s['task']} | {s['sparsity']:.0%} | {s['method']} | {s['multiple_of']} | "
                 f"{s['flops_kept_pct']:.1f}% | {s['latency_ratio_mean']:.2f} "
                 f"({s['latency_ratio_max']:.2f}, n={s['n']}) | "
                 f"{'**yes**' if s['slower'] else 'no'} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--runs", nargs="+", default=["results/study/runs", "results/study_align/runs"])
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--repeats", type=int, default=15)
  ap.add_argument("--inner", type=int, default=10)
  ap.add_argument("--out", default="results/study")
  a = ap.parse_args(argv)
  dirs = [pathlib.Path(d) for d in a.runs if pathlib.Path(d).is_dir()]
  if not dirs:
    raise SystemExit(f"no run folders among {a.runs}; run experiments.study first")
  rows = measure(dirs, a.batch, a.repeats, a.inner)
  if not rows:
    raise SystemExit("no run record with a pruned mask found")
  summary = summarise(rows)
  out = pathlib.Path(a.out)
  T.write_json({"batch": a.batch, "repeats": a.repeats, "inner": a.inner,
                "backend": jax.default_backend(), "summary": summary, "rows": rows},
               out / "latency.json")
  md = markdown(summary)
  (out / "latency.md").write_text(md + "\n")
  print(md)


if __name__ == "__main__":
  main()
