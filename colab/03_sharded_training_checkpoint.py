# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %%
# Install hesso_jax and this notebook's extras when they are missing (a fresh Colab runtime).
import importlib.util
import os
import pathlib
import subprocess
import sys

REPO = "https://github.com/hesso-jax/hesso-jax"  # [project.urls] Repository in pyproject.toml
EXTRAS = "examples"                              # the pip extras this notebook needs
NEEDS = ("hesso_jax", "sklearn")
if any(importlib.util.find_spec(m) is None for m in NEEDS):
    # HESSO_JAX_WHEEL: a local wheel to install instead (CI runs the notebooks from the built wheel).
    src = os.environ.get("HESSO_JAX_WHEEL") or f"git+{REPO}"
    if os.path.exists(src):
        src = pathlib.Path(src).resolve().as_uri()
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"hesso-jax[{EXTRAS}] @ {src}"])

# 8 simulated devices on a CPU runtime (before anything imports jax). On a TPU / multi-GPU runtime
# set this to False.
SIMULATE_DEVICES = True
if SIMULATE_DEVICES:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"

# HESSO_SMALL=1 (set by CI / `make notebooks`) runs a few steps of small models so the whole
# notebook executes in about a minute; leave it unset for the real, full-size run.
SMALL = os.environ.get("HESSO_SMALL", "0") == "1"
print("small (CI) mode" if SMALL else "full mode")

# %% [markdown]
# # Sharded HESSO training on a device mesh, with a mid-pruning checkpoint
#
# HESSO's update is a pure, jittable function of arrays whose group maths are static-shape
# reshapes and reductions, so it runs unchanged under `jax.jit` with `NamedSharding`: XLA inserts
# the collectives. What you need is the *optimizer state's* sharding (to initialise it in place
# and to restore a checkpoint into), which `hj.opt_state_shardings` derives from the params'.
#
# This notebook
#
# 1. builds a `jax.sharding.Mesh` over 8 devices with a `'data'` axis,
# 2. shards the params (FSDP-style) and the batch with `NamedSharding`,
# 3. jits the HESSO train step with `in_shardings` / `out_shardings`,
# 4. saves `(params, opt_state)` **in the middle of the pruning phase** with orbax
#    (`hj.save_checkpoint`), restores them into the sharded layout (`hj.restore_checkpoint`),
#    continues, and checks the result equals an uninterrupted run.
#
# **8 devices on a CPU runtime.** The first cell sets
# `os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"` (and `JAX_PLATFORMS=cpu`)
# *before* anything imports jax, so a CPU runtime shows 8 devices. On a TPU runtime (8 cores) or
# a multi-GPU runtime, skip this: set `SIMULATE_DEVICES = False` in the first cell and the same
# code runs on the real devices. If you change it after jax was imported, restart the runtime.

# %%
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import hesso_jax as hj

print(jax.device_count(), "devices:", jax.devices())
assert jax.device_count() >= 8, "restart the runtime: XLA_FLAGS must be set before jax is imported"

# %% [markdown]
# ## Data and model
#
# Digits again (`examples.load_digits(flat=True)`: 64 features, offline), and an MLP written as a plain
# function of a dict of arrays. Batches are a deterministic function of the step index, so a
# resumed run sees exactly the batches the uninterrupted one saw.

# %%
from hesso_jax import examples

x_train, y_train, x_test, y_test = examples.load_digits(flat=True)   # (1347, 64) / (450, 64)
BATCH = 64                                          # divisible by the 8 devices

def get_batch(step):
    idx = np.random.default_rng(step).choice(len(x_train), BATCH, replace=False)
    return x_train[idx], y_train[idx]

HIDDEN = (64, 64) if SMALL else (512, 256)

def init_params(key):
    sizes = (64, *HIDDEN, 10)
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"fc{i}": {"w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), "b": jnp.zeros(b)}
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}

def mlp(params, x):
    n = len(params)
    for i in range(n):
        x = x @ params[f"fc{i}"]["w"] + params[f"fc{i}"]["b"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x

def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x), y).mean()

params0 = init_params(jax.random.PRNGKey(0))
space = hj.discover(mlp, params0, x_train[:BATCH])
print(space.summary())

# %% [markdown]
# ## Mesh and shardings
#
# `hj.param_shardings(params, mesh)` is a convenience default (split the largest non-last axis
# over `'data'`, FSDP-style, when the mesh axis divides it; replicate small leaves). Any
# `NamedSharding`s work. The batch is split over `'data'`.

# %%
mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
p_shard = hj.param_shardings(params0, mesh)
batch_shard = NamedSharding(mesh, P("data"))
params0 = jax.device_put(params0, p_shard)
for path, leaf in jax.tree_util.tree_leaves_with_path(params0):
    print(f"{jax.tree_util.keystr(path):<16} {str(leaf.shape):<12} {leaf.sharding.spec}")

# %% [markdown]
# ## The HESSO optimizer and its sharded state
#
# `hj.opt_state_shardings(tx, params)` gives every optimizer-state leaf that mirrors a parameter
# (Adam's `mu`/`nu`, momentum) that parameter's sharding, and replicates the rest (step counts,
# the `(num_groups,)` masks). We initialise the state directly in that layout.

# %%
STEPS = 60 if SMALL else 600
WARMUP, PRUNING_STEPS, PERIODS = STEPS // 6, STEPS // 2, 3
CKPT_STEP = WARMUP + PRUNING_STEPS // 2              # in the middle of the pruning phase

base = optax.sgd(optax.cosine_decay_schedule(0.05, STEPS), momentum=0.9)
tx = hj.hesso(base, space, target_group_sparsity=0.5, warmup_steps=WARMUP,
              pruning_steps=PRUNING_STEPS, pruning_periods=PERIODS)
s_shard = hj.opt_state_shardings(tx, params0)
opt_state0 = jax.jit(tx.init, out_shardings=s_shard)(params0)

def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params, value=loss)
    return optax.apply_updates(params, updates), opt_state, loss

step_fn = jax.jit(train_step,
                  in_shardings=(p_shard, s_shard, batch_shard, batch_shard),
                  out_shardings=(p_shard, s_shard, NamedSharding(mesh, P())),
                  donate_argnums=(0, 1))

def train(params, opt_state, start, stop):
    for i in range(start, stop):
        x, y = get_batch(i)
        x, y = jax.device_put(x, batch_shard), jax.device_put(y, batch_shard)
        params, opt_state, loss = step_fn(params, opt_state, x, y)
        # Simulated CPU devices only: wait for each step, so that no two multi-device programs
        # are in flight at once (XLA:CPU's collectives can otherwise deadlock on few cores).
        # Unnecessary on real TPUs/GPUs, where async dispatch is what you want.
        if SIMULATE_DEVICES:
            loss.block_until_ready()
    return params, opt_state, loss

copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)   # the step donates its inputs
print("warm-up", WARMUP, "| pruning steps", PRUNING_STEPS, "in", PERIODS, "periods |",
      "checkpoint at", CKPT_STEP)

# %% [markdown]
# ## Run A: uninterrupted

# %%
t0 = time.perf_counter()
params_a, state_a, loss_a = train(copy(params0), copy(opt_state0), 0, STEPS)
acc = lambda p: float(jnp.mean(jnp.argmax(mlp(p, x_test), -1) == y_test))
gs = lambda p: float(jnp.mean(space.group_norms(p) == 0))
print(f"{STEPS} sharded steps in {time.perf_counter() - t0:.1f} s: loss {float(loss_a):.4f}, "
      f"test accuracy {100 * acc(params_a):.2f}%, group sparsity {100 * gs(params_a):.1f}%")

# %% [markdown]
# ## Run B: train to the middle of pruning, checkpoint, "crash", restore, continue
#
# `hj.save_checkpoint` writes `params` and `opt_state` with orbax (each device's shards) plus a
# small JSON record of the structure and search space. To restore, describe the target as
# `jax.ShapeDtypeStruct`s *with shardings* (`hj.abstract_like`, `hj.abstract_opt_state`): orbax
# reads each array straight into that layout. The record is checked first, so restoring with a
# different search space or optimizer fails with a readable error.
#
# (Without the helpers: `ocp.StandardCheckpointer().save(path, {"params": p, "opt_state": s})` and
# `.restore(path, abstract_tree)` with the same abstract target do the same job.)

# %%
ckpt_dir = tempfile.mkdtemp(prefix="hesso_ckpt_")
params_b, state_b, _ = train(copy(params0), copy(opt_state0), 0, CKPT_STEP)
print(f"at step {CKPT_STEP}: {int(hj.pruned_mask(state_b).sum())} groups committed to zero, "
      f"group sparsity {100 * gs(params_b):.1f}% (pruning is in progress)")
path = hj.save_checkpoint(ckpt_dir, CKPT_STEP, params_b, state_b, space=space)
print("saved", path, os.listdir(path))
del params_b, state_b                              # the "crash"

# %%
abs_params = hj.abstract_like(params0, p_shard)    # shapes + dtypes + target shardings
abs_state = hj.abstract_opt_state(tx, abs_params)
step = hj.latest_step(ckpt_dir)
params_r, state_r = hj.restore_checkpoint(ckpt_dir, step, abs_params, abs_state, space=space)
print("restored step", step, "| fc0/w sharding:", params_r["fc0"]["w"].sharding.spec)
assert all(a.sharding == s for a, s in zip(jax.tree_util.tree_leaves(params_r),
                                           jax.tree_util.tree_leaves(p_shard)))

params_b, state_b, loss_b = train(params_r, state_r, step, STEPS)
diff_p = max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree_util.tree_leaves(params_a), jax.tree_util.tree_leaves(params_b)))
same_mask = bool(jnp.all(hj.pruned_mask(state_a) == hj.pruned_mask(state_b)))
print(f"resumed run: loss {float(loss_b):.4f}, test accuracy {100 * acc(params_b):.2f}%, "
      f"group sparsity {100 * gs(params_b):.1f}%")
print(f"max |uninterrupted - resumed| over all params = {diff_p:.3g}; same pruned groups: {same_mask}")
assert diff_p == 0.0 and same_mask

# %% [markdown]
# ## A wrong restore target is caught
#
# Restoring into an optimizer built on a different search space (here: another group count)
# raises `hj.CheckpointMismatchError` before any array is read.

# %%
other_space = hj.discover(mlp, {k: v for k, v in init_params(jax.random.PRNGKey(1)).items()},
                          x_train[:BATCH], ignore=r"^fc0/")
other_tx = hj.hesso(base, other_space, target_group_sparsity=0.5, warmup_steps=WARMUP,
                    pruning_steps=PRUNING_STEPS)
try:
    hj.restore_checkpoint(ckpt_dir, step, abs_params, hj.abstract_opt_state(other_tx, abs_params))
except hj.CheckpointMismatchError as e:
    print("CheckpointMismatchError:", str(e).splitlines()[1][:200])

# %% [markdown]
# ## Compress the sharded result
#
# Surgery works on the gathered arrays; the compressed MLP gives the same logits.

# %%
params_host = jax.device_get(params_b)
small_fn, small = hj.compress(mlp, params_host, space, x_test)
d = float(jnp.max(jnp.abs(small_fn(small, x_test) - mlp(params_host, x_test))))
print("hidden widths:", [small[f"fc{i}"]["w"].shape[1] for i in range(len(HIDDEN))],
      f"(from {list(HIDDEN)}); max |compressed - full| = {d:.2e}")
assert d <= 1e-5
shutil.rmtree(ckpt_dir, ignore_errors=True)
