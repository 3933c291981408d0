"""The keep policy: which groups a pruning keeps, validated, with a warning when it is lossy.

A keep-mask is a bool ``(num_groups,)`` array over the prunable groups of a
:class:`~hesso_jax.SearchSpace`. Given none, surgery keeps every group whose producer L2 norm is
not exactly zero (what HESSO leaves behind), so the pruned model equals the full one.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

from hesso_jax._paths import leaves_with_paths
from hesso_jax.space import SearchSpace, require_space

__all__ = ["check_keep", "default_keep", "group_norms_host", "resolve_keep"]


def check_keep(space: SearchSpace, keep: ArrayLike) -> np.ndarray:
  """Validate a keep-mask: bool (num_groups,), keeping >= 1 channel of every prunable space.

  Returns it as a numpy bool array. Raises ValueError (naming the space) otherwise.
  """
  require_space(space, "check_keep")
  g = space.num_groups
  k = np.asarray(jax.device_get(keep))
  if k.shape != (g,):
    raise ValueError(
      f"keep-mask must have shape ({g},) (one entry per prunable group), got {k.shape}"
    )
  if k.dtype != np.bool_:
    if not np.isin(k, (0, 1)).all():
      raise ValueError(f"keep-mask must be boolean, got dtype {k.dtype} with non-0/1 values")
    k = k.astype(bool)
  spaces = zip(space.prunable_spaces, space.group_offsets, space.labels(True), strict=True)
  for s, off, lab in spaces:
    if not k[off : off + s.size].any():
      raise ValueError(
        f"keep-mask keeps zero of the {s.size} channels of space {lab!r}; at least one channel "
        "of every space must be kept (the layer would vanish)"
      )
  return k


def group_norms_host(space: SearchSpace, variables: Any) -> np.ndarray:
  """Host copy of ``space.group_norms(variables)`` (one jit: cheaper than many eager ops)."""
  try:
    out = jax.jit(space.group_norms)(variables)
  except TypeError:  # non-array leaves
    out = space.group_norms(variables)
  return np.asarray(jax.device_get(out))


def default_keep(space: SearchSpace, variables: Any) -> np.ndarray:
  """keep = (producer group norm != 0), computed on ``variables``.

  Raises ValueError if a prunable space has no producer leaf in ``variables`` (its groups
  could not be measured) or if ``variables`` holds abstract leaves.
  """
  space = space.rebase(variables)
  leaves = leaves_with_paths(variables)
  if any(isinstance(x, jax.ShapeDtypeStruct) for _, x in leaves):
    raise ValueError(
      "keep=None needs concrete arrays to compute group norms; the given tree has "
      "jax.ShapeDtypeStruct leaves: pass an explicit keep-mask"
    )
  present = {p for p, _ in leaves}
  for s in space.prunable_spaces:
    if not any(m.path in present for m in s.producers()):
      raise ValueError(
        f"keep=None: no producer of space {s.label()!r} is a leaf of the given tree, so its group "
        "norms cannot be computed; pass an explicit keep-mask"
      )
  return group_norms_host(space, variables) != 0


def _warn_nonzero_drops(space: SearchSpace, variables: Any, keep: np.ndarray) -> None:
  """UserWarning per space whose dropped groups have non-zero producer norm.

  Only concrete trees can be measured: a tree with ``jax.ShapeDtypeStruct`` leaves, or one
  holding no producer at all, is not checked.
  """
  space = space.rebase(variables)
  leaves = leaves_with_paths(variables)
  present = {p for p, x in leaves if not isinstance(x, jax.ShapeDtypeStruct)}
  if len(present) != len(leaves):
    return
  if not any(m.path in present for s in space.prunable_spaces for m in s.producers()):
    return
  norms = group_norms_host(space, variables)
  spaces = zip(space.prunable_spaces, space.group_offsets, space.labels(True), strict=True)
  for s, off, lab in spaces:
    if not any(m.path in present for m in s.producers()):
      continue
    dropped = ~keep[off : off + s.size]
    if dropped.any():
      mx = float(norms[off : off + s.size][dropped].max())
      if mx > 0:
        warnings.warn(
          f"prune: space {lab!r} drops {int(dropped.sum())} group(s) whose producer norm is not "
          f"zero (max dropped norm {mx:.4g}); the pruned model will NOT be equivalent to the "
          "full one",
          UserWarning,
          stacklevel=4,
        )


def resolve_keep(
  space: SearchSpace, variables: Any, keep: ArrayLike | None = None, *, warn: bool = True
) -> np.ndarray:
  """The validated bool (num_groups,) keep-mask ``prune`` uses (default: norm != 0).

  With an explicit ``keep`` and ``warn=True``, warns (UserWarning) per space whose dropped
  groups are not exactly zero in ``variables``.
  """
  require_space(space, "resolve_keep")
  k = default_keep(space, variables) if keep is None else np.asarray(jax.device_get(keep))
  k = check_keep(space, k)
  if keep is not None and warn:
    _warn_nonzero_drops(space, variables, k)
  return k
