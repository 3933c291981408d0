"""Write the Colab notebooks in this folder from the cell sources below (run from anywhere).

    python colab/build_notebooks.py          # rewrites colab/0*.ipynb (no outputs)

The .ipynb files are generated: edit this script, not the notebooks, and commit both. Every
notebook starts with the same install cell (skipped when ``hesso_jax`` is importable) and a
``SMALL`` switch: ``HESSO_SMALL=1`` (set by ``make notebooks`` / tests/test_notebooks.py) runs a few
steps of small models so CI stays fast; the defaults are the full-size runs for real users.
"""

from __future__ import annotations

import pathlib
import textwrap

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent


def md(s: str):
  return new_markdown_cell(textwrap.dedent(s).strip("\n"))


def code(s: str):
  return new_code_cell(textwrap.dedent(s).strip("\n"))


INSTALL_SRC = '''
    # Install hesso_jax when it is not importable yet (a fresh Colab runtime); skipped otherwise.
    import os
    {pre}try:
        import hesso_jax  # noqa: F401
    except ImportError:
        # TODO: replace with the repository URL once it is public, e.g.
        #   %pip install -q "hesso-jax[experiments] @ git+https://github.com/<org>/hesso_jax"
        %pip install -q "hesso-jax[experiments]"

    # HESSO_SMALL=1 (set by CI / `make notebooks`) runs a few steps of small models so the whole
    # notebook executes in about a minute; leave it unset for the real, full-size run.
    SMALL = os.environ.get("HESSO_SMALL", "0") == "1"
    print("small (CI) mode" if SMALL else "full mode")
'''


def install(pre: str = ""):
  """The first cell of every notebook; ``pre`` runs before anything imports jax."""
  pre = textwrap.dedent(pre).strip("\n") + "\n\n" if pre else ""
  return code(textwrap.dedent(INSTALL_SRC).replace("{pre}", pre))


INSTALL = install()

# 8 simulated CPU devices: XLA_FLAGS must be set before jax is imported (hesso_jax imports jax).
INSTALL_MESH = install('''
    # 8 simulated devices on a CPU runtime. On a TPU / multi-GPU runtime set this to False.
    SIMULATE_DEVICES = True
    if SIMULATE_DEVICES:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_force_host_platform_device_count=8").strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
''')


# ------------------------------------------------------------------------------------------------
# 01 quickstart
# ------------------------------------------------------------------------------------------------

NB01 = [
    INSTALL,
    md('''
    # hesso_jax quickstart: prune a CNN to 50% of its channels, exactly

    [HESSO](https://arxiv.org/abs/2312.09411) (Only-Train-Once v3) is a *structured* pruning
    optimizer: during ordinary training it progressively drives whole channels (conv filters with
    their bias and batch-norm scale/shift, hidden units, attention heads...) to **exactly 0.0**, so
    they can be cut out of the network afterwards without changing its output.

    This notebook walks through the whole `hesso_jax` workflow on scikit-learn's bundled 8x8 digits
    (no download, runs on a CPU runtime in about a minute):

    1. `hj.discover` finds the prunable channel groups from the model's jaxpr;
    2. train a dense baseline and the same model under `hj.hesso(...)` at 50% group sparsity;
    3. `hj.compress` cuts the zero groups out; the compressed network gives the same outputs;
    4. `hj.count` compares parameters / FLOPs, and `hj.export` produces a serialisable StableHLO
       artifact of the small network.
    '''),
    code('''
    import time

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax

    import hesso_jax as hj

    print("jax", jax.__version__, "on", jax.devices()[0].platform, "| hesso_jax", hj.__version__)
    '''),
    md('''
    ## Data: scikit-learn's bundled digits

    1797 grayscale 8x8 images of 10 classes, shipped with scikit-learn. We scale pixels to [0, 1],
    use NHWC layout and a stratified 75/25 split.
    '''),
    code('''
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]     # (1797, 8, 8, 1)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    print("train", x_train.shape, "test", x_test.shape)

    def batches(x, y, batch_size, seed=0):
        """Endless shuffled mini-batches (a fixed seed, so dense and HESSO see the same data)."""
        rng = np.random.default_rng(seed)
        while True:
            perm = rng.permutation(len(x))
            for s in range(0, len(x) - batch_size + 1, batch_size):
                idx = perm[s:s + batch_size]
                yield x[idx], y[idx]
    '''),
    md('''
    ## Model: an ordinary flax.linen CNN with BatchNorm

    Nothing HESSO-specific goes into the model. Three conv-BN-ReLU layers, two max-pools, a hidden
    dense layer and the logits.
    '''),
    code('''
    class CNN(nn.Module):
        features: tuple = (16, 32, 64)
        hidden: int = 64
        num_classes: int = 10

        @nn.compact
        def __call__(self, x, train: bool = False):
            for i, f in enumerate(self.features):
                x = nn.Conv(f, (3, 3), padding="SAME", name=f"conv{i}")(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(x)
                x = nn.relu(x)
                if i >= 1:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(self.hidden, name="fc")(x))
            return nn.Dense(self.num_classes, name="head")(x)

    model = CNN(features=(8, 16, 32), hidden=32) if SMALL else CNN()
    variables = model.init(jax.random.PRNGKey(0), x_train[:2])   # {'params', 'batch_stats'}
    fn = lambda v, x: model.apply(v, x, train=False)              # the function HESSO analyses
    print(jax.tree_util.tree_map(jnp.shape, variables["params"]))
    '''),
    md('''
    ## 1. Discover the zero-invariant groups

    `hj.discover(fn, variables, *args)` traces `fn` to a jaxpr and joins every parameter axis that
    has to be pruned together into a *channel space*: e.g. `conv0`'s output channels live on
    `conv0/kernel[3]`, `conv0/bias`, `bn0/scale`, `bn0/bias`, the running statistics and
    `conv1/kernel[2]`. Each channel of a prunable space is one group (ZIG). The logits' axis is not
    prunable: it reaches the function's output.
    '''),
    code('''
    space = hj.discover(fn, variables, x_train[:2])
    print(space.summary())
    print("prunable groups:", space.num_groups)
    '''),
    md('''
    ## 2. Train dense, then with HESSO

    One jitted train step serves both runs. The optimizer sees `params` only, so it gets
    `space.subtree('params')`; batch-norm statistics are updated by the forward pass.

    **HESSO must be the outermost optax transformation**: its update is computed so that
    `optax.apply_updates` lands exactly on 0.0. Learning-rate schedules, momentum, weight decay and
    clipping go *inside* the base optimizer. `tx.update` also accepts `value=loss` (needed by
    `hj.hesso_cric`, ignored by `hj.hesso`).
    '''),
    code('''
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
        data = batches(x_train, y_train, BATCH, seed=0)
        t0 = time.perf_counter()
        for i in range(steps):
            xb, yb = next(data)
            v, opt_state, loss = step(v, opt_state, xb, yb)
            hist["loss"].append(loss)
            if (i + 1) % log_every == 0 or i == steps - 1:
                hist["gs_step"].append(i + 1)
                hist["group_sparsity"].append(float(group_sparsity(v["params"])))
        hist["loss"] = [float(l) for l in jax.device_get(hist["loss"])]
        print(f"{steps} steps in {time.perf_counter() - t0:.1f} s")
        return v, opt_state, hist

    @jax.jit
    def accuracy(v, x, y):
        return jnp.mean(jnp.argmax(fn(v, x), -1) == y)

    dense_vars, _, dense_hist = train(base_tx())
    print(f"dense test accuracy: {100 * float(accuracy(dense_vars, x_test, y_test)):.2f}%")
    '''),
    code('''
    tx = hj.hesso(base_tx(), space_p, target_group_sparsity=0.5, warmup_steps=WARMUP,
                  pruning_steps=PRUNING_STEPS, pruning_periods=PERIODS)
    hesso_vars, hesso_state, hesso_hist = train(tx)
    dense_acc = float(accuracy(dense_vars, x_test, y_test))
    hesso_acc = float(accuracy(hesso_vars, x_test, y_test))
    gs = float(group_sparsity(hesso_vars["params"]))
    print(f"HESSO test accuracy: {100 * hesso_acc:.2f}%  (dense {100 * dense_acc:.2f}%)")
    print(f"group sparsity: {100 * gs:.1f}%  ({int(hj.pruned_mask(hesso_state).sum())} of "
          f"{space_p.num_groups} groups committed to exactly 0.0)")
    '''),
    md('''
    ### Loss and group sparsity over training

    Plain training during the warm-up, then `PERIODS` pruning periods: at the start of each the
    lowest-saliency groups are selected and smoothly "forgotten", reaching exactly zero at the end
    of the period (the staircase).
    '''),
    code('''
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
    '''),
    md('''
    ## 3. Compress: cut the zero groups out

    `hj.compress(fn, variables, space, *args)` slices every member axis of every space by the kept
    groups (the full `space`, so the batch-norm statistics are sliced too) and returns a callable
    for the smaller arrays. Its outputs equal the trained network's (to float32 rounding).
    '''),
    code('''
    small_fn, small_vars = hj.compress(fn, hesso_vars, space, x_test)
    full_out = fn(hesso_vars, x_test)
    small_out = small_fn(small_vars, x_test)
    max_diff = float(jnp.max(jnp.abs(small_out - full_out)))
    print(f"max |compressed - full| = {max_diff:.2e}")
    assert max_diff <= 1e-5, max_diff
    print("compressed accuracy:", float(jnp.mean(jnp.argmax(small_out, -1) == y_test)))
    print(jax.tree_util.tree_map(jnp.shape, small_vars["params"]))
    '''),
    code('''
    before = hj.count(fn, hesso_vars, x_test[:1])
    # count per image: compress with a single-image input
    small_fn1, small_vars1 = hj.compress(fn, hesso_vars, space, x_test[:1])
    after = hj.count(small_fn1, small_vars1, x_test[:1])
    print(f"{'':>12} {'params':>10} {'FLOPs/image':>12}")
    for name, c in (("full", before), ("compressed", after)):
        print(f"{name:>12} {c['params']:>10,} {c['flops']:>12,.0f}")
    print(f"kept: {100 * after['params'] / before['params']:.1f}% of params, "
          f"{100 * after['flops'] / before['flops']:.1f}% of FLOPs")
    '''),
    md('''
    ## 4. Export the compressed network (StableHLO)

    `hj.export` wraps `jax.export`: the result serialises to bytes and can be deserialised and run
    without the model code (here: same process, but it could be another machine).
    '''),
    code('''
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
    '''),
    md('''
    ## Next

    * `02_transformer_pruning.ipynb`: attention heads, q/k/v head dimensions and FFN units of a
      GPT-style language model, with AdamW and HESSO-CRIC.
    * `03_sharded_training_checkpoint.ipynb`: HESSO on a device mesh, checkpointing mid-pruning with
      orbax and resuming exactly.
    '''),
]


# ------------------------------------------------------------------------------------------------
# 02 transformer
# ------------------------------------------------------------------------------------------------

NB02 = [
    INSTALL,
    md('''
    # Pruning a GPT-style transformer: heads, head dimensions and FFN units

    A small character-level language model, trained on the Python standard library's own source
    files (always available, nothing to download). The model is written as **plain JAX functions**
    over a dict of arrays, with explicit q/k/v projections reshaped into heads: `hesso_jax` does
    not need a framework, it reads the jaxpr.

    We will see which parts of a transformer `hj.discover` can prune exactly (attention heads, the
    q/k head dimension, the v head dimension, FFN hidden units) and which it cannot (the residual
    stream, because of LayerNorm statistics), then train with `hj.hesso(optax.adamw(...))` and
    optionally `hj.hesso_cric(...)`, and compare validation loss / perplexity with a dense run.
    '''),
    code('''
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
    '''),
    md('''
    ## Data: characters of the standard library's sources

    A fixed list of plain-Python modules next to `os.py`; the last 10% is the validation text.
    '''),
    code('''
    FILES = ["os.py", "functools.py", "collections/__init__.py", "textwrap.py", "string.py",
             "contextlib.py", "dataclasses.py", "abc.py", "heapq.py", "bisect.py", "shlex.py",
             "fnmatch.py", "glob.py", "copy.py", "random.py", "statistics.py", "fractions.py",
             "argparse.py", "enum.py", "json/decoder.py", "json/encoder.py", "queue.py"]
    root = pathlib.Path(os.__file__).resolve().parent
    text = "\\n".join((root / f).read_text(encoding="utf-8", errors="replace")
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
    '''),
    md('''
    ## The model, in plain JAX

    Pre-LayerNorm blocks: `x + attn(ln1(x))`, then `x + fc2(gelu(fc1(ln2(x))))`. The attention
    projects `q`, `k`, `v` with separate matrices and reshapes them to `(batch, time, heads, head_dim)`.
    LayerNorm is the textbook one (variance of `x - mean`).
    '''),
    code('''
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
    '''),
    md('''
    ## Discovery on a transformer

    Per block, `hj.discover` finds four prunable spaces:

    * **heads** (`H` groups): a head's q, k and v columns (`inner=head_dim`) and its rows of `o`;
    * **q/k head dimension** (`head_dim` groups, `outer=H`): dimension `d` of every head's q and k
      (the attention logits are a sum over it, so q and k must be cut together);
    * **v head dimension** (`head_dim` groups): v's columns and the matching rows of `o`;
    * **FFN hidden units** (`4*d_model` groups): `fc1`'s columns, `fc2`'s rows.

    The residual stream (`d_model`) is **not** prunable: LayerNorm's mean and variance see every
    channel, and a removed channel's `x - mean` is not zero. Nor are the vocabulary (an embedding
    indexed by gather, and the logits) and the positions.
    '''),
    code('''
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
    '''),
    md('''
    `approximate=True` also admits spaces that are only tied to normalisation statistics, here the
    residual stream. Pruning it is *not* exact (the LayerNorm statistics change), so `hj.compress`
    measures and reports the output deviation instead of guaranteeing equality. We stay exact below.

    (Note: flax's `nn.LayerNorm` defaults to `use_fast_variance=True`, `E[x^2] - E[x]^2`, for which a
    zero channel contributes nothing to either sum; with the divisor kept by `hj.compress`, the
    residual stream of a flax-linen GPT is then exactly prunable and `hj.discover` says so.)
    '''),
    code('''
    approx = hj.discover(gpt, params0, x_val, approximate=True)
    print(f"exact: {space.num_groups} groups; approximate=True: {approx.num_groups} groups")
    for s in approx.channel_spaces:
        if s.prunable and s not in space.channel_spaces:
            print("  extra space:", s.label(), "size", s.size)
    '''),
    md('''
    ## Train: dense AdamW vs HESSO(AdamW) at 50% group sparsity

    The schedule (warm-up, cosine decay) and weight decay go inside the base optimizer; HESSO wraps
    it, outermost. The same jitted step serves all runs; it passes `value=loss`, which `hj.hesso`
    ignores and `hj.hesso_cric` needs.
    '''),
    code('''
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
    '''),
    md('''
    ### Optional: HESSO-CRIC

    `hj.hesso_cric` probes each space (zeroing trial fractions of its groups and watching the loss),
    then runs corrective cycles before selecting the groups to remove, to avoid removing
    indispensable ones. It reads the loss through optax's extra-args convention:
    `tx.update(grads, state, params, value=loss)` (our `run` already does that). It keeps one extra
    copy of the parameters.
    '''),
    code('''
    RUN_CRIC = True
    if RUN_CRIC:
        n_spaces = len(space.prunable_spaces)
        sampling = 5 if SMALL else 40
        probe = 2 * n_spaces * 3            # 2 steps per (space, trial sparsity), 3 trial sparsities
        cric_tx = hj.hesso_cric(adamw(), space, target_group_sparsity=SPARSITY,
                                start_cric_step=WARMUP, sampling_steps=sampling, max_cycle_period=3,
                                hybrid_training_steps=max(10, STEPS - WARMUP - probe - 3 * sampling - STEPS // 4))
        results["hesso_cric"] = run(cric_tx, "HESSO-CRIC")
    '''),
    code('''
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
    '''),
    md('''
    ## What got pruned, and compress

    Per space: how many groups are left. Then `hj.compress` slices them out and we check the
    compressed model against the trained one on the validation batch.
    '''),
    code('''
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
    '''),
    md('''
    ## Sample from the compressed model

    We compress for a single window of `seq` characters and sample by feeding the last `seq`
    characters, reading the last position's logits.
    '''),
    code('''
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
    '''),
]


# ------------------------------------------------------------------------------------------------
# 03 sharded training + checkpoint
# ------------------------------------------------------------------------------------------------

NB03 = [
    INSTALL_MESH,
    md('''
    # Sharded HESSO training on a device mesh, with a mid-pruning checkpoint

    HESSO's update is a pure, jittable function of arrays whose group maths are static-shape
    reshapes and reductions, so it runs unchanged under `jax.jit` with `NamedSharding`: XLA inserts
    the collectives. What you need is the *optimizer state's* sharding (to initialise it in place
    and to restore a checkpoint into), which `hj.opt_state_shardings` derives from the params'.

    This notebook

    1. builds a `jax.sharding.Mesh` over 8 devices with a `'data'` axis,
    2. shards the params (FSDP-style) and the batch with `NamedSharding`,
    3. jits the HESSO train step with `in_shardings` / `out_shardings`,
    4. saves `(params, opt_state)` **in the middle of the pruning phase** with orbax
       (`hj.save_checkpoint`), restores them into the sharded layout (`hj.restore_checkpoint`),
       continues, and checks the result equals an uninterrupted run.

    **8 devices on a CPU runtime.** The first cell sets
    `os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"` (and `JAX_PLATFORMS=cpu`)
    *before* anything imports jax, so a CPU runtime shows 8 devices. On a TPU runtime (8 cores) or
    a multi-GPU runtime, skip this: set `SIMULATE_DEVICES = False` in the first cell and the same
    code runs on the real devices. If you change it after jax was imported, restart the runtime.
    '''),
    code('''
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
    '''),
    md('''
    ## Data and model

    Digits again (scikit-learn, offline), flattened to 64 features, and an MLP written as a plain
    function of a dict of arrays. Batches are a deterministic function of the step index, so a
    resumed run sees exactly the batches the uninterrupted one saw.
    '''),
    code('''
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)        # (1797, 64)
    Y = digits.target.astype(np.int32)
    x_train, y_train, x_test, y_test = X[:1400], Y[:1400], X[1400:], Y[1400:]
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
    '''),
    md('''
    ## Mesh and shardings

    `hj.param_shardings(params, mesh)` is a convenience default (split the largest non-last axis
    over `'data'`, FSDP-style, when the mesh axis divides it; replicate small leaves). Any
    `NamedSharding`s work. The batch is split over `'data'`.
    '''),
    code('''
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    p_shard = hj.param_shardings(params0, mesh)
    batch_shard = NamedSharding(mesh, P("data"))
    params0 = jax.device_put(params0, p_shard)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params0):
        print(f"{jax.tree_util.keystr(path):<16} {str(leaf.shape):<12} {leaf.sharding.spec}")
    '''),
    md('''
    ## The HESSO optimizer and its sharded state

    `hj.opt_state_shardings(tx, params)` gives every optimizer-state leaf that mirrors a parameter
    (Adam's `mu`/`nu`, momentum) that parameter's sharding, and replicates the rest (step counts,
    the `(num_groups,)` masks). We initialise the state directly in that layout.
    '''),
    code('''
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
    print("warm-up", WARMUP, "| pruning steps", PRUNING_STEPS, "in", PERIODS, "periods | checkpoint at", CKPT_STEP)
    '''),
    md('''
    ## Run A: uninterrupted
    '''),
    code('''
    t0 = time.perf_counter()
    params_a, state_a, loss_a = train(copy(params0), copy(opt_state0), 0, STEPS)
    acc = lambda p: float(jnp.mean(jnp.argmax(mlp(p, x_test), -1) == y_test))
    gs = lambda p: float(jnp.mean(space.group_norms(p) == 0))
    print(f"{STEPS} sharded steps in {time.perf_counter() - t0:.1f} s: loss {float(loss_a):.4f}, "
          f"test accuracy {100 * acc(params_a):.2f}%, group sparsity {100 * gs(params_a):.1f}%")
    '''),
    md('''
    ## Run B: train to the middle of pruning, checkpoint, "crash", restore, continue

    `hj.save_checkpoint` writes `params` and `opt_state` with orbax (each device's shards) plus a
    small JSON record of the structure and search space. To restore, describe the target as
    `jax.ShapeDtypeStruct`s *with shardings* (`hj.abstract_like`, `hj.abstract_opt_state`): orbax
    reads each array straight into that layout. The record is checked first, so restoring with a
    different search space or optimizer fails with a readable error.

    (Without the helpers: `ocp.StandardCheckpointer().save(path, {"params": p, "opt_state": s})` and
    `.restore(path, abstract_tree)` with the same abstract target do the same job.)
    '''),
    code('''
    ckpt_dir = tempfile.mkdtemp(prefix="hesso_ckpt_")
    params_b, state_b, _ = train(copy(params0), copy(opt_state0), 0, CKPT_STEP)
    print(f"at step {CKPT_STEP}: {int(hj.pruned_mask(state_b).sum())} groups committed to zero, "
          f"group sparsity {100 * gs(params_b):.1f}% (pruning is in progress)")
    path = hj.save_checkpoint(ckpt_dir, CKPT_STEP, params_b, state_b, space=space)
    print("saved", path, os.listdir(path))
    del params_b, state_b                              # the "crash"
    '''),
    code('''
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
    '''),
    md('''
    ## A wrong restore target is caught

    Restoring into an optimizer built on a different search space (here: another group count)
    raises `hj.CheckpointMismatchError` before any array is read.
    '''),
    code('''
    other_space = hj.discover(mlp, {k: v for k, v in init_params(jax.random.PRNGKey(1)).items()},
                              x_train[:BATCH], ignore=r"^fc0/")
    other_tx = hj.hesso(base, other_space, target_group_sparsity=0.5, warmup_steps=WARMUP,
                        pruning_steps=PRUNING_STEPS)
    try:
        hj.restore_checkpoint(ckpt_dir, step, abs_params, hj.abstract_opt_state(other_tx, abs_params))
    except hj.CheckpointMismatchError as e:
        print("CheckpointMismatchError:", str(e).splitlines()[1][:200])
    '''),
    md('''
    ## Compress the sharded result

    Surgery works on the gathered arrays; the compressed MLP gives the same logits.
    '''),
    code('''
    params_host = jax.device_get(params_b)
    small_fn, small = hj.compress(mlp, params_host, space, x_test)
    d = float(jnp.max(jnp.abs(small_fn(small, x_test) - mlp(params_host, x_test))))
    print("hidden widths:", [small[f"fc{i}"]["w"].shape[1] for i in range(len(HIDDEN))],
          f"(from {list(HIDDEN)}); max |compressed - full| = {d:.2e}")
    assert d <= 1e-5
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    '''),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": NB01,
    "02_transformer_pruning.ipynb": NB02,
    "03_sharded_training_checkpoint.ipynb": NB03,
}


def build(out_dir: pathlib.Path = HERE) -> list[pathlib.Path]:
  paths = []
  for name, cells in NOTEBOOKS.items():
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    })
    # deterministic cell ids, so regenerating an unchanged notebook gives an identical file
    for i, c in enumerate(nb.cells):
      c["id"] = f"{name.split('_')[0]}-{i:02d}"
    nbformat.validate(nb)
    p = out_dir / name
    p.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    paths.append(p)
  return paths


if __name__ == "__main__":
  for p in build():
    print("wrote", p)
