"""HESSO's scores, selections and trajectory against an independent NumPy implementation.

The reference below is written from the definitions (the ``hesso_jax.optim.saliency`` module
docstring and :func:`hesso_jax.hesso`'s docstring), not from the library code, on the hand-written
MLP space of ``mlp_case`` whose producer slices are simply kernel columns and bias entries:

* group reductions ``xx = <x_g, x_g>``, ``dd = <d_g, d_g>``, ``xd = <x_g, d_g>`` over the group's
  producer elements, with the direction ``d = -u`` (``u`` the base update);
* criteria ``sqrt(xx)``, ``sqrt(xx)/numel``, ``xd/(sqrt(xx) sqrt(dd) + 1e-8) + 1``, ``|xd|``,
  ``0.5 xd^2``, each divided by its L2 norm over all groups, weighted and summed;
* selection at the first step of each period: the lowest-scoring groups not yet removed, globally
  ranked, each space keeping at least one group, up to the cumulative target
  ``floor(R/K)*(k+1)`` (``R`` in the last period);
* forgetting ``x <- (x + u) * (T-j-1)/(T-j)`` on the selected groups, commit at ``j == T-1``,
  committed groups exactly zero after every step.

A flipped direction sign, a wrong normaliser, a wrong forgetting factor or quota makes these fail.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mlp_case import DIMS, loss_fn, mlp

import hesso_jax as hj

EPS = 1e-8
HIDDEN = DIMS[1:-1]                       # the prunable spaces, in space order
G = sum(HIDDEN)
CRITERIA = ("magnitude", "avg_magnitude", "cosine_similarity", "taylor_first_order",
            "taylor_second_order")


# ---- the NumPy reference ----------------------------------------------------------------------


def _np(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def producer_vectors(params):
  """(G, numel) per-group producer elements: column g of l{i}/kernel and entry g of l{i}/bias."""
  rows = []
  for i, n in enumerate(HIDDEN):
    k, b = params[f"l{i}"]["kernel"], params[f"l{i}"]["bias"]
    rows.extend(np.concatenate([k[:, g], b[g:g + 1]]) for g in range(n))
  return rows


def np_raw(params, direction):
  x, d = producer_vectors(params), producer_vectors(direction)
  xx = np.array([v @ v for v in x])
  dd = np.array([v @ v for v in d])
  xd = np.array([a @ b for a, b in zip(x, d, strict=True)])
  size = np.array([len(v) for v in x], np.float64)
  return {
      "magnitude": np.sqrt(xx),
      "avg_magnitude": np.sqrt(xx) / size,
      "cosine_similarity": xd / (np.sqrt(xx) * np.sqrt(dd) + EPS) + 1.0,
      "taylor_first_order": np.abs(xd),
      "taylor_second_order": 0.5 * xd ** 2,
  }


def np_saliency(params, direction, weights):
  raw = np_raw(params, direction)
  total = np.zeros(G)
  for name, w in weights.items():
    v = raw[name]
    n = np.sqrt(np.sum(v ** 2))
    total += w * (v / n if n > 0 else v)
  return total


def np_select(scores, removed, quota):
  """The ``quota`` lowest-score groups not yet removed; every space keeps one group."""
  chosen = np.zeros(G, bool)
  candidates = []
  off = 0
  for n in HIDDEN:
    idx = [off + g for g in range(n) if not removed[off + g]]
    idx.sort(key=lambda g: (scores[g], g))
    cap = n - 1 - int(removed[off:off + n].sum())
    candidates.extend(idx[:max(cap, 0)])
    off += n
  candidates.sort(key=lambda g: (scores[g], g))
  chosen[candidates[:quota]] = True
  return chosen


def _set_groups(params, mask, fn):
  """Apply ``fn(old_column) -> new_column`` to the producer elements of the masked groups."""
  out = jax.tree_util.tree_map(np.copy, params)
  off = 0
  for i, n in enumerate(HIDDEN):
    for g in range(n):
      if mask[off + g]:
        out[f"l{i}"]["kernel"][:, g] = fn(params[f"l{i}"]["kernel"][:, g], i, g, "kernel")
        out[f"l{i}"]["bias"][g] = fn(params[f"l{i}"]["bias"][g], i, g, "bias")
    off += n
  return out


def np_hesso_sgd(params, grad, lr, *, sparsity, warmup, pruning_steps, periods, steps):
  """HESSO over ``optax.sgd(lr)`` in NumPy; ``grad(params) -> grads`` (float64 trees).

  Returns the parameter trajectory and the (redundant, pruned) masks after every step.
  """
  K, T = periods, pruning_steps // periods
  R = math.floor(G * min(sparsity, 0.999))
  redundant, pruned = np.zeros(G, bool), np.zeros(G, bool)
  x = _np(params)
  history = []
  for step in range(steps):
    u = jax.tree_util.tree_map(lambda g: -lr * g, grad(x))
    new = jax.tree_util.tree_map(lambda a, b: a + b, x, u)
    rel = step - warmup
    if 0 <= rel < K * T:
      j, k = rel % T, rel // T
      if j == 0:
        target = (R // K) * (k + 1) if k < K - 1 else R
        removed = redundant | pruned
        d = jax.tree_util.tree_map(lambda a: -a, u)
        scores = np_saliency(x, d, {c: 0.2 for c in CRITERIA})
        redundant = redundant | np_select(scores, removed, max(target - removed.sum(), 0))
      factor = (T - j - 1) / (T - j)
      new = _set_groups(new, redundant, lambda v, *_: v * factor)
      if j == T - 1:
        pruned, redundant = pruned | redundant, np.zeros(G, bool)
    new = _set_groups(new, pruned, lambda v, *_: 0.0 * v)
    x = new
    history.append((x, redundant.copy(), pruned.copy()))
  return history


# ---- the tests -------------------------------------------------------------------------------


def _direction(params, seed):
  """A random direction with the params' structure."""
  leaves, td = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(td, [jax.random.normal(k, l.shape) for k, l in zip(
      keys, leaves, strict=True)])


@pytest.mark.parametrize("weights", [None] + [{c: 1.0} for c in CRITERIA]
                         + [{"magnitude": 0.3, "cosine_similarity": 1.5, "taylor_first_order": 0.7}],
                         ids=["default"] + list(CRITERIA) + ["mixed"])
def test_saliency_equals_numpy_reference(weights):
  params, space = mlp(seed=3)
  d = _direction(params, 4)
  score = hj.saliency.saliency  # hj.saliency is the criteria module
  got = score(space, params, d) if weights is None else score(space, params, d, weights)
  ref = np_saliency(_np(params), _np(d), weights or dict(hj.DEFAULT_IMPORTANCE))
  np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=1e-7)


def test_default_importance_is_the_five_criteria_at_one_fifth():
  assert dict(hj.DEFAULT_IMPORTANCE) == {c: 0.2 for c in CRITERIA}


@pytest.mark.parametrize("seed", range(4))
def test_first_selection_uses_d_equals_minus_u(seed):
  """The groups HESSO marks at its first selection are the reference's, computed with d = -u
  (the next test shows that d = +u picks other groups for these seeds)."""
  params, space = mlp(seed=seed)
  x, y = jax.random.normal(jax.random.PRNGKey(10 + seed), (16, DIMS[0])), jax.random.normal(
      jax.random.PRNGKey(20 + seed), (16, DIMS[-1]))
  lr = 0.1
  tx = hj.hesso(optax.sgd(lr), space, target_group_sparsity=0.5, warmup_steps=0, pruning_steps=4,
                pruning_periods=2)
  g = jax.grad(loss_fn)(params, x, y)
  _, st = jax.jit(tx.update)(g, tx.init(params), params)
  quota = (math.floor(G * 0.5) // 2)
  u = jax.tree_util.tree_map(lambda a: -lr * np.asarray(a, np.float64), g)
  d = jax.tree_util.tree_map(lambda a: -a, u)
  ref = np_select(np_saliency(_np(params), d, {c: 0.2 for c in CRITERIA}), np.zeros(G, bool), quota)
  np.testing.assert_array_equal(np.asarray(st.redundant), ref)
  assert ref.sum() == quota


def test_the_sign_of_d_changes_the_selection_for_these_seeds():
  """Power check for the test above: with d = +u the reference selects other groups."""
  differ = 0
  for seed in range(4):
    params, _ = mlp(seed=seed)
    x, y = jax.random.normal(jax.random.PRNGKey(10 + seed), (16, DIMS[0])), jax.random.normal(
        jax.random.PRNGKey(20 + seed), (16, DIMS[-1]))
    g = _np(jax.grad(loss_fn)(params, x, y))
    w = {c: 0.2 for c in CRITERIA}
    plus = np_select(np_saliency(_np(params), g, w), np.zeros(G, bool), 3)
    minus = np_select(np_saliency(_np(params), jax.tree_util.tree_map(lambda a: -a, g), w),
                      np.zeros(G, bool), 3)
    differ += not np.array_equal(plus, minus)
  assert differ >= 2


@pytest.mark.parametrize("periods,period_len",
                         [pytest.param(2, 2, marks=pytest.mark.default_xla), (3, 3)])
def test_hesso_trajectory_equals_numpy_reference(periods, period_len):
  """Every step: redundant and pruned masks equal, parameters within float32 rounding."""
  params, space = mlp(seed=5)
  x, y = jax.random.normal(jax.random.PRNGKey(11), (16, DIMS[0])), jax.random.normal(
      jax.random.PRNGKey(12), (16, DIMS[-1]))
  lr, warmup, pruning_steps = 0.05, 2, period_len * periods
  steps = warmup + pruning_steps + 2
  tx = hj.hesso(optax.sgd(lr), space, target_group_sparsity=0.6, warmup_steps=warmup,
                pruning_steps=pruning_steps, pruning_periods=periods)
  grad = jax.jit(jax.grad(loss_fn))
  ref = np_hesso_sgd(params, lambda p: _np(grad(jax.tree_util.tree_map(
      lambda a: jnp.asarray(a, jnp.float32), p), x, y)), lr, sparsity=0.6, warmup=warmup,
                     pruning_steps=pruning_steps, periods=periods, steps=steps)

  @jax.jit
  def step(p, s):
    u, s = tx.update(grad(p, x, y), s, p)
    return optax.apply_updates(p, u), s

  p, s = params, tx.init(params)
  for t in range(steps):
    p, s = step(p, s)
    rp, rred, rpr = ref[t]
    np.testing.assert_array_equal(np.asarray(s.redundant), rred, err_msg=f"step {t}")
    np.testing.assert_array_equal(np.asarray(s.pruned), rpr, err_msg=f"step {t}")
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(rp), strict=True):
      np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=0, atol=2e-5,
                                 err_msg=f"step {t}")
  assert s.pruned.sum() == math.floor(G * 0.6)
  norms = np.asarray(space.group_norms(p))
  assert np.all(norms[np.asarray(s.pruned)] == 0.0) and np.all(norms[~np.asarray(s.pruned)] > 0)


@pytest.mark.parametrize("num_groups,percent", [(75, 84), (100, 53)])
def test_target_count_is_the_exact_floor(num_groups, percent):
  """R = floor(G * s) in exact arithmetic: float32 gives floor(75 * 0.84) = 62, not 63."""
  params = {"w": jax.random.normal(jax.random.PRNGKey(0), (3, num_groups))}
  space = hj.SearchSpace((hj.ChannelSpace(num_groups, (hj.AxisSlice(("w",), 1),), name="w"),))
  tx = hj.hesso(optax.sgd(0.1), space, target_group_sparsity=percent / 100, warmup_steps=0,
                pruning_steps=1)
  g = jax.tree_util.tree_map(jnp.ones_like, params)
  _, st = jax.jit(tx.update)(g, tx.init(params), params)
  assert int(hj.pruned_mask(st).sum()) == num_groups * percent // 100
