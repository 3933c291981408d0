"""Where HESSO-CRIC's cycle step spends its time over SGD (an ablation).

A cycle step does three things the base optimizer does not:

* the saliency of every group (``optim._saliency.saliency``): the base update recomputed as the
  direction, three group reductions per producer leaf (``x.x``, ``d.d``, ``x.d``) and the five
  normalised criteria;
* the global bottom-``R`` of those scores (``optim._common.lowest_k``, a radix selection) and the
  violating-set bookkeeping;
* the masked update that forgets the cycle's violating set (fused with the base update).

This benchmark times the donated, carried optimizer-only cycle step (``tx.update`` +
``optax.apply_updates`` on fixed gradients, as ``bench_step``; the phase fields held fixed so the
same cycle step runs every call) of plain SGD with momentum, of HESSO-CRIC as is, and of
HESSO-CRIC with one part replaced for this measurement only (``unittest.mock`` patches of private
functions): ``no_saliency`` (scores are zeros: no direction, no group reductions),
``no_bottom_k`` (``lowest_k`` returns no group, everywhere in the step) and ``no_restore``
(the masked update never restores the parameter cache), and ``fused_stats``, which changes rather
than removes: each member's three statistics in one variadic ``lax.reduce`` instead of three
reductions (:func:`fused_stats`). ``sgd_again`` is the A/A control. Each row also counts the
compiled step's buffer allocations (total and thread-local; see ``benchmarks/bench_cond.py`` for
why they matter on XLA:CPU) and the size of its temporary buffer (``temp_bytes``). Both clocks
are read around the same calls: wall time and process CPU time.

    python -m benchmarks.bench_cycle [--small] [--repeats N]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from unittest import mock

import jax
import jax.numpy as jnp
import optax

import hesso_jax as hj
from benchmarks.bench_step import (
  CRIC_KW,
  _base_and_control,
  _Carry,
  _mlp_task,
  _split,
  _timed_opt,
  cric_states,
)
from benchmarks.common import (
  clock_ratios,
  compile_patched,
  interleaved_clocks,
  markdown_table,
  table,
  write_json,
)
from hesso_jax.optim import _common, _saliency
from hesso_jax.space import _search_space
from hesso_jax.space._layout import member_view

_MASKED_UPDATES = _common.masked_updates


def _zero_scores(sp, params, direction, weights):
  """Scores of zero that still depend on ``params`` (so the cond keeps its operand)."""
  first = jax.tree_util.tree_leaves(params)[0]
  return jnp.zeros((sp.num_groups,), jnp.float32) + 0.0 * first.reshape(-1)[0]


def _unrestored(*args, **kwargs):
  return _MASKED_UPDATES(*args, **{**kwargs, "restore": None, "restore_when": None})


def _variadic_member(fns, leaves, m, n):
  """``_search_space._reduce_member`` as one variadic ``lax.reduce`` over all ``fns``."""
  vs = tuple(member_view(f(*leaves), m, n) for f in fns)
  axes = tuple(i for i in range(vs[0].ndim) if i != m.axis + 1)
  zeros = tuple(jnp.zeros([], v.dtype) for v in vs)
  sums = jax.lax.reduce(vs, zeros, lambda a, b: tuple(p + q for p, q in zip(a, b, strict=True)),
                        axes)
  return jnp.stack(sums)


def fused_stats():
  """A patch: every member's group statistics in one variadic reduction. XLA then computes the
  direction ``d`` inside it instead of into a full-size buffer that ``<d, d>`` and ``<x, d>`` read
  (the temporary buffer of the selection drops from one float32 copy of the producer leaves to
  the group vectors), but XLA:CPU runs that reduction as a scalar loop."""
  return mock.patch.object(_search_space, "_reduce_member", _variadic_member)


#: variant -> the patches that remove one part of the cycle step
VARIANTS: dict[str, Callable[[], list]] = {
  "cric_cycle": lambda: [],
  "no_saliency": lambda: [mock.patch.object(_saliency, "saliency", _zero_scores)],
  "no_bottom_k": lambda: [
    mock.patch.object(_common, "lowest_k", lambda sc, k: jnp.zeros(sc.shape, bool))
  ],
  "no_restore": lambda: [mock.patch.object(_common, "masked_updates", _unrestored)],
  "fused_stats": lambda: [fused_stats()],
}


def bench(width: int, repeats: int, inner: int) -> tuple[list[dict], dict]:
  params, aux, loss_fn, batch, space = _mlp_task(jax.random.PRNGKey(0), width)
  base = optax.sgd(1e-2, momentum=0.9)
  grads = jax.grad(lambda p: loss_fn(p, aux, *batch)[0])(params)
  cric = hj.hesso_cric(base, space, **CRIC_KW)
  states = cric_states(cric, space, loss_fn, params, aux, batch)
  p, a, st = states["selection"]  # a cycle step (not a boundary)
  calls, allocs = _base_and_control(base, grads, params, aux)
  ph, rest = _split(st)
  for name, patches in VARIANTS.items():
    step, allocs[name] = compile_patched(
      patches(), lambda: _timed_opt(cric, True, True).lower(grads, p, rest, ph))
    calls[name] = _Carry(step, p, a, st, (grads,), False, True)
  clocks = interleaved_clocks(calls, repeats=repeats, inner=inner, warmup=3)
  n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
  rows = []
  for name in ["sgd_again", *VARIANTS]:
    row = {"width": width, "params": n_params, "variant": name,
           "allocations": allocs[name].get("total"),
           "thread_local": allocs[name].get("thread_local"),
           "temp_bytes": allocs[name].get("temp_bytes")}
    row.update(clock_ratios(clocks, name, "sgd"))
    rows.append(row)
  return rows, {"count": int(st.count), "end": int(st.end), "groups": space.num_groups}


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true", help="a width-256 MLP, few repeats (a check)")
  ap.add_argument("--repeats", type=int, help="interleaved rounds (default 300; --small 7)")
  a = ap.parse_args(argv)
  width, repeats, inner = (256, 7, 3) if a.small else (1024, 300, 3)
  rows, info = bench(width, a.repeats or repeats, inner)
  write_json("cycle", {"small": a.small, "repeats": a.repeats or repeats, "inner": inner,
                       "cric": CRIC_KW, **info, "rows": rows})
  fmt = {c: "{:.3f}" for c in ("ratio", "q25", "q75", "cpu_ratio", "cpu_q25", "cpu_q75")}
  fmt.update(median_us="{:.0f}", sgd_us="{:.0f}", cpu_median_us="{:.0f}")
  print("\n== HESSO-CRIC cycle step (donated, optimizer only), ratio to SGD(momentum); ratio: wall "
        "clock, cpu_ratio: process CPU time ==")
  print(table(rows, ["width", "params", "variant", "median_us", "sgd_us", "ratio", "q25", "q75",
                     "cpu_ratio", "cpu_q25", "cpu_q75", "allocations", "thread_local",
                     "temp_bytes"], fmt))
  print()
  print(markdown_table(rows, ["variant", "median_us", "sgd_us", "ratio", "cpu_ratio",
                              "allocations", "thread_local", "temp_bytes"],
                       {"ratio": "{:.2f}x", "cpu_ratio": "{:.2f}x", "median_us": "{:.0f}",
                        "sgd_us": "{:.0f}"}))


if __name__ == "__main__":
  main()
