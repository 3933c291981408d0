"""The value pass of discovery: constants through calls, clamps, in-graph tables, loop fix-points,
negative controls and constant-channel folding (``discover(fold=True)``).

Every verdict is also checked numerically, independently of the discovery code: zeroing a
prunable space's producers and scrambling its consumers must not move the output, and doing the
same to a space reported unprunable must move it.
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo

import hesso_jax as hj
from hesso_jax.discovery import analysis
from hesso_jax.space import CONSUMER, STATE

FOLD_CASES = {b.__name__: b for b in zoo.FOLD_ZOO}


def _scramble(space, variables, mask, key):
  """Overwrite consumer and state slices of the masked groups with random positive values."""
  sel = space.group_mask_tree(mask, variables, roles=(CONSUMER, STATE))
  leaves, td = jax.tree_util.tree_flatten(variables)
  keys = jax.random.split(key, len(leaves))
  out = [jnp.where(s, 0.5 + jax.random.uniform(k, x.shape, x.dtype), x)
         for x, s, k in zip(leaves, jax.tree_util.tree_leaves(sel), keys, strict=True)]
  return jax.tree_util.tree_unflatten(td, out)


def _moves(fn, variables, args, space_of_one):
  """Max output change when the (single-space) search space's first 3 groups are zeroed and
  their consumers scrambled."""
  mask = jnp.arange(space_of_one.num_groups) < 3
  z = space_of_one.zero_groups(variables, mask)
  s = _scramble(space_of_one, z, mask, jax.random.PRNGKey(3))
  return float(jnp.max(jnp.abs(fn(z, *args) - fn(s, *args))))


def _as_prunable(space, s):
  """The channel space ``s`` (prunable or not) as a one-space search space, for the checks."""
  c = hj.ChannelSpace(s.size, s.members, prunable=True)
  return hj.SearchSpace.from_channel_spaces([c], None)


# ----------------------------------------------------------------------------------------------
# Clamping activations: verdict == numerical zero-invariance
# ----------------------------------------------------------------------------------------------

ACTIVATIONS = {
    "relu6": (jax.nn.relu6, True),
    "hard_tanh": (jax.nn.hard_tanh, True),
    "clip(0, 6)": (lambda h: jnp.clip(h, 0.0, 6.0), True),
    "clip(-1, 3)": (lambda h: jnp.clip(h, -1.0, 3.0), True),
    "min(max(h, 0), 6)": (lambda h: jnp.minimum(jnp.maximum(h, 0.0), 6.0), True),
    "lax.clamp(-2, h, 2)": (lambda h: jax.lax.clamp(-2.0, h, 2.0), True),
    "leaky_relu": (jax.nn.leaky_relu, True),
    "elu": (jax.nn.elu, True),
    "clip(0.5, 6)": (lambda h: jnp.clip(h, 0.5, 6.0), False),
    "clip(-3, -1)": (lambda h: jnp.clip(h, -3.0, -1.0), False),
    "max(h, 1)": (lambda h: jnp.maximum(h, 1.0), False),
    "min(h, -1)": (lambda h: jnp.minimum(h, -1.0), False),
    "relu(h + 1)": (lambda h: jax.nn.relu(h + 1.0), False),
    "sigmoid": (jax.nn.sigmoid, False),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_clamp_verdicts_match_numerical_zero_invariance(name):
  act, expected = ACTIVATIONS[name]
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  p = {"w1": jax.random.normal(k[0], (4, 8)), "w2": jax.random.normal(k[1], (8, 3))}
  x = 3.0 * jax.random.normal(k[2], (16, 4))
  fn = lambda p, x: act(x @ p["w1"]) @ p["w2"]
  space = hj.discover(fn, p, x)
  (hidden,) = [s for s in space.channel_spaces if s.size == 8]
  assert hidden.prunable == expected, space.summary()
  moved = _moves(fn, p, (x,), _as_prunable(space, hidden))
  assert (moved == 0.0) == expected, moved


# ----------------------------------------------------------------------------------------------
# Constants through call boundaries
# ----------------------------------------------------------------------------------------------


def test_pad_value_passed_into_a_nested_jit_is_seen_as_zero():
  case = zoo.padded_resnet()
  space = hj.discover(case.fn, case.variables, *case.args)
  by_producer = {s.label(): s for s in space.channel_spaces}
  for label in ("stem/w[3]", "c1/w[3]", "c2/w[3]"):
    assert by_producer[label].prunable, space.summary()
  # the same network padded with ones is not zero-invariant at the padded convolutions
  ones = lambda x: jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
  orig = zoo._pad1
  zoo._pad1 = ones
  try:
    space1 = hj.discover(case.fn, case.variables, *case.args)
  finally:
    zoo._pad1 = orig
  assert space1.num_groups < space.num_groups


def test_constants_cross_pjit_custom_jvp_remat_and_cond():
  """A clamp bound handed to nested calls as an argument is still known inside them."""
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  p = {"w1": jax.random.normal(k[0], (4, 8)), "w2": jax.random.normal(k[1], (8, 3))}
  x = 3.0 * jax.random.normal(k[2], (5, 4))

  @jax.jit
  def lo_hi(h, lo, hi):
    return jax.checkpoint(lambda h, lo, hi: jnp.clip(h, lo, hi))(h, lo, hi)

  @jax.custom_jvp
  def act(h, hi):
    return lo_hi(h, 0.0, hi)

  act.defjvp(lambda primals, tangents: (act(*primals), tangents[0]))

  def fn(p, x):
    h = act(x @ p["w1"], 6.0)
    h = jax.lax.cond(x.sum() > 0, lambda h: h * 2.0, lambda h: jnp.minimum(h, 3.0), h)
    return h @ p["w2"]

  space = hj.discover(fn, p, x)
  assert space.num_groups == 8, space.summary()
  # clip(0 - 1, 0, 6) is still 0, clip(0 + 1, 0, 6) is not
  assert hj.discover(lambda p, x: act(x @ p["w1"] - 1.0, 6.0) @ p["w2"], p, x).num_groups == 8
  assert hj.discover(lambda p, x: act(x @ p["w1"] + 1.0, 6.0) @ p["w2"], p, x).num_groups == 0


# ----------------------------------------------------------------------------------------------
# Negative controls
# ----------------------------------------------------------------------------------------------


def test_offsets_by_non_zero_constants_stay_unprunable():
  """A literal (relu(x @ W + 1.0)) or a constant array before the consumer: not zero-invariant,
  and the numerical check agrees (treating any literal as zero must fail here)."""
  case = zoo.offset_controls()
  space = hj.discover(case.fn, case.variables, *case.args)
  for prod, size in (("wa[1]", 8), ("wb[1]", 6)):
    (s,) = [s for s in space.channel_spaces if s.label() == prod]
    assert s.size == size and not s.prunable and "contracts" in s.reason, space.summary()
    assert _moves(case.fn, case.variables, case.args, _as_prunable(space, s)) > 1e-3
  (good,) = space.prunable_spaces
  assert good.label() == "wc[1]"


# ----------------------------------------------------------------------------------------------
# Channel-indexed tables computed in-graph (iota)
# ----------------------------------------------------------------------------------------------


def test_in_graph_rope_tables_equal_captured_tables():
  """RoPE tables built with jnp.arange give the spaces of the captured-table model (q/k head-dim
  pairs), and compress slices the iota-built tables exactly."""
  inline, captured = zoo.inline_rope_attention(), zoo.rope_attention()
  s_in = hj.discover(inline.fn, inline.variables, *inline.args)
  s_cap = hj.discover(captured.fn, captured.variables, *captured.args)
  sizes = lambda sp: sorted(s.size for s in sp.prunable_spaces)
  assert sizes(s_in) == sizes(s_cap) == [2, 4, 8]
  (pairs,) = [s for s in s_in.prunable_spaces if s.size == 4]
  offs = sorted({(m.offset, m.inner) for m in pairs.members if m.path == ("wq",)})
  assert offs == [(0, 1), (4, 1)], pairs  # channel i and i + 4 of each head form one group
  z = s_in.zero_groups(inline.variables, jnp.array([0, 2, 3, 8]))  # a head-dim pair, v dims
  small_fn, small = hj.compress(inline.fn, z, s_in, *inline.args)
  ref = inline.fn(z, *inline.args)
  np.testing.assert_allclose(small_fn(small, *inline.args), ref, atol=1e-5 * float(
      jnp.max(jnp.abs(ref))), rtol=0)
  assert small["wq"].shape[1] < inline.variables["wq"].shape[1]


# ----------------------------------------------------------------------------------------------
# Loop fix-points
# ----------------------------------------------------------------------------------------------


def _rotating_while(p, x):
  h = jax.nn.relu(x @ p["w1"])

  def body(c):
    i, vals = c
    return i + 1, vals[1:] + (vals[-1] + 1.0,)

  _, c = jax.lax.while_loop(lambda c: c[0] < 12, body, (0, (h,) * 10))
  return c[0] @ p["w2"] + jax.nn.relu(x @ p["wg"]) @ p["wg2"]


@pytest.mark.parametrize("loop", ["scan", "while"])
def test_loop_fix_point_runs_to_convergence(loop):
  """10 rotating carries need 11 fix-point iterations; stopping earlier (the old cap was 8)
  wrongly claims the rotated hidden layer is zero after the loop."""
  case = zoo.rotating_scan()
  fn = case.fn if loop == "scan" else _rotating_while
  space = hj.discover(fn, case.variables, *case.args)
  (rot,) = [s for s in space.channel_spaces if s.label() == "w1[1]"]
  assert not rot.prunable, space.summary()
  assert _moves(fn, case.variables, case.args, _as_prunable(space, rot)) > 1e-3
  assert [s.label() for s in space.prunable_spaces] == ["wg[1]"]


def test_fix_point_keeps_zeros_that_survive_every_iteration():
  p = {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 3))}

  def fn(p, x):
    h = jax.nn.relu(x @ p["w1"])
    c, _ = jax.lax.scan(lambda c, _: (c[1:] + (jnp.tanh(c[0]) * 0.5,), None), (h,) * 10, None,
                        length=30)
    return sum(c) @ p["w2"]

  assert hj.discover(fn, p, jnp.ones((2, 4))).num_groups == 8


# ----------------------------------------------------------------------------------------------
# Constant-channel folding
# ----------------------------------------------------------------------------------------------


def _zero_some(space, variables, seed=0):
  rng = np.random.default_rng(seed)
  ids = []
  for s, off in zip(space.prunable_spaces, space.group_offsets, strict=True):
    ids.extend(off + rng.choice(s.size, size=max(1, int(0.4 * s.size)), replace=False))
  return space.zero_groups(variables, jnp.asarray(np.asarray(ids)))


@pytest.mark.parametrize("name", sorted(FOLD_CASES))
def test_folded_spaces_compress_exactly(name):
  case = FOLD_CASES[name]()
  space = hj.discover(case.fn, case.variables, *case.args, fold=True)
  assert space.num_groups == zoo.FOLD_GROUPS[name], space.summary()
  z = _zero_some(space, case.variables)
  small_fn, small = hj.compress(case.fn, z, space, *case.args)
  ref = jax.jit(case.fn)(z, *case.args)
  out = jax.jit(small_fn)(small, *case.args)
  scale = float(jnp.max(jnp.abs(ref)))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5 * scale, rtol=0)
  full, comp = hj.count(case.fn, z, *case.args), hj.count(small_fn, small, *case.args)
  assert comp["params"] < full["params"] and comp["flops"] < full["flops"]


def test_folding_is_real_and_named():
  """Folded spaces say so, are not zero-invariant (scrambling their consumers moves the output)
  and compress would be wrong without the folded constant."""
  case = zoo.constant_channels()
  space = hj.discover(case.fn, case.variables, *case.args, fold=True)
  folded = [s for s in space.prunable_spaces if "(exact, folded)" in s.name]
  assert sorted(s.size for s in folded) == [6, 8]
  assert "(exact, folded)" in space.summary()
  for s in folded:
    assert _moves(case.fn, case.variables, case.args, _as_prunable(space, s)) > 1e-3
  plain = hj.discover(case.fn, case.variables, *case.args)
  assert all("folded" not in s.name for s in plain.channel_spaces)
  assert plain.num_groups == case.groups


def test_folding_at_other_batch_sizes_and_inside_a_jit():
  case = zoo.constant_channels()
  space = hj.discover(case.fn, case.variables, *case.args, fold=True)
  z = _zero_some(space, case.variables, seed=3)
  small_fn, small = hj.compress(case.fn, z, space, *case.args)
  x = jax.random.normal(jax.random.PRNGKey(9), (7, 6))
  ref = case.fn(z, x)
  np.testing.assert_allclose(jax.jit(small_fn)(small, x), ref,
                             atol=1e-5 * float(jnp.max(jnp.abs(ref))), rtol=0)


def test_a_constant_that_varies_within_a_channel_is_not_folded():
  """A constant vector over heads x head-dim: within one head channel it varies with the head
  dim, so folding the head (with the value at head-dim 0) would be wrong."""
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  p = {"w": jax.random.normal(k[0], (4, 6)), "w2": jax.random.normal(k[1], (2, 5))}
  cv = np.linspace(1, 2, 6).astype(np.float32)

  def fn(p, x):
    h = jnp.tanh((x @ p["w"] + cv).reshape(-1, 2, 3))  # heads 2 x head dim 3
    return jnp.einsum("bhd,hf->bdf", h, p["w2"]).reshape(x.shape[0], -1)

  x = jax.random.normal(k[2], (3, 4))
  space = hj.discover(fn, p, x, fold=True)
  (heads,) = [s for s in space.channel_spaces if s.size == 2 and s.label().startswith("w[")]
  assert not heads.prunable and "contracts" in heads.reason, space.summary()


def test_nothing_is_folded_inside_loops():
  p = {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 3))}

  def fn(p, x):
    h = jax.nn.sigmoid(x @ p["w1"])
    return jax.lax.fori_loop(0, 2, lambda i, y: y + h @ p["w2"], jnp.zeros((2, 3)))

  assert hj.discover(fn, p, jnp.ones((2, 4)), fold=True).num_groups == 0


# ----------------------------------------------------------------------------------------------
# Documentation
# ----------------------------------------------------------------------------------------------


def test_discover_docstring_example_runs():
  finder = doctest.DocTestFinder()
  runner = doctest.DocTestRunner()
  (test,) = [t for t in finder.find(analysis, "analysis") if t.name == "analysis.discover"]
  assert test.examples
  result = runner.run(test)
  assert result.failed == 0 and result.attempted >= 3
