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
NEEDS = ("hesso_jax", "sklearn", "matplotlib")
if any(importlib.util.find_spec(m) is None for m in NEEDS):
    # HESSO_JAX_WHEEL: a local wheel to install instead (CI runs the notebooks from the built wheel).
    src = os.environ.get("HESSO_JAX_WHEEL") or f"git+{REPO}"
    if os.path.exists(src):
        src = pathlib.Path(src).resolve().as_uri()
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"hesso-jax[{EXTRAS}] @ {src}"])

# HESSO_SMALL=1 (set by CI / `make notebooks`) runs a few steps of small models so the whole
# notebook executes in about a minute; leave it unset for the real, full-size run.
SMALL = os.environ.get("HESSO_SMALL", "0") == "1"
print("small (CI) mode" if SMALL else "full mode")

# %% [markdown]
# # hesso_jax quickstart: prune a CNN to 50% of its channels, exactly
#
# [HESSO](https://arxiv.org/abs/2312.09411) (Only-Train-Once v3) is a *structured* pruning
# optimizer: during ordinary training it progressively drives whole channels (conv filters with
# their bias and batch-norm scale/shift, hidden units, attention heads...) to **exactly 0.0**, so
# they can be cut out of the network afterwards without changing its output.
#
# This notebook walks through the whole `hesso_jax` workflow on scikit-learn's bundled 8x8 digits
# (no download, runs on a CPU runtime in about a minute):
#
# 1. `hj.discover` finds the prunable channel groups from the model's jaxpr;
# 2. train a dense baseline and the same model under `hj.hesso(...)` at 50% group sparsity;
# 3. `hj.compress` cuts the zero groups out; the compressed network gives the same outputs;
# 4. `hj.count` compares parameters / FLOPs, and `hj.export` produces a serialisable StableHLO
#    artifact of the small network.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax

import hesso_jax as hj

print("jax", jax.__version__, "on", jax.devices()[0].platform, "| hesso_jax", hj.__version__)

# %% [markdown]
# ## Data and model
#
# `hesso_jax.examples` holds the small pieces the tutorials share:
#
# * `load_digits()`: scikit-learn's bundled digits (1797 grayscale 8x8 images of 10 classes, no
#   download), pixels scaled to [0, 1], NHWC layout, a stratified 75/25 split;
# * `batches(x, y, batch_size, seed=...)`: shuffled mini-batches (a fixed seed, so the dense and
#   the HESSO run see the same data);
# * `DigitsCNN`: an ordinary flax.linen CNN, nothing HESSO-specific in it: three conv-BN-ReLU
#   layers, two max-pools, a hidden dense layer and the logits.

# %%
from hesso_jax import examples

data = examples.load_digits()
x_train, y_train, x_test, y_test = data
print("train", x_train.shape, "test", x_test.shape)

model = examples.DigitsCNN(features=(8, 16, 32), hidden=32) if SMALL else examples.DigitsCNN()
variables = model.init(jax.random.PRNGKey(0), x_train[:2])   # {'params', 'batch_stats'}
fn = lambda v, x: model.apply(v, x, train=False)              # the function HESSO analyses
print(jax.tree_util.tree_map(jnp.shape, variables["params"]))


# %% [markdown]
# ## 1. Discover the zero-invariant groups
#
# `hj.discover(fn, variables, *args)` traces `fn` to a jaxpr and joins every parameter axis that
# has to be pruned together into a *channel space*: e.g. `conv0`'s output channels live on
# `conv0/kernel[3]`, `conv0/bias`, `bn0/scale`, `bn0/bias`, the running statistics and
# `conv1/kernel[2]`. Each channel of a prunable space is one group (ZIG). The logits' axis is not
# prunable: it reaches the function's output.

# %%
space = hj.discover(fn, variables, x_train[:2])
print(space.summary())
print("prunable groups:", space.num_groups)

# %% [markdown]
# ## 2. Train dense, then with HESSO
#
# One jitted train step serves both runs. The optimizer sees `params` only, so it gets
# `space.subtree('params')`; batch-norm statistics are updated by the forward pass.
#
# **HESSO must be the outermost optax transformation**: its update is computed so that
# `optax.apply_updates` lands exactly on 0.0. Learning-rate schedules, momentum, weight decay and
# clipping go *inside* the base optimizer. `tx.update` also accepts `value=loss` (needed by
# `hj.hesso_cric`, ignored by `hj.hesso`).

# %%
STEPS = 100 if SMALL else 1500
WARMUP, PRUNING_STEPS, PERIODS = (STEPS // 10, 3 * STEPS // 10, 3)
BATCH, LR = 64, 0.1
space_p = space.subtree("params")

def base_tx():
    return optax.sgd(optax.cosine_decay_schedule(LR, STEPS), momentum=0.9)

def make_step(tx):
    tx = optax.with_extra_args_support(tx)

    @jax.jit
    def step(variables, opt_state, x, y):
        def loss_fn(params):
            logits, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]

        (loss, bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"], value=loss)
        params = optax.apply_updates(variables["params"], updates)
        return {"params": params, "batch_stats": bs}, opt_state, loss

    return tx, step

group_sparsity = jax.jit(lambda params: jnp.mean(space_p.group_norms(params) == 0.0))

def train(tx, steps=STEPS, log_every=10):
    tx, step = make_step(tx)
    v, opt_state = variables, tx.init(variables["params"])
    hist = {"loss": [], "gs_step": [], "group_sparsity": []}
    stream = examples.batches(x_train, y_train, BATCH, seed=0)
    t0 = time.perf_counter()
    for i in range(steps):
        xb, yb = next(stream)
        v, opt_state, loss = step(v, opt_state, xb, yb)
        hist["loss"].append(loss)
        if (i + 1) % log_every == 0 or i == steps - 1:
            hist["gs_step"].append(i + 1)
            hist["group_sparsity"].append(float(group_sparsity(v["params"])))
    hist["loss"] = [float(a) for a in jax.device_get(hist["loss"])]
    print(f"{steps} steps in {time.perf_counter() - t0:.1f} s")
    return v, opt_state, hist

@jax.jit
def accuracy(v, x, y):
    return jnp.mean(jnp.argmax(fn(v, x), -1) == y)

dense_vars, _, dense_hist = train(base_tx())
print(f"dense test accuracy: {100 * float(accuracy(dense_vars, x_test, y_test)):.2f}%")

# %%
tx = hj.hesso(base_tx(), space_p, target_group_sparsity=0.5, warmup_steps=WARMUP,
              pruning_steps=PRUNING_STEPS, pruning_periods=PERIODS)
hesso_vars, hesso_state, hesso_hist = train(tx)
dense_acc = float(accuracy(dense_vars, x_test, y_test))
hesso_acc = float(accuracy(hesso_vars, x_test, y_test))
gs = float(group_sparsity(hesso_vars["params"]))
print(f"HESSO test accuracy: {100 * hesso_acc:.2f}%  (dense {100 * dense_acc:.2f}%)")
print(f"group sparsity: {100 * gs:.1f}%  ({int(hj.pruned_mask(hesso_state).sum())} of "
      f"{space_p.num_groups} groups committed to exactly 0.0)")

# %% [markdown]
# ### Loss and group sparsity over training
#
# Plain training during the warm-up, then `PERIODS` pruning periods: at the start of each the
# lowest-saliency groups are selected and smoothly "forgotten", reaching exactly zero at the end
# of the period (the staircase).

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
ax.plot(dense_hist["loss"], lw=0.7, alpha=0.8, label="dense loss")
ax.plot(hesso_hist["loss"], lw=0.7, alpha=0.8, label="HESSO loss")
ax.set_yscale("log"); ax.set_xlabel("step"); ax.set_ylabel("train loss")
ax2 = ax.twinx()
ax2.plot(hesso_hist["gs_step"], hesso_hist["group_sparsity"], color="tab:red", lw=2,
         label="HESSO group sparsity")
ax2.set_ylabel("group sparsity", color="tab:red"); ax2.set_ylim(-0.02, 1.02)
fig.legend(loc="upper center", ncol=3, fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Compress: cut the zero groups out
#
# `hj.compress(fn, variables, space, *args)` slices every member axis of every space by the kept
# groups (the full `space`, so the batch-norm statistics are sliced too) and returns a callable
# for the smaller arrays. Its outputs equal the trained network's (to float32 rounding).

# %%
small_fn, small_vars = hj.compress(fn, hesso_vars, space, x_test)
full_out = fn(hesso_vars, x_test)
small_out = small_fn(small_vars, x_test)
max_diff = float(jnp.max(jnp.abs(small_out - full_out)))
print(f"max |compressed - full| = {max_diff:.2e}")
assert max_diff <= 1e-5, max_diff
print("compressed accuracy:", float(jnp.mean(jnp.argmax(small_out, -1) == y_test)))
print(jax.tree_util.tree_map(jnp.shape, small_vars["params"]))

# %%
before = hj.count(fn, hesso_vars, x_test[:1])
# count per image: compress with a single-image input
small_fn1, small_vars1 = hj.compress(fn, hesso_vars, space, x_test[:1])
after = hj.count(small_fn1, small_vars1, x_test[:1])
print(f"{'':>12} {'params':>10} {'FLOPs/image':>12}")
for name, c in (("full", before), ("compressed", after)):
    print(f"{name:>12} {c['params']:>10,} {c['flops']:>12,.0f}")
print(f"kept: {100 * after['params'] / before['params']:.1f}% of params, "
      f"{100 * after['flops'] / before['flops']:.1f}% of FLOPs")

# %% [markdown]
# ## 4. Export the compressed network (StableHLO)
#
# `hj.export` wraps `jax.export`: the result serialises to bytes and can be deserialised and run
# without the model code (here: same process, but it could be another machine).

# %%
exported = hj.export(small_fn, small_vars, x_test)
blob = exported.serialize()
restored = jax.export.deserialize(blob)
out = restored.call(small_vars, x_test)
rt_diff = float(jnp.max(jnp.abs(out - small_out)))
print(f"serialised {len(blob):,} bytes; round-trip max |diff| = {rt_diff:.2e}")
assert rt_diff <= 1e-5

QUICKSTART_RESULT = {"dense_acc": dense_acc, "hesso_acc": hesso_acc, "group_sparsity": gs,
                     "params": (before["params"], after["params"]),
                     "flops": (before["flops"], after["flops"]), "max_diff": max_diff}
print(QUICKSTART_RESULT)

# %% [markdown]
# ## Next
#
# * `02_transformer_pruning.ipynb`: attention heads, q/k/v head dimensions and FFN units of a
#   GPT-style language model, with AdamW and HESSO-CRIC.
# * `03_sharded_training_checkpoint.ipynb`: HESSO on a device mesh, checkpointing mid-pruning with
#   orbax and resuming exactly.
