"""Models for the wild tier: penzai transformers, equimo vision models, nanoGPT, a jnp.pad ResNet.

Every builder returns a :class:`WildCase`: the model as a pure function ``fn(variables, x)`` of a
plain nested-dict (penzai) or equinox-partition (equimo) pytree, tiny random-init variables, an
input, and the hand-derived list of channel spaces a complete discovery must find prunable, each
with the reasoning why it is exactly zero-invariant. ``gaps`` names the expected spaces the
library does not find yet, with the reason text discovery gives for them today; the tests check
that each gap is still a gap for that reason, so closing one fails loudly until it is moved back
into the "found" column (and the README table is updated).

The model libraries are imported inside the builders only, so collecting the default test run
does not need them (the ``wild`` marker deselects these tests there).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

IndexFn = Callable[[int], tuple[int, ...]]


def one(c: int) -> tuple[int, ...]:
  """Channel c occupies index c of the axis."""
  return (c,)


def rotary_pair(half: int) -> IndexFn:
  """Half-split RoPE (``x1, x2 = split(x, 2)``): channel c is the rotation pair (c, c + half)."""
  return lambda c: (c, c + half)


def offset(start: int) -> IndexFn:
  """Channel c is index start + c (a space occupying the tail of an axis)."""
  return lambda c: (start + c,)


def grouped(inner: int) -> IndexFn:
  """Channel c is a block of ``inner`` consecutive indices (a GroupNorm group of channels)."""
  return lambda c: tuple(range(c * inner, (c + 1) * inner))


def fused_qkv(parts: tuple[int, ...], heads: int, head_dim: int, per: str) -> IndexFn:
  """A fused ``(3, heads, head_dim)`` projection axis; channel c is one head or one head dim.

  ``per='head'``: head c in each of ``parts``; ``per='dim'``: head dim c of every head in
  ``parts`` (0 = q, 1 = k, 2 = v).
  """
  def idx(c):
    if per == "head":
      return tuple(p * heads * head_dim + c * head_dim + i for p in parts for i in range(head_dim))
    return tuple(p * heads * head_dim + h * head_dim + c for p in parts for h in range(heads))
  return idx


@dataclasses.dataclass(frozen=True)
class Expected:
  """A channel space a complete discovery must find prunable.

  ``members`` are (parameter path, axis, index function) triples; a found space matches when it is
  prunable, has ``size`` channels, and for every triple the set of index sets its channels occupy
  on that (path, axis) equals ``{index_fn(c) for c < size}`` (channel order does not matter).
  """

  label: str
  size: int
  members: tuple[tuple[str, int, IndexFn], ...]
  why: str = ""


@dataclasses.dataclass
class WildCase:
  name: str
  fn: Callable
  variables: Any
  args: tuple
  expected: tuple[Expected, ...]
  gaps: dict[str, str]  # expected label -> substring of the reason discovery gives today
  labels: Any = None  # integer targets for the short HESSO run


# ----------------------------------------------------------------------------------------------
# penzai transformers
# ----------------------------------------------------------------------------------------------

D, HD, VOCAB, SEQ = 16, 8, 32, 6  # residual width, head dim, vocabulary, sequence length


def _penzai_case(name: str, model, expected, gaps) -> WildCase:
  """Unbind a penzai model's parameters into a nested dict and call it as ``fn(params, tokens)``.

  Each ``pz.Parameter`` (a ``NamedArray``) becomes its raw ``data_array`` at the path given by its
  label; ``fn`` rebuilds the named arrays from the (possibly compressed) arrays' shapes.
  """
  from penzai import pz

  unbound, params = pz.unbind_params(model, freeze=True)
  axis_names = {p.label: tuple(p.value.named_axes) for p in params}
  variables: dict = {}
  for p in params:
    assert not p.value.positional_shape, p.label
    *head, leaf = p.label.split("/")
    node = variables
    for k in head:
      node = node.setdefault(k, {})
    node[leaf] = p.value.data_array

  def get(tree, label):
    for k in label.split("/"):
      tree = tree[k]
    return tree

  def fn(v, tokens):
    values = []
    for label, names in axis_names.items():
      arr = get(v, label)
      shape = collections.OrderedDict(zip(names, arr.shape, strict=True))
      named = pz.nx.NamedArray(named_axes=shape, data_array=arr)
      values.append(pz.ParameterValue(label=label, value=named))
    out = pz.bind_variables(unbound, values)(pz.nx.wrap(tokens).tag("batch", "seq"))
    return out.untag("batch", "seq", "vocabulary").unwrap()

  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, SEQ), 0, VOCAB)
  targets = jax.random.randint(jax.random.PRNGKey(2), (2, SEQ), 0, VOCAB)
  return WildCase(name, fn, variables, (tokens,), tuple(expected), dict(gaps), targets)


def _llamalike_block_spaces(pre: str, st: int, kv_heads: int, q_mult: int, mlp: int):
  """Expected spaces of one llama-like block (``st`` = 1 when a LayerStack axis comes first).

  Parameter layouts (penzai named axes, in data-array order): query (embedding, [head_groups],
  [query_heads], projection), key/value (embedding, [head_groups], projection), output
  ([head_groups], [query_heads], projection, embedding), gating/value_linear (embedding, neurons),
  out_linear (neurons, embedding).
  """
  a = pre + "attention/"
  m = pre + "mlp/"
  q_proj = st + 1 + (kv_heads > 1) + (q_mult > 1)
  kv_proj = st + 1 + (kv_heads > 1)
  o_proj = st + (kv_heads > 1) + (q_mult > 1)
  out = []
  if kv_heads > 1:
    out.append(Expected(
        pre + "kv head groups", kv_heads,
        ((a + "query.weights", st + 1, one), (a + "key.weights", st + 1, one),
         (a + "value.weights", st + 1, one), (a + "output.weights", st, one)),
        "zero q/k/v of a kv group: its values are 0, so every query head of the group attends "
        "to zeros and the output projection reads 0"))
  out.append(Expected(
      pre + "q/k head dims (rotary pairs)", HD // 2,
      ((a + "query.weights", q_proj, rotary_pair(HD // 2)),
       (a + "key.weights", kv_proj, rotary_pair(HD // 2))),
      "RoPE rotates dims (c, c + hd/2) together; with both zero in q (and k) the rotated pair is 0 "
      "and contributes nothing to q.k; the frequency table is a static function of the channel"))
  out.append(Expected(
      pre + "v head dims", HD,
      ((a + "value.weights", kv_proj, one), (a + "output.weights", o_proj, one)),
      "a zero value dim gives a zero attention-output dim, read only by the output projection"))
  out.append(Expected(
      pre + "MLP hidden", mlp,
      ((m + "gating_linear.weights", st + 1, one), (m + "value_linear.weights", st + 1, one),
       (m + "out_linear.weights", st, one)),
      "gelu/silu(0) * 0 = 0 in the gated unit; only out_linear reads it"))
  return out


def _llamalike_stream(prefix_blocks: list[str], st: int, kv_heads: int, q_mult: int, tied: bool,
                      post_norms: bool) -> Expected:
  """The RMSNorm'd residual stream: exact (zero channels leave the sum of squares unchanged)."""
  members = [("transformer/embedder.embeddings", 1, one),
             ("transformer/final_norm/scale.weights", 0, one)]
  if not tied:
    members.append(("transformer/lm_head.weights", 0, one))
  o_emb = st + (kv_heads > 1) + (q_mult > 1) + 1
  for pre in prefix_blocks:
    members += [(pre + "pre_attention_norm/scale.weights", st, one),
                (pre + "pre_ffw_norm/scale.weights", st, one),
                (pre + "attention/output.weights", o_emb, one),
                (pre + "attention/query.weights", st, one),
                (pre + "mlp/out_linear.weights", st + 1, one),
                (pre + "mlp/gating_linear.weights", st, one)]
    if post_norms:
      members += [(pre + "post_attention_norm/scale.weights", st, one),
                  (pre + "post_ffw_norm/scale.weights", st, one)]
  why = ("RMSNorm: zero channels do not change the sum of squares and the compressed function "
         "keeps the traced 1/d; every producer (embedding column, output projections, norm "
         "scales) is zeroed together")
  if tied:
    why += "; tied: the lookup E[:, c] produces channel c, the decode x @ E.T consumes it"
  return Expected("residual stream", D, tuple(members), why)


def penzai_llama(stack: bool = False) -> WildCase:
  """Llama: GQA (2 kv groups x 2 query heads), RoPE, SwiGLU, RMSNorm, untied lm_head.

  Per block: kv head groups 2 + rotary q/k pairs 4 + v dims 8 + MLP 24 = 38; two blocks and the
  16-wide stream: 92 groups (stacked: the blocks share one scan body, so 38 + 16 = 54). Query heads
  inside a kv group are *not* zero-invariant: zeroing a query head's projection gives uniform
  attention over non-zero values, not zero (only with the output projection rows zeroed too).
  """
  from penzai.models.transformer.variants import llamalike_common as lc
  cfg = lc.LlamalikeTransformerConfig(
      num_kv_heads=2, query_head_multiplier=2, embedding_dim=D, projection_dim=HD,
      mlp_hidden_dim=24, num_decoder_blocks=2, vocab_size=VOCAB, mlp_variant="swiglu",
      tie_embedder_and_logits=False, use_layer_stack=stack)
  model = lc.build_llamalike_transformer(cfg, init_base_rng=jax.random.PRNGKey(0))
  pres = ["transformer/blocks/"] if stack else [f"transformer/block_{b}/" for b in range(2)]
  st = int(stack)
  exp = [e for pre in pres for e in _llamalike_block_spaces(pre, st, 2, 2, 24)]
  exp.append(_llamalike_stream(pres, st, 2, 2, tied=False, post_norms=False))
  return _penzai_case("penzai_llama_stack" if stack else "penzai_llama", model, exp, {})


def penzai_gemma() -> WildCase:
  """Gemma (1): multi-query attention (1 kv head, 2 query heads), GeGLU, tied embeddings scaled by
  sqrt(d), RMSNorm.

  Per block: rotary q/k pairs 4 + v dims 8 + MLP 24 = 36; two blocks + stream 16 = 88. With one kv
  head there is no head axis to prune (query heads: see ``penzai_llama``).
  """
  from penzai.models.transformer.variants import llamalike_common as lc
  cfg = lc.LlamalikeTransformerConfig(
      num_kv_heads=1, query_head_multiplier=2, embedding_dim=D, projection_dim=HD,
      mlp_hidden_dim=24, num_decoder_blocks=2, vocab_size=VOCAB, mlp_variant="geglu_approx",
      tie_embedder_and_logits=True)
  model = lc.build_llamalike_transformer(cfg, init_base_rng=jax.random.PRNGKey(0))
  pres = [f"transformer/block_{b}/" for b in range(2)]
  exp = [e for pre in pres for e in _llamalike_block_spaces(pre, 0, 1, 2, 24)]
  exp.append(_llamalike_stream(pres, 0, 1, 2, tied=True, post_norms=False))
  return _penzai_case("penzai_gemma", model, exp, {})


def penzai_gemma2() -> WildCase:
  """Gemma 2: GQA (2 x 2), post-attention / post-FFW RMSNorms, tanh soft-caps on attention and
  final logits, alternating sliding-window (4) / global attention, tied embeddings.

  Per block 2 + 4 + 8 + 24 = 38; two blocks + stream 16 = 92. Soft-caps keep zeros (tanh(0) = 0)
  and the post norms' scales are more producers of the stream.
  """
  from penzai.models.transformer.variants import llamalike_common as lc
  cfg = lc.LlamalikeTransformerConfig(
      num_kv_heads=2, query_head_multiplier=2, embedding_dim=D, projection_dim=HD,
      mlp_hidden_dim=24, num_decoder_blocks=2, vocab_size=VOCAB, mlp_variant="geglu_approx",
      tie_embedder_and_logits=True, use_post_attn_norm=True, use_post_ffw_norm=True,
      final_logit_softcap=30.0, attn_logits_soft_cap=50.0,
      attention_type=(lc.AttentionTypeSlidingWindowCausal(4), lc.AttentionTypeGlobalCausal()))
  model = lc.build_llamalike_transformer(cfg, init_base_rng=jax.random.PRNGKey(0))
  pres = [f"transformer/block_{b}/" for b in range(2)]
  exp = [e for pre in pres for e in _llamalike_block_spaces(pre, 0, 2, 2, 24)]
  exp.append(_llamalike_stream(pres, 0, 2, 2, tied=True, post_norms=True))
  return _penzai_case("penzai_gemma2", model, exp, {})


def penzai_gpt_neox(stack: bool = False) -> WildCase:
  """GPT-NeoX: parallel attention + MLP blocks, LayerNorm with shift, biased projections (Affine),
  rotary on the first 4 of 8 head dims, exact GELU, untied lm_head.

  Per block: heads 2 + rotary q/k pairs 2 + plain q/k dims 4 + v dims 8 + MLP 32 = 48; two blocks
  + stream 16 = 112 (stacked: 48 + 16 = 64). penzai's LayerNorm standardises with
  ``jax.nn.standardize`` (E[x^2] - E[x]^2), which zero channels do not disturb, and zeroed
  scale/shift make the normalised channel 0, so the stream is exact.
  """
  from penzai.models.transformer.variants import gpt_neox
  cfg = gpt_neox.GPTNeoXTransformerConfig(
      num_attention_heads=2, embedding_dim=D, projection_dim=HD, mlp_hidden_dim=32,
      num_decoder_blocks=2, vocab_size=VOCAB, activation_fn="gelu_exact", rope_subset_size=4,
      rope_wavelength=10_000.0, layernorm_epsilon=1e-5, parameter_dtype=jnp.float32,
      activation_dtype=jnp.float32, use_layer_stack=stack)
  model = gpt_neox.build_gpt_neox_transformer(cfg, init_base_rng=jax.random.PRNGKey(0))
  st = int(stack)
  pres = ["transformer/blocks/"] if stack else [f"transformer/block_{b}/" for b in range(2)]
  exp = []
  stream = [("transformer/embedder.embeddings", 1, one), ("transformer/lm_head.weights", 0, one),
            ("transformer/final_norm/scale.weights", 0, one),
            ("transformer/final_norm/shift.bias", 0, one)]
  for pre in pres:
    a, m = pre + "attention/", pre + "mlp/"
    qkv = [a + p for p in ("query/", "key/", "value/")]
    exp.append(Expected(
        pre + "heads", 2,
        tuple((p + "Linear.weights", st + 1, one) for p in qkv)
        + tuple((p + "AddBias.bias", st, one) for p in qkv)
        + ((a + "output/Linear.weights", st, one),),
        "zero q/k/v weights and biases of a head: its values are 0, its output is 0"))
    exp.append(Expected(
        pre + "q/k head dims (rotary pairs)", 2,
        tuple((a + p + "Linear.weights", st + 2, rotary_pair(2)) for p in ("query/", "key/")),
        "RoPE on the first 4 dims rotates pairs (c, c + 2)"))
    exp.append(Expected(
        pre + "q/k head dims (pass-through)", 4,
        tuple((a + p + "Linear.weights", st + 2, offset(4)) for p in ("query/", "key/")),
        "dims 4..7 bypass RoPE: a zero q (and k) dim adds 0 to q.k"))
    exp.append(Expected(
        pre + "v head dims", HD,
        ((a + "value/Linear.weights", st + 2, one), (a + "output/Linear.weights", st + 1, one)),
        "a zero value dim gives a zero attention-output dim"))
    exp.append(Expected(
        pre + "MLP hidden", 32,
        ((m + "in/Linear.weights", st + 1, one), (m + "in/AddBias.bias", st, one),
         (m + "out/Linear.weights", st, one)),
        "gelu(0) = 0"))
    stream += [(pre + "pre_attention_norm/scale.weights", st, one),
               (pre + "pre_ffw_norm/shift.bias", st, one),
               (a + "output/Linear.weights", st + 2, one), (a + "output/AddBias.bias", st, one),
               (m + "out/Linear.weights", st + 1, one), (m + "out/AddBias.bias", st, one),
               (a + "query/Linear.weights", st, one)]
  exp.append(Expected("residual stream", D, tuple(stream),
                      "E[x^2] - E[x]^2 LayerNorm; zero scale and shift zero the channel"))
  return _penzai_case("penzai_gpt_neox_stack" if stack else "penzai_gpt_neox", model, exp, {})


# ----------------------------------------------------------------------------------------------
# equimo vision models (equinox modules, one image per call: vmapped over the batch)
# ----------------------------------------------------------------------------------------------


def _equimo_case(name: str, model, expected, gaps, classes: int) -> WildCase:
  """``eqx.partition`` the model into its float arrays (the variables) and the static rest."""
  import equinox as eqx

  params, static = eqx.partition(model, eqx.is_inexact_array)

  def fn(p, x):
    m = eqx.combine(p, static)
    return jax.vmap(lambda xi: m(xi, key=jax.random.PRNGKey(0), inference=True))(x)

  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 16, 16))
  labels = jax.random.randint(jax.random.PRNGKey(2), (2,), 0, classes)
  return WildCase(name, fn, params, (x,), tuple(expected), dict(gaps), labels)


def equimo_vit() -> WildCase:
  """ViT: 16x16 image, 4x4 patches (16 tokens + cls), width 16, 2 heads of 8, MLP 32, 2 blocks,
  fused qkv Linear rearranged ``s (n h d) -> n h s d`` then unpacked into q, k, v.

  Per block: heads 2 + q/k head dims 8 + v head dims 8 + MLP 32 = 50; two blocks: 100. The
  residual stream goes through equinox's LayerNorm (var = mean((x - mean)^2)), which zero channels
  disturb: approximate only, not expected here.
  """
  import equimo.models as em
  model = em.VisionTransformer(img_size=16, in_channels=3, dim=16, patch_size=4, num_heads=2,
                               depths=[2], num_classes=5, reg_tokens=0, mlp_ratio=2.0,
                               global_pool="token", key=jax.random.PRNGKey(0))
  exp = []
  gaps = {}
  for b in range(2):
    pre = f"blocks/0/blocks/{b}/"
    a = pre + "attn/"
    exp.append(Expected(
        pre + "heads", 2,
        ((a + "qkv/weight", 0, fused_qkv((0, 1, 2), 2, 8, "head")),
         (a + "qkv/bias", 0, fused_qkv((0, 1, 2), 2, 8, "head")),
         (a + "proj/weight", 1, grouped(8))),
        "zero a head's q/k/v rows and biases: its values are 0, its output is 0"))
    exp.append(Expected(
        pre + "q/k head dims", 8,
        ((a + "qkv/weight", 0, fused_qkv((0, 1), 2, 8, "dim")),
         (a + "qkv/bias", 0, fused_qkv((0, 1), 2, 8, "dim"))),
        "a zero q (and k) dim, in every head, adds 0 to q.k"))
    exp.append(Expected(
        pre + "v head dims", 8,
        ((a + "qkv/weight", 0, fused_qkv((2,), 2, 8, "dim")),
         (a + "qkv/bias", 0, fused_qkv((2,), 2, 8, "dim")),
         (a + "proj/weight", 1, lambda c: (c, 8 + c))),
        "a zero v dim, in every head, gives a zero attention-output dim read only by proj"))
    exp.append(Expected(
        pre + "MLP hidden", 32,
        ((pre + "mlp/fc1/weight", 0, one), (pre + "mlp/fc1/bias", 0, one),
         (pre + "mlp/fc2/weight", 1, one)),
        "gelu(0) = 0"))
    # today q, k and v head dims form one space (qkv/weight[0] outer=6): prunable and exact, but
    # coarser than the two spaces the architecture allows
    gaps[pre + "q/k head dims"] = "joined into prunable space"
    gaps[pre + "v head dims"] = "joined into prunable space"
  return _equimo_case("equimo_vit", model, exp, gaps, 5)


def equimo_convnext() -> WildCase:
  """ConvNeXt: stages of width 8 and 16, one block each (7x7 depthwise conv, LayerNorm2d, 1x1
  expansion x4, GELU, 1x1 projection, layer scale, residual add).

  Expected: the expansion channels of each block, 32 + 64 = 96. The stage widths run through
  LayerNorm2d with var = mean((x - mean)^2) over channels, which zero channels disturb:
  approximate only, not expected here.
  """
  import equimo.models as em
  model = em.ConvNeXt(in_channels=3, depths=[1, 1], dims=[8, 16], num_classes=5,
                      key=jax.random.PRNGKey(0))
  exp = []
  for s, width in enumerate((8, 16)):
    pre = f"blocks/{s}/blocks/0/"
    exp.append(Expected(
        pre + "expansion", 4 * width,
        ((pre + "pwconv1/weight", 0, one), (pre + "pwconv1/bias", 0, one),
         (pre + "pwconv2/weight", 1, one)),
        "gelu(0) = 0 between the two 1x1 convs"))
  return _equimo_case("equimo_convnext", model, exp, {}, 5)


MBV3_LAYERS = [(8, 16, 3, 2, True, "relu"), (8, 24, 3, 1, False, "hard_swish"),
               (8, 32, 3, 2, True, "hard_swish")]


def equimo_mobilenetv3() -> WildCase:
  """MobileNetV3 with three MBConv blocks: (in 8, expand 16, s2, SE, relu), (8, 24, s1, residual,
  hard-swish), (8, 32, s2, SE, hard-swish) -> 24 channels -> mean -> classifier.

  Every conv is followed by equimo's GroupNorm with ``nearest_power_of_2_divisor(C, 32)`` groups:
  for 8, 16 and 32 channels one channel per group (a per-channel norm: a zero channel with zero
  scale/shift stays 0 and no other channel's statistics change); for 24 channels 8 groups of 3,
  where only whole groups are zero-invariant. Expected: stem 8 + block0 expansion 16 + block0 SE
  hidden 16 + stream 8 (block0 out, block1 residual, block2 in) + block1 expansion 8 groups of 3
  + block2 expansion 32 + block2 SE hidden 32 + head 8 groups of 3 = 128.
  """
  import equimo.models as em
  model = em.MobileNetv3(3, MBV3_LAYERS, last_channels=24, num_classes=5,
                         key=jax.random.PRNGKey(0))
  L = "layers/"
  conv = lambda p: (p + "/conv/weight", 0, one)
  gn = lambda p, f=one: ((p + "/norm/weight", 0, f), (p + "/norm/bias", 0, f))
  exp = [
      Expected("stem", 8,
               (conv("conv1"), *gn("conv1"), (L + "0/inverted_conv/conv/weight", 1, one)),
               "conv -> per-channel GroupNorm -> hard-swish(0) = 0"),
      Expected("block0 expansion", 16,
               (conv(L + "0/inverted_conv"), *gn(L + "0/inverted_conv"),
                conv(L + "0/depth_conv"), *gn(L + "0/depth_conv"),
                (L + "0/se_conv/fc1/weight", 1, one), (L + "0/point_conv/conv/weight", 1, one)),
               "1x1 conv, depthwise conv, both per-channel GN; SE gate multiplies a zero channel"),
      Expected("block0 SE hidden", 16,
               ((L + "0/se_conv/fc1/weight", 0, one), (L + "0/se_conv/fc1/bias", 0, one),
                (L + "0/se_conv/fc2/weight", 1, one)), "relu(0) = 0 inside the SE bottleneck"),
      Expected("stream (block0 out, block1 residual)", 8,
               (conv(L + "0/point_conv"), *gn(L + "0/point_conv"), conv(L + "1/point_conv"),
                *gn(L + "1/point_conv"), (L + "1/inverted_conv/conv/weight", 1, one),
                (L + "2/inverted_conv/conv/weight", 1, one)),
               "per-channel GN after both producers; the identity add ties them"),
      Expected("block1 expansion (GN groups)", 8,
               ((L + "1/inverted_conv/conv/weight", 0, grouped(3)),
                *gn(L + "1/inverted_conv", grouped(3)),
                (L + "1/depth_conv/conv/weight", 0, grouped(3)),
                (L + "1/point_conv/conv/weight", 1, grouped(3))),
               "GroupNorm(8 groups of 3): a whole zero group has mean 0, var 0 and zero "
               "scale/shift, and no other group's statistics change"),
      Expected("block2 expansion", 32,
               (conv(L + "2/inverted_conv"), *gn(L + "2/inverted_conv"),
                conv(L + "2/depth_conv"), (L + "2/point_conv/conv/weight", 1, one)),
               "as block0"),
      Expected("block2 SE hidden", 32,
               ((L + "2/se_conv/fc1/weight", 0, one), (L + "2/se_conv/fc2/weight", 1, one)),
               "relu(0) = 0"),
      Expected("head (GN groups)", 8,
               ((L + "2/point_conv/conv/weight", 0, grouped(3)),
                *gn(L + "2/point_conv", grouped(3)), ("classifier/weight", 1, grouped(3))),
               "GroupNorm(8 groups of 3) then global mean: whole groups only"),
  ]
  return _equimo_case("equimo_mobilenetv3", model, exp, {}, 5)


# ----------------------------------------------------------------------------------------------
# hand-written in the style people write them (no library): nanoGPT's GPT-2, a jnp.pad ResNet
# ----------------------------------------------------------------------------------------------


def _layer_norm(x, g, b):
  """GPT-2's LayerNorm as nanoGPT / HF write it: var = mean((x - mean)^2)."""
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / jnp.sqrt(v + 1e-5) * g + b


def _gpt2_fn(p, idx):
  """nanoGPT's forward: fused c_attn, ``q, k, v = split(..., 3)`` then ``reshape(B, T, H, hd)``,
  causal mask from ``tril``, tied ``wte`` for the logits."""
  B, T = idx.shape
  x = p["wte"][idx] + p["wpe"][:T]
  for blk in p["h"]:
    a = _layer_norm(x, **blk["ln_1"]) @ blk["c_attn"]["w"] + blk["c_attn"]["b"]
    q, k, v = jnp.split(a, 3, axis=-1)
    q, k, v = [t.reshape(B, T, 2, HD).transpose(0, 2, 1, 3) for t in (q, k, v)]
    att = q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(float(HD))
    att = jnp.where(jnp.tril(jnp.ones((T, T), bool)), att, -1e9)
    y = (jax.nn.softmax(att, -1) @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
    x = x + y @ blk["c_proj"]["w"] + blk["c_proj"]["b"]
    h = jax.nn.gelu(_layer_norm(x, **blk["ln_2"]) @ blk["c_fc"]["w"] + blk["c_fc"]["b"])
    x = x + h @ blk["mlp_proj"]["w"] + blk["mlp_proj"]["b"]
  return _layer_norm(x, **p["ln_f"]) @ p["wte"].T


def nanogpt() -> WildCase:
  """GPT-2 as nanoGPT writes it: width 16, 2 heads of 8, MLP 32, 2 blocks, tied embeddings.

  Per block: heads 2 + q/k head dims 8 + v head dims 8 + MLP 32 = 50; two blocks: 100. The stream
  runs through a textbook LayerNorm: approximate only, not expected here.
  """
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 32))
  n = lambda *shape: 0.3 * jax.random.normal(next(keys), shape)
  lin = lambda i, o: {"w": n(i, o), "b": n(o)}
  norm = lambda: {"g": 1.0 + n(D), "b": n(D)}
  p = {"wte": n(VOCAB, D), "wpe": n(SEQ, D), "ln_f": norm(),
       "h": [{"ln_1": norm(), "c_attn": lin(D, 3 * D), "c_proj": lin(D, D), "ln_2": norm(),
              "c_fc": lin(D, 32), "mlp_proj": lin(32, D)} for _ in range(2)]}
  exp = []
  for b in range(2):
    pre = f"h/{b}/"
    w, bias = pre + "c_attn/w", pre + "c_attn/b"
    exp += [
        Expected(pre + "heads", 2,
                 ((w, 1, fused_qkv((0, 1, 2), 2, HD, "head")),
                  (bias, 0, fused_qkv((0, 1, 2), 2, HD, "head")),
                  (pre + "c_proj/w", 0, grouped(HD))),
                 "zero a head's q/k/v columns and biases: its values are 0, its output is 0"),
        Expected(pre + "q/k head dims", HD,
                 ((w, 1, fused_qkv((0, 1), 2, HD, "dim")),
                  (bias, 0, fused_qkv((0, 1), 2, HD, "dim"))),
                 "a zero q (and k) dim, in every head, adds 0 to q.k"),
        Expected(pre + "v head dims", HD,
                 ((w, 1, fused_qkv((2,), 2, HD, "dim")), (bias, 0, fused_qkv((2,), 2, HD, "dim")),
                  (pre + "c_proj/w", 0, lambda c: (c, HD + c))),
                 "a zero v dim, in every head, gives a zero attention-output dim"),
        Expected(pre + "MLP hidden", 32,
                 ((pre + "c_fc/w", 1, one), (pre + "c_fc/b", 0, one), (pre + "mlp_proj/w", 0, one)),
                 "gelu(0) = 0"),
    ]
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, SEQ), 0, VOCAB)
  targets = jax.random.randint(jax.random.PRNGKey(2), (2, SEQ), 0, VOCAB)
  return WildCase("nanogpt", _gpt2_fn, p, (tokens,), tuple(exp), {}, targets)


def _pad_conv(x, w, stride=1):
  """A 3x3 convolution written with an explicit ``jnp.pad`` (as ports of PyTorch code do)."""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _resnet_pad_fn(p, x):
  x = jax.nn.relu(_pad_conv(x, p["stem"]["w"], 2) + p["stem"]["b"])
  y = jax.nn.relu(_pad_conv(x, p["conv1"]["w"]) + p["conv1"]["b"])
  y = _pad_conv(y, p["conv2"]["w"]) + p["conv2"]["b"]
  return jax.nn.relu(x + y).mean((1, 2)) @ p["fc"]["w"] + p["fc"]["b"]


def resnet_pad() -> WildCase:
  """A stride-2 stem and one basic block, every conv zero-padded with ``jnp.pad``.

  Expected: the stream (stem, conv2, tied by the identity add; 8) + the block's inner channels (8)
  = 16. Zero padding keeps a zero channel zero, so both are exact.
  """
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 16))
  n = lambda *shape: 0.3 * jax.random.normal(next(keys), shape)
  conv = lambda i, o: {"w": n(3, 3, i, o), "b": n(o)}
  p = {"stem": conv(3, 8), "conv1": conv(8, 8), "conv2": conv(8, 8),
       "fc": {"w": n(8, 5), "b": n(5)}}
  exp = (Expected("stream", 8, (("stem/w", 3, one), ("stem/b", 0, one), ("conv2/w", 3, one),
                                ("conv2/b", 0, one), ("conv1/w", 2, one), ("fc/w", 0, one)),
                  "relu(conv(pad(0))) = 0; the identity add ties stem and conv2"),
         Expected("block inner", 8, (("conv1/w", 3, one), ("conv1/b", 0, one), ("conv2/w", 2, one)),
                  "relu(0) = 0 between the two convs"))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  labels = jax.random.randint(jax.random.PRNGKey(2), (2,), 0, 5)
  return WildCase("resnet_pad", _resnet_pad_fn, p, (x,), exp, {}, labels)


BUILDERS: dict[str, Callable[[], WildCase]] = {
    "penzai_llama": penzai_llama,
    "penzai_llama_stack": lambda: penzai_llama(stack=True),
    "penzai_gemma": penzai_gemma,
    "penzai_gemma2": penzai_gemma2,
    "penzai_gpt_neox": penzai_gpt_neox,
    "penzai_gpt_neox_stack": lambda: penzai_gpt_neox(stack=True),
    "equimo_vit": equimo_vit,
    "equimo_convnext": equimo_convnext,
    "equimo_mobilenetv3": equimo_mobilenetv3,
    "nanogpt": nanogpt,
    "resnet_pad": resnet_pad,
}
