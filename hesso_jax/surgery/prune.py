"""Slice every member axis of every prunable channel space by per-group keep-masks.

Surgery is host-side and not a hot path: keep-masks are turned into numpy index arrays per
(parameter path, axis) and each leaf is sliced with ``jnp.take``.

Several spaces may share one axis (a concatenation: each space occupies ``[offset, offset + n)``
of a ``width`` block; or a fused ``heads * head_dim`` axis: a 'heads' space with
``inner=head_dim`` and a 'head_dim' space with ``outer=heads``). The kept index set of an axis is
the AND of every member's expanded keep-mask (:func:`hesso_jax.space.expand_channel_mask`).

Path matching. A member path matches a leaf whose normalised key path equals it; an nnx
``State`` flattens each ``Variable`` to ``(..., 'kernel', 'value')``, so a leaf path ending in
``'value'`` also matches the member path without it (and vice versa).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hesso_jax.space import (
    Path,
    SearchSpace,
    expand_channel_mask,
    leaves_with_paths,
    normalize_path,
    path_str,
)

# (path, axis) -> (n,) bool keep mask over that axis (AND of all members' expanded masks)
AxisPlan = dict[Path, dict[int, np.ndarray]]

_NNX_SUFFIX = "value"


# ----------------------------------------------------------------------------------------------
# keep-masks
# ----------------------------------------------------------------------------------------------


def _space_labels(space: SearchSpace, prunable_only: bool = False) -> list[str]:
  """Unique labels per channel space (duplicate labels get a '#k' suffix)."""
  spaces = space.prunable_spaces if prunable_only else space.channel_spaces
  labels = [s.label() for s in spaces]
  seen: dict[str, int] = {}
  for l in labels:
    seen[l] = seen.get(l, 0) + 1
  out, cnt = [], {}
  for l in labels:
    if seen[l] > 1:
      cnt[l] = cnt.get(l, 0) + 1
      out.append(f"{l}#{cnt[l] - 1}")
    else:
      out.append(l)
  return out


def check_keep(space: SearchSpace, keep: Any) -> np.ndarray:
  """Validate a keep-mask: bool (num_groups,), keeping >= 1 channel of every prunable space.

  Returns it as a numpy bool array. Raises ValueError (naming the space) otherwise.
  """
  g = space.num_groups
  k = np.asarray(jax.device_get(keep))
  if k.shape != (g,):
    raise ValueError(f"keep-mask must have shape ({g},) (one entry per prunable group), got {k.shape}")
  if k.dtype != np.bool_:
    if not np.isin(k, (0, 1)).all():
      raise ValueError(f"keep-mask must be boolean, got dtype {k.dtype} with non-0/1 values")
    k = k.astype(bool)
  for s, off, lab in zip(space.prunable_spaces, space.group_offsets, _space_labels(space, True)):
    if not k[off:off + s.size].any():
      raise ValueError(
          f"keep-mask keeps zero of the {s.size} channels of space {lab!r}; at least one channel "
          "of every space must be kept (the layer would vanish)")
  return k


def _group_norms(space: SearchSpace, variables: Any) -> np.ndarray:
  """Host copy of space.group_norms(variables) (one jit: cheaper than many eager ops)."""
  try:
    out = jax.jit(space.group_norms)(variables)
  except TypeError:  # non-array leaves
    out = space.group_norms(variables)
  return np.asarray(jax.device_get(out))


def default_keep(space: SearchSpace, variables: Any) -> np.ndarray:
  """keep = (producer group norm != 0), computed on ``variables``.

  Raises ValueError if a prunable space has no producer leaf in ``variables`` (its groups
  could not be measured).
  """
  space = rebase_space(space, variables)
  present = {p for p, _ in leaves_with_paths(variables)}
  if any(isinstance(x, jax.ShapeDtypeStruct) for _, x in leaves_with_paths(variables)):
    raise ValueError("keep=None needs concrete arrays to compute group norms; the given tree has "
                     "jax.ShapeDtypeStruct leaves: pass an explicit keep-mask")
  for s in space.prunable_spaces:
    if not any(m.path in present for m in s.producers()):
      raise ValueError(
          f"keep=None: no producer of space {s.label()!r} is a leaf of the given tree, so its group "
          "norms cannot be computed; pass an explicit keep-mask")
  norms = _group_norms(space, variables)
  return norms != 0


def _warn_nonzero_drops(space: SearchSpace, variables: Any, keep: np.ndarray) -> None:
  """UserWarning per space whose dropped groups have non-zero producer norm."""
  space = rebase_space(space, variables)
  # only concrete producer leaves can be measured (abstract ShapeDtypeStruct trees: no check)
  present = {p for p, x in leaves_with_paths(variables) if not isinstance(x, jax.ShapeDtypeStruct)}
  if not any(m.path in present for s in space.prunable_spaces for m in s.producers()):
    return
  if len(present) != len(leaves_with_paths(variables)):
    return
  norms = _group_norms(space, variables)
  for s, off, lab in zip(space.prunable_spaces, space.group_offsets, _space_labels(space, True)):
    if not any(m.path in present for m in s.producers()):
      continue
    dropped = ~keep[off:off + s.size]
    if dropped.any():
      mx = float(norms[off:off + s.size][dropped].max())
      if mx > 0:
        warnings.warn(
            f"prune: space {lab!r} drops {int(dropped.sum())} group(s) whose producer norm is not "
            f"zero (max dropped norm {mx:.4g}); the pruned model will NOT be equivalent to the "
            "full one", UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# path matching
# ----------------------------------------------------------------------------------------------


def _member_to_leaf(space: SearchSpace, tree: Any) -> dict[Path, Path]:
  """member path -> the leaf path of ``tree`` that spells it (exact, or with/without nnx's
  trailing 'value'), for members present in ``tree``."""
  leaves = {lp for lp, _ in leaves_with_paths(tree)}
  out = {}
  for p in space.paths():
    cands = [p, p + (_NNX_SUFFIX,)]
    if p and p[-1] == _NNX_SUFFIX:
      cands.append(p[:-1])
    for c in cands:
      if c in leaves:
        out[p] = c
        break
  return out


def _strip(p: Path) -> Path:
  return p[:-1] if p and p[-1] == _NNX_SUFFIX else p


def canonical_space(space: SearchSpace) -> SearchSpace:
  """``space`` with nnx's trailing 'value' removed from every member path (one spelling)."""
  if not any(p and p[-1] == _NNX_SUFFIX for p in space.paths()):
    return space
  return SearchSpace(tuple(
      dataclasses.replace(s, members=tuple(dataclasses.replace(m, path=_strip(m.path))
                                           for m in s.members))
      for s in space.channel_spaces))


def rebase_space(space: SearchSpace, tree: Any) -> SearchSpace:
  """``space`` with member paths respelled as ``tree``'s leaf paths (nnx 'value' suffix added or
  removed where that is how ``tree`` spells them). Unmatched members are left as they are."""
  to_leaf = _member_to_leaf(space, tree)
  if all(k == v for k, v in to_leaf.items()):
    return space
  return SearchSpace(tuple(
      dataclasses.replace(s, members=tuple(
          dataclasses.replace(m, path=to_leaf.get(m.path, m.path)) for m in s.members))
      for s in space.channel_spaces))


# ----------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------


def axis_plan(space: SearchSpace, keep: np.ndarray) -> AxisPlan:
  """{member path: {axis: bool keep-mask over the full axis}} for every axis a prunable space
  touches (the AND of its members' expanded masks). Unprunable spaces never drop anything."""
  plan: AxisPlan = {}
  lengths: dict[tuple[Path, int], tuple[int, str]] = {}
  for s, off in zip(space.prunable_spaces, space.group_offsets):
    km = keep[off:off + s.size]
    for m in s.members:
      full = expand_channel_mask(km, m, s.size)
      key = (m.path, m.axis)
      if key in lengths and lengths[key][0] != full.shape[0]:
        raise ValueError(
            f"members disagree on the length of {path_str(m.path)}[{m.axis}]: {lengths[key][0]} "
            f"({lengths[key][1]}) vs {full.shape[0]} ({s.label()})")
      lengths[key] = (full.shape[0], s.label())
      axes = plan.setdefault(m.path, {})
      axes[m.axis] = full.copy() if m.axis not in axes else (axes[m.axis] & full)
  return plan


def _slice_leaf(x: Any, axes: Mapping[int, np.ndarray], where: str) -> Any:
  shape = tuple(np.shape(x))
  for a, mask in axes.items():
    if a >= len(shape):
      raise ValueError(f"{where}: axis {a} out of range for shape {shape}")
    if shape[a] != mask.shape[0]:
      raise ValueError(
          f"{where}: axis {a} has length {shape[a]} but the search space expects {mask.shape[0]}")
  if isinstance(x, jax.ShapeDtypeStruct):
    new = list(shape)
    for a, mask in axes.items():
      new[a] = int(mask.sum())
    return jax.ShapeDtypeStruct(tuple(new), x.dtype, sharding=getattr(x, "sharding", None))
  for a, mask in sorted(axes.items()):
    if mask.all():
      continue
    x = jnp.take(jnp.asarray(x), jnp.asarray(np.flatnonzero(mask)), axis=a)
  return x


def _apply_plan(tree: Any, plan: AxisPlan, resolve) -> tuple[Any, int]:
  """Slice the leaves of ``tree`` that ``resolve(leaf_path)`` maps to a planned member path."""
  hits = 0

  def leaf_fn(kp, x):
    nonlocal hits
    lp = normalize_path(kp)
    mp = resolve(lp)
    if mp is None or mp not in plan:
      return x
    hits += 1
    return _slice_leaf(x, plan[mp], path_str(lp))

  out = jax.tree_util.tree_map_with_path(leaf_fn, tree)
  return out, hits


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def resolve_keep(space: SearchSpace, variables: Any, keep: Any = None, *, warn: bool = True) -> np.ndarray:
  """The validated bool (num_groups,) keep-mask ``prune`` uses (default: norm != 0)."""
  if keep is None:
    k = default_keep(space, variables)
  else:
    k = np.asarray(jax.device_get(keep))
  k = check_keep(space, k)
  if keep is not None and warn:
    _warn_nonzero_drops(space, variables, k)
  return k


def prune(variables: Any, space: SearchSpace, keep: Any = None) -> Any:
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
  """
  if not _member_to_leaf(space, variables):
    known = ", ".join(sorted(path_str(p) for p, _ in leaves_with_paths(variables))[:8])
    raise ValueError(
        "prune: no path of the search space is a leaf of the given variables (is the space "
        f"rooted elsewhere? try space.subtree('params')); leaves include: {known}")
  space = rebase_space(space, variables)
  k = resolve_keep(space, variables, keep)
  plan = axis_plan(space, k)
  out, _ = _apply_plan(variables, plan, lambda lp: lp)
  return out


def prune_like(tree: Any, space: SearchSpace, keep: Any, *,
               root_paths: Sequence[Any] | None = None) -> Any:
  """Prune a tree whose leaves *mirror* parameters (e.g. optimizer moments); never warns.

  Leaves whose key path ends with a member path (``root_paths=None``: longest-suffix match, so
  ``(0, 'mu', 'params', 'conv', 'kernel')`` matches member ``('params', 'conv', 'kernel')``) or,
  when ``root_paths`` is given, whose path is ``root + member path`` for one of the roots, are
  sliced like that member; all other leaves are returned unchanged. Member paths absent from the
  tree are skipped silently. ``keep`` must be given (bool, (num_groups,)).
  """
  k = check_keep(space, keep)
  space = canonical_space(space)
  plan = axis_plan(space, k)
  members = space.paths()
  roots = None if root_paths is None else [normalize_path(r) for r in root_paths]
  maxlen = max((len(p) for p in members), default=0)

  def resolve(lp: Path):
    lp = _strip(lp)
    if roots is not None:
      for r in roots:
        if lp[:len(r)] == r and lp[len(r):] in members:
          return lp[len(r):]
      return None
    for n in range(min(len(lp), maxlen), 0, -1):
      if lp[-n:] in members:
        return lp[-n:]
    return None

  out, _ = _apply_plan(tree, plan, resolve)
  return out


def reindex_groups(x: Any, keep: Any) -> jax.Array:
  """A per-group vector (num_groups, ...) restricted to the kept groups, in order.

  The pruned model's search space (:func:`prune_space`) numbers its groups exactly this way.
  """
  k = np.asarray(jax.device_get(keep)).astype(bool)
  return jnp.asarray(x)[jnp.asarray(np.flatnonzero(k))]


def prune_opt_state(opt_state: Any, params: Any, space: SearchSpace, keep: Any, *,
                    group_vectors: str = "reindex") -> Any:
  """Prune an optax state so that training can continue on ``prune(params, space, keep)``.

  * Every sub-tree of ``opt_state`` whose tree structure equals ``params``' (Adam's ``mu`` and
    ``nu``, momentum traces, ...) with matching leaf shapes is pruned exactly like ``params``.
  * Remaining array leaves of shape ``(num_groups,)`` are per-group vectors (HESSO's
    redundant / pruned masks, saliency accumulators): ``group_vectors='reindex'`` (default)
    keeps their entries of the kept groups, in order, which is exactly the group numbering of
    :func:`prune_space` ``(space, keep)``; ``'reset'`` replaces them with zeros of the new
    length (for bool masks: all False, i.e. forget which groups were redundant/pruned);
    ``'keep'`` leaves them untouched (then the state no longer matches the pruned space).
  * Everything else (step counts, scalars) is unchanged.

  ``space`` must be rooted at ``params`` (use ``space.subtree('params')`` when the optimizer
  sees ``variables['params']``).
  """
  if group_vectors not in ("reindex", "reset", "keep"):
    raise ValueError(f"group_vectors must be 'reindex', 'reset' or 'keep', got {group_vectors!r}")
  k = check_keep(space, keep)
  g = space.num_groups
  pdef = jax.tree_util.tree_structure(params)
  pshapes = [np.shape(x) for x in jax.tree_util.tree_leaves(params)]
  if not _member_to_leaf(space, params):
    raise ValueError("prune_opt_state: no path of the search space is a leaf of params")
  space = rebase_space(space, params)
  plan = axis_plan(space, k)
  kidx = np.flatnonzero(k)

  def is_mirror(node):
    try:
      if jax.tree_util.tree_structure(node) != pdef:
        return False
    except Exception:  # pragma: no cover - exotic nodes
      return False
    return [np.shape(x) for x in jax.tree_util.tree_leaves(node)] == pshapes

  def fn(node):
    if is_mirror(node) and not isinstance(node, (jax.Array, np.ndarray)):
      # compare via the params' own paths: flatten both and pair leaves in order
      leaves = jax.tree_util.tree_leaves(node)
      pl = leaves_with_paths(params)
      new = []
      for (pp, _), x in zip(pl, leaves):
        new.append(_slice_leaf(x, plan[pp], path_str(pp)) if pp in plan else x)
      return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(node), new)
    if isinstance(node, (jax.Array, np.ndarray)) and np.shape(node) == (g,) and group_vectors != "keep":
      if group_vectors == "reindex":
        return jnp.asarray(node)[jnp.asarray(kidx)]
      return jnp.zeros((len(kidx),), jnp.asarray(node).dtype)
    return node

  if is_mirror(opt_state) and jax.tree_util.tree_leaves(opt_state):
    return fn(opt_state)
  return jax.tree_util.tree_map(fn, opt_state, is_leaf=lambda n: is_mirror(n) and not isinstance(
      n, (jax.Array, np.ndarray)))


# ----------------------------------------------------------------------------------------------
# sizes and the pruned search space
# ----------------------------------------------------------------------------------------------


def kept_sizes(space: SearchSpace, keep: Any) -> dict[str, tuple[int, int]]:
  """{space label: (old size, new size)} for every channel space (unprunable: unchanged)."""
  k = check_keep(space, keep)
  out = {}
  labels = _space_labels(space)
  offs = dict(zip([id(s) for s in space.prunable_spaces], space.group_offsets))
  for s, lab in zip(space.channel_spaces, labels):
    if s.prunable:
      o = offs[id(s)]
      out[lab] = (s.size, int(k[o:o + s.size].sum()))
    else:
      out[lab] = (s.size, s.size)
  return out


def size_report(space: SearchSpace, keep: Any) -> dict[str, dict[int, tuple[int, int]]]:
  """{parameter path 'params/conv1/kernel': {axis: (old length, new length)}} for every axis a
  prunable space touches, so a linen user can rebuild module configs (features=new length)."""
  k = check_keep(space, keep)
  plan = axis_plan(canonical_space(space), k)
  return {path_str(p): {a: (int(m.shape[0]), int(m.sum())) for a, m in sorted(axes.items())}
          for p, axes in sorted(plan.items(), key=lambda kv: path_str(kv[0]))}


def prune_space(space: SearchSpace, keep: Any) -> SearchSpace:
  """The search space of the pruned model: sizes and layouts (outer/width/offset/inner) updated.

  Groups are numbered over the kept groups in their original order (see :func:`reindex_groups`).
  Raises ValueError if some member's kept set is not a product outer x block x inner (cannot
  be expressed as a layout).
  """
  k = check_keep(space, keep)
  plan = axis_plan(canonical_space(space), k)
  new_spaces = []
  for s in space.channel_spaces:
    new_members, new_size = [], None
    for m in s.members:
      L = m.axis_length(s.size)
      mask = plan.get(_strip(m.path), {}).get(m.axis)
      if mask is None:
        mask = np.ones((L,), bool)
      w = m.block(s.size)
      m3 = mask.reshape(m.outer, w, m.inner)
      o_any, w_any, i_any = m3.any((1, 2)), m3.any((0, 2)), m3.any((0, 1))
      if not np.array_equal(m3, o_any[:, None, None] & w_any[None, :, None] & i_any[None, None, :]):
        raise ValueError(
            f"prune_space: the kept entries of {path_str(m.path)}[{m.axis}] are not a product over "
            f"the layout of space {s.label()!r}; cannot express the pruned layout")
      n_new = int(w_any[m.offset:m.offset + s.size].sum())
      if new_size is None:
        new_size = n_new
      elif new_size != n_new:
        raise ValueError(f"prune_space: members of space {s.label()!r} disagree on its new size")
      width_new = int(w_any.sum())
      new_members.append(dataclasses.replace(
          m, outer=int(o_any.sum()), inner=int(i_any.sum()),
          offset=int(w_any[:m.offset].sum()),
          width=None if (m.width is None or width_new == n_new) else width_new))
    new_spaces.append(dataclasses.replace(s, size=new_size or s.size, members=tuple(new_members)))
  return SearchSpace(tuple(new_spaces))
