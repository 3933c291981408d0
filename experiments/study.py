"""Seeded study with baselines: dense, scratch, one-shot L1, HESSO, HESSO-CRIC at equal total steps.

    python -m experiments.study                                    # digits_cnn + mnist1d, 3 seeds
    python -m experiments.study --tasks digits_cnn --sparsities 0.5 0.7 0.9 --seeds 0 1 2 3 4
    python -m experiments.study --small --seeds 0                  # CI-speed smoke run

For every task, seed and target group sparsity, five runs with the same data order, the same
number of optimizer steps and the same base optimizer (``experiments.run.CONFIGS``):

(a) ``dense``: the base optimizer alone (one run per seed, shared by all sparsities);
(b) ``scratch``: the architecture HESSO found (its pruned groups), re-initialised with a new seed
    and trained from scratch for all steps with those groups held at exactly zero (the full model
    with zeroed zero-invariant groups computes exactly what the compressed model computes);
(c) ``l1``: the classic one-shot magnitude baseline: the dense run's parameters after HESSO's
    warm-up (20% of the steps), groups ranked globally by the L1 norm of their producer slices, the
    lowest taken under HESSO's ``multiple_of=8`` rule until the compressed model keeps about as
    many FLOPs as HESSO's (the closest a group step allows; both are reported), then fine-tuned
    for the remaining 80% of the steps (a fresh base-optimizer schedule) with those groups held
    at zero;
(d) ``hesso``: ``hj.hesso`` with ``multiple_of=8`` and the experiments' schedule (20% warm-up,
    40% pruning in 3 periods, 40% recovery);
(d') ``hesso_ref`` (opt-in, ``--methods``): the same with the reference's schedule advice (prune
    from 10% to 25% of the run in 10 periods, then 75% recovery);
(d'') ``hesso_m1`` (opt-in): HESSO with ``multiple_of=1`` in the optimizer and in compress (odd
    widths; for the latency comparison in ``experiments.latency``);
(e) ``hesso_cric``: ``hj.hesso_cric`` with ``multiple_of=8`` and a schedule that ends where HESSO's
    does (``experiments.sweep.comparable_cric_schedule``);
(e') ``hesso_cric_imm`` (opt-in): the same with ``cycle_forgetting="immediate"`` (the reference's
    cycle schedule: each violating set zeroed at the cycle's first step).

FLOPs and parameters kept are those of ``hj.compress(..., multiple_of=8)`` (widths aligned to 8).
Each run is cached as JSON under ``results/study/runs/``, keyed by the sha1 of the whole
``hesso_jax`` package, the experiment code, the package versions and the run's settings; a cached
record is reused only when all of them match. Writes ``results/study/study.json`` (every run, the
library commit, package versions and machine) and ``results/study/study.md`` (mean ± std over
seeds). A failed run fails the study.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import pathlib
import platform
import subprocess
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hesso_jax as hj
from experiments import run as R
from experiments import train as T

METHODS = ("dense", "scratch", "l1", "hesso", "hesso_ref", "hesso_m1", "hesso_cric",
           "hesso_cric_imm")
DEFAULT_METHODS = ("dense", "scratch", "l1", "hesso", "hesso_cric")
MULTIPLE_OF = 8
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn", "mnist1d")


def reference_schedule(steps: int) -> dict:
  """The reference's schedule advice: start pruning at 1/10 of training, finish by 1/4, 10 periods
  (so 3/4 of the run trains the pruned model)."""
  return {"warmup_steps": int(0.1 * steps), "pruning_steps": int(0.15 * steps),
          "pruning_periods": 10}


# ------------------------------------------------------------------------------------------------
# provenance and cache keys
# ------------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
  out = {}
  for p in _PACKAGES:
    try:
      out[p] = md.version(p)
    except md.PackageNotFoundError:
      out[p] = "absent"
  return out


def code_hash() -> str:
  """sha1 over every .py file of the ``hesso_jax`` package and of ``experiments/`` (12 hex)."""
  h = hashlib.sha1()
  roots = [pathlib.Path(hj.__file__).parent, pathlib.Path(__file__).parent]
  for root in roots:
    for f in sorted(root.rglob("*.py")):
      h.update(str(f.relative_to(root.parent)).encode())
      h.update(f.read_bytes())
  return h.hexdigest()[:12]


def git_commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True, cwd=pathlib.Path(__file__).parent).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def provenance() -> dict:
  return {"commit": git_commit(), "code_sha1": code_hash(), "packages": package_versions(),
          "machine": {"platform": platform.platform(), "processor": platform.processor(),
                      "python": platform.python_version(), "backend": jax.default_backend(),
                      "devices": [str(d) for d in jax.devices()]}}


# ------------------------------------------------------------------------------------------------
# pieces shared by the methods
# ------------------------------------------------------------------------------------------------


def fixed_mask(space_p: hj.SearchSpace, pruned: jax.Array) -> optax.GradientTransformation:
  """Holds the groups in ``pruned`` at exactly zero: the update takes their producers to 0."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    new = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    new = space_p.zero_groups(new, pruned)
    return jax.tree_util.tree_map(lambda n, p: n - p, new, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def l1_group_norms(space_p: hj.SearchSpace, params: Any) -> np.ndarray:
  """L1 norm of each group's producer slices (the classic magnitude criterion)."""
  return np.asarray(space_p.group_reduce(jnp.abs, params))


class Task:
  """A task's model, data, evaluation, search space and FLOP counter for one seed."""

  def __init__(self, name: str, small: bool, seed: int):
    self.name, self.small, self.seed = name, small, seed
    self.cfg = R.CONFIGS[name]
    self.steps = self.cfg.small_steps if small else self.cfg.steps
    self.model, self.make_iter, x_ex, self.evaluate, self.info = R.load_task(name, small, self.cfg, seed)
    self.x = jnp.asarray(x_ex)
    self.fn = lambda v, xb: self.model.apply(v, xb, train=False)
    self.variables = T.init_variables(self.model, x_ex, seed=seed)
    self.space = hj.discover(self.fn, self.variables, self.x)
    self.space_p = self.space.subtree("params")
    self.full = hj.count(self.fn, self.variables, self.x, params_only=True)

  def base(self, steps: int) -> optax.GradientTransformation:
    return R.make_base_tx(self.cfg, steps, self.cfg.lr)

  def train(self, variables: dict, tx: optax.GradientTransformation, steps: int, *,
            data=None, value_fn: bool = False) -> T.TrainResult:
    return T.train(self.model, variables, tx, data if data is not None else self.make_iter(), steps,
                   progress=False, log_every=max(1, steps // 50), value_fn=value_fn)

  def kept(self, variables: dict, pruned: np.ndarray, *, zeroed: bool = True,
           multiple_of: int = MULTIPLE_OF) -> dict:
    """Params and FLOPs of the compressed model (widths aligned to MULTIPLE_OF) vs the full one.

    ``zeroed=False`` when the ``pruned`` groups are not zero yet (the L1 search): compress then
    only sizes the model, and no (meaningless) output difference is computed.
    """
    keep = jnp.asarray(~np.asarray(pruned, bool))
    small_fn, small = hj.compress(self.fn, variables, self.space, self.x, keep=keep,
                                  multiple_of=multiple_of, check_zero=zeroed)
    c = hj.count(small_fn, small, self.x, params_only=True)
    out = {"params_kept_pct": 100.0 * c["params"] / self.full["params"],
           "flops_kept_pct": 100.0 * c["flops"] / self.full["flops"],
           "pruned": np.asarray(pruned, bool).tolist()}
    if zeroed:  # an equivalence check only means something when the dropped groups are zero
      diff = small_fn(small, self.x) - self.fn(variables, self.x)
      out["compress_max_abs_diff"] = float(jnp.max(jnp.abs(diff)))
    return out


def zero_mask_of(space_p: hj.SearchSpace, params: Any) -> np.ndarray:
  return np.asarray(space_p.group_norms(params) == 0)


# ------------------------------------------------------------------------------------------------
# the five methods
# ------------------------------------------------------------------------------------------------


def run_dense(t: Task) -> tuple[dict, dict]:
  """Dense training; also returns the parameters after the warm-up (for the L1 baseline)."""
  s = R.schedule(t.steps)
  data = t.make_iter()
  tx = t.base(t.steps)
  opt_state = optax.with_extra_args_support(tx).init(t.variables["params"])
  warm = T.train(t.model, t.variables, tx, data, s["warmup_steps"], progress=False, opt_state=opt_state)
  rest = T.train(t.model, warm.variables, tx, data, t.steps - s["warmup_steps"], progress=False,
                 opt_state=warm.opt_state)
  return {**t.evaluate(rest.variables), "train_seconds": warm.seconds + rest.seconds}, warm.variables


def run_hesso(t: Task, sparsity: float, schedule: dict | None = None,
              multiple_of: int = MULTIPLE_OF) -> tuple[dict, np.ndarray]:
  """HESSO with the experiments' default schedule (``R.schedule``) or ``schedule``."""
  sched = schedule or R.schedule(t.steps)
  tx = hj.hesso(t.base(t.steps), t.space_p, target_group_sparsity=sparsity,
                multiple_of=multiple_of, **sched)
  res = t.train(t.variables, tx, t.steps)
  pruned = zero_mask_of(t.space_p, res.variables["params"])
  return {**t.evaluate(res.variables), **t.kept(res.variables, pruned, multiple_of=multiple_of),
          "group_sparsity": float(pruned.mean()), "train_seconds": res.seconds,
          "schedule": sched, "multiple_of": multiple_of}, pruned


def run_cric(t: Task, sparsity: float, cycle_forgetting: str = "gradual") -> dict:
  from experiments.sweep import comparable_cric_schedule

  kw = comparable_cric_schedule(t.steps, len(t.space_p.prunable_spaces),
                                max_cycle_period=2 if t.small else 5)
  tx = hj.hesso_cric(t.base(t.steps), t.space_p, target_group_sparsity=sparsity,
                     multiple_of=MULTIPLE_OF, cycle_forgetting=cycle_forgetting, **kw)
  res = t.train(t.variables, tx, t.steps, value_fn=True)  # same-minibatch losses
  pruned = zero_mask_of(t.space_p, res.variables["params"])
  st = res.opt_state
  extra = {"cric_end": int(st.end)} if hasattr(st, "end") else {}
  return {**t.evaluate(res.variables), **t.kept(res.variables, pruned), **extra,
          "group_sparsity": float(pruned.mean()), "train_seconds": res.seconds, "cric": kw}


def run_scratch(t: Task, pruned: np.ndarray) -> dict:
  """HESSO's architecture, re-initialised (seed + 1000) and trained with its groups held at 0."""
  v0 = T.init_variables(t.model, np.asarray(t.x), seed=t.seed + 1000)
  mask = jnp.asarray(pruned)
  v0 = {**v0, "params": t.space_p.zero_groups(v0["params"], mask)}
  tx = optax.chain(t.base(t.steps), fixed_mask(t.space_p, mask))
  res = t.train(v0, tx, t.steps)
  return {**t.evaluate(res.variables), **t.kept(res.variables, pruned),
          "group_sparsity": float(np.mean(pruned)), "train_seconds": res.seconds}


def l1_mask_at_flops(t: Task, variables: dict, flops_pct: float) -> np.ndarray:
  """The lowest-L1 groups whose removal keeps the FLOPs closest to ``flops_pct`` %.

  Groups are ranked globally by L1 norm and taken with ``hj.optim.select_groups`` and
  ``multiple_of=MULTIPLE_OF``, the rule HESSO applies: every space keeps at least MULTIPLE_OF
  groups and a pruned space keeps a multiple of it. Without that rule most removed groups would
  be given back by the aligned ``hj.compress`` and the FLOPs would fall in coarse steps, far
  below the target.
  """
  norms = jnp.asarray(l1_group_norms(t.space_p, variables["params"]), jnp.float32)
  g = int(norms.shape[0])
  none = jnp.zeros((g,), bool)

  def mask(k: int) -> np.ndarray:
    return np.asarray(hj.optim.select_groups(norms, ~none, k, t.space_p, none, MULTIPLE_OF))

  lo, hi = 0, g  # select_groups caps each space, so k = g removes as much as the rule allows
  if t.kept(variables, mask(hi), zeroed=False)["flops_kept_pct"] > flops_pct + 1e-9:
    raise RuntimeError(f"l1: the FLOPs target {flops_pct:.2f}% is out of reach")
  flops = lambda k: t.kept(variables, mask(k), zeroed=False)["flops_kept_pct"]
  while lo < hi:
    mid = (lo + hi) // 2
    if flops(mid) <= flops_pct + 1e-9:
      hi = mid
    else:
      lo = mid + 1
  # On a small network one more group can remove a whole MULTIPLE_OF block of a wide layer, so the
  # FLOPs jump past the target; take whichever side of the jump lands closer to it.
  if hi > 0 and abs(flops(hi - 1) - flops_pct) < abs(flops(hi) - flops_pct):
    return mask(hi - 1)
  return mask(hi)


def run_l1(t: Task, warm_variables: dict, flops_pct: float) -> dict:
  s = R.schedule(t.steps)
  pruned = l1_mask_at_flops(t, warm_variables, flops_pct)
  mask = jnp.asarray(pruned)
  v0 = {**warm_variables, "params": t.space_p.zero_groups(warm_variables["params"], mask)}
  rest = t.steps - s["warmup_steps"]
  tx = optax.chain(t.base(rest), fixed_mask(t.space_p, mask))
  res = t.train(v0, tx, rest)
  return {**t.evaluate(res.variables), **t.kept(res.variables, pruned),
          "group_sparsity": float(np.mean(pruned)), "train_seconds": res.seconds,
          "l1_target_flops_pct": flops_pct}


# ------------------------------------------------------------------------------------------------
# the study
# ------------------------------------------------------------------------------------------------


def _cached(path: pathlib.Path, key: dict, compute) -> dict:
  if path.exists():
    rec = json.loads(path.read_text())
    if rec.get("key") == key:
      return rec
  t0 = time.perf_counter()
  rec = {"key": key, **compute(), "wall_seconds": time.perf_counter() - t0}
  T.write_json(rec, path)
  return rec


def study(tasks, sparsities, seeds, *, small: bool, out: pathlib.Path, methods=METHODS) -> list[dict]:
  from tqdm.auto import tqdm

  code = code_hash()
  versions = package_versions()
  runs_dir = out / "runs"
  records: list[dict] = []
  per_sparsity = len([m for m in methods if m != "dense"])
  total = len(tasks) * len(seeds) * (1 + len(sparsities) * per_sparsity)
  bar = tqdm(total=total, desc="study", dynamic_ncols=True)
  for task in tasks:
    for seed in seeds:
      t = Task(task, small, seed)

      def key(method, sp):
        return {"task": task, "seed": seed, "method": method, "sparsity": sp, "steps": t.steps,
                "small": small, "code_sha1": code, "packages": versions, "multiple_of": MULTIPLE_OF}

      stem = f"{task}{'_small' if small else ''}_seed{seed}"
      warm: dict = {}

      def dense():
        rec, warm["v"] = run_dense(t)
        return rec

      rec = _cached(runs_dir / f"{stem}_dense.json", key("dense", 0.0), dense)
      records.append(rec)
      bar.update()
      for sp in sparsities:
        pruned_box: dict = {}

        def hesso():
          rec, pruned_box["m"] = run_hesso(t, sp)
          return {**rec, "pruned": pruned_box["m"].tolist()}

        h = _cached(runs_dir / f"{stem}_hesso_s{sp:g}.json", key("hesso", sp), hesso)
        records.append(h)
        bar.update()
        pruned = np.asarray(h["pruned"], bool)
        for method in methods:
          if method in ("dense", "hesso"):
            continue
          if method == "hesso_m1":
            fn = lambda: run_hesso(t, sp, multiple_of=1)[0]
          elif method == "hesso_ref":
            fn = lambda: run_hesso(t, sp, reference_schedule(t.steps))[0]
          elif method == "scratch":
            fn = lambda: run_scratch(t, pruned)
          elif method == "l1":
            if "v" not in warm:  # dense came from the cache: recompute its warm-up
              _, warm["v"] = run_dense(t)
            fn = lambda: run_l1(t, warm["v"], h["flops_kept_pct"])
          elif method == "hesso_cric_imm":
            fn = lambda: run_cric(t, sp, "immediate")
          else:
            fn = lambda: run_cric(t, sp)
          records.append(_cached(runs_dir / f"{stem}_{method}_s{sp:g}.json", key(method, sp), fn))
          bar.update()
  bar.close()
  return records


def summarise(records: list[dict]) -> list[dict]:
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    k = r["key"]
    groups.setdefault((k["task"], k["method"], k["sparsity"]), []).append(r)
  rows = []
  for (task, method, sp), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2],
                                                                      METHODS.index(kv[0][1]))):
    metric = T.metric_of(task)
    vals = np.array([r[metric] for r in rs], float)
    row = {"task": task, "method": method, "sparsity": sp, "metric": metric, "n": len(rs),
           "mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(rs) > 1 else 0.0,
           "seeds": [r["key"]["seed"] for r in rs]}
    for f in ("params_kept_pct", "flops_kept_pct", "group_sparsity"):
      if all(f in r for r in rs):
        row[f] = float(np.mean([r[f] for r in rs]))
    rows.append(row)
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| task | target | method | accuracy % or perplexity (mean ± std, n) | group sparsity | "
           "params kept | FLOPs kept |", "|---|---:|---|---:|---:|---:|---:|"]
  for r in rows:
    scale = 100 if r["metric"] == "accuracy" else 1
    pct = lambda k: f"{r[k]:.1f}%" if k in r else "100%"
    tgt = "-" if r["method"] == "dense" else f"{r['sparsity']:.0%}"
    gs = f"{100 * r['group_sparsity']:.1f}%" if "group_sparsity" in r else "0%"
    lines.append(f"| {r['task']} | {tgt} | {r['method']} | {scale * r['mean']:.2f} ± "
                 f"{scale * r['std']:.2f} (n={r['n']}) | {gs} | {pct('params_kept_pct')} | "
                 f"{pct('flops_kept_pct')} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tasks", nargs="+", default=["digits_cnn", "mnist1d"], choices=R.TASKS)
  ap.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9])
  ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
  ap.add_argument("--small", action="store_true")
  ap.add_argument("--out", default=None, help="output folder (default results/study[_small])")
  a = ap.parse_args(argv)
  out = pathlib.Path(a.out or T.results_dir("study" + ("_small" if a.small else "")))
  if "hesso" not in a.methods:
    raise SystemExit("--methods must include hesso (the baselines are matched to its result)")
  prov = provenance()  # of the code that runs, taken before the (long) study
  records = study(a.tasks, a.sparsities, a.seeds, small=a.small, out=out, methods=tuple(a.methods))
  rows = summarise(records)
  T.write_json({"provenance": prov, "command": "python -m experiments.study " +
                " ".join(argv if argv is not None else __import__("sys").argv[1:]),
                "rows": rows, "runs": [{k: v for k, v in r.items() if k != "pruned"} for r in records]},
               out / "study.json")
  md_text = markdown(rows)
  (out / "study.md").write_text(md_text + "\n")
  print(json.dumps(rows, indent=1))
  print(md_text)


if __name__ == "__main__":
  main()
