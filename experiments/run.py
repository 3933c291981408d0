"""One CLI for every experiment; writes JSON + PNGs under results/<task>/.

    python -m experiments.run --task digits_cnn --optimizer hesso --sparsity 0.5
    python -m experiments.run --task charlm --optimizer dense --small
    python -m experiments.run --task mnist1d --optimizer hesso_cric --sparsity 0.7 --steps 3000

Tasks: digits_cnn, digits_resnet (scikit-learn digits), mnist1d (1-D CNN on generated MNIST-1D),
mnist1d_mlp, charlm (char-level GPT on the Python standard library's source). Optimizers: dense
(the base optax optimizer alone), hesso (``hj.hesso(base, space, ...)``), hesso_cric
(``hj.hesso_cric(base, space, ...)``, fed ``value_fn`` every step, so its reference and trial
losses come from the same minibatch). ``--small`` shrinks steps
and model for CI-speed runs. After each run the task's accuracy-vs-sparsity plot is redrawn from
every JSON in its folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import optax

import hesso_jax as hj
from experiments import data as D
from experiments import models as M
from experiments import train as T

TASKS = ("digits_cnn", "digits_resnet", "mnist1d", "mnist1d_mlp", "charlm")
OPTIMIZERS = ("dense", "hesso", "hesso_cric")


@dataclasses.dataclass
class TaskConfig:
  steps: int
  small_steps: int
  batch_size: int
  lr: float
  base: str = "sgd"          # 'sgd' (momentum 0.9, cosine) or 'adamw' (warmup-cosine)
  weight_decay: float = 0.0
  seq_len: int = 64          # charlm only


CONFIGS = {
    "digits_cnn": TaskConfig(steps=1500, small_steps=200, batch_size=64, lr=0.1),
    "digits_resnet": TaskConfig(steps=1500, small_steps=150, batch_size=64, lr=0.1),
    "mnist1d": TaskConfig(steps=3000, small_steps=300, batch_size=128, lr=0.05),
    "mnist1d_mlp": TaskConfig(steps=3000, small_steps=300, batch_size=128, lr=0.05),
    "charlm": TaskConfig(steps=1000, small_steps=100, batch_size=32, lr=3e-3, base="adamw",
                         weight_decay=0.01, seq_len=64),
}


def make_base_tx(cfg: TaskConfig, steps: int, lr: float) -> optax.GradientTransformation:
  """The base optimizer; HESSO wraps it (and must be the outermost transformation)."""
  if cfg.base == "sgd":
    return optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=0.9)
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, lr * 0.1)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=cfg.weight_decay))


def schedule(steps: int) -> dict:
  """HESSO phases as fractions of the run: 20% warm-up, 40% pruning in 3 periods, 40% recovery."""
  return {"warmup_steps": int(0.2 * steps), "pruning_steps": int(0.4 * steps), "pruning_periods": 3}


def cric_schedule(steps: int, small: bool) -> dict:
  s = schedule(steps)
  return {"start_cric_step": s["warmup_steps"], "sampling_steps": max(5, steps // 60),
          "max_cycle_period": 2 if small else 5, "tolerance": 0,
          "hybrid_training_steps": s["pruning_steps"]}


def load_task(task: str, small: bool, cfg: TaskConfig, seed: int):
  """(model, data_iter_factory, x_example, evaluate(variables) -> dict, info)."""
  if task in ("digits_cnn", "digits_resnet"):
    ds = D.load_digits(seed=0)
  elif task in ("mnist1d", "mnist1d_mlp"):
    ds = D.load_mnist1d()
  elif task == "charlm":
    td = D.load_stdlib_text(max_chars=200_000 if small else None)
    model = M.get_model("charlm", vocab_size=td.vocab_size, small=small)
    seq = min(cfg.seq_len, model.block_size)
    it = lambda: D.text_batches(td.train, cfg.batch_size, seq, seed=seed)
    ev = lambda v: T.evaluate_lm(model, v, td.val, seq, num_batches=4 if small else 16)
    info = {"train_chars": len(td.train), "val_chars": len(td.val), "vocab_size": td.vocab_size,
            "files": [f.split("/")[-1] for f in td.files], "seq_len": seq}
    return model, it, td.train[:seq][None].repeat(2, 0), ev, info
  else:
    raise ValueError(task)
  model = M.get_model(task, num_classes=ds.num_classes, small=small)
  it = lambda: D.batches(ds.x_train, ds.y_train, cfg.batch_size, seed=seed)
  ev = lambda v: T.evaluate_classifier(model, v, ds.x_test, ds.y_test)
  info = {"train": len(ds.x_train), "test": len(ds.x_test), "input_shape": ds.input_shape}
  return model, it, ds.x_train[:2], ev, info


def run(task: str, optimizer: str, sparsity: float = 0.5, *, steps: int | None = None,
        small: bool = False, seed: int = 0, lr: float | None = None, out_dir: str | None = None,
        progress: bool = True, plots: bool = True, cric_kw: dict | None = None,
        artifacts: dict | None = None) -> dict:
  """One training run; returns (and writes) its record.

  ``cric_kw`` overrides entries of :func:`cric_schedule` (hesso_cric only). When ``artifacts`` is a
  dict it is filled with ``model``, ``space``, ``variables`` (trained), ``x_example`` and
  ``opt_state`` for callers that measure more (experiments/sweep.py: compressed latency).
  """
  cfg = CONFIGS[task]
  steps = steps or (cfg.small_steps if small else cfg.steps)
  lr = cfg.lr if lr is None else lr
  model, make_iter, x_ex, evaluate, info = load_task(task, small, cfg, seed)
  variables = T.init_variables(model, x_ex, seed=seed)
  n_params = T.count_params(variables["params"])

  record: dict[str, Any] = {"task": task, "optimizer": optimizer, "target_group_sparsity": sparsity,
                            "steps": steps, "small": small, "seed": seed, "lr": lr, "base": cfg.base,
                            "batch_size": cfg.batch_size, "data": info, "params_total": n_params,
                            "jax": jax.__version__, "device": jax.devices()[0].platform}
  # the dense run also uses the space, to report its (zero) group sparsity
  space = hj.discover(M.inference_fn(model), variables, x_ex)
  space_p = space.subtree("params")
  record["num_groups"] = space_p.num_groups

  base = make_base_tx(cfg, steps, lr)
  if optimizer == "dense":
    tx = base
  elif optimizer == "hesso":
    kw = schedule(steps)
    tx = hj.hesso(base, space_p, target_group_sparsity=sparsity, **kw)
    record["hesso"] = kw
  elif optimizer == "hesso_cric":
    kw = {**cric_schedule(steps, small), **(cric_kw or {})}
    tx = hj.hesso_cric(base, space_p, target_group_sparsity=sparsity, **kw)
    record["hesso_cric"] = kw
    try:  # planning facts, when the library exposes them
      from hesso_jax.optim.cric import cric_schedule as _plan
      plan = _plan(space_p, **{k: kw[k] for k in ("start_cric_step", "sampling_steps",
                                                  "max_cycle_period", "hybrid_training_steps")})
      record["hesso_cric_plan"] = plan
      if plan["latest_done"] > steps:
        print(f"WARNING: CRIC may still be forgetting groups at the end (latest_done="
              f"{plan['latest_done']} > steps={steps}); raise --steps")
    except ImportError:
      pass
  else:
    raise ValueError(optimizer)

  cb = None
  if space_p.num_groups:
    gs_fn = jax.jit(lambda p: jnp.mean(space_p.group_norms(p) == 0))
    cb = lambda step, v, s, loss: {"group_sparsity": float(gs_fn(v["params"]))}
  res = T.train(model, variables, tx, make_iter(), steps, callback=cb,
                log_every=max(1, steps // 100), progress=progress, desc=f"{task}/{optimizer}",
                value_fn=optimizer == "hesso_cric")
  ev = evaluate(res.variables)
  record.update(ev)
  record["train_seconds"] = res.seconds
  if space_p.num_groups:
    report = hj.sparsity_report(space_p, res.variables["params"])
    record["group_sparsity"] = report["group_sparsity"]
    record["params_kept"] = hj.count_params(hj.prune(res.variables, space), params_only=True)
    record.update(flops_report(model, space, res.variables, jnp.asarray(x_ex)))
  else:
    record["group_sparsity"], record["params_kept"] = 0.0, n_params
  record["history"] = res.history
  if artifacts is not None:
    artifacts.update(model=model, space=space, variables=res.variables, x_example=x_ex,
                     opt_state=res.opt_state)

  out = T.results_dir(out_dir or task)
  stem = f"{optimizer}_s{sparsity:g}" + ("_small" if small else "") + f"_seed{seed}"
  T.write_json(record, out / f"{stem}.json")
  if plots:
    T.plot_history(res.history, out / f"{stem}_history.png", title=f"{task} {optimizer}")
    rows = []
    for p in sorted(out.glob("*.json")):
      r = json.loads(p.read_text())
      if r.get("small") == small and "group_sparsity" in r:
        rows.append(r)
    metric = T.metric_of(task)
    T.plot_accuracy_vs_sparsity(rows, out / f"{metric}_vs_sparsity{'_small' if small else ''}.png",
                                title=task, metric=metric)
  return record


def flops_report(model, space, variables, x) -> dict:
  """Per-example FLOPs (``hj.count``) of the full and the compressed model (dropped groups: those
  whose producer norm is 0), and the max |difference| of their outputs on ``x[:1]``."""
  x = x[:1]
  fn = M.inference_fn(model)
  small_fn, small = hj.compress(fn, variables, space, x)
  return {"flops": hj.count(fn, variables, x)["flops"],
          "flops_compressed": hj.count(small_fn, small, x)["flops"],
          "compress_max_abs_diff": float(jnp.max(jnp.abs(small_fn(small, x) - fn(variables, x))))}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--task", choices=TASKS, required=True)
  ap.add_argument("--optimizer", choices=OPTIMIZERS, default="hesso")
  ap.add_argument("--sparsity", type=float, default=0.5, help="target group sparsity (hesso*)")
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--lr", type=float, default=None)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--small", action="store_true", help="CI-speed: fewer steps, smaller LM")
  ap.add_argument("--out", default=None, help="results sub-folder (default: the task name)")
  ap.add_argument("--no-progress", action="store_true")
  a = ap.parse_args(argv)
  r = run(a.task, a.optimizer, a.sparsity, steps=a.steps, small=a.small, seed=a.seed, lr=a.lr,
          out_dir=a.out, progress=not a.no_progress)
  keys = ["task", "optimizer", "steps", "accuracy", "perplexity", "loss", "group_sparsity",
          "params_kept", "params_total", "flops", "flops_compressed", "train_seconds"]
  for k in keys:
    if k in r:
      v = r[k]
      print(f"{k:>18}: {v:.4f}" if isinstance(v, float) else f"{k:>18}: {v}")


if __name__ == "__main__":
  main()
