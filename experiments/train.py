"""A jitted training loop for flax.linen variables {'params', 'batch_stats'} and any optax tx.

The optimizer only ever sees ``params``: ``opt_state = tx.init(params)`` and
``tx.update(grads, opt_state, params, value=loss)`` (``value`` is always passed, so HESSO-CRIC, which
reads the loss through optax's extra-args convention, drops in; plain optax transformations are
wrapped with ``optax.with_extra_args_support``). ``batch_stats`` are updated by the model's own
forward pass, outside the optimizer.

Also here: evaluation (accuracy / perplexity), a per-step history with a user callback hook,
JSON writing and matplotlib plotting helpers (PNG files under ``results/``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["TrainResult", "init_variables", "make_train_step", "train", "evaluate_classifier",
           "evaluate_lm", "count_params", "write_json", "plot_history", "plot_accuracy_vs_sparsity",
           "results_dir"]


def results_dir(sub: str | None = None) -> pathlib.Path:
  d = pathlib.Path(os.environ.get("HESSO_JAX_RESULTS", "results"))
  if sub:
    d = d / sub
  d.mkdir(parents=True, exist_ok=True)
  return d


def init_variables(model: nn.Module, x: np.ndarray, seed: int = 0) -> dict:
  """Initialise linen variables (a plain dict: 'params' and, if the model has BN, 'batch_stats')."""
  # jitted: eager linen init dispatches (and compiles) every small op separately, which is slow
  v = jax.jit(lambda k, xb: model.init(k, xb, train=False))(jax.random.PRNGKey(seed), jnp.asarray(x))
  return jax.tree_util.tree_map(jnp.asarray, dict(v))


def metric_of(task: str) -> str:
  """The task's evaluation metric: validation perplexity for the char LM, accuracy otherwise."""
  return "perplexity" if task == "charlm" else "accuracy"


def count_params(tree: Any) -> int:
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


# ------------------------------------------------------------------------------------------------
# one step
# ------------------------------------------------------------------------------------------------


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    loss_fn: Callable = _xent, *, value_fn: bool = False) -> Callable:
  """A jitted ``step(variables, opt_state, x, y) -> (variables, opt_state, loss)``.

  Works for any labels whose shape matches the logits' leading axes (classification: (B,),
  language modelling: (B, T)).
  """
  tx = optax.with_extra_args_support(tx)

  @jax.jit
  def step(variables, opt_state, x, y):
    params = variables["params"]
    extra = {k: v for k, v in variables.items() if k != "params"}
    has_bs = "batch_stats" in extra

    def objective(p):
      v = {"params": p, **extra}
      if has_bs:
        logits, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
        return loss_fn(logits, y), upd["batch_stats"]
      return loss_fn(model.apply(v, x, train=True), y), None

    (loss, new_bs), grads = jax.value_and_grad(objective, has_aux=True)(params)
    if value_fn:  # HESSO-CRIC: reference and trial losses on this same minibatch
      extra_args = {"value_fn": lambda p: objective(p)[0]}
    else:
      extra_args = {"value": loss}
    updates, opt_state = tx.update(grads, opt_state, params, **extra_args)
    params = optax.apply_updates(params, updates)
    new_vars = {**extra, "params": params}
    if has_bs:
      new_vars["batch_stats"] = new_bs
    return new_vars, opt_state, loss

  return step


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------


def evaluate_classifier(model: nn.Module, variables, x: np.ndarray, y: np.ndarray,
                        batch_size: int = 512) -> dict:
  """Eval-mode (running BN statistics) accuracy and mean cross-entropy."""
  fwd = jax.jit(lambda v, xb: model.apply(v, xb, train=False))
  correct, loss_sum = 0, 0.0
  for s in range(0, len(x), batch_size):
    xb, yb = jnp.asarray(x[s:s + batch_size]), jnp.asarray(y[s:s + batch_size])
    logits = fwd(variables, xb)
    correct += int(jnp.sum(jnp.argmax(logits, -1) == yb))
    loss_sum += float(_xent(logits, yb)) * len(yb)
  return {"accuracy": correct / len(x), "loss": loss_sum / len(x)}


def evaluate_lm(model: nn.Module, variables, ids: np.ndarray, seq_len: int, *,
                batch_size: int = 32, num_batches: int = 8, seed: int = 1234) -> dict:
  """Mean next-char cross-entropy (nats) and perplexity over fixed random windows of ``ids``."""
  from experiments.data import text_batches

  fwd = jax.jit(lambda v, xb, yb: _xent(model.apply(v, xb, train=False), yb))
  losses = [float(fwd(variables, jnp.asarray(xb), jnp.asarray(yb)))
            for xb, yb in text_batches(ids, batch_size, seq_len, seed=seed, num_batches=num_batches)]
  loss = float(np.mean(losses))
  return {"loss": loss, "perplexity": math.exp(loss)}


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
  variables: dict
  opt_state: Any
  history: dict           # {'step': [...], 'loss': [...], <callback keys>: [...]}
  seconds: float
  steps: int


def train(model: nn.Module, variables: dict, tx: optax.GradientTransformation,
          data: Iterable[tuple[np.ndarray, np.ndarray]], steps: int, *,
          loss_fn: Callable = _xent,
          callback: Callable[[int, dict, Any, float], dict | None] | None = None,
          log_every: int = 10, progress: bool = True, desc: str = "train",
          opt_state: Any = None, value_fn: bool = False) -> TrainResult:
  """Train for ``steps`` steps drawing (x, y) batches from ``data``.

  ``callback(step, variables, opt_state, loss)`` runs every ``log_every`` steps (and after the last
  step) on the host; the dict it returns is appended to the history under its keys, e.g.
  ``{'group_sparsity': ...}``. The loss is recorded every step.
  """
  step_fn = make_train_step(model, tx, loss_fn, value_fn=value_fn)
  if opt_state is None:
    opt_state = optax.with_extra_args_support(tx).init(variables["params"])
  hist: dict[str, list] = {"step": [], "loss": []}
  cb_hist: dict[str, list] = {"cb_step": []}
  it: Iterator = iter(data)
  losses = []
  pbar = None
  if progress:
    from tqdm.auto import tqdm
    pbar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)
  t0 = time.perf_counter()
  for i in range(steps):
    x, y = next(it)
    variables, opt_state, loss = step_fn(variables, opt_state, jnp.asarray(x), jnp.asarray(y))
    losses.append(loss)
    last = i == steps - 1
    if (i + 1) % log_every == 0 or last:
      vals = [float(l) for l in jax.device_get(losses)]
      start = i + 1 - len(vals)
      hist["step"].extend(range(start + 1, i + 2))
      hist["loss"].extend(vals)
      losses = []
      post = {"loss": f"{vals[-1]:.4f}"}
      if callback is not None:
        rec = callback(i + 1, variables, opt_state, vals[-1]) or {}
        cb_hist["cb_step"].append(i + 1)
        for k, v in rec.items():
          cb_hist.setdefault(k, []).append(v)
          if isinstance(v, float):
            post[k] = f"{v:.3f}"
      if pbar is not None:
        pbar.update(len(vals))
        pbar.set_postfix(post)
  jax.block_until_ready(variables)
  secs = time.perf_counter() - t0
  if pbar is not None:
    pbar.close()
  if callback is not None:
    hist.update(cb_hist)
  return TrainResult(variables, opt_state, hist, secs, steps)


# ------------------------------------------------------------------------------------------------
# results: JSON and plots
# ------------------------------------------------------------------------------------------------


def _jsonable(o):
  if isinstance(o, dict):
    return {str(k): _jsonable(v) for k, v in o.items()}
  if isinstance(o, (list, tuple)):
    return [_jsonable(v) for v in o]
  if isinstance(o, (np.generic,)):
    return o.item()
  if isinstance(o, (np.ndarray, jax.Array)):
    return _jsonable(np.asarray(o).tolist())
  if isinstance(o, float) and not math.isfinite(o):
    return str(o)
  return o


def write_json(obj: Any, path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(_jsonable(obj), indent=2))
  return path


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(plt, fig, path: str | os.PathLike) -> pathlib.Path:
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def plot_history(history: dict, path: str | os.PathLike, title: str = "") -> pathlib.Path:
  """Training loss (left axis) and group sparsity (right axis, if recorded) over steps."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
  ax.plot(history["step"], history["loss"], lw=0.8, color="tab:blue", label="train loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss", color="tab:blue")
  ax.set_yscale("log")
  if "group_sparsity" in history:
    ax2 = ax.twinx()
    ax2.plot(history["cb_step"], history["group_sparsity"], color="tab:red", lw=1.5,
             label="group sparsity")
    ax2.set_ylabel("group sparsity", color="tab:red")
    ax2.set_ylim(-0.02, 1.02)
  ax.set_title(title)
  return _save(plt, fig, path)


def plot_accuracy_vs_sparsity(rows: list[dict], path: str | os.PathLike, title: str = "",
                              metric: str = "accuracy") -> pathlib.Path:
  """One point per run: ``metric`` against group sparsity, one line per optimizer."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=110)
  by_opt: dict[str, list] = {}
  for r in rows:
    by_opt.setdefault(r.get("optimizer", "?"), []).append((r["group_sparsity"], r[metric]))
  for opt, pts in sorted(by_opt.items()):
    pts.sort()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=opt)
  ax.set_xlabel("group sparsity")
  ax.set_ylabel(metric)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(plt, fig, path)
