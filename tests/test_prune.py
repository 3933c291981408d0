"""Tests for hj.prune / prune_like / prune_opt_state / prune_space and manifests."""

import json
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hesso_jax as hj
from hesso_jax import AxisSlice as A
from hesso_jax import ChannelSpace as C
from hesso_jax.space import CONSUMER, STATE

# ----------------------------------------------------------------------------------------------
# fixtures: a tiny MLP with a batch-norm-like state, written as a linen-style variables dict
# ----------------------------------------------------------------------------------------------


def _mlp_vars(seed=0):
  rng = np.random.default_rng(seed)
  n = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {
      "params": {
          "d1": {"kernel": n(5, 8), "bias": n(8)},
          "bn": {"scale": n(8), "bias": n(8)},
          "d2": {"kernel": n(8, 6), "bias": n(6)},
          "d3": {"kernel": n(6, 3)},
      },
      "batch_stats": {"bn": {"mean": jnp.linspace(-1, 1, 8), "var": jnp.linspace(0.5, 2, 8)}},
  }


def _mlp_space(v=None):
  h1 = C(8, (A("params/d1/kernel", 1), A("params/d1/bias", 0), A("params/bn/scale", 0),
             A("params/bn/bias", 0), A("batch_stats/bn/mean", 0, STATE),
             A("batch_stats/bn/var", 0, STATE), A("params/d2/kernel", 0, CONSUMER)), name="h1")
  h2 = C(6, (A("params/d2/kernel", 1), A("params/d2/bias", 0), A("params/d3/kernel", 0, CONSUMER)),
         name="h2")
  out = C(3, (A("params/d3/kernel", 1),), prunable=False, reason="feeds the model output",
          name="logits")
  return hj.SearchSpace.from_channel_spaces([h1, h2, out], v)


def _mlp_apply(v, x):
  p, s = v["params"], v["batch_stats"]
  h = x @ p["d1"]["kernel"] + p["d1"]["bias"]
  h = (h - s["bn"]["mean"]) / jnp.sqrt(s["bn"]["var"] + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
  h = jax.nn.relu(h)
  h = jax.nn.gelu(h @ p["d2"]["kernel"] + p["d2"]["bias"])
  return h @ p["d3"]["kernel"]


def _shapes(t):
  return jax.tree_util.tree_map(jnp.shape, t)


# ----------------------------------------------------------------------------------------------
# prune
# ----------------------------------------------------------------------------------------------


def test_prune_default_keep_is_equivalent_and_smaller():
  v = _mlp_vars()
  space = _mlp_space(v)
  dropped = jnp.array([1, 4, 7, 8 + 0, 8 + 5])  # 3 of h1, 2 of h2
  vz = space.zero_groups(v, dropped)
  small = hj.prune(vz, space)
  s = _shapes(small)
  assert s["params"]["d1"]["kernel"] == (5, 5)
  assert s["batch_stats"]["bn"]["var"] == (5,)
  assert s["params"]["d2"]["kernel"] == (5, 4)
  assert s["params"]["d3"]["kernel"] == (4, 3)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(7, 5)), jnp.float32)
  chex.assert_trees_all_close(_mlp_apply(small, x), _mlp_apply(vz, x), atol=1e-5, rtol=0)
  # the kept entries are exactly the kept channels, in order
  kept = np.array([0, 2, 3, 5, 6])
  np.testing.assert_array_equal(small["batch_stats"]["bn"]["mean"], np.asarray(vz["batch_stats"]["bn"]["mean"])[kept])


def test_prune_explicit_keep_subset_of_params_only():
  v = _mlp_vars()
  space = _mlp_space(v).subtree("params")
  keep = np.ones(space.num_groups, bool)
  keep[[0, 9]] = False
  vz = space.zero_groups(v["params"], ~keep)
  small = hj.prune(vz, space, keep)
  assert _shapes(small)["d1"]["kernel"] == (5, 7)
  assert _shapes(small)["d3"]["kernel"] == (5, 3)


def test_prune_shared_fused_axis_is_product_of_masks():
  # q: (d, H*D) holds 'heads' (inner=D) and 'head_dim' (outer=H); o: (H*D, d) consumes both
  H, D, d = 3, 4, 5
  v = {"q": jnp.arange(d * H * D, dtype=jnp.float32).reshape(d, H * D),
       "o": jnp.arange(H * D * d, dtype=jnp.float32).reshape(H * D, d)}
  heads = C(H, (A("q", 1, inner=D), A("o", 0, CONSUMER, inner=D)), name="heads")
  hdim = C(D, (A("q", 1, outer=H), A("o", 0, CONSUMER, outer=H)), name="head_dim")
  space = hj.SearchSpace.from_channel_spaces([heads, hdim], v)
  keep = np.array([True, False, True] + [False, True, True, False])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    small = hj.prune(v, space, keep)
  idx = np.array([h * D + e for h in (0, 2) for e in (1, 2)])
  np.testing.assert_array_equal(small["q"], np.asarray(v["q"])[:, idx])
  np.testing.assert_array_equal(small["o"], np.asarray(v["o"])[idx, :])
  # the pruned space describes the new layout
  new = hj.prune_space(space, keep)
  new.validate(small)
  assert [s.size for s in new.channel_spaces] == [2, 2]
  assert new.channel_spaces[0].members[0].inner == 2 and new.channel_spaces[1].members[0].outer == 2


def test_prune_concatenation_offsets():
  # two spaces of sizes 3 and 2 concatenated into a 5-wide consumer axis
  v = {"a": jnp.ones((4, 3)), "b": jnp.ones((4, 2)), "w": jnp.arange(10.0).reshape(5, 2)}
  sa = C(3, (A("a", 1), A("w", 0, CONSUMER, offset=0, width=5)), name="A")
  sb = C(2, (A("b", 1), A("w", 0, CONSUMER, offset=3, width=5)), name="B")
  space = hj.SearchSpace.from_channel_spaces([sa, sb], v)
  keep = np.array([True, False, True, False, True])
  vz = space.zero_groups(v, ~keep)
  small = hj.prune(vz, space, keep)
  np.testing.assert_array_equal(small["w"], np.asarray(v["w"])[[0, 2, 4]])
  assert small["a"].shape == (4, 2) and small["b"].shape == (4, 1)
  new = hj.prune_space(space, keep)
  new.validate(small)
  assert new.channel_spaces[1].members[1].offset == 2 and new.channel_spaces[1].members[1].width == 3


def test_prune_abstract_leaves():
  v = _mlp_vars()
  space = _mlp_space(v)
  keep = np.ones(space.num_groups, bool)
  keep[[0, 9]] = False
  abstract = jax.eval_shape(lambda: v)
  small_abs = hj.prune(abstract, space, keep)
  assert isinstance(small_abs["params"]["d1"]["kernel"], jax.ShapeDtypeStruct)
  chex.assert_trees_all_equal_shapes(small_abs, hj.prune(space.zero_groups(v, ~keep), space, keep))
  with pytest.raises(ValueError, match="concrete"):
    hj.prune(abstract, space)


def test_prune_errors():
  v = _mlp_vars()
  space = _mlp_space(v)
  with pytest.raises(ValueError, match="shape"):
    hj.prune(v, space, np.ones(space.num_groups + 1, bool))
  keep = np.ones(space.num_groups, bool)
  keep[8:] = False
  with pytest.raises(ValueError, match="h2"):
    hj.prune(v, space, keep)
  with pytest.raises(ValueError, match="no path"):
    hj.prune({"other": jnp.ones(3)}, space, np.ones(space.num_groups, bool))
  # keep=None but no producer leaf present: cannot measure norms
  with pytest.raises(ValueError, match="producer"):
    hj.prune({"batch_stats": v["batch_stats"]}, space)


def test_prune_warns_when_dropping_nonzero_groups():
  v = _mlp_vars()
  space = _mlp_space(v)
  keep = np.ones(space.num_groups, bool)
  keep[9] = False  # h2 group 1 is not zero
  with pytest.warns(UserWarning, match="h2"):
    hj.prune(v, space, keep)
  vz = space.zero_groups(v, ~keep)
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)
    hj.prune(vz, space, keep)  # zero groups: no warning


def test_prune_like_suffix_and_roots_and_missing_paths():
  v = _mlp_vars()
  space = _mlp_space(v)
  keep = np.ones(space.num_groups, bool)
  keep[[2, 3, 10]] = False
  mirror = {"outer": [{"params": v["params"]}], "count": jnp.zeros(())}
  out = hj.prune_like(mirror, space, keep)  # batch_stats missing: skipped
  assert out["outer"][0]["params"]["d1"]["kernel"].shape == (5, 6)
  assert out["outer"][0]["params"]["d3"]["kernel"].shape == (5, 3)
  out2 = hj.prune_like(mirror, space, keep, root_paths=[("outer", 0)])
  chex.assert_trees_all_equal(out, out2)
  # a root that does not match leaves the tree untouched
  out3 = hj.prune_like(mirror, space, keep, root_paths=["nowhere"])
  chex.assert_trees_all_equal_shapes(out3, mirror)


def test_prune_opt_state_adam_continues_training():
  v = _mlp_vars()
  space = _mlp_space(v).subtree("params")
  params = space.zero_groups(v["params"], jnp.array([0, 3, 12]))
  tx = optax.adam(1e-2)
  state = tx.init(params)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  _, state = tx.update(grads, state, params)

  class Extra(tuple):  # stand-in for a per-group state (e.g. HESSO's masks)
    pass

  gmask = jnp.arange(space.num_groups) % 2 == 0
  full_state = (state, {"redundant": gmask, "step": jnp.array(3)})
  keep = hj.surgery.resolve_keep(space, params)
  small = hj.prune(params, space)
  small_state = hj.prune_opt_state(full_state, params, space, keep)
  adam = small_state[0][0]
  chex.assert_trees_all_equal_shapes(adam.mu, small)
  chex.assert_trees_all_equal_shapes(adam.nu, small)
  np.testing.assert_array_equal(small_state[1]["redundant"], np.asarray(gmask)[keep])
  assert int(small_state[1]["step"]) == 3
  # mu of kept channels is carried over exactly
  np.testing.assert_array_equal(adam.mu["d2"]["bias"], np.asarray(state[0].mu["d2"]["bias"])[keep[8:]])
  # and the step runs on the compressed params
  g_small = jax.tree_util.tree_map(jnp.ones_like, small)
  upd, _ = tx.update(g_small, small_state[0], small)
  chex.assert_trees_all_equal_shapes(upd, small)
  reset = hj.prune_opt_state(full_state, params, space, keep, group_vectors="reset")
  assert not np.asarray(reset[1]["redundant"]).any() and reset[1]["redundant"].shape == (int(keep.sum()),)


def test_prune_space_group_norms_follow_kept_groups():
  v = _mlp_vars()
  space = _mlp_space(v)
  keep = np.ones(space.num_groups, bool)
  keep[[1, 2, 11]] = False
  vz = space.zero_groups(v, ~keep)
  small = hj.prune(vz, space, keep)
  new = hj.prune_space(space, keep)
  new.validate(small)
  norms = np.asarray(new.group_norms(small))
  # h1's producers are untouched by pruning: its norms are the kept entries of the old norms
  np.testing.assert_allclose(norms[:6], np.asarray(space.group_norms(vz))[keep][:6], rtol=1e-6)
  # h2's producer (d2/kernel) lost the rows of dropped h1 channels (consumer axis)
  p = small["params"]["d2"]
  want = np.sqrt((np.asarray(p["kernel"]) ** 2).sum(0) + np.asarray(p["bias"]) ** 2)
  np.testing.assert_allclose(norms[6:], want, rtol=1e-6)
  np.testing.assert_array_equal(hj.reindex_groups(jnp.arange(space.num_groups), keep), np.flatnonzero(keep))


def test_kept_sizes_and_size_report():
  space = _mlp_space()
  keep = np.ones(space.num_groups, bool)
  keep[[0, 1, 13]] = False
  assert hj.kept_sizes(space, keep) == {"h1": (8, 6), "h2": (6, 5), "logits": (3, 3)}
  rep = hj.size_report(space, keep)
  assert rep["params/d2/kernel"] == {0: (8, 6), 1: (6, 5)}
  assert rep["batch_stats/bn/var"] == {0: (8, 6)}
  assert "params/d3/kernel" in rep and rep["params/d3/kernel"] == {0: (6, 5)}


# ----------------------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------------------


def test_manifest_matches_prune_and_is_json(tmp_path):
  v = _mlp_vars()
  space = _mlp_space(v)
  vz = space.zero_groups(v, jnp.array([2, 5, 9]))
  small = hj.prune(vz, space)
  man = hj.make_manifest(space, None, vz)
  json.dumps(man)
  assert man["version"] == 1 and man["params"]["params/d1/kernel"]["old_shape"] == [5, 8]
  f = tmp_path / "m.json"
  hj.save_manifest(man, f)
  man2 = hj.load_manifest(f)
  assert man2 == json.loads(json.dumps(man))
  chex.assert_trees_all_equal(hj.apply_manifest(man2, vz), small)
  abstract = hj.apply_manifest(man2, jax.eval_shape(lambda: v))
  chex.assert_trees_all_equal_shapes(abstract, small)
  assert isinstance(jax.tree_util.tree_leaves(abstract)[0], jax.ShapeDtypeStruct)
  with pytest.raises(ValueError, match="made for"):
    hj.apply_manifest(man2, small)  # already pruned: shapes disagree
  with pytest.raises(ValueError, match="not found"):
    hj.apply_manifest(man2, {"params": vz["params"]})


def test_manifest_orbax_roundtrip(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(8, name="d1")(x))
      return nn.Dense(3, name="d2")(x)

  net = Net()
  x = jnp.ones((2, 4))
  v = jax.jit(net.init)(jax.random.PRNGKey(0), x)
  space = hj.SearchSpace.from_channel_spaces(
      [C(8, (A("params/d1/kernel", 1), A("params/d1/bias", 0), A("params/d2/kernel", 0, CONSUMER)))], v)
  vz = space.zero_groups(v, jnp.array([0, 3, 4]))
  small = hj.prune(vz, space)
  man = hj.make_manifest(space, None, vz)
  ckpt = tmp_path / "ckpt"
  with ocp.StandardCheckpointer() as cp:
    cp.save(ckpt, small)
  target = hj.apply_manifest(man, jax.eval_shape(net.init, jax.random.PRNGKey(0), x))
  with ocp.StandardCheckpointer() as cp:
    restored = cp.restore(ckpt, target)
  chex.assert_trees_all_equal(restored, small)
  # the restored small params run with a linen module rebuilt from size_report
  new_feat = hj.size_report(space, hj.surgery.resolve_keep(space, vz))["params/d1/kernel"][1][1]
  assert new_feat == 5

  class SmallNet(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(new_feat, name="d1")(x))
      return nn.Dense(3, name="d2")(x)

  chex.assert_trees_all_close(SmallNet().apply(restored, x), net.apply(vz, x), atol=1e-5)


def test_prune_opt_state_hesso_state_reindexed():
  v = _mlp_vars()
  space = _mlp_space(v).subtree("params")
  params = v["params"]
  tx = hj.hesso(optax.sgd(0.1), space, target_group_sparsity=0.5, warmup_steps=0, pruning_steps=2)
  state = tx.init(params)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  step = jax.jit(tx.update)
  for _ in range(3):
    upd, state = step(grads, state, params)
    params = optax.apply_updates(params, upd)
  pruned = np.asarray(hj.pruned_mask(state))
  assert pruned.sum() == 7  # floor(14 * 0.5)
  keep = ~pruned
  small = hj.prune(params, space)  # default keep == ~pruned (exact zeros)
  small_state = hj.prune_opt_state(state, params, space, keep)
  assert hj.pruned_mask(small_state).shape == (7,) and not np.asarray(hj.pruned_mask(small_state)).any()
  assert small["d1"]["kernel"].shape[1] + small["d2"]["kernel"].shape[1] == 7
  # fine-tuning continues with a HESSO over the pruned space (nothing more to prune)
  tx2 = hj.hesso(optax.sgd(0.1), hj.prune_space(space, keep), target_group_sparsity=0.0,
                 warmup_steps=0, pruning_steps=2)
  upd, _ = tx2.update(jax.tree_util.tree_map(jnp.ones_like, small), small_state, small)
  chex.assert_trees_all_equal_shapes(upd, small)


def test_rebase_and_canonical_respell_nnx_value_paths():
  v = _mlp_vars()
  space = _mlp_space(v).subtree("params")
  nnx_like = jax.tree_util.tree_map(lambda x: {"value": x}, v["params"])  # '.../kernel/value'
  rebased = space.rebase(nnx_like)
  assert all(p[-1] == "value" for p in rebased.paths())
  assert rebased.rebase(v["params"]).paths() == space.paths()  # and back
  assert rebased.canonical().paths() == space.paths()
  assert space.rebase(v["params"]) is space and space.canonical() is space
  rebased.validate(nnx_like)
  np.testing.assert_array_equal(rebased.group_norms(nnx_like), space.group_norms(v["params"]))
  # a path that no spelling matches is left as it is (validate names it)
  assert space.rebase({"other": jnp.zeros(3)}) is space


def test_space_labels_are_unique():
  a = C(2, (A("a", 0),), name="x")
  b = C(3, (A("b", 0),), name="x")
  c = C(1, (A("c", 0),), prunable=False, reason="r")
  space = hj.SearchSpace((a, c, b))
  assert space.labels() == ["x#0", "c[0]", "x#1"]
  assert space.labels(prunable_only=True) == ["x#0", "x#1"]


def test_prune_opt_state_via_tx_init_equals_structural_match():
  v = _mlp_vars()
  space = _mlp_space(v).subtree("params")
  params = space.zero_groups(v["params"], jnp.array([0, 3, 12]))
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-2))
  state = tx.init(params)
  _, state = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
  keep = hj.surgery.resolve_keep(space, params)
  by_tx = hj.prune_opt_state(state, params, space, keep, tx=tx)
  by_structure = hj.prune_opt_state(state, params, space, keep)
  chex.assert_trees_all_equal(by_tx, by_structure)
  chex.assert_trees_all_equal_shapes(by_tx[1][0].mu, hj.prune(params, space))


def test_wrong_types_raise_type_error_naming_the_function():
  v = _mlp_vars()
  space = _mlp_space(v)
  keep = np.ones(space.num_groups, bool)
  for fn, args in ((hj.prune, (v, "space")), (hj.prune_like, (v, {}, keep)),
                   (hj.prune_space, ([], keep)), (hj.kept_sizes, (None, keep)),
                   (hj.sparsity_report, (space.channel_spaces, v))):
    with pytest.raises(TypeError, match=f"{fn.__name__}: space must be a hesso_jax.SearchSpace"):
      fn(*args)
  with pytest.raises(TypeError, match="prune_nnx: model must be an nnx.Module"):
    hj.prune_nnx(v, space)
