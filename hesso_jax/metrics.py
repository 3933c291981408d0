"""Parameter and FLOP counts, and sparsity reports.

FLOP convention (documented contract):

* ``dot_general``: 2 x MACs = 2 x prod(output shape) x prod(contracting dims). This covers every
  matmul in the traced function: dense layers, einsums, attention's ``q @ k^T`` and
  ``probs @ v``.
* ``conv_general_dilated``: 2 x prod(output shape) x (kernel input features per group) x
  prod(kernel window). ``feature_group_count`` is accounted for because the kernel's input
  feature dimension is already ``in / groups``; padding positions are counted (dense count).
* Everything else is free by default. With ``elementwise=True`` every elementwise arithmetic
  primitive costs 1 flop per *output* element and reductions cost 1 flop per *input* element
  (data movement -- reshape, transpose, broadcast, slice, convert -- stays free).
* Control flow: ``scan`` multiplies its body by ``length``; ``while`` counts its cond and body
  ONCE (the trip count is unknown at trace time); ``cond``/``switch`` takes the max over
  branches; ``pjit``/``closed_call``/``remat``/``custom_jvp_call``/``custom_vjp_call``/
  ``shard_map`` and any other primitive carrying jaxprs: the sum over its jaxprs (forward only).

The reference implementation (OTO) counts only conv/linear multiplications; we count 2 x MACs of
every dot_general and conv, including attention's matmuls, so numbers are ~2x the reference's
MAC-style counts for CNNs and higher for transformers.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np

from hesso_jax import _jaxpr as J
from hesso_jax.space import SearchSpace

def _size(aval) -> int:
  shape = getattr(aval, "shape", ())
  return int(math.prod(shape)) if shape else 1


def _dot_flops(eqn) -> float:
  lhs = eqn.invars[0].aval
  (lc, _), _ = eqn.params["dimension_numbers"]
  k = math.prod(lhs.shape[d] for d in lc) if lc else 1
  return 2.0 * _size(eqn.outvars[0].aval) * k


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval
  dn = eqn.params["dimension_numbers"]
  # ConvDimensionNumbers(lhs_spec, rhs_spec, out_spec); rhs_spec = (out_feat, in_feat, *spatial)
  rhs_spec = dn.rhs_spec
  cin = rhs.shape[rhs_spec[1]]
  window = math.prod(rhs.shape[d] for d in rhs_spec[2:])
  return 2.0 * _size(eqn.outvars[0].aval) * cin * window


def jaxpr_flops(jaxpr, *, elementwise: bool = False) -> float:
  """FLOPs of a (closed) jaxpr under the module's convention."""
  jaxpr, _ = J.open_jaxpr(jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"], elementwise=elementwise)
    elif name == "while":
      total += (jaxpr_flops(eqn.params["body_jaxpr"], elementwise=elementwise)
                + jaxpr_flops(eqn.params["cond_jaxpr"], elementwise=elementwise))
    elif name == "cond":
      total += max((jaxpr_flops(b, elementwise=elementwise) for b in eqn.params["branches"]),
                   default=0.0)
    else:
      subs = list(J.sub_jaxprs(eqn.params))
      if subs:
        total += sum(jaxpr_flops(j, elementwise=elementwise) for j in subs)
      elif elementwise:
        if name in J.ELEMENTWISE_PRIMITIVES:
          total += sum(_size(v.aval) for v in eqn.outvars)
        elif name in J.REDUCTION_PRIMITIVES:
          total += _size(eqn.invars[0].aval)
  return total


def count_params(variables: Any, *, params_only: bool = False) -> int:
  """Total number of elements of the array leaves of ``variables``.

  ``params_only``: a mapping with a 'params' key counts only ``variables['params']`` (linen);
  an nnx Module / State counts only ``nnx.Param`` variables; other trees count every leaf.
  """
  tree = variables
  if params_only:
    tree = _params_subtree(variables)
  return int(sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree)
                 if hasattr(x, "shape")))


def _params_subtree(variables):
  try:
    from flax import nnx
    if isinstance(variables, nnx.Module):
      return nnx.state(variables, nnx.Param)
    if isinstance(variables, nnx.State):
      return variables.filter(nnx.Param)
  except ImportError:  # pragma: no cover
    pass
  if hasattr(variables, "keys") and "params" in variables:
    return variables["params"]
  return variables


def count_flops(fn: Callable, *args, elementwise: bool = False, **kwargs) -> float:
  """FLOPs of ``fn(*args, **kwargs)`` (traced with jax.make_jaxpr; args may be abstract)."""
  closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
  return jaxpr_flops(closed.jaxpr, elementwise=elementwise)


def count(fn: Callable, variables: Any, *args, params_only: bool = False,
          elementwise: bool = False, **kwargs) -> dict:
  """{'params': int, 'flops': float} of ``fn(variables, *args, **kwargs)``.

  params: total array elements of ``variables`` (all collections: a linen dict's 'params' AND
  'batch_stats'; pass ``params_only=True`` to count only parameters). flops: see the module
  docstring (2 x MACs of dot_general / conv; ``elementwise=True`` adds 1 flop per element of
  elementwise ops and reductions). Leaves of ``variables`` and ``args`` may be
  jax.ShapeDtypeStruct. The keyword names ``params_only`` and ``elementwise`` are consumed here
  and not passed to ``fn``.
  """
  return {
      "params": count_params(variables, params_only=params_only),
      "flops": float(count_flops(fn, variables, *args, elementwise=elementwise, **kwargs)),
  }


def sparsity_report(space: SearchSpace, variables: Any) -> dict:
  """Group sparsity of ``variables`` (a group is zero when its producer norm is exactly 0).

  Returns {'num_groups', 'zero_groups', 'group_sparsity', 'spaces': {label: {'size', 'kept',
  'zero', 'prunable'}}}; unprunable spaces report kept == size.
  """
  from hesso_jax.surgery.prune import _space_labels, rebase_space  # local: avoid cycles

  space = rebase_space(space, variables)
  norms = np.asarray(jax.device_get(space.group_norms(variables)))
  zero = norms == 0
  spaces = {}
  offs = {id(s): o for s, o in zip(space.prunable_spaces, space.group_offsets)}
  for s, lab in zip(space.channel_spaces, _space_labels(space)):
    if s.prunable:
      z = int(zero[offs[id(s)]:offs[id(s)] + s.size].sum())
      spaces[lab] = {"size": s.size, "kept": s.size - z, "zero": z, "prunable": True}
    else:
      spaces[lab] = {"size": s.size, "kept": s.size, "zero": 0, "prunable": False}
  g = int(space.num_groups)
  nz = int(zero.sum())
  return {
      "num_groups": g,
      "zero_groups": nz,
      "group_sparsity": (nz / g) if g else 0.0,
      "spaces": spaces,
  }
