"""Group masks in the update: expanded inside the fused step vs expanded once and stored.

HESSO keeps (G,) group masks in its state and broadcasts them to each producer leaf inside the
elementwise update, every step. The alternative is to expand them once per selection and keep
full-size boolean masks in the optimizer state, read every step. This measures both on the
bench_step MLP (784-1024-1024-10, SGD with momentum, producer leaves = the hidden kernels and
biases), optimizer step only (update + apply), params and state donated, half the groups zeroed:

* ``base``: plain SGD with momentum;
* ``broadcast``: + zeroing with the (G,) mask broadcast inside the update (what hesso does);
* ``stored``: + zeroing with stored full-size masks (one bool per weight, read every step).

Interleaved round-robin; ratios are medians of per-round ratios to ``base``.

    python -m benchmarks.bench_masks [--small]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.bench_step import _mlp_task
from benchmarks.common import interleaved, markdown_table, paired_ratio, write_json


def _steps(space, params):
  base = optax.sgd(1e-2, momentum=0.9)
  G = space.num_groups
  mask = jnp.arange(G) % 2 == 0
  # per-leaf masks, materialised at full size where a leaf has producer slices (others stay the
  # scalar False that group_mask_tree gives them, so neither variant touches them)
  stored = jax.tree_util.tree_map(
    lambda m, x: jnp.broadcast_to(m, x.shape) if jnp.ndim(m) else m,
    space.group_mask_tree(mask, params), params)

  def plain(g, p, s):
    u, s = base.update(g, s, p)
    return optax.apply_updates(p, u), s

  def stored_fn(g, p, s, masks):
    u, s = base.update(g, s, p)
    u = jax.tree_util.tree_map(lambda uu, x, z: jnp.where(z, -x, uu), u, p, masks)
    return optax.apply_updates(p, u), s

  def broadcast(g, p, s, m):  # the same zeroing, the masks expanded inside the step
    return stored_fn(g, p, s, space.group_mask_tree(m, p))

  return base, mask, stored, {
    "base": jax.jit(plain, donate_argnums=(1, 2)),
    "broadcast": jax.jit(broadcast, donate_argnums=(1, 2)),
    "stored": jax.jit(stored_fn, donate_argnums=(1, 2)),
  }


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true")
  a = ap.parse_args(argv)
  repeats, inner = (9, 5) if a.small else (31, 20)
  params, _, _, _, space = _mlp_task(jax.random.PRNGKey(0))
  base, mask, stored, fns = _steps(space, params)
  g = jax.tree_util.tree_map(jnp.ones_like, params)
  carry = {k: [jax.tree_util.tree_map(jnp.copy, params), base.init(params)] for k in fns}
  extra = {"base": (), "broadcast": (mask,), "stored": (stored,)}

  def call(k):
    def f():
      c = carry[k]
      c[0], c[1] = fns[k](g, c[0], c[1], *extra[k])
      return c[0]
    return f

  times = interleaved({k: call(k) for k in fns}, repeats=repeats, inner=inner, warmup=3)
  rows = []
  for k in ("broadcast", "stored"):
    r = paired_ratio(times[k], times["base"])
    rows.append({"variant": k, "median_us": 1e6 * float(np.median(times[k])),
                 "base_us": 1e6 * float(np.median(times["base"])), "ratio": r["median"],
                 "q25": r["q25"], "q75": r["q75"]})
  write_json("masks", {"small": a.small, "repeats": repeats, "inner": inner, "rows": rows,
                       "params": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
                       "groups": space.num_groups})
  print()
  print(markdown_table(rows, ["variant", "median_us", "base_us", "ratio", "q25", "q75"],
                       {"median_us": "{:.0f}", "base_us": "{:.0f}", "ratio": "{:.3f}x",
                        "q25": "{:.3f}", "q75": "{:.3f}"}))


if __name__ == "__main__":
  main()
