"""Kill a HESSO run mid-pruning, resume it from an orbax checkpoint, get the uninterrupted result.

    python experiments/checkpoint_resume.py                 # the whole demonstration (3 processes)
    python experiments/checkpoint_resume.py --devices 8     # same, params sharded on 8 CPU devices

The driver runs three fresh Python processes:

1. ``--phase full``: the uninterrupted run, writes its final params/masks to ``full.npz``;
2. ``--phase killed``: the same run, checkpointing every ``--ckpt-every`` steps, SIGKILLs itself at
   step ``--kill-at`` (mid-pruning; no cleanup, no final save);
3. ``--phase resume``: restores the latest checkpoint (into the sharded layout with ``--devices``),
   finishes the run and writes ``resumed.npz``;

then compares: the resumed params must equal the uninterrupted ones (max |diff| <= 1e-6) and the
pruned masks must be identical. Model: a small flax.linen CNN on scikit-learn's digits, search
space from ``hj.discover``. The data order is a pure function of the step, so nothing but
(params, optimizer state) needs to be saved.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--phase", choices=["driver", "full", "killed", "resume"], default="driver")
  ap.add_argument("--workdir", default=None, help="checkpoints and results (default: a temp dir)")
  ap.add_argument("--devices", type=int, default=1, help="simulated CPU devices (mesh data x model)")
  ap.add_argument("--steps", type=int, default=120)
  ap.add_argument("--warmup", type=int, default=30)
  ap.add_argument("--pruning-steps", type=int, default=60)
  ap.add_argument("--periods", type=int, default=3)
  ap.add_argument("--sparsity", type=float, default=0.5)
  ap.add_argument("--ckpt-every", type=int, default=20)
  ap.add_argument("--kill-at", type=int, default=75, help="the killed run dies before this step")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--lr", type=float, default=3e-3)
  return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# one training process
# ------------------------------------------------------------------------------------------------


def train_phase(args):
  if args.devices > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, ROOT)
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import hesso_jax as hj
  from experiments.data import load_digits

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(16, (3, 3), name="conv0")(x))
      x = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = x.reshape((x.shape[0], -1))
      x = nn.relu(nn.Dense(64, name="fc")(x))
      return nn.Dense(10, name="head")(x)

  data = load_digits()
  n = len(data.x_train)

  def batch_at(step):  # the data order is a function of the step: nothing to checkpoint
    per_epoch = n // args.batch
    e, i = divmod(step, per_epoch)
    perm = np.random.default_rng(1000 + e).permutation(n)
    j = perm[i * args.batch:(i + 1) * args.batch]
    return data.x_train[j], data.y_train[j]

  model = CNN()
  variables = model.init(jax.random.key(0), data.x_train[:1])
  space = hj.discover(model.apply, variables, data.x_train[:1]).subtree("params")
  params = variables["params"]
  tx = hj.hesso(optax.adam(args.lr), space, target_group_sparsity=args.sparsity,
                warmup_steps=args.warmup, pruning_steps=args.pruning_steps,
                pruning_periods=args.periods)

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

  def step_fn(p, s, x, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  if args.devices > 1:
    d = args.devices
    shape = (2, d // 2) if d % 2 == 0 else (d, 1)
    mesh = jax.make_mesh(shape, ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    p_sh = hj.param_shardings(params, mesh)
    params = jax.device_put(params, p_sh)
    s_sh = hj.opt_state_shardings(tx, params)
    b_sh = NamedSharding(mesh, P("data"))
    step = jax.jit(step_fn, in_shardings=(p_sh, s_sh, b_sh, b_sh),
                   out_shardings=(p_sh, s_sh, NamedSharding(mesh, P())))
    put = lambda a: jax.device_put(a, b_sh)
    state = hj.sharded_init(tx, params)
  else:
    p_sh = None
    step = jax.jit(step_fn)
    put = jnp.asarray
    state = tx.init(params)

  ckpt_dir = os.path.join(args.workdir, "ckpt")
  start = 0
  if args.phase == "resume":
    start = hj.latest_step(ckpt_dir)
    if start is None:
      raise SystemExit(f"no checkpoint under {ckpt_dir}")
    abs_p = hj.abstract_like(params, p_sh) if p_sh is not None else hj.abstract_like(params)
    abs_s = hj.abstract_opt_state(tx, abs_p)
    params, state = hj.restore_checkpoint(ckpt_dir, start, abs_p, abs_s, space=space)
    print(f"[resume] restored step {start}: {int(np.sum(np.asarray(hj.pruned_mask(state))))} groups "
          f"pruned, {int(np.sum(np.asarray(hj.redundant_mask(state))))} being forgotten", flush=True)

  t0 = time.time()
  for t in range(start, args.steps):
    if args.phase == "killed" and t == args.kill_at:
      print(f"[killed] SIGKILL at step {t} (latest checkpoint: {hj.latest_step(ckpt_dir)})", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    x, y = batch_at(t)
    params, state, loss = step(params, state, put(x), put(y))
    if args.phase == "killed" and (t + 1) % args.ckpt_every == 0:
      hj.save_checkpoint(ckpt_dir, t + 1, params, state, space=space, max_to_keep=2)
      print(f"[killed] step {t + 1}: loss {float(loss):.4f}, checkpoint saved "
            f"({int(np.sum(np.asarray(hj.pruned_mask(state))))} pruned, "
            f"{int(np.sum(np.asarray(hj.redundant_mask(state))))} redundant)", flush=True)

  logits = model.apply({"params": params}, jnp.asarray(data.x_test))
  acc = float(np.mean(np.argmax(np.asarray(logits), -1) == data.y_test))
  mask = np.asarray(hj.pruned_mask(state))
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(os.path.join(args.workdir, f"{args.phase}.npz"), __mask__=mask, __acc__=acc, **flat)
  print(f"[{args.phase}] steps {start}..{args.steps} in {time.time() - t0:.1f}s: test acc {acc:.4f}, "
        f"{int(mask.sum())}/{space.num_groups} groups pruned", flush=True)


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------


def driver(args, argv):
  workdir = args.workdir or tempfile.mkdtemp(prefix="hesso_ckpt_resume_")
  os.makedirs(workdir, exist_ok=True)
  passthru = [a for a in (argv if argv is not None else sys.argv[1:])]
  base = [sys.executable, os.path.abspath(__file__), "--workdir", workdir] + passthru
  if not (args.warmup < args.kill_at < args.warmup + args.pruning_steps):
    print(f"note: --kill-at {args.kill_at} is outside the pruning window", flush=True)

  def run(phase, expect_kill=False):
    r = subprocess.run(base + ["--phase", phase])
    if expect_kill:
      if r.returncode != -signal.SIGKILL:
        raise SystemExit(f"the 'killed' phase should have died by SIGKILL, got rc={r.returncode}")
    elif r.returncode != 0:
      raise SystemExit(f"phase {phase} failed (rc={r.returncode})")

  run("full")
  run("killed", expect_kill=True)
  run("resume")
  a = np.load(os.path.join(workdir, "full.npz"))
  b = np.load(os.path.join(workdir, "resume.npz"))
  keys = [k for k in a.files if not k.startswith("__")]
  diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)
  same_mask = bool(np.array_equal(a["__mask__"], b["__mask__"]))
  ok = diff <= 1e-6 and same_mask and set(a.files) == set(b.files)
  print(f"\nuninterrupted: acc {float(a['__acc__']):.4f}, {int(a['__mask__'].sum())} groups pruned")
  print(f"killed+resumed: acc {float(b['__acc__']):.4f}, {int(b['__mask__'].sum())} groups pruned")
  print(f"max |param diff| = {diff:.3g}, pruned masks identical: {same_mask}")
  print(f"RESUMED == UNINTERRUPTED: {ok}   (workdir {workdir})")
  return 0 if ok else 1


def main(argv=None):
  args = parse_args(argv)
  if args.phase == "driver":
    return driver(args, argv)
  train_phase(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
