"""Group-sparsity reports: how many groups of each channel space are exactly zero."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from hesso_jax.space import SearchSpace, require_space

__all__ = ["sparsity_report"]


def sparsity_report(space: SearchSpace, variables: Any) -> dict[str, Any]:
  """Group sparsity of ``variables`` (a group is zero when its producer norm is exactly 0).

  Returns {'num_groups', 'zero_groups', 'group_sparsity', 'spaces': {label: {'size', 'kept',
  'zero', 'prunable'}}}; unprunable spaces report kept == size.
  """
  require_space(space, "sparsity_report")
  space = space.rebase(variables)
  zero = np.asarray(jax.device_get(space.group_norms(variables))) == 0
  offs = {id(s): o for s, o in zip(space.prunable_spaces, space.group_offsets, strict=True)}
  spaces = {}
  for s, lab in zip(space.channel_spaces, space.labels(), strict=True):
    z = int(zero[offs[id(s)] : offs[id(s)] + s.size].sum()) if s.prunable else 0
    spaces[lab] = {"size": s.size, "kept": s.size - z, "zero": z, "prunable": s.prunable}
  g = int(space.num_groups)
  nz = int(zero.sum())
  return {
    "num_groups": g,
    "zero_groups": nz,
    "group_sparsity": (nz / g) if g else 0.0,
    "spaces": spaces,
  }
