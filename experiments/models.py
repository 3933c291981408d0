"""A small model zoo written as ordinary flax.linen modules (nothing HESSO-specific inside).

Every model is called as ``model.apply(variables, x, train=...)``; models with batch norm keep
running statistics in the ``'batch_stats'`` collection (pass ``mutable=['batch_stats']`` when
``train=True``). All are sized to train in a minute or two on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hesso_jax.examples import DigitsCNN
from hesso_jax.space import CONSUMER, PRODUCER, STATE, AxisSlice, ChannelSpace, SearchSpace

__all__ = ["DigitsCNN", "ResNetSmall", "BasicBlock", "MNIST1DMLP", "MNIST1DCNN", "CharGPT",
           "CausalSelfAttention", "get_model", "inference_fn", "manual_space"]


# The digits CNN is the package example's (hesso_jax.examples.DigitsCNN): one definition.

class BasicBlock(nn.Module):
  """ResNet basic block: conv-BN-relu-conv-BN + shortcut (identity, or 1x1 conv-BN projection)."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), padding="SAME",
                use_bias=False, name="conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, name="conv2")(y)
    y = bn("bn2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False,
                  name="proj")(x)
      x = bn("proj_bn")(x)
    return nn.relu(x + y)


class ResNetSmall(nn.Module):
  """A small ResNet for 8x8 digits: stem, stages of basic blocks, global average pool, head."""

  stage_features: Sequence[int] = (16, 32)
  blocks_per_stage: int = 2
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.stage_features[0], (3, 3), padding="SAME", use_bias=False, name="stem")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x))
    for s, f in enumerate(self.stage_features):
      for b in range(self.blocks_per_stage):
        strides = 2 if (s > 0 and b == 0) else 1
        x = BasicBlock(f, strides, name=f"stage{s}_block{b}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


class MNIST1DMLP(nn.Module):
  """MLP on the 40-sample MNIST-1D signal."""

  hidden: Sequence[int] = (256, 256)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    for i, h in enumerate(self.hidden):
      x = nn.relu(nn.Dense(h, name=f"fc{i}")(x))
    return nn.Dense(self.num_classes, name="head")(x)


class MNIST1DCNN(nn.Module):
  """1-D CNN on (N, 40, 1) MNIST-1D signals (after the dataset paper's small CNN), with BN.

  64 channels a layer: with 32, HESSO at 50% group sparsity (one global ranking) cut the middle
  layer to 2 channels and test accuracy fell from 94% to 72%; with 64 it keeps ~96%.
  """

  features: Sequence[int] = (64, 64, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim == 2:
      x = x[..., None]
    for i, f in enumerate(self.features):
      k = 5 if i == 0 else 3
      x = nn.Conv(f, (k,), strides=(2,), padding=((1, 1),), name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(x)
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, name="head")(x)


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with explicit q/k/v Dense layers and a head reshape."""

  num_heads: int
  d_model: int

  @nn.compact
  def __call__(self, x):
    b, t, _ = x.shape
    h = self.num_heads
    dh = self.d_model // h
    q = nn.Dense(self.d_model, name="q")(x).reshape(b, t, h, dh)
    k = nn.Dense(self.d_model, name="k")(x).reshape(b, t, h, dh)
    v = nn.Dense(self.d_model, name="v")(x).reshape(b, t, h, dh)
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh).astype(np.float32)
    mask = jnp.tril(jnp.ones((t, t), bool))
    att = jnp.where(mask[None, None], att, jnp.finfo(att.dtype).min)
    att = jax.nn.softmax(att, axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, h * dh)
    return nn.Dense(self.d_model, name="o")(y)


class GPTBlock(nn.Module):
  num_heads: int
  d_model: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x):
    x = x + CausalSelfAttention(self.num_heads, self.d_model, name="attn")(nn.LayerNorm(name="ln1")(x))
    y = nn.LayerNorm(name="ln2")(x)
    y = nn.Dense(self.mlp_ratio * self.d_model, name="fc1")(y)
    y = nn.gelu(y)
    y = nn.Dense(self.d_model, name="fc2")(y)
    return x + y


class CharGPT(nn.Module):
  """A small GPT-style character LM: token + position embeddings, pre-LN blocks, LN, head."""

  vocab_size: int
  block_size: int = 64
  d_model: int = 64
  num_heads: int = 4
  num_layers: int = 2
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, idx, train: bool = False):
    b, t = idx.shape
    tok = nn.Embed(self.vocab_size, self.d_model, name="tok_emb")(idx)
    pos = self.param("pos_emb", nn.initializers.normal(0.02), (self.block_size, self.d_model))
    x = tok + pos[None, :t]
    for i in range(self.num_layers):
      x = GPTBlock(self.num_heads, self.d_model, self.mlp_ratio, name=f"block{i}")(x)
    x = nn.LayerNorm(name="ln_f")(x)
    return nn.Dense(self.vocab_size, name="head")(x)


def get_model(task: str, *, num_classes: int = 10, vocab_size: int | None = None,
              small: bool = False, **kw) -> nn.Module:
  """The zoo by task name: digits_cnn, digits_resnet, mnist1d (CNN), mnist1d_mlp, charlm."""
  if task == "digits_cnn":
    return DigitsCNN(num_classes=num_classes, **kw)
  if task == "digits_resnet":
    return ResNetSmall(num_classes=num_classes, blocks_per_stage=1 if small else 2, **kw)
  if task == "mnist1d":
    return MNIST1DCNN(num_classes=num_classes, **kw)
  if task == "mnist1d_mlp":
    return MNIST1DMLP(num_classes=num_classes, **kw)
  if task == "charlm":
    if vocab_size is None:
      raise ValueError("charlm needs vocab_size")
    if small:
      kw = {"d_model": 64, "num_layers": 1, "block_size": 32, **kw}
    return CharGPT(vocab_size=vocab_size, **kw)
  raise ValueError(f"unknown task {task!r}")


def inference_fn(model: nn.Module):
  """``fn(variables, x)``: the model in inference mode (what hj.discover / hj.count trace)."""
  return lambda v, x: model.apply(v, x, train=False)


# ------------------------------------------------------------------------------------------------
# hand-written search spaces (the escape hatch, as worked examples; a test checks that they
# equal hj.discover's)
# ------------------------------------------------------------------------------------------------


def _conv_bn_space(name: str, n: int, conv: str, bn: str, consumer: str, consumer_axis: int,
                   *, kernel_ndim: int = 4, consumer_outer: int = 1) -> ChannelSpace:
  """conv out-channels (+ bias, + BN scale/shift as producers, BN mean/var as state) -> consumer."""
  members = [AxisSlice(("params", conv, "kernel"), kernel_ndim - 1, PRODUCER),
             AxisSlice(("params", conv, "bias"), 0, PRODUCER),
             AxisSlice(("params", bn, "scale"), 0, PRODUCER),
             AxisSlice(("params", bn, "bias"), 0, PRODUCER),
             AxisSlice(("batch_stats", bn, "mean"), 0, STATE),
             AxisSlice(("batch_stats", bn, "var"), 0, STATE),
             AxisSlice(("params", consumer, "kernel"), consumer_axis, CONSUMER,
                       outer=consumer_outer)]
  return ChannelSpace(n, tuple(members), name=name)


def _dense_space(name: str, n: int, dense: str, consumer: str) -> ChannelSpace:
  return ChannelSpace(n, (AxisSlice(("params", dense, "kernel"), 1, PRODUCER),
                          AxisSlice(("params", dense, "bias"), 0, PRODUCER),
                          AxisSlice(("params", consumer, "kernel"), 0, CONSUMER)), name=name)


def _conv_stack_spaces(model: nn.Module, params, head: str, kernel_ndim: int) -> list[ChannelSpace]:
  """Each conv's out-channels consumed by the next conv's in axis; the last one feeds the
  flatten -> ``head`` transition, where NHWC flattening makes channel the fastest axis, so the
  head kernel's in axis has ``outer = H*W`` (or the sequence length) and ``inner = 1``."""
  feats = list(model.features)
  spaces = []
  for i, f in enumerate(feats):
    if i == len(feats) - 1:
      outer = params[head]["kernel"].shape[0] // f
      spaces.append(_conv_bn_space(f"conv{i}", f, f"conv{i}", f"bn{i}", head, 0,
                                   kernel_ndim=kernel_ndim, consumer_outer=outer))
    else:
      spaces.append(_conv_bn_space(f"conv{i}", f, f"conv{i}", f"bn{i}", f"conv{i + 1}",
                                   kernel_ndim - 2, kernel_ndim=kernel_ndim))
  return spaces


def manual_space(task: str, model: nn.Module, variables) -> SearchSpace:
  """Hand-written search spaces (``hj.SearchSpace.from_channel_spaces``) for the simple models.

  digits_cnn: every conv's out-channels (kernel out axis, bias, BN scale/bias as producers, BN
  running mean/var as 'state') and the hidden dense layer; mnist1d: the 1-D convs; mnist1d_mlp:
  every hidden dense layer.
  """
  params = variables["params"]
  if task == "digits_cnn":
    spaces = _conv_stack_spaces(model, params, "fc", 4)
    spaces.append(_dense_space("fc", model.hidden, "fc", "head"))
  elif task == "mnist1d":
    spaces = _conv_stack_spaces(model, params, "head", 3)
  elif task == "mnist1d_mlp":
    hs = list(model.hidden)
    spaces = [_dense_space(f"fc{i}", h, f"fc{i}", f"fc{i + 1}" if i + 1 < len(hs) else "head")
              for i, h in enumerate(hs)]
  else:
    raise ValueError(f"no hand-written search space for {task!r}; use hj.discover")
  return SearchSpace.from_channel_spaces(spaces, variables)
