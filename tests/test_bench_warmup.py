"""bench_warmup's A/A controls: several SGD copies and the band their ratios span."""

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_warmup, common  # noqa: E402
from benchmarks.bench_step import control_names  # noqa: E402


def test_control_names():
  assert control_names(1) == ["sgd_again"]
  assert control_names(3) == ["sgd_again", "sgd_again_2", "sgd_again_3"]


def test_control_spread_reads_the_controls_only_per_width():
  rows = [
    {"width": 8, "variant": "sgd_again", "ratio": 0.98, "cpu_ratio": 1.01},
    {"width": 8, "variant": "sgd_again_2", "ratio": 1.03, "cpu_ratio": 0.99},
    {"width": 8, "variant": "hesso", "ratio": 1.50, "cpu_ratio": 0.50},
    {"width": 16, "variant": "sgd_again", "ratio": 1.00, "cpu_ratio": 1.00},
  ]
  assert bench_warmup.control_spread(rows, control_names(2)) == [
    {"width": 8, "controls": 2, "ratio_min": 0.98, "ratio_max": 1.03, "cpu_ratio_min": 0.99,
     "cpu_ratio_max": 1.01},
    {"width": 16, "controls": 1, "ratio_min": 1.00, "ratio_max": 1.00, "cpu_ratio_min": 1.00,
     "cpu_ratio_max": 1.00},
  ]


def test_controls_are_timed_and_their_band_is_written(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(common, "RESULTS", str(tmp_path))
  bench_warmup.main(["--small", "--widths", "32", "--variants", "bare", "--controls", "3",
                     "--repeats", "3", "--out", "t"])
  out = json.loads((tmp_path / "bench_t.json").read_text())
  assert [r["variant"] for r in out["rows"]] == ["sgd_again", "sgd_again_2", "sgd_again_3", "bare"]
  (band,) = out["control_spread"]
  ratios = [r["ratio"] for r in out["rows"][:3]]
  assert band["controls"] == 3 and band["ratio_min"] == min(ratios)
  assert band["ratio_max"] == max(ratios)
  assert "A/A spread" in capsys.readouterr().out


def test_controls_must_be_positive():
  with pytest.raises(SystemExit):
    bench_warmup.main(["--small", "--controls", "0"])
