"""Scale-out helpers: params and HESSO optimizer-state shardings over a ``jax.sharding.Mesh``.

HESSO and HESSO-CRIC need nothing special to run sharded: their ``update`` is a pure, jittable
function of arrays whose group maths are static-shape reshapes and reductions, so under ``jax.jit``
with ``NamedSharding`` inputs XLA inserts the collectives (a partial reduction per group plus a
small all-reduce of ``(num_groups,)`` vectors). What users need is the *optimizer state's*
shardings, to pass as ``out_shardings`` to a jitted ``init`` / step and as the target of a
sharded checkpoint restore. :func:`opt_state_shardings` derives them from the params':

* a state subtree that mirrors the parameters (Adam's ``mu``/``nu``, momentum traces,
  HESSO-CRIC's parameter cache ...: the params' tree structure and leaf shapes) gets the
  parameters' shardings, leaf by leaf (``optax.tree_utils.tree_map_params``);
* everything else (step counts, the ``(num_groups,)`` redundant/pruned masks, CRIC's score
  vectors and loss ratios, scalars) is replicated over the mesh.

Typical use (FSDP over ``'data'``, tensor parallel over ``'model'``)::

    mesh = jax.make_mesh((2, 4), ('data', 'model'))
    p_sh = hj.param_shardings(params, mesh)               # or your own NamedShardings
    params = jax.device_put(params, p_sh)
    s_sh = hj.opt_state_shardings(tx, params)             # the state follows the params
    opt_state = jax.jit(tx.init, out_shardings=s_sh)(params)
    step = jax.jit(train_step, in_shardings=(p_sh, s_sh, batch_sh), out_shardings=(p_sh, s_sh))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hesso_jax._opt_trees import map_param_trees
from hesso_jax._paths import leaves_with_paths, normalize_path, path_str

__all__ = [
  "param_shardings",
  "opt_state_shardings",
  "abstract_opt_state",
  "abstract_like",
  "replicated",
  "sharded_init",
]


def replicated(mesh: Mesh) -> NamedSharding:
  """The fully replicated ``NamedSharding`` over ``mesh``."""
  return NamedSharding(mesh, P())


def _axis_size(mesh: Mesh, axis: str | tuple | None) -> int:
  if axis is None:
    return 1
  names = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[a] for a in names]))


def param_shardings(
  params: Any,
  mesh: Mesh,
  *,
  fsdp_axis: str | tuple | None = "data",
  tp_axis: str | tuple | None = "model",
  min_size: int = 0,
  rules: Callable[[tuple, tuple], P | None] | None = None,
) -> Any:
  """A default FSDP + tensor-parallel ``NamedSharding`` for every leaf of ``params``.

  For a leaf of rank >= 2 the *last* axis (a kernel's output features, the usual channel axis) is
  split over ``tp_axis`` and the largest remaining axis (ties: the later one) over ``fsdp_axis``;
  a rank-1 leaf (bias,
  norm scale) is split over ``tp_axis``. An axis is only split when the mesh axis size divides it;
  leaves with fewer than ``min_size`` elements and scalars are replicated. Axes named in the
  arguments but absent from the mesh are ignored (so a ``('data',)``-only mesh gives pure FSDP).

  ``rules(path, shape)`` may return a ``PartitionSpec`` to override the default for a leaf
  (``None`` keeps the default). Any sharding works with HESSO; this is only a convenience.
  """
  fsdp_axis = fsdp_axis if (fsdp_axis is not None and _in_mesh(mesh, fsdp_axis)) else None
  tp_axis = tp_axis if (tp_axis is not None and _in_mesh(mesh, tp_axis)) else None
  nf, nt = _axis_size(mesh, fsdp_axis), _axis_size(mesh, tp_axis)

  def leaf(path: Any, x: Any) -> NamedSharding:
    shape = tuple(np.shape(x))
    p = normalize_path(path)
    if rules is not None:
      override = rules(p, shape)
      if override is not None:
        return NamedSharding(mesh, override)
    if len(shape) == 0 or int(np.prod(shape)) < min_size:
      return NamedSharding(mesh, P())
    spec: list[Any] = [None] * len(shape)
    last = len(shape) - 1
    if tp_axis is not None and nt > 1 and shape[last] % nt == 0:
      spec[last] = tp_axis
    if len(shape) >= 2 and fsdp_axis is not None and nf > 1:
      cands = [a for a in range(len(shape)) if spec[a] is None and shape[a] % nf == 0]
      if cands:
        a = max(cands, key=lambda i: (shape[i], i))
        spec[a] = fsdp_axis
    return NamedSharding(mesh, P(*spec))

  return jax.tree_util.tree_map_with_path(leaf, params)


def _in_mesh(mesh: Mesh, axis) -> bool:
  names = axis if isinstance(axis, tuple) else (axis,)
  return all(a in mesh.axis_names for a in names)


def _sharding_of(x: Any) -> Any:
  return getattr(x, "sharding", None)


def _shape_structs(tree: Any) -> Any:
  """``tree`` as unsharded ``jax.ShapeDtypeStruct`` leaves (what ``tx.init`` is traced on)."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _find_mesh(shardings: list) -> Any:
  for s in shardings:
    if isinstance(s, NamedSharding):
      return s.mesh
  return None


def abstract_like(tree: Any, shardings: Any = None) -> Any:
  """``tree`` as ``jax.ShapeDtypeStruct`` leaves carrying ``shardings`` (or each leaf's own)."""
  if shardings is None:
    return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=_sharding_of(x)), tree
    )
  return jax.tree_util.tree_map(
    lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
  )


def opt_state_shardings(
  tx: Any, params: Any, mesh: Mesh | None = None, *, param_shardings: Any = None
) -> Any:
  """Shardings for ``tx.init(params)``'s state, derived from the params' shardings.

  Args:
    tx: any optax transformation (``hj.hesso(...)``, ``hj.hesso_cric(...)``, chains, wrappers).
    params: the params as arrays (their ``.sharding`` is used) or ``jax.ShapeDtypeStruct`` leaves
      (with ``sharding=`` set, or pass ``param_shardings``). Shapes are needed: ``tx.init`` is
      traced abstractly (``jax.eval_shape``; nothing is allocated) and HESSO validates them.
    mesh: the mesh for replicated leaves; default: the mesh of the params' ``NamedSharding``\\ s.
    param_shardings: a tree of shardings like ``params``, overriding the leaves' own.

  Returns:
    A tree of shardings with the structure of the optimizer state. Subtrees that mirror the
    params (same tree structure and leaf shapes) get the params' shardings; all other leaves
    (counts, the ``(num_groups,)`` masks, CRIC statistics, scalars) are replicated.
  """
  if param_shardings is None:
    param_shardings = jax.tree_util.tree_map(_sharding_of, params)
  p_leaves = leaves_with_paths(params)
  s_flat = jax.tree_util.tree_leaves(param_shardings, is_leaf=lambda x: x is None)
  if len(s_flat) != len(p_leaves) or any(s is None for s in s_flat):
    missing = [path_str(p) for (p, _), s in zip(p_leaves, s_flat, strict=True) if s is None][:5]
    raise ValueError(
      "opt_state_shardings: every parameter needs a sharding (arrays carry one; give "
      "jax.ShapeDtypeStruct(..., sharding=...) leaves or param_shardings=); missing for: "
      f"{', '.join(missing) or '(structure mismatch between params and param_shardings)'}"
    )
  if mesh is None:
    mesh = _find_mesh(s_flat)
  if mesh is not None:
    rep = replicated(mesh)
  else:
    devs = {d for s in s_flat for d in s.device_set}
    if len(devs) != 1:
      raise ValueError("opt_state_shardings: the params are not NamedSharding-sharded; pass mesh=")
    rep = s_flat[0]

  state_shapes = jax.eval_shape(tx.init, _shape_structs(params))
  return map_param_trees(
    lambda _, sh: sh, state_shapes, params, param_shardings, transform_non_params=lambda _: rep
  )


def abstract_opt_state(
  tx: Any, params: Any, mesh: Mesh | None = None, *, param_shardings: Any = None
) -> Any:
  """``jax.ShapeDtypeStruct`` tree of ``tx.init(params)`` with :func:`opt_state_shardings`.

  The restore target for a sharded checkpoint (see :func:`hesso_jax.restore_checkpoint`).
  """
  sh = opt_state_shardings(tx, params, mesh, param_shardings=param_shardings)
  shapes = jax.eval_shape(tx.init, _shape_structs(params))
  return jax.tree_util.tree_map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sh
  )


def sharded_init(tx: Any, params: Any, mesh: Mesh | None = None) -> Any:
  """``tx.init(params)`` computed under ``jit`` directly into the sharded layout."""
  sh = opt_state_shardings(tx, params, mesh)
  return jax.jit(tx.init, out_shardings=sh)(params)
