"""Dense vs HESSO (vs HESSO-CRIC) across group sparsities, with compression and CPU latency.

    python -m experiments.sweep                                   # default tasks, 30/50/70%
    python -m experiments.sweep --tasks digits_cnn mnist1d --cric digits_cnn --sparsities 0.3 0.5 0.7
    python -m experiments.sweep --tasks charlm --steps charlm=500

For every task: one dense run, then HESSO (and HESSO-CRIC for the tasks named by ``--cric``) at
each target group sparsity. Every run of a task uses the same steps, seed, learning rate, base
optimizer and data order (``experiments.run.run`` with the same ``seed``). Per run we collect:

* accuracy (perplexity for charlm) on the held-out split,
* achieved group sparsity (fraction of prunable groups of the params whose producer norm is 0) and
  kept/size per space (``hj.sparsity_report``),
* params kept % (``params`` collection after slicing the zero groups away) and FLOPs kept %
  (``hj.count`` of ``hj.compress``'s model vs the full model, per example),
* compressed / full CPU inference latency: both jitted, timed interleaved round-robin
  (``benchmarks.common.interleaved``) on one batch of the task's training batch size, median of
  the per-round ratios.

Each run's record is cached as JSON under ``results/sweep_runs/<task>_steps<N>/``; a rerun reuses
it only when its settings, the sha1 of the whole ``hesso_jax`` package and ``experiments/``, and the
package versions all match (``--force`` retrains). A failed run or measurement fails the sweep. Writes ``results/sweep.json``, ``results/sweep.md``
and ``results/sweep_accuracy.png`` (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import hesso_jax as hj
from benchmarks.common import interleaved, paired_ratio
from experiments import models as M
from experiments import run as R
from experiments import train as T

DEFAULT_TASKS = ("digits_cnn", "mnist1d", "digits_resnet", "charlm")
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7)


def task_steps(task: str, small: bool, overrides: dict[str, int]) -> int:
  cfg = R.CONFIGS[task]
  return overrides.get(task) or (cfg.small_steps if small else cfg.steps)


# ------------------------------------------------------------------------------------------------
# HESSO-CRIC schedule comparable to HESSO's
# ------------------------------------------------------------------------------------------------


def num_prunable_spaces(task: str, small: bool, seed: int = 0) -> int:
  cfg = R.CONFIGS[task]
  model, _, x_ex, _, _ = R.load_task(task, small, cfg, seed)
  variables = T.init_variables(model, x_ex, seed=seed)
  space = hj.discover(M.inference_fn(model), variables, x_ex)
  return len(space.subtree("params").prunable_spaces)


def comparable_cric_schedule(steps: int, n_spaces: int, *, max_cycle_period: int = 5,
                             trial_sparsities: int = 3) -> dict:
  """CRIC with HESSO's budget: starts probing when HESSO starts pruning (20% of the run) and its
  *latest* commit step equals HESSO's last commit (60% of the run):
  ``hybrid = pruning_steps - probe_steps - C*S - 1`` with ``S = max(5, steps // 60)``, ``C = 5``.
  (``experiments.run.cric_schedule`` instead uses ``hybrid = pruning_steps``, which ends up to
  ``probe + C*S`` steps later than HESSO.) If the cycles terminate early (tolerance 0: no new
  violating group), CRIC commits earlier than that."""
  s = R.schedule(steps)
  S = max(5, steps // 60)
  probe = 2 * n_spaces * trial_sparsities
  hybrid = s["pruning_steps"] - probe - max_cycle_period * S - 1
  if hybrid < max(10, s["pruning_steps"] // 4):  # very short runs: keep a usable forgetting phase
    hybrid = max(10, s["pruning_steps"] // 4)
  return {"start_cric_step": s["warmup_steps"], "sampling_steps": S,
          "max_cycle_period": max_cycle_period, "tolerance": 0, "hybrid_training_steps": hybrid}


# ------------------------------------------------------------------------------------------------
# compressed latency
# ------------------------------------------------------------------------------------------------


def latency_ratio(model, space, variables, x_example, batch: int, *, repeats: int = 40,
                  min_call_s: float = 4e-3) -> dict:
  """Compressed / full jitted CPU latency on a batch of ``batch`` copies of the example input."""
  fn = lambda v, x: model.apply(v, x, train=False)
  x = jnp.asarray(np.repeat(np.asarray(x_example)[:1], batch, axis=0))
  small_fn, small = hj.compress(fn, variables, space, x)
  f_full, f_small = jax.jit(fn), jax.jit(small_fn)
  out_full, out_small = f_full(variables, x), f_small(small, x)
  diff = float(jnp.max(jnp.abs(out_full - out_small)))
  jax.block_until_ready(f_full(variables, x))
  t0 = time.perf_counter()
  for _ in range(5):
    jax.block_until_ready(f_full(variables, x))
  t = (time.perf_counter() - t0) / 5
  inner = max(1, math.ceil(min_call_s / max(t, 1e-6)))
  times = interleaved({"full": lambda: f_full(variables, x), "compressed": lambda: f_small(small, x)},
                      repeats=repeats, inner=inner, warmup=2)
  r = paired_ratio(times["compressed"], times["full"])
  return {"latency_ratio": r["median"], "latency_q25": r["q25"], "latency_q75": r["q75"],
          "latency_min_ratio": r["min_ratio"], "latency_full_ms": 1e3 * float(np.median(times["full"])),
          "latency_compressed_ms": 1e3 * float(np.median(times["compressed"])),
          "latency_batch": batch, "latency_inner": inner, "latency_repeats": repeats,
          "compress_max_abs_diff_batch": diff}


# ------------------------------------------------------------------------------------------------
# one (cached) run
# ------------------------------------------------------------------------------------------------


def cache_key(task: str, optimizer: str, sparsity: float, steps: int, small: bool, seed: int,
              cric_kw: dict | None) -> dict:
  """What a cached record must match to be reused: the run's settings, the sha1 of the whole
  ``hesso_jax`` package and of ``experiments/``, and the package versions."""
  from experiments.study import code_hash, package_versions

  return {"task": task, "optimizer": optimizer, "sparsity": sparsity, "steps": steps,
          "small": small, "seed": seed, "cric_kw": cric_kw or {}, "code_sha1": code_hash(),
          "packages": package_versions()}


def run_one(task: str, optimizer: str, sparsity: float, *, steps: int, small: bool, seed: int,
            cric_kw: dict | None = None, latency: bool = True, force: bool = False,
            out_root: str = "sweep_runs") -> dict:
  out_dir = f"{out_root}/{task}_steps{steps}" + ("_small" if small else "")
  sp = 0.0 if optimizer == "dense" else sparsity
  stem = f"{optimizer}_s{sp:g}" + ("_small" if small else "") + f"_seed{seed}"
  path = T.results_dir(out_dir) / f"{stem}.json"
  key = cache_key(task, optimizer, sp, steps, small, seed, cric_kw)
  if path.exists() and not force:
    rec = json.loads(path.read_text())
    if rec.get("cache_key") == key and (rec.get("latency_ratio") is not None or not latency
                                        or optimizer == "dense"):
      rec["cached"] = True
      return rec
  art: dict = {}
  t0 = time.perf_counter()
  rec = R.run(task, optimizer, sp, steps=steps, small=small, seed=seed, out_dir=out_dir,
              progress=False, plots=False, cric_kw=cric_kw, artifacts=art)
  rec["wall_seconds_run"] = time.perf_counter() - t0
  rec["cache_key"] = key
  space = art["space"]
  if space is not None and space.num_groups:
    rep = hj.sparsity_report(space.subtree("params"), art["variables"]["params"])
    rec["spaces"] = {k: {"kept": v["kept"], "size": v["size"]} for k, v in rep["spaces"].items()
                     if v.get("prunable", True)}
  st = art.get("opt_state")
  if hasattr(st, "end") and hasattr(st, "historical"):  # HESSO-CRIC diagnostics
    rec["cric_state"] = {"end": int(st.end), "historical_groups": int(np.sum(st.historical)),
                         "pruned_groups": int(np.sum(st.pruned)), "ref_loss": float(st.ref_loss),
                         "loss_ratio": np.asarray(st.loss_ratio).tolist()}
  hist = rec.get("history") or {}
  if hist.get("group_sparsity"):  # first logged step at which the final sparsity is reached
    final = hist["group_sparsity"][-1]
    rec["sparsity_reached_step"] = next(s for s, g in zip(hist["cb_step"], hist["group_sparsity"])
                                        if g >= final - 1e-9)
  if rec.get("params_total"):
    rec["params_kept_pct"] = 100.0 * rec["params_kept"] / rec["params_total"]
  if rec.get("flops") and rec.get("flops_compressed") is not None:
    rec["flops_kept_pct"] = 100.0 * rec["flops_compressed"] / rec["flops"]
  if latency and optimizer != "dense" and space is not None and space.num_groups:
    t1 = time.perf_counter()
    # a failed measurement fails the sweep (no "-" in a results table)
    rec.update(latency_ratio(art["model"], space, art["variables"], art["x_example"],
                             R.CONFIGS[task].batch_size))
    rec["latency_seconds"] = time.perf_counter() - t1
  rec["cached"] = False
  T.write_json(rec, path)
  return rec


# ------------------------------------------------------------------------------------------------
# tables and plot
# ------------------------------------------------------------------------------------------------

COLS = ("task", "optimizer", "target", "group sparsity", "metric", "vs dense", "params kept",
        "FLOPs kept", "latency ratio", "steps", "train s")


def row_of(r: dict, dense: dict | None) -> dict:
  m = T.metric_of(r["task"])
  val = r.get(m)
  d = None
  if dense is not None and val is not None and dense.get(m) is not None:
    d = (val - dense[m]) * (100 if m == "accuracy" else 1)
  return {"task": r["task"], "optimizer": r["optimizer"],
          "target": None if r["optimizer"] == "dense" else r["target_group_sparsity"],
          "group_sparsity": r.get("group_sparsity"), "metric": m, "value": val, "delta": d,
          "params_kept_pct": r.get("params_kept_pct"), "flops_kept_pct": r.get("flops_kept_pct"),
          "latency_ratio": r.get("latency_ratio"), "latency_q25": r.get("latency_q25"),
          "latency_q75": r.get("latency_q75"), "steps": r["steps"],
          "train_seconds": r.get("train_seconds"), "spaces": r.get("spaces")}


def fmt_value(metric: str, v) -> str:
  if v is None:
    return "-"
  return f"{100 * v:.2f}%" if metric == "accuracy" else f"{v:.3f}"


def fmt_delta(metric: str, d) -> str:
  if d is None:
    return ""
  return f"{d:+.2f} pt" if metric == "accuracy" else f"{d:+.3f}"


def markdown(rows: list[dict]) -> str:
  hdr = ("| task | optimizer | target | group sparsity | accuracy / ppl | vs dense | params kept | "
         "FLOPs kept | latency ratio (IQR) | steps | train s |")
  lines = [hdr, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    pct = lambda v: "-" if v is None else f"{v:.1f}%"
    lat = "-" if r["latency_ratio"] is None else (
        f"{r['latency_ratio']:.2f} ({r['latency_q25']:.2f}-{r['latency_q75']:.2f})")
    tgt = "-" if r["target"] is None else f"{r['target']:.0%}"
    gs = "-" if r["group_sparsity"] is None else f"{r['group_sparsity']:.1%}"
    ts = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
    lines.append(
        f"| {r['task']} | {r['optimizer']} | {tgt} | {gs} | "
        f"{fmt_value(r['metric'], r['value'])} | {fmt_delta(r['metric'], r['delta'])} | "
        f"{pct(r['params_kept_pct'])} | {pct(r['flops_kept_pct'])} | {lat} | {r['steps']} | {ts} |")
  return "\n".join(lines) + "\n"


def paper_table(rows: list[dict]) -> str:
  """Compact table: one line per (task, target); HESSO's params/FLOPs kept and latency ratio
  (CRIC's in brackets where it ran)."""
  hdr = ("| task | group sparsity | dense | HESSO | HESSO-CRIC | params kept | FLOPs kept | "
         "CPU latency ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|")
  lines = [hdr]
  pct = lambda v: "-" if v is None else f"{v:.1f}%"
  for task in dict.fromkeys(r["task"] for r in rows):
    rs = [r for r in rows if r["task"] == task]
    dense = next((r for r in rs if r["optimizer"] == "dense"), None)
    for t in sorted({r["target"] for r in rs if r["target"] is not None}):
      h = next((r for r in rs if r["optimizer"] == "hesso" and r["target"] == t), None)
      c = next((r for r in rs if r["optimizer"] == "hesso_cric" and r["target"] == t), None)
      if h is None:
        continue
      m = h["metric"]
      both = lambda k, f: f(h[k]) + (f" ({f(c[k])})" if c is not None else "")
      lat = lambda v: "-" if v is None else f"{v:.2f}"
      lines.append(
          f"| {task} | {t:.0%} | {fmt_value(m, dense['value']) if dense else '-'} | "
          f"{fmt_value(m, h['value'])} | {fmt_value(m, c['value']) if c else '-'} | "
          f"{both('params_kept_pct', pct)} | {both('flops_kept_pct', pct)} | {both('latency_ratio', lat)} |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: pathlib.Path, title: str = "") -> None:
  plt = T._plt()
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), dpi=110, squeeze=False)
  for ax, task in zip(axes[0], tasks):
    rs = [r for r in rows if r["task"] == task and r["value"] is not None]
    m = T.metric_of(task)
    scale = 100 if m == "accuracy" else 1
    for r in rs:
      if r["optimizer"] == "dense":
        ax.axhline(scale * r["value"], color="k", ls="--", lw=1, label="dense")
    for opt, mk in (("hesso", "o"), ("hesso_cric", "s")):
      pts = sorted((r["group_sparsity"], scale * r["value"]) for r in rs if r["optimizer"] == opt)
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=mk, label=opt)
    ax.set_xlabel("achieved group sparsity")
    ax.set_ylabel("test accuracy (%)" if m == "accuracy" else "val perplexity")
    ax.set_title(f"{task}, {rs[0]['steps'] if rs else '?'} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


# ------------------------------------------------------------------------------------------------


def parse_steps(items) -> dict[str, int]:
  out = {}
  for it in items or ():
    k, v = it.split("=")
    out[k] = int(v)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tasks", nargs="+", choices=R.TASKS, default=list(DEFAULT_TASKS))
  ap.add_argument("--sparsities", nargs="+", type=float, default=list(DEFAULT_SPARSITIES))
  ap.add_argument("--cric", nargs="*", default=["digits_cnn"], choices=R.TASKS,
                  help="tasks that also get HESSO-CRIC runs (default: digits_cnn)")
  ap.add_argument("--steps", nargs="*", default=[], metavar="TASK=N",
                  help="per-task step override, e.g. charlm=500 (default: experiments.run.CONFIGS)")
  ap.add_argument("--small", action="store_true", help="the tasks' --small settings")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--no-latency", action="store_true")
  ap.add_argument("--force", action="store_true", help="retrain even when a cached record matches")
  ap.add_argument("--name", default="sweep", help="output stem under results/")
  a = ap.parse_args(argv)
  cmd = "python -m experiments.sweep " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
  overrides = parse_steps(a.steps)

  from tqdm.auto import tqdm
  plan = []
  for task in a.tasks:
    steps = task_steps(task, a.small, overrides)
    plan.append((task, "dense", 0.0, steps, None))
    ckw = None
    if task in a.cric:
      ckw = comparable_cric_schedule(steps, num_prunable_spaces(task, a.small, a.seed))
    for s in a.sparsities:
      plan.append((task, "hesso", s, steps, None))
      if task in a.cric:
        plan.append((task, "hesso_cric", s, steps, ckw))

  t0 = time.perf_counter()
  records, rows = [], []
  dense_of: dict[str, dict] = {}
  bar = tqdm(plan, desc="sweep", dynamic_ncols=True)
  for task, opt, s, steps, ckw in bar:
    bar.set_postfix_str(f"{task}/{opt}/{s:g}")
    r = run_one(task, opt, s, steps=steps, small=a.small, seed=a.seed, cric_kw=ckw,
                latency=not a.no_latency, force=a.force)
    if opt == "dense":
      dense_of[task] = r
    r.pop("history", None)
    records.append(r)
    rows.append(row_of(r, dense_of.get(task)))
    m = T.metric_of(task)
    how = "cached" if r.get("cached") else f"{r.get('wall_seconds_run', 0):.0f}s"
    tqdm.write(f"{task:14s} {opt:10s} target {s:.2f}: gs {r.get('group_sparsity', 0):.3f} "
               f"{m} {r.get(m)} lat {r.get('latency_ratio')} ({how})")
  total = time.perf_counter() - t0

  res = T.results_dir()
  out = {"command": cmd, "wall_seconds": total, "jax": jax.__version__, "cpu_count": os.cpu_count(),
         "rows": rows, "records": records}
  T.write_json(out, res / f"{a.name}.json")
  head = (f"# HESSO sweep\n\nRegenerate: `{cmd}`\n\n"
          f"CPU ({os.cpu_count()} shared cores), jax {jax.__version__}, seed {a.seed}; every run of a "
          f"task uses the same steps, learning rate and data order as its dense baseline. "
          f"Accuracy: test split; ppl: validation perplexity (charlm). Group sparsity: achieved "
          f"fraction of prunable groups at exactly 0. Params kept: `params` collection after cutting "
          f"the zero groups out; FLOPs kept: `hj.count` of `hj.compress`'s model / full, per example. "
          f"Latency ratio: compressed / full jitted CPU inference on one batch of the task's "
          f"training batch size, median (IQR) of interleaved per-round ratios. HESSO-CRIC schedule: "
          f"`experiments.sweep.comparable_cric_schedule`. Sweep wall time {total / 60:.1f} min "
          f"(cached runs count 0).\n\n")
  summary = ("## Summary\n\naccuracy (%) or validation perplexity (charlm, lower is better); params/FLOPs "
             "kept and latency ratio (compressed / full) for HESSO, HESSO-CRIC's in brackets.\n\n"
             + paper_table(rows) + "\n## All runs\n\n")
  (res / f"{a.name}.md").write_text(head + summary + markdown(rows))
  plot(rows, res / f"{a.name}_accuracy.png", title=cmd)
  print(head + summary + markdown(rows))


if __name__ == "__main__":
  main()
