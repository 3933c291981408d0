"""HESSO: schedule, exact zeros, counts, forgetting trajectory, ranking, validation."""

import contextlib
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mlp_case import data, loss_fn, mlp

import hesso_jax as hj
from hesso_jax.optim import select_groups
from hesso_jax.space import SearchSpace


def make_step(tx, jit=True):
  def step(params, state, x, y):
    g = jax.grad(loss_fn)(params, x, y)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state, u
  return jax.jit(step) if jit else step


def run(tx, params, steps, jit=True, seed=1):
  x, y = data(seed)
  state = tx.init(params)
  step = make_step(tx, jit)
  hist = []
  for _ in range(steps):
    params, state, u = step(params, state, x, y)
    hist.append((params, state))
  return params, state, hist


# ----------------------------------------------------------------------------------------------


def test_pruned_groups_exactly_zero_after_every_step_with_adam():
  params, space = mlp()
  G = space.num_groups
  tx = hj.hesso(optax.adam(1e-2), space, target_group_sparsity=0.5, warmup_steps=3, pruning_steps=8,
                pruning_periods=2)
  _, state, hist = run(tx, params, 20)

  @jax.jit
  def max_abs_pruned(p, pr):  # largest |element| over every producer slice of a pruned group
    masks = space.group_mask_tree(pr, p)
    return jnp.max(jnp.stack([
        jnp.max(jnp.abs(jnp.where(m, leaf, 0.0)))
        for leaf, m in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(masks))]))

  seen_commit = False
  for p, st in hist:
    if np.asarray(st.pruned).any():
      seen_commit = True
      assert float(max_abs_pruned(p, st.pruned)) == 0.0
  assert seen_commit
  assert int(np.sum(state.pruned)) == math.floor(G * 0.5)
  assert not np.any(np.asarray(state.redundant))
  np.testing.assert_array_equal(np.asarray(hj.pruned_mask(state)), np.asarray(state.pruned))


def test_schedule_selection_and_commit_steps():
  params, space = mlp()
  W, P, K = 2, 9, 3
  T = P // K
  G = space.num_groups  # 14
  R = math.floor(G * 0.6)  # 8 -> per period 2, 2, 4
  tx = hj.hesso(optax.sgd(1e-2), space, target_group_sparsity=0.6, warmup_steps=W, pruning_steps=P,
                pruning_periods=K)
  _, _, hist = run(tx, params, W + P + 3)
  removed = [int(np.sum(st.pruned | st.redundant)) for _, st in hist]
  pruned = [int(np.sum(st.pruned)) for _, st in hist]
  red = [int(np.sum(st.redundant)) for _, st in hist]
  q = R // K
  for step in range(len(hist)):
    rel = step - W
    if rel < 0:
      assert removed[step] == 0
      continue
    k = min(rel // T, K - 1) if rel < K * T else K - 1
    target_k = R if k == K - 1 else q * (k + 1)
    assert removed[step] == target_k, (step, removed)
    j = rel % T
    if rel < K * T and j != T - 1:
      assert red[step] > 0 and pruned[step] == (q * k if k < K else R)
    else:
      assert red[step] == 0 and pruned[step] == target_k
  assert pruned[-1] == R
  assert [hist[i][1].count for i in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("s", [0.0, 0.7, 0.999])
def test_final_pruned_count_is_floor_G_s(s):
  params, space = mlp(dims=(4, 8, 6, 7, 3))
  G = space.num_groups
  R = math.floor(G * min(s, 0.999))
  cap = sum(sp.size - 1 for sp in space.prunable_spaces)
  with pytest.warns(UserWarning, match="at most") if cap < R else contextlib.nullcontext():
    tx = hj.hesso(optax.sgd(1e-2), space, target_group_sparsity=s, warmup_steps=0, pruning_steps=4,
                  pruning_periods=2)
  p, state, _ = run(tx, params, 5)
  assert int(np.sum(state.pruned)) == min(R, cap)
  kept = [int(np.sum(~np.asarray(state.pruned)[o:o + sp.size]))
          for sp, o in zip(space.prunable_spaces, space.group_offsets)]
  assert min(kept) >= 1


@pytest.mark.parametrize("m,s", [(2, 0.5), (3, 0.9)])
def test_multiple_of_keeps_multiples_never_zero(m, s):
  params, space = mlp(dims=(4, 12, 8, 9, 3))
  reachable = sum(sp.size - m for sp in space.prunable_spaces)
  with (pytest.warns(UserWarning, match="at most") if math.floor(space.num_groups * s) > reachable
        else contextlib.nullcontext()):
    tx = hj.hesso(optax.sgd(1e-2), space, target_group_sparsity=s, warmup_steps=1, pruning_steps=6,
                  pruning_periods=3, multiple_of=m)
  _, state, hist = run(tx, params, 8)
  R = math.floor(space.num_groups * s)
  for _, st in hist:
    removed = np.asarray(st.pruned | st.redundant)
    for sp, o in zip(space.prunable_spaces, space.group_offsets):
      kept = sp.size - int(removed[o:o + sp.size].sum())
      assert kept >= 1
      assert kept % m == 0 or kept == sp.size, (m, sp.size, kept)
  total = int(np.sum(state.pruned))
  assert 0 < total <= R


def test_multiple_of_one_never_removes_a_whole_space():
  # all groups of h1 have tiny magnitude: plain global ranking would take all of them
  params, space = mlp()
  params["l1"] = jax.tree_util.tree_map(lambda x: 1e-4 * x, params["l1"])
  tx = hj.hesso(optax.set_to_zero(), space, target_group_sparsity=0.6, warmup_steps=0,
                pruning_steps=1, importance={"magnitude": 1.0})
  _, state, _ = run(tx, params, 2)
  pr = np.asarray(state.pruned)
  assert pr[8:].sum() == 5  # h1 (6 groups) keeps exactly one
  assert pr.sum() == math.floor(14 * 0.6)


def test_forgetting_trajectory_with_zero_base_update():
  params, space = mlp()
  W, T = 2, 5
  tx = hj.hesso(optax.set_to_zero(), space, target_group_sparsity=0.3, warmup_steps=W,
                pruning_steps=T, importance={"magnitude": 1.0})
  n0 = np.asarray(space.group_norms(params), np.float64)
  _, state, hist = run(tx, params, W + T + 2)
  red = np.asarray(hist[W][1].redundant)
  R = math.floor(14 * 0.3)
  assert red.sum() == R
  # ranking picks the lowest: magnitude-only -> the R smallest norms
  np.testing.assert_array_equal(np.sort(np.nonzero(red)[0]), np.sort(np.argsort(n0)[:R]))
  for j in range(T):
    p, st = hist[W + j]
    norms = np.asarray(space.group_norms(p), np.float64)
    np.testing.assert_allclose(norms[red], n0[red] * (T - j - 1) / T, rtol=1e-5, atol=0)
    np.testing.assert_array_equal(norms[~red], n0[~red])  # untouched exactly
  p_end, st_end = hist[W + T - 1]
  assert np.all(np.asarray(space.group_norms(p_end))[red] == 0.0)
  np.testing.assert_array_equal(np.asarray(st_end.pruned), red)
  # warm-up steps leave params untouched (zero base)
  chex.assert_trees_all_equal(hist[0][0], params)


def test_other_elements_get_base_update_bit_exactly():
  params, space = mlp()
  base = optax.adam(3e-2)
  tx = hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=1, pruning_steps=4,
                pruning_periods=2)
  x, y = data()

  @jax.jit
  def both(p, st, bst):
    g = jax.grad(loss_fn)(p, x, y)
    u, st2 = tx.update(g, st, p)
    ub, bst = base.update(g, bst, p)
    return u, ub, st2, bst

  st, bst = tx.init(params), base.init(params)
  p = params
  for i in range(7):
    u, ub, st2, bst = both(p, st, bst)
    touched = space.group_mask_tree(st2.redundant | st.pruned | st2.pruned, p)
    for a, b, m in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(ub),
                       jax.tree_util.tree_leaves(touched)):
      m = np.broadcast_to(np.asarray(m), a.shape)
      np.testing.assert_array_equal(np.asarray(a)[~m], np.asarray(b)[~m])
      if i == 0:
        assert not m.any()
    p, st = optax.apply_updates(p, u), st2
    chex.assert_trees_all_equal(st.base_state, bst)  # base state evolves exactly as without HESSO
  assert int(st.pruned.sum()) == 7


def test_consumers_and_unprunable_leaves_untouched():
  params, space = mlp()
  tx = hj.hesso(optax.set_to_zero(), space, target_group_sparsity=0.5, warmup_steps=0,
                pruning_steps=1)
  p, state, _ = run(tx, params, 2)
  # l2 kernel rows (consumer of h1) and the output layer are not modified
  chex.assert_trees_all_equal(p["l2"], params["l2"])
  assert int(state.pruned.sum()) == 7


def test_jit_and_eager_agree():
  params, space = mlp()
  tx = hj.hesso(optax.sgd(0.05, momentum=0.9), space, target_group_sparsity=0.4, warmup_steps=0,
                pruning_steps=2, pruning_periods=2)
  p1, s1, _ = run(tx, params, 3, jit=True)
  p2, s2, _ = run(tx, params, 3, jit=False)
  chex.assert_trees_all_close(p1, p2, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(s1.pruned), np.asarray(s2.pruned))
  assert int(s1.pruned.sum()) == 5


def test_state_is_a_pytree_of_arrays_and_roundtrips():
  params, space = mlp()
  tx = hj.hesso(optax.adam(1e-2), space, target_group_sparsity=0.5, warmup_steps=0, pruning_steps=2)
  _, state, _ = run(tx, params, 1)
  assert isinstance(state, hj.HessoState)
  leaves, treedef = jax.tree_util.tree_flatten(state)
  assert all(isinstance(l, jax.Array) for l in leaves)
  back = jax.tree_util.tree_unflatten(treedef, leaves)
  chex.assert_trees_all_equal(back, state)
  assert state.count.dtype == jnp.int32 and state.count.shape == ()
  assert state.pruned.dtype == jnp.bool_ and state.pruned.shape == (space.num_groups,)
  assert state.redundant.dtype == jnp.bool_ and state.redundant.shape == (space.num_groups,)


def test_select_groups_vs_bruteforce():
  rng = np.random.default_rng(0)
  params, space = mlp(dims=(4, 8, 6, 7, 3))
  G = space.num_groups
  ids = space.space_ids()
  for trial in range(20):
    scores = rng.normal(size=G).astype(np.float32)
    removed = rng.random(G) < 0.2
    eligible = ~removed
    q = int(rng.integers(0, G))
    sel = np.asarray(select_groups(jnp.asarray(scores), jnp.asarray(eligible), q, space,
                                   jnp.asarray(removed), 1))
    # brute force: greedy over sorted scores, per-space cap n_s - 1 - removed_s
    cap = {k: sp.size - 1 - removed[ids == k].sum() for k, sp in enumerate(space.prunable_spaces)}
    want = np.zeros(G, bool)
    taken = 0
    for g in np.argsort(scores, kind="stable"):
      if taken == q:
        break
      if eligible[g] and cap[ids[g]] > 0:
        want[g] = True
        cap[ids[g]] -= 1
        taken += 1
    np.testing.assert_array_equal(sel, want, err_msg=f"trial {trial}")


def test_non_finite_scores_never_selected():
  params, space = mlp()
  scores = jnp.arange(14.0).at[0].set(jnp.nan).at[1].set(jnp.inf)
  sel = np.asarray(select_groups(scores, jnp.ones(14, bool), 3, space, jnp.zeros(14, bool)))
  assert list(np.nonzero(sel)[0]) == [2, 3, 4]


def test_zero_target_prunes_nothing_and_no_prunable_groups_is_fine():
  params, space = mlp()
  tx = hj.hesso(optax.sgd(1e-2), space, target_group_sparsity=0.0, warmup_steps=0, pruning_steps=2)
  _, state, _ = run(tx, params, 3)
  assert not np.any(state.pruned)
  empty = SearchSpace(tuple(s.__class__(s.size, s.members, prunable=False, reason="x")
                            for s in space.channel_spaces))
  tx = hj.hesso(optax.sgd(1e-2), empty, target_group_sparsity=0.5, warmup_steps=0, pruning_steps=2)
  p, state, _ = run(tx, params, 3)
  assert state.pruned.shape == (0,)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(target_group_sparsity=1.0), ValueError, "target_group_sparsity"),
    (dict(target_group_sparsity=-0.1), ValueError, "target_group_sparsity"),
    (dict(target_group_sparsity="half"), TypeError, "target_group_sparsity"),
    (dict(pruning_periods=0), ValueError, "pruning_periods"),
    (dict(pruning_periods=5, pruning_steps=4), ValueError, "pruning_periods"),
    (dict(warmup_steps=-1), ValueError, "warmup_steps"),
    (dict(warmup_steps=1.5), TypeError, "warmup_steps"),
    (dict(warmup_steps=True), TypeError, "warmup_steps"),
    (dict(warmup_steps=None), TypeError, "warmup_steps"),
    (dict(pruning_steps=jnp.ones(2)), TypeError, "pruning_steps"),
    (dict(pruning_steps=0, pruning_periods=1), ValueError, "pruning_steps"),
    (dict(multiple_of=0), ValueError, "multiple_of"),
    (dict(importance={"magnitude": 0.5, "taylor": 0.5}), ValueError, "unknown criterion"),
    (dict(importance={"magnitude": "big"}), TypeError, "importance"),
    (dict(importance=[("magnitude", 1.0)]), TypeError, "importance"),
])
def test_bad_hyperparameters_raise(kwargs, err, match):
  """Wrong types raise TypeError, wrong values ValueError, each naming the argument."""
  _, space = mlp()
  base = dict(target_group_sparsity=0.5, warmup_steps=0, pruning_steps=4)
  base.update(kwargs)
  with pytest.raises(err, match=match):
    hj.hesso(optax.sgd(0.1), space, **base)


def test_space_mismatch_raises_at_init_naming_the_path():
  params, space = mlp()
  tx = hj.hesso(optax.sgd(0.1), space, target_group_sparsity=0.5, warmup_steps=0, pruning_steps=2)
  bad = dict(params)
  bad["l1"] = {"kernel": params["l1"]["kernel"][:, :5], "bias": params["l1"]["bias"]}
  with pytest.raises(ValueError, match="l1/kernel"):
    tx.init(bad)
  missing = {k: v for k, v in params.items() if k != "l0"}
  with pytest.raises(ValueError, match="l0/kernel"):
    tx.init(missing)
  with pytest.raises(TypeError, match="params"):
    tx.update(params, tx.init(params))
  with pytest.raises(TypeError, match="SearchSpace"):
    hj.hesso(optax.sgd(0.1), "not a space", target_group_sparsity=0.5, warmup_steps=0,
             pruning_steps=2)


def test_pruned_mask_errors_without_hesso_state():
  with pytest.raises(ValueError, match="no HessoState"):
    hj.pruned_mask(optax.adam(1e-3).init({"a": jnp.zeros(3)}))
