"""The small MLP and hand-written search space shared by the optimizer tests."""

import math

import jax
import jax.numpy as jnp
import optax

from hesso_jax.space import CONSUMER, AxisSlice, ChannelSpace, SearchSpace

DIMS = (4, 8, 6, 3)


def mlp_space(dims=DIMS, suffix=()):
  """Two prunable hidden spaces; the output space is unprunable. ``suffix``: e.g. ('value',)."""
  spaces = []
  for i in range(len(dims) - 2):
    spaces.append(ChannelSpace(dims[i + 1], (
        AxisSlice((f"l{i}", "kernel") + suffix, 1), AxisSlice((f"l{i}", "bias") + suffix, 0),
        AxisSlice((f"l{i + 1}", "kernel") + suffix, 0, CONSUMER)), name=f"h{i}"))
  n = len(dims) - 2
  spaces.append(ChannelSpace(dims[-1], (AxisSlice((f"l{n}", "kernel") + suffix, 1),
                                        AxisSlice((f"l{n}", "bias") + suffix, 0)),
                             prunable=False, reason="feeds the output"))
  return SearchSpace(tuple(spaces))


def mlp(seed=0, dims=DIMS, dtype=jnp.float32):
  """A params dict for ``forward`` and its search space."""
  key = jax.random.PRNGKey(seed)
  params = {}
  for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
    k1, k2, key = jax.random.split(key, 3)
    params[f"l{i}"] = {"kernel": (jax.random.normal(k1, (a, b)) / math.sqrt(a)).astype(dtype),
                       "bias": (0.1 * jax.random.normal(k2, (b,))).astype(dtype)}
  return params, mlp_space(dims)


def forward(params, x):
  h = x
  n = len(params)
  for i in range(n):
    h = h @ params[f"l{i}"]["kernel"] + params[f"l{i}"]["bias"]
    if i < n - 1:
      h = jax.nn.relu(h)
  return h


def loss_fn(params, x, y):
  return jnp.mean((forward(params, x).astype(jnp.float32) - y) ** 2)


def data(seed=1, n=16, din=DIMS[0], dout=DIMS[-1]):
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(kx, (n, din)), jax.random.normal(ky, (n, dout))


def traced_step(tx, x, y, loss=loss_fn):
  """A jitted ``(params, state) -> (params, state)`` step (``value=loss`` passed, for CRIC) and a
  list that grows by one entry per trace, to check that the step compiles once."""
  traces = []

  @jax.jit
  def step(p, st):
    traces.append(1)
    l, g = jax.value_and_grad(loss)(p, x, y)
    u, st = tx.update(g, st, p, value=l)
    return optax.apply_updates(p, u), st

  return step, traces
