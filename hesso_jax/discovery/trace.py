"""Trace ``fn(variables, *args, **kwargs)`` to a jaxpr over flat leaves, keeping key paths.

Concrete arrays and ``jax.ShapeDtypeStruct`` leaves give the same jaxpr. The jaxpr's first
``num_var_leaves`` inputs are the variables' leaves in ``jax.tree_util`` order; the rest are the
array leaves of ``(args, kwargs)``. Non-array leaves of the arguments (Python bools such as
``train=False``) are static and closed over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from hesso_jax.space import Path, normalize_path


def _is_array_like(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct, np.generic)) or (
    hasattr(x, "shape") and hasattr(x, "dtype")
  )


def default_state_paths(variables: Any) -> set[Path]:
  """Paths of leaves that are state, not trainable parameters.

  * flax.linen variables: every collection other than ``'params'``.
  * flax.nnx State: every ``nnx.Variable`` that is not an ``nnx.Param``.
  * anything else: nothing.
  """
  out: set[Path] = set()
  try:
    from flax import nnx

    is_var = lambda x: isinstance(x, nnx.Variable)
    flat, _ = jax.tree_util.tree_flatten_with_path(variables, is_leaf=is_var)
    for p, x in flat:
      if is_var(x) and not isinstance(x, nnx.Param):
        for q, _ in jax.tree_util.tree_flatten_with_path(x)[0]:
          out.add(normalize_path(tuple(p) + tuple(q)))
  except ImportError:  # pragma: no cover
    pass
  if isinstance(variables, dict) and "params" in variables:
    for p, _ in jax.tree_util.tree_flatten_with_path(variables)[0]:
      path = normalize_path(p)
      if path and path[0] != "params":
        out.add(path)
  return out


@dataclasses.dataclass
class Traced:
  closed: Any  # jax ClosedJaxpr
  num_var_leaves: int
  var_paths: list
  var_is_state: list
  var_treedef: Any
  arg_treedef: Any
  arg_dynamic: list  # bool per (args, kwargs) leaf
  arg_static: list  # the static leaves (None where dynamic)
  out_tree: Any


def trace(
  fn: Callable, variables: Any, *args, is_state: Callable | None = None, **kwargs
) -> Traced:
  vflat, vtree = jax.tree_util.tree_flatten_with_path(variables)
  for p, x in vflat:
    if not _is_array_like(x):
      raise TypeError(
        f"variables leaf {normalize_path(p)!r} is a {type(x).__name__}, not an "
        "array or jax.ShapeDtypeStruct"
      )
  var_paths = [normalize_path(p) for p, _ in vflat]
  state_paths = default_state_paths(variables)
  var_is_state = [(is_state(p) if is_state is not None else p in state_paths) for p in var_paths]
  aflat, atree = jax.tree_util.tree_flatten((args, kwargs))
  dyn = [_is_array_like(x) and not isinstance(x, (int, float, bool)) for x in aflat]
  static = [None if d else x for x, d in zip(aflat, dyn, strict=True)]
  nv = len(vflat)

  def flat_fn(*leaves):
    vs = jax.tree_util.tree_unflatten(vtree, leaves[:nv])
    it = iter(leaves[nv:])
    a_leaves = [next(it) if d else s for d, s in zip(dyn, static, strict=True)]
    a, kw = jax.tree_util.tree_unflatten(atree, a_leaves)
    return fn(vs, *a, **kw)

  ins = [x for _, x in vflat] + [x for x, d in zip(aflat, dyn, strict=True) if d]
  ins = [
    jax.ShapeDtypeStruct(np.shape(x), x.dtype) if not isinstance(x, jax.ShapeDtypeStruct) else x
    for x in ins
  ]
  closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*ins)
  out_tree = jax.tree_util.tree_structure(out_shape)
  return Traced(closed, nv, var_paths, var_is_state, vtree, atree, dyn, static, out_tree)
