"""Resharding of per-group vectors under explicit-axes meshes (sharding in types).

A reduction over a producer axis sharded along a mesh axis yields a vector sharded along it; with
``jax.sharding.AxisType.Explicit`` that sharding is part of the type, so sorting it or
broadcasting it against a differently sharded leaf is an error. With auto axes (or no mesh) the
type carries no sharding and both helpers are no-ops.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["shard_like", "unshard"]


def _spec(x: Any) -> Any:
  """The ``PartitionSpec`` in ``x``'s type, or None (no explicit sharding)."""
  return getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)


def unshard(v: jax.Array) -> jax.Array:
  """A per-group vector, made replicated under an explicit-axes mesh (no-op otherwise)."""
  spec = _spec(v)
  if spec is not None and any(a is not None for a in spec):
    return jax.sharding.reshard(v, jax.sharding.PartitionSpec())
  return v


def shard_like(v: jax.Array, x: Any) -> jax.Array:
  """Under an explicit-axes mesh, give broadcastable ``v`` the sharding of leaf ``x``."""
  xspec = _spec(x) if isinstance(x, jax.Array) else None
  if xspec is None or not any(a is not None for a in xspec) or np.ndim(v) != np.ndim(x):
    return v
  padded = tuple(xspec) + (None,) * (np.ndim(x) - len(xspec))
  spec = tuple(
    a if v.shape[i] == x.shape[i] and v.shape[i] != 1 else None for i, a in enumerate(padded)
  )
  return jax.sharding.reshard(v, jax.sharding.PartitionSpec(*spec))
