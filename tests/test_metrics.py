"""Tests for hj.count / count_flops / count_params / sparsity_report."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hesso_jax as hj
from hesso_jax import AxisSlice as A
from hesso_jax import ChannelSpace as C
from hesso_jax.space import CONSUMER

S = jax.ShapeDtypeStruct
F32 = jnp.float32


def _dense(p, x):
  return x @ p["w"] + p["b"]


def test_dense_flops_and_params_abstract():
  B, I, O = 7, 5, 3
  p = {"w": S((I, O), F32), "b": S((O,), F32)}
  out = hj.count(_dense, p, S((B, I), F32))
  assert out == {"params": I * O + O, "flops": 2.0 * B * I * O}
  # elementwise option adds the bias add (B*O outputs)
  assert hj.count(_dense, p, S((B, I), F32), elementwise=True)["flops"] == 2.0 * B * I * O + B * O


def test_batched_dot_general_and_einsum():
  # attention-like: (b, h, q, d) x (b, h, k, d) -> (b, h, q, k)
  b, h, q, k, d = 2, 3, 5, 7, 4
  f = lambda _, x, y: jnp.einsum("bhqd,bhkd->bhqk", x, y)
  fl = hj.count_flops(f, {}, S((b, h, q, d), F32), S((b, h, k, d), F32))
  assert fl == 2.0 * b * h * q * k * d


@pytest.mark.parametrize("stride,padding,groups", [(1, "SAME", 1), (2, "VALID", 1), (1, "SAME", 4)])
def test_conv_flops(stride, padding, groups):
  N, H, W, Cin, Cout, kh, kw = 2, 9, 8, 8, 12, 3, 3
  x = S((N, H, W, Cin), F32)
  k = S((kh, kw, Cin // groups, Cout), F32)

  def f(kern, x):
    return jax.lax.conv_general_dilated(x, kern, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)

  out_shape = jax.eval_shape(f, k, x).shape
  Ho, Wo = out_shape[1], out_shape[2]
  want = 2.0 * N * Ho * Wo * Cout * (Cin // groups) * kh * kw
  assert hj.count(f, k, x)["flops"] == want


def test_linen_cnn_counts_params_only_and_all():

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=True)(x)
      x = nn.relu(x).mean(axis=(1, 2))
      return nn.Dense(2)(x)

  net = Net()
  x = jnp.ones((1, 6, 6, 3))
  v = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  params = (3 * 3 * 3 * 4 + 4) + (4 + 4) + (4 * 2 + 2)
  stats = 4 + 4
  all_ = hj.count(net.apply, v, x)
  assert all_["params"] == params + stats
  assert hj.count(net.apply, v, x, params_only=True)["params"] == params
  assert all_["flops"] == 2.0 * 6 * 6 * 4 * 3 * 9 + 2.0 * 4 * 2


def test_control_flow_scan_while_cond_remat_jit():
  w = S((4, 4), F32)
  x = S((2, 4), F32)
  one = 2.0 * 2 * 4 * 4

  def scanned(w, x):
    y, _ = jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)
    return y

  assert hj.count_flops(scanned, w, x) == 5 * one

  def looped(w, x):
    return jax.lax.fori_loop(0, 10, lambda i, c: c @ w, x)  # fori with static bounds -> scan

  assert hj.count_flops(looped, w, x) == 10 * one

  def whiled(w, x):
    return jax.lax.while_loop(lambda c: c.sum() < 100.0, lambda c: c @ w, x)

  assert hj.count_flops(whiled, w, x) == one  # body counted once

  def branched(w, x):
    return jax.lax.cond(x.sum() > 0, lambda x: (x @ w) @ w, lambda x: x @ w, x)

  assert hj.count_flops(branched, w, x) == 2 * one  # max over branches

  def nested(w, x):
    y = jax.jit(lambda x: x @ w)(x)
    y = jax.checkpoint(lambda y: y @ w)(y)
    return jax.nn.relu(y) @ w

  assert hj.count_flops(nested, w, x) == 3 * one
  # relu (custom_jvp) is elementwise: counted only with the option
  assert hj.count_flops(nested, w, x, elementwise=True) > 3 * one


def test_count_params_nnx():
  from flax import nnx

  class M(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(3, 4, rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)

  m = M(nnx.Rngs(0))
  assert hj.count_params(nnx.state(m)) == 3 * 4 + 4 + 4 * 4
  assert hj.count_params(m, params_only=True) == 3 * 4 + 4 + 4 + 4
  assert hj.count_params(nnx.state(m), params_only=True) == 3 * 4 + 4 + 4 + 4


def test_sparsity_report():
  rng = np.random.default_rng(0)
  v = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in (("a", (3, 6)), ("b", (6,)), ("c", (6, 2)))}
  space = hj.SearchSpace.from_channel_spaces(
      [C(6, (A("a", 1), A("b", 0), A("c", 0, CONSUMER)), name="h"),
       C(2, (A("c", 1),), prunable=False, reason="output", name="out")], v)
  rep = hj.sparsity_report(space, space.zero_groups(v, jnp.array([1, 4])))
  assert rep["num_groups"] == 6 and rep["zero_groups"] == 2
  np.testing.assert_allclose(rep["group_sparsity"], 2 / 6)
  assert rep["spaces"]["h"] == {"size": 6, "kept": 4, "zero": 2, "prunable": True}
  assert rep["spaces"]["out"]["kept"] == 2 and not rep["spaces"]["out"]["prunable"]
  # after pruning, flops and params shrink consistently
  f = lambda v, x: jax.nn.relu(x @ v["a"] + v["b"]) @ v["c"]
  x = jnp.ones((4, 3))
  vz = space.zero_groups(v, jnp.array([1, 4]))
  small = hj.prune(vz, space)
  full_c, small_c = hj.count(f, vz, x), hj.count(f, small, x)
  assert small_c["params"] == full_c["params"] - 2 * (3 + 1 + 2)
  assert small_c["flops"] == full_c["flops"] * 4 / 6
  chex.assert_trees_all_close(f(small, x), f(vz, x), atol=1e-5)


def test_count_units_macs_and_params_only_against_hand_counts():
  """A linen CNN with batch norm, counted every way, against a hand count.

  conv 3x3, 3 -> 4 channels, SAME, on 6x6: 6*6*4 outputs x 3*3*3 MACs each; dense 4 -> 2: 2*4
  MACs per example. Parameters: conv 3*3*3*4 + 4, BN scale/bias 4 + 4, dense 4*2 + 2; buffers:
  BN mean/var 4 + 4.
  """

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=True)(x)
      return nn.Dense(2)(x.mean(axis=(1, 2)))

  net, batch = Net(), 3
  x = S((batch, 6, 6, 3), F32)
  v = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  macs = batch * (6 * 6 * 4 * 3 * 3 * 3 + 4 * 2)
  params, buffers = (3 * 3 * 3 * 4 + 4) + (4 + 4) + (4 * 2 + 2), 4 + 4
  assert hj.count(net.apply, v, x, unit="macs") == {"params": params + buffers, "macs": macs}
  assert hj.count(net.apply, v, x, params_only=True) == {"params": params, "flops": 2.0 * macs}
  assert hj.count_flops(net.apply, v, x, unit="macs") == macs
  assert hj.count_flops(net.apply, v, x) == 2 * hj.count_flops(net.apply, v, x, unit="macs")


def test_count_unit_errors():
  p = {"w": S((5, 3), F32), "b": S((3,), F32)}
  x = S((2, 5), F32)
  with pytest.raises(ValueError, match="unit must be one of"):
    hj.count(_dense, p, x, unit="gflops")
  with pytest.raises(ValueError, match="elementwise"):
    hj.count(_dense, p, x, unit="macs", elementwise=True)
  with pytest.raises(TypeError, match="unit must be a str"):
    hj.count_flops(_dense, p, x, unit=2)
