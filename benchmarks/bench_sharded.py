"""HESSO overhead on a sharded mesh: optimizer-state memory and step time vs plain optax.

    python benchmarks/bench_sharded.py                  # 8 simulated CPU devices, mesh 2x4
    python benchmarks/bench_sharded.py --width 2048 --rounds 30 --out results/bench_sharded.json

Memory: bytes of the HESSO (and HESSO-CRIC) state minus the base optimizer's state, in total and
on the most loaded device; HESSO's should be O(num_groups) (a count and two (G,) bool masks,
replicated), HESSO-CRIC's is one copy of the params (its cache, sharded like them) plus O(G).
Time: one jitted train step (forward, backward, optimizer, apply) with params FSDP x TP sharded,
measured interleaved in one run: plain optax, HESSO at a forgetting step, HESSO at a selection step
(saliency + ranking), HESSO-CRIC at a cycle step; median of ``--rounds`` rounds, ratios vs plain.
Timings on simulated CPU devices say little about accelerators; the ratio is the useful number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--width", type=int, default=1024, help="hidden width of the 3-layer MLP")
  ap.add_argument("--depth", type=int, default=3, help="hidden layers")
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--rounds", type=int, default=20)
  ap.add_argument("--no-cric", action="store_true")
  ap.add_argument("--out", default=None, help="also write the JSON here")
  return ap.parse_args()


def collectives(hlo_text: str) -> dict:
  """Count the collectives of a compiled HLO module and the elements of their results."""
  import re

  ops = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
  pat = re.compile(r"=\s+(.*?)\s+(" + "|".join(ops) + r")(-start)?\(")
  count, total, largest = 0, 0, 0
  kinds: dict = {}
  for line in hlo_text.splitlines():
    m = pat.search(line)
    if not m:
      continue
    n = 0
    for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", m.group(1)):
      n += int(__import__("numpy").prod([int(v) for v in dims.split(",") if v] or [1]))
    count += 1
    total += n
    largest = max(largest, n)
    kinds[m.group(2)] = kinds.get(m.group(2), 0) + 1
  return dict(count=count, elements=total, largest=largest, kinds=kinds)


def main():
  args = parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import flax.linen as nn
  import jax
  import numpy as np
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import hesso_jax as hj

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      for i in range(args.depth):
        x = nn.relu(nn.Dense(args.width, name=f"fc{i}")(x))
      return nn.Dense(10, name="head")(x)

  d = jax.device_count()
  shape = (2, d // 2) if d % 2 == 0 and d > 1 else (d, 1)
  mesh = jax.make_mesh(shape, ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.batch, 784)).astype(np.float32)
  y = rng.integers(0, 10, size=(args.batch,)).astype(np.int32)
  model = MLP()
  variables = model.init(jax.random.key(0), x[:1])
  space = hj.discover(model.apply, variables, x[:1]).subtree("params")
  params0 = variables["params"]
  G = space.num_groups

  base = optax.adam(1e-3)
  W, PS = 10, 100
  txs = {"plain": base,
         "hesso": hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=W, pruning_steps=PS)}
  if not args.no_cric:
    txs["hesso_cric"] = hj.hesso_cric(base, space, target_group_sparsity=0.5, start_cric_step=0,
                                      sampling_steps=10, hybrid_training_steps=10)

  p_sh = hj.param_shardings(params0, mesh)
  params = jax.device_put(params0, p_sh)
  b_sh = NamedSharding(mesh, P("data"))
  xb, yb = jax.device_put(x, b_sh), jax.device_put(y, b_sh)

  def nbytes(tree):
    return sum(int(np.prod(l.shape)) * np.dtype(l.dtype).itemsize for l in jax.tree_util.tree_leaves(tree))

  def max_device_bytes(tree):
    per = {}
    for l in jax.tree_util.tree_leaves(tree):
      for s in l.addressable_shards:
        per[s.device] = per.get(s.device, 0) + s.data.nbytes
    return max(per.values()) if per else 0

  def loss_fn(p, xx, yy):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xx), yy).mean()

  steps, states, mem = {}, {}, {}
  for name, tx in txs.items():
    s_sh = hj.opt_state_shardings(tx, params)
    st = jax.jit(tx.init, out_shardings=s_sh)(params)

    def step(p, s, xx, yy, tx=tx):
      loss, g = jax.value_and_grad(loss_fn)(p, xx, yy)
      u, s = tx.update(g, s, p, value=loss)
      return optax.apply_updates(p, u), s

    steps[name] = jax.jit(step, in_shardings=(p_sh, s_sh, b_sh, b_sh), out_shardings=(p_sh, s_sh))
    states[name] = st
    mem[name] = dict(state_bytes=nbytes(st), state_bytes_max_device=max_device_bytes(st))

  # phases to time (the step is one compiled program; the phase is the state's count)
  cases = {"plain": ("plain", states["plain"])}
  h = states["hesso"]
  cases["hesso_forget"] = ("hesso", h._replace(count=jax.device_put(np.int32(W + 1), h.count.sharding)))
  cases["hesso_select"] = ("hesso", h._replace(count=jax.device_put(np.int32(W), h.count.sharding)))
  if "hesso_cric" in txs:
    c = states["hesso_cric"]
    sched = hj.optim.cric.cric_schedule(space, start_cric_step=0, sampling_steps=10,
                                        max_cycle_period=10, hybrid_training_steps=10)
    cases["cric_cycle"] = ("hesso_cric", c._replace(
        count=jax.device_put(np.int32(sched["cycles_start"] + 1), c.count.sharding)))

  t_compile = {}
  for k, (name, st) in cases.items():
    t0 = time.perf_counter()
    jax.block_until_ready(steps[name](params, st, xb, yb))  # compile + warm
    t_compile[k] = time.perf_counter() - t0
  times = {k: [] for k in cases}
  for _ in range(args.rounds):  # interleaved
    for k, (name, st) in cases.items():
      t0 = time.perf_counter()
      jax.block_until_ready(steps[name](params, st, xb, yb))
      times[k].append(time.perf_counter() - t0)
  med = {k: float(np.median(v)) for k, v in times.items()}

  # collectives in the compiled steps: HESSO's extra ones should all be O(num_groups) vectors
  coll = {}
  for k, (name, st) in cases.items():
    if k == "hesso_select":
      continue  # same program as hesso_forget
    hlo = steps[name].lower(params, st, xb, yb).compile().as_text()
    coll[name] = collectives(hlo)

  base_b = mem["plain"]["state_bytes"]
  base_dev = mem["plain"]["state_bytes_max_device"]
  pbytes = nbytes(params)
  out = dict(
      devices=d, mesh=dict(zip(("data", "model"), shape)), backend=jax.default_backend(),
      model=f"MLP 784-{'-'.join([str(args.width)] * args.depth)}-10", batch=args.batch,
      num_groups=G, param_bytes=pbytes, param_bytes_max_device=max_device_bytes(params),
      memory={k: dict(v, overhead_bytes=v["state_bytes"] - base_b,
                      overhead_bytes_max_device=v["state_bytes_max_device"] - base_dev)
              for k, v in mem.items()},
      step_time_median_s=med,
      step_time_ratio_vs_plain={k: med[k] / med["plain"] for k in med},
      compile_plus_first_step_s=t_compile, rounds=args.rounds, collectives=coll)
  print(json.dumps(out, indent=1))

  print(f"\n{out['model']}, batch {args.batch}, {d} {out['backend']} devices, mesh {shape} "
        f"(data, model), G = {G} groups, params {pbytes / 2**20:.2f} MiB")
  print(f"{'optimizer':<12} {'state bytes':>14} {'overhead':>12} {'per dev max':>12} {'dev overhead':>13}")
  for k, v in out["memory"].items():
    print(f"{k:<12} {v['state_bytes']:>14,} {v['overhead_bytes']:>12,} {v['state_bytes_max_device']:>12,} "
          f"{v['overhead_bytes_max_device']:>13,}")
  print(f"  HESSO overhead = 4 + 2*G = {4 + 2 * G} bytes expected (count + two bool masks)")
  print(f"\n{'step':<14} {'median ms':>10} {'x plain':>8}")
  for k in med:
    print(f"{k:<14} {med[k] * 1e3:>10.2f} {out['step_time_ratio_vs_plain'][k]:>8.2f}")
  print(f"\n{'collectives':<12} {'count':>6} {'elements':>10} {'largest':>9}")
  for k, v in coll.items():
    print(f"{k:<12} {v['count']:>6} {v['elements']:>10,} {v['largest']:>9,}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
