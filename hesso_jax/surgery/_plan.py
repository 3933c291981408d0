"""Planning: a keep-mask turned into per-(path, axis) index masks, and the sizes that result.

Several spaces may share one axis (a concatenation: each space occupies ``[offset, offset + n)``
of a ``width`` block; or a fused ``heads * head_dim`` axis: a 'heads' space with
``inner=head_dim`` and a 'head_dim' space with ``outer=heads``). The kept index set of an axis is
the AND of every member's expanded keep-mask (:func:`hesso_jax.space.expand_channel_mask`).

Surgery is host-side and not a hot path: each planned leaf is sliced with ``jnp.take``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hesso_jax._paths import Path, normalize_path, path_str, strip_value
from hesso_jax.space import AxisSlice, ChannelSpace, SearchSpace, expand_channel_mask, require_space
from hesso_jax.surgery._keep import check_keep

__all__ = [
  "AxisPlan",
  "apply_plan",
  "axis_plan",
  "kept_sizes",
  "prune_space",
  "size_report",
  "slice_leaf",
]

AxisPlan: TypeAlias = dict[Path, dict[int, np.ndarray]]
"""member path -> {axis: bool keep-mask over the full axis} (AND of all members' masks)."""


def axis_plan(space: SearchSpace, keep: np.ndarray) -> AxisPlan:
  """{member path: {axis: bool keep-mask over the full axis}} for every axis a prunable space
  touches (the AND of its members' expanded masks). Unprunable spaces never drop anything."""
  plan: AxisPlan = {}
  lengths: dict[tuple[Path, int], tuple[int, str]] = {}
  for s, off in zip(space.prunable_spaces, space.group_offsets, strict=True):
    km = keep[off : off + s.size]
    for m in s.members:
      full = expand_channel_mask(km, m, s.size)
      key = (m.path, m.axis)
      if key in lengths and lengths[key][0] != full.shape[0]:
        raise ValueError(
          f"members disagree on the length of {path_str(m.path)}[{m.axis}]: {lengths[key][0]} "
          f"({lengths[key][1]}) vs {full.shape[0]} ({s.label()})"
        )
      lengths[key] = (full.shape[0], s.label())
      axes = plan.setdefault(m.path, {})
      axes[m.axis] = full.copy() if m.axis not in axes else (axes[m.axis] & full)
  return plan


def slice_leaf(x: Any, axes: Mapping[int, np.ndarray], where: str) -> Any:
  """``x`` restricted to the True entries of each ``axes[a]`` mask along axis ``a``.

  ``jax.ShapeDtypeStruct`` leaves get the smaller shape (their sharding is kept); ``where``
  names the leaf in the ValueError raised for an axis that does not fit.
  """
  shape = tuple(np.shape(x))
  for a, mask in axes.items():
    if a >= len(shape):
      raise ValueError(f"{where}: axis {a} out of range for shape {shape}")
    if shape[a] != mask.shape[0]:
      raise ValueError(
        f"{where}: axis {a} has length {shape[a]} but the search space expects {mask.shape[0]}"
      )
  if isinstance(x, jax.ShapeDtypeStruct):
    new = list(shape)
    for a, mask in axes.items():
      new[a] = int(mask.sum())
    return jax.ShapeDtypeStruct(tuple(new), x.dtype, sharding=getattr(x, "sharding", None))
  for a, mask in sorted(axes.items()):
    if not mask.all():
      x = jnp.take(jnp.asarray(x), jnp.asarray(np.flatnonzero(mask)), axis=a)
  return x


def apply_plan(tree: Any, plan: AxisPlan, resolve: Callable[[Path], Path | None]) -> Any:
  """Slice the leaves of ``tree`` that ``resolve(leaf_path)`` maps to a planned member path."""

  def leaf_fn(kp: Any, x: Any) -> Any:
    lp = normalize_path(kp)
    mp = resolve(lp)
    if mp is None or mp not in plan:
      return x
    return slice_leaf(x, plan[mp], path_str(lp))

  return jax.tree_util.tree_map_with_path(leaf_fn, tree)


def kept_sizes(space: SearchSpace, keep: ArrayLike) -> dict[str, tuple[int, int]]:
  """{space label: (old size, new size)} for every channel space (unprunable: unchanged)."""
  require_space(space, "kept_sizes")
  k = check_keep(space, keep)
  offs = dict(zip([id(s) for s in space.prunable_spaces], space.group_offsets, strict=True))
  out = {}
  for s, lab in zip(space.channel_spaces, space.labels(), strict=True):
    new = int(k[offs[id(s)] : offs[id(s)] + s.size].sum()) if s.prunable else s.size
    out[lab] = (s.size, new)
  return out


def size_report(space: SearchSpace, keep: ArrayLike) -> dict[str, dict[int, tuple[int, int]]]:
  """{parameter path 'params/conv1/kernel': {axis: (old length, new length)}} for every axis a
  prunable space touches, so a linen user can rebuild module configs (features=new length)."""
  require_space(space, "size_report")
  k = check_keep(space, keep)
  plan = axis_plan(space.canonical(), k)
  return {
    path_str(p): {a: (int(m.shape[0]), int(m.sum())) for a, m in sorted(axes.items())}
    for p, axes in sorted(plan.items(), key=lambda kv: path_str(kv[0]))
  }


def _pruned_member(m: AxisSlice, s: ChannelSpace, mask: np.ndarray) -> tuple[AxisSlice, int]:
  """The member's layout after keeping ``mask`` over its axis, and the space's new size."""
  w = m.block(s.size)
  m3 = mask.reshape(m.outer, w, m.inner)
  o_any, w_any, i_any = (np.asarray(m3.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
  if not np.array_equal(m3, o_any[:, None, None] & w_any[None, :, None] & i_any[None, None, :]):
    raise ValueError(
      f"prune_space: the kept entries of {path_str(m.path)}[{m.axis}] are not a product over "
      f"the layout of space {s.label()!r}; cannot express the pruned layout"
    )
  n_new = int(w_any[m.offset : m.offset + s.size].sum())
  width_new = int(w_any.sum())
  new = dataclasses.replace(
    m,
    outer=int(o_any.sum()),
    inner=int(i_any.sum()),
    offset=int(w_any[: m.offset].sum()),
    width=None if (m.width is None or width_new == n_new) else width_new,
  )
  return new, n_new


def prune_space(space: SearchSpace, keep: ArrayLike) -> SearchSpace:
  """The search space of the pruned model: sizes and layouts (outer/width/offset/inner) updated.

  Groups are numbered over the kept groups in their original order (see
  :func:`hesso_jax.reindex_groups`). Raises ValueError if some member's kept set is not a product
  outer x block x inner (cannot be expressed as a layout).
  """
  require_space(space, "prune_space")
  k = check_keep(space, keep)
  plan = axis_plan(space.canonical(), k)
  new_spaces = []
  for s in space.channel_spaces:
    new_members, sizes = [], set()
    for m in s.members:
      mask = plan.get(strip_value(m.path), {}).get(m.axis)
      if mask is None:
        mask = np.ones((m.axis_length(s.size),), bool)
      new, n_new = _pruned_member(m, s, mask)
      new_members.append(new)
      sizes.add(n_new)
    if len(sizes) > 1:
      raise ValueError(f"prune_space: members of space {s.label()!r} disagree on its new size")
    new_size = sizes.pop() if sizes else s.size
    new_spaces.append(dataclasses.replace(s, size=new_size or s.size, members=tuple(new_members)))
  return SearchSpace(tuple(new_spaces))
