"""Discovery time vs model size on ABSTRACT shapes (no weights allocated).

A Llama-style flax.nnx decoder (benchmarks/llama_nnx.py) is built with ``nnx.eval_shape``, split
into (graphdef, abstract state), and ``hj.discover`` runs on ``jax.ShapeDtypeStruct`` inputs.
Reports build/discovery time, groups, channel spaces, parameter count; a cProfile of the
largest discovery; the verdicts of one layer (RoPE on/off, approximate on/off); and an exactness
check on the tiny model with real weights (compress and prune_nnx after zeroing residual channels).

    python -m benchmarks.bench_discovery [--small]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import hesso_jax as hj
from benchmarks.common import table, write_json
from benchmarks.llama_nnx import CONFIGS, Llama, abstract_model, num_params

IDS = jax.ShapeDtypeStruct((1, 16), jnp.int32)
TARGET_7B_S = 10.0


def _discover(graphdef, state, **kw):
  return hj.discover(lambda s, ids: nnx.merge(graphdef, s)(ids), state, IDS, **kw)


def time_size(name, scan, rope, repeats):
  cfg = dataclasses.replace(CONFIGS[name], scan=scan, rope=rope)
  t0 = time.perf_counter()
  graphdef, state = abstract_model(cfg)
  build = time.perf_counter() - t0
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    space = _discover(graphdef, state)
    ts.append(time.perf_counter() - t0)
  return {"model": name, "layers": "scan" if scan else "loop", "rope": rope,
          "params": num_params(state), "build_s": build, "discover_first_s": ts[0],
          "discover_s": float(np.median(ts)), "groups": space.num_groups,
          "spaces": len(space.channel_spaces), "prunable_spaces": len(space.prunable_spaces)}


def profile_discovery(name="7B", top=15):
  graphdef, state = abstract_model(CONFIGS[name])
  pr = cProfile.Profile()
  pr.enable()
  _discover(graphdef, state)
  pr.disable()
  st = pstats.Stats(pr)
  rows = []
  for (file, line, fn), (_, nc, tt, ct, _) in st.stats.items():
    rows.append({"function": f"{re.sub(r'.*site-packages/|.*/work/main/', '', file)}:{line}({fn})",
                 "calls": nc, "tottime_s": tt, "cumtime_s": ct})
  total = sum(r["tottime_s"] for r in rows)
  by_tot = sorted(rows, key=lambda r: -r["tottime_s"])[:top]
  ours = sorted([r for r in rows if "hesso_jax/discovery" in r["function"]],
                key=lambda r: -r["cumtime_s"])[:top]
  jax_trace = sum(r["tottime_s"] for r in rows if "jax/" in r["function"] or "flax/" in r["function"])
  return {"model": name, "total_s": total, "jax_flax_tottime_s": jax_trace,
          "top_tottime": by_tot, "top_discovery_cumtime": ours}


def layer_verdicts():
  """Verdicts of the spaces touching layer 0 (plus the residual stream) on the tiny model."""
  out = {}
  for rope in (False, True):
    graphdef, state = abstract_model(dataclasses.replace(CONFIGS["tiny"], rope=rope))
    for approx in (False, True):
      space = _discover(graphdef, state, approximate=approx)
      rows = []
      for s in space.channel_spaces:
        paths = {"/".join(map(str, m.path)) for m in s.members}
        if not any(p.startswith("layers/0/") for p in paths):
          continue
        rows.append({"space": s.label(), "size": s.size, "prunable": s.prunable,
                     "reason": s.reason, "members": len(s.members)})
      out[f"rope={rope},approximate={approx}"] = rows
  return out


def exactness_check():
  """Tiny model, real weights, RoPE on: zero 30% of the residual-stream channels (the RMSNorm-tied
  space) and compare the compressed callable / the prune_nnx module to the masked full model."""
  cfg = dataclasses.replace(CONFIGS["tiny"], rope=True)
  model = Llama(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  fn = lambda s, ids: nnx.merge(graphdef, s)(ids)
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, cfg.vocab)
  space = hj.discover(fn, state, ids)
  rng = np.random.default_rng(0)
  res = {}
  for sel in ("residual", "ffn", "all"):
    gids = []
    for s, off in zip(space.prunable_spaces, space.group_offsets):
      is_res = s.label().startswith("embed/")
      is_ffn = "/mlp/" in s.label()
      if sel == "all" or (sel == "residual" and is_res) or (sel == "ffn" and is_ffn):
        gids += list(off + rng.choice(s.size, max(1, int(0.3 * s.size)), replace=False))
    z = space.zero_groups(state, np.asarray(gids))
    full = fn(z, ids)
    small_fn, small = hj.compress(fn, z, space, ids)
    r = {"compress_max_abs_diff": float(jnp.abs(small_fn(small, ids) - full).max())}
    try:
      sm = hj.prune_nnx(nnx.merge(graphdef, z), space)
      r["prune_nnx_max_abs_diff"] = float(jnp.abs(sm(ids) - full).max())
    except Exception as e:  # our model reads head counts from a config, which surgery can't see
      r["prune_nnx_error"] = f"{type(e).__name__}: {str(e)[:160]}"
    r["output_max_abs"] = float(jnp.abs(full).max())
    res[sel] = r
  return res


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true")
  a = ap.parse_args(argv)
  repeats = 1 if a.small else 3
  runs = [(n, False, True) for n in ("tiny", "100M", "1B", "7B")]
  runs += [(n, True, True) for n in ("tiny", "7B")]
  if not a.small:
    runs += [("7B", False, False), ("7B", True, False), ("100M", True, True), ("1B", True, True)]
  rows = [time_size(n, s, r, repeats) for n, s, r in runs]
  seven = [r["discover_s"] for r in rows if r["model"] == "7B"]
  prof = profile_discovery("7B")
  verdicts = layer_verdicts()
  exact = exactness_check()
  write_json("discovery", {"small": a.small, "rows": rows, "target_7B_s": TARGET_7B_S,
                           "max_7B_discover_s": max(seven), "meets_target": max(seven) < TARGET_7B_S,
                           "profile_7B": prof, "layer0_verdicts": verdicts, "exactness": exact})
  print("\n== discovery on abstract shapes (times in s; discover_s = median of repeats) ==")
  print(table(rows, ["model", "layers", "rope", "params", "build_s", "discover_first_s",
                     "discover_s", "groups", "spaces", "prunable_spaces"],
              {"build_s": "{:.3f}", "discover_s": "{:.3f}", "discover_first_s": "{:.3f}",
               "params": "{:,}"}))
  print(f"7B target < {TARGET_7B_S} s: {'met' if max(seven) < TARGET_7B_S else 'MISSED'} "
        f"(worst 7B discovery {max(seven):.3f} s)")
  print(f"\ncProfile of 7B (loop) discovery: {prof['total_s']:.2f} s total, "
        f"{prof['jax_flax_tottime_s']:.2f} s own time in jax/flax (tracing)")
  print(table(prof["top_discovery_cumtime"][:8], ["function", "calls", "tottime_s", "cumtime_s"],
              {"tottime_s": "{:.3f}", "cumtime_s": "{:.3f}"}))
  for k, v in verdicts.items():
    print(f"\nlayer-0 verdicts, tiny model ({k}):")
    print(table(v, ["space", "size", "prunable", "members", "reason"]))
  print("\nexactness (tiny, RoPE, real weights, 30% of the selected spaces' groups zeroed):")
  print(table([{"zeroed": k, **v} for k, v in exact.items()],
              ["zeroed", "output_max_abs", "compress_max_abs_diff", "prune_nnx_max_abs_diff",
               "prune_nnx_error"]))

if __name__ == "__main__":
  main()
