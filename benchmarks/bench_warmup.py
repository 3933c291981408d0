"""Where HESSO's warm-up step spends its time over the base optimizer (an ablation).

Before its first selection a HESSO step does three things the base optimizer does not:

* the selection ``lax.cond`` (not taken) and the ``(G,)`` bookkeeping around it;
* ``after(...)``: the tiny reduction that orders the base update after that cond (so a donated
  step updates the state in place);
* the masked update: per element, the ``(G,)`` forget / zero masks broadcast inside the fused
  ``update + apply_updates`` pass. It is wrapped in ``where(live, masked, u)`` with ``live`` the
  scalar "some mask is set", so the CPU backend unswitches the loop and a warm-up step (nothing
  set) runs the plain loop.

This benchmark times the donated, carried optimizer-only step (``tx.update`` +
``optax.apply_updates`` on fixed gradients, as ``bench_step``) of plain SGD with momentum, of
HESSO in its warm-up, and of HESSO with one part changed (``unittest.mock`` patches of the private
functions, for this measurement only): ``ungated`` (the masked expression without the scalar gate:
the code before it), ``unstored`` (the masks and phase scalars computed inside the per-element
loop instead of stored before it by ``optim._common.stored``), ``no_mask`` (the update is the base
update), ``no_cond`` (no selection cond and no ``after``), ``bookkeeping`` (neither the cond nor
the masked update: what is left is the schedule scalars and the ``(G,)`` mask updates),
``no_direction`` (the selection scores magnitudes only, so it neither recomputes nor stores the
update direction), ``fused_stats`` (the selection's statistics in one variadic reduction per
member, so the step has no full-size temporary buffer; ``benchmarks/bench_cycle.py``) and
``bare`` (the base update and the count increment only; HESSO's masks pass through unchanged).
``sgd_again`` is an A/A control: plain SGD compiled a second time, whose ratio to SGD shows the
measurement's own bias and spread on this machine; ``--controls N`` times ``N`` such copies
(``sgd_again_2``, ...), each with its own buffers, and prints the band their ratios span: the
resolution of the run, against which a variant's ratio is read. HESSO-CRIC's warm-up step is timed too:
``cric``, ``cric_unstored``, and ``cric_no_conds`` (every phase ``lax.cond`` replaced by the
branch a warm-up step takes). Two MLP widths show whether a cost grows with the model (a
per-element cost keeps its ratio; a fixed cost shrinks with width); ``--widths cnn`` times
``bench_step``'s digits CNN instead (41 k parameters: a step of fixed costs). Both clocks are read
around the same calls: wall time and process CPU time (the latter does not count the time this
shared virtual machine spends running others, so it is much less noisy). ``--variants`` and
``--repeats`` make a focused long run (the median's standard error shrinks with the rounds).

    python -m benchmarks.bench_warmup [--small] [--widths 1024,cnn] [--variants hesso,bare]
                                      [--repeats N] [--controls N] [--out NAME]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from unittest import mock

import jax
import jax.numpy as jnp
import optax

import hesso_jax as hj
from benchmarks.bench_cycle import fused_stats
from benchmarks.bench_step import (
  CRIC_KW,
  HESSO_KW,
  _base_and_control,
  _Carry,
  _cnn_task,
  _mlp_task,
  _split,
  _timed_opt,
  control_names,
)
from benchmarks.common import (
  clock_ratios,
  compile_patched,
  interleaved_clocks,
  markdown_table,
  table,
  write_json,
)
from hesso_jax.optim import _common, _hesso

_MASKED_UPDATES = _common.masked_updates
_SALIENCY = _hesso.sal.saliency


def no_selection():
  """A patch that removes HESSO's selection ``lax.cond``: the redundant set passes unchanged."""
  return mock.patch.object(
    _hesso, "_select", lambda sp, w, m, R, sched, params, direction, redundant, pruned: redundant)


def _ungated(*args, live=None, **kwargs):
  """masked_updates without the scalar gate (no ``live``, and none computed inside)."""
  with mock.patch.object(_common, "any_set", lambda *masks: None):
    return _MASKED_UPDATES(*args, **kwargs)


#: variant -> the patches that remove one part of the warm-up step
VARIANTS: dict[str, Callable[[], list]] = {
  "hesso": lambda: [],
  # the masked expression without its scalar "some mask is set" gate (the code before the gate)
  "ungated": lambda: [mock.patch.object(_common, "masked_updates", _ungated)],
  # the masks and phase scalars fused into the per-element loop instead of stored before it
  "unstored": lambda: [mock.patch.object(_common, "stored", lambda live, tree: tree)],
  "no_mask": lambda: [mock.patch.object(_common, "masked_updates", lambda u, *a, **k: u)],
  "no_cond": lambda: [no_selection(),
                      mock.patch.object(_common, "after", lambda signals, tree: tree)],
  "bookkeeping": lambda: VARIANTS["no_cond"]() + VARIANTS["no_mask"](),
  # the selection scores magnitudes only: no direction to recompute and store (what the
  # selection branch's temporary buffer is without it)
  "no_direction": lambda: [mock.patch.object(
    _hesso.sal, "saliency",
    lambda sp, params, d, w: _SALIENCY(sp, params, None, {"magnitude": 1.0}))],
  # the selection's statistics as one variadic reduction per member (bench_cycle.fused_stats):
  # no full-size direction buffer in the step
  "fused_stats": lambda: [fused_stats()],
  "bare": lambda: VARIANTS["no_cond"]() + [
    mock.patch.object(_hesso, "_forget",  # the base update; the masks pass through
                      lambda sp, sched, params, u, redundant, forget, pruned, live:
                      (u, redundant, pruned)),
  ],
}

#: HESSO-CRIC variants (its warm-up step)
CRIC_VARIANTS: dict[str, Callable[[], list]] = {
  "cric": lambda: [],
  "cric_unstored": lambda: VARIANTS["unstored"](),
  # every phase cond replaced by its false branch, the one a warm-up step takes
  "cric_no_conds": lambda: [mock.patch.object(_common, "cond", lambda p, t, f, *ops: f(*ops))],
}


def bench_width(width: int | str, repeats: int, inner: int, only: set[str] | None = None,
                controls: int = 1) -> list[dict]:
  """The variants on the MLP of this width, or on the digits CNN for ``width == "cnn"``, with
  ``controls`` A/A copies of SGD."""
  key = jax.random.PRNGKey(0)
  params, _, _, _, space = _cnn_task(key) if width == "cnn" else _mlp_task(key, int(width))
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 1e-2), params)
  base = optax.sgd(1e-2, momentum=0.9)
  calls, allocs = _base_and_control(base, grads, params, {}, controls)
  names = [n for n in [*VARIANTS, *CRIC_VARIANTS] if only is None or n in only]
  for name in names:
    cric = name in CRIC_VARIANTS
    tx = hj.hesso_cric(base, space, **CRIC_KW) if cric else hj.hesso(base, space, **HESSO_KW)
    st = tx.init(params)
    phase, rest = _split(st)
    # the patches act while the step is traced and compiled
    step, allocs[name] = compile_patched(
      (CRIC_VARIANTS if cric else VARIANTS)[name](),
      lambda tx=tx, cric=cric, rest=rest, phase=phase: _timed_opt(tx, cric, True).lower(
        grads, params, rest, phase))
    calls[name] = _Carry(step, params, {}, st, (grads,), False, True)
  clocks = interleaved_clocks(calls, repeats=repeats, inner=inner, warmup=3)
  n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
  rows = []
  for name in [*control_names(controls), *names]:
    row = {"width": width, "params": n_params, "variant": name,
           # thread-local buffer allocations of the compiled step (SGD's in sgd_thread_local): on
           # XLA:CPU a per-execution cost, even in the branch of a cond that is not taken
           "thread_local": allocs[name].get("thread_local"),
           "sgd_thread_local": allocs["sgd"].get("thread_local"),
           # the compiled step's temporary buffer, allocated and freed on every execution
           "temp_bytes": allocs[name].get("temp_bytes")}
    row.update(clock_ratios(clocks, name, "sgd"))  # ratio, ... (wall); cpu_ratio, ... (CPU)
    rows.append(row)
  return rows


def control_spread(rows: list[dict], controls: list[str]) -> list[dict]:
  """Per width, the lowest and highest median ratio (wall and process CPU) among the A/A
  controls (the rows whose variant is in ``controls``, see :func:`control_names`): a variant
  whose ratio falls inside that band is not distinguishable from SGD by this run."""
  out = []
  for w in dict.fromkeys(r["width"] for r in rows):
    ctl = [r for r in rows if r["width"] == w and r["variant"] in controls]
    out.append({"width": w, "controls": len(ctl),
                "ratio_min": min(r["ratio"] for r in ctl),
                "ratio_max": max(r["ratio"] for r in ctl),
                "cpu_ratio_min": min(r["cpu_ratio"] for r in ctl),
                "cpu_ratio_max": max(r["cpu_ratio"] for r in ctl)})
  return out


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true", help="fewer repeats, one width (a quick check)")
  ap.add_argument("--variants", help="comma-separated variants to time (default: all)")
  ap.add_argument("--widths", help="comma-separated MLP widths, or 'cnn' for bench_step's digits "
                  "CNN (default: 1024,2048)")
  ap.add_argument("--repeats", type=int, help="interleaved rounds (default 300; --small 7)")
  ap.add_argument("--controls", type=int, default=1,
                  help="A/A copies of SGD timed alongside (default 1); with several, the spread "
                  "of their ratios is the resolution of the measurement")
  ap.add_argument("--out", default="warmup", help="results/bench_<out>.json (default: warmup)")
  a = ap.parse_args(argv)
  repeats, inner, widths = (7, 5, (256,)) if a.small else (300, 4, (1024, 2048))
  repeats = a.repeats or repeats
  widths = tuple(w if w == "cnn" else int(w) for w in a.widths.split(",")) if a.widths else widths
  only = set(a.variants.split(",")) if a.variants else None
  unknown = (only or set()) - set(VARIANTS) - set(CRIC_VARIANTS)
  if unknown:
    ap.error(f"--variants: unknown {sorted(unknown)}; known: {[*VARIANTS, *CRIC_VARIANTS]}")
  if a.controls < 1:
    ap.error(f"--controls must be >= 1, got {a.controls}")
  rows = [r for w in widths for r in bench_width(w, repeats, inner, only, a.controls)]
  spread = control_spread(rows, control_names(a.controls))
  write_json(a.out, {"small": a.small, "repeats": repeats, "inner": inner, "hesso": HESSO_KW,
                     "variants": sorted(only) if only else "all", "controls": a.controls,
                     "rows": rows, "control_spread": spread})
  fmt = {c: "{:.3f}" for c in ("ratio", "q25", "q75", "min_ratio", "cpu_ratio", "cpu_q25",
                                "cpu_q75")}
  fmt.update(median_us="{:.0f}", sgd_us="{:.0f}")
  print("\n== HESSO warm-up step (donated, optimizer only), ratio to SGD(momentum); ratio: wall "
        "clock, cpu_ratio: process CPU time ==")
  print(table(rows, ["width", "params", "variant", "median_us", "sgd_us", "ratio", "q25", "q75",
                     "min_ratio", "cpu_ratio", "cpu_q25", "cpu_q75", "thread_local", "temp_bytes"],
              fmt))
  print()
  print(markdown_table(rows, ["width", "variant", "ratio", "q25", "q75", "cpu_ratio", "cpu_q25",
                              "cpu_q75", "thread_local", "temp_bytes"],
                       {"ratio": "{:.2f}x", "q25": "{:.2f}", "q75": "{:.2f}",
                        "cpu_ratio": "{:.3f}x", "cpu_q25": "{:.3f}", "cpu_q75": "{:.3f}"}))
  if a.controls > 1:
    print("\n== A/A spread: the lowest and highest ratio of the SGD copies ==")
    print(table(spread, ["width", "controls", "ratio_min", "ratio_max", "cpu_ratio_min",
                         "cpu_ratio_max"],
                {c: "{:.3f}" for c in ("ratio_min", "ratio_max", "cpu_ratio_min",
                                       "cpu_ratio_max")}))


if __name__ == "__main__":
  main()
