"""Multi-device scenarios for tests/test_sharding.py and tests/test_checkpoint.py.

Run as a subprocess with 8 simulated CPU devices (the rest of the suite keeps 1 device)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python tests/_multidevice_worker.py all|hesso|cric CKPT_DIR

It prints one JSON line (prefixed ``RESULT ``) of raw measurements; the tests assert on them.
The helpers (model, data, training step) are importable for in-process tests too.
"""

from __future__ import annotations

import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import hesso_jax as hj

BATCH = 32


class SmallCNN(nn.Module):
  """conv(8) -> relu -> conv(16) -> relu -> flatten -> dense(32) -> relu -> dense(10)."""

  c1: int = 8
  c2: int = 16
  hidden: int = 32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.c1, (3, 3), name="conv0")(x))
    x = nn.relu(nn.Conv(self.c2, (3, 3), strides=(2, 2), name="conv1")(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, name="fc")(x))
    return nn.Dense(10, name="head")(x)


def setup(kind: str = "hesso", *, c1: int = 8, num_steps: int | None = None, seed: int = 0):
  """(model, params, space, tx, batches xs/ys, num_steps, save_at) for a small pruning run."""
  model = SmallCNN(c1=c1)
  rng = np.random.default_rng(seed)
  xs_all = rng.normal(size=(8 * BATCH, 8, 8, 1)).astype(np.float32)
  w = rng.normal(size=(64, 10)).astype(np.float32)
  ys_all = np.argmax(xs_all.reshape(len(xs_all), -1) @ w, axis=1).astype(np.int32)
  variables = model.init(jax.random.key(seed), xs_all[:1])
  space = hj.discover(model.apply, variables, xs_all[:1]).subtree("params")
  params = variables["params"]
  base = optax.adam(1e-2)
  if kind == "hesso":
    tx = hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=2, pruning_steps=8,
                  pruning_periods=2)
    steps, save_at = 12, 7  # periods at steps 2-5 and 6-9; after 7 steps: some pruned + redundant
  elif kind == "cric":
    kw = dict(start_cric_step=2, sampling_steps=3, max_cycle_period=2, hybrid_training_steps=3,
              trial_sparsities=(0.5,))
    tx = hj.hesso_cric(base, space, target_group_sparsity=0.5, **kw)
    sched = hj.optim.cric.cric_schedule(space, **kw)
    steps = sched["latest_done"] + 2
    save_at = sched["cycles_start"] + 1  # mid-cycle: parameter cache and violating set live
  else:
    raise ValueError(kind)
  steps = num_steps or steps
  n = steps * BATCH
  idx = np.arange(n) % len(xs_all)
  xs = xs_all[idx].reshape(steps, BATCH, 8, 8, 1)
  ys = ys_all[idx].reshape(steps, BATCH)
  return model, params, space, tx, xs, ys, steps, save_at


def make_step(model, tx, *, in_shardings=None, out_shardings=None):
  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  if in_shardings is None:
    return jax.jit(step)
  return jax.jit(step, in_shardings=in_shardings, out_shardings=out_shardings)


def run(step, params, state, xs, ys, start, stop, put=lambda a: a):
  for t in range(start, stop):
    params, state = step(params, state, put(xs[t]), put(ys[t]))
  return params, state


def max_diff(a, b) -> float:
  d = jax.tree_util.tree_map(lambda u, v: float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)), initial=0.0)), a, b)
  return max(jax.tree_util.tree_leaves(d))


def mesh_2x4():
  # Auto axes: in this JAX, make_mesh defaults to Explicit axes, which flax's conv rejects
  return jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def sharded_setup(model, params, tx, mesh):
  """(sharded params, sharded state, jitted step, batch putter, param shardings, state shardings)."""
  p_sh = hj.param_shardings(params, mesh)
  s_sh = hj.opt_state_shardings(tx, jax.device_put(params, p_sh))
  b_sh = NamedSharding(mesh, P("data"))
  params_s = jax.device_put(params, p_sh)
  state_s = hj.sharded_init(tx, params_s)
  step = make_step(model, tx, in_shardings=(p_sh, s_sh, b_sh, b_sh), out_shardings=(p_sh, s_sh))
  return params_s, state_s, step, (lambda a: jax.device_put(a, b_sh)), p_sh, s_sh


def _the_state(state):
  return hj.optim.find_pruning_states(state)[0]


# ----------------------------------------------------------------------------------------------
# scenarios
# ----------------------------------------------------------------------------------------------


def scenario(kind: str, ckpt_dir: str) -> dict:
  """1-device run vs sharded run (2x4 mesh), and sharded save mid-pruning -> restore -> continue."""
  model, params, space, tx, xs, ys, steps, save_at = setup(kind)
  # 1-device reference (device 0, no sharding)
  step1 = make_step(model, tx)
  p1, s1 = run(step1, params, tx.init(params), xs, ys, 0, steps)

  mesh = mesh_2x4()
  params_s, state_s, step, put, p_sh, s_sh = sharded_setup(model, params, tx, mesh)
  init_shardings_ok = all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in zip(
      jax.tree_util.tree_leaves(state_s), jax.tree_util.tree_leaves(s_sh)))
  # no host round trip in the step: batches are put up front, the loop runs under a transfer guard
  xs_d = [put(x) for x in xs]
  ys_d = [put(y) for y in ys]
  hlo = step.lower(params_s, state_s, xs_d[0], ys_d[0]).as_text()
  with jax.transfer_guard("disallow"):
    pa, sa = params_s, state_s
    for t in range(steps):
      pa, sa = step(pa, sa, xs_d[t], ys_d[t])
      if t + 1 == save_at:
        pb, sb = pa, sa
    jax.block_until_ready((pa, sa))

  st, st0 = _the_state(sa), _the_state(state_s)
  mu = jax.tree_util.tree_leaves(optax.tree_utils.tree_get(sa, "mu"))
  p_leaves = jax.tree_util.tree_leaves(pa)
  out = dict(
      kind=kind,
      num_groups=int(space.num_groups),
      steps=steps,
      max_param_diff=max_diff(p1, pa),
      masks_equal=bool(np.array_equal(np.asarray(hj.pruned_mask(s1)), np.asarray(st.pruned))),
      num_pruned_1dev=int(np.sum(np.asarray(hj.pruned_mask(s1)))),
      num_pruned_sharded=int(np.sum(np.asarray(st.pruned))),
      mask_replicated=bool(st.pruned.sharding.is_fully_replicated
                           and st.redundant.sharding.is_fully_replicated
                           and st.count.sharding.is_fully_replicated),
      init_mask_replicated=bool(st0.pruned.sharding.is_fully_replicated),
      init_shardings_ok=bool(init_shardings_ok),
      mu_follows_params=all(m.sharding.is_equivalent_to(p.sharding, p.ndim) for m, p in zip(mu, p_leaves)),
      num_sharded_params=sum(not p.sharding.is_fully_replicated for p in p_leaves),
      num_params=len(p_leaves),
      cache_follows_params=(all(c.sharding.is_equivalent_to(p.sharding, p.ndim) for c, p in zip(
          jax.tree_util.tree_leaves(st.cache), p_leaves)) if kind == "cric" else None),
      host_callbacks_in_hlo=("callback" in hlo.lower()),
      zeros_exact=bool(np.all(np.asarray(space.group_norms(pa))[np.asarray(st.pruned)] == 0.0)),
  )

  # interrupted: save mid-pruning, drop the live arrays, restore into the sharded layout, continue
  stb = _the_state(sb)
  mid = dict(pruned=int(np.sum(np.asarray(stb.pruned))), redundant=int(np.sum(np.asarray(stb.redundant))),
             active=int(np.sum(np.asarray(stb.active))) if kind == "cric" else None)
  d = os.path.join(ckpt_dir, kind)
  hj.save_checkpoint(d, save_at, pb, sb, space=space)
  del pb, sb
  abs_p = hj.abstract_like(params, p_sh)
  abs_s = hj.abstract_opt_state(tx, abs_p)
  pr, sr = hj.restore_checkpoint(d, hj.latest_step(d), abs_p, abs_s, space=space)
  restored_sharded = all(r.sharding.is_equivalent_to(s, r.ndim) for r, s in zip(
      jax.tree_util.tree_leaves(pr), jax.tree_util.tree_leaves(p_sh)))
  restored_state_sharded = all(r.sharding.is_equivalent_to(s, r.ndim) for r, s in zip(
      jax.tree_util.tree_leaves(sr), jax.tree_util.tree_leaves(s_sh)))
  for t in range(save_at, steps):
    pr, sr = step(pr, sr, xs_d[t], ys_d[t])
  str_ = _the_state(sr)
  out["resume"] = dict(
      save_at=save_at, mid=mid,
      max_param_diff=max_diff(pa, pr),
      max_state_diff=max_diff(sa, sr),
      masks_equal=bool(np.array_equal(np.asarray(st.pruned), np.asarray(str_.pruned))
                       and np.array_equal(np.asarray(st.redundant), np.asarray(str_.redundant))),
      restored_sharded=bool(restored_sharded),
      restored_state_sharded=bool(restored_state_sharded),
      type_ok=type(sr).__name__ == type(sa).__name__,
  )
  return out


def scenario_explicit(kind: str) -> dict:
  """A plain-jnp MLP under an *explicit*-axes mesh (jax.make_mesh's default, sharding in types)."""
  from jax.sharding import AxisType

  rng = np.random.default_rng(1)
  v = {"w1": rng.normal(size=(16, 32)).astype(np.float32), "b1": np.zeros(32, np.float32),
       "w2": rng.normal(size=(32, 32)).astype(np.float32) / 6, "b2": np.zeros(32, np.float32),
       "w3": rng.normal(size=(32, 10)).astype(np.float32) / 6}
  x = rng.normal(size=(16, 16)).astype(np.float32)
  y = rng.integers(0, 10, 16).astype(np.int32)
  explicit = [False]

  def f(p, x):
    h = jax.nn.relu(x @ p["w1"] + p["b1"])  # TP: w1 columns over 'model'
    kw = dict(out_sharding=P("data", None)) if explicit[0] else {}
    h = jax.nn.relu(jnp.matmul(h, p["w2"], **kw) + p["b2"])  # w2 rows over 'model'
    return h @ p["w3"]

  space = hj.discover(f, v, x)
  if kind == "hesso":
    tx = hj.hesso(optax.adam(1e-2), space, target_group_sparsity=0.5, warmup_steps=1, pruning_steps=4)
    steps = 7
  else:
    kw = dict(start_cric_step=1, sampling_steps=2, max_cycle_period=2, hybrid_training_steps=2,
              trial_sparsities=(0.5,))
    tx = hj.hesso_cric(optax.adam(1e-2), space, target_group_sparsity=0.5, **kw)
    steps = hj.optim.cric.cric_schedule(space, **kw)["latest_done"] + 1

  def step(p, s, x, y):
    loss, g = jax.value_and_grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(f(p, x), y).mean())(p)
    u, s = tx.update(g, s, p, value=loss)
    return optax.apply_updates(p, u), s

  p1, s1 = run(jax.jit(step), v, tx.init(v), [x] * steps, [y] * steps, 0, steps)
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  explicit[0] = True
  with jax.set_mesh(mesh):
    specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P(),
             "w3": P(None, None)}
    params = jax.device_put(v, {k: NamedSharding(mesh, sp) for k, sp in specs.items()})
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ys = jax.device_put(y, NamedSharding(mesh, P("data")))
    state = hj.sharded_init(tx, params)
    p2, s2 = run(jax.jit(step), params, state, [xs] * steps, [ys] * steps, 0, steps)
  return dict(kind=kind, max_param_diff=max_diff(p1, p2),
              masks_equal=bool(np.array_equal(np.asarray(hj.pruned_mask(s1)), np.asarray(hj.pruned_mask(s2)))),
              num_pruned=int(np.sum(np.asarray(hj.pruned_mask(s2)))), num_groups=int(space.num_groups),
              w1_sharded=not p2["w1"].sharding.is_fully_replicated,
              mask_replicated=bool(_the_state(s2).pruned.sharding.is_fully_replicated))


_CACHE: dict = {}


def results(tmp_dir: str) -> dict:
  """Run this file in a subprocess with 8 CPU devices (once per pytest process) and parse it."""
  import subprocess

  if "r" not in _CACHE:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "all", tmp_dir], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
      raise RuntimeError(f"multi-device worker failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-6000:]}")
    _CACHE["r"] = json.loads(lines[-1][len("RESULT "):])
  return _CACHE["r"]


def results_once(root: str) -> dict:
  """:func:`results`, computed once per test run: the first pytest process (of the xdist workers
  sharing ``root``) runs the worker, under a file lock, and leaves its JSON for the others."""
  import fcntl

  path = os.path.join(root, "multidevice_results.json")
  with open(os.path.join(root, "multidevice.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not os.path.exists(path):
      ckpt = os.path.join(root, "md_ckpt")
      os.makedirs(ckpt, exist_ok=True)
      r = results(ckpt)
      with open(path + ".tmp", "w") as f:
        json.dump(r, f)
      os.replace(path + ".tmp", path)
    with open(path) as f:
      return json.load(f)


def main(argv):
  what = argv[1]
  out = {"devices": jax.device_count()}
  kinds = ("hesso", "cric") if what == "all" else (what,)
  for kind in kinds:
    out[kind] = scenario(kind, argv[2])
    out["explicit_" + kind] = scenario_explicit(kind)
  print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
  main(sys.argv)
