"""benchmarks/bench_reference.py without torch: the ratios, the phase guard, the untimed prep.

The comparison itself needs torch and only-train-once (not dependencies; a benchmark run by hand).
"""

import pathlib
import sys
import time
import types

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import bench_reference as B  # noqa: E402
from benchmarks import common  # noqa: E402


def test_without_reference_it_says_so_and_returns(monkeypatch, capsys):
  monkeypatch.setattr(B, "load_reference", lambda: None)
  assert B.main(["--small"]) is None
  assert "needs torch and only-train-once" in capsys.readouterr().out


def _clocks(rng):
  names = [f"{impl}/{ph}/{m}" for m in ("opt", "train")
           for impl, phases in (("jax_hesso", B.PHASES), ("ref_hesso", B.PHASES),
                                ("jax_sgd", ("-",)), ("torch_sgd", ("-",)),
                                ("jax_cric", B.CRIC_PHASES), ("ref_cric_lb", B.CRIC_PHASES))
           for ph in phases]
  return {c: {n: rng.uniform(1e-3, 2e-3, size=7) for n in names} for c in ("wall", "cpu")}


def test_rows_are_medians_of_per_round_ratios():
  clocks = _clocks(np.random.default_rng(0))
  rows = B.rows_from(clocks, 8)
  by = {(r["phase"], r["measure"]): r for r in rows}
  assert len(rows) == 2 * (len(B.PHASES) + 1) + len(B.CRIC_PHASES)  # CRIC: optimizer only
  w, c = clocks["wall"], clocks["cpu"]
  r = by[("selection", "train")]
  np.testing.assert_allclose(
    r["jax_over_ref"], np.median(w["jax_hesso/selection/train"] / w["ref_hesso/selection/train"]))
  np.testing.assert_allclose(
    r["cpu_jax_over_sgd"], np.median(c["jax_hesso/selection/train"] / c["jax_sgd/-/train"]))
  np.testing.assert_allclose(
    r["ref_over_sgd"], np.median(w["ref_hesso/selection/train"] / w["torch_sgd/-/train"]))
  np.testing.assert_allclose(r["jax_us"], 1e6 * np.median(w["jax_hesso/selection/train"]))
  cyc = by[("cric/cycle", "opt")]
  np.testing.assert_allclose(
    cyc["cpu_jax_over_ref"], np.median(c["jax_cric/cycle/opt"] / c["ref_cric_lb/cycle/opt"]))
  np.testing.assert_allclose(cyc["ref_over_sgd"],
                             np.median(w["ref_cric_lb/cycle/opt"] / w["torch_sgd/-/opt"]))
  assert ("cric/cycle", "train") not in by
  plain = by[("plain SGD", "opt")]
  np.testing.assert_allclose(plain["jax_over_ref"],
                             np.median(w["jax_sgd/-/opt"] / w["torch_sgd/-/opt"]))


def _fake_opt(num_steps=0, start=10, period=0, active=0, pruned=0, reached=False):
  return types.SimpleNamespace(
    num_steps=num_steps, start_pruning_step=start, curr_pruning_period=period,
    active_redundant_idxes={"a": list(range(active))}, pruned_idxes={"a": list(range(pruned))},
    reach_target_group_sparsity=lambda: reached)


@pytest.mark.parametrize("phase,opt", [
  ("warmup", _fake_opt()),
  ("selection", _fake_opt(start=0)),
  ("forgetting", _fake_opt(num_steps=1, start=0, period=1, active=3)),
  ("committed", _fake_opt(num_steps=2, start=0, period=1, pruned=3, reached=True)),
])
def test_phase_guard(phase, opt):
  B._check_ref_phase(opt, phase)  # in its phase: passes
  for other in set(B.PHASES) - {phase}:
    with pytest.raises(RuntimeError, match=other):
      B._check_ref_phase(opt, other)


def test_prep_runs_before_every_call_and_is_not_timed():
  calls = []
  fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
  prep = {"a": lambda: (calls.append("prep"), time.sleep(0.02))}
  clocks = common.interleaved_clocks(fns, repeats=4, inner=1, warmup=1, prep=prep)
  # every call of "a" (warm-up and timed) right after its prep, "b" never after one
  assert calls.count("prep") == calls.count("a") == 5
  assert all(calls[i - 1] == "prep" for i, c in enumerate(calls) if c == "a")
  assert all(calls[i - 1] != "prep" for i, c in enumerate(calls) if c == "b")
  assert np.max(clocks["wall"]["a"]) < 0.01  # the 20 ms sleep is outside the clock
  with pytest.raises(ValueError, match="inner=1"):
    common.interleaved_clocks(fns, repeats=1, inner=2, prep=prep)
