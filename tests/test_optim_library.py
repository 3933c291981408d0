"""The optimizer package as a library: optax.tree_map_params, complex parameters, module
structure, and the cost structure of the compiled step (no extra full-size passes)."""

import ast
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mlp_case import mlp

import hesso_jax as hj
from hesso_jax._jaxpr import iter_eqns

X = jax.random.normal(jax.random.PRNGKey(1), (16, 4))
Y = jax.random.normal(jax.random.PRNGKey(2), (16, 3))


def _txs(space, base=None):
  base = base or optax.adam(1e-3)
  return {
      "hesso": hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=1, pruning_steps=4),
      "cric": hj.hesso_cric(base, space, target_group_sparsity=0.5, start_cric_step=1,
                            sampling_steps=2, hybrid_training_steps=2),
  }


# --- optax.tree_utils.tree_map_params -----------------------------------------------------------


@pytest.mark.parametrize("name", ["hesso", "cric"])
def test_tree_map_params_reaches_every_params_shaped_part(name):
  params, space = mlp()
  tx = _txs(space)[name]
  state = tx.init(params)
  mapped = optax.tree_utils.tree_map_params(tx, lambda x: ("P", x.shape), state,
                                            transform_non_params=lambda x: ("S", np.shape(x)))
  leaves = jax.tree_util.tree_leaves(mapped, is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2
                                     and isinstance(x[0], str))
  n_params = len(jax.tree_util.tree_leaves(params))
  tagged = [t for t, _ in leaves]
  # adam's mu and nu, plus CRIC's parameter cache
  assert tagged.count("P") == n_params * (3 if name == "cric" else 2)
  if name == "cric":
    assert all(t == "P" for t, _ in jax.tree_util.tree_leaves(
        mapped.cache, is_leaf=lambda x: isinstance(x, tuple) and isinstance(x[0], str)))
  assert mapped.pruned == ("S", (space.num_groups,))
  # the mapped state of a real array function is a well-formed state of the same structure
  same = optax.tree_utils.tree_map_params(tx, lambda x: x * 1, state)
  assert jax.tree_util.tree_structure(same) == jax.tree_util.tree_structure(state)


@pytest.mark.parametrize("name", ["hesso", "cric"])
def test_init_still_rejects_real_bad_trees(name):
  params, space = mlp()
  tx = _txs(space)[name]
  with pytest.raises(ValueError, match="l0/kernel"):
    tx.init({})
  with pytest.raises(ValueError, match="l0/kernel"):
    tx.init({k: v for k, v in params.items() if k != "l0"})


# --- complex parameters -------------------------------------------------------------------------


def test_complex_saliency_uses_the_modulus():
  space = hj.SearchSpace((hj.ChannelSpace(3, (hj.AxisSlice(("w",), 0),)),))
  x = {"w": jnp.array([10j, 0.1, 5], jnp.complex64)}
  s = hj.saliency.saliency(space, x, None, {"magnitude": 1.0})
  assert int(jnp.argmin(s)) == 1 and int(jnp.argmax(s)) == 0
  raw = hj.saliency.raw_criteria(space, x, {"w": jnp.array([1j, 1, -1], jnp.complex64)})
  # Re(x conj d): 10j * conj(1j) = 10, 0.1 * 1, 5 * -1
  np.testing.assert_allclose(raw["taylor_first_order"], [10.0, 0.1, 5.0], rtol=1e-6)


def test_complex_with_zero_imaginary_part_scores_exactly_like_real():
  params, space = mlp()
  d = jax.tree_util.tree_map(lambda a: 0.1 * jnp.sin(3 * a), params)
  cplx = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.complex64), t)
  for name in hj.CRITERIA:
    w = {name: 1.0}
    np.testing.assert_array_equal(hj.saliency.saliency(space, params, d, w),
                                  hj.saliency.saliency(space, cplx(params), cplx(d), w))


def test_hesso_prunes_complex_params_by_modulus_with_exact_zeros():
  space = hj.SearchSpace((hj.ChannelSpace(3, (hj.AxisSlice(("w",), 1),)),))
  params = {"w": jnp.array([[10j, 0.1, 5], [1j, 0.2, 1]], jnp.complex64)}
  tx = hj.hesso(optax.sgd(0.01), space, target_group_sparsity=0.34, warmup_steps=0,
                pruning_steps=2)
  st = tx.init(params)
  for _ in range(3):
    u, st = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), st, params)
    params = optax.apply_updates(params, u)
  np.testing.assert_array_equal(hj.pruned_mask(st), [False, True, False])
  assert params["w"].dtype == jnp.complex64
  assert np.all(np.asarray(params["w"][:, 1]) == 0)


# --- module structure ---------------------------------------------------------------------------

OPTIM = pathlib.Path(hj.__file__).parent / "optim"


def _imports(path):
  tree = ast.parse(path.read_text())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
  return out


def test_no_optimizer_module_imports_the_other():
  hesso, cric = _imports(OPTIM / "_hesso.py"), _imports(OPTIM / "_cric.py")
  assert not any("_cric" in m or m.endswith(".cric") for m in hesso)
  assert not any("_hesso" in m for m in cric)
  for f in ("_common.py", "_state.py", "_saliency.py"):
    assert not any(("_hesso" in m or "_cric" in m) for m in _imports(OPTIM / f)), f


def test_checkpoint_imports_only_public_optim_names():
  mods = _imports(OPTIM.parent / "checkpoint.py")
  optim = [m for m in mods if m.startswith("hesso_jax.optim")]
  assert optim and all(not part.startswith("_") for m in optim for part in m.split(".")[2:])


# --- the compiled step: no extra full-size passes -----------------------------------------------


def _full_size_ops(tx, params, value=False, donate=False, op="fusion"):
  """``op``s (fusion or copy) in the entry computation of the jitted update+apply that produce a
  weight-shaped array (each is one pass over that weight). ``donate``: params and optimizer state
  are donated, as in a real training loop, so XLA may update them in place."""
  txt = _compiled_step(tx, params, value, donate)
  entry = txt[txt.index("\nENTRY"):]
  return len(re.findall(rf"= f32\[(?:64,128|128,128)\]\S* {op}\(", entry))


def _compiled_step(tx, params, value=False, donate=False):
  """Optimized HLO text of the jitted update + apply on ones as gradients."""
  g = jax.tree_util.tree_map(jnp.ones_like, params)

  def step(g, p, s):
    u, s = tx.update(g, s, p, **({"value": jnp.float32(1.0)} if value else {}))
    return optax.apply_updates(p, u), s

  jitted = jax.jit(step, donate_argnums=(1, 2) if donate else ())
  return jitted.lower(g, params, tx.init(params)).compile().as_text()


def _small_tx(name, space, base):
  """``hesso`` or ``hesso_cric`` on ``base`` with a short schedule."""
  if name == "hesso":
    return hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=1, pruning_steps=4)
  return hj.hesso_cric(base, space, target_group_sparsity=0.5, sampling_steps=2,
                       hybrid_training_steps=2)


def _full_size_fusions(tx, params, value=False):
  return _full_size_ops(tx, params, value)


def test_hesso_step_makes_no_more_full_size_passes_than_its_base():
  params, space = mlp(dims=(64, 128, 128, 3))
  base = optax.sgd(0.1, momentum=0.9)
  tx = hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=1, pruning_steps=4)
  assert _full_size_fusions(tx, params) == _full_size_fusions(base, params)


@pytest.mark.parametrize("name", ["hesso", "hesso_cric"])
def test_masked_update_of_every_producer_leaf_is_gated_by_a_scalar(name):
  """The per-element masked update of each producer leaf ends in ``where(live, masked, u)`` with
  ``live`` a *scalar* (some mask set). The CPU backend then unswitches the fused loop, so a step
  with nothing to mask (the warm-up) runs the base optimizer's plain loop
  (``benchmarks/bench_warmup.py``, variant ``ungated``). In HESSO leaves that are not producers
  (the last layer here) carry no mask at all; CRIC's cache restores act on every leaf."""
  params, space = mlp(dims=(64, 128, 128, 3))
  tx = _small_tx(name, space, optax.sgd(0.1, momentum=0.9))
  kw = {"value": jnp.float32(1.0)} if name == "hesso_cric" else {}
  g = jax.tree_util.tree_map(jnp.ones_like, params)
  cj = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, **kw)[0])(g, tx.init(params), params)
  defs = {v: e for e in cj.jaxpr.eqns for v in e.outvars}
  producers = {m.path for s in space.prunable_spaces for m in s.producers()}
  paths = [tuple(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  gated = []
  for v in cj.jaxpr.outvars:
    e = defs[v]
    is_where = e.primitive.name in ("jit", "pjit") and e.params.get("name") == "_where"
    gated.append(is_where and e.invars[0].aval.shape == () and e.invars[0].aval.dtype == bool)
  masked = [p for p in paths if p in producers] if name == "hesso" else paths
  assert [p for p, ok in zip(paths, gated, strict=True) if ok] == masked


def _update_loop_bodies(tx, params, value=False):
  """The fused computations of the donated step's weight-shaped fusions that apply masks (those
  with a ``select``): the per-element loops of the masked update."""
  txt = _compiled_step(tx, params, value, donate=True)
  entry = txt[txt.index("\nENTRY"):]
  called = re.findall(r"= f32\[(?:64,128|128,128)\]\S* fusion\(.*?calls=(%[\w.\-]+)", entry)
  bodies = [txt[txt.index(f"\n{c} "):].split("\n}\n")[0] for c in called]
  return [b for b in bodies if " select(" in b]


@pytest.mark.parametrize("name", ["hesso", "hesso_cric"])
def test_masked_update_loop_reads_its_masks_instead_of_recomputing_them(name):
  """The ``(G,)`` masks and phase scalars reach the per-element loop as stored buffers
  (``optim._common.stored``). Fused into it, every compare/and/or of the phase arithmetic and of
  the mask bookkeeping is one more loop-invariant condition, and LLVM's unswitching ran out of
  budget before reaching the ``live`` gate: CRIC's warm-up step read its parameter cache every
  step (1.23x SGD's optimizer step instead of 1.10x, ``benchmarks/bench_warmup.py``)."""
  params, space = mlp(dims=(64, 128, 128, 3))
  tx = _small_tx(name, space, optax.sgd(0.1, momentum=0.9))
  bodies = _update_loop_bodies(tx, params, value=name == "hesso_cric")
  assert bodies, "the masked update should be a fused loop with selects"
  for body in bodies:
    logic = re.findall(r" (compare|and|or|not|xor)\(", body)
    assert not logic, (logic, body)


def test_cric_step_adds_at_most_the_cache_pass():
  params, space = mlp(dims=(64, 128, 128, 3))
  base = optax.sgd(0.1, momentum=0.9)
  tx = _small_tx("hesso_cric", space, base)
  assert _full_size_fusions(tx, params, value=True) <= _full_size_fusions(base, params) + 2


@pytest.mark.parametrize("name", ["hesso", "hesso_cric"])
def test_donated_step_updates_state_in_place_without_copies(name):
  """With donated params and state the base optimizer's step copies no weight-sized buffer, and
  neither may ours: the saliency and snapshot conds read the params and the base state, so they
  must run before the fused update overwrites them in place (``optim._common.after``); without
  that ordering XLA copies the momentum (and for CRIC the params and the cache) every step."""
  params, space = mlp(dims=(64, 128, 128, 3))
  base = optax.sgd(0.1, momentum=0.9)
  tx = _small_tx(name, space, base)
  cric = name == "hesso_cric"
  assert _full_size_ops(base, params, donate=True, op="copy") == 0
  assert _full_size_ops(tx, params, value=cric, donate=True, op="copy") == 0
  assert _full_size_ops(tx, params, value=cric, donate=True) == _full_size_ops(
    base, params, donate=True)


# --- selection sorts: int keys -----------------------------------------------------------------


def test_sort_key_orders_exactly_like_a_float_sort():
  """``sort_key`` stands in for the float scores in the selection sorts: the stable sort of the
  keys must give the permutation the float sort gives, with -0.0 == 0.0 and every NaN equal."""
  from hesso_jax.optim import _common

  rng = np.random.default_rng(0)
  special = np.array([-np.inf, np.inf, -0.0, 0.0, 1.0, -1.0, np.nan, -np.nan, 1e-30, -1e30,
                      3e38, -3e38, 1e-45, -1e-45], np.float32)
  x = np.where(rng.random((64, 257)) < 0.5, rng.normal(size=(64, 257)),
               rng.choice(special, (64, 257))).astype(np.float32)

  @jax.jit
  @jax.vmap
  def perms(row):
    idx = jnp.arange(row.shape[0])
    want = jax.lax.sort((row, idx), num_keys=1, is_stable=True)[1]
    got = jax.lax.sort((_common.sort_key(row), idx), num_keys=1, is_stable=True)[1]
    return want, got

  want, got = perms(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _lowest_in_segments_numpy(x, k, ids):
  """Reference: per segment, a stable NumPy argsort (-0.0 == 0.0, NaNs last and equal).
  Subnormals compare as zero, as XLA's float comparisons flush them."""
  x = np.where(np.abs(x) < np.finfo(np.float32).tiny, np.float32(0), x)
  out = np.zeros(x.shape, bool)
  for s in range(len(k)):
    where = np.flatnonzero(ids == s)
    order = where[np.argsort(x[where], kind="stable")]
    out[order[: k[s]]] = True
  return out


def test_radix_selection_picks_what_a_stable_sort_picks():
  """``lowest_in_segments`` (radix selection, and its sort fallback for 2**24+ groups) against a
  NumPy stable argsort per segment, on scores full of ties, signed zeros, infinities and NaNs,
  for every ``k`` from 0 to the segment size."""
  from hesso_jax.optim import _common

  rng = np.random.default_rng(0)
  special = np.array([-np.inf, np.inf, -0.0, 0.0, 1.0, -1.0, np.nan, 1e-30, -3e38, 1e-45],
                     np.float32)
  G, S = 300, 3
  ids = np.sort(rng.integers(0, S, G)).astype(np.int32)
  sizes = np.bincount(ids, minlength=S)
  radix = jax.jit(jax.vmap(lambda x, k: _common.lowest_in_segments(x, k, ids)))
  by_sort = jax.jit(jax.vmap(lambda x, k: _common._lowest_in_segments_by_sort(x, k, ids)))
  n = 96
  x = np.where(rng.random((n, G)) < 0.4, rng.choice(special, (n, G)),
               np.round(rng.normal(size=(n, G)), 1)).astype(np.float32)
  k = np.stack([rng.integers(0, sizes + 1) for _ in range(n)]).astype(np.int32)
  k[0], k[1] = 0, sizes  # none and all
  want = np.stack([_lowest_in_segments_numpy(x[i], k[i], ids) for i in range(n)])
  np.testing.assert_array_equal(np.asarray(radix(x, k)), want)
  np.testing.assert_array_equal(np.asarray(by_sort(x, k)), want)
  # one segment, as lowest_k calls it; non-finite scores are never among the lowest k
  glob = jax.jit(jax.vmap(_common.lowest_k))(x, k[:, 0])
  for i in range(n):
    fin = np.isfinite(x[i])
    want1 = _lowest_in_segments_numpy(np.where(fin, x[i], np.inf), k[i, :1], np.zeros(G)) & fin
    np.testing.assert_array_equal(np.asarray(glob[i]), want1)


@pytest.mark.parametrize("name", ["hesso", "cric"])
def test_selection_sorts_compare_int_keys_only(name):
  """The selection sorts run on :func:`sort_key` ints: a float comparator is five times the size,
  and on XLA:CPU its scalar values are a per-step cost even in a branch that does not run."""
  params, space = mlp(dims=(64, 128, 128, 3))
  tx = _txs(space, optax.sgd(0.1))[name]
  kw = {"value": jnp.float32(1.0)} if name == "cric" else {}
  g = jax.tree_util.tree_map(jnp.ones_like, params)
  closed = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, **kw))(g, tx.init(params), params)
  sorts = [e for e in iter_eqns(closed) if e.primitive.name == "sort"]
  assert sorts, "the selection should sort"
  for e in sorts:
    keys = e.invars[: e.params["num_keys"]]
    assert all(jnp.issubdtype(k.aval.dtype, jnp.integer) for k in keys), e


@pytest.mark.parametrize("name,budget", [("hesso", 1), ("cric", 2)])
def test_every_step_makes_at_most_its_budget_of_group_reductions(name, budget):
  """Outside the phase conds a step reduces its ``(G,)`` masks once: one scalar ("some mask is
  set") gates the masked update and orders the base update after the conds (CRIC also counts
  its new violating candidates). On XLA:CPU each reduction is a few kernels and scalar
  allocations on every step, so a second ``after`` signal or gate is a regression."""
  params, space = mlp(dims=(64, 128, 128, 3))
  tx = _txs(space, optax.sgd(0.1))[name]
  kw = {"value": jnp.float32(1.0)} if name == "cric" else {}
  g = jax.tree_util.tree_map(jnp.ones_like, params)
  closed = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, **kw))(g, tx.init(params), params)
  # reductions over a (G,) or larger operand that run on every step: not inside cond branches
  every_step = [e for e in iter_eqns(closed, skip=("cond",))
                if e.primitive.name.startswith("reduce_") and e.invars[0].aval.size >= space.num_groups]
  assert len(every_step) == budget
