"""Per-member layout maths: a member axis as ``(outer, width, inner)`` (static shapes only).

All group maths reshape the member axis into ``(outer, width, inner)``, slice the static channel
range and reduce; there is no gather/scatter and no Python loop over channels, so it all jits and
shards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hesso_jax.space._channels import AxisSlice

__all__ = ["expand_channel_mask", "expand_from_channels", "member_view", "reduce_to_channels"]


def member_view(x: jax.Array, m: AxisSlice, n: int) -> jax.Array:
  """``x`` with ``m.axis`` split into ``(outer, n, inner)``, restricted to the space's channels."""
  shape = x.shape
  a = m.axis
  w = m.block(n)
  x = x.reshape(shape[:a] + (m.outer, w, m.inner) + shape[a + 1 :])
  if m.offset != 0 or w != n:
    x = jax.lax.slice_in_dim(x, m.offset, m.offset + n, axis=a + 1)
  return x


def reduce_to_channels(x: jax.Array, m: AxisSlice, n: int) -> jax.Array:
  """(n,) per-channel sums of ``x`` over everything but the member's channel axis."""
  v = member_view(x, m, n)
  axes = tuple(i for i in range(v.ndim) if i != m.axis + 1)
  return jnp.sum(v, axis=axes)


def expand_from_channels(
  v: jax.Array, m: AxisSlice, n: int, ndim: int, fill: ArrayLike
) -> jax.Array:
  """(n,) per-channel values -> array broadcastable to the member's leaf (axis length full)."""
  w = m.block(n)
  if m.offset != 0 or w != n:
    left = jnp.full((m.offset,), fill, v.dtype)
    right = jnp.full((w - m.offset - n,), fill, v.dtype)
    v = jnp.concatenate([left, v, right])
  v = jnp.broadcast_to(v[None, :, None], (m.outer, w, m.inner)).reshape(-1)
  return v.reshape((1,) * m.axis + (-1,) + (1,) * (ndim - m.axis - 1))


def expand_channel_mask(mask: np.ndarray, m: AxisSlice, n: int) -> np.ndarray:
  """Host-side: (n,) bool keep-mask -> (axis_length,) bool, True outside the space's range."""
  w = m.block(n)
  full = np.ones((w,), bool)
  full[m.offset : m.offset + n] = mask
  return np.broadcast_to(full[None, :, None], (m.outer, w, m.inner)).reshape(-1)
