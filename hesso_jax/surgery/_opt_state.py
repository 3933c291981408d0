"""Optimizer-state surgery: carry an optax state over to the pruned parameters.

The params-mirroring subtrees are found once, by :func:`hesso_jax._opt_trees.map_param_trees`
(``optax.tree_utils.tree_map_params``); per-group vectors are renumbered like
:func:`hesso_jax.prune_space` numbers the kept groups.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from hesso_jax._opt_trees import map_param_trees
from hesso_jax._paths import leaves_with_paths, path_str
from hesso_jax.space import SearchSpace, require_space
from hesso_jax.surgery._keep import check_keep
from hesso_jax.surgery._plan import axis_plan, slice_leaf
from hesso_jax.surgery._prune import _check_rooted

__all__ = ["prune_opt_state", "reindex_groups"]

_GROUP_VECTOR_MODES = ("reindex", "reset", "keep")


def reindex_groups(x: ArrayLike, keep: ArrayLike) -> jax.Array:
  """A per-group vector (num_groups, ...) restricted to the kept groups, in order.

  The pruned model's search space (:func:`hesso_jax.prune_space`) numbers its groups exactly
  this way.
  """
  k = np.asarray(jax.device_get(keep)).astype(bool)
  return jnp.asarray(x)[jnp.asarray(np.flatnonzero(k))]


def _group_vector_fn(num_groups: int, keep: np.ndarray, mode: str) -> Any:
  """The transformation of non-parameter state leaves for ``group_vectors=mode``."""
  kidx = jnp.asarray(np.flatnonzero(keep))

  def fn(x: Any) -> Any:
    if mode == "keep" or not isinstance(x, (jax.Array, np.ndarray)):
      return x
    if np.shape(x) != (num_groups,):
      return x
    if mode == "reindex":
      return jnp.asarray(x)[kidx]
    return jnp.zeros((kidx.shape[0],), jnp.asarray(x).dtype)

  return fn


def prune_opt_state(
  opt_state: Any,
  params: Any,
  space: SearchSpace,
  keep: ArrayLike,
  *,
  group_vectors: str = "reindex",
  tx: optax.GradientTransformation | None = None,
) -> Any:
  """Prune an optax state so that training can continue on ``prune(params, space, keep)``.

  * Every sub-tree of ``opt_state`` that mirrors ``params`` (Adam's ``mu`` and ``nu``, momentum
    traces, ...) is pruned exactly like ``params``. Mirrors are found with
    ``optax.tree_utils.tree_map_params``: by ``tx.init`` when ``tx`` is given (it must accept a
    placeholder for the params), otherwise as the sub-trees with ``params``' tree structure and
    leaf shapes.
  * Remaining array leaves of shape ``(num_groups,)`` are per-group vectors (HESSO's
    redundant / pruned masks, saliency accumulators): ``group_vectors='reindex'`` (default)
    keeps their entries of the kept groups, in order, which is exactly the group numbering of
    :func:`hesso_jax.prune_space` ``(space, keep)``; ``'reset'`` replaces them with zeros of the
    new length (for bool masks: all False, i.e. forget which groups were redundant/pruned);
    ``'keep'`` leaves them untouched (then the state no longer matches the pruned space).
  * Everything else (step counts, scalars) is unchanged.

  ``space`` must be rooted at ``params`` (use ``space.subtree('params')`` when the optimizer
  sees ``variables['params']``).
  """
  require_space(space, "prune_opt_state")
  if group_vectors not in _GROUP_VECTOR_MODES:
    raise ValueError(f"group_vectors must be one of {_GROUP_VECTOR_MODES}, got {group_vectors!r}")
  k = check_keep(space, keep)
  _check_rooted(space, params, "prune_opt_state")
  plan = axis_plan(space.rebase(params), k)
  p_paths = [p for p, _ in leaves_with_paths(params)]
  index_tree = jax.tree_util.tree_unflatten(
    jax.tree_util.tree_structure(params), range(len(p_paths))
  )

  def prune_leaf(x: Any, i: int) -> Any:
    p = p_paths[i]
    return slice_leaf(x, plan[p], path_str(p)) if p in plan else x

  return map_param_trees(
    prune_leaf,
    opt_state,
    params,
    index_tree,
    tx=tx,
    transform_non_params=_group_vector_fn(space.num_groups, k, group_vectors),
  )
