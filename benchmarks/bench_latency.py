"""Compressed-model CPU inference latency vs FLOP and parameter ratios (ResNet-style CNN).

A flax.linen ResNet (BatchNorm, basic blocks, CIFAR-like 32x32x3 input, batch 32) at 30/50/70%
group sparsity: in every prunable channel space the lowest-norm groups are zeroed (at least one
kept per space), ``hj.compress`` cuts them out, and we measure the parameter ratio, the FLOP ratio
(``hj.count`` compressed / full) and the jitted CPU latency ratio compressed / full. All variants
are timed interleaved in one process (rotating order each round); ratios are medians of the
per-round ratios. Also timed: the full model run through ``compress`` with every group kept
(the re-binding interpreter's overhead after jit; expect 1.0). Variant ``aligned`` rounds each
space's kept count up to a multiple of 8 (SIMD-friendly widths).

    python -m benchmarks.bench_latency [--small]
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import hesso_jax as hj
from benchmarks.common import RESULTS, interleaved, markdown_table, paired_ratio, table, write_json

TOLERANCE = 0.15  # target: latency ratio within 15% of the FLOP ratio


class BasicBlock(nn.Module):
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    bn = lambda: nn.BatchNorm(use_running_average=True)
    y = nn.Conv(self.features, (3, 3), self.strides, padding="SAME", use_bias=False)(x)
    y = nn.relu(bn()(y))
    y = bn()(nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y))
    if self.strides != 1 or x.shape[-1] != self.features:
      x = bn()(nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  stages: Sequence[int] = (32, 64, 128)
  blocks: int = 2
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(
        nn.Conv(self.stages[0], (3, 3), padding="SAME", use_bias=False)(x)))
    for s, f in enumerate(self.stages):
      for b in range(self.blocks):
        x = BasicBlock(f, 2 if (s > 0 and b == 0) else 1)(x)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def init_variables(model, x, seed=0):
  v = model.init(jax.random.PRNGKey(seed), x)
  # non-trivial BN statistics / affine params so that the network is not degenerate
  leaves, td = jax.tree_util.tree_flatten_with_path(v)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  out = []
  for (p, a), k in zip(leaves, keys):
    name = str(p[-1])
    if "batch_stats" in str(p[0]):
      a = (1.0 + 0.2 * jax.random.uniform(k, a.shape)) if "var" in name else 0.1 * jax.random.normal(k, a.shape)
    elif "scale" in name:
      a = 1.0 + 0.2 * jax.random.normal(k, a.shape)
    elif "bias" in name:
      a = 0.1 * jax.random.normal(k, a.shape)
    out.append(a)
  return jax.tree_util.tree_unflatten(td, [x for x in out])


def lowest_norm_keep(space, variables, sparsity, multiple=1):
  """Per space: drop floor(s*n) lowest-norm groups, keep >= 1 (kept count rounded up to a
  multiple of ``multiple`` when possible)."""
  norms = np.asarray(space.group_norms(variables))
  keep = np.ones(space.num_groups, bool)
  for s, off in zip(space.prunable_spaces, space.group_offsets):
    n = s.size
    kept = max(1, n - int(np.floor(sparsity * n)))
    if multiple > 1:
      kept = min(n, int(np.ceil(kept / multiple) * multiple))
    order = np.argsort(norms[off:off + n], kind="stable")
    keep[off + order[:n - kept]] = False
  return keep


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true")
  ap.add_argument("--batch", type=int, default=32)
  a = ap.parse_args(argv)
  model = ResNet(blocks=1 if a.small else 2)
  x = jax.random.normal(jax.random.PRNGKey(2), (a.batch, 32, 32, 3))
  v = init_variables(model, x)
  fn = lambda v, x: model.apply(v, x)
  space = hj.discover(fn, v, x)
  full_count = hj.count(fn, v, x)
  fns = {"full": (jax.jit(fn), v)}
  all_keep = np.ones(space.num_groups, bool)
  ident_fn, ident_v = hj.compress(fn, v, space, x, keep=all_keep)
  fns["full_via_compress"] = (jax.jit(ident_fn), ident_v)
  rows, meta = [], {}
  variants = [(s, 1) for s in (0.3, 0.5, 0.7)] + [(0.3, 8), (0.7, 8)]
  for sp, mult in variants:
    name = f"{int(sp * 100)}%" + ("_aligned8" if mult > 1 else "")
    keep = lowest_norm_keep(space, v, sp, mult)
    z = space.zero_groups(v, np.flatnonzero(~keep))
    with warnings.catch_warnings():
      warnings.simplefilter("error")  # dropped groups are exactly zero: no warning expected
      sfn, small = hj.compress(fn, z, space, x, keep=keep)
    diff = float(jnp.abs(jax.jit(sfn)(small, x) - jax.jit(fn)(z, x)).max())
    c = hj.count(sfn, small, x)
    meta[name] = {"group_sparsity": 1 - keep.mean(), "max_abs_diff": diff,
                  "param_ratio": c["params"] / full_count["params"],
                  "flop_ratio": c["flops"] / full_count["flops"],
                  "params": c["params"], "flops": c["flops"]}
    fns[name] = (jax.jit(sfn), small)
  calls = {k: (lambda f=f, w=w: f(w, x)) for k, (f, w) in fns.items()}
  repeats = 12 if a.small else 40
  times = interleaved(calls, repeats=repeats, warmup=3)
  for name in fns:
    r = paired_ratio(times[name], times["full"])
    row = {"variant": name, "median_ms": 1e3 * float(np.median(times[name])),
           "latency_ratio": r["median"], "lat_q25": r["q25"], "lat_q75": r["q75"],
           "lat_min_ratio": r["min_ratio"]}
    if name in meta:
      m = meta[name]
      row.update(group_sparsity=m["group_sparsity"], param_ratio=m["param_ratio"],
                 flop_ratio=m["flop_ratio"], max_abs_diff=m["max_abs_diff"],
                 lat_over_flop=r["median"] / m["flop_ratio"],
                 within_15pct=abs(r["median"] / m["flop_ratio"] - 1) <= TOLERANCE)
    elif name == "full":
      row.update(group_sparsity=0.0, param_ratio=1.0, flop_ratio=1.0)
    rows.append(row)
  cols = ["variant", "group_sparsity", "param_ratio", "flop_ratio", "latency_ratio", "lat_q25",
          "lat_q75", "lat_min_ratio", "lat_over_flop", "within_15pct", "median_ms", "max_abs_diff"]
  fmt = {c: "{:.3f}" for c in cols[1:9]}
  fmt.update(median_ms="{:.2f}", max_abs_diff="{:.1e}")
  write_json("latency", {"small": a.small, "model": f"ResNet stages {model.stages} x{model.blocks} "
                         f"blocks, input ({a.batch},32,32,3), BN", "full": full_count,
                         "num_groups": space.num_groups, "prunable_spaces": len(space.prunable_spaces),
                         "repeats": repeats, "tolerance": TOLERANCE, "rows": rows})
  md = (f"CPU ({os.cpu_count()} cores, shared), jax {jax.__version__}; ResNet {model.stages} "
        f"x{model.blocks} blocks/stage, BN, input ({a.batch},32,32,3); {full_count['params']:,} params, "
        f"{full_count['flops'] / 1e9:.2f} GFLOP per batch. Lowest-norm groups zeroed per space, then "
        f"`hj.compress`; ratios = compressed / full, latency = median of {repeats} interleaved "
        f"per-round ratios (jitted, warmed up); `lat_min_ratio` = fastest compressed run / fastest full run. `aligned8`: kept widths rounded up to a multiple of 8.\n\n"
        + markdown_table(rows, ["variant", "group_sparsity", "param_ratio", "flop_ratio",
                                "latency_ratio", "lat_min_ratio", "lat_over_flop", "median_ms"], fmt) + "\n")
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "bench_latency.md"), "w") as fh:
    fh.write(md)
  print("\n== compressed ResNet: ratios compressed/full ==")
  print(table(rows, cols, fmt))


if __name__ == "__main__":
  main()
