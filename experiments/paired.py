"""Paired differences between a study's methods, seed by seed.

    python -m experiments.paired results/study results/study_charlm

Reads every run record under ``<folder>/runs/`` (what ``experiments.study`` writes) and, for each
task, target sparsity and method, pairs the method's run with HESSO's run of the same seed (same
data order and initialisation) and reports the mean ± sample std of ``HESSO - method`` over the
seeds both have, plus in how many seeds HESSO was better. Accuracy differences are in points
(positive: HESSO more accurate); perplexity differences are HESSO minus method (negative: HESSO
better). The CRIC variants are reported the other way round (CRIC minus HESSO), as the README
states them. Writes ``paired.json`` and ``paired.md`` into each folder and prints the table.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from experiments import train as T

#: methods compared against HESSO, and the sign convention of each row
_AGAINST = ("scratch", "l1", "hesso_ref", "hesso_m1", "hesso_cric", "hesso_cric_imm")


def load_runs(folder: pathlib.Path) -> list[dict]:
  runs = []
  for f in sorted((folder / "runs").glob("*.json")):
    r = json.loads(f.read_text())
    if "key" in r:
      runs.append(r)
  if not runs:
    raise SystemExit(f"{folder}: no run records under {folder / 'runs'}")
  return runs


def _value(r: dict) -> float:
  """The run's metric: perplexity, or accuracy in percent."""
  metric = T.metric_of(r["key"]["task"])
  return float(r[metric]) * (100.0 if metric == "accuracy" else 1.0)


def paired_rows(runs: list[dict]) -> list[dict]:
  """One row per (task, sparsity, method): the per-seed differences with HESSO, summarised."""
  by = {}
  for r in runs:
    k = r["key"]
    by[(k["task"], k["method"], k["sparsity"], k["seed"])] = r
  rows = []
  cells = sorted({(t, m, s) for (t, m, s, _) in by if m in _AGAINST})
  for task, method, sp in cells:
    seeds = sorted(sd for (t, m, s, sd) in by if (t, m, s) == (task, method, sp)
                   and (task, "hesso", sp, sd) in by)
    if not seeds:
      continue
    metric = T.metric_of(task)
    h = np.array([_value(by[(task, "hesso", sp, sd)]) for sd in seeds])
    o = np.array([_value(by[(task, method, sp, sd)]) for sd in seeds])
    cric = method.startswith("hesso_cric")
    diff = (o - h) if cric else (h - o)
    # "better": the first-named method (CRIC for hesso_cric, HESSO otherwise) did better
    better = (diff < 0) if metric == "perplexity" else (diff > 0)
    rows.append({"task": task, "sparsity": sp, "method": method, "metric": metric,
                 "difference": f"{method} - hesso" if cric else f"hesso - {method}",
                 "seeds": seeds, "per_seed": diff.tolist(), "mean": float(diff.mean()),
                 "std": float(diff.std(ddof=1)) if len(seeds) > 1 else 0.0,
                 "first_better_in": int(better.sum())})
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| task | target | difference | unit | mean ± std | first better in |",
           "|---|---:|---|---|---:|---:|"]
  for r in rows:
    unit = "perplexity" if r["metric"] == "perplexity" else "accuracy pt"
    lines.append(f"| {r['task']} | {r['sparsity']:.0%} | {r['difference']} | {unit} | "
                 f"{r['mean']:+.2f} ± {r['std']:.2f} | {r['first_better_in']}/{len(r['seeds'])} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("folders", nargs="+", help="study output folders (with runs/)")
  a = ap.parse_args(argv)
  for folder in map(pathlib.Path, a.folders):
    rows = paired_rows(load_runs(folder))
    T.write_json({"rows": rows}, folder / "paired.json")
    text = markdown(rows)
    (folder / "paired.md").write_text(text + "\n")
    print(f"## {folder}\n{text}\n")


if __name__ == "__main__":
  main()
