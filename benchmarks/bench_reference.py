"""HESSO's step against the PyTorch original's (only-train-once 3.0.1), per phase, in one run.

The comparison issue 16 was filed on, made reproducible: the same MLP as ``bench_step``
(784-1024-1024-10, batch 16, SGD with momentum 0.9, lr 1e-2, the same initial weights and
gradients), timed in one process, interleaved round-robin with plain SGD of each framework:

* ``jax_sgd``: ``optax.sgd``; ``jax_hesso``: ``hj.hesso(optax.sgd)``, jitted and donated, at a
  fixed state in each phase, as in ``bench_step``;
* ``torch_sgd``: ``torch.optim.SGD``; ``ref_hesso``: the original ``HESSO`` optimizer with
  ``variant="sgd"``, ``first_momentum=0.9`` and its other defaults (``weight_decay=0.0``, so it
  adds ``0.0 * p`` to every gradient, as a user of its defaults pays), its parameter groups built
  by hand for the MLP (one prunable group per hidden layer: the layer's weight rows and bias, as
  its graph would build them; the output layer a non-prunable group).

Phases, each timed at a fixed state (each call runs the same phase):

* ``warmup``: before pruning starts;
* ``selection``: the first step of a period (saliency and global ranking); the reference's state
  is restored, untimed, before each of its calls (a fresh optimizer with the momentum of the
  previous call and the initial weights);
* ``forgetting``: inside a period (redundant groups decayed);
* ``committed``: after the target is reached (pruned groups kept at zero).

For each phase and for the optimizer step alone (``opt``: ``update``/``step`` on fixed gradients)
and the whole train step (``train``: forward, backward, step) it reports hesso_jax's time over the
reference's (``jax_over_ref``, the issue's measure) and each framework's HESSO over its own plain
SGD (``jax_over_sgd``, ``ref_over_sgd``: what pruning costs on top of the base optimizer, free of
the frameworks' different speeds). All are medians of per-round ratios, on wall time and on
process CPU time (all threads). torch runs with ``OMP_WAIT_POLICY=PASSIVE`` (unless set): its
threads then sleep between calls instead of spinning on the cores the JAX calls need.

HESSO-CRIC has no counterpart: only-train-once 3.0.1 on PyPI ships no CRIC (its GitHub tree has
``HESSOCRIC``, unexported). Its optimizer step is compared instead with a **lower bound** of the
original CRIC's step per phase (``ref_cric_lb``), made of the original HESSO's own methods, which
the original CRIC's step runs as well (its algorithm: ``compute_grad_variant`` every step, and
``compute_importance_scores`` plus a global bottom-K every cycle step): warm-up = the update
direction and a plain update; cycle = that, the importance scores and the global bottom-K;
hybrid forgetting = direction, update and the redundant rows scaled; committed = direction, update
and the pruned rows zeroed. The original's step does all of that and more (its bookkeeping, score
history, termination checks), so hesso_jax's CRIC below the bound is below the original. Rows
``cric/<phase>``: ``jax_over_ref`` is hesso_jax's CRIC over that bound, ``jax_over_sgd`` over optax
SGD (the cycle row is ``bench_step``'s ``selection`` phase of CRIC).

Needs ``torch`` and ``only-train-once`` in the environment (not dependencies of hesso_jax; e.g.
``pip install torch && pip install --no-deps only-train-once==3.0.1``); without them it says so and
exits. Not part of ``run_all``.

    python -m benchmarks.bench_reference [--small] [--width 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

import hesso_jax as hj
from benchmarks.bench_step import (
  CRIC_KW,
  HESSO_KW,
  _mlp_task,
  cric_states,
  hesso_states,
  phase_calls,
)
from benchmarks.common import clock_ratios, interleaved_clocks, markdown_table, table, write_json

PHASES = ("warmup", "selection", "forgetting", "committed")
CRIC_PHASES = ("warmup", "cycle", "forgetting", "committed")

#: The reference's schedule per phase (with ``target_group_sparsity=0.5``), and how many steps
#: reach the phase. Its step ``n`` (1-based) selects when ``(n - start - 1) % duration == 0``
#: and commits when ``(n - start) % duration == duration - 1``, ``duration = steps // periods``.
REF_PHASES: dict[str, tuple[dict, int]] = {
  "warmup": (dict(start_pruning_step=10**9, pruning_steps=10**9, pruning_periods=1), 0),
  # HESSO_KW's periods: every call is step 1 (restored before it), the first selection
  "selection": (dict(start_pruning_step=0, pruning_steps=8, pruning_periods=2), 0),
  # one step selects; the period never ends
  "forgetting": (dict(start_pruning_step=0, pruning_steps=10**9, pruning_periods=2), 1),
  # one period of two steps: step 1 selects and commits (its t is duration-1), the target is met
  "committed": (dict(start_pruning_step=0, pruning_steps=2, pruning_periods=1), 2),
}


def load_reference() -> tuple[Any, Any, Any] | None:
  """(torch, the original HESSO class, its TensorTransform enum), or None if not installed.

  only-train-once 3.0.1's package ``__init__`` imports its graph builder, which imports
  ``torch.onnx._globals`` (gone from recent torch). The optimizer needs none of it, so the package
  is registered as an empty module over its own folder and the optimizer module imported alone.
  """
  # torch's OpenMP threads otherwise spin after each of its calls, on the cores the next (JAX)
  # call needs; measured: the JAX train step of plain SGD, which follows a torch call in each
  # round, read 13.6 ms instead of 8.9 ms
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    import torch
  except ImportError:
    return None
  spec = importlib.util.find_spec("only_train_once")
  if spec is None or not spec.submodule_search_locations:
    return None
  if "only_train_once" not in sys.modules:
    pkg = types.ModuleType("only_train_once")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["only_train_once"] = pkg
  from only_train_once.optimizer.hesso import HESSO
  from only_train_once.transform import TensorTransform

  return torch, HESSO, TensorTransform


@contextlib.contextmanager
def cpu_only_cuda(torch):
  """``Tensor.cuda()`` returns the tensor unchanged while active: the reference's selection moves
  its mask to the GPU unconditionally (``identify_redundant_groups``), which fails on a CPU."""
  orig = torch.Tensor.cuda
  torch.Tensor.cuda = lambda self, *a, **k: self
  try:
    yield
  finally:
    torch.Tensor.cuda = orig


def torch_mlp(torch, params: dict) -> Any:
  """The ``bench_step`` MLP in torch, with the JAX ``params``' values (a kernel is ``weight.T``)."""
  n = len(params)
  mods = []
  for i in range(n):
    k, b = np.asarray(params[f"l{i}"]["kernel"]), np.asarray(params[f"l{i}"]["bias"])
    lin = torch.nn.Linear(*k.shape)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(k.T.copy()))
      lin.bias.copy_(torch.from_numpy(b.copy()))
    mods += [lin] + ([torch.nn.ReLU()] if i < n - 1 else [])
  return torch.nn.Sequential(*mods)


def ref_param_groups(model, TT) -> list[dict]:
  """The reference's parameter groups for the MLP: a prunable group per hidden layer (the rows of
  its weight and its bias, one group per output channel) and the output layer non-prunable."""
  lins = [m for m in model if hasattr(m, "weight")]
  groups = []
  for i, lin in enumerate(lins):
    groups.append(dict(
      id=f"l{i}", num_groups=lin.out_features, is_prunable=i < len(lins) - 1,
      is_auxiliary=False, auxiliary_ngs=[], p_names=[f"l{i}.weight", f"l{i}.bias"],
      params=[lin.weight, lin.bias], p_transform=[TT.BASIC, TT.BASIC]))
  return groups


def torch_grads(torch, grads: dict) -> list:
  """The JAX MLP ``grads`` as torch tensors in ``model.parameters()`` order (kernels transposed)."""
  return [torch.from_numpy(np.asarray(g).T.copy()) for lay in grads.values()
          for g in (lay["kernel"], lay["bias"])]


def ref_hesso(ref, model, cfg: dict) -> Any:
  """The original HESSO on ``model`` (SGD variant, momentum 0.9, lr 1e-2, target sparsity of
  ``HESSO_KW``, the schedule ``cfg``), its setup printout swallowed."""
  torch, HESSO, TT = ref
  with contextlib.redirect_stdout(io.StringIO()):
    return HESSO(ref_param_groups(model, TT), variant="sgd", lr=1e-2, first_momentum=0.9,
                 target_group_sparsity=HESSO_KW["target_group_sparsity"], **cfg)


def _ref_calls(ref, params, grads, batch) -> tuple[dict[str, Callable], dict[str, Callable]]:
  """The torch callables (``torch_sgd`` and ``ref_hesso`` per phase, ``opt`` and ``train``) and
  the untimed ``prep`` of the reference's selection step."""
  torch = ref[0]
  x = torch.from_numpy(np.asarray(batch[0]).copy())
  y = torch.from_numpy(np.asarray(batch[1]).astype(np.int64))
  fixed = torch_grads(torch, grads)
  calls, prep = {}, {}

  def attach(model, opt, train):
    if not train:
      for p, g in zip(model.parameters(), fixed, strict=True):
        p.grad = g.clone()

    def step():
      if train:
        opt[0].zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
      opt[0].step()
    return step

  for measure in ("opt", "train"):
    train = measure == "train"
    model = torch_mlp(torch, params)
    calls[f"torch_sgd/-/{measure}"] = attach(
      model, [torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)], train)
    for phase in PHASES:
      cfg, pre = REF_PHASES[phase]
      model = torch_mlp(torch, params)
      opt = [ref_hesso(ref, model, cfg)]
      step = attach(model, opt, train)
      for _ in range(pre):
        step()
      _check_ref_phase(opt[0], phase)
      calls[f"ref_hesso/{phase}/{measure}"] = step
      if phase == "selection":
        prep[f"ref_hesso/{phase}/{measure}"] = _restore(
          torch, model, opt, lambda m=model, c=cfg: ref_hesso(ref, m, c))
  return calls, prep


def _restore(torch, model, opt: list, make: Callable) -> Callable[[], None]:
  """Back to the state before step 1: the initial weights and a fresh optimizer, keeping the
  momentum buffers of the last call (so that the timed step updates them, as in steady state)."""
  w0 = [p.detach().clone() for p in model.parameters()]

  def prep():
    mom = opt[0].first_moment_grads
    with torch.no_grad():
      for p, w in zip(model.parameters(), w0, strict=True):
        p.copy_(w)
    opt[0] = make()
    opt[0].first_moment_grads = mom
    _check_ref_phase(opt[0], "selection")
  return prep


def _check_ref_phase(opt, phase: str) -> None:
  """Raise if the reference's state is not where ``phase`` needs it (its next step's phase)."""
  active = sum(len(v) for v in opt.active_redundant_idxes.values())
  pruned = sum(len(v) for v in opt.pruned_idxes.values())
  ok = {"warmup": opt.num_steps + 1 < opt.start_pruning_step,
        "selection": opt.num_steps == opt.start_pruning_step and opt.curr_pruning_period == 0,
        "forgetting": active > 0 and pruned == 0,
        "committed": active == 0 and pruned > 0 and opt.reach_target_group_sparsity()}[phase]
  if not ok:
    raise RuntimeError(f"reference optimizer not in phase {phase!r} (step {opt.num_steps}, "
                       f"{active} redundant, {pruned} pruned)")


def _ref_cric_lower_bounds(ref, params, grads) -> dict[str, Callable]:
  """``ref_cric_lb/<phase>/opt``: per phase, work the original CRIC's step does, from the
  original HESSO's methods on fixed gradients (see the module docstring)."""
  torch = ref[0]
  fixed = torch_grads(torch, grads)
  K = int(sum(lay["bias"].shape[0] for lay in list(params.values())[:-1])
          * CRIC_KW["target_group_sparsity"])
  calls = {}
  for phase in CRIC_PHASES:
    model = torch_mlp(torch, params)
    for p, g in zip(model.parameters(), fixed, strict=True):
      p.grad = g.clone()
    opt = ref_hesso(ref, model, REF_PHASES["warmup"][0])  # its methods, never its step
    prunable = [g for g in opt.param_groups if g["is_prunable"]]
    rows = [torch.zeros(g["num_groups"], dtype=torch.bool) for g in prunable]
    for r in rows:
      r[: r.numel() // 2] = True  # half the groups redundant (forgetting) or pruned (committed)

    def step(opt=opt, phase=phase, prunable=prunable, rows=rows):
      opt.compute_grad_variant()
      if phase == "cycle":
        opt.compute_importance_scores()
        torch.topk(-torch.cat(opt.global_scores), K)
      with torch.no_grad():
        for g in opt.param_groups:
          for name, p in zip(g["p_names"], g["params"], strict=True):
            p.add_(g["grad_variant"][name], alpha=-g["lr"])
        if phase in ("forgetting", "committed"):
          for g, r in zip(prunable, rows, strict=True):
            for p in g["params"]:
              p[r] *= 0.5 if phase == "forgetting" else 0.0
    calls[f"ref_cric_lb/{phase}/opt"] = step
  return calls


def _jax_calls(params, grads, loss_fn, batch, space) -> dict[str, Callable]:
  """The JAX callables, donated: ``jax_sgd`` and ``jax_hesso`` per phase (``opt`` and ``train``),
  ``jax_cric`` per phase (``opt``; its cycle steps under ``cycle``)."""
  base = optax.sgd(1e-2, momentum=0.9)
  tx = hj.hesso(base, space, **HESSO_KW)
  calls = phase_calls("jax_sgd", base, False, {"-": (params, {}, base.init(params))}, loss_fn,
                      grads, batch, True)
  calls.update(phase_calls("jax_hesso", tx, False, hesso_states(tx, loss_fn, params, {}, batch),
                           loss_fn, grads, batch, True))
  cric = hj.hesso_cric(base, space, **CRIC_KW)
  states = cric_states(cric, space, loss_fn, params, {}, batch)
  # bench_step's name for CRIC's cycle steps is "selection"
  states = {("cycle" if ph == "selection" else ph): st for ph, st in states.items()}
  calls.update(phase_calls("jax_cric", cric, True, states, loss_fn, grads, batch, True,
                           measures=("opt",)))
  return calls


def _row(clocks: dict, width: int, phase: str, measure: str, jax_name: str, ref_name: str,
         ) -> dict:
  """hesso_jax's ``jax_name`` over the original's ``ref_name`` and each over its framework's SGD,
  on both clocks (medians of per-round ratios and their quartiles), with both median times."""
  row = {"width": width, "phase": phase, "measure": measure}
  for key, (num, den) in {"jax_over_ref": (jax_name, ref_name),
                          "jax_over_sgd": (jax_name, f"jax_sgd/-/{measure}"),
                          "ref_over_sgd": (ref_name, f"torch_sgd/-/{measure}")}.items():
    r = clock_ratios(clocks, num, den)
    row[key], row[f"{key}_q25"], row[f"{key}_q75"] = r["ratio"], r["q25"], r["q75"]
    row[f"cpu_{key}"] = r["cpu_ratio"]
  row["jax_us"] = 1e6 * float(np.median(clocks["wall"][jax_name]))
  row["ref_us"] = 1e6 * float(np.median(clocks["wall"][ref_name]))
  return row


def rows_from(clocks: dict, width: int) -> list[dict]:
  """One row per (phase, measure) of HESSO, one per CRIC phase (optimizer only, against the
  original's lower bound) and the two plain SGDs against each other."""
  rows = []
  for measure in ("opt", "train"):
    for phase in PHASES:
      rows.append(_row(clocks, width, phase, measure, f"jax_hesso/{phase}/{measure}",
                       f"ref_hesso/{phase}/{measure}"))
    if measure == "opt":
      for phase in CRIC_PHASES:
        jc, lb = f"jax_cric/{phase}/opt", f"ref_cric_lb/{phase}/opt"
        rows.append(_row(clocks, width, f"cric/{phase}", measure, jc, lb))
    # the plain optimizers of the two frameworks against each other
    r = clock_ratios(clocks, f"jax_sgd/-/{measure}", f"torch_sgd/-/{measure}")
    rows.append({"width": width, "phase": "plain SGD", "measure": measure,
                 "jax_over_ref": r["ratio"], "jax_over_ref_q25": r["q25"],
                 "jax_over_ref_q75": r["q75"], "cpu_jax_over_ref": r["cpu_ratio"],
                 "jax_us": r["median_us"], "ref_us": r["sgd_us"]})
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true", help="a narrow MLP and few rounds (a check)")
  ap.add_argument("--width", type=int, default=None, help="hidden width (default 1024; 64 small)")
  ap.add_argument("--repeats", type=int, default=None, help="rounds (default 300; 5 small)")
  a = ap.parse_args(argv)
  ref = load_reference()
  if ref is None:
    print("bench_reference needs torch and only-train-once in this environment "
          "(pip install torch && pip install --no-deps only-train-once==3.0.1); skipped")
    return None
  torch = ref[0]
  width = a.width or (64 if a.small else 1024)
  repeats = a.repeats or (5 if a.small else 300)
  params, aux, loss_fn, batch, space = _mlp_task(jax.random.PRNGKey(0), width)
  grads = jax.grad(lambda p: loss_fn(p, aux, *batch)[0])(params)
  with cpu_only_cuda(torch):
    calls, prep = _ref_calls(ref, params, grads, batch)
    calls.update(_ref_cric_lower_bounds(ref, params, grads))
    calls.update(_jax_calls(params, grads, loss_fn, batch, space))
    clocks = interleaved_clocks(calls, repeats=repeats, inner=1, warmup=3, prep=prep)
  rows = rows_from(clocks, width)
  info = {"small": a.small, "width": width, "repeats": repeats, "hesso": HESSO_KW, "cric": CRIC_KW,
          "reference_phases": {k: v[0] for k, v in REF_PHASES.items()},
          "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
          "params": int(sum(x.size for x in jax.tree_util.tree_leaves(params)))}
  write_json("reference", {**info, "rows": rows})
  cols = ["phase", "measure", "jax_us", "ref_us", "jax_over_ref", "cpu_jax_over_ref",
          "jax_over_sgd", "cpu_jax_over_sgd", "ref_over_sgd", "cpu_ref_over_sgd"]
  fmt = {c: "{:.3f}" for c in cols[4:]}
  fmt.update(jax_us="{:.0f}", ref_us="{:.0f}")
  print(f"\n== hesso_jax vs the PyTorch original (only-train-once), MLP width {width}, "
        f"{repeats} rounds; medians of per-round ratios (wall; cpu_: process CPU) ==")
  print(table(rows, cols, fmt))
  print()
  print(markdown_table(rows, cols, fmt))
  return rows


if __name__ == "__main__":
  main()
