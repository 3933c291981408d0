"""benchmarks/bench_accelerator.py --tiny on CPU, so the accelerator benchmark keeps running.

Marked ``slow`` (``make test-slow``, a CI step). Asserts properties of what it measures, not
numbers: every phase of both schedules is timed, CRIC's state holds a parameter copy, the
compressed models compute the masked model's function with fewer FLOPs, and ``multiple_of``
only ever keeps more.
"""

import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import bench_accelerator as B  # noqa: E402

pytestmark = pytest.mark.slow

PHASES = {"hesso": {"warmup", "select", "forget"},
          "cric": {"warmup", "probe", "cycle", "select", "forget"}}


@pytest.fixture(scope="module")
def res(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench") / "bench_accelerator.json"
  r = B.main(["--tiny", "--budget-s", "1e9", "--out", str(out)])
  assert out.exists()
  return r


def _models(res):
  return sorted(res["models"])


def test_every_phase_is_timed(res):
  assert len(_models(res)) == 2
  for model in _models(res):
    for kind, phases in PHASES.items():
      rows = [r for r in res["phase_rows"] if r["model"] == model and r["variant"] == kind]
      assert {r["phase"] for r in rows} == phases, (model, kind)
      steps = [r["step"] for r in rows]
      assert steps == sorted(steps) and len(set(steps)) == len(steps)  # in schedule order
      assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 and r["ms"] > 0 for r in rows)


def test_memory_and_compile(res):
  for model in _models(res):
    rows = {r["variant"]: r for r in res["memory_rows"] if r["model"] == model}
    assert set(rows) == {"plain", "hesso", "cric"}
    param_bytes = rows["plain"]["state_bytes"] / 2  # adam: mu and nu mirror the params
    assert rows["hesso"]["state_bytes"] > rows["plain"]["state_bytes"]  # + masks and count
    assert rows["cric"]["state_bytes"] >= rows["plain"]["state_bytes"] + param_bytes  # + cache
    for r in rows.values():
      assert r["compile_s"] > 0 and r["compiled_bytes"] > 0
      assert r["peak_bytes"] is None  # CPU has no memory_stats(): reported as n/a
    assert rows["hesso"]["pruned"] > 0 and rows["cric"]["pruned"] > 0  # schedules ran to the end


def test_compressed_inference(res):
  for model in _models(res):
    rows = [r for r in res["inference_rows"] if r["model"] == model]
    assert len(rows) == len(B.SHAPES["tiny"]["sparsities"]) * len(B.SHAPES["tiny"]["multiples"])
    assert not any("skipped" in r for r in rows)
    for sp in B.SHAPES["tiny"]["sparsities"]:
      flops = [r["flop_ratio"] for r in sorted(rows, key=lambda r: r["multiple_of"])
               if r["sparsity"] == sp]
      assert flops[0] < 1.0  # multiple_of=1 removes work
      assert flops == sorted(flops) and flops[-1] <= 1.0  # rounding widths up only keeps more
      assert flops[0] < flops[-1]  # ... and multiple_of=128 does keep more on these widths
    for r in rows:
      assert r["latency_ratio"] > 0 and r["param_ratio"] <= 1.0
      assert r["max_abs_err"] <= 1e-4 * max(1.0, r["out_scale"]), r  # same function as masked
