"""Tests for hj.prune_nnx: a new, smaller nnx module whose output equals the masked full one."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hesso_jax as hj
from hesso_jax import AxisSlice as A
from hesso_jax import ChannelSpace as C
from hesso_jax.space import CONSUMER, STATE


def _build(cls, seed=0):
  """An instance of ``cls`` with numpy-random weights (no per-shape eager init compiles: fast)."""
  g, st = nnx.split(nnx.eval_shape(lambda: cls(nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(p, x):
    a = rng.normal(size=x.shape).astype(x.dtype) * 0.5
    if "var" in str(p):
      a = np.abs(a) + 0.5
    return jnp.asarray(a)

  return nnx.merge(g, jax.tree_util.tree_map_with_path(fill, st))


def _nparams(model):
  return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def _zeroed(model, space, group_ids):
  """A copy of ``model`` with ``group_ids``' producer slices set to zero."""
  g, st = nnx.split(model)
  space = hj.surgery.rebase_space(space, st)  # respell paths as the State's ('.../value')
  return nnx.merge(g, space.zero_groups(st, jnp.asarray(group_ids)))


def _random_drop(space, seed, frac=0.4):
  """Random group ids to drop, keeping >= 1 channel of each space."""
  rng = np.random.default_rng(seed)
  ids = []
  for s, off in zip(space.prunable_spaces, space.group_offsets):
    n = max(1, int(frac * s.size))
    ids += list(off + rng.choice(s.size, size=min(n, s.size - 1), replace=False))
  return np.array(sorted(ids))


class MLP(nnx.Module):

  def __init__(self, rngs):
    self.l1 = nnx.Linear(6, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 12, rngs=rngs)
    self.l3 = nnx.Linear(12, 3, rngs=rngs)

  def __call__(self, x):
    return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


def _mlp_space(model):
  # paths written WITHOUT nnx's trailing 'value' for h1, WITH it for h2: both must work
  h1 = C(16, (A("l1/kernel", 1), A("l1/bias", 0), A("l2/kernel", 0, CONSUMER)), name="h1")
  h2 = C(12, (A("l2/kernel/value", 1), A("l2/bias/value", 0), A("l3/kernel/value", 0, CONSUMER)),
         name="h2")
  return hj.SearchSpace.from_channel_spaces([h1, h2])


def test_prune_nnx_mlp_equivalent_and_smaller():
  model = _build(MLP)
  space = _mlp_space(model)
  drop = _random_drop(space, 0)
  masked = _zeroed(model, space, drop)
  before = jax.tree_util.tree_map(jnp.shape, nnx.state(masked))
  small = hj.prune_nnx(masked, space)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 6)), jnp.float32)
  chex.assert_trees_all_close(small(x), masked(x), atol=1e-5, rtol=0)
  assert _nparams(small) < _nparams(masked)
  n1 = 16 - int((drop < 16).sum())
  assert small.l1.out_features == n1 and small.l2.in_features == n1
  assert small.l2.out_features == 12 - int((drop >= 16).sum())
  assert small.l1.kernel[...].shape == (6, n1)
  # the input module is untouched
  chex.assert_trees_all_equal(jax.tree_util.tree_map(jnp.shape, nnx.state(masked)), before)
  assert masked.l1.out_features == 16
  # and it jits
  chex.assert_trees_all_close(nnx.jit(lambda m, x: m(x))(small, x), small(x), atol=1e-6)


class CNN(nnx.Module):

  def __init__(self, rngs):
    self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
    self.dw = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)  # depthwise
    self.c2 = nnx.Conv(8, 6, (3, 3), strides=2, rngs=rngs)
    self.bn2 = nnx.BatchNorm(6, use_running_average=True, rngs=rngs)
    self.fc = nnx.Linear(6, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.c1(x)))
    x = nnx.relu(self.dw(x))
    x = nnx.relu(self.bn2(self.c2(x)))
    return self.fc(x.mean(axis=(1, 2)))


def _cnn_space():
  # channel space of c1/bn1 joined with the depthwise conv's in==out channels
  s1 = C(8, (A("c1/kernel", 3), A("c1/bias", 0), A("bn1/scale", 0), A("bn1/bias", 0),
             A("bn1/mean", 0, STATE), A("bn1/var", 0, STATE),
             A("dw/kernel", 3), A("dw/bias", 0), A("c2/kernel", 2, CONSUMER)), name="c1")
  s2 = C(6, (A("c2/kernel", 3), A("c2/bias", 0), A("bn2/scale", 0), A("bn2/bias", 0),
             A("bn2/mean", 0, STATE), A("bn2/var", 0, STATE), A("fc/kernel", 0, CONSUMER)), name="c2")
  return hj.SearchSpace.from_channel_spaces([s1, s2])


def test_prune_nnx_cnn_batchnorm_depthwise():
  model = _build(CNN)  # random (non-trivial) running statistics too
  space = _cnn_space()
  space.validate(nnx.state(model).to_pure_dict())
  drop = _random_drop(space, 3)
  masked = _zeroed(model, space, drop)
  small = hj.prune_nnx(masked, space)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 9, 3)), jnp.float32)
  chex.assert_trees_all_close(small(x), masked(x), atol=1e-5, rtol=0)
  # unmasked model differs (the test can fail)
  assert float(jnp.abs(model(x) - masked(x)).max()) > 1e-4
  n1 = 8 - int((drop < 8).sum())
  assert small.bn1.num_features == n1 and small.bn1.mean[...].shape == (n1,)
  assert small.dw.feature_group_count == n1 and small.dw.in_features == n1
  assert small.dw.kernel_shape == (3, 3, 1, n1)
  assert small.c2.in_features == n1 and small.fc.in_features == small.c2.out_features
  assert _nparams(small) < _nparams(masked)


class Attn(nnx.Module):

  def __init__(self, rngs):
    self.emb = nnx.Embed(11, 12, rngs=rngs)
    self.mha = nnx.MultiHeadAttention(num_heads=4, in_features=12, qkv_features=16, out_features=12,
                                      decode=False, rngs=rngs)

  def __call__(self, tok):
    return self.mha(self.emb(tok))


def _attn_space():
  H, D = 4, 4
  heads = C(H, tuple(A(f"mha/{n}/kernel", 1) for n in ("query", "key", "value"))
            + tuple(A(f"mha/{n}/bias", 0) for n in ("query", "key", "value"))
            + (A("mha/out/kernel", 0, CONSUMER),), name="heads")
  qk = C(D, (A("mha/query/kernel", 2), A("mha/key/kernel", 2), A("mha/query/bias", 1),
             A("mha/key/bias", 1)), name="qk_head_dim")
  vd = C(D, (A("mha/value/kernel", 2), A("mha/value/bias", 1), A("mha/out/kernel", 1, CONSUMER)),
         name="v_head_dim")
  emb = C(12, (A("emb/embedding", 1), A("mha/query/kernel", 0, CONSUMER),
               A("mha/key/kernel", 0, CONSUMER), A("mha/value/kernel", 0, CONSUMER)), name="emb")
  return hj.SearchSpace.from_channel_spaces([heads, qk, vd, emb])


def test_prune_nnx_attention_heads_head_dim_embed():
  model = _build(Attn)
  space = _attn_space()
  space.validate(nnx.state(model).to_pure_dict())
  # drop head 2, qk head_dim 1, v head_dim 3, embedding features 0 and 5
  drop = np.array([2, 4 + 1, 8 + 3, 12 + 0, 12 + 5])
  masked = _zeroed(model, space, drop)
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # equal head_dims: no warning expected
    small = hj.prune_nnx(masked, space)
  tok = jnp.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
  chex.assert_trees_all_close(small(tok), masked(tok), atol=1e-5, rtol=0)
  m = small.mha
  assert (m.num_heads, m.head_dim, m.qkv_features, m.in_features, m.out_features) == (3, 3, 9, 10, 12)
  assert small.emb.features == 10 and small.emb.num_embeddings == 11
  assert m.query.out_features == (3, 3) and m.out.in_features == (3, 3)
  # the query kernel was rescaled to keep 1/sqrt(old head_dim): different from a plain slice
  plain = hj.prune(nnx.state(masked), space)
  assert not np.allclose(plain["mha"]["query"]["kernel"][...], m.query.kernel[...])


def test_prune_nnx_unequal_value_head_dim_raises():
  model = _build(Attn, 1)
  space = _attn_space()
  masked = _zeroed(model, space, np.array([4 + 1]))  # only a qk head_dim: value head_dim stays 4
  with pytest.raises(ValueError, match="value head_dim"):
    hj.prune_nnx(masked, space)
  # input untouched (the query kernel rescale happened on the copy)
  assert masked.mha.head_dim == 4 and masked.mha.query.kernel[...].shape == (12, 4, 4)


def test_prune_nnx_errors_and_nonzero_warning():
  model = _build(MLP)
  space = _mlp_space(model)
  keep = np.ones(space.num_groups, bool)
  keep[:16] = False
  with pytest.raises(ValueError, match="h1"):
    hj.prune_nnx(model, space, keep)
  keep = np.ones(space.num_groups, bool)
  keep[3] = False
  with pytest.warns(UserWarning, match="not be equivalent|NOT be equivalent"):
    small = hj.prune_nnx(model, space, keep)
  assert small.l1.out_features == 15


def test_prune_nnx_refuses_to_rebuild_a_norm_over_pruned_channels():
  """RMSNorm over a pruned width is exact only with the traced 1/width (hj.compress)."""
  import hesso_jax as hj

  class M(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(4, 8, rngs=rngs)
      self.norm = nnx.RMSNorm(8, rngs=rngs)
      self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.norm(self.l1(x)))

  model = M(nnx.Rngs(0))
  gdef, state = nnx.split(model)
  x = jnp.linspace(-1.0, 1.0, 8).reshape(2, 4)
  fn = lambda s, x: nnx.merge(gdef, s)(x)
  space = hj.discover(fn, state, x)
  assert space.num_groups == 8
  zeroed = space.zero_groups(state, jnp.array([1, 5]))
  with pytest.raises(ValueError, match="RMSNorm"):
    hj.prune_nnx(nnx.merge(gdef, zeroed), space)
  small_fn, small = hj.compress(fn, zeroed, space, x)
  np.testing.assert_allclose(small_fn(small, x), fn(zeroed, x), atol=1e-5, rtol=0)
