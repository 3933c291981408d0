"""compress re-interprets while_loop, cond, fori_loop (static and traced trip counts) and split;
literals in add / max / mul are handled exactly.

Each function below is discovered, about 40% of each prunable space is zeroed, and the compressed
function must equal the zeroed full model on inputs that take every branch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import hesso_jax as hj


def _params(shapes, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
  return {n: 0.5 * jax.random.normal(k, s) for (n, s), k in zip(shapes.items(), keys, strict=True)}


def _branch(x):
  """0 for a negative-sum input, 1 for a small positive one, 2 when some entry exceeds 1."""
  return (jnp.sum(x) > 0).astype(jnp.int32) + (jnp.max(x) > 1.0).astype(jnp.int32)


def branchy(p, x):
  """cond on the data, fori_loop with a static and a traced trip count, while_loop with the
  weights used inside the body (the loop-carried channel is tied to itself), split."""
  h = jax.nn.relu(x @ p["w1"] + p["b1"])
  h = lax.cond(jnp.sum(x) > 0, lambda h: h * 2.0, lambda h: jnp.tanh(h), h)
  h = lax.fori_loop(0, 3, lambda i, h: jax.nn.relu(h) * 0.9, h)
  n = 1 + _branch(x)
  h = lax.fori_loop(0, n, lambda i, h: jnp.tanh(h @ p["wr"]), h)
  h = lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, jax.nn.relu(c[1] @ p["wr"]) + c[1]),
                     (0, h))[1]
  a, b = jnp.split(h @ p["w2"], 2, axis=-1)
  return jax.nn.relu(a) @ p["w3"] + jnp.tanh(b) @ p["w4"]


BRANCHY = dict(w1=(6, 16), b1=(16,), wr=(16, 16), w2=(16, 12), w3=(6, 3), w4=(6, 3))


def split_sections(p, x):
  """jnp.split into unequal sections by index list, each section with its own consumer."""
  h = x @ p["w1"]
  a, b, c = jnp.split(h, [4, 10], axis=-1)
  return jax.nn.relu(a) @ p["wa"] + jnp.sin(b) @ p["wb"] + jax.nn.gelu(c) @ p["wc"]


SPLIT = dict(w1=(5, 14), wa=(4, 2), wb=(6, 2), wc=(4, 2))


def cond_switch(p, x):
  """lax.switch (a multi-branch cond) with parameters used in the branches."""
  h = jax.nn.relu(x @ p["w1"])
  i = _branch(x)
  h = lax.switch(i, [lambda h: h @ p["wa"], lambda h: jax.nn.relu(h @ p["wb"]),
                     lambda h: 0.5 * h @ p["wa"]], h)
  return jnp.tanh(h) @ p["wo"]


SWITCH = dict(w1=(3, 10), wa=(10, 8), wb=(10, 8), wo=(8, 2))

def literals(p, x):
  """Non-zero literals break zero-invariance (relu(0 + 1) = 1, max(0, 0.5) = 0.5): those hidden
  channels must stay; a literal factor keeps it (tanh(0 * 2) = 0)."""
  a = jax.nn.relu(x @ p["w1"] + 1.0) @ p["w2"]
  b = jnp.maximum(x @ p["w3"], 0.5) @ p["w4"]
  return a + b + jnp.tanh((x @ p["w5"]) * 2.0) @ p["w6"]


LITERALS = dict(w1=(4, 6), w2=(6, 2), w3=(4, 5), w4=(5, 2), w5=(4, 7), w6=(7, 2))


def _conv(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def convs(p, x):
  """A conv's channels feeding a sigmoid (sigmoid(0) = 0.5) stay; after a relu they are prunable."""
  h = jax.nn.sigmoid(_conv(x.reshape(x.shape[0], 2, 2, -1), p["k1"]))
  h = jax.nn.relu(_conv(h, p["k2"]))
  return jnp.mean(h, axis=(1, 2)) @ p["w"]


CONVS = dict(k1=(3, 3, 2, 5), k2=(3, 3, 5, 6), w=(6, 2))

CASES = {"convs": (convs, CONVS, 8), "literals": (literals, LITERALS, 4), "branchy": (branchy, BRANCHY, 6), "split": (split_sections, SPLIT, 5),
         "switch": (cond_switch, SWITCH, 3)}


def _zero(space, variables, seed):
  rng = np.random.default_rng(seed)
  mask = np.zeros(space.num_groups, bool)
  for s, off in zip(space.prunable_spaces, space.group_offsets, strict=True):
    k = min(s.size - 1, max(1, round(0.4 * s.size)))
    mask[off + rng.choice(s.size, size=k, replace=False)] = True
  return space.zero_groups(variables, jnp.asarray(mask)), mask


@pytest.mark.parametrize("name", [pytest.param("branchy", marks=pytest.mark.default_xla), "convs",
                                  "literals", "split", "switch"])
def test_compressed_control_flow_equals_zeroed_model(name):
  fn, shapes, din = CASES[name]
  p = _params(shapes)
  xs = [jnp.abs(jax.random.normal(jax.random.PRNGKey(s), (4, din))) * sc for s, sc in
        [(1, 2.0), (2, 0.05), (3, -1.0)]] + [jax.random.normal(jax.random.PRNGKey(4), (4, din))]
  assert {int(_branch(x)) for x in xs[:3]} == {0, 1, 2}  # every branch / trip count is taken
  space = hj.discover(fn, p, xs[0])
  assert space.num_groups > 0, space.summary()
  zeroed, mask = _zero(space, p, seed=1)
  small_fn, small = hj.compress(fn, zeroed, space, xs[0])
  n_full = sum(np.size(v) for v in jax.tree_util.tree_leaves(zeroed))
  assert sum(np.size(v) for v in jax.tree_util.tree_leaves(small)) < n_full
  f, g = jax.jit(fn), jax.jit(small_fn)
  outs = []
  for x in xs:
    ref, out = f(zeroed, x), g(small, x)
    assert out.shape == ref.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
    outs.append(np.asarray(ref))
  # the inputs really exercise different paths (the reference outputs are not all alike)
  assert len({o.tobytes() for o in outs}) == len(xs)


def test_nonzero_literals_and_sigmoid_keep_their_channels():
  space = hj.discover(literals, _params(LITERALS), jnp.ones((2, 4)))
  assert space.num_groups == 7, space.summary()  # only w5's hidden channels
  space = hj.discover(convs, _params(CONVS), jnp.ones((2, 8)))
  assert space.num_groups == 6, space.summary()  # only k2's output channels
