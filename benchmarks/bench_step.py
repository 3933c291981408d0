"""HESSO / HESSO-CRIC step cost per phase, relative to the plain base optimizer.

Two models: an MLP (784-1024-1024-10, batch 16: the optimizer is a large share of the step) and
the digits CNN (experiments.models.DigitsCNN, 8x8x1, BatchNorm in train mode, batch 64). Base
optimizer: SGD with momentum 0.9. For each phase of each schedule two things are timed, each as
a ratio to the same measurement with the plain base optimizer:

* ``opt``: the optimizer alone (``tx.update`` + ``optax.apply_updates`` on fixed gradients);
* ``train``: the whole jitted train step (forward, backward, update, apply).

Phases (HESSO: warm-up 2 steps, 2 periods of 4 steps; CRIC: start 2, cycles of 3 steps, at most
2 cycles, hybrid 3 steps):

* ``warmup``: before any selection (must cost what the base costs);
* ``selection``: HESSO's period start (saliency + global ranking); CRIC's cycle steps (saliency
  every step);
* ``forgetting``: HESSO inside a period; CRIC's hybrid forgetting;
* ``committed``: after the last commit (pruned groups kept at zero).

Each variant is timed at a fixed optimizer state reached by running the schedule (the same state
is fed every call, so the same phase runs each time). Variants are interleaved round-robin and
ratios are medians of per-round ratios (robust to load drift on a shared machine). The row
``sgd_again`` is an A/A control: the plain step compiled and carried a second time, so its
distance from 1 is what this machine and method read as "no difference". The whole-run means
(:func:`run_means`) weight the phase ratios by the phases' shares of a run of the experiments'
schedules.

    python -m benchmarks.bench_step [--small] [--no-donate]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hesso_jax as hj
from benchmarks.common import (
  clock_ratios,
  compile_counting_allocations,
  interleaved_clocks,
  markdown_table,
  table,
  write_json,
)
from experiments import run as R
from experiments.models import DigitsCNN

HESSO_KW = dict(target_group_sparsity=0.5, warmup_steps=2, pruning_steps=8, pruning_periods=2)
CRIC_KW = dict(target_group_sparsity=0.5, start_cric_step=2, sampling_steps=3, max_cycle_period=2,
               hybrid_training_steps=3, trial_sparsities=(0.5,))


def _mlp_task(key: jax.Array, width: int = 1024):
  dims = (784, width, width, 10)
  params, spaces = {}, []
  for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
    k1, key = jax.random.split(key)
    params[f"l{i}"] = {"kernel": jax.random.normal(k1, (a, b)) / np.sqrt(a), "bias": jnp.zeros(b)}
  for i in range(len(dims) - 2):
    spaces.append(hj.ChannelSpace(dims[i + 1], (
        hj.AxisSlice((f"l{i}", "kernel"), 1), hj.AxisSlice((f"l{i}", "bias"), 0),
        hj.AxisSlice((f"l{i + 1}", "kernel"), 0, hj.CONSUMER)), name=f"h{i}"))
  x = jax.random.normal(key, (16, dims[0]))
  y = jax.random.randint(key, (16,), 0, dims[-1])

  def loss_fn(p, aux, x, y):
    h = x
    for i in range(len(dims) - 1):
      h = h @ p[f"l{i}"]["kernel"] + p[f"l{i}"]["bias"]
      h = jax.nn.relu(h) if i < len(dims) - 2 else h
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean(), aux

  return params, {}, loss_fn, (x, y), hj.SearchSpace(tuple(spaces))


def _cnn_task(key: jax.Array):
  model = DigitsCNN()
  x = jax.random.normal(key, (64, 8, 8, 1))
  y = jax.random.randint(key, (64,), 0, 10)
  v = model.init(key, x)

  def loss_fn(params, bs, x, y):
    logits, new = model.apply({"params": params, "batch_stats": bs}, x, train=True,
                              mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

  space = hj.discover(lambda v, x: model.apply(v, x, train=False), v, x).subtree("params")
  return v["params"], v["batch_stats"], loss_fn, (x, y), space


TASKS = {"mlp": _mlp_task, "cnn": _cnn_task}


def _train_body(tx, loss_fn: Callable, cric: bool) -> Callable:
  def step(params, aux, opt_state, x, y):
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, aux, x, y)
    kw = {"value": loss} if cric else {}
    upd, opt_state = tx.update(g, opt_state, params, **kw)
    return optax.apply_updates(params, upd), aux, opt_state
  return step


def _train_step(tx, loss_fn: Callable, cric: bool) -> Callable:
  return jax.jit(_train_body(tx, loss_fn, cric))


# The timed steps. The phase of a HESSO/CRIC step is a function of the state's ``count`` (and
# CRIC's ``end``) only, so those fields are passed separately and kept fixed, and everything else
# (params, batch-norm state, optimizer state) is carried from call to call. ``donate=True``
# donates the carried buffers, as a real training loop does, so XLA may update them in place.

_PHASE_FIELDS = ("count", "end")


def _split(state):
  """(the phase fields, the state with those fields set to None) of a HESSO/CRIC state."""
  if not hasattr(state, "_replace"):
    return {}, state
  fields = {k: getattr(state, k) for k in _PHASE_FIELDS if k in state._fields}
  return fields, state._replace(**{k: None for k in fields})


def _timed_train(tx, loss_fn: Callable, cric: bool, donate: bool) -> Callable:
  body = _train_body(tx, loss_fn, cric)

  def step(params, aux, rest, phase, x, y):
    params, aux, opt_state = body(params, aux, rest._replace(**phase) if phase else rest, x, y)
    return params, aux, _split(opt_state)[1]
  return jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())


def _timed_opt(tx, cric: bool, donate: bool) -> Callable:
  def step(grads, params, rest, phase):
    opt_state = rest._replace(**phase) if phase else rest
    kw = {"value": jnp.ones([], jnp.float32)} if cric else {}
    upd, opt_state = tx.update(grads, opt_state, params, **kw)
    return optax.apply_updates(params, upd), _split(opt_state)[1]
  return jax.jit(step, donate_argnums=(1, 2) if donate else ())


class _Carry:
  """A zero-argument callable running one step on carried (params, aux, state) buffers."""

  def __init__(self, fn: Callable, params, aux, state, args: tuple, train: bool, donate: bool):
    self.phase, rest = _split(state)
    copy = (lambda t: jax.tree_util.tree_map(jnp.copy, t)) if donate else (lambda t: t)
    self.fn, self.args, self.train = fn, args, train
    self.p, self.a, self.rest = copy(params), copy(aux), copy(rest)

  def __call__(self):
    if self.train:
      self.p, self.a, self.rest = self.fn(self.p, self.a, self.rest, self.phase, *self.args)
    else:
      self.p, self.rest = self.fn(self.args[0], self.p, self.rest, self.phase)
    return self.p


def control_names(controls: int) -> list[str]:
  """Names of ``controls`` A/A copies of the base step: ``sgd_again``, ``sgd_again_2``, ..."""
  return ["sgd_again"] + [f"sgd_again_{i}" for i in range(2, controls + 1)]


def _base_and_control(base, grads, params, aux, controls: int = 1
                      ) -> tuple[dict[str, _Carry], dict[str, dict]]:
  """The donated optimizer-only step of the plain ``base`` (``"sgd"``) and its A/A controls
  (:func:`control_names`: the same step compiled and carried again, each with its own buffers,
  whose ratios are what this machine and method report for "no difference"; several show how
  far that spreads), with each compiled step's buffer allocations
  (:func:`benchmarks.common.compile_counting_allocations`)."""
  calls, allocs = {}, {}
  for name in ("sgd", *control_names(controls)):
    st = base.init(params)
    step, allocs[name] = compile_counting_allocations(
      _timed_opt(base, False, True).lower(grads, params, st, {}))
    calls[name] = _Carry(step, params, aux, st, (grads,), False, True)
  return calls, allocs


def _states_by_phase(tx, step, params, aux, batch, phase_of: Callable, limit: int) -> dict:
  """Run the schedule; keep the first (params, aux, state) seen in each phase."""
  st = tx.init(params)
  found: dict[str, Any] = {}
  for _ in range(limit):
    ph = phase_of(st)
    if ph is not None and ph not in found:
      found[ph] = (params, aux, st)
    params, aux, st = step(params, aux, st, *batch)
  return found


def _hesso_phase(st) -> str | None:
  c, W, T = int(st.count), HESSO_KW["warmup_steps"], HESSO_KW["pruning_steps"] // 2
  if c < W:
    return "warmup"
  if c >= W + 2 * T:
    return "committed"
  return "selection" if (c - W) % T == 0 else "forgetting"


def _cric_phase_of(space):
  sched = hj.optim.cric_schedule(space, **{k: v for k, v in CRIC_KW.items()
                                           if k != "target_group_sparsity"})

  def phase(st) -> str | None:
    c, end = int(st.count), int(st.end)
    if c < CRIC_KW["start_cric_step"]:
      return "warmup"
    if sched["cycles_start"] < c < end and (c - sched["cycles_start"]) % 3 != 0:
      return "selection"
    if end < c < end + CRIC_KW["hybrid_training_steps"] - 1:
      return "forgetting"
    if c > end + CRIC_KW["hybrid_training_steps"]:
      return "committed"
    return None

  return phase, sched["latest_done"] + 4


def hesso_states(tx, loss_fn: Callable, params, aux, batch) -> dict:
  """The (params, aux, state) at which each HESSO phase is timed (``HESSO_KW``'s schedule)."""
  return _states_by_phase(tx, _train_step(tx, loss_fn, False), params, aux, batch,
                          _hesso_phase, 12)


def cric_states(cric, space, loss_fn: Callable, params, aux, batch) -> dict:
  """The (params, aux, state) at which each HESSO-CRIC phase is timed (``CRIC_KW``'s schedule;
  its cycle steps are the phase named ``selection``)."""
  phase, limit = _cric_phase_of(space)
  return _states_by_phase(cric, _train_step(cric, loss_fn, True), params, aux, batch, phase,
                          limit)


def phase_calls(label: str, tx, cric: bool, states: dict, loss_fn: Callable, grads, batch,
                donate: bool, measures: tuple[str, ...] = ("train", "opt")) -> dict[str, _Carry]:
  """``{"<label>/<phase>/<measure>": step}``: for each phase's state, the carried train step
  (``train``) and optimizer-only step on ``grads`` (``opt``)."""
  tstep, ostep = _timed_train(tx, loss_fn, cric, donate), _timed_opt(tx, cric, donate)
  calls = {}
  for ph, (p, a, s) in states.items():
    if "train" in measures:
      calls[f"{label}/{ph}/train"] = _Carry(tstep, p, a, s, batch, True, donate)
    if "opt" in measures:
      calls[f"{label}/{ph}/opt"] = _Carry(ostep, p, a, s, (grads,), False, donate)
  return calls


def bench_model(name: str, repeats: int, inner: int, donate: bool) -> tuple[list[dict], dict]:
  t0 = time.perf_counter()
  params, aux, loss_fn, batch, space = TASKS[name](jax.random.PRNGKey(0))
  base = optax.sgd(1e-2, momentum=0.9)
  grads = jax.grad(lambda p: loss_fn(p, aux, *batch)[0])(params)
  calls: dict[str, Callable] = {}

  def add(label, tx, cric, states):
    calls.update(phase_calls(label, tx, cric, states, loss_fn, grads, batch, donate))

  add("sgd", base, False, {"-": (params, aux, base.init(params))})
  # A/A control: plain SGD compiled and carried a second time (what "no difference" reads as)
  add("sgd_again", base, False, {"-": (params, aux, base.init(params))})
  tx = hj.hesso(base, space, **HESSO_KW)
  add("hesso", tx, False, hesso_states(tx, loss_fn, params, aux, batch))
  cric = hj.hesso_cric(base, space, **CRIC_KW)
  add("cric", cric, True, cric_states(cric, space, loss_fn, params, aux, batch))
  setup = time.perf_counter() - t0
  clocks = interleaved_clocks(calls, repeats=repeats, inner=inner, warmup=3)
  rows = []
  for k in calls:
    label, ph, kind = k.split("/")
    if label == "sgd":
      continue
    base_k = f"sgd/-/{kind}"
    row = {"model": name, "optimizer": label, "phase": ph, "measure": kind}
    # ratio, q25, ... (wall clock); cpu_ratio, ... (CPU time)
    row.update(clock_ratios(clocks, k, base_k, base_label="base"))
    rows.append(row)
  n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
  return rows, {"params": n_params, "groups": space.num_groups,
                "prunable_spaces": len(space.prunable_spaces),
                "setup_and_compile_s": setup, "timing_s": time.perf_counter() - t0 - setup}


def run_fractions(steps: int, num_spaces: int) -> dict[str, dict[str, float]]:
  """Share of each timed phase in a run of ``steps`` steps with the experiments' schedules
  (``experiments.run.schedule`` / ``cric_schedule``, not small): HESSO's warm-up, one selection
  step per period, the rest of its pruning steps forgetting, the remainder committed;
  HESSO-CRIC's warm-up, its probing steps (3 trial sparsities) and all its cycles (the worst
  case; probing steps are counted at the cycle steps' cost, as both score every step), its
  hybrid steps forgetting, the remainder committed."""
  h, c = R.schedule(steps), R.cric_schedule(steps, small=False)
  sel = h["pruning_periods"]
  hesso = {"warmup": h["warmup_steps"], "selection": sel,
           "forgetting": h["pruning_steps"] - sel}
  cyc = 2 * num_spaces * 3 + c["max_cycle_period"] * c["sampling_steps"]
  cric = {"warmup": c["start_cric_step"], "selection": cyc,
          "forgetting": c["hybrid_training_steps"]}
  return {name: {**{ph: n / steps for ph, n in ph_steps.items()},
                 "committed": 1 - sum(ph_steps.values()) / steps}
          for name, ph_steps in (("hesso", hesso), ("cric", cric))}


def run_means(rows: list[dict], info: dict, steps: int = 3000) -> list[dict]:
  """Whole-run mean step-time ratio per model, optimizer and measure: the per-phase ratios
  weighted by :func:`run_fractions` (a step-count-weighted mean of per-step ratios)."""
  out = []
  for model, i in info.items():
    fr = run_fractions(steps, i["prunable_spaces"])
    for opt, phases in fr.items():
      for measure in ("opt", "train"):
        got = {r["phase"]: r for r in rows
               if (r["model"], r["optimizer"], r["measure"]) == (model, opt, measure)}
        if set(got) != set(phases):
          continue
        row = {"model": model, "optimizer": opt, "measure": measure, "steps": steps,
               "cycle_or_selection_share": phases["selection"]}
        for pre in ("", "cpu_"):
          row[f"{pre}ratio"] = sum(f * got[ph][f"{pre}ratio"] for ph, f in phases.items())
        out.append(row)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true", help="fewer repeats (a quick check)")
  ap.add_argument("--models", default="mlp,cnn")
  ap.add_argument("--no-donate", dest="donate", action="store_false",
                  help="do not donate params and optimizer state (XLA then writes every state "
                       "leaf to a fresh buffer each step)")
  a = ap.parse_args(argv)
  repeats, inner = (9, 5) if a.small else (25, 20)
  rows, info = [], {}
  for name in a.models.split(","):
    r, i = bench_model(name, repeats, inner, a.donate)
    rows += r
    info[name] = i
  means = run_means(rows, info)
  write_json("step" if a.donate else "step_no_donate", {"small": a.small, "donate": a.donate,
                      "repeats": repeats, "inner": inner, "models": info,
                      "hesso": HESSO_KW, "cric": CRIC_KW, "rows": rows, "run_means": means})
  cols = ["model", "optimizer", "phase", "measure", "median_us", "base_us", "ratio", "q25", "q75",
          "cpu_ratio", "cpu_q25", "cpu_q75"]
  fmt = {c: "{:.3f}" for c in cols[6:]}
  fmt.update(median_us="{:.0f}", base_us="{:.0f}")
  print("\n== step time per phase, ratio to plain SGD(momentum) (medians of per-round ratios; "
        "ratio: wall clock, cpu_ratio: process CPU time) ==")
  print(table(rows, cols, fmt))
  wide = {}
  for r in rows:
    w = wide.setdefault((r["model"], r["optimizer"], r["phase"]),
                        {"model": r["model"], "optimizer": r["optimizer"], "phase": r["phase"]})
    w[f"{r['measure']} (wall)"] = r["ratio"]
    w[f"{r['measure']} (cpu)"] = r["cpu_ratio"]
  print()
  print(markdown_table(list(wide.values()),
                       ["model", "optimizer", "phase", "opt (wall)", "opt (cpu)", "train (wall)",
                        "train (cpu)"],
                       {c: "{:.2f}x" for c in ("opt (wall)", "opt (cpu)", "train (wall)",
                                               "train (cpu)")}))
  print("\n== whole-run mean ratio, the experiments' schedules over 3000 steps (run_fractions) ==")
  print(table(means, ["model", "optimizer", "measure", "cycle_or_selection_share", "ratio",
                      "cpu_ratio"],
              {"cycle_or_selection_share": "{:.3f}", "ratio": "{:.3f}", "cpu_ratio": "{:.3f}"}))
  for k, i in info.items():
    print(f"{k}: setup+compile {i['setup_and_compile_s']:.1f} s, timing {i['timing_s']:.1f} s")


if __name__ == "__main__":
  main()
