"""HESSO-CRIC's phase functions one by one, its termination, and the same-batch loss ratios."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mlp_case import DIMS, loss_fn, mlp

import hesso_jax as hj
from hesso_jax.optim import _cric
from hesso_jax.space import AxisSlice, ChannelSpace, SearchSpace

X = jax.random.normal(jax.random.PRNGKey(1), (16, DIMS[0]))
Y = jax.random.normal(jax.random.PRNGKey(2), (16, DIMS[-1]))


def two_spaces(sizes=(4, 3)):
  return SearchSpace(tuple(ChannelSpace(n, (AxisSlice((f"w{i}",), 0),), name=f"s{i}")
                           for i, n in enumerate(sizes)))


# --- cric_phase ---------------------------------------------------------------------------------


def test_cric_phase_matches_a_python_schedule():
  c0, S, H, NL, end = 2, 3, 2, 2, 12
  P0 = c0 + 2 * NL
  for step in range(16):
    ph = _cric.cric_phase(jnp.int32(step), jnp.int32(end), start=c0, sampling_steps=S,
                          hybrid_steps=H, num_trials=NL)
    probing = c0 <= step < P0
    v = step - c0
    cycling = P0 <= step < end
    expect = dict(
        probing=probing, first=probing and v == 0, proj=probing and v % 2 == 0,
        meas=probing and v % 2 == 1, cycling=cycling, boundary=cycling and (step - P0) % S == 0,
        hybrid=step >= end, forgetting=end <= step < end + H)
    got = {k: bool(getattr(ph, k)) for k in expect}
    assert got == expect, step
    if probing:
      assert int(ph.trial_ix) == v // 2
    if cycling:
      assert (int(ph.cycle), int(ph.jc)) == divmod(step - P0, S)
    if step >= end:
      assert int(ph.jh) == step - end


# --- probe_update -------------------------------------------------------------------------------


def _phase(**kw):
  f = jnp.bool_(False)
  base = dict(probing=f, first=f, proj=f, meas=f, trial_ix=jnp.int32(0), cycling=f,
              cycle=jnp.int32(0), jc=jnp.int32(0), boundary=f, hybrid=f, jh=jnp.int32(0),
              forgetting=f)
  base.update({k: jnp.asarray(v) for k, v in kw.items()})
  return _cric.CricPhase(**base)


def test_probe_update_zeroes_the_lowest_of_the_trial_space_and_records_the_ratio():
  space = two_spaces()
  ktab = np.array([1, 2, 1, 1], np.int32)   # (space, tau): s0 -> 1, 2 groups; s1 -> 1, 1
  score = jnp.array([0.4, 0.1, 0.3, 0.2, 0.05, 0.9, 0.8])
  lr = jnp.zeros((2, 2))
  mask, lr2 = _cric.probe_update(_phase(probing=True, proj=True, trial_ix=1), score, 7.0, lr,
                                 space, ktab, 2)
  np.testing.assert_array_equal(mask, [False, True, False, True, False, False, False])
  np.testing.assert_array_equal(lr2, lr)  # projection steps record nothing
  mask, lr2 = _cric.probe_update(_phase(probing=True, meas=True, trial_ix=2), score, 7.0, lr,
                                 space, ktab, 2)
  assert not mask.any()
  np.testing.assert_array_equal(lr2, [[0, 0], [7.0, 0]])


# --- cycle_update -------------------------------------------------------------------------------


def _sets(active=(), trial=(), historical=(), G=6):
  m = lambda ix: jnp.zeros((G,), bool).at[jnp.asarray(ix, jnp.int32)].set(True)
  return _cric.CycleSets(m(list(active)), m(list(trial)), m(list(historical)), jnp.bool_(False))


def test_cycle_update_first_boundary_takes_the_bottom_R():
  score = jnp.array([0.5, 0.1, 0.3, 0.2, 0.9, 0.8])
  out = _cric.cycle_update(_phase(cycling=True, boundary=True), score, jnp.int32(2), _sets(),
                           max_cycles=5, tolerance=0)
  np.testing.assert_array_equal(np.flatnonzero(out.active), [1, 3])
  np.testing.assert_array_equal(np.flatnonzero(out.historical), [1, 3])
  assert not out.trial.any() and not bool(out.terminate)


def test_cycle_update_inside_a_cycle_collects_new_bottom_groups():
  score = jnp.array([0.05, 0.1, 0.3, 0.2, 0.9, 0.8])  # group 0 now in the bottom 2
  out = _cric.cycle_update(_phase(cycling=True, jc=1), score, jnp.int32(2),
                           _sets(active=(1, 3), historical=(1, 3)), max_cycles=5, tolerance=0)
  np.testing.assert_array_equal(np.flatnonzero(out.trial), [0])
  np.testing.assert_array_equal(np.flatnonzero(out.active), [1, 3])


@pytest.mark.parametrize("trial,cycle,max_cycles,stop", [
    ((0,), 1, 5, False),   # a new candidate: next cycle tests it
    ((), 1, 5, True),      # the violating set emptied: stop
    ((1,), 1, 5, True),    # only already-tested groups: empty as well
    ((0,), 5, 5, True),    # cycle budget spent
])
def test_cycle_update_boundary_continues_or_terminates(trial, cycle, max_cycles, stop):
  score = jnp.array([0.05, 0.1, 0.3, 0.2, 0.9, 0.8])
  out = _cric.cycle_update(_phase(cycling=True, boundary=True, cycle=cycle), score,
                           jnp.int32(2), _sets(active=(1, 3), trial=trial, historical=(1, 3)),
                           max_cycles=max_cycles, tolerance=0)
  assert bool(out.terminate) == stop
  if stop:
    assert not out.active.any()
  else:
    np.testing.assert_array_equal(np.flatnonzero(out.active), [0])
    np.testing.assert_array_equal(np.flatnonzero(out.historical), [0, 1, 3])


# --- loss criterion and final selection ---------------------------------------------------------


def test_loss_criterion_matches_numpy():
  space = two_spaces()
  ktab = np.array([[1, 2], [1, 2]], np.int32)
  ratio = np.array([[1.5, 4.0], [0.5, 2.0]], np.float32)
  mean = jnp.array([0.4, 0.1, 0.3, 0.2, 0.05, 0.9, 0.8])
  got = np.asarray(_cric.loss_criterion(jnp.asarray(ratio), mean, space, ktab))
  cost = np.maximum.accumulate(np.log(np.maximum(ratio, 1.0)), axis=1)  # ktab rows ascend
  want = []
  for s, rank in [(0, 3), (0, 0), (0, 2), (0, 1), (1, 0), (1, 2), (1, 1)]:
    first = [t for t in range(2) if rank < ktab[s, t]]
    want.append(cost[s, first[0]] if first else cost[s].max())
  want = np.asarray(want)
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_loss_term_never_reverses_the_saliency_order_inside_a_space(order):
  """A larger trial that measured a *lower* ratio (noise, or a saturated loss) must not make its
  higher-saliency band cheaper than a lower one: the term is non-decreasing in the within-space
  saliency rank, whatever the order of the trial sparsities."""
  space = two_spaces((8, 3))
  o = list(order)
  ktab = np.array([[2, 4, 6], [1, 2, 2]], np.int32)[:, o]
  ratio = np.array([[2.0, 100.0, 10.0], [3.0, 1.0, 1.0]], np.float32)[:, o]
  mean = jnp.array([0.8, 0.1, 0.7, 0.2, 0.6, 0.3, 0.5, 0.4, 0.2, 0.1, 0.3])
  term = np.asarray(_cric.loss_criterion(jnp.asarray(ratio), mean, space, ktab))
  ids = space.space_ids()
  for s in range(2):
    by_rank = term[ids == s][np.argsort(np.asarray(mean)[ids == s])]
    assert np.all(np.diff(by_rank) >= 0), (s, by_rank)
  # so with the loss term the capped choice inside a space is the lowest-saliency groups
  sel = _cric.final_selection(mean, jnp.ones(11, jnp.int32), jnp.asarray(ratio), 1.0, space,
                              ktab, jnp.int32(6), 1)
  sel0 = np.asarray(sel)[:8]
  lowest = np.argsort(np.asarray(mean)[:8])[: int(sel0.sum())]
  assert sel0.sum() > 0
  np.testing.assert_array_equal(np.flatnonzero(sel0), np.sort(lowest))


def test_final_selection_is_the_mean_saliency_ranking_without_loss_weight():
  space = two_spaces()
  sums = jnp.array([4.0, 1.0, 3.0, 2.0, 0.5, 9.0, 8.0])
  counts = jnp.array([1, 1, 1, 1, 0, 1, 1])  # group 4 never scored: never selected
  sel = _cric.final_selection(sums, counts, jnp.ones((2, 1)), 0.0, space,
                              np.ones((2, 1), np.int32), jnp.int32(3), 1)
  np.testing.assert_array_equal(np.flatnonzero(sel), [1, 2, 3])


# --- whole runs ---------------------------------------------------------------------------------


def _run(tx, params, steps, **kw):
  st = tx.init(params)
  step = jax.jit(lambda p, s: _apply(tx, p, s, **kw))
  for _ in range(steps):
    params, st = step(params, st)
  return params, st


def _apply(tx, p, s, **kw):
  u, s = tx.update(jax.tree_util.tree_map(jnp.zeros_like, p), s, p,
                   **{k: (v(p) if k == "value" else v) for k, v in kw.items()})
  return optax.apply_updates(p, u), s


def test_stops_when_the_violating_set_empties_after_one_cycle():
  """A frozen model: the bottom R never changes, so the first cycle brings no new candidate and
  CRIC must terminate at the second boundary instead of running all cycles."""
  params, space = mlp()
  kw = dict(target_group_sparsity=0.5, start_cric_step=1, sampling_steps=3,
            max_cycle_period=6, hybrid_training_steps=2)
  tx = hj.hesso_cric(optax.set_to_zero(), space, **kw)
  sched = hj.optim.cric_schedule(space, **{k: v for k, v in kw.items()
                                           if k != "target_group_sparsity"})
  _, st = _run(tx, params, sched["cycles_start"] + 3 * 3, value=lambda p: loss_fn(p, X, Y))
  assert int(st.end) == sched["cycles_start"] + 3 + 1 < sched["latest_end"]


def test_cric_does_not_move_a_selection_saliency_already_gets_right():
  """Small groups are useless (removing them barely moves the loss): the loss criterion agrees
  with saliency, and CRIC selects exactly what HESSO selects."""
  params, space = mlp()
  norms = jnp.concatenate([jnp.array([3.0, 0.01, 2.5, 0.02, 2.0, 0.03, 1.5, 0.04]),
                           jnp.array([2.0, 0.01, 1.8, 0.02, 1.6, 0.03])])
  scale = norms / space.group_norms(params)
  fac = space.expand(scale, params, fill=1.0, combine=jnp.multiply)
  params = jax.tree_util.tree_map(lambda x, f: x * f, params, fac)
  base = optax.set_to_zero()
  cric = hj.hesso_cric(base, space, target_group_sparsity=0.5, start_cric_step=0,
                       sampling_steps=2, max_cycle_period=2, hybrid_training_steps=2)
  hesso = hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=0, pruning_steps=2)
  sched = hj.optim.cric_schedule(space, start_cric_step=0, sampling_steps=2, max_cycle_period=2,
                                 hybrid_training_steps=2)
  _, st_c = _run(cric, params, sched["latest_done"] + 1, value_fn=lambda p: loss_fn(p, X, Y))
  _, st_h = _run(hesso, params, 3)
  assert int(hj.pruned_mask(st_c).sum()) == 7
  np.testing.assert_array_equal(hj.pruned_mask(st_c), hj.pruned_mask(st_h))


def test_value_fn_measures_reference_and_trial_on_the_same_batch():
  """With value_fn, each recorded ratio is loss(projected)/loss(cached) on the batch of the
  measurement step, whatever the batch of the first probing step was."""
  params, space = mlp()
  tx = hj.hesso_cric(optax.sgd(0.05), space, target_group_sparsity=0.5, start_cric_step=1,
                     sampling_steps=2, hybrid_training_steps=2, trial_sparsities=(0.5,))

  @jax.jit
  def step(p, s, x, y):
    g = jax.grad(loss_fn)(p, x, y)
    u, s = tx.update(g, s, p, value_fn=lambda q: loss_fn(q, x, y))
    return optax.apply_updates(p, u), s

  st = tx.init(params)
  p = params
  for i in range(1 + 2 * 2):
    x = jax.random.normal(jax.random.PRNGKey(10 + i), X.shape)
    y = jax.random.normal(jax.random.PRNGKey(20 + i), Y.shape)
    if i in (2, 4):  # measurement steps: p is the projection of the cache
      want = float(loss_fn(p, x, y) / loss_fn(st.cache, x, y))
    p, st = step(p, st, x, y)
    if i in (2, 4):
      np.testing.assert_allclose(float(st.loss_ratio[(i - 2) // 2, 0]), want, rtol=1e-5)
  assert np.all(np.asarray(st.loss_ratio) != 0)
