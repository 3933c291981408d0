"""benchmarks/bench_perf.py: the perf report parser and the component each sample is charged to.

The sampling itself needs Linux ``perf`` and a quiet machine (a benchmark, run by hand); what is
tested here is the arithmetic that turns ``perf report`` text into the per-component table.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import bench_perf as B  # noqa: E402

# ``perf report -n --no-children --sort dso,symbol --stdio`` lines: perf pads the symbol column
# (and may print a further column after it)
_ROWS = [
  (40.0, 400, "[JIT] tid 9015", "0x00007f2c4d2e1a40"),
  (10.0, 100, "[JIT] tid 9015", "0x00007f2c4d2e1b80"),
  (8.0, 80, "libc.so.6", "_int_free"),
  (5.0, 50, "libc.so.6", "malloc_consolidate"),
  (4.0, 40, "libc.so.6", "__memmove_avx512_unaligned_erms"),
  (6.0, 60, "libjax_common.so", "Eigen::RunQueue<tsl::thread::EigenEnvironment::Task, 1024u>::PopBack"),
  (7.0, 70, "libjax_common.so",
   "xla::cpu::ThunkExecutor::Execute<xla::cpu::ThunkExecutor::FifoReadyQueue>"),
  (3.0, 30, "libjax_common.so", "jax::(anonymous namespace)::PjitFunction::Call"),
  (9.0, 90, "libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"),
  (2.0, 20, "[kernel.kallsyms]", "finish_task_switch.isra.0"),
  (1.0, 10, "[kernel.kallsyms]", "exc_page_fault"),
  (5.0, 50, "libjax_common.so", "0x000000000e284db0"),
]
_HEADER = """\
# Samples: 1K of event 'cpu-clock:pppH'
#
# Overhead       Samples  Shared Object         Symbol
# ........  ............  ....................  ..............
#
"""
REPORT = _HEADER + "".join(
  f"{pct:9.2f}%  {n:12d}  {dso:20s}  [{'k' if 'kernel' in dso else '.'}] {sym:90s}"
  + ("      -" if i % 2 else "") + "\n"
  for i, (pct, n, dso, sym) in enumerate(_ROWS)
)


def test_components_of_known_symbols():
  cases = {
    ("[JIT] tid 12", "0x7f00"): "kernels",
    ("libc.so.6", "_int_free"): "malloc",
    ("libc.so.6", "_mid_memalign.constprop.0"): "malloc",
    ("libc.so.6", "__memmove_avx512_unaligned_erms"): "other",
    ("libjax_common.so", "Eigen::ThreadPoolTempl<tsl::thread::EigenEnvironment>::GlobalSteal"):
      "thread pool",
    ("[kernel.kallsyms]", "finish_task_switch.isra.0"): "thread pool",
    ("libjax_common.so", "xla::CpuPjRtRawLoadedExecutable::Execute"): "runtime",
    ("libjax_common.so", "jax::PyTreeDef::FlattenImpl"): "dispatch",
    ("libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"): "python",
    ("[kernel.kallsyms]", "exc_page_fault"): "os",
    ("libjax_common.so", "0x000000000e284db0"): "other",
  }
  for (dso, sym), want in cases.items():
    assert B.component(dso, sym) == want, (dso, sym)


def test_parse_report_sums_samples_per_component_and_trims_padding():
  got = B.parse_report(REPORT)
  per: dict[str, int] = {}
  for (c, _), n in got.items():
    per[c] = per.get(c, 0) + n
  assert per == {"kernels": 500, "malloc": 130, "other": 90, "thread pool": 80, "runtime": 70,
                 "dispatch": 30, "python": 90, "os": 10}
  # the compiled kernels are one symbol; other symbols lose perf's column padding
  assert got[("kernels", "jit")] == 500
  assert got[("malloc", "_int_free")] == 80
  assert ("python", "_PyEval_EvalFrameDefault") in got
  assert sum(got.values()) == 1000  # every sample line is counted once, header lines never


def test_library_kernels_count_as_kernels():
  assert B.component("libjax_common.so", "ynn::dot_fp32_4x64x1_1x16x1_avx512") == "kernels"
  assert B.component("libjax_common.so", "ynn::transpose_x32_avx512") == "kernels"
