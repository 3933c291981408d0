"""Orbax checkpoints of (params, optimizer state), mid-pruning included, with structure checks.

A HESSO / HESSO-CRIC state is a NamedTuple of arrays (step count, ``(num_groups,)`` masks, the
base optimizer's state, CRIC's statistics and parameter cache), so it checkpoints like any optax
state; resuming from it continues the exact same trajectory (the whole schedule is a function of
the stored arrays). What this module adds on top of ``orbax.checkpoint``:

* a small JSON record next to the arrays (``hesso_meta``): the number of groups, the HESSO state
  type, every leaf's key path / shape / dtype, and (optionally) a fingerprint of the search space;
* on restore, the target is checked against that record *before* any array is read, so restoring
  with a different search space (another ``num_groups``), another base optimizer, or HESSO vs
  HESSO-CRIC fails with a message naming what differs instead of an opaque orbax error;
* restore into any layout: the abstract targets' ``sharding`` decides where each array lands
  (use :func:`hesso_jax.abstract_opt_state` for a sharded optimizer state).

Example::

    hj.save_checkpoint(ckpt_dir, step, params, opt_state, space=space)
    ...
    abs_params = hj.abstract_like(params_template, p_shardings)
    abs_state = hj.abstract_opt_state(tx, abs_params)
    params, opt_state = hj.restore_checkpoint(ckpt_dir, step, abs_params, abs_state, space=space)
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np

from hesso_jax.optim import find_pruning_states

__all__ = [
    "save_checkpoint",
    "restore_checkpoint",
    "latest_step",
    "checkpoint_metadata",
    "CheckpointMismatchError",
    "space_fingerprint",
]

FORMAT = "hesso_jax.checkpoint/1"
_ITEMS = ("params", "opt_state", "hesso_meta")


class CheckpointMismatchError(ValueError):
  """The restore target does not match what the checkpoint holds."""


def _ocp():
  import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import

  return ocp


def _manager(directory: Any, *, max_to_keep: int | None = None, read_only: bool = False):
  ocp = _ocp()
  directory = os.path.abspath(os.fspath(directory))
  # read_only=True makes orbax log warnings on every open; not creating the directory is enough
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                      enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=opts, item_names=_ITEMS)


# ----------------------------------------------------------------------------------------------
# structure records
# ----------------------------------------------------------------------------------------------


def _leaf_table(tree: Any) -> dict[str, list]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p): [list(np.shape(x)), str(np.dtype(x.dtype))] for p, x in flat}


def _hesso_states(tree: Any) -> list:
  return find_pruning_states(tree)


def _state_summary(opt_state: Any) -> dict:
  found = _hesso_states(opt_state)
  if not found:
    return {"state_type": None, "num_groups": None}
  st = found[0]
  return {"state_type": type(st).__name__, "num_groups": int(np.shape(st.pruned)[0])}


def space_fingerprint(space: Any) -> dict:
  """A JSON-able description of a :class:`SearchSpace`: num_groups, the spaces, a hash."""
  spaces = [[s.label(), int(s.size), bool(s.prunable)] for s in space.channel_spaces]
  digest = hashlib.sha256(repr(space.channel_spaces).encode()).hexdigest()[:16]
  return {"num_groups": int(space.num_groups), "spaces": spaces, "sha256": digest}


def _meta(step: int, params: Any, opt_state: Any, space: Any) -> dict:
  meta = {"format": FORMAT, "step": int(step), **_state_summary(opt_state),
          "params": _leaf_table(params), "opt_state": _leaf_table(opt_state),
          "opt_state_treedef": str(jax.tree_util.tree_structure(opt_state))}
  meta["space"] = space_fingerprint(space) if space is not None else None
  return meta


def _diff_tables(what: str, saved: dict, target: dict, limit: int = 8) -> list[str]:
  msgs = []
  missing = [k for k in saved if k not in target]
  extra = [k for k in target if k not in saved]
  if missing:
    msgs.append(f"{what}: {len(missing)} leaves in the checkpoint are not in the target, e.g. "
                + ", ".join(missing[:limit]))
  if extra:
    msgs.append(f"{what}: {len(extra)} leaves of the target are not in the checkpoint, e.g. "
                + ", ".join(extra[:limit]))
  diff = [(k, saved[k], target[k]) for k in saved if k in target and list(saved[k]) != list(target[k])]
  for k, a, b in diff[:limit]:
    msgs.append(f"{what}{k}: checkpoint has shape {tuple(a[0])} {a[1]}, target has "
                f"shape {tuple(b[0])} {b[1]}")
  if len(diff) > limit:
    msgs.append(f"{what}: ... and {len(diff) - limit} more shape/dtype differences")
  return msgs


def _validate(meta: dict, where: str, abstract_params: Any, abstract_opt_state: Any, space: Any) -> None:
  if meta.get("format") != FORMAT:
    raise CheckpointMismatchError(f"{where}: not a hesso_jax checkpoint (format {meta.get('format')!r})")
  tgt = _state_summary(abstract_opt_state)
  problems = []
  if meta["num_groups"] != tgt["num_groups"]:
    problems.append(
        f"search space mismatch: the checkpoint was saved with num_groups={meta['num_groups']} "
        f"({meta['state_type']}), the target optimizer state has num_groups={tgt['num_groups']} "
        f"({tgt['state_type']}); build the optimizer with the search space used for training")
  elif meta["state_type"] != tgt["state_type"]:
    problems.append(f"optimizer mismatch: the checkpoint holds a {meta['state_type']}, the target "
                    f"a {tgt['state_type']}")
  if space is not None and meta.get("space") is not None:
    a, b = meta["space"], space_fingerprint(space)
    if a["sha256"] != b["sha256"]:
      lines = [f"search space mismatch: checkpoint space {a['sha256']} ({a['num_groups']} groups, "
               f"{len(a['spaces'])} channel spaces) != given space {b['sha256']} ({b['num_groups']} "
               f"groups, {len(b['spaces'])} channel spaces)"]
      for i, (x, y) in enumerate(zip(a["spaces"], b["spaces"])):
        if list(x) != list(y):
          lines.append(f"  space #{i}: checkpoint {x[0]} size={x[1]} prunable={x[2]}; given {y[0]} "
                       f"size={y[1]} prunable={y[2]}")
          if len(lines) > 6:
            break
      if len(a["spaces"]) != len(b["spaces"]):
        lines.append(f"  {len(a['spaces'])} vs {len(b['spaces'])} channel spaces")
      problems.append("\n".join(lines))
  problems += _diff_tables("params", meta["params"], _leaf_table(abstract_params))
  problems += _diff_tables("opt_state", meta["opt_state"], _leaf_table(abstract_opt_state))
  if not problems:
    tdef = str(jax.tree_util.tree_structure(abstract_opt_state))
    if tdef != meta["opt_state_treedef"]:
      problems.append("opt_state: same leaves but a different tree structure:\n  checkpoint: "
                      f"{meta['opt_state_treedef'][:400]}\n  target:     {tdef[:400]}")
  if problems:
    raise CheckpointMismatchError(f"{where}: the restore target does not match the checkpoint:\n- "
                                  + "\n- ".join(problems))


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def save_checkpoint(directory: Any, step: int, params: Any, opt_state: Any, *, space: Any = None,
                    max_to_keep: int | None = None) -> str:
  """Save ``(params, opt_state)`` as checkpoint ``step`` under ``directory`` (blocking).

  Sharded arrays are written by every process for its own shards (orbax), so on a multi-host
  mesh every host calls this with its global arrays. ``space`` (optional) is fingerprinted so a
  restore with a different search space is caught even when the group count agrees.
  Returns the checkpoint's path.
  """
  ocp = _ocp()
  mngr = _manager(directory, max_to_keep=max_to_keep)
  try:
    mngr.save(int(step), args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        hesso_meta=ocp.args.JsonSave(_meta(step, params, opt_state, space))), force=True)
    mngr.wait_until_finished()
  finally:
    mngr.close()
  return os.path.join(os.path.abspath(os.fspath(directory)), str(int(step)))


def latest_step(directory: Any) -> int | None:
  """The newest checkpoint step under ``directory`` (None if there is none)."""
  if not os.path.isdir(os.fspath(directory)):
    return None
  mngr = _manager(directory, read_only=True)
  try:
    return mngr.latest_step()
  finally:
    mngr.close()


def checkpoint_metadata(directory: Any, step: int) -> dict:
  """The JSON structure record saved with checkpoint ``step``."""
  ocp = _ocp()
  mngr = _manager(directory, read_only=True)
  try:
    if step not in mngr.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} under {directory} (have "
                              f"{sorted(mngr.all_steps())})")
    out = mngr.restore(int(step), args=ocp.args.Composite(hesso_meta=ocp.args.JsonRestore()))
    return dict(out["hesso_meta"])
  finally:
    mngr.close()


def restore_checkpoint(directory: Any, step: int | None, abstract_params: Any, abstract_opt_state: Any,
                       *, space: Any = None) -> tuple[Any, Any]:
  """Restore ``(params, opt_state)`` of checkpoint ``step`` (None: the latest) into the targets.

  ``abstract_params`` / ``abstract_opt_state`` are trees of ``jax.ShapeDtypeStruct`` (or arrays)
  with the structure to restore into; their ``sharding`` decides the layout of the restored arrays
  (:func:`hesso_jax.abstract_like`, :func:`hesso_jax.abstract_opt_state`). The targets are
  checked against the checkpoint's record first; a different search space (num_groups or, with
  ``space=``, its fingerprint), optimizer or state structure raises
  :class:`CheckpointMismatchError` naming the differences.
  """
  ocp = _ocp()
  from hesso_jax.sharding import abstract_like

  if step is None:
    step = latest_step(directory)
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {directory}")
  meta = checkpoint_metadata(directory, step)
  where = f"restore_checkpoint({os.fspath(directory)!s}, step={step})"
  abs_p = _as_abstract(abstract_params, abstract_like)
  abs_s = _as_abstract(abstract_opt_state, abstract_like)
  _validate(meta, where, abs_p, abs_s, space)
  mngr = _manager(directory, read_only=True)
  try:
    out = mngr.restore(int(step), args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abs_p), opt_state=ocp.args.StandardRestore(abs_s)))
  finally:
    mngr.close()
  return out["params"], out["opt_state"]


def _as_abstract(tree: Any, abstract_like) -> Any:
  def leaf(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return abstract_like(x)

  return jax.tree_util.tree_map(leaf, tree)
