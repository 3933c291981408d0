"""Collective counts of the compiled train step on a 2x4 ('data', 'model') mesh of 8 CPU devices.

Run as a subprocess (tests/test_collectives.py does)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python tests/_collectives_worker.py

Prints one JSON line (prefixed ``RESULT ``): for plain adam, hesso(adam) and hesso_cric(adam),
the collectives of the compiled step (whole program: every phase's branch is in it) as
``[kind, number of elements]`` pairs, the number of groups and the spaces' sizes.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import hesso_jax as hj

DIMS = (32, 64, 64, 64, 16)
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_COLL = re.compile(r"= (\([^=]*?\)|\S+) (" + "|".join(KINDS) + r")(?:-start)?\(")


def mlp(key):
  params, spaces = {}, []
  for i, (a, b) in enumerate(zip(DIMS[:-1], DIMS[1:], strict=True)):
    k, key = jax.random.split(key)
    params[f"l{i}"] = {"kernel": jax.random.normal(k, (a, b)) / np.sqrt(a), "bias": jnp.zeros(b)}
  for i in range(len(DIMS) - 2):
    spaces.append(hj.ChannelSpace(DIMS[i + 1], (
        hj.AxisSlice((f"l{i}", "kernel"), 1), hj.AxisSlice((f"l{i}", "bias"), 0),
        hj.AxisSlice((f"l{i + 1}", "kernel"), 0, hj.CONSUMER)), name=f"h{i}"))
  return params, hj.SearchSpace(tuple(spaces))


def loss_fn(p, x, y):
  h = x
  for i in range(len(DIMS) - 1):
    h = h @ p[f"l{i}"]["kernel"] + p[f"l{i}"]["bias"]
    h = jax.nn.relu(h) if i < len(DIMS) - 2 else h
  return jnp.mean((h - y) ** 2)


def _elements(shape_txt: str) -> int:
  total = 0
  for dims in re.findall(r"\[([0-9,]*)\]", shape_txt):
    total += int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
  return total


def collectives(tx, params, mesh, cric: bool) -> list:
  p_sh = jax.tree_util.tree_map(lambda x: NamedSharding(mesh, P(*([None] * (x.ndim - 1)), "model")),
                                params)
  b_sh = NamedSharding(mesh, P("data"))
  params = jax.device_put(params, p_sh)
  state = jax.jit(tx.init)(params)
  x = jax.device_put(jnp.ones((16, DIMS[0])), b_sh)
  y = jax.device_put(jnp.ones((16, DIMS[-1])), b_sh)

  def step(p, s, x, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    u, s = tx.update(g, s, p, **({"value": loss} if cric else {}))
    return optax.apply_updates(p, u), s

  txt = jax.jit(step).lower(params, state, x, y).compile().as_text()
  return [[kind, _elements(shape)] for shape, kind in _COLL.findall(txt)]


def main() -> None:
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  params, space = mlp(jax.random.PRNGKey(0))
  base = optax.adam(1e-3)
  txs = {
      "adam": (base, False),
      "hesso": (hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=1, pruning_steps=4,
                         pruning_periods=2), False),
      "cric": (hj.hesso_cric(base, space, target_group_sparsity=0.5, start_cric_step=1,
                             sampling_steps=2, hybrid_training_steps=2), True),
  }
  out = {"devices": jax.device_count(), "num_groups": space.num_groups,
         "space_sizes": [s.size for s in space.prunable_spaces],
         "param_elements": [int(x.size) for x in jax.tree_util.tree_leaves(params)]}
  for name, (tx, cric) in txs.items():
    out[name] = collectives(tx, params, mesh, cric)
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
