"""Glue between the experiments and the hesso_jax public API (DESIGN.md section 2).

The experiments call the library through these few functions so that they keep running while
pieces of the library are still landing. Each function uses the library when it has the piece
and otherwise a clearly labelled fallback, and reports which one ran (``source`` strings):

* :func:`search_space`  -- ``hj.discover(fn, variables, x)``; fallback: a hand-written space from
  :func:`manual_space` (digits CNN / MNIST-1D CNN / MLP) built with ``hj.SearchSpace.from_channel_spaces``.
* :func:`make_hesso`, :func:`make_hesso_cric` -- ``hj.hesso`` / ``hj.hesso_cric`` (no fallback).
* :func:`pruned_mask`, :func:`kept_param_count`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import hesso_jax as hj
from hesso_jax.space import AxisSlice, ChannelSpace, SearchSpace, expand_channel_mask, leaves_with_paths

P, C, S = "producer", "consumer", "state"


def has(name: str) -> bool:
  return hasattr(hj, name)


# ------------------------------------------------------------------------------------------------
# search spaces
# ------------------------------------------------------------------------------------------------


def _conv_bn_space(name: str, n: int, conv: str, bn: str | None, consumer: str, consumer_axis: int,
                   *, kernel_ndim: int = 4, consumer_outer: int = 1) -> ChannelSpace:
  """conv out-channels (+ bias, + BN scale/shift as producers, BN mean/var as state) -> consumer."""
  members = [AxisSlice(("params", conv, "kernel"), kernel_ndim - 1, P),
             AxisSlice(("params", conv, "bias"), 0, P)]
  if bn is not None:
    members += [AxisSlice(("params", bn, "scale"), 0, P), AxisSlice(("params", bn, "bias"), 0, P),
                AxisSlice(("batch_stats", bn, "mean"), 0, S), AxisSlice(("batch_stats", bn, "var"), 0, S)]
  members.append(AxisSlice(("params", consumer, "kernel"), consumer_axis, C, outer=consumer_outer))
  return ChannelSpace(n, tuple(members), name=name)


def manual_space(task: str, model, variables) -> SearchSpace:
  """Hand-written search spaces (the escape hatch) for the models whose structure is simple.

  digits_cnn: every conv's out-channels (kernel out axis, bias, BN scale/bias as producers, BN
  running mean/var as 'state'), consumed by the next conv's in axis; the last conv feeds the
  flatten -> dense transition, where NHWC flattening makes channel the fastest axis, so the dense
  kernel's in axis has ``outer = H*W`` and ``inner = 1``; plus the hidden dense layer.
  """
  params = variables["params"]
  if task == "digits_cnn":
    feats = list(model.features)
    spaces = []
    for i, f in enumerate(feats):
      last = i == len(feats) - 1
      if last:
        hw = params["fc"]["kernel"].shape[0] // f
        spaces.append(_conv_bn_space(f"conv{i}", f, f"conv{i}", f"bn{i}", "fc", 0, consumer_outer=hw))
      else:
        spaces.append(_conv_bn_space(f"conv{i}", f, f"conv{i}", f"bn{i}", f"conv{i + 1}", 2))
    spaces.append(ChannelSpace(model.hidden, (
        AxisSlice(("params", "fc", "kernel"), 1, P), AxisSlice(("params", "fc", "bias"), 0, P),
        AxisSlice(("params", "head", "kernel"), 0, C)), name="fc"))
  elif task == "mnist1d":
    feats = list(model.features)
    spaces = []
    for i, f in enumerate(feats):
      if i == len(feats) - 1:
        length = params["head"]["kernel"].shape[0] // f
        spaces.append(_conv_bn_space(f"conv{i}", f, f"conv{i}", f"bn{i}", "head", 0, kernel_ndim=3,
                                     consumer_outer=length))
      else:
        spaces.append(_conv_bn_space(f"conv{i}", f, f"conv{i}", f"bn{i}", f"conv{i + 1}", 1, kernel_ndim=3))
  elif task == "mnist1d_mlp":
    hs = list(model.hidden)
    spaces = []
    for i, h in enumerate(hs):
      nxt = f"fc{i + 1}" if i + 1 < len(hs) else "head"
      spaces.append(ChannelSpace(h, (
          AxisSlice(("params", f"fc{i}", "kernel"), 1, P), AxisSlice(("params", f"fc{i}", "bias"), 0, P),
          AxisSlice(("params", nxt, "kernel"), 0, C)), name=f"fc{i}"))
  else:
    raise NotImplementedError(f"no hand-written search space for {task!r}; needs hj.discover")
  return SearchSpace.from_channel_spaces(spaces, variables)


def search_space(task: str, model, variables, x, *, prefer: str = "discover") -> tuple[SearchSpace, str]:
  """The full-variables search space and where it came from ('hj.discover' or 'manual')."""
  fn = lambda v, xb: model.apply(v, xb, train=False)
  if prefer == "discover" and has("discover"):
    try:
      return hj.discover(fn, variables, x), "hj.discover"
    except Exception as e:  # noqa: BLE001 -- report and fall back, never hide
      print(f"[hj_compat] hj.discover failed ({type(e).__name__}: {e}); using the hand-written space")
  return manual_space(task, model, variables), "manual"


# ------------------------------------------------------------------------------------------------
# optimizers
# ------------------------------------------------------------------------------------------------


def make_hesso(base_tx, space_params: SearchSpace, **kw):
  """(tx, source): ``hj.hesso(base_tx, space, **kw)`` -- HESSO must stay the outermost transformation."""
  if not has("hesso"):
    raise NotImplementedError("hj.hesso has not landed in hesso_jax yet")
  return hj.hesso(base_tx, space_params, **kw), "hj.hesso"


def make_hesso_cric(base_tx, space_params: SearchSpace, **kw):
  """(tx, source): ``hj.hesso_cric``; its update reads the loss through ``value=loss``."""
  if not has("hesso_cric"):
    raise NotImplementedError("hj.hesso_cric has not landed in hesso_jax yet")
  return hj.hesso_cric(base_tx, space_params, **kw), "hj.hesso_cric"


def pruned_mask(opt_state) -> np.ndarray:
  return np.asarray(hj.pruned_mask(opt_state))


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------


def group_sparsity(space_params: SearchSpace, params) -> float:
  """Fraction of prunable groups whose producer slices are exactly zero."""
  if space_params.num_groups == 0:
    return 0.0
  return float(jnp.mean(space_params.group_norms(params) == 0))


def kept_param_count(space: SearchSpace, variables, keep: np.ndarray | None = None,
                     collection: str = "params") -> tuple[int, str]:
  """Parameters left in ``variables[collection]`` after slicing away the dropped groups.

  Uses ``hj.prune`` when it exists; otherwise slices on paper: a leaf keeps, on each axis, the
  positions kept by every member that lives on that axis, and its size is the product.
  ``keep`` defaults to groups whose producer norm is > 0.
  """
  if keep is None:
    keep = np.asarray(space.group_norms(variables)) > 0
  keep = np.asarray(keep, bool)
  if has("prune"):
    try:
      small = hj.prune(variables, space, keep=jnp.asarray(keep))
      return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(small[collection]))), "hj.prune"
    except Exception as e:  # noqa: BLE001
      print(f"[hj_compat] hj.prune failed ({type(e).__name__}: {e}); counting on paper")
  axis_keep: dict[tuple, np.ndarray] = {}
  for s, off in zip(space.prunable_spaces, space.group_offsets):
    ks = keep[off:off + s.size]
    for m in s.members:
      key = (m.path, m.axis)
      mk = expand_channel_mask(ks, m, s.size)
      axis_keep[key] = mk if key not in axis_keep else axis_keep[key] & mk
  total = 0
  for path, x in leaves_with_paths(variables):
    if path[:1] != (collection,):
      continue
    shp = np.shape(x)
    total += math.prod(int(axis_keep[(path, a)].sum()) if (path, a) in axis_keep else d
                       for a, d in enumerate(shp))
  return total, "paper count"


def flops_report(model, space, variables, x) -> dict:
  """Per-example FLOPs (``hj.count``) of the full model and, when ``hj.compress`` exists, of the
  compressed one (dropped groups: those whose producer norm is 0), plus the max |difference| of
  their outputs on ``x[:1]``."""
  x = x[:1]
  out: dict[str, Any] = {}
  if not has("count"):
    return out
  fn = lambda v, xb: model.apply(v, xb, train=False)
  try:
    out["flops"] = hj.count(fn, variables, x)["flops"]
    if has("compress"):
      small_fn, small = hj.compress(fn, variables, space, x)
      out["flops_compressed"] = hj.count(small_fn, small, x)["flops"]
      out["compress_max_abs_diff"] = float(jnp.max(jnp.abs(small_fn(small, x) - fn(variables, x))))
  except Exception as e:  # noqa: BLE001 -- a report, not a reason to lose the run
    out["flops_error"] = f"{type(e).__name__}: {e}"
  return out
