"""Issue 5: does HESSO-CRIC beat HESSO at high group sparsity?

    python -m experiments.cric_study
    python -m experiments.cric_study --tasks digits_cnn mnist1d --sparsities 0.5 0.7 0.9

For each task (default: the digits CNN and the 64-channel MNIST-1D CNN) and target group sparsity
(default 50/70/90%): dense, HESSO and HESSO-CRIC with the same steps, seed, learning rate and data
order. HESSO: 20% warm-up, pruning over the next 40% in 3 periods, 40% recovery
(``experiments.run.schedule``). HESSO-CRIC: ``experiments.sweep.comparable_cric_schedule``
(probing starts when HESSO starts pruning; its latest commit step equals HESSO's last commit).

Runs are shared with ``experiments.sweep`` (same cache under ``results/sweep_runs/``). Writes
``results/cric_study.{json,md,png}``. Besides accuracy, the table reports each run's achieved group
sparsity, the per-space kept/size counts (``hj.sparsity_report``) and the step at which the final
sparsity was first reached, so that over/under-pruning or a late commit are visible.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import jax

from experiments import sweep as SW
from experiments import train as T
from hesso_jax.optim.cric import DEFAULT_CRIC_IMPORTANCE


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tasks", nargs="+", default=["digits_cnn", "mnist1d"])
  ap.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9])
  ap.add_argument("--steps", nargs="*", default=[], metavar="TASK=N")
  ap.add_argument("--small", action="store_true")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--no-latency", action="store_true")
  ap.add_argument("--force", action="store_true")
  ap.add_argument("--ablate-loss", type=float, nargs="*", default=[0.0], metavar="W",
                  help="extra HESSO-CRIC runs with importance['loss'] = W (default: 0.0, i.e. the "
                       "final ranking by mean saliency only); pass no value to skip")
  a = ap.parse_args(argv)
  cmd = "python -m experiments.cric_study " + " ".join(
      shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
  overrides = SW.parse_steps(a.steps)

  from tqdm.auto import tqdm
  plan, sched = [], {}
  for task in a.tasks:
    steps = SW.task_steps(task, a.small, overrides)
    sched[task] = SW.comparable_cric_schedule(steps, SW.num_prunable_spaces(task, a.small, a.seed))
    plan.append((task, "dense", 0.0, steps))
    for s in a.sparsities:
      plan += [(task, "hesso", s, steps), (task, "hesso_cric", s, steps)]
      plan += [(task, f"hesso_cric_loss{w:g}", s, steps) for w in a.ablate_loss]

  t0 = time.perf_counter()
  recs, rows, dense = [], [], {}
  bar = tqdm(plan, desc="cric_study", dynamic_ncols=True)
  for task, opt, s, steps in bar:
    bar.set_postfix_str(f"{task}/{opt}/{s:g}")
    if opt.startswith("hesso_cric_loss"):  # ablation: another loss weight in the final ranking
      w = float(opt[len("hesso_cric_loss"):])
      imp = {**DEFAULT_CRIC_IMPORTANCE, "loss": w}
      r = SW.run_one(task, "hesso_cric", s, steps=steps, small=a.small, seed=a.seed,
                     cric_kw={**sched[task], "importance": imp}, latency=not a.no_latency,
                     force=a.force, out_root=f"sweep_runs_cric_loss{w:g}")
      r["optimizer"] = opt
    else:
      r = SW.run_one(task, opt, s, steps=steps, small=a.small, seed=a.seed,
                     cric_kw=sched[task] if opt == "hesso_cric" else None,
                     latency=not a.no_latency, force=a.force)
    r.pop("history", None)
    if opt == "dense":
      dense[task] = r
    row = SW.row_of(r, dense.get(task))
    row["sparsity_reached_step"] = r.get("sparsity_reached_step")
    row["cric_state"] = r.get("cric_state")
    recs.append(r)
    rows.append(row)
    tqdm.write(f"{task:10s} {opt:10s} {s:.1f}: gs {r.get('group_sparsity', 0):.3f} "
               f"acc {r.get('accuracy')} spaces {row['spaces']}")
  total = time.perf_counter() - t0

  res = T.results_dir()
  T.write_json({"command": cmd, "wall_seconds": total, "jax": jax.__version__,
                "cric_schedules": sched, "rows": rows, "records": recs}, res / "cric_study.json")

  # accuracy table: one row per (task, target)
  abl = [f"hesso_cric_loss{w:g}" for w in a.ablate_loss]
  lines = ["| task | target | dense | HESSO | HESSO-CRIC | CRIC - HESSO | achieved sparsity (HESSO / CRIC) |"
           + "".join(f" CRIC, importance['loss']={w:g} |" for w in a.ablate_loss),
           "|---|---:|---:|---:|---:|---:|---|" + "---:|" * len(abl)]
  for task in a.tasks:
    d = dense[task]["accuracy"]
    for s in a.sparsities:
      h = next(r for r in rows if r["task"] == task and r["optimizer"] == "hesso" and r["target"] == s)
      c = next(r for r in rows if r["task"] == task and r["optimizer"] == "hesso_cric" and r["target"] == s)
      lines.append(f"| {task} | {s:.0%} | {100 * d:.2f}% | {100 * h['value']:.2f}% | {100 * c['value']:.2f}% | "
                   f"{100 * (c['value'] - h['value']):+.2f} pt | {h['group_sparsity']:.1%} / {c['group_sparsity']:.1%} |"
                   + "".join(f" {100 * x['value']:.2f}% |" for o in abl for x in rows
                             if x["task"] == task and x["optimizer"] == o and x["target"] == s))
  acc_md = "\n".join(lines) + "\n"

  # diagnostics: per-space kept/size, commit step
  lines = ["| task | optimizer | target | per-space kept/size | final sparsity first logged at step | "
           "params kept | FLOPs kept | latency ratio |", "|---|---|---:|---|---:|---:|---:|---:|"]
  for r in rows:
    if r["optimizer"] == "dense":
      continue
    sp = ", ".join(f"{k}: {v['kept']}/{v['size']}" for k, v in (r["spaces"] or {}).items())
    lat = "-" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}"
    lines.append(f"| {r['task']} | {r['optimizer']} | {r['target']:.0%} | {sp} | "
                 f"{r['sparsity_reached_step']} / {r['steps']} | {r['params_kept_pct']:.1f}% | "
                 f"{r['flops_kept_pct']:.1f}% | {lat} |")
  diag_md = "\n".join(lines) + "\n"
  cs = [f"- {t}: `{sched[t]}`; CRIC state at the end: " + "; ".join(
      f"{r['target']:.0%}: hybrid started at step {r['cric_state']['end']}, "
      f"{r['cric_state']['historical_groups']} groups were ever violating"
      for r in rows if r["task"] == t and r["optimizer"] == "hesso_cric" and r.get("cric_state"))
      + "; loss ratios (space x trial sparsity 25/50/75%) and ref loss: " + "; ".join(
      f"{r['target']:.0%}: ref {r['cric_state']['ref_loss']:.2g}, ratios "
      + str([[round(v, 1) for v in row] for row in r['cric_state']['loss_ratio']])
      for r in rows if r["task"] == t and r["optimizer"] == "hesso_cric" and r.get("cric_state"))
      for t in a.tasks]
  md = (f"# HESSO vs HESSO-CRIC\n\nRegenerate: `{cmd}`\n\nCPU ({os.cpu_count()} shared cores), jax "
        f"{jax.__version__}, seed {a.seed}, one seed per cell (differences below ~1 point on the 450-image digits "
        f"test set, or ~1 point on MNIST-1D's 1000 test signals, are within seed noise). Wall time "
        f"{total / 60:.1f} min (cached runs count 0).\n\n## Test accuracy\n\n" + acc_md +
        "\n## Where the groups went\n\n" + diag_md + "\nHESSO-CRIC schedules:\n\n" + "\n".join(cs) + "\n")
  (res / "cric_study.md").write_text(md)

  plt = T._plt()
  fig, axes = plt.subplots(1, len(a.tasks), figsize=(4.4 * len(a.tasks), 3.6), dpi=110, squeeze=False)
  for ax, task in zip(axes[0], a.tasks):
    ax.axhline(100 * dense[task]["accuracy"], color="k", ls="--", lw=1, label="dense")
    for opt, mk in [("hesso", "o"), ("hesso_cric", "s")] + [(o, "^") for o in abl]:
      pts = sorted((r["target"], 100 * r["value"]) for r in rows if r["task"] == task and r["optimizer"] == opt)
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=mk, label=opt)
    ax.set_xlabel("target group sparsity")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{task}, {dense[task]['steps']} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(res / "cric_study.png")
  plt.close(fig)
  print(md)


if __name__ == "__main__":
  main()
