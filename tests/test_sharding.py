"""HESSO / HESSO-CRIC under jax.jit with params sharded over a 2x4 ('data', 'model') mesh.

The 8-device runs happen in a subprocess (tests/_multidevice_worker.py, XLA_FLAGS
--xla_force_host_platform_device_count=8) so the rest of the suite keeps one device; the tests here
assert on its measurements. Cheap in-process tests cover the sharding maps themselves.
"""

import _multidevice_worker as W
import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import hesso_jax as hj


@pytest.fixture(scope="module")
def res(multidevice_root):
  return W.results_once(multidevice_root)


def test_worker_has_8_devices(res):
  assert res["devices"] == 8


@pytest.mark.parametrize("kind", ["hesso", "cric"])
def test_sharded_run_equals_one_device_run(res, kind):
  r = res[kind]
  assert r["num_sharded_params"] >= r["num_params"] - 1, r  # the run really is sharded
  assert r["num_pruned_1dev"] == r["num_groups"] // 2, r   # the pruning actually happened
  assert r["masks_equal"], r
  assert r["num_pruned_sharded"] == r["num_pruned_1dev"], r
  assert r["max_param_diff"] <= 1e-6, r  # only reduction order differs (2e-7 measured)
  assert r["zeros_exact"], r


@pytest.mark.parametrize("kind", ["hesso", "cric"])
def test_state_follows_param_shardings(res, kind):
  r = res[kind]
  assert r["init_shardings_ok"], r           # jit(tx.init, out_shardings=opt_state_shardings(...))
  assert r["mu_follows_params"], r           # Adam moments carry the params' shardings after steps
  assert r["mask_replicated"] and r["init_mask_replicated"], r  # (num_groups,) masks, count
  if kind == "cric":
    assert r["cache_follows_params"], r      # CRIC's parameter cache is sharded like the params


@pytest.mark.parametrize("kind", ["hesso", "cric"])
def test_no_host_round_trip(res, kind):
  # the sharded loop ran under jax.transfer_guard('disallow'); the step has no host callbacks
  assert res[kind]["host_callbacks_in_hlo"] is False


# ---- in-process (1 device): the sharding maps ---------------------------------------------------


def _mesh1():
  return jax.make_mesh((1, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def test_param_shardings_default_rules():
  mesh = jax.sharding.AbstractMesh((2, 4), ("data", "model"))
  params = {"k": np.zeros((6, 4, 3, 8)), "b": np.zeros((8,)), "c": np.zeros((3,)), "s": np.zeros(()),
            "w": np.zeros((4, 8, 10))}
  sh = hj.param_shardings(params, mesh)
  assert sh["k"].spec == P("data", None, None, "model")  # last axis TP, largest other axis FSDP
  assert sh["b"].spec == P("model")
  assert sh["c"].spec == P(None)                        # 3 % 4 != 0: not split
  assert sh["s"].spec == P()
  assert sh["w"].spec == P(None, None, "data")          # 10 % 4 != 0: no TP; 10 is the largest even axis
  sh = hj.param_shardings(params, mesh, tp_axis=None, rules=lambda p, s: P() if p == ("b",) else None)
  assert sh["k"].spec == P(None, None, None, "data") and sh["b"].spec == P()  # largest axis: 8
  mesh1 = jax.sharding.AbstractMesh((8,), ("data",))      # FSDP only: a missing 'model' axis is ignored
  assert hj.param_shardings(params, mesh1)["k"].spec == P(None, None, None, "data")


@pytest.mark.parametrize("kind", ["hesso_chain", "cric"])
def test_opt_state_shardings_map(kind):
  model, params, space, _, *_ = W.setup("hesso")
  mesh = _mesh1()
  base = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  if kind == "cric":
    tx = hj.hesso_cric(base, space, target_group_sparsity=0.5, sampling_steps=2, hybrid_training_steps=2)
  else:
    tx = hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=1, pruning_steps=2)
  # distinct specs per leaf, so a wrong match is visible
  specs = {"conv0": P(None, None, None, "model"), "conv1": P(None, None, "data", "model"),
           "fc": P("data", None), "head": P(None, "model")}
  p_sh = jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, specs[path[0].key] if x.ndim > 1 else P("model")), params)
  abs_p = hj.abstract_like(params, p_sh)
  s_sh = hj.opt_state_shardings(tx, abs_p)
  state = jax.eval_shape(tx.init, params)
  flat_s, _ = jax.tree_util.tree_flatten_with_path(s_sh)
  flat_x = jax.tree_util.tree_leaves(state)
  p_specs = {jax.tree_util.keystr(k): s.spec for k, s in jax.tree_util.tree_flatten_with_path(p_sh)[0]}
  n_mirror = 0
  for (path, s), x in zip(flat_s, flat_x):
    ks = jax.tree_util.keystr(path)
    match = [v for k, v in p_specs.items() if ks.endswith(k)]
    if match and x.ndim > 0:
      assert s.spec == match[0], ks
      n_mirror += 1
    else:
      assert s.spec == P(), ks  # masks, counts, CRIC statistics: replicated
  # adamw: mu + nu mirror the 8 param leaves; CRIC also caches the params
  assert n_mirror == (3 if kind == "cric" else 2) * len(jax.tree_util.tree_leaves(params))
  assert jax.tree_util.tree_structure(s_sh) == jax.tree_util.tree_structure(state)


def test_opt_state_shardings_needs_shardings():
  _, params, space, tx, *_ = W.setup("hesso")
  abs_p = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  with pytest.raises(ValueError, match="every parameter needs a sharding"):
    hj.opt_state_shardings(tx, abs_p)


@pytest.mark.parametrize("kind", ["hesso", "cric"])
def test_explicit_axes_mesh_equals_one_device_run(res, kind):
  # jax.make_mesh's default axis type is Explicit (shardings are part of the types): the (G,)
  # group vectors must be unsharded before sorting and the masks resharded like each leaf.
  r = res["explicit_" + kind]
  assert r["w1_sharded"] and r["mask_replicated"], r
  assert r["num_pruned"] == r["num_groups"] // 2, r
  assert r["masks_equal"], r
  assert r["max_param_diff"] <= 1e-6, r
