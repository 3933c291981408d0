"""Finding a HESSO-family state inside any (chained, wrapped, nnx) optimizer state.

The lookup is structural: any state exposing ``count``, ``redundant`` and ``pruned`` (the
:class:`PruningState` protocol) is found, so no optimizer module has to be named here and a new
optimizer of the family is found without touching this module.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PruningState", "find_pruning_states", "pruned_mask", "redundant_mask"]


@runtime_checkable
class PruningState(Protocol):
  """What every HESSO-family optimizer state exposes (``HessoState``, ``CricState``)."""

  count: Any       # int32 scalar, number of update calls so far
  redundant: Any   # bool (G,), groups being forgotten
  pruned: Any      # bool (G,), groups committed to exactly zero


def find_pruning_states(opt_state: Any) -> list[PruningState]:
  """Every :class:`PruningState` inside ``opt_state`` (a pytree of any nesting), in tree order."""
  found: list[PruningState] = []

  def visit(x: Any) -> bool:
    if isinstance(x, tuple) and isinstance(x, PruningState):
      found.append(x)
      return True
    return False

  jax.tree_util.tree_leaves(opt_state, is_leaf=visit)
  return found


def _unwrap(x: Any) -> jax.Array:
  # nnx.Optimizer stores state leaves as OptArray/OptVariable variables.
  if hasattr(x, "get_value"):
    x = x.get_value()
  elif hasattr(x, "value") and not isinstance(x, (jax.Array, np.ndarray)):
    x = x.value
  return jnp.asarray(x)


def _the_state(opt_state: Any, fn: str) -> PruningState:
  found = find_pruning_states(opt_state)
  if not found:
    raise ValueError(
        f"{fn}: no HessoState/CricState found in the given optimizer state (type "
        f"{type(opt_state).__name__}); pass the state of a hesso()/hesso_cric() transformation "
        "(possibly chained or wrapped)")
  if len(found) > 1:
    raise ValueError(f"{fn}: found {len(found)} HESSO states in the optimizer state; expected one")
  return found[0]


def pruned_mask(opt_state: Any) -> jax.Array:
  """bool (num_groups,): groups committed to exactly zero, from any (nested) optax state."""
  return _unwrap(_the_state(opt_state, "pruned_mask").pruned).astype(bool)


def redundant_mask(opt_state: Any) -> jax.Array:
  """bool (num_groups,): groups currently being forgotten (not yet committed)."""
  return _unwrap(_the_state(opt_state, "redundant_mask").redundant).astype(bool)
