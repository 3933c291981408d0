"""Compressed CPU latency with and without aligned widths: ``hj.compress(..., multiple_of=8)``.

    python -m benchmarks.bench_align [--small]

The digits CNN with a random 30% / 60% of each space's groups zeroed (keeping >= 1), compressed
twice: exact widths, and widths rounded up to multiples of 8 with extra zero channels (still
exact). Latency ratios (compressed / full, jitted, batch 256) are measured interleaved in one
process (median of per-round ratios).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import hesso_jax as hj
from benchmarks.common import interleaved, paired_ratio, table, write_json
from experiments import models as M


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true")
  a = ap.parse_args(argv)
  repeats = 10 if a.small else 30
  model = M.DigitsCNN()
  x = jnp.ones((256, 8, 8, 1))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:2])
  fn = lambda v, xb: model.apply(v, xb, train=False)
  space = hj.discover(fn, variables, x[:2])
  full = jax.jit(fn)
  rows = []
  for frac in (0.3, 0.6):
    rng = np.random.default_rng(0)
    ids = [off + i for s, off in zip(space.prunable_spaces, space.group_offsets)
           for i in rng.choice(s.size, min(s.size - 1, int(s.size * frac)), replace=False)]
    masked = space.zero_groups(variables, jnp.asarray(ids))
    flops_full = hj.count(fn, masked, x)["flops"]
    fns, meta = {"full": lambda: full(masked, x)}, {}
    for m in (1, 8):
      small_fn, small = hj.compress(fn, masked, space, x[:2], multiple_of=m)
      jf = jax.jit(small_fn)
      fns[f"m{m}"] = (lambda jf=jf, small=small: jf(small, x))
      meta[m] = (hj.count(small_fn, small, x)["flops"] / flops_full,
                 [small["params"][k]["kernel"].shape[-1] for k in ("conv0", "conv1", "conv2", "fc")])
    times = interleaved(fns, repeats, inner=3)
    for m in (1, 8):
      r = paired_ratio(times[f"m{m}"], times["full"])
      rows.append({"zeroed": frac, "multiple_of": m, "widths": str(meta[m][1]),
                   "flop_ratio": meta[m][0], "latency_ratio": r["median"]})
  write_json("align", {"rows": rows})
  print(table(rows, ["zeroed", "multiple_of", "widths", "flop_ratio", "latency_ratio"],
              {"zeroed": "{:.0%}", "flop_ratio": "{:.3f}", "latency_ratio": "{:.3f}"}))


if __name__ == "__main__":
  main()
