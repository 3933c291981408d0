"""HESSO-CRIC: phase boundaries, exact restores, final count, exact zeros, and the planted
indispensable channel that CRIC keeps while plain HESSO removes it."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mlp_case import DIMS, forward, loss_fn, mlp, traced_step

import hesso_jax as hj
from hesso_jax.optim.cric import cric_schedule
from hesso_jax.space import CONSUMER, AxisSlice, ChannelSpace, SearchSpace

X = jax.random.normal(jax.random.PRNGKey(1), (16, DIMS[0]))
Y = jax.random.normal(jax.random.PRNGKey(2), (16, DIMS[-1]))


def with_group_norms(params, space, norms):
  """params rescaled so that the producer group norms equal ``norms``."""
  scale = jnp.asarray(norms) / space.group_norms(params)
  fac = space.expand(scale, params, fill=1.0, combine=jnp.multiply)
  return jax.tree_util.tree_map(lambda x, f: x * f, params, fac)


def shrink_group(space, g, rate, start):
  """A test base: from its ``start``-th call, u = -rate * x on group g's producers, 0 elsewhere."""
  mask = jnp.zeros((space.num_groups,), bool).at[g].set(True)

  def update(u, count, params=None):
    m = space.group_mask_tree(mask, params)
    on = count >= start
    return jax.tree_util.tree_map(lambda x, mm: jnp.where(mm & on, -rate * x, 0.0 * x), params,
                                  m), count + 1

  return optax.GradientTransformation(lambda p: jnp.zeros([], jnp.int32), update)


def run(tx, params, steps, loss=loss_fn):
  st = tx.init(params)
  step, traces = traced_step(tx, X, Y, loss)

  hist = []
  p = params
  for _ in range(steps):
    p, st = step(p, st)
    hist.append((p, st))
  assert len(traces) == 1  # every phase in one compiled step
  return p, st, hist


def test_phase_boundaries_restores_and_cycles():
  params, space = mlp()
  G = space.num_groups  # 8 + 6
  # well separated norms; group 3 (4th smallest) is shrunk by the base during cycle 0 and
  # so falls into the bottom R -> it becomes the second cycle's violating set.
  norms = np.array([0.1, 0.2, 0.3, 0.45, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9])
  params = with_group_norms(params, space, norms)
  c0, S, C, H = 2, 3, 4, 2
  s = 0.25
  R = math.floor(G * s)  # 3
  P0 = c0 + 2 * 2 * 3
  tx = hj.hesso_cric(shrink_group(space, 3, 0.9, P0), space, target_group_sparsity=s,
                     start_cric_step=c0, sampling_steps=S, max_cycle_period=C,
                     hybrid_training_steps=H, importance={"magnitude": 1.0, "loss": 0.0})
  sched = cric_schedule(space, start_cric_step=c0, sampling_steps=S, max_cycle_period=C,
                        hybrid_training_steps=H)
  assert sched["probe_steps"] == 2 * 2 * 3 and sched["cycles_start"] == P0
  _, st, hist = run(tx, params, sched["latest_done"] + 2)

  def norms_at(i):
    return np.asarray(space.group_norms(hist[i][0]))

  # warm-up: the (zero) base moves nothing
  chex.assert_trees_all_equal(hist[c0 - 1][0], params)
  cache_p = hist[c0 - 1][0]
  chex.assert_trees_all_equal(hist[c0][1].cache, cache_p)
  cache_n = norms_at(c0 - 1)

  # probing: even steps zero exactly k lowest groups of one space, odd steps restore exactly
  sizes, offs = [8, 6], [0, 8]
  for t in range(6):
    sidx, tau = t // 3, (0.25, 0.5, 0.75)[t % 3]
    k = max(1, math.floor(sizes[sidx] * tau))
    n = norms_at(c0 + 2 * t)
    zero = np.nonzero(n == 0.0)[0]
    lo = offs[sidx]
    want = lo + np.argsort(cache_n[lo:lo + sizes[sidx]], kind="stable")[:k]
    np.testing.assert_array_equal(np.sort(zero), np.sort(want))
    keep = np.setdiff1d(np.arange(G), zero)
    np.testing.assert_array_equal(n[keep], cache_n[keep])
    chex.assert_trees_all_equal(hist[c0 + 2 * t + 1][0], cache_p)  # exact restore
  ratios = np.asarray(hist[P0 - 1][1].loss_ratio)
  assert ratios.shape == (2, 3) and np.all(ratios > 0) and np.all(np.isfinite(ratios))

  # cycle 0: violating set = the R smallest; forgotten over S steps; group 3 joins the trial set
  st0 = hist[P0][1]
  np.testing.assert_array_equal(np.nonzero(np.asarray(st0.active))[0], [0, 1, 2])
  for j in range(S):
    n = norms_at(P0 + j)
    np.testing.assert_allclose(n[:3], cache_n[:3] * (S - j - 1) / S, rtol=1e-5)
  assert np.all(norms_at(P0 + S - 1)[:3] == 0.0)
  assert np.asarray(hist[P0 + S - 1][1].trial)[3]

  # cycle 1 at P0 + S: restore, violating set = {3}
  st1 = hist[P0 + S][1]
  np.testing.assert_array_equal(np.nonzero(np.asarray(st1.active))[0], [3])
  np.testing.assert_array_equal(np.nonzero(np.asarray(st1.historical))[0], [0, 1, 2, 3])
  n = norms_at(P0 + S)
  np.testing.assert_array_equal(n[:3], cache_n[:3])  # restored exactly
  assert int(st1.end) > 10 ** 9  # not terminated

  # cycle 2 would have no new violators: terminate at P0 + 2S, restore, select R
  end = P0 + 2 * S + 1
  st_t = hist[end - 1][1]
  assert int(st_t.end) == end and int(hist[end - 2][1].end) > 10 ** 9
  chex.assert_trees_all_equal(hist[end - 1][0], cache_p)  # final restore: exactly the cache
  assert int(st_t.redundant.sum()) == R and not np.any(np.asarray(st_t.active))

  # hybrid: forgetting over H steps, then exactly zero forever
  red = np.asarray(st_t.redundant)
  for j in range(H):
    p = hist[end + j][0]
    n = np.asarray(space.group_norms(p))
    assert np.all(n[red] <= cache_n[red] * (H - j - 1) / H * (1 + 1e-5) + 1e-12)
  assert int(hist[end + H - 1][1].pruned.sum()) == R
  for p, _ in hist[end + H - 1:]:
    assert np.all(np.asarray(space.group_norms(p))[red] == 0.0)
  np.testing.assert_array_equal(np.asarray(hj.pruned_mask(st)), red)


def test_immediate_cycle_forgetting_zeroes_at_once_and_stops_after_one_cycle():
  """The reference's cycle schedule: the violating set is zero right after the boundary, its
  regrowth is damped by (S-1)/S, ..., 1/2, and as the zeroed set fills the bottom R nothing new
  enters the trial set: cycling ends after one cycle where the gradual default (the test above,
  same planted case) runs a second one."""
  params, space = mlp()
  G = space.num_groups
  norms = np.array([0.1, 0.2, 0.3, 0.45, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9])
  params = with_group_norms(params, space, norms)
  c0, S, C, H, s = 2, 3, 4, 2, 0.25
  P0 = c0 + 2 * 2 * 3
  kw = dict(target_group_sparsity=s, start_cric_step=c0, sampling_steps=S, max_cycle_period=C,
            hybrid_training_steps=H, importance={"magnitude": 1.0, "loss": 0.0})
  tx = hj.hesso_cric(shrink_group(space, 3, 0.9, P0), space, cycle_forgetting="immediate", **kw)
  sched = cric_schedule(space, **{k: v for k, v in kw.items() if k not in (
    "target_group_sparsity", "importance")})
  _, st, hist = run(tx, params, sched["latest_done"] + 2)
  np.testing.assert_array_equal(np.nonzero(np.asarray(hist[P0][1].active))[0], [0, 1, 2])
  assert np.all(np.asarray(space.group_norms(hist[P0][0]))[:3] == 0.0)  # zeroed at once
  assert np.asarray(space.group_norms(hist[P0][0]))[3] > 0.0
  # cycling ends at the next boundary: nothing new fell into the bottom R
  end = P0 + S + 1
  assert int(hist[end - 1][1].end) == end and int(hist[end - 2][1].end) > 10 ** 9
  assert not np.any(np.asarray(hist[end - 2][1].trial))
  chex.assert_trees_all_equal(hist[end - 1][0], hist[c0 - 1][0])  # final restore
  red = np.asarray(hist[end - 1][1].redundant)
  np.testing.assert_array_equal(np.nonzero(red)[0], [0, 1, 2])
  assert int(st.pruned.sum()) == math.floor(G * s)
  for p, _ in hist[end + H - 1:]:
    assert np.all(np.asarray(space.group_norms(p))[red] == 0.0)


def test_immediate_cycle_factors_follow_the_reference():
  """Factors at the cycle's steps j = 0..S-1: 0, then (S-j)/(S-j+1) on the regrown weights."""
  params, space = mlp()
  norms = np.array([0.1, 0.2, 0.3, 0.45, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9])
  params = with_group_norms(params, space, norms)
  c0, S = 2, 4
  P0 = c0 + 2 * 2 * 3
  # a base with u = 0.5 x + 0.01 everywhere from the first cycle step on
  half = optax.GradientTransformation(
    lambda p: jnp.zeros([], jnp.int32),
    lambda u, c, params=None: (jax.tree_util.tree_map(
      lambda x: jnp.where(c >= P0, 0.5 * x + 0.01, 0.0 * x), params), c + 1))
  tx = hj.hesso_cric(half, space, target_group_sparsity=0.25, start_cric_step=c0,
                     sampling_steps=S, max_cycle_period=1, hybrid_training_steps=2,
                     importance={"magnitude": 1.0, "loss": 0.0}, cycle_forgetting="immediate")
  _, _, hist = run(tx, params, P0 + S)
  prev = hist[P0][0]
  assert np.all(np.asarray(space.group_norms(prev))[:3] == 0.0)
  mask = space.group_mask_tree(jnp.zeros((space.num_groups,), bool).at[:3].set(True), params)
  for j in range(1, S):
    p = hist[P0 + j][0]
    want = jax.tree_util.tree_map(
      lambda x, m: jnp.where(m, (1.5 * x + 0.01) * (S - j) / (S - j + 1), 1.5 * x + 0.01),
      prev, mask)
    # only producer slices of the violating set are scaled; compare those
    got_n = np.asarray(space.group_norms(p))[:3]
    want_n = np.asarray(space.group_norms(want))[:3]
    np.testing.assert_allclose(got_n, want_n, rtol=1e-5)
    prev = p


@pytest.mark.parametrize("s", [0.3, 0.6])
def test_final_count_and_exact_zeros_with_real_training(s):
  params, space = mlp(seed=3)
  c0, S, C, H = 1, 2, 3, 3
  tx = hj.hesso_cric(optax.adam(1e-2), space, target_group_sparsity=s, start_cric_step=c0,
                     sampling_steps=S, max_cycle_period=C, hybrid_training_steps=H)
  sched = cric_schedule(space, start_cric_step=c0, sampling_steps=S, max_cycle_period=C,
                        hybrid_training_steps=H)
  p, st, hist = run(tx, params, sched["latest_done"] + 3)
  R = math.floor(space.num_groups * s)
  end = int(st.end)
  assert sched["cycles_start"] < end <= sched["latest_end"]
  assert int(hj.pruned_mask(st).sum()) == R
  for q, stt in hist[end + H - 1:]:
    mask = np.asarray(stt.pruned)
    assert mask.sum() == R
    assert np.all(np.asarray(space.group_norms(q))[mask] == 0.0)
  chex.assert_trees_all_equal_shapes_and_dtypes(st, tx.init(params))


def test_planted_indispensable_channel_kept_by_cric_pruned_by_hesso():
  """Space A (4 units): unit 0 carries the whole signal with tiny producer weights (magnitude
  saliency is lowest) but a huge consumer weight; units 1-3 are big but useless. Space B (8 units):
  units 0-3 relay the signal, units 4-7 are useless and small."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0.0, 1.0, (64, 4)), jnp.float32)
  y = 3.0 * x[:, :1] + 0.05 * jnp.asarray(rng.normal(size=(64, 1)), jnp.float32)
  w0 = np.zeros((4, 4), np.float32)
  w0[0, 0] = 0.01                                   # the planted channel: tiny producer
  w0[1:, 1:] = rng.normal(size=(3, 3)) + 2.0        # big, useless units
  w1 = np.zeros((4, 8), np.float32)
  w1[0, :4] = 100.0                                 # A0 -> B0..B3 (consumer: not in saliency)
  w1[1:, 4:] = 0.1 * rng.normal(size=(3, 4))        # useless units feed B4..B7
  w2 = np.zeros((8, 1), np.float32)
  w2[:4, 0] = 3.0 / 4.0
  params = {"l0": {"kernel": jnp.asarray(w0), "bias": jnp.zeros(4)},
            "l1": {"kernel": jnp.asarray(w1), "bias": jnp.zeros(8)},
            "l2": {"kernel": jnp.asarray(w2), "bias": jnp.zeros(1)}}
  space = SearchSpace((
      ChannelSpace(4, (AxisSlice(("l0", "kernel"), 1), AxisSlice(("l0", "bias"), 0),
                       AxisSlice(("l1", "kernel"), 0, CONSUMER)), name="A"),
      ChannelSpace(8, (AxisSlice(("l1", "kernel"), 1), AxisSlice(("l1", "bias"), 0),
                       AxisSlice(("l2", "kernel"), 0, CONSUMER)), name="B"),
      ChannelSpace(1, (AxisSlice(("l2", "kernel"), 1),), prunable=False, reason="output"),
  ))

  def loss(p, xx, yy):
    del xx, yy
    return jnp.mean((forward(p, x) - y) ** 2)

  base = optax.set_to_zero()  # the model is ill-conditioned on purpose; no training needed
  s = 0.25  # R = 3 of 12
  hesso_tx = hj.hesso(base, space, target_group_sparsity=s, warmup_steps=0, pruning_steps=2,
                      importance={"magnitude": 1.0})
  cric_tx = hj.hesso_cric(base, space, target_group_sparsity=s, start_cric_step=0,
                          sampling_steps=2, max_cycle_period=2, hybrid_training_steps=2,
                          importance={"magnitude": 1.0, "loss": 1.0})
  ref = float(loss(params, None, None))
  p_h, st_h, _ = run(hesso_tx, params, 4, loss)
  p_c, st_c, _ = run(cric_tx, params, 12 + 2 * 2 + 1 + 2 + 1, loss)
  mask_h, mask_c = np.asarray(hj.pruned_mask(st_h)), np.asarray(hj.pruned_mask(st_c))
  assert mask_h.sum() == 3 and mask_c.sum() == 3
  assert mask_h[0]          # HESSO removes the planted channel ...
  assert not mask_c[0]      # ... CRIC keeps it
  assert not mask_c[:8].any() and mask_c[8:].sum() == 3  # only useless, small B units go
  assert float(loss(p_c, None, None)) < 2 * ref < float(loss(p_h, None, None))
  ratios = np.asarray(st_c.loss_ratio)
  assert ratios[0].min() > 10 * ratios[1, :2].max()  # probing saw the damage in space A


def test_missing_loss_and_bad_arguments_raise():
  params, space = mlp()
  kw = dict(target_group_sparsity=0.5, sampling_steps=2, hybrid_training_steps=2)
  tx = hj.hesso_cric(optax.sgd(0.1), space, **kw)
  st = tx.init(params)
  g = jax.grad(loss_fn)(params, X, Y)
  with pytest.raises(TypeError, match="value=loss"):
    tx.update(g, st, params)
  with pytest.raises(TypeError, match="params"):
    tx.update(g, st, value=1.0)
  bad = [
      (dict(sampling_steps=None), TypeError, "sampling_steps"),
      (dict(hybrid_training_steps=None), TypeError, "hybrid_training_steps"),
      (dict(sampling_steps=0), ValueError, "sampling_steps"),
      (dict(sampling_steps=2.5), TypeError, "sampling_steps"),
      (dict(target_group_sparsity=1.2), ValueError, "target_group_sparsity"),
      (dict(start_cric_step=-1), ValueError, "start_cric_step"),
      (dict(max_cycle_period=0), ValueError, "max_cycle_period"),
      (dict(tolerance=-1), ValueError, "tolerance"),
      (dict(trial_sparsities=(0.5, 1.0)), ValueError, "trial_sparsities"),
      (dict(trial_sparsities=()), ValueError, "trial_sparsities"),
      (dict(trial_sparsities=0.5), TypeError, "trial_sparsities"),
      (dict(importance={"loss": 1.0, "magnitudes": 1.0}), ValueError, "unknown criterion"),
      (dict(importance={"loss": 1.0}), ValueError, "besides 'loss'"),
      (dict(cycle_forgetting="now"), ValueError, "cycle_forgetting"),
  ]
  for over, err, match in bad:
    with pytest.raises(err, match=match):
      hj.hesso_cric(optax.sgd(0.1), space, **{**kw, **over})
  with pytest.raises(ValueError, match="l0/kernel"):
    tx.init({k: v for k, v in params.items() if k != "l0"})
  assert dict(hj.DEFAULT_CRIC_IMPORTANCE) == {**hj.DEFAULT_IMPORTANCE, "loss": 1.0}


def test_probing_steps_apply_no_base_update():
  """Probing holds training: with a base that moves the weights (SGD on the MLP's loss), a
  projection step changes nothing but the trial's zeroed groups and a measurement step restores
  the cache exactly; cycle steps after the first train again."""
  params, space = mlp()
  tx = hj.hesso_cric(optax.sgd(0.1), space, target_group_sparsity=0.5, start_cric_step=1,
                     sampling_steps=2, hybrid_training_steps=2, trial_sparsities=(0.5,))
  c0 = 1
  P0 = cric_schedule(space, start_cric_step=c0, sampling_steps=2, max_cycle_period=10,
                     hybrid_training_steps=2, trial_sparsities=(0.5,))["cycles_start"]
  step, _ = traced_step(tx, X, Y)
  p, st = params, tx.init(params)
  for i in range(P0 + 2):
    new_p, st = step(p, st)
    moved = [np.asarray(a != b) for a, b in zip(jax.tree_util.tree_leaves(new_p),
                                                jax.tree_util.tree_leaves(p), strict=True)]
    if i == P0:  # the first cycle step restores the cache (and starts forgetting)
      pass
    elif i < c0 or i > P0:  # training steps: most weights move (some ReLU units are dead)
      assert sum(m.sum() for m in moved) > 0.5 * sum(m.size for m in moved), i
    elif (i - c0) % 2 == 0:  # projection: only zeroed entries changed
      assert any(m.any() for m in moved), i
      for m, a in zip(moved, jax.tree_util.tree_leaves(new_p), strict=True):
        assert np.all(np.asarray(a)[m] == 0.0), i
    else:  # measurement: back to the cache, bit for bit
      chex.assert_trees_all_equal(new_p, st.cache)
    p = new_p
