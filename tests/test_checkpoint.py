"""Orbax checkpoints of (params, HESSO state): resume mid-pruning, sharded; clear mismatch errors."""

import dataclasses

import _multidevice_worker as W
import jax
import optax
import pytest

import hesso_jax as hj


@pytest.fixture(scope="module")
def res(multidevice_root):
  return W.results_once(multidevice_root)


@pytest.mark.parametrize("kind", ["hesso", "cric"])
def test_sharded_resume_mid_pruning_equals_uninterrupted(res, kind):
  r = res[kind]["resume"]
  # the checkpoint really was mid-pruning
  if kind == "hesso":
    assert r["mid"]["pruned"] > 0 and r["mid"]["redundant"] > 0, r
  else:
    assert r["mid"]["active"] > 0, r  # inside a CRIC cycle (parameter cache in use)
  assert r["restored_sharded"] and r["restored_state_sharded"], r
  assert r["type_ok"], r
  assert r["masks_equal"], r
  # the same compiled step on the same bits: the resumed run is bit-identical
  assert r["max_param_diff"] == 0.0, r
  assert r["max_state_diff"] == 0.0, r
  assert res[kind]["num_pruned_sharded"] == res[kind]["num_groups"] // 2


# ---- in-process (1 device): bit-exact resume, structure validation ----------------------------


@pytest.mark.parametrize("kind", [pytest.param("hesso", marks=pytest.mark.default_xla), "cric"])
def test_resume_mid_pruning_is_bit_exact(tmp_path, kind):
  """Save mid-pruning, restore into abstract targets, continue: identical bits to no interruption."""
  model, params, space, tx, xs, ys, steps, save_at = W.setup(kind)
  step = W.make_step(model, tx)
  p_ref, s_ref = W.run(step, params, tx.init(params), xs, ys, 0, steps)
  p_mid, s_mid = W.run(step, params, tx.init(params), xs, ys, 0, save_at)
  assert int(hj.pruned_mask(s_mid).sum() + hj.redundant_mask(s_mid).sum()) > 0 or kind == "cric"
  hj.save_checkpoint(tmp_path / kind, save_at, p_mid, s_mid, space=space)
  del p_mid, s_mid
  p, s = hj.restore_checkpoint(tmp_path / kind, None, jax.eval_shape(lambda: params),
                               jax.eval_shape(tx.init, params), space=space)
  p, s = W.run(step, p, s, xs, ys, save_at, steps)
  assert W.max_diff(p, p_ref) == 0.0 and W.max_diff(s, s_ref) == 0.0
  assert int(hj.pruned_mask(s).sum()) == space.num_groups // 2


# ---- in-process (1 device): structure validation -------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  model, params, space, tx, *_ = W.setup("hesso")
  state = tx.init(params)
  d = tmp_path_factory.mktemp("ckpt") / "run"
  hj.save_checkpoint(d, 3, params, state, space=space)
  return d, params, space, tx, state


def test_roundtrip_and_metadata(saved):
  d, params, space, tx, state = saved
  assert hj.latest_step(d) == 3
  meta = hj.checkpoint_metadata(d, 3)
  assert meta["num_groups"] == space.num_groups and meta["state_type"] == "HessoState"
  p, s = hj.restore_checkpoint(d, None, params, jax.eval_shape(tx.init, params), space=space)
  assert type(s).__name__ == "HessoState"
  assert W.max_diff(p, params) == 0.0 and W.max_diff(s, state) == 0.0


def test_restore_with_other_num_groups_fails(saved):
  d, *_ = saved
  _, params2, space2, tx2, *_ = W.setup("hesso", c1=16)  # conv0 with 16 channels: 64 groups
  assert space2.num_groups != 56
  with pytest.raises(hj.CheckpointMismatchError) as e:
    hj.restore_checkpoint(d, 3, params2, jax.eval_shape(tx2.init, params2), space=space2)
  msg = str(e.value)
  assert "search space mismatch" in msg and "num_groups=56" in msg and "num_groups=64" in msg, msg
  assert "['conv0']['kernel']: checkpoint has shape (3, 3, 1, 8)" in msg, msg


def test_restore_with_other_space_same_shapes_fails(saved):
  d, params, space, tx, _ = saved
  cs = list(space.channel_spaces)
  cs[0] = dataclasses.replace(cs[0], name="renamed")
  other = hj.SearchSpace(tuple(cs))
  with pytest.raises(hj.CheckpointMismatchError, match=r"(?s)search space mismatch.*space #0.*renamed"):
    hj.restore_checkpoint(d, 3, params, jax.eval_shape(tx.init, params), space=other)


def test_restore_with_other_base_optimizer_fails(saved):
  d, params, space, _, _ = saved
  tx = hj.hesso(optax.sgd(0.1, momentum=0.9), space, target_group_sparsity=0.5, warmup_steps=2,
                pruning_steps=8)
  with pytest.raises(hj.CheckpointMismatchError, match=r"(?s)opt_state.*not in the target.*mu"):
    hj.restore_checkpoint(d, 3, params, jax.eval_shape(tx.init, params))


def test_restore_hesso_checkpoint_into_cric_fails(saved):
  d, params, space, _, _ = saved
  tx = hj.hesso_cric(optax.adam(1e-2), space, target_group_sparsity=0.5, sampling_steps=2,
                     hybrid_training_steps=2)
  with pytest.raises(hj.CheckpointMismatchError, match="checkpoint holds a HessoState, the target a CricState"):
    hj.restore_checkpoint(d, 3, params, jax.eval_shape(tx.init, params))


def test_missing_step(saved):
  d, params, _, tx, _ = saved
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 99"):
    hj.restore_checkpoint(d, 99, params, jax.eval_shape(tx.init, params))
