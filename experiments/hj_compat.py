"""The experiments' thin layer over the hesso_jax public API (DESIGN.md section 2).

* :func:`search_space` -- ``hj.discover(fn, variables, x)`` on the inference function;
  :func:`manual_space` keeps hand-written spaces for the simple models as worked examples of the
  escape hatch (``hj.SearchSpace.from_channel_spaces``); a test checks they equal discovery's.
* :func:`make_hesso`, :func:`make_hesso_cric` -- ``hj.hesso`` / ``hj.hesso_cric``.
* :func:`group_sparsity`, :func:`kept_param_count`, :func:`flops_report` -- reporting.

Library failures surface as exceptions: there are no fallbacks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import hesso_jax as hj
from hesso_jax.space import AxisSlice, ChannelSpace, SearchSpace

P, C, S = "producer", "consumer", "state"


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


def search_space(task: str, model, variables, x) -> tuple[SearchSpace, str]:
  """The full-variables search space (``hj.discover``) and its source label."""
  fn = lambda v, xb: model.apply(v, xb, train=False)
  return hj.discover(fn, variables, x), "hj.discover"


# ------------------------------------------------------------------------------------------------
# optimizers
# ------------------------------------------------------------------------------------------------


def make_hesso(base_tx, space_params: SearchSpace, **kw):
  """(tx, source): ``hj.hesso(base_tx, space, **kw)`` -- HESSO must stay the outermost transformation."""
  return hj.hesso(base_tx, space_params, **kw), "hj.hesso"


def make_hesso_cric(base_tx, space_params: SearchSpace, **kw):
  """(tx, source): ``hj.hesso_cric``; its update reads the loss through ``value=loss``."""
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
  """Parameters left in ``variables[collection]`` after ``hj.prune`` (default keep: norm > 0)."""
  small = hj.prune(variables, space, keep=None if keep is None else jnp.asarray(keep, bool))
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(small[collection]))), "hj.prune"


def flops_report(model, space, variables, x) -> dict:
  """Per-example FLOPs (``hj.count``) of the full and the compressed model (dropped groups: those
  whose producer norm is 0), and the max |difference| of their outputs on ``x[:1]``."""
  x = x[:1]
  fn = lambda v, xb: model.apply(v, xb, train=False)
  small_fn, small = hj.compress(fn, variables, space, x)
  return {"flops": hj.count(fn, variables, x)["flops"],
          "flops_compressed": hj.count(small_fn, small, x)["flops"],
          "compress_max_abs_diff": float(jnp.max(jnp.abs(small_fn(small, x) - fn(variables, x))))}
