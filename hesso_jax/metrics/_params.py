"""Parameter counts, with or without buffers (batch-norm running statistics)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

__all__ = ["count_params"]


def _params_subtree(variables: Any) -> Any:
  """The trainable parameters of ``variables``: linen's ``'params'`` collection, nnx's Params."""
  if isinstance(variables, nnx.Module):
    return nnx.state(variables, nnx.Param)
  if isinstance(variables, nnx.State):
    return variables.filter(nnx.Param)
  if hasattr(variables, "keys") and "params" in variables:
    return variables["params"]
  return variables


def count_params(variables: Any, *, params_only: bool = False) -> int:
  """Total number of elements of the array leaves of ``variables``.

  By default every collection counts (a linen dict's ``'params'`` AND ``'batch_stats'``; every
  nnx Variable). ``params_only=True`` counts parameters without buffers, the convention of OTO
  and the torch tools: a mapping with a ``'params'`` key counts only ``variables['params']``
  (linen); an nnx Module / State counts only ``nnx.Param`` variables; other trees count every
  leaf.
  """
  tree = _params_subtree(variables) if params_only else variables
  return int(
    sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "shape"))
  )
