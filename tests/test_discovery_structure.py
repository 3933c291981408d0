"""Structure patterns of third-party model code (issue 10: patterns 2, 3, 5, 8, 9).

The group counts and the zero-invariance / compressed == zeroed properties of the zoo models
(fused_qkv_split, fused_qkv_unstack, rope_stack, rope_tile, tiled_gqa, tied_rmsnorm, tied_linen,
gap_cnn) run in test_discovery.py and test_compress.py; these tests check the layouts, reasons and
calls at other input sizes in detail.
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo

import hesso_jax as hj
from hesso_jax.space import CONSUMER, PRODUCER, path_str


def _members(space, path, axis=1):
  return sorted((s.size, m.offset, m.width, m.outer, m.inner) for s in space.prunable_spaces
                for m in s.members if path_str(m.path) == path and m.axis == axis)


def _zero_one_per_space(space, variables):
  ids = jnp.asarray(space.group_offsets)  # channel 0 of every prunable space
  return space.zero_groups(variables, ids)


def test_fused_qkv_split_into_heads_is_pruned_per_part():
  """q, k, v = split(x @ W, 3) then reshape(b, t, H, hd): heads, q/k dim and v dim, exactly."""
  case = zoo.fused_qkv_split()
  space = hj.discover(case.fn, case.variables, *case.args)
  H, hd = zoo.H, zoo.HD
  width = 3 * H * hd
  # heads: one member per part, head slots of size hd (q at slots 0..H, k at H..2H, v at 2H..3H)
  heads = [(H, k * H, 3 * H, 1, hd) for k in range(3)]
  # q/k head dim: one member per (part, head); v head dim: one per head
  qk = [(hd, (k * H + h) * hd, width, 1, 1) for k in range(2) for h in range(H)]
  v = [(hd, (2 * H + h) * hd, width, 1, 1) for h in range(H)]
  assert _members(space, "w_qkv") == sorted(heads + qk + v)
  z = _zero_one_per_space(space, case.variables)
  small_fn, small = hj.compress(case.fn, z, space, *case.args)
  # one head of each part, then one q/k dim (of q and k, per remaining head) and one v dim
  kept_h = H - 1
  assert small["w_qkv"].shape == (zoo.D, kept_h * (2 * (hd - 1) + (hd - 1)))
  assert small["w_o"].shape == (kept_h * (hd - 1), zoo.D)
  np.testing.assert_allclose(small_fn(small, *case.args), case.fn(z, *case.args), atol=1e-5, rtol=0)


def test_fused_qkv_reshaped_to_3_heads_then_indexed():
  """HF style: reshape(b, t, 3, H, hd).transpose(2, 0, 3, 1, 4), then q, k, v = qkv[0], [1], [2]."""
  p = zoo._qkv_params(jax.random.PRNGKey(0), zoo.H, zoo.HD)

  def fn(p, x):
    b, t, _ = x.shape
    qkv = (x @ p["w_qkv"] + p["b_qkv"]).reshape(b, t, 3, zoo.H, zoo.HD).transpose(2, 0, 3, 1, 4)
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (qkv[0], qkv[1], qkv[2]))
    return x + zoo._causal_attention(q, k, v) @ p["w_o"]

  x = jax.random.normal(jax.random.PRNGKey(1), (2, zoo.T, zoo.D))
  space = hj.discover(fn, p, x)
  assert space.num_groups == zoo.H + zoo.HD  # heads + head dim shared by q, k and v
  z = _zero_one_per_space(space, p)
  small_fn, small = hj.compress(fn, z, space, x)
  assert small["w_qkv"].shape == (zoo.D, 3 * (zoo.H - 1) * (zoo.HD - 1))
  np.testing.assert_allclose(small_fn(small, x), fn(z, x), atol=1e-5, rtol=0)


def test_stack_and_tile_rules_tie_the_right_axes():
  rope = hj.discover(*(lambda c: (c.fn, c.variables, *c.args))(zoo.rope_stack()))
  # q/k head-dim pairs: 4 channels, each spanning 2 adjacent columns of wq (inner=2)
  assert (4, 0, None, 2, 2) in _members(rope, "wq")
  gqa = zoo.tiled_gqa()
  space = hj.discover(gqa.fn, gqa.variables, *gqa.args)
  # kv-head groups: wk's heads, and the query heads h = r * 2 + g of wq (outer=2 repetitions)
  (kv,) = [s for s in space.prunable_spaces if any(path_str(m.path) == "wk" and m.inner == 4
                                                   for m in s.members)]
  assert {(path_str(m.path), m.outer, m.inner) for m in kv.members if m.role == PRODUCER} == {
      ("wk", 1, 4), ("wv", 1, 4), ("wq", 2, 4)}


def test_tied_embedding_stream_is_as_prunable_as_untied():
  tied = zoo.tied_rmsnorm()
  untied_p = dict(tied.variables, head=tied.variables["embed"].T)

  def untied(p, ids):
    x = jnp.take(p["embed"], ids, axis=0) * np.sqrt(zoo.D)
    x = x + jax.nn.gelu(zoo._rms_norm(x, p["g1"]) @ p["w1"]) @ p["w2"]
    return zoo._rms_norm(x, p["gf"]) @ p["head"]

  s_tied = hj.discover(tied.fn, tied.variables, *tied.args)
  s_untied = hj.discover(untied, untied_p, *tied.args)
  assert s_tied.num_groups == s_untied.num_groups == zoo.D + zoo.F
  (stream,) = [s for s in s_tied.prunable_spaces if s.size == zoo.D]
  roles = {(path_str(m.path), m.axis): m.role for m in stream.members}
  assert roles[("embed", 1)] == PRODUCER and roles[("w1", 0)] == CONSUMER
  z = s_tied.zero_groups(tied.variables, jnp.asarray([0, 3, 5]))  # 3 stream channels
  assert float(jnp.abs(z["embed"][:, jnp.asarray([0, 3, 5])]).max()) == 0.0
  small_fn, small = hj.compress(tied.fn, z, s_tied, *tied.args)
  assert small["embed"].shape == (zoo.V, zoo.D - 3)
  np.testing.assert_allclose(small_fn(small, *tied.args), tied.fn(z, *tied.args), atol=1e-5,
                             rtol=0)


def test_compressed_cnn_runs_at_another_resolution():
  """Compressed at 16x16, called at 24x24 (and another batch): equals the zeroed full model."""
  case = zoo.gap_cnn()
  space = hj.discover(case.fn, case.variables, *case.args)
  z = space.zero_groups(case.variables, jnp.arange(0, space.num_groups, 3))
  small_fn, small = hj.compress(case.fn, z, space, *case.args)
  x24 = jax.random.normal(jax.random.PRNGKey(5), (3, 24, 24, 3))
  ref = jax.jit(case.fn)(z, x24)
  out = jax.jit(small_fn)(small, x24)
  assert out.shape == ref.shape == (3, 10)
  scale = float(jnp.abs(ref).max())
  np.testing.assert_allclose(out, ref, atol=1e-5 * scale, rtol=0)  # float32, relative to scale
  counts = hj.count(small_fn, small, x24)
  assert counts["flops"] < hj.count(case.fn, z, x24)["flops"]


def test_other_input_size_that_fn_cannot_take_names_the_dimension():
  case = zoo.gpt()  # its reshape and position table are written for the traced length
  space = hj.discover(case.fn, case.variables, *case.args)
  small_fn, small = hj.compress(case.fn, case.variables, space, *case.args)
  with pytest.raises(ValueError, match=r"data input 0 axis 1: 6 -> 4"):
    small_fn(small, jnp.zeros((2, 4), jnp.int32))


def test_reasons_name_the_root_cause_first():
  case = zoo.gpt()
  space = hj.discover(case.fn, case.variables, *case.args)
  by_label = {s.label(): s for s in space.channel_spaces}
  # the untied vocabulary is gathered and read nowhere else: that alone is the reason
  assert by_label["embed[0]"].reason == "indexed by gather (e.g. an embedding table's vocabulary)"
  # the sequence axis merges many causes (iota mask, softmax, the output): the input comes first
  assert by_label["pos[0]"].reason.startswith("tied to the function's data input; ")
  tied = zoo.tied_embedding()
  s = hj.discover(tied.fn, tied.variables, *tied.args)
  (vocab,) = [x for x in s.channel_spaces if x.size == zoo.V]
  assert vocab.reason.startswith("indexed by gather") and "never read" not in vocab.reason


def test_compress_docstring_example_runs():
  finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  (test,) = finder.find(hj.compress, "compress", globs={})
  assert test.examples, "compress has no >>> example"
  result = runner.run(test)
  assert result.failed == 0 and result.attempted >= 8
