"""Discovery on the model zoo: hand-derived group counts, verdicts, and the invariance property."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo

import hesso_jax as hj
from hesso_jax.space import CONSUMER, STATE

CASES = {b.__name__: b for b in zoo.ZOO}


@pytest.fixture(scope="module", params=sorted(CASES))
def case_and_space(request):
  case = CASES[request.param]()
  return case, hj.discover(case.fn, case.variables, *case.args)


def test_group_count_matches_hand_derivation(case_and_space):
  case, space = case_and_space
  assert space.num_groups == case.groups, space.summary()


def test_unprunable_verdicts_have_reasons(case_and_space):
  case, space = case_and_space
  for path_sub, reason_sub in case.unprunable:
    hits = [s for s in space.channel_spaces
            if any(path_sub in hj.space.path_str(m.path) for m in s.members) and not s.prunable
            and reason_sub in s.reason]
    assert hits, f"no unprunable space touching {path_sub!r} with reason {reason_sub!r}\n" + space.summary()
  for s in space.channel_spaces:
    assert s.prunable or s.reason


def test_abstract_inputs_give_identical_space(case_and_space):
  case, space = case_and_space
  to_abs = lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.asarray(x).dtype)
  abstract = hj.discover(case.fn, jax.tree_util.tree_map(to_abs, case.variables),
                         *jax.tree_util.tree_map(to_abs, case.args))
  assert abstract == space


def _randomise_consumers(space, variables, mask, key):
  """Overwrite consumer and state slices of the masked groups with random positive values."""
  sel = space.group_mask_tree(mask, variables, roles=(CONSUMER, STATE))
  leaves, td = jax.tree_util.tree_flatten(variables)
  sels = jax.tree_util.tree_leaves(sel)
  keys = jax.random.split(key, len(leaves))
  out = [jnp.where(s, 0.5 + jax.random.uniform(k, x.shape, x.dtype), x)
         for x, s, k in zip(leaves, sels, keys)]
  return jax.tree_util.tree_unflatten(td, out)


def test_zero_invariance_property(case_and_space):
  """Zero 40% of groups, then scramble their consumers: the output must not move."""
  case, space = case_and_space
  G = space.num_groups
  rng = np.random.default_rng(0)
  ids = rng.choice(G, size=max(1, int(0.4 * G)), replace=False)
  mask = np.zeros(G, bool)
  mask[ids] = True
  zeroed = space.zero_groups(case.variables, jnp.asarray(mask))
  norms = np.asarray(space.group_norms(zeroed))
  assert np.all(norms[mask] == 0) and np.all(norms[~mask] > 0)
  scrambled = _randomise_consumers(space, zeroed, jnp.asarray(mask), jax.random.PRNGKey(7))
  assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: bool(jnp.all(a == b)), zeroed, scrambled))), "nothing was scrambled"
  f = jax.jit(case.fn)
  ref = f(zeroed, *case.args)
  out = f(scrambled, *case.args)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6, rtol=0)


def test_invariance_test_detects_a_wrong_space():
  """The property above must fail for a space that is not zero-invariant (sigmoid hidden)."""
  case = zoo.sigmoid_gated()
  bad = hj.SearchSpace.from_channel_spaces([hj.ChannelSpace(8, (
      hj.AxisSlice("ws", 1, "producer"), hj.AxisSlice("wso", 0, "consumer")))], case.variables)
  z = bad.zero_groups(case.variables, jnp.arange(3))
  s = _randomise_consumers(bad, z, jnp.arange(8) < 3, jax.random.PRNGKey(0))
  assert float(jnp.max(jnp.abs(case.fn(z, *case.args) - case.fn(s, *case.args)))) > 1e-3


def test_stacked_layer_axis_is_never_a_channel():
  case = zoo.gpt_scan()
  space = hj.discover(case.fn, case.variables, *case.args)
  for s in space.channel_spaces:
    for m in s.members:
      if m.path[0] == "blocks":
        assert m.axis != 0, s


def test_approximate_allows_the_residual_stream():
  case = zoo.gpt()
  strict = hj.discover(case.fn, case.variables, *case.args)
  approx = hj.discover(case.fn, case.variables, *case.args, approximate=True)
  assert approx.num_groups == strict.num_groups + zoo.D
  stream = [s for s in approx.channel_spaces if "approximate" in s.name]
  assert len(stream) == 1 and stream[0].size == zoo.D and stream[0].prunable


def test_ignore_keeps_matching_parameters_out():
  case = zoo.mlp()
  # An ignored parameter keeps its shape, so every space touching it (here l3/w consumes the
  # 12-wide hidden layer) stays unpruned.
  space = hj.discover(case.fn, case.variables, *case.args, ignore=r"^l3/")
  assert space.num_groups == 16
  ignored = [s for s in space.channel_spaces if "ignored" in s.reason]
  assert ignored and all(not s.prunable for s in ignored)
  space2 = hj.discover(case.fn, case.variables, *case.args, ignore=lambda p: p.startswith("l1"))
  assert space2.num_groups == 12


def test_unknown_primitive_makes_space_unprunable_with_its_name():
  p = {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 2))}

  def fn(p, x):
    h = jax.lax.cumsum(x @ p["w1"], axis=0)  # fine: along batch
    h = jax.lax.clz(h.astype(jnp.int32)).astype(jnp.float32)  # clz(0) = 32: not zero-preserving
    h = jax.lax.erf_inv(jnp.tanh(h))
    h = jax.lax.reduce_precision(h, exponent_bits=5, mantissa_bits=10)
    return h @ p["w2"]

  space = hj.discover(fn, p, jnp.ones((3, 4)))
  (s,) = [s for s in space.channel_spaces if s.size == 8]
  assert not s.prunable and "contracts" in s.reason

  from hesso_jax.discovery import rules
  saved = rules.RULES.pop("tanh")
  try:
    space = hj.discover(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, jnp.ones((3, 4)))
  finally:
    rules.RULES["tanh"] = saved
  eights = [s for s in space.channel_spaces if s.size == 8]
  assert eights and all(not s.prunable and "'tanh'" in s.reason for s in eights)


def test_control_flow_and_calls():
  """jit, checkpoint, custom_jvp, custom_vjp, cond and while are recursed into."""
  p = {"w1": jnp.ones((4, 8)) * 0.1, "w2": jnp.ones((8, 8)) * 0.1, "w3": jnp.ones((8, 2))}

  @jax.jit
  def inner(h, w):
    return jax.nn.relu(h @ w)

  @jax.custom_vjp
  def clipped(h):
    return jnp.clip(h, 0.0, None) * 1.0

  clipped.defvjp(lambda h: (clipped(h), h), lambda h, g: (g * (h > 0),))

  def fn(p, x):
    h = jax.checkpoint(lambda h: jax.nn.gelu(h))(x @ p["w1"])
    h = jax.lax.cond(x.sum() > 0, lambda h: h * 2.0, lambda h: jnp.sin(h), h)
    h = jax.lax.fori_loop(0, 2, lambda i, h: h * 0.5, h)
    h = clipped(inner(h, p["w2"]))
    return h @ p["w3"]

  space = hj.discover(fn, p, jnp.ones((3, 4)))
  assert space.num_groups == 16, space.summary()


def test_nnx_and_equinox_front_ends():
  import equinox as eqx
  from flax import nnx

  class M(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(4, 8, rngs=rngs)
      self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
      self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.bn(self.l1(x))))

  gdef, state = nnx.split(M(nnx.Rngs(0)))
  space = hj.discover(lambda s, x: nnx.merge(gdef, s)(x), state, jnp.ones((2, 4)))
  assert space.num_groups == 8
  roles = {hj.space.path_str(m.path): m.role for m in space.prunable_spaces[0].members}
  assert roles["bn/mean/value"] == "state" and roles["l1/kernel/value"] == "producer"
  assert roles["l2/kernel/value"] == "consumer"

  mlp = eqx.nn.MLP(4, 3, 16, 2, key=jax.random.PRNGKey(0))
  params, static = eqx.partition(mlp, eqx.is_array)
  space = hj.discover(lambda p, x: jax.vmap(eqx.combine(p, static))(x), params, jnp.ones((2, 4)))
  assert space.num_groups == 32, space.summary()


def test_summary_is_readable():
  case = zoo.cnn_bn()
  text = hj.discover(case.fn, case.variables, *case.args).summary()
  assert "56 prunable groups" in text and "reaches the function's output" in text
  assert re.search(r"Dense_0/kernel\[0\] consumer \(outer=16\)", text)


def _fused_qkv_case():
  d = 8
  p = {"w": jax.random.normal(jax.random.PRNGKey(0), (d, 3 * d)),
       "o": jax.random.normal(jax.random.PRNGKey(1), (d, d))}

  def fn(p, x):
    qkv = x @ p["w"]
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]  # slices, not split
    a = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k), -1)
    return x + jnp.einsum("bts,bsd->btd", a, v) @ p["o"]

  return fn, p, jax.random.normal(jax.random.PRNGKey(2), (2, 5, d))


def test_fused_qkv_sliced_by_index_gives_qk_and_v_spaces():
  fn, p, x = _fused_qkv_case()
  space = hj.discover(fn, p, x)
  assert space.num_groups == 16  # q/k dim 8 (offsets 0 and 8 of 24) + v dim 8 (offset 16)
  offsets = sorted(m.offset for s in space.prunable_spaces for m in s.members
                   if m.path == ("w",) and m.axis == 1)
  assert offsets == [0, 8, 16]
  z = space.zero_groups(p, jnp.array([1, 10]))
  small_fn, small = hj.compress(fn, z, space, x)
  assert small["w"].shape == (8, 21) and small["o"].shape == (7, 8)
  np.testing.assert_allclose(small_fn(small, x), fn(z, x), atol=1e-5, rtol=0)


def test_positions_beyond_the_traced_length_are_not_channels():
  p = {"pos": jnp.ones((16, 4)), "w": jnp.ones((4, 3))}
  space = hj.discover(lambda p, x: (x + p["pos"][:x.shape[1]]) @ p["w"], p, jnp.ones((2, 10, 4)))
  assert space.num_groups == 0
  unread = [s for s in space.channel_spaces if "never read" in s.reason]
  assert [s.size for s in unread] == [6]
