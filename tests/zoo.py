"""A model zoo with small shapes and hand-derived group counts.

Every case gives fn(variables, *args), its variables and inputs, the number of prunable
groups derived by hand (see each builder's comment) and expected verdicts for unprunable spaces:
(substring of a member path, substring of the reason).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


@dataclasses.dataclass
class Case:
  name: str
  fn: Callable
  variables: Any
  args: tuple
  groups: int
  unprunable: tuple = ()  # ((path substring, reason substring), ...)


def _normal(key, shape, scale=0.5):
  return scale * jax.random.normal(key, shape, jnp.float32)


def _input(shape, seed):
  """A random model input: every batch row (and position) differs, so a rule that confuses the
  batch axis with a channel axis, or relies on constant inputs, shows up."""
  return jax.random.normal(jax.random.PRNGKey(100 + seed), shape, jnp.float32)


def _rand_tree(tree, key, scale=0.3):
  leaves, td = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(td, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                           for x, k in zip(leaves, keys)])


def _linen(name, module, x, groups, unprunable=(), **apply_kw):
  v = module.init(jax.random.PRNGKey(0), x, **apply_kw)
  v = _rand_tree(v, jax.random.PRNGKey(1))
  if "batch_stats" in v:  # running variances must stay positive
    v = dict(v)
    v["batch_stats"] = jax.tree_util.tree_map(jnp.abs, v["batch_stats"])
  return Case(name, lambda v, x: module.apply(v, x, **apply_kw), v, (x,), groups, unprunable)


# --- plain-function MLP: hidden 16 + hidden 12 = 28 groups; the 3 logits reach the output.
def mlp():
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  p = {"l1": {"w": _normal(k[0], (6, 16)), "b": _normal(k[1], (16,))},
       "l2": {"w": _normal(k[2], (16, 12)), "b": _normal(k[3], (12,))},
       "l3": {"w": _normal(k[4], (12, 3)), "b": _normal(k[5], (3,))}}

  def fn(p, x):
    h = jax.nn.relu(x @ p["l1"]["w"] + p["l1"]["b"])
    h = jnp.tanh(h @ p["l2"]["w"] + p["l2"]["b"])
    return h @ p["l3"]["w"] + p["l3"]["b"]

  return Case("mlp", fn, p, (_normal(k[0], (5, 6), 1.0),), 28, (("l3/w", "output"),))


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(8, (3, 3))(x)))
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(16, (3, 3))(x)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(10)(x)


# --- CNN + BatchNorm: conv 8 + conv 16 + dense 32 = 56; Dense_1's 10 logits reach the output.
def cnn_bn():
  return _linen("cnn_bn", CNN(), _input((2, 8, 8, 1), 1), 56, (("Dense_1", "output"),))


class BasicBlock(nn.Module):
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    bn = lambda: nn.BatchNorm(use_running_average=True)
    y = nn.relu(bn()(nn.Conv(self.features, (3, 3), self.stride)(x)))
    y = bn()(nn.Conv(self.features, (3, 3))(y))
    if x.shape[-1] != self.features or self.stride != 1:
      x = bn()(nn.Conv(self.features, (1, 1), self.stride)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(8, (3, 3))(x)))
    x = BasicBlock(8)(x)
    x = BasicBlock(16, 2)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(10)(x)


# --- ResNet basic blocks: stem+block0 stream (8, tied by the identity add) + block0 inner (8)
#     + block1 inner (16) + block1 stream (16, conv2 tied to the projection by the add) = 48.
def resnet_basic():
  return _linen("resnet_basic", ResNet(), _input((2, 8, 8, 3), 2), 48, (("Dense_0", "output"),))


class Bottleneck(nn.Module):
  @nn.compact
  def __call__(self, x):
    bn = lambda: nn.BatchNorm(use_running_average=True)
    x = nn.relu(bn()(nn.Conv(8, (3, 3))(x)))
    y = nn.relu(bn()(nn.Conv(4, (1, 1))(x)))
    y = nn.relu(bn()(nn.Conv(4, (3, 3))(y)))
    y = bn()(nn.Conv(16, (1, 1))(y))
    s = bn()(nn.Conv(16, (1, 1))(x))
    x = nn.relu(s + y)
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


# --- ResNet bottleneck: stem 8 + 1x1 reduce 4 + 3x3 4 + expand/projection stream 16 = 32.
def resnet_bottleneck():
  return _linen("resnet_bottleneck", Bottleneck(), _input((2, 8, 8, 3), 3), 32,
                (("Dense_0", "output"),))


class VGG(nn.Module):
  @nn.compact
  def __call__(self, x):
    for f in (8, 8):
      x = nn.relu(nn.Conv(f, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    for f in (16, 16):
      x = nn.relu(nn.Conv(f, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(10)(x)


# --- VGG: 8 + 8 + 16 + 16 + 32 = 80.
def vgg():
  return _linen("vgg", VGG(), _input((2, 8, 8, 3), 4), 80, (("Dense_1", "output"),))


class MobileNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    bn = lambda: nn.BatchNorm(use_running_average=True)
    x = nn.relu(bn()(nn.Conv(8, (3, 3))(x)))
    x = nn.relu(bn()(nn.Conv(8, (3, 3), feature_group_count=8)(x)))  # depthwise
    x = nn.relu(bn()(nn.Conv(16, (1, 1))(x)))  # pointwise
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


# --- depthwise-separable: the stem's 8 channels pass through the depthwise conv (one space of 8,
#     the depthwise kernel is a producer too) + pointwise 16 = 24.
def mobilenet():
  return _linen("mobilenet", MobileNet(), _input((2, 8, 8, 3), 5), 24, (("Dense_0", "output"),))


class DenseNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    bn = lambda: nn.BatchNorm(use_running_average=True)
    x = nn.Conv(8, (3, 3))(x)
    for _ in range(2):
      y = nn.Conv(4, (3, 3))(nn.relu(bn()(x)))
      x = jnp.concatenate([x, y], axis=-1)
    x = nn.Conv(8, (1, 1))(nn.relu(bn()(x)))
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


# --- DenseNet concatenations: stem 8 + growth 4 + growth 4 + transition 8 = 24 (the BatchNorms on
#     the concatenations are producers with offsets).
def densenet():
  return _linen("densenet", DenseNet(), _input((2, 8, 8, 3), 6), 24, (("Dense_0", "output"),))


class ConvFlat(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3), padding="VALID")(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(4)(x)


# --- conv -> flatten -> dense: conv 6 (dense kernel input rows laid out outer=36) + dense 16 = 22.
def conv_flatten_dense():
  return _linen("conv_flatten_dense", ConvFlat(), _input((2, 8, 8, 2), 7), 22,
                (("Dense_1", "output"),))


def _layer_norm(x, g, b):
  mu = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
  return (x - mu) * lax.rsqrt(var + 1e-5) * g + b


V, T, D, H, HD, F = 11, 6, 8, 2, 4, 16


def _block_params(key):
  k = jax.random.split(key, 8)
  return {"ln1": {"g": 1 + _normal(k[0], (D,), 0.1), "b": _normal(k[1], (D,), 0.1)},
          "wq": _normal(k[2], (D, H * HD)), "wk": _normal(k[3], (D, H * HD)),
          "wv": _normal(k[4], (D, H * HD)), "wo": _normal(k[5], (H * HD, D)),
          "ln2": {"g": jnp.ones((D,)), "b": jnp.zeros((D,))},
          "w1": _normal(k[6], (D, F)), "b1": jnp.zeros((F,)) + 0.1, "w2": _normal(k[7], (F, D))}


def _block(p, x):
  B = x.shape[0]
  h = _layer_norm(x, p["ln1"]["g"], p["ln1"]["b"])
  q = (h @ p["wq"]).reshape(B, T, H, HD)
  k = (h @ p["wk"]).reshape(B, T, H, HD)
  v = (h @ p["wv"]).reshape(B, T, H, HD)
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(HD)
  mask = jnp.tril(jnp.ones((T, T), bool))
  s = jnp.where(mask, s, -1e9)
  a = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(B, T, H * HD)
  x = x + o @ p["wo"]
  h = _layer_norm(x, p["ln2"]["g"], p["ln2"]["b"])
  return x + jax.nn.gelu(h @ p["w1"] + p["b1"]) @ p["w2"]


def _gpt_params(key, layers, stacked):
  k = jax.random.split(key, 4 + layers)
  blocks = [_block_params(k[4 + i]) for i in range(layers)]
  p = {"embed": _normal(k[0], (V, D)), "pos": _normal(k[1], (T, D), 0.1),
       "lnf": {"g": jnp.ones((D,)), "b": jnp.zeros((D,))}, "head": _normal(k[2], (D, V))}
  if stacked:
    p["blocks"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)
  else:
    p["blocks"] = blocks
  return p


# --- GPT-style transformer, 2 layers: per layer heads 2 + query/key dim 4 + value dim 4 + FFN 16
#     = 26, so 52. The residual stream (8) is tied to LayerNorm statistics (unprunable), the
#     vocabulary is gathered and reaches the logits.
def gpt():
  p = _gpt_params(jax.random.PRNGKey(3), 2, stacked=False)

  def fn(p, ids):
    x = p["embed"][ids] + p["pos"]
    for bp in p["blocks"]:
      x = _block(bp, x)
    return _layer_norm(x, p["lnf"]["g"], p["lnf"]["b"]) @ p["head"]

  ids = jax.random.randint(jax.random.PRNGKey(4), (2, T), 0, V)
  return Case("gpt", fn, p, (ids,), 52, (("ln1/g", "LayerNorm"), ("head", "output")))


# --- the same transformer with its 2 layers stacked under lax.scan: one jaxpr body, so each
#     space spans both layers: heads 2 + qk dim 4 + v dim 4 + FFN 16 = 26; the stacked layer
#     axis is never a channel.
def gpt_scan():
  p = _gpt_params(jax.random.PRNGKey(3), 2, stacked=True)

  def fn(p, ids):
    x = p["embed"][ids] + p["pos"]
    x, _ = lax.scan(lambda x, bp: (_block(bp, x), None), x, p["blocks"])
    return _layer_norm(x, p["lnf"]["g"], p["lnf"]["b"]) @ p["head"]

  ids = jax.random.randint(jax.random.PRNGKey(4), (2, T), 0, V)
  return Case("gpt_scan", fn, p, (ids,), 26, (("ln1/g", "LayerNorm"), ("head", "output")))


# --- embedding + tied output head: FFN hidden 16 is prunable; the embedding dimension is
#     contracted by the tied head while the gathered embedding is not zero there (unprunable).
def tied_embedding():
  k = jax.random.split(jax.random.PRNGKey(5), 3)
  p = {"embed": _normal(k[0], (V, D)), "w1": _normal(k[1], (D, F)), "w2": _normal(k[2], (F, D))}

  def fn(p, ids):
    x = p["embed"][ids]
    x = x + jax.nn.relu(x @ p["w1"]) @ p["w2"]
    return x @ p["embed"].T

  ids = jax.random.randint(jax.random.PRNGKey(4), (2, T), 0, V)
  return Case("tied_embedding", fn, p, (ids,), 16, (("embed", "contracts"),))


# --- sigmoid-gated block: the gated hidden (8) is prunable because h * sigmoid(g) is zero when h's
#     producers are; the plain sigmoid hidden (8) is not (sigmoid(0) = 0.5). 8 groups.
def sigmoid_gated():
  k = jax.random.split(jax.random.PRNGKey(6), 5)
  p = {"wh": _normal(k[0], (6, 8)), "wg": _normal(k[1], (6, 8)), "wo": _normal(k[2], (8, 6)),
       "ws": _normal(k[3], (6, 8)), "wso": _normal(k[4], (8, 3))}

  def fn(p, x):
    y = x + ((x @ p["wh"]) * jax.nn.sigmoid(x @ p["wg"])) @ p["wo"]
    return jax.nn.sigmoid(y @ p["ws"]) @ p["wso"]

  return Case("sigmoid_gated", fn, p, (_normal(k[0], (4, 6), 1.0),), 8, (("ws", "contracts"),))


# --- rotary attention (RoPE tables captured as constants): heads 2 + q/k head-dim *pairs* 4
#     (rotate_half ties channel i to i + 4) + v head-dim 8 = 14; the residual reaches the output.
def rope_attention():
  hd = 8
  ang = np.arange(T)[:, None] / (10000.0 ** (np.arange(hd // 2) / (hd // 2)))[None]
  cos = np.concatenate([np.cos(ang)] * 2, -1).astype(np.float32)[None, :, None]
  sin = np.concatenate([np.sin(ang)] * 2, -1).astype(np.float32)[None, :, None]
  k = jax.random.split(jax.random.PRNGKey(8), 5)
  p = {n: _normal(kk, shape) for n, kk, shape in [("wq", k[0], (D, H * hd)), ("wk", k[1], (D, H * hd)),
                                                  ("wv", k[2], (D, H * hd)), ("wo", k[3], (H * hd, D))]}

  def rot(x):
    return jnp.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)

  def fn(p, x):
    B = x.shape[0]
    q, kk, v = ((x @ p[n]).reshape(B, T, H, hd) for n in ("wq", "wk", "wv"))
    q, kk = q * cos + rot(q) * sin, kk * cos + rot(kk) * sin
    a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(hd), -1)
    return x + jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(B, T, H * hd) @ p["wo"]

  return Case("rope_attention", fn, p, (_normal(k[4], (2, T, D), 1.0),), 14, (("wo", "output"),))


ZOO = [mlp, cnn_bn, resnet_basic, resnet_bottleneck, vgg, mobilenet, densenet, conv_flatten_dense,
       gpt, gpt_scan, tied_embedding, sigmoid_gated, rope_attention]
