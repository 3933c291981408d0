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
NEEDS = ("hesso_jax", "matplotlib")
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
# # Pruning a GPT-style transformer: heads, head dimensions and FFN units
#
# A small character-level language model, trained on the Python standard library's own source
# files (always available, nothing to download). The model is written as **plain JAX functions**
# over a dict of arrays, with explicit q/k/v projections reshaped into heads: `hesso_jax` does
# not need a framework, it reads the jaxpr.
#
# We will see which parts of a transformer `hj.discover` can prune exactly (attention heads, the
# q/k head dimension, the v head dimension, FFN hidden units) and which it cannot (the residual
# stream, because of LayerNorm statistics), then train with `hj.hesso(optax.adamw(...))` and
# optionally `hj.hesso_cric(...)`, and compare validation loss / perplexity with a dense run.

# %%
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import hesso_jax as hj

print("jax", jax.__version__, "on", jax.devices()[0].platform)

# %% [markdown]
# ## Data: characters of the standard library's sources
#
# A fixed list of plain-Python modules next to `os.py`; the last 10% is the validation text.

# %%
FILES = ["os.py", "functools.py", "collections/__init__.py", "textwrap.py", "string.py",
         "contextlib.py", "dataclasses.py", "abc.py", "heapq.py", "bisect.py", "shlex.py",
         "fnmatch.py", "glob.py", "copy.py", "random.py", "statistics.py", "fractions.py",
         "argparse.py", "enum.py", "json/decoder.py", "json/encoder.py", "queue.py"]
root = pathlib.Path(os.__file__).resolve().parent
text = "\n".join((root / f).read_text(encoding="utf-8", errors="replace")
                  for f in FILES if (root / f).is_file())
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
ids = np.array([stoi[c] for c in text], np.int32)
n_val = len(ids) // 10
train_ids, val_ids = ids[:-n_val], ids[-n_val:]
VOCAB = len(chars)
print(f"{len(text):,} characters, vocabulary {VOCAB}, train {len(train_ids):,} / val {len(val_ids):,}")

def windows(data, batch, seq, seed):
    rng = np.random.default_rng(seed)
    while True:
        s = rng.integers(0, len(data) - seq - 1, size=batch)
        w = data[s[:, None] + np.arange(seq + 1)]
        yield w[:, :-1], w[:, 1:]


# %% [markdown]
# ## The model, in plain JAX
#
# Pre-LayerNorm blocks: `x + attn(ln1(x))`, then `x + fc2(gelu(fc1(ln2(x))))`. The attention
# projects `q`, `k`, `v` with separate matrices and reshapes them to `(batch, time, heads, head_dim)`.
# LayerNorm is the textbook one (variance of `x - mean`).

# %%
if SMALL:
    CFG = dict(d_model=32, heads=2, layers=1, seq=32, batch=16, steps=60)
else:
    CFG = dict(d_model=64, heads=4, layers=2, seq=64, batch=32, steps=1000)
D, H, L, T = CFG["d_model"], CFG["heads"], CFG["layers"], CFG["seq"]
DH = D // H

def init_params(key):
    ks = iter(jax.random.split(key, 8 + 8 * L))
    dense = lambda n_in, n_out: {"w": jax.random.normal(next(ks), (n_in, n_out)) / np.sqrt(n_in),
                                 "b": jnp.zeros(n_out)}
    ln = lambda: {"scale": jnp.ones(D), "bias": jnp.zeros(D)}
    p = {"tok_emb": 0.02 * jax.random.normal(next(ks), (VOCAB, D)),
         "pos_emb": 0.02 * jax.random.normal(next(ks), (T, D)),
         "ln_f": ln(), "head": dense(D, VOCAB)}
    for i in range(L):
        p[f"block{i}"] = {"ln1": ln(), "q": dense(D, D), "k": dense(D, D), "v": dense(D, D),
                          "o": dense(D, D), "ln2": ln(), "fc1": dense(D, 4 * D),
                          "fc2": dense(4 * D, D)}
    return p

def linear(p, x):
    return x @ p["w"] + p["b"]

def layer_norm(p, x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]

def attention(p, x):
    b, t, _ = x.shape
    q = linear(p["q"], x).reshape(b, t, H, DH)
    k = linear(p["k"], x).reshape(b, t, H, DH)
    v = linear(p["v"], x).reshape(b, t, H, DH)
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(DH).astype(np.float32)
    att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, jnp.finfo(att.dtype).min)
    y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(att, -1), v).reshape(b, t, D)
    return linear(p["o"], y)

def gpt(params, idx):
    x = params["tok_emb"][idx] + params["pos_emb"][: idx.shape[1]]
    for i in range(L):
        blk = params[f"block{i}"]
        x = x + attention(blk, layer_norm(blk["ln1"], x))
        x = x + linear(blk["fc2"], jax.nn.gelu(linear(blk["fc1"], layer_norm(blk["ln2"], x))))
    return linear(params["head"], layer_norm(params["ln_f"], x))

def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(gpt(params, x), y).mean()

params0 = init_params(jax.random.PRNGKey(0))
x_val, y_val = next(windows(val_ids, 64, T, seed=123))  # a fixed validation batch
print(f"{sum(a.size for a in jax.tree_util.tree_leaves(params0)):,} parameters")

# %% [markdown]
# ## Discovery on a transformer
#
# Per block, `hj.discover` finds four prunable spaces:
#
# * **heads** (`H` groups): a head's q, k and v columns (`inner=head_dim`) and its rows of `o`;
# * **q/k head dimension** (`head_dim` groups, `outer=H`): dimension `d` of every head's q and k
#   (the attention logits are a sum over it, so q and k must be cut together);
# * **v head dimension** (`head_dim` groups): v's columns and the matching rows of `o`;
# * **FFN hidden units** (`4*d_model` groups): `fc1`'s columns, `fc2`'s rows.
#
# The residual stream (`d_model`) is **not** prunable: LayerNorm's mean and variance see every
# channel, and a removed channel's `x - mean` is not zero. Nor are the vocabulary (an embedding
# indexed by gather, and the logits) and the positions.

# %%
space = hj.discover(gpt, params0, x_val)
print(space.summary())

def describe(s):
    """A readable name for a prunable space of this model, from its members' layouts."""
    names = {m.path[-2] for m in s.members if m.role == "producer"}
    block = s.members[0].path[0]
    if any(m.inner > 1 for m in s.members):
        return f"{block}: attention heads"
    if any(m.outer > 1 for m in s.members):
        return f"{block}: {'q/k' if 'q' in names else 'v'} head dimension"
    if "fc1" in names:
        return f"{block}: FFN hidden units"
    return s.label()

print()
for s in space.prunable_spaces:
    print(f"{describe(s):<32} {s.size:>4} groups")

# %% [markdown]
# `approximate=True` also admits spaces that are only tied to normalisation statistics, here the
# residual stream. Pruning it is *not* exact (the LayerNorm statistics change), so `hj.compress`
# measures and reports the output deviation instead of guaranteeing equality. We stay exact below.
#
# (Note: flax's `nn.LayerNorm` defaults to `use_fast_variance=True`, `E[x^2] - E[x]^2`, for which a
# zero channel contributes nothing to either sum; with the divisor kept by `hj.compress`, the
# residual stream of a flax-linen GPT is then exactly prunable and `hj.discover` says so.)

# %%
approx = hj.discover(gpt, params0, x_val, approximate=True)
print(f"exact: {space.num_groups} groups; approximate=True: {approx.num_groups} groups")
for s in approx.channel_spaces:
    if s.prunable and s not in space.channel_spaces:
        print("  extra space:", s.label(), "size", s.size)

# %% [markdown]
# ## Train: dense AdamW vs HESSO(AdamW) at 50% group sparsity
#
# The schedule (warm-up, cosine decay) and weight decay go inside the base optimizer; HESSO wraps
# it, outermost. The same jitted step serves all runs; it passes `value=loss`, which `hj.hesso`
# ignores and `hj.hesso_cric` needs.

# %%
STEPS = CFG["steps"]
WARMUP, PRUNING_STEPS, PERIODS = STEPS // 10, 4 * STEPS // 10, 4
SPARSITY = 0.5

def adamw():
    sched = optax.warmup_cosine_decay_schedule(0.0, 3e-3, max(1, STEPS // 20), STEPS, 3e-4)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))

group_sparsity = jax.jit(lambda p: jnp.mean(space.group_norms(p) == 0.0))
val_loss = jax.jit(loss_fn)

def run(tx, name, steps=STEPS, log_every=None):
    tx = optax.with_extra_args_support(tx)
    log_every = log_every or max(1, steps // 40)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params, value=loss)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state = params0, tx.init(params0)
    data = windows(train_ids, CFG["batch"], T, seed=0)
    hist = {"step": [], "loss": [], "val": [], "gs": []}
    t0 = time.perf_counter()
    for i in range(steps):
        xb, yb = next(data)
        params, opt_state, loss = step(params, opt_state, xb, yb)
        if (i + 1) % log_every == 0 or i == steps - 1:
            hist["step"].append(i + 1); hist["loss"].append(float(loss))
            hist["val"].append(float(val_loss(params, x_val, y_val)))
            hist["gs"].append(float(group_sparsity(params)))
    vl = hist["val"][-1]
    print(f"{name:>10}: {steps} steps in {time.perf_counter() - t0:5.1f} s | val loss {vl:.3f} "
          f"| perplexity {math.exp(vl):6.2f} | group sparsity {100 * hist['gs'][-1]:.1f}%")
    return params, opt_state, hist

results = {}
results["dense"] = run(adamw(), "dense")
results["hesso"] = run(hj.hesso(adamw(), space, target_group_sparsity=SPARSITY,
                                warmup_steps=WARMUP, pruning_steps=PRUNING_STEPS,
                                pruning_periods=PERIODS), "HESSO")

# %% [markdown]
# ### Optional: HESSO-CRIC
#
# `hj.hesso_cric` probes each space (zeroing trial fractions of its groups and watching the loss),
# then runs corrective cycles before selecting the groups to remove, to avoid removing
# indispensable ones. It reads the loss through optax's extra-args convention:
# `tx.update(grads, state, params, value=loss)` (our `run` already does that). It keeps one extra
# copy of the parameters.

# %%
RUN_CRIC = True
if RUN_CRIC:
    n_spaces = len(space.prunable_spaces)
    sampling = 5 if SMALL else 40
    probe = 2 * n_spaces * 3            # 2 steps per (space, trial sparsity), 3 trial sparsities
    cric_tx = hj.hesso_cric(adamw(), space, target_group_sparsity=SPARSITY,
                            start_cric_step=WARMUP, sampling_steps=sampling, max_cycle_period=3,
                            hybrid_training_steps=max(10, STEPS - WARMUP - probe - 3 * sampling - STEPS // 4))
    results["hesso_cric"] = run(cric_tx, "HESSO-CRIC")

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
for name, (_, _, h) in results.items():
    a1.plot(h["step"], h["val"], label=name)
    a2.plot(h["step"], h["gs"], label=name)
a1.set_xlabel("step"); a1.set_ylabel("validation loss (nats/char)"); a1.legend()
a2.set_xlabel("step"); a2.set_ylabel("group sparsity"); a2.set_ylim(-0.02, 1.02); a2.legend()
fig.tight_layout(); plt.show()

print(f"{'run':>11} {'val loss':>9} {'perplexity':>11} {'group sparsity':>15}")
for name, (p, _, h) in results.items():
    vl = h["val"][-1]
    print(f"{name:>11} {vl:>9.3f} {math.exp(vl):>11.2f} {100 * h['gs'][-1]:>14.1f}%")

# %% [markdown]
# ## What got pruned, and compress
#
# Per space: how many groups are left. Then `hj.compress` slices them out and we check the
# compressed model against the trained one on the validation batch.

# %%
pruned_params = results["hesso"][0]
norms = np.asarray(space.group_norms(pruned_params))
start = 0
for s in space.prunable_spaces:
    kept = int((norms[start:start + s.size] != 0).sum())
    print(f"{describe(s):<32} kept {kept:>4} / {s.size}")
    start += s.size

small_fn, small_params = hj.compress(gpt, pruned_params, space, x_val)
full = gpt(pruned_params, x_val)
max_diff = float(jnp.max(jnp.abs(small_fn(small_params, x_val) - full)))
print(f"max |compressed - full| logits = {max_diff:.2e}")
assert max_diff <= 1e-4, max_diff
c_full = hj.count(gpt, pruned_params, x_val[:1])
sf1, sp1 = hj.compress(gpt, pruned_params, space, x_val[:1])
c_small = hj.count(sf1, sp1, x_val[:1])
print(f"params {c_full['params']:,} -> {c_small['params']:,} "
      f"({100 * c_small['params'] / c_full['params']:.0f}%), FLOPs/sequence "
      f"{c_full['flops']:,.0f} -> {c_small['flops']:,.0f} ({100 * c_small['flops'] / c_full['flops']:.0f}%)")
print(jax.tree_util.tree_map(jnp.shape, small_params["block0"]))

# %% [markdown]
# ## Sample from the compressed model
#
# We compress for a single window of `seq` characters and sample by feeding the last `seq`
# characters, reading the last position's logits.

# %%
sample_fn, sample_params = hj.compress(gpt, pruned_params, space, x_val[:1])
step_logits = jax.jit(lambda p, w: sample_fn(p, w)[0, -1])
window = list(val_ids[:T])
rng = np.random.default_rng(0)
out = []
for _ in range(40 if SMALL else 300):
    logits = np.asarray(step_logits(sample_params, np.array([window[-T:]], np.int32)), np.float64)
    p = np.exp((logits - logits.max()) / 0.8); p /= p.sum()
    nxt = int(rng.choice(len(p), p=p))
    window.append(nxt); out.append(chars[nxt])
print("".join(out))
