"""A model zoo with small shapes and hand-derived group counts.

Every case gives fn(variables, *args), its variables and inputs, the number of prunable
groups derived by hand (see each builder's comment) and expected verdicts for unprunable spaces:
(substring of a member path, substring of the reason).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

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


# --- embedding + tied output head: FFN hidden 16 + the embedding dimension 8 = 24. The lookup
#     copies embed[:, c] into channel c of the stream, so embed's feature axis is a producer (not
#     only the tied head's consumer); the vocabulary is gathered and reaches the logits.
def tied_embedding():
  k = jax.random.split(jax.random.PRNGKey(5), 3)
  p = {"embed": _normal(k[0], (V, D)), "w1": _normal(k[1], (D, F)), "w2": _normal(k[2], (F, D))}

  def fn(p, ids):
    x = p["embed"][ids]
    x = x + jax.nn.relu(x @ p["w1"]) @ p["w2"]
    return x @ p["embed"].T

  ids = jax.random.randint(jax.random.PRNGKey(4), (2, T), 0, V)
  return Case("tied_embedding", fn, p, (ids,), 24, (("embed", "indexed by gather"),))


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


# --- disc-b models ---------------------------------------------------------------------------
# Structure patterns of third-party model code: fused qkv projections split into heads, rotary
# embeddings built with stack, kv heads repeated with tile, tied embeddings, global pooling CNNs.


def _causal_attention(q, k, v):
  """(B, T, H, hd) q/k/v -> (B, T, H * hd_v), causal softmax attention."""
  b, t = q.shape[:2]
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -1e9)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v).reshape(b, t, -1)


def _qkv_params(key, heads, hd):
  k = jax.random.split(key, 4)
  return {"w_qkv": _normal(k[0], (D, 3 * heads * hd)), "b_qkv": _normal(k[1], (3 * heads * hd,)),
          "w_o": _normal(k[2], (heads * hd, D)), "b_o": _normal(k[3], (D,))}


# --- GPT-2 / nanoGPT fused qkv: q, k, v = split(x @ W_qkv + b, 3), each reshaped into (H, hd).
#     Heads 2 (tied across q, k and v by the two attention einsums) + q/k head dim 4 (contracted
#     together) + v head dim 4 = 10. q's head dim lives at w_qkv[:, h*4 + d] for both heads h, so
#     it has one member per head. The residual stream is the data input and reaches the output.
def fused_qkv_split():
  p = _qkv_params(jax.random.PRNGKey(20), H, HD)

  def fn(p, x):
    b, t, _ = x.shape
    q, k, v = jnp.split(x @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
    q, k, v = (a.reshape(b, t, H, HD) for a in (q, k, v))
    return x + _causal_attention(q, k, v) @ p["w_o"] + p["b_o"]

  x = _normal(jax.random.PRNGKey(21), (2, T, D), 1.0)
  return Case("fused_qkv_split", fn, p, (x,), 10, (("w_o", "tied to the function's data input"),))


# --- fused qkv reshaped at once to (B, T, 3, H, hd) and unstacked along the 3: one reshape makes
#     q, k and v share their head and head-dim axes, so heads 2 + head dim 4 (q, k and v pruned
#     jointly; exact) = 6.
def fused_qkv_unstack():
  p = _qkv_params(jax.random.PRNGKey(22), H, HD)

  def fn(p, x):
    b, t, _ = x.shape
    q, k, v = jnp.unstack((x @ p["w_qkv"] + p["b_qkv"]).reshape(b, t, 3, H, HD), axis=2)
    return x + _causal_attention(q, k, v) @ p["w_o"] + p["b_o"]

  x = _normal(jax.random.PRNGKey(23), (2, T, D), 1.0)
  return Case("fused_qkv_unstack", fn, p, (x,), 6, (("w_o", "tied to the function's data input"),))


# --- rotary embedding on interleaved pairs (Meta Llama / GPT-J style): x viewed as (hd/2, 2),
#     rotated pairs re-assembled with jnp.stack (the `stack` primitive). Heads 2 + q/k head-dim
#     *pairs* 4 (each pair rotates as one) + v head dim 8 = 14.
def rope_stack():
  hd = 8
  ang = np.arange(T)[:, None] / (10000.0 ** (np.arange(hd // 2) / (hd // 2)))[None]
  cos, sin = (np.asarray(f(ang), np.float32)[None, :, None] for f in (np.cos, np.sin))
  k = jax.random.split(jax.random.PRNGKey(24), 5)
  p = {n: _normal(kk, s) for n, kk, s in [("wq", k[0], (D, H * hd)), ("wk", k[1], (D, H * hd)),
                                          ("wv", k[2], (D, H * hd)), ("wo", k[3], (H * hd, D))]}

  def rope(x):
    x = x.reshape(*x.shape[:-1], hd // 2, 2)
    x1, x2 = x[..., 0], x[..., 1]
    return jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).reshape(*x.shape[:-2], hd)

  def fn(p, x):
    b, t, _ = x.shape
    q, kk, v = ((x @ p[n]).reshape(b, t, H, hd) for n in ("wq", "wk", "wv"))
    return x + _causal_attention(rope(q), rope(kk), v) @ p["wo"]

  return Case("rope_stack", fn, p, (_normal(k[4], (2, T, D), 1.0),), 14, (("wo", "output"),))


# --- grouped-query attention with the kv heads repeated by jnp.tile (the `tile` primitive): 4 query
#     heads = (2 repetitions) x (2 kv heads). kv-head groups 2 (each removes its kv head and the 2
#     query heads reading it) + q/k head dim 4 + v head dim 4 = 10. The repetition axis is not
#     prunable: a query head removed alone still averages its kv head's values.
def tiled_gqa():
  kvh, rep, hd = 2, 2, 4
  k = jax.random.split(jax.random.PRNGKey(25), 5)
  p = {"wq": _normal(k[0], (D, rep * kvh * hd)), "wk": _normal(k[1], (D, kvh * hd)),
       "wv": _normal(k[2], (D, kvh * hd)), "wo": _normal(k[3], (rep * kvh * hd, D))}

  def fn(p, x):
    b, t, _ = x.shape
    q = (x @ p["wq"]).reshape(b, t, rep * kvh, hd)
    kk, v = ((x @ p[n]).reshape(b, t, kvh, hd) for n in ("wk", "wv"))
    kk, v = jnp.tile(kk, (1, 1, rep, 1)), jnp.tile(v, (1, 1, rep, 1))
    return x + _causal_attention(q, kk, v) @ p["wo"]

  return Case("tiled_gqa", fn, p, (_normal(k[4], (2, T, D), 1.0),), 10,
              (("wq", "contracts"), ("wo", "output")))


def _rms_norm(x, g):
  return x * lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * g


# --- tied embeddings with RMSNorm (Gemma style): x = embed[ids]; a pre-norm MLP block; logits =
#     rms(x) @ embed.T. The lookup produces the residual stream from embed[:, c], so the stream (8)
#     is prunable as in an untied model (RMSNorm divides by the traced width, which compress keeps)
#     + MLP hidden 16 = 24. The vocabulary is gathered.
def tied_rmsnorm():
  k = jax.random.split(jax.random.PRNGKey(26), 5)
  p = {"embed": _normal(k[0], (V, D)), "g1": 1 + _normal(k[1], (D,), 0.1),
       "gf": 1 + _normal(k[2], (D,), 0.1), "w1": _normal(k[3], (D, F)), "w2": _normal(k[4], (F, D))}

  def fn(p, ids):
    x = jnp.take(p["embed"], ids, axis=0) * np.sqrt(D)
    x = x + jax.nn.gelu(_rms_norm(x, p["g1"]) @ p["w1"]) @ p["w2"]
    return _rms_norm(x, p["gf"]) @ p["embed"].T

  ids = jax.random.randint(jax.random.PRNGKey(27), (2, T), 0, V)
  return Case("tied_rmsnorm", fn, p, (ids,), 24, (("embed", "indexed by gather"),))


class TiedLM(nn.Module):
  @nn.compact
  def __call__(self, ids):
    embed = nn.Embed(V, D)
    x = embed(ids)
    x = x + nn.Dense(D)(nn.relu(nn.Dense(F)(nn.LayerNorm()(x))))
    return embed.attend(nn.LayerNorm()(x))


# --- flax.linen tied embeddings (nn.Embed + Embed.attend) with flax LayerNorm (its scale and bias
#     are producers, so a zero channel stays zero): stream 8 + MLP hidden 16 = 24.
def tied_linen():
  ids = jax.random.randint(jax.random.PRNGKey(28), (2, T), 0, V)
  return _linen("tied_linen", TiedLM(), ids, 24, (("Embed_0", "indexed by gather"),))


class GapCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    bn = lambda: nn.BatchNorm(use_running_average=True)
    x = nn.relu(bn()(nn.Conv(8, (3, 3))(x)))
    x = nn.relu(bn()(nn.Conv(12, (3, 3), strides=2)(x)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(16, (3, 3), padding=1)(x))
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


# --- CNN with global average pooling, runs at any resolution: conv 8 + conv 12 + conv 16 = 36.
def gap_cnn():
  return _linen("gap_cnn", GapCNN(), _normal(jax.random.PRNGKey(29), (2, 16, 16, 3), 1.0), 36,
                (("Dense_0", "output"),))


# --- rotary tables doubled with jnp.tile (cos(freqs) tiled to the head dim, in-graph) and applied
#     with rotate_half: the tile's (2 copies) x (4 frequencies) layout meets rotate_half's
#     concatenation [x2, x1] of two halves, so channel i is tied to i + 4. Heads 2 + q/k head-dim
#     pairs 4 + v head dim 8 = 14.
def rope_tile():
  hd = 8
  ang = (np.arange(T)[:, None] / (10000.0 ** (np.arange(hd // 2) / (hd // 2)))[None]).astype(
      np.float32)
  k = jax.random.split(jax.random.PRNGKey(30), 5)
  p = {n: _normal(kk, s) for n, kk, s in [("wq", k[0], (D, H * hd)), ("wk", k[1], (D, H * hd)),
                                          ("wv", k[2], (D, H * hd)), ("wo", k[3], (H * hd, D))]}

  def rot(x):
    return jnp.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)

  def fn(p, x):
    b, t, _ = x.shape
    cos, sin = (jnp.tile(f(ang), (1, 2))[None, :, None] for f in (jnp.cos, jnp.sin))
    q, kk, v = ((x @ p[n]).reshape(b, t, H, hd) for n in ("wq", "wk", "wv"))
    q, kk = q * cos + rot(q) * sin, kk * cos + rot(kk) * sin
    return x + _causal_attention(q, kk, v) @ p["wo"]

  return Case("rope_tile", fn, p, (_normal(k[4], (2, T, D), 1.0),), 14, (("wo", "output"),))


ZOO += [fused_qkv_split, fused_qkv_unstack, rope_stack, tiled_gqa, tied_rmsnorm, tied_linen,
        gap_cnn, rope_tile]


# --- disc-a models ---------------------------------------------------------------------------
# Patterns of the value pass (hesso_jax/discovery/values.py): constants crossing call boundaries,
# in-graph channel tables, clamping activations, loop fix-points and the negative controls.


def _conv(x, w, stride=1):
  return lax.conv_general_dilated(x, w, (stride, stride), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _pad1(x):
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # a nested jit(_pad): the 0 is an argument


# --- ResNet stem + stride-2 basic block written with jnp.pad and VALID convolutions: stem 8 +
#     block inner 16 + block stream 16 (conv2 tied to the 1x1 stride-2 projection by the add)
#     = 40; the head's 10 logits reach the output.
def padded_resnet():
  k = jax.random.split(jax.random.PRNGKey(11), 9)
  p = {"stem": {"w": _normal(k[0], (3, 3, 3, 8)), "b": _normal(k[1], (8,), 0.1)},
       "c1": {"w": _normal(k[2], (3, 3, 8, 16)), "b": _normal(k[3], (16,), 0.1)},
       "c2": {"w": _normal(k[4], (3, 3, 16, 16))},
       "proj": {"w": _normal(k[5], (1, 1, 8, 16))},
       "head": {"w": _normal(k[6], (16, 10)), "b": _normal(k[7], (10,), 0.1)}}

  def fn(p, x):
    h = jax.nn.relu(_conv(_pad1(x), p["stem"]["w"]) + p["stem"]["b"])
    y = jax.nn.relu(_conv(_pad1(h), p["c1"]["w"], 2) + p["c1"]["b"])
    y = _conv(_pad1(y), p["c2"]["w"])
    h = jax.nn.relu(y + _conv(h, p["proj"]["w"], 2))
    return jnp.mean(h, axis=(1, 2)) @ p["head"]["w"] + p["head"]["b"]

  return Case("padded_resnet", fn, p, (_normal(k[8], (2, 8, 8, 3), 1.0),), 40,
              (("head/w", "output"),))


# --- rotary attention whose tables are computed in the traced function (iota): heads 2 +
#     q/k head-dim pairs 4 (cos/sin tables are concatenations of one half-table, rotate_half ties
#     channel i to i + 4) + v head-dim 8 = 14; the residual stream reaches the output.
def inline_rope_attention():
  hd = 8
  k = jax.random.split(jax.random.PRNGKey(12), 5)
  p = {n: _normal(kk, s) for n, kk, s in [("wq", k[0], (D, H * hd)), ("wk", k[1], (D, H * hd)),
                                          ("wv", k[2], (D, H * hd)), ("wo", k[3], (H * hd, D))]}

  def rot(x):
    return jnp.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)

  def fn(p, x):
    B, t = x.shape[0], x.shape[1]
    inv = 1.0 / (10000.0 ** (jnp.arange(hd // 2, dtype=jnp.float32) / (hd // 2)))
    ang = jnp.arange(t, dtype=jnp.float32)[:, None] * inv[None]
    cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[None, :, None]
    sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[None, :, None]
    q, kk, v = ((x @ p[n]).reshape(B, t, H, hd) for n in ("wq", "wk", "wv"))
    q, kk = q * cos + rot(q) * sin, kk * cos + rot(kk) * sin
    a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(hd), -1)
    return x + jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(B, t, H * hd) @ p["wo"]

  return Case("inline_rope_attention", fn, p, (_normal(k[4], (2, T, D), 1.0),), 14,
              (("wo", "output"),))


# --- clamping activations: relu6 (8) -> hard_tanh (8) -> clip(-1, 3) (8) -> min(max(., 0), 6)
#     (8) keep zero; clip(., 0.5, 6) (6) maps 0 to 0.5, so that hidden layer is unprunable:
#     4 x 8 = 32 groups.
def clamped_mlp():
  k = jax.random.split(jax.random.PRNGKey(13), 7)
  p = {"w1": _normal(k[0], (6, 8)), "w2": _normal(k[1], (8, 8)), "w3": _normal(k[2], (8, 8)),
       "w4": _normal(k[3], (8, 8)), "w5": _normal(k[4], (8, 6)), "w6": _normal(k[5], (6, 3))}

  def fn(p, x):
    h = jax.nn.relu6(3.0 * x @ p["w1"])
    h = jax.nn.hard_tanh(h @ p["w2"])
    h = jnp.clip(h @ p["w3"], -1.0, 3.0)
    h = jnp.minimum(jnp.maximum(h @ p["w4"], 0.0), 6.0)
    h = jnp.clip(h @ p["w5"], 0.5, 6.0)
    return h @ p["w6"]

  return Case("clamped_mlp", fn, p, (_normal(k[6], (4, 6), 1.0),), 32, (("w5", "contracts"),))


# --- negative controls: relu(x @ wa + 1.0) (8: a literal offset, relu(1) = 1 is contracted) and
#     x @ wb + C (6: a captured non-zero constant array) stay unprunable; relu(x @ wc) is the
#     only prunable hidden layer: 5 groups.
def offset_controls():
  k = jax.random.split(jax.random.PRNGKey(14), 7)
  c = np.linspace(0.5, 1.5, 6).astype(np.float32)
  p = {"wa": _normal(k[0], (6, 8)), "wa2": _normal(k[1], (8, 3)), "wb": _normal(k[2], (6, 6)),
       "wb2": _normal(k[3], (6, 3)), "wc": _normal(k[4], (6, 5)), "wc2": _normal(k[5], (5, 3))}

  def fn(p, x):
    a = jax.nn.relu(x @ p["wa"] + 1.0) @ p["wa2"]
    b = jnp.tanh(x @ p["wb"] + c) @ p["wb2"]
    return a + b + jax.nn.relu(x @ p["wc"]) @ p["wc2"]

  return Case("offset_controls", fn, p, (_normal(k[6], (4, 6), 1.0),), 5,
              (("wa", "contracts"), ("wb", "contracts")))


# --- a scan whose 10 carries rotate (c0 <- c1 <- ... <- c9 <- c9 + 1): the zero fix-point needs
#     11 iterations. After 12 steps c0 is non-zero, so the rotated hidden layer (8) is unprunable;
#     the side branch relu(x @ wg) (5) is the only prunable space: 5 groups.
def rotating_scan():
  k = jax.random.split(jax.random.PRNGKey(15), 5)
  p = {"w1": _normal(k[0], (6, 8)), "w2": _normal(k[1], (8, 3)), "wg": _normal(k[2], (6, 5)),
       "wg2": _normal(k[3], (5, 3))}

  def fn(p, x):
    h = jax.nn.relu(x @ p["w1"])

    def step(c, _):
      return c[1:] + (c[-1] + 1.0,), None

    c, _ = lax.scan(step, (h,) * 10, None, length=12)
    return c[0] @ p["w2"] + jax.nn.relu(x @ p["wg"]) @ p["wg2"]

  return Case("rotating_scan", fn, p, (_normal(k[4], (4, 6), 1.0),), 5, (("w1", "contracts"),))




# --- constant-channel folding (discover(fold=True)): sigmoid(x @ ws + bs) (8, sigmoid(0) = 0.5)
#     and softplus(x @ wp) (6, log 2) feed dense consumers: both fold; relu(x @ wr) (5) is
#     zero-invariant. 5 groups by default, 5 + 8 + 6 = 19 with folding.
def constant_channels():
  k = jax.random.split(jax.random.PRNGKey(16), 9)
  p = {"ws": _normal(k[0], (6, 8)), "bs": _normal(k[1], (8,), 0.1), "ws2": _normal(k[2], (8, 3)),
       "wp": _normal(k[3], (6, 6)), "wp2": _normal(k[4], (6, 3)), "b2": _normal(k[5], (3,), 0.1),
       "wr": _normal(k[6], (6, 5)), "wr2": _normal(k[7], (5, 3))}

  def fn(p, x):
    s = jax.nn.sigmoid(x @ p["ws"] + p["bs"]) @ p["ws2"]
    sp = jax.nn.softplus(x @ p["wp"]) @ p["wp2"] + p["b2"]
    return s + sp + jax.nn.relu(x @ p["wr"]) @ p["wr2"]

  return Case("constant_channels", fn, p, (_normal(k[8], (4, 6), 1.0),), 5,
              (("ws", "contracts"), ("wp", "contracts")))


# --- normalisation without affine parameters: (x @ w1 - mean) * rsqrt(var + eps) with running
#     statistics (state): a zero channel becomes -mean[c] / sqrt(var[c] + eps), one
#     input-independent value per channel. 5 groups (relu(x @ w3)) by default, 5 + 8 = 13 with folding.
def normalised_channels():
  k = jax.random.split(jax.random.PRNGKey(17), 7)
  v = {"params": {"w1": _normal(k[0], (6, 8)), "w2": _normal(k[1], (8, 3)),
                  "w3": _normal(k[2], (6, 5)), "w4": _normal(k[3], (5, 3))},
       "batch_stats": {"mean": _normal(k[4], (8,)), "var": 0.5 + jnp.abs(_normal(k[5], (8,)))}}

  def fn(v, x):
    p, st = v["params"], v["batch_stats"]
    h = (x @ p["w1"] - st["mean"]) * lax.rsqrt(st["var"] + 1e-5)
    return jax.nn.relu(h) @ p["w2"] + jax.nn.relu(x @ p["w3"]) @ p["w4"]

  return Case("normalised_channels", fn, v, (_normal(k[6], (4, 6), 1.0),), 5,
              (("w1", "contracts"),))


# name -> prunable groups with discover(fold=True) (hand-derived in each builder's comment):
# clamp(., 0.5, 6) folds (0.5), relu(. + 1.0) folds (1.0), tanh(. + C) folds (tanh(C[c]), one
# value per channel), sigmoid_gated's plain sigmoid hidden layer folds (0.5: 8 + 8); the rotating
# loop does not (no folding inside loops).
FOLD_GROUPS = {"constant_channels": 19, "clamped_mlp": 38, "offset_controls": 19,
               "rotating_scan": 5, "normalised_channels": 13, "sigmoid_gated": 16}
FOLD_ZOO = [constant_channels, clamped_mlp, offset_controls, rotating_scan, normalised_channels,
            sigmoid_gated]


DISC_A = [padded_resnet, inline_rope_attention, clamped_mlp, offset_controls, rotating_scan,
          constant_channels, normalised_channels]
ZOO += DISC_A
