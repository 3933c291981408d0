"""The search-space data model: channel spaces, axis slices and vectorised group maths.

* :mod:`hesso_jax.space._channels` -- :class:`AxisSlice`, :class:`ChannelSpace` and the roles;
* :mod:`hesso_jax.space._search_space` -- :class:`SearchSpace` (group ids, validation,
  re-rooting / respelling, jittable group reductions and masks);
* :mod:`hesso_jax.space._layout` -- the per-member ``(outer, width, inner)`` reshapes;
* :mod:`hesso_jax.space._resharding` -- per-group vectors under explicit-axes meshes;
* key-path utilities are re-exported from :mod:`hesso_jax._paths`.
"""

from hesso_jax._paths import Path, leaves_with_paths, normalize_path, path_str
from hesso_jax.space._channels import CONSUMER, PRODUCER, ROLES, STATE, AxisSlice, ChannelSpace
from hesso_jax.space._layout import expand_channel_mask
from hesso_jax.space._search_space import SearchSpace, require_space

__all__ = [
  "CONSUMER",
  "PRODUCER",
  "ROLES",
  "STATE",
  "AxisSlice",
  "ChannelSpace",
  "Path",
  "SearchSpace",
  "expand_channel_mask",
  "leaves_with_paths",
  "normalize_path",
  "path_str",
  "require_space",
]
