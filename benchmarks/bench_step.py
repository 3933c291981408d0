"""HESSO / HESSO-CRIC train-step time relative to the plain optax step.

For the digits-size CNN (experiments.models.DigitsCNN, 8x8x1, BatchNorm in train mode) and a
small GPT-style char LM (experiments.models.CharGPT), a jitted train step (forward + grad +
optimizer update + apply_updates) is timed for: plain adam; hesso(adam) inside a pruning period
(``mid``: j != 0) and at a period start (``select``: j == 0, saliency + global ranking);
hesso_cric(adam) during probing and during a corrective cycle. Each variant is timed at a fixed
optimizer state reached by actually running the schedule (the same state is fed every call, so
the same phase runs each time). Variants are interleaved; ratios are medians of per-round ratios.

    python -m benchmarks.bench_step [--small]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hesso_jax as hj
from benchmarks.common import interleaved, paired_ratio, table, write_json
from experiments.models import CharGPT, DigitsCNN


def make_task(name):
  key = jax.random.PRNGKey(0)
  if name == "digits_cnn":
    model = DigitsCNN()
    x = jax.random.normal(key, (64, 8, 8, 1))
    y = jax.random.randint(key, (64,), 0, 10)
    v = model.init(key, x)

    def loss_fn(params, bs, x, y):
      logits, new = model.apply({"params": params, "batch_stats": bs}, x, train=True,
                                mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

    space = hj.discover(lambda v, x: model.apply(v, x, train=False), v, x).subtree("params")
    return v["params"], v["batch_stats"], loss_fn, (x, y), space
  if name == "char_gpt":
    model = CharGPT(vocab_size=65, block_size=64, d_model=96, num_heads=4, num_layers=2)
    ids = jax.random.randint(key, (16, 64), 0, 65)
    tgt = jnp.roll(ids, -1, axis=1)
    v = model.init(key, ids)

    def loss_fn(params, bs, x, y):
      logits = model.apply({"params": params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), bs

    space = hj.discover(lambda v, x: model.apply(v, x), v, ids).subtree("params")
    return v["params"], {}, loss_fn, (ids, tgt), space
  raise ValueError(name)


def make_step(tx, loss_fn, needs_value):
  def step(params, bs, opt_state, x, y):
    (loss, bs), g = jax.value_and_grad(loss_fn, has_aux=True)(params, bs, x, y)
    if needs_value:
      upd, opt_state = tx.update(g, opt_state, params, value=loss)
    else:
      upd, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, upd), bs, opt_state, loss
  return jax.jit(step)


def advance(step, params, bs, opt_state, batch, n):
  for _ in range(n):
    params, bs, opt_state, _ = step(params, bs, opt_state, *batch)
  return params, bs, opt_state


def bench_model(name, repeats, inner):
  t_start = time.perf_counter()
  params, bs, loss_fn, batch, space = make_task(name)
  base = optax.adam(1e-3)
  variants = {}
  # plain optax
  st = make_step(base, loss_fn, False)
  variants["adam"] = (st, *advance(st, params, bs, base.init(params), batch, 3))
  # HESSO: warmup 0, one period of 100 steps; count 0 selects, count 5 is mid-period
  tx = hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=0, pruning_steps=100)
  st = make_step(tx, loss_fn, False)
  s0 = tx.init(params)
  variants["hesso_select"] = (st, params, bs, s0)
  variants["hesso_mid"] = (st, *advance(st, params, bs, s0, batch, 5))
  # HESSO-CRIC: probing at count 2 (even: trial projection), cycle 0 at cycles_start + 3
  cric = getattr(hj, "hesso_cric", None)
  sched = None
  if cric is not None:
    kw = dict(target_group_sparsity=0.5, start_cric_step=0, sampling_steps=10,
              max_cycle_period=3, hybrid_training_steps=20)
    tx = cric(base, space, **kw)
    sched = hj.optim.cric.cric_schedule(space, start_cric_step=0, sampling_steps=10,
                                        max_cycle_period=3, hybrid_training_steps=20)
    st = make_step(tx, loss_fn, True)
    p, b, s = advance(st, params, bs, tx.init(params), batch, 2)
    variants["cric_probe"] = (st, p, b, s)
    p, b, s = advance(st, p, b, s, batch, sched["cycles_start"] + 3 - 2)
    variants["cric_cycle"] = (st, p, b, s)
  setup = time.perf_counter() - t_start
  calls = {k: (lambda f=f, p=p, b=b, s=s: f(p, b, s, *batch)) for k, (f, p, b, s) in variants.items()}
  times = interleaved(calls, repeats=repeats, inner=inner, warmup=3)
  rows = []
  for k in variants:
    r = paired_ratio(times[k], times["adam"])
    rows.append({"model": name, "variant": k, "median_ms": 1e3 * float(np.median(times[k])),
                 "ratio_vs_adam": r["median"], "q25": r["q25"], "q75": r["q75"],
                 "min_ratio": r["min_ratio"]})
  n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
  return rows, {"params": n_params, "groups": space.num_groups,
                "prunable_spaces": len(space.prunable_spaces), "cric_schedule": sched,
                "setup_and_compile_s": setup, "timing_s": time.perf_counter() - t_start - setup}


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true")
  a = ap.parse_args(argv)
  repeats, inner = (15, 5) if a.small else (24, 8)
  rows, info = [], {}
  for name in ("digits_cnn", "char_gpt"):
    r, i = bench_model(name, repeats, inner)
    rows += r
    info[name] = i
  write_json("step", {"small": a.small, "repeats": repeats, "inner": inner, "models": info,
                      "rows": rows})
  print("\n== train step time (jit, grad + update), ratio to plain adam, interleaved ==")
  print(table(rows, ["model", "variant", "median_ms", "ratio_vs_adam", "q25", "q75", "min_ratio"],
              {"median_ms": "{:.3f}", "ratio_vs_adam": "{:.3f}", "q25": "{:.3f}", "q75": "{:.3f}",
               "min_ratio": "{:.3f}"}))
  for k, i in info.items():
    print(f"{k}: setup+compile {i['setup_and_compile_s']:.1f} s, timing {i['timing_s']:.1f} s")


if __name__ == "__main__":
  main()
