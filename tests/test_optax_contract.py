"""optax contract for hesso and hesso_cric, in the spirit of optax/contrib/_common_test.py:
inject_hyperparams, MultiSteps,
chains, extra args, flax.nnx.Optimizer, dtypes, stable state, non-finite gradients."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from mlp_case import DIMS, loss_fn, mlp, mlp_space, traced_step

import hesso_jax as hj

X = jax.random.normal(jax.random.PRNGKey(1), (16, DIMS[0]))
Y = jax.random.normal(jax.random.PRNGKey(2), (16, DIMS[-1]))
G = sum(DIMS[1:-1])
KINDS = ("hesso", "hesso_cric")

# Short schedules: hesso selects at step 1 and commits at step 2; hesso_cric trains 1 step, probes
# 2 spaces x 1 trial (4 steps), runs one 1-step cycle, terminates and commits (latest_done = 8).
STEPS = {"hesso": 3, "hesso_cric": 8}


def make_tx(kind, base_tx, space, target_group_sparsity=0.5, *, wrap=lambda f: f):
  """``kind`` over ``base_tx`` with the short schedule above; ``wrap`` e.g. inject_hyperparams."""
  if kind == "hesso":
    return wrap(hj.hesso)(base_tx=base_tx, space=space, target_group_sparsity=target_group_sparsity,
                          warmup_steps=1, pruning_steps=2)
  return wrap(hj.hesso_cric)(base_tx=base_tx, space=space,
                             target_group_sparsity=target_group_sparsity, start_cric_step=1,
                             sampling_steps=1, max_cycle_period=1, hybrid_training_steps=1,
                             trial_sparsities=(0.5,))


def _assert_pruned_zero(space, params, mask):
  norms = np.asarray(space.group_norms(params))
  assert np.all(norms[np.asarray(mask)] == 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_inject_hyperparams_learning_rate_and_target_sparsity(kind):
  params, space = mlp()
  tx = make_tx(kind, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), space, 0.25,
               wrap=optax.inject_hyperparams)
  step, traces = traced_step(tx, X, Y)

  for s in (0.25, 0.5):
    st = tx.init(params)
    st.hyperparams["target_group_sparsity"] = jnp.asarray(s, jnp.float32)
    p = params
    for _ in range(STEPS[kind] + 1):
      p, st = step(p, st)
    assert int(hj.pruned_mask(st).sum()) == math.floor(G * s)
    _assert_pruned_zero(space, p, hj.pruned_mask(st))
  assert len(traces) == 1  # the sparsity is a traced value: no retrace

  # learning rate of the base, injected and set to 0 through tree_set: only forgetting moves params
  st = optax.tree_utils.tree_set(tx.init(params), learning_rate=jnp.asarray(0.0))
  p = params
  for _ in range(STEPS[kind] + 1):
    p, st = step(p, st)
  pr = np.asarray(hj.pruned_mask(st))
  norms0, norms = np.asarray(space.group_norms(params)), np.asarray(space.group_norms(p))
  np.testing.assert_array_equal(norms[~pr], norms0[~pr])
  assert np.all(norms[pr] == 0.0) and pr.sum() == math.floor(G * 0.25)


@pytest.mark.parametrize("kind", KINDS)
def test_multisteps_wrapper(kind):
  params, space = mlp()
  tx = optax.MultiSteps(make_tx(kind, optax.adam(1e-2), space), every_k_schedule=3)
  st = tx.init(params)

  @jax.jit
  def step(p, st):
    l, g = jax.value_and_grad(loss_fn)(p, X, Y)
    u, st = tx.update(g, st, p, value=l)
    return optax.apply_updates(p, u), st

  p = params
  for _ in range(3 * (STEPS[kind] + 1)):
    p, st = step(p, st)
    mask = hj.pruned_mask(st)
    _assert_pruned_zero(space, p, mask)
  assert int(hj.pruned_mask(st).sum()) == G // 2
  assert int(st.inner_opt_state.count) == STEPS[kind] + 1  # counts real (accumulated) steps


@pytest.mark.parametrize("kind", KINDS)
def test_chain_with_clipping_as_base_and_extra_args_forwarded(kind):
  params, space = mlp()

  def scale_by_value():
    def update(u, s, p=None, *, value, **kw):
      return jax.tree_util.tree_map(lambda x: x * value, u), s
    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

  base = optax.chain(optax.clip_by_global_norm(0.5), scale_by_value(), optax.sgd(0.1))
  tx = make_tx(kind, base, space)
  st, bst = tx.init(params), base.init(params)
  g = jax.grad(loss_fn)(params, X, Y)

  @jax.jit
  def both(g, st, bst, p):
    u, st = tx.update(g, st, p, value=-2.0)
    ub, _ = base.update(g, bst, p, value=-2.0)
    return u, ub, st

  # step 0 is plain training for both kinds: the update is the base's, bit for bit
  u, ub, st = both(g, st, bst, params)
  chex.assert_trees_all_equal(u, ub)
  # the next step selects (hesso: the groups not being forgotten still get the base update) or
  # probes (hesso_cric: nothing moves but the trial projection, which lands on exact zeros)
  p1 = optax.apply_updates(params, u)
  u, ub, st = both(g, st, bst, p1)
  red = space.group_mask_tree(hj.redundant_mask(st), params)
  for a, b, m, x in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(ub),
                        jax.tree_util.tree_leaves(red), jax.tree_util.tree_leaves(p1)):
    a, b, x = np.asarray(a), np.asarray(b), np.asarray(x)
    if kind == "hesso":
      m = np.broadcast_to(np.asarray(m), a.shape)
      np.testing.assert_array_equal(a[~m], b[~m])
    else:
      assert np.all((a == 0) | (a == -x))
  if kind == "hesso":
    with pytest.raises(TypeError):  # the base needs `value`: missing extra arg surfaces
      tx.update(g, st, params)
  else:
    with pytest.raises((TypeError, ValueError), match="needs the loss"):  # TypeError after optim
      tx.update(g, st, params)


@pytest.mark.parametrize("kind", KINDS)
def test_pruned_mask_inside_chain_and_tree_get(kind):
  params, space = mlp()
  tx = optax.chain(make_tx(kind, optax.sgd(0.1), space))
  st = tx.init(params)
  step, _ = traced_step(tx, X, Y)
  p = params
  for _ in range(STEPS[kind]):
    p, st = step(p, st)
  assert hj.pruned_mask(st).shape == (G,) and hj.pruned_mask(st).dtype == jnp.bool_
  assert int(hj.pruned_mask(st).sum()) == G // 2
  np.testing.assert_array_equal(optax.tree_utils.tree_get(st, "pruned"), hj.pruned_mask(st))
  assert hj.redundant_mask(st).shape == (G,)


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.l0 = nnx.Linear(DIMS[0], DIMS[1], rngs=rngs)
    self.l1 = nnx.Linear(DIMS[1], DIMS[2], rngs=rngs)
    self.l2 = nnx.Linear(DIMS[2], DIMS[3], rngs=rngs)

  def __call__(self, x):
    return self.l2(jax.nn.relu(self.l1(jax.nn.relu(self.l0(x)))))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("suffix", [(), ("value",)])
def test_flax_nnx_optimizer(suffix, kind):
  model = NnxMLP(nnx.Rngs(0))
  # nnx.state(model, nnx.Param) flattens to ('l0', 'kernel', 'value'); Optimizer.update hands the
  # transformation nnx.as_pure(...) trees with paths ('l0', 'kernel'). Either spelling works.
  paths = [p for p, _ in hj.space.leaves_with_paths(nnx.state(model, nnx.Param))]
  assert ("l0", "kernel", "value") in paths
  space = mlp_space(suffix=suffix)
  tx = make_tx(kind, optax.adam(1e-2), space)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
    opt.update(model, grads, value=loss)

  for _ in range(STEPS[kind] + 1):
    train_step(model, opt)
  mask = hj.pruned_mask(opt.opt_state)
  assert int(mask.sum()) == G // 2
  pure = nnx.as_pure(nnx.state(model, nnx.Param))
  _assert_pruned_zero(mlp_space(), pure, mask)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_params_stay_bf16_and_zeros_are_exact(kind):
  params, space = mlp(dtype=jnp.bfloat16)
  tx = make_tx(kind, optax.sgd(0.05, momentum=0.9), space)
  st = tx.init(params)

  @jax.jit
  def step(p, st):
    l, g = jax.value_and_grad(loss_fn)(p, X, Y)
    u, st = tx.update(g, st, p, value=l)
    return optax.apply_updates(p, u), st, u

  p = params
  for _ in range(STEPS[kind] + 2):
    p, st, u = step(p, st)
    chex.assert_trees_all_equal_dtypes(p, params)
    chex.assert_trees_all_equal_dtypes(u, params)
  assert int(hj.pruned_mask(st).sum()) == G // 2
  _assert_pruned_zero(space, p, hj.pruned_mask(st))


@pytest.mark.parametrize("kind", KINDS)
def test_state_shapes_and_dtypes_stable_across_steps(kind):
  params, space = mlp()
  tx = make_tx(kind, optax.adamw(1e-2), space)
  st0 = tx.init(params)
  step, traces = traced_step(tx, X, Y)

  p, st = params, st0
  for _ in range(STEPS[kind] + 2):
    p, st = step(p, st)
    chex.assert_trees_all_equal_shapes_and_dtypes(st, st0)
  assert len(traces) == 1
  assert int(st.count) == STEPS[kind] + 2


def test_non_finite_grads_do_not_select_groups():
  params, space = mlp()
  tx = hj.hesso(optax.sgd(0.1), space, target_group_sparsity=0.5, warmup_steps=0, pruning_steps=4,
                pruning_periods=2)  # T = 2: selections at steps 0 and 2, quotas 3 then 7 total
  update = jax.jit(tx.update)
  st = tx.init(params)
  g = jax.grad(loss_fn)(params, X, Y)

  # one group's gradient is NaN at a selection step: that group is never picked
  g_bad = jax.tree_util.tree_map(lambda x: x, g)
  g_bad["l0"]["kernel"] = g_bad["l0"]["kernel"].at[:, 2].set(jnp.nan)
  _, st1 = update(g_bad, st, params)
  red = np.asarray(st1.redundant)
  assert not red[2] and red.sum() == G // 2 // 2
  assert st1.redundant.dtype == jnp.bool_

  # all gradients non-finite: nothing is selected; the quota is caught up at the next period
  g_inf = jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.inf), g)
  _, st1 = update(g_inf, st, params)
  assert not np.any(np.asarray(st1.redundant)) and not np.any(np.asarray(st1.pruned))
  st = st1
  for _ in range(3):  # the step with bad grads was skipped by the caller (params not updated)
    _, st = update(g, st, params)
  assert int(st.pruned.sum()) == G // 2


def test_hesso_cric_under_inject_hyperparams_and_chain():
  params, space = mlp()
  tx = optax.chain(optax.inject_hyperparams(hj.hesso_cric)(
      base_tx=optax.sgd(0.01), space=space, target_group_sparsity=0.25, start_cric_step=0,
      sampling_steps=1, max_cycle_period=1, hybrid_training_steps=1))
  step, traces = traced_step(tx, X, Y)

  for s in (0.25, 0.5):
    st = optax.tree_utils.tree_set(tx.init(params),
                                   target_group_sparsity=jnp.asarray(s, jnp.float32))
    p = params
    for _ in range(2 * 2 * 3 + 1 + 1 + 1 + 1):  # probing, one cycle, termination, hybrid
      p, st = step(p, st)
    assert int(hj.pruned_mask(st).sum()) == math.floor(G * s)
    _assert_pruned_zero(space, p, hj.pruned_mask(st))
  assert len(traces) == 1


def test_non_finite_grads_never_select_a_group_cric():
  """hesso_cric: a group whose gradient is NaN at every scoring step is never selected; the
  target is still met with the others (the caller skips applying the bad updates)."""
  params, space = mlp()
  tx = make_tx("hesso_cric", optax.sgd(0.1), space)
  update = jax.jit(tx.update)
  st = tx.init(params)
  l, g = jax.value_and_grad(loss_fn)(params, X, Y)
  g = jax.tree_util.tree_map(lambda x: x, g)
  g["l0"]["kernel"] = g["l0"]["kernel"].at[:, 2].set(jnp.nan)
  for _ in range(STEPS["hesso_cric"]):
    _, st = update(g, st, params, value=l)
  pr = np.asarray(hj.pruned_mask(st))
  assert not pr[2] and pr.sum() == G // 2
