"""flax.nnx and equinox front ends: the zero-invariance property and compress == zeroed model.

Discovery on these models is checked by group counts in test_discovery; here the found spaces must
also be *correct*: zeroing groups and scrambling their consumers leaves the output unchanged, and
the compressed function equals the zeroed full model.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hesso_jax as hj
from hesso_jax.space import CONSUMER, STATE


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(4, 8, rngs=rngs)
    self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
    self.l2 = nnx.Linear(8, 6, rngs=rngs)
    self.l3 = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.l3(jnp.tanh(self.l2(nnx.relu(self.bn(self.l1(x))))))


def _randomise(tree, key, scale=0.3, positive=()):
  """Perturb every leaf (so biases and BatchNorm statistics are not trivially 0/1)."""
  leaves, td = jax.tree_util.tree_flatten(tree)
  paths = [hj.space.path_str(p) for p, _ in hj.space.leaves_with_paths(tree)]
  keys = jax.random.split(key, len(leaves))
  out = []
  for p, x, k in zip(paths, leaves, keys, strict=True):
    y = x + scale * jax.random.normal(k, x.shape, x.dtype)
    out.append(jnp.abs(y) + 0.1 if any(s in p for s in positive) else y)
  return jax.tree_util.tree_unflatten(td, out)


def nnx_case():
  gdef, state = nnx.split(NnxNet(nnx.Rngs(0)))
  state = _randomise(state, jax.random.PRNGKey(1), positive=("bn/var",))
  fn = lambda s, x: nnx.merge(gdef, s)(x)
  return fn, state, jax.random.normal(jax.random.PRNGKey(2), (5, 4)), 8 + 6


def eqx_case():
  mlp = eqx.nn.MLP(4, 3, 16, 2, key=jax.random.PRNGKey(0))
  params, static = eqx.partition(mlp, eqx.is_array)
  params = _randomise(params, jax.random.PRNGKey(1))
  fn = lambda p, x: jax.vmap(eqx.combine(p, static))(x)
  return fn, params, jax.random.normal(jax.random.PRNGKey(2), (5, 4)), 32


CASES = {"nnx": nnx_case, "equinox": eqx_case}


def _mask(space, seed):
  rng = np.random.default_rng(seed)
  mask = np.zeros(space.num_groups, bool)
  for s, off in zip(space.prunable_spaces, space.group_offsets, strict=True):
    k = min(s.size - 1, max(1, round(0.4 * s.size)))
    mask[off + rng.choice(s.size, size=k, replace=False)] = True
  return mask


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_invariance_property(name):
  """Zero ~40% of every space's groups, then scramble their consumers and state: output fixed."""
  fn, variables, x, groups = CASES[name]()
  space = hj.discover(fn, variables, x)
  assert space.num_groups == groups, space.summary()
  mask = _mask(space, 0)
  zeroed = space.zero_groups(variables, jnp.asarray(mask))
  sel = space.group_mask_tree(jnp.asarray(mask), zeroed, roles=(CONSUMER, STATE))
  leaves, td = jax.tree_util.tree_flatten(zeroed)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  scrambled = jax.tree_util.tree_unflatten(td, [
      jnp.where(s, 0.5 + jax.random.uniform(k, v.shape, v.dtype), v)
      for v, s, k in zip(leaves, jax.tree_util.tree_leaves(sel), keys, strict=True)])
  changed = sum(int(jnp.sum(a != b)) for a, b in zip(
      jax.tree_util.tree_leaves(zeroed), jax.tree_util.tree_leaves(scrambled), strict=True))
  assert changed > 0
  ref, out = fn(zeroed, x), fn(scrambled, x)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6, rtol=0)
  # and the property has power: scrambling a kept group's consumers moves the output
  keep_sel = space.group_mask_tree(jnp.asarray(~mask), zeroed, roles=(CONSUMER,))
  moved = jax.tree_util.tree_unflatten(td, [
      jnp.where(s, v + 1.0, v) for v, s in zip(leaves, jax.tree_util.tree_leaves(keep_sel),
                                               strict=True)])
  assert float(jnp.max(jnp.abs(fn(moved, x) - ref))) > 1e-3


@pytest.mark.parametrize("name", [pytest.param("nnx", marks=pytest.mark.default_xla), "equinox"])
def test_compressed_equals_zeroed(name):
  fn, variables, x, _ = CASES[name]()
  space = hj.discover(fn, variables, x)
  zeroed = space.zero_groups(variables, jnp.asarray(_mask(space, 1)))
  small_fn, small = hj.compress(fn, zeroed, space, x)
  size = lambda t: sum(np.size(v) for v in jax.tree_util.tree_leaves(t))
  assert size(small) < size(zeroed)
  x2 = jax.random.normal(jax.random.PRNGKey(9), (7, 4))
  for xx in (x, x2):
    np.testing.assert_allclose(np.asarray(small_fn(small, xx)), np.asarray(fn(zeroed, xx)),
                               atol=1e-5, rtol=0)
