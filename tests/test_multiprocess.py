"""The README pod recipe with two real JAX processes (jax.distributed, loopback, gloo): HESSO, CRIC.

tests/_multiprocess_worker.py runs three phases in fresh processes: ``train`` (2 processes x 4 CPU
devices, uninterrupted runs, then runs checkpointed mid-pruning and SIGKILLed), ``resume`` (2 new
processes restore into the same 2x4 layout and finish) and ``single`` (1 process x 8 devices: the
reference run, and the 2-process checkpoints restored into one process). The tests compare what
they wrote. Marked ``multiprocess`` (``make test-multiprocess``).
"""

import _multiprocess_worker as W
import numpy as np
import pytest

pytestmark = pytest.mark.multiprocess

KINDS = W.KINDS


@pytest.fixture(scope="module")
def res(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("multiprocess"))
  out = W.results(d)
  out["dir"] = d
  return out


def _load(res, name):
  return W.load(res["dir"], name)


def _params(a: dict) -> dict:
  return {k: v for k, v in a.items() if k.startswith("params")}


def _max_diff(a: dict, b: dict) -> float:
  assert sorted(a) == sorted(b)
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)), initial=0.0))
             for k in a)


def _bit_equal(a: dict, b: dict) -> list:
  """Keys whose arrays differ in any bit (dtype, shape or value); [] when identical."""
  assert sorted(a) == sorted(b)
  return [k for k in a if a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes()
          or a[k].shape != b[k].shape]


def test_two_processes_each_feed_their_own_rows(res):
  views = res["train"]["views"]
  assert [v["process_index"] for v in views] == [0, 1]
  for i, v in enumerate(views):
    for kind in KINDS:
      assert (v[kind]["processes"], v[kind]["devices"], v[kind]["local_devices"]) == (2, 8, 4)
      assert v[kind]["rows"] == [16 * i, 16 * (i + 1)]  # its half of the global batch of 32
      assert v[kind]["params_sharded_across_processes"] >= 6  # no process holds those whole
  single = res["single"]["views"][0]
  assert (single["hesso"]["processes"], single["hesso"]["devices"]) == (1, 8)


def test_every_process_discovers_the_same_space(res):
  views = res["train"]["views"] + res["resume"]["views"] + res["single"]["views"]
  for kind in KINDS:
    prints = {v[kind]["fingerprint"] for v in views}
    assert len(prints) == 1, prints


@pytest.mark.parametrize("kind", KINDS)
def test_saved_mid_pruning_then_both_processes_sigkilled(res, kind):
  assert res["train"]["returncodes"] == [-9, -9]  # SIGKILL, no cleanup
  v = res["train"]["views"][0][kind]
  assert res["resume"]["views"][0][kind]["latest_step"] == v["save_at"] < v["steps"]
  saved = _load(res, f"saved_{kind}")
  final = _load(res, f"train_{kind}")
  num_groups = v["num_groups"]
  assert 0 < saved["state.count"] < final["state.count"]
  if kind == "hesso":  # some groups already committed, others still being forgotten
    assert 0 < saved["state.pruned"].sum() < num_groups // 2 and saved["state.redundant"].any()
  else:  # in the middle of a correction cycle: a violating set is live
    assert saved["state.active"].any() and not saved["state.pruned"].any()


@pytest.mark.parametrize("kind", KINDS)
def test_two_process_run_equals_single_process_run(res, kind):
  two, one = _load(res, f"train_{kind}"), _load(res, f"single_{kind}")
  num_groups = res["train"]["views"][0][kind]["num_groups"]
  assert two["state.pruned"].sum() == num_groups // 2  # the pruning happened
  assert np.array_equal(two["state.pruned"], one["state.pruned"])
  assert np.array_equal(two["state.redundant"], one["state.redundant"])
  assert _max_diff(_params(two), _params(one)) <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_resume_into_same_two_process_layout_is_bit_identical(res, kind):
  assert res["resume"]["returncodes"] == [0, 0]
  assert all(v[kind]["restored_layout_ok"] for v in res["resume"]["views"])
  assert _bit_equal(_load(res, f"restored_resume_{kind}"), _load(res, f"saved_{kind}")) == []
  # params and the whole optimizer state, every bit
  assert _bit_equal(_load(res, f"resumed_resume_{kind}"), _load(res, f"train_{kind}")) == []


@pytest.mark.parametrize("kind", KINDS)
def test_resume_into_one_process(res, kind):
  assert res["single"]["returncodes"] == [0]
  assert res["single"]["views"][0][kind]["restored_layout_ok"]
  saved = _load(res, f"saved_{kind}")
  for layout in ("single", "mesh4x2", "onedevice"):  # the 2-process checkpoint, restored exactly
    assert _bit_equal(_load(res, f"restored_{layout}_{kind}"), saved) == [], layout
  resumed, two = _load(res, f"resumed_single_{kind}"), _load(res, f"train_{kind}")
  one = _load(res, f"single_{kind}")
  for ref in (two, one):  # reduction order differs between gloo and in-process collectives
    assert np.array_equal(resumed["state.pruned"], ref["state.pruned"])
    assert _max_diff(_params(resumed), _params(ref)) <= 1e-6
