"""A compact Llama-style decoder in flax.nnx (used by bench_discovery).

RMSNorm pre-norm blocks; multi-head attention with q/k/v/o projections (no bias), optional
rotary embeddings (rotate-half form), causal softmax; SwiGLU FFN (gate/up/down); token embedding
and an untied lm head. ``scan=True`` stacks the layers (nnx.vmap at construction, nnx.scan in
the forward pass) so the jaxpr holds one layer body.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab: int = 32000
  dim: int = 4096
  layers: int = 32
  heads: int = 32
  ffn: int = 11008
  rope: bool = True
  scan: bool = False
  max_len: int = 2048


CONFIGS = {
    "tiny": LlamaConfig(vocab=256, dim=64, layers=2, heads=4, ffn=172),
    "100M": LlamaConfig(vocab=32000, dim=768, layers=12, heads=12, ffn=2048),
    "1B": LlamaConfig(vocab=32000, dim=2048, layers=16, heads=16, ffn=5632),
    "7B": LlamaConfig(vocab=32000, dim=4096, layers=32, heads=32, ffn=11008),
}


def rotary(x, pos, base=10000.0):
  """x: (B, T, H, Dh), rotate-half RoPE."""
  d = x.shape[-1]
  inv = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float32) / d))
  ang = pos[:, None].astype(jnp.float32) * inv[None, :]  # (T, d/2)
  cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[None, :, None, :]
  sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[None, :, None, :]
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  rot = jnp.concatenate([-x2, x1], -1)
  return x * cos + rot * sin


class Attention(nnx.Module):
  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    lin = lambda i, o: nnx.Linear(i, o, use_bias=False, rngs=rngs)
    self.q = lin(cfg.dim, cfg.dim)
    self.k = lin(cfg.dim, cfg.dim)
    self.v = lin(cfg.dim, cfg.dim)
    self.o = lin(cfg.dim, cfg.dim)

  def __call__(self, x):
    b, t, _ = x.shape
    h, dh = self.cfg.heads, self.cfg.dim // self.cfg.heads
    q = self.q(x).reshape(b, t, h, dh)
    k = self.k(x).reshape(b, t, h, dh)
    v = self.v(x).reshape(b, t, h, dh)
    if self.cfg.rope:
      pos = jnp.arange(t)
      q, k = rotary(q, pos), rotary(k, pos)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.float32(np.sqrt(dh))
    mask = jnp.tril(jnp.ones((t, t), bool))
    s = jnp.where(mask[None, None], s, jnp.finfo(s.dtype).min)
    a = jax.nn.softmax(s, axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, t, h * dh)
    return self.o(y)


class MLP(nnx.Module):
  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.gate = nnx.Linear(cfg.dim, cfg.ffn, use_bias=False, rngs=rngs)
    self.up = nnx.Linear(cfg.dim, cfg.ffn, use_bias=False, rngs=rngs)
    self.down = nnx.Linear(cfg.ffn, cfg.dim, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.attn_norm = nnx.RMSNorm(cfg.dim, epsilon=1e-6, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = nnx.RMSNorm(cfg.dim, epsilon=1e-6, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.attn_norm(x))
    return x + self.mlp(self.mlp_norm(x))


class Llama(nnx.Module):
  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab, cfg.dim, rngs=rngs)
    if cfg.scan:
      @nnx.split_rngs(splits=cfg.layers)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make(rngs):
        return Block(cfg, rngs=rngs)
      self.layers = make(rngs)
    else:
      self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.norm = nnx.RMSNorm(cfg.dim, epsilon=1e-6, rngs=rngs)
    self.head = nnx.Linear(cfg.dim, cfg.vocab, use_bias=False, rngs=rngs)

  def __call__(self, ids):
    x = self.embed(ids)
    if self.cfg.scan:
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def body(x, blk):
        return blk(x)
      x = body(x, self.layers)
    else:
      for blk in self.layers:
        x = blk(x)
    return self.head(self.norm(x))


def abstract_model(cfg: LlamaConfig):
  """(graphdef, abstract state) — no weights allocated."""
  m = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
  return nnx.split(m)


def num_params(state) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state)))
