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

__all__ = ["replicate", "shard_like", "spec_of", "unshard"]


def spec_of(x: Any) -> Any:
  """The ``PartitionSpec`` in ``x``'s type, or None (no explicit sharding)."""
  return getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)


def unshard(v: jax.Array) -> jax.Array:
  """A per-group vector, made replicated under an explicit-axes mesh (no-op otherwise)."""
  spec = spec_of(v)
  if spec is not None and any(a is not None for a in spec):
    return jax.sharding.reshard(v, jax.sharding.PartitionSpec())
  return v


def replicate(v: jax.Array, like: Any) -> jax.Array:
  """``v`` made replicated over the mesh of leaf ``like`` (one collective for a whole vector).

  Explicit axes: :func:`unshard`. Auto axes under ``jit`` (every mesh axis auto; none manual,
  as inside ``shard_map``): a replicated sharding constraint on the mesh in ``like``'s type, so
  the partitioner gathers ``v`` once here rather than every piece it was built from separately.
  No-op without a multi-device mesh or outside tracing.
  """
  spec = spec_of(v)
  if spec is not None and any(a is not None for a in spec):
    return unshard(v)
  if not isinstance(v, jax.core.Tracer) or not isinstance(like, jax.Array):
    return v
  mesh = getattr(getattr(jax.typeof(like), "sharding", None), "mesh", None)
  auto = jax.sharding.AxisType.Auto
  if mesh is None or mesh.size <= 1 or any(t != auto for t in mesh.axis_types):
    return v
  return jax.lax.with_sharding_constraint(
    v, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  )


def shard_like(v: jax.Array, x: Any) -> jax.Array:
  """Under an explicit-axes mesh, give broadcastable ``v`` the sharding of leaf ``x``."""
  xspec = spec_of(x) if isinstance(x, jax.Array) else None
  if xspec is None or not any(a is not None for a in xspec) or np.ndim(v) != np.ndim(x):
    return v
  padded = tuple(xspec) + (None,) * (np.ndim(x) - len(xspec))
  spec = tuple(
    a if v.shape[i] == x.shape[i] and v.shape[i] != 1 else None for i, a in enumerate(padded)
  )
  return jax.sharding.reshard(v, jax.sharding.PartitionSpec(*spec))
