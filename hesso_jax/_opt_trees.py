"""The parameter-shaped subtrees of an optimizer state (one way to find them).

Optimizer-state surgery (:func:`hesso_jax.prune_opt_state`) and sharding
(:func:`hesso_jax.opt_state_shardings`) both need the subtrees of an optax state that mirror the
parameters (Adam's ``mu`` / ``nu``, momentum traces, HESSO-CRIC's parameter cache) as opposed to
the rest (step counts, per-group vectors, scalars). :func:`map_param_trees` finds them with
``optax.tree_utils.tree_map_params``. Its *initable* is either the transformation itself (its
``init`` is called on a placeholder, so it must not inspect the params) or, by default, one built
from the state and the params: a subtree mirrors the params when it has their tree structure and
leaf shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

__all__ = ["map_param_trees"]


def _structural_init(state: Any, params: Any) -> Callable[[Any], Any]:
  """An ``init`` for ``tree_map_params``: ``state`` with each params-mirroring subtree replaced
  by the placeholder it is given."""
  pdef: Any = jax.tree_util.tree_structure(params)
  pshapes = [np.shape(x) for x in jax.tree_util.tree_leaves(params)]

  def mirrors(node: Any) -> bool:
    if jax.tree_util.tree_structure(node) != pdef:
      return False
    return [np.shape(x) for x in jax.tree_util.tree_leaves(node)] == pshapes

  def is_param_tree(node: Any) -> bool:  # a lone array is a mirror only as the whole state
    return not isinstance(node, (jax.Array, np.ndarray)) and mirrors(node)

  def init(placeholder: Any) -> Any:
    if mirrors(state) and jax.tree_util.tree_leaves(state):
      return placeholder
    return jax.tree_util.tree_map(
      lambda n: placeholder if is_param_tree(n) else n, state, is_leaf=is_param_tree
    )

  return init


def map_param_trees(
  f: Callable[..., Any],
  state: Any,
  params: Any,
  *rest: Any,
  tx: optax.GradientTransformation | None = None,
  transform_non_params: Callable[[Any], Any] | None = None,
) -> Any:
  """``f(leaf, *rest_leaves)`` over every params-mirroring subtree of ``state``.

  Args:
    f: applied leaf-wise to each params-shaped subtree, together with the matching leaves of
      ``rest``.
    state: an optimizer state (arrays or ``jax.ShapeDtypeStruct``).
    params: the params ``state`` was built for (arrays or abstract); defines the structure.
    *rest: trees with the structure of ``params`` (e.g. their shardings).
    tx: the transformation that built ``state``; when given its ``init`` says which subtrees are
      params (``optax.tree_utils.tree_map_params``); default: structure and shapes decide.
    transform_non_params: applied to every other leaf (default: left as it is).
  """
  initable = tx if tx is not None else _structural_init(state, params)
  return optax.tree_utils.tree_map_params(
    initable, f, state, *rest, transform_non_params=transform_non_params
  )
