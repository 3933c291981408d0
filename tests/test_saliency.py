"""Saliency criteria vs a NumPy reference that gathers each group's elements explicitly."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hesso_jax._jaxpr import iter_eqns
from hesso_jax.optim import saliency as sal
from hesso_jax.space import CONSUMER, AxisSlice, ChannelSpace, SearchSpace

EPS = 1e-8


def _space_and_trees(seed=0):
  """Members with plain, flattened (outer), inner and concatenated (offset/width) layouts."""
  rng = np.random.default_rng(seed)
  params = {
      "a": {"kernel": rng.normal(size=(3, 5)).astype(np.float32),
            "bias": rng.normal(size=(5,)).astype(np.float32)},
      # space "b" (4 channels) is flattened with outer=2, inner=3 on axis 1 (length 24)
      "b": {"kernel": rng.normal(size=(5, 24)).astype(np.float32)},
      # a concatenation: space "a" occupies [2, 7) of a 9-wide axis 0 (consumer: ignored)
      "c": {"kernel": rng.normal(size=(9, 2)).astype(np.float32),
            "scale": rng.normal(size=(9,)).astype(np.float32)},
  }
  space = SearchSpace((
      ChannelSpace(5, (AxisSlice(("a", "kernel"), 1), AxisSlice(("a", "bias"), 0),
                       AxisSlice(("c", "scale"), 0, offset=2, width=9),
                       AxisSlice(("c", "kernel"), 0, CONSUMER, offset=2, width=9)), name="a"),
      ChannelSpace(4, (AxisSlice(("b", "kernel"), 1, outer=2, inner=3),), name="b"),
      ChannelSpace(2, (AxisSlice(("c", "kernel"), 1),), prunable=False, reason="output"),
  ))
  space.validate(params)
  direction = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
  return space, params, direction


def _np_groups(space, tree):
  """list over groups of the concatenated producer elements (explicit index gathering)."""
  leaves = dict((p, np.asarray(x)) for p, x in __import__("hesso_jax").space.leaves_with_paths(tree))
  out = []
  for s in space.prunable_spaces:
    for c in range(s.size):
      parts = []
      for m in s.members:
        if m.role != "producer":
          continue
        x = np.moveaxis(leaves[m.path], m.axis, 0)
        w = m.block(s.size)
        idx = [o * w * m.inner + (m.offset + c) * m.inner + i
               for o in range(m.outer) for i in range(m.inner)]
        parts.append(x[idx].ravel())
      out.append(np.concatenate(parts).astype(np.float64))
  return out


def _np_raw(space, params, direction):
  xs, ds = _np_groups(space, params), _np_groups(space, direction)
  raw = {k: [] for k in sal.CRITERIA}
  for x, d in zip(xs, ds):
    nx, nd, xd = np.linalg.norm(x), np.linalg.norm(d), float(x @ d)
    raw["magnitude"].append(nx)
    raw["avg_magnitude"].append(nx / x.size)
    raw["cosine_similarity"].append(xd / (nx * nd + EPS) + 1)
    raw["taylor_first_order"].append(abs(xd))
    raw["taylor_second_order"].append(0.5 * xd * xd)
  return {k: np.array(v) for k, v in raw.items()}


@pytest.mark.parametrize("name", sal.CRITERIA)
def test_each_criterion_matches_numpy(name):
  space, params, direction = _space_and_trees()
  want = _np_raw(space, params, direction)[name]
  fn = getattr(sal, name)
  got = jax.jit(lambda x, d: fn(space, x, d))(params, direction)
  assert got.shape == (space.num_groups,)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)


def test_combined_score_matches_numpy_and_weights():
  space, params, direction = _space_and_trees(1)
  raw = _np_raw(space, params, direction)
  weights = {"magnitude": 0.5, "cosine_similarity": 0.1, "taylor_second_order": 2.0}
  want = sum(w * raw[k] / np.linalg.norm(raw[k]) for k, w in weights.items())
  got = sal.saliency(space, params, direction, weights)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)
  # default: 0.2 each of the five
  want5 = sum(0.2 * raw[k] / np.linalg.norm(raw[k]) for k in sal.CRITERIA)
  np.testing.assert_allclose(np.asarray(sal.saliency(space, params, direction)), want5, rtol=2e-5)
  assert dict(sal.DEFAULT_IMPORTANCE) == {k: 0.2 for k in sal.CRITERIA}


def test_direction_scale_cancels():
  space, params, direction = _space_and_trees(2)
  s1 = sal.saliency(space, params, direction)
  s2 = sal.saliency(space, params, jax.tree_util.tree_map(lambda d: 1e-3 * d, direction))
  np.testing.assert_allclose(np.asarray(s1), np.asarray(s2), rtol=1e-5)
  s3 = sal.saliency(space, params, jax.tree_util.tree_map(lambda d: 1e-5 * d, direction))
  np.testing.assert_allclose(np.asarray(s1), np.asarray(s3), rtol=1e-3)  # cosine eps


def test_zero_group_cosine_is_one():
  space, params, direction = _space_and_trees(3)
  params = space.zero_groups(params, jnp.array([0, 6]))
  cos = sal.cosine_similarity(space, params, direction)
  np.testing.assert_allclose(np.asarray(cos)[[0, 6]], 1.0)
  assert float(sal.magnitude(space, params)[6]) == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_group_is_most_important_and_isolated(bad):
  space, params, direction = _space_and_trees(4)
  direction = jax.tree_util.tree_map(np.array, direction)
  direction["b"]["kernel"][0, 3] = bad  # element of group 5 + (3 // 3) % 4 = 6
  s = np.asarray(sal.saliency(space, params, direction))
  assert np.isposinf(s[6])
  others = np.delete(s, 6)
  assert np.all(np.isfinite(others))
  # the others are scored as if group 6 did not contribute to the normalisers
  raw = _np_raw(space, params, jax.tree_util.tree_map(np.nan_to_num, direction))
  want = 0
  for k in sal.CRITERIA:
    v = np.delete(raw[k], 6)
    want = want + 0.2 * v / np.linalg.norm(v)
  np.testing.assert_allclose(others, want, rtol=2e-5, atol=1e-6)


def test_magnitude_only_needs_no_direction_but_gradient_criteria_do():
  space, params, _ = _space_and_trees()
  s = sal.saliency(space, params, None, {"magnitude": 1.0})
  chex.assert_shape(s, (space.num_groups,))
  with pytest.raises(TypeError, match="direction"):
    sal.saliency(space, params, None, {"taylor_first_order": 1.0})


def test_unknown_criterion_raises():
  space, params, direction = _space_and_trees()
  with pytest.raises(ValueError, match="unknown criterion"):
    sal.saliency(space, params, direction, {"magnitud": 1.0})
  with pytest.raises(TypeError, match="must be a number"):
    sal.validate_importance({"magnitude": "big"})


def test_normalize_treats_each_row_of_a_stack_on_its_own():
  rng = np.random.default_rng(5)
  v = rng.normal(size=(4, 37)).astype(np.float32)
  v[1] = 0.0  # an all-zero criterion stays 0
  v[2] *= 1e30  # the max scaling keeps the norm finite
  v[3, 5] = np.nan
  valid = np.isfinite(v).all(0)
  got = np.asarray(sal.normalize(jnp.asarray(v), jnp.asarray(valid)))
  for i in range(4):
    row = np.asarray(sal.normalize(jnp.asarray(v[i]), jnp.asarray(valid)))
    np.testing.assert_array_equal(got[i], row)
    w = np.where(valid, v[i].astype(np.float64), 0.0)
    n = np.linalg.norm(w / max(np.abs(w).max(), 1e-300)) * np.abs(w).max()
    np.testing.assert_allclose(got[i][valid], (v[i] / (n if n > 0 else 1.0))[valid], rtol=2e-6)


def test_combine_normalises_all_criteria_with_one_max_and_one_sum():
  """Every reduction is a per-step cost on XLA:CPU even in a branch that does not run, so the
  five criteria share their two normalising reductions (five of each before)."""
  raw = {k: jnp.linspace(1.0, 2.0, 50) * (i + 1) for i, k in enumerate(sal.CRITERIA)}
  closed = jax.make_jaxpr(lambda r: sal.combine(r, sal.DEFAULT_IMPORTANCE))(raw)
  names = [e.primitive.name for e in iter_eqns(closed)]
  assert names.count("reduce_max") == 1
  assert names.count("reduce_sum") == 1
