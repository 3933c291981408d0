"""Array surgery: slice every member axis of every prunable channel space by a keep-mask.

Path matching. A member path matches a leaf whose normalised key path spells it (exactly, or
with / without flax.nnx's trailing ``'value'``: :meth:`hesso_jax.SearchSpace.rebase`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jax.typing import ArrayLike

from hesso_jax._paths import (
  Path,
  leaves_with_paths,
  match_leaf,
  normalize_path,
  path_str,
  strip_value,
)
from hesso_jax.space import SearchSpace, require_space
from hesso_jax.surgery._keep import check_keep, resolve_keep
from hesso_jax.surgery._plan import apply_plan, axis_plan

__all__ = ["prune", "prune_like", "rebase_space"]


def rebase_space(space: SearchSpace, tree: Any) -> SearchSpace:
  """``space.rebase(tree)``: member paths respelled as ``tree``'s leaf paths (nnx 'value')."""
  return space.rebase(tree)


def _check_rooted(space: SearchSpace, tree: Any, fn: str) -> None:
  """ValueError when no member path of ``space`` is (a spelling of) a leaf path of ``tree``."""
  leaf_paths = [p for p, _ in leaves_with_paths(tree)]
  present = set(leaf_paths)
  if not any(match_leaf(p, present) is not None for p in space.paths()):
    known = ", ".join(sorted(path_str(p) for p in leaf_paths)[:8])
    raise ValueError(
      f"{fn}: no path of the search space is a leaf of the given variables (is the space "
      f"rooted elsewhere? try space.subtree('params')); leaves include: {known}"
    )


def prune(variables: Any, space: SearchSpace, keep: ArrayLike | None = None) -> Any:
  """Slice every member axis (producers, consumers, state) of every prunable space.

  Args:
    variables: any pytree holding (a subset of) the space's parameter paths: a linen variables
      dict, just its params, an nnx.State, a plain dict. Leaves not named by the space are
      returned unchanged.
    space: the SearchSpace (paths relative to ``variables``' root).
    keep: None -> keep every group whose producer L2 norm is not exactly 0 (computed on
      ``variables``); or a bool array of shape (space.num_groups,) over prunable groups.

  Returns:
    A pytree of the same structure with smaller leaves.

  Raises:
    ValueError: wrong keep shape, a space left with zero channels, or no member path of the
      space is a leaf of ``variables``.

  Warns:
    UserWarning when ``keep`` drops groups whose producer norm is not zero (not equivalent).

  Example (a 2-layer MLP whose 4 hidden channels are one space; channel 1 is zero):

  >>> import jax.numpy as jnp
  >>> import hesso_jax as hj
  >>> params = {"l0": {"kernel": jnp.ones((3, 4)).at[:, 1].set(0.0), "bias": jnp.zeros(4)},
  ...           "l1": {"kernel": jnp.ones((4, 2))}}
  >>> space = hj.SearchSpace((hj.ChannelSpace(4, (
  ...     hj.AxisSlice(("l0", "kernel"), 1), hj.AxisSlice(("l0", "bias"), 0),
  ...     hj.AxisSlice(("l1", "kernel"), 0, hj.CONSUMER))),))
  >>> small = hj.prune(params, space)  # keep=None: drop the all-zero channel
  >>> small["l0"]["kernel"].shape, small["l0"]["bias"].shape, small["l1"]["kernel"].shape
  ((3, 3), (3,), (3, 2))
  """
  require_space(space, "prune")
  _check_rooted(space, variables, "prune")
  space = space.rebase(variables)
  k = resolve_keep(space, variables, keep)
  return apply_plan(variables, axis_plan(space, k), lambda lp: lp)


def prune_like(
  tree: Any, space: SearchSpace, keep: ArrayLike, *, root_paths: Sequence[Any] | None = None
) -> Any:
  """Prune a tree whose leaves *mirror* parameters by key path; never warns.

  Leaves whose key path ends with a member path (``root_paths=None``: longest-suffix match, so
  ``(0, 'mu', 'params', 'conv', 'kernel')`` matches member ``('params', 'conv', 'kernel')``) or,
  when ``root_paths`` is given, whose path is ``root + member path`` for one of the roots, are
  sliced like that member; all other leaves are returned unchanged. Member paths absent from the
  tree are skipped silently. ``keep`` must be given (bool, (num_groups,)). To prune an optimizer
  state against the params it was built for, :func:`hesso_jax.prune_opt_state` needs no paths.
  """
  require_space(space, "prune_like")
  k = check_keep(space, keep)
  space = space.canonical()
  members = space.paths()
  roots = None if root_paths is None else [normalize_path(r) for r in root_paths]
  maxlen = max((len(p) for p in members), default=0)

  def resolve(lp: Path) -> Path | None:
    lp = strip_value(lp)
    if roots is not None:
      for r in roots:
        if lp[: len(r)] == r and lp[len(r) :] in members:
          return lp[len(r) :]
      return None
    for n in range(min(len(lp), maxlen), 0, -1):
      if lp[-n:] in members:
        return lp[-n:]
    return None

  return apply_plan(tree, axis_plan(space, k), resolve)
