"""The search space: every :class:`ChannelSpace` of a model, and vectorised group maths.

Group ids run over the *prunable* spaces in order; all group maths go through the per-member
layout helpers of :mod:`hesso_jax.space._layout` (static reshapes and reductions), so they jit and
shard.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hesso_jax._paths import (
  Path,
  leaves_with_paths,
  match_leaf,
  normalize_path,
  path_str,
  strip_value,
  tree_map_with_paths,
)
from hesso_jax.space._channels import PRODUCER, AxisSlice, ChannelSpace
from hesso_jax.space._layout import expand_from_channels, reduce_to_channels
from hesso_jax.space._resharding import replicate, shard_like, spec_of, unshard

__all__ = ["SearchSpace", "require_space"]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """All channel spaces of a model. Hashable and static: close over it in ``jax.jit``.

  Group ids run over the *prunable* spaces in order: space k owns ids
  ``[group_offsets[k], group_offsets[k] + size)``.
  """

  channel_spaces: tuple[ChannelSpace, ...]

  def __post_init__(self) -> None:
    object.__setattr__(self, "channel_spaces", tuple(self.channel_spaces))

  # --- construction -------------------------------------------------------------------------

  @classmethod
  def from_channel_spaces(
    cls, spaces: Iterable[ChannelSpace], variables: Any = None
  ) -> SearchSpace:
    """Hand-written search space (the escape hatch). Validated against ``variables`` if given."""
    space = cls(tuple(spaces))
    if variables is not None:
      space.validate(variables)
    return space

  # --- static facts -------------------------------------------------------------------------

  @property
  def prunable_spaces(self) -> tuple[ChannelSpace, ...]:
    return tuple(s for s in self.channel_spaces if s.prunable)

  @property
  def num_groups(self) -> int:
    return sum(s.size for s in self.prunable_spaces)

  @property
  def group_offsets(self) -> tuple[int, ...]:
    offs, o = [], 0
    for s in self.prunable_spaces:
      offs.append(o)
      o += s.size
    return tuple(offs)

  def space_ids(self) -> np.ndarray:
    """(num_groups,) int: index (into prunable_spaces) of the space owning each group."""
    return np.concatenate(
      [np.full((s.size,), k, np.int32) for k, s in enumerate(self.prunable_spaces)]
      or [np.zeros((0,), np.int32)]
    )

  def group_sizes(self, variables: Any, roles: Sequence[str] = (PRODUCER,)) -> np.ndarray:
    """(num_groups,) number of elements of each group over members with ``roles``."""
    shapes = {p: np.shape(x) for p, x in leaves_with_paths(variables)}
    out = []
    for s in self.prunable_spaces:
      c = 0
      for m in s.members:
        if m.role in roles and m.path in shapes:
          shp = shapes[m.path]
          c += (math.prod(shp) // shp[m.axis]) * m.outer * m.inner
      out.append(np.full((s.size,), c, np.int64))
    return np.concatenate(out) if out else np.zeros((0,), np.int64)

  def labels(self, prunable_only: bool = False) -> list[str]:
    """Unique labels of the channel spaces (or of the prunable ones), in order.

    A label used by several spaces gets a ``'#k'`` suffix (k-th occurrence, from 0).
    """
    spaces = self.prunable_spaces if prunable_only else self.channel_spaces
    labels = [s.label() for s in spaces]
    total = collections.Counter(labels)
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
      if total[lab] > 1:
        out.append(f"{lab}#{seen.get(lab, 0)}")
        seen[lab] = seen.get(lab, 0) + 1
      else:
        out.append(lab)
    return out

  def paths(self) -> set[Path]:
    return {m.path for s in self.channel_spaces for m in s.members}

  # --- validation ---------------------------------------------------------------------------

  def validate(self, variables: Any, *, require_all: bool = True) -> None:
    """Raise ValueError naming the path if a member does not fit ``variables``' shapes."""
    shapes = {p: tuple(np.shape(x)) for p, x in leaves_with_paths(variables)}
    for s in self.channel_spaces:
      for m in s.members:
        if m.path not in shapes:
          if require_all:
            known = ", ".join(sorted(path_str(p) for p in shapes)[:12])
            raise ValueError(
              f"search space member {path_str(m.path)!r} (space {s.label()!r}) is not a leaf of "
              f"the given variables; known paths include: {known}"
            )
          continue
        shp = shapes[m.path]
        if m.axis >= len(shp):
          raise ValueError(
            f"search space member {path_str(m.path)!r}: axis {m.axis} out of range for shape {shp}"
          )
        want = m.axis_length(s.size)
        if shp[m.axis] != want:
          raise ValueError(
            f"search space member {path_str(m.path)!r}: axis {m.axis} has length {shp[m.axis]} but "
            f"space {s.label()!r} (size {s.size}, outer {m.outer}, width {m.block(s.size)}, inner "
            f"{m.inner}) needs {want}"
          )

  # --- re-rooting ---------------------------------------------------------------------------

  def subtree(self, key: Any) -> SearchSpace:
    """The space re-rooted at ``key`` (e.g. 'params'); members outside it are dropped.

    Raises ValueError when a prunable space has no producer under ``key`` (its groups could not
    be measured there); unprunable spaces keep the members under ``key``.
    """
    prefix = (
      normalize_path(key)
      if isinstance(key, str)
      else normalize_path(key if isinstance(key, (tuple, list)) else (key,))
    )
    k = len(prefix)
    out = []
    for s in self.channel_spaces:
      ms = tuple(dataclasses.replace(m, path=m.path[k:]) for m in s.members if m.path[:k] == prefix)
      if s.prunable and not any(m.role == PRODUCER for m in ms):
        raise ValueError(
          f"subtree({key!r}): prunable space {s.label()!r} has no producer under {key!r}; its "
          "groups could not be measured there"
        )
      if ms:
        out.append(dataclasses.replace(s, members=ms))
    return SearchSpace(tuple(out))

  def rebase(self, tree: Any) -> SearchSpace:
    """The space with member paths respelled as ``tree``'s leaf paths.

    flax.nnx spells a parameter ``(..., 'kernel', 'value')`` in an ``nnx.State`` and
    ``(..., 'kernel')`` in ``nnx.as_pure`` trees; a space discovered on either works with both
    after ``rebase``. Members with no spelling among ``tree``'s leaves are left as they are (so
    :meth:`validate` can name them). Returns ``self`` when nothing changes.
    """
    leaf_paths = {p for p, _ in leaves_with_paths(tree)}
    return self._respell(lambda p: match_leaf(p, leaf_paths) or p)

  def canonical(self) -> SearchSpace:
    """The space with nnx's trailing ``'value'`` removed from every member path (one spelling)."""
    return self._respell(strip_value)

  def _respell(self, fn: Callable[[Path], Path]) -> SearchSpace:
    """The space with every member path replaced by ``fn(path)`` (``self`` if none changes)."""
    if all(fn(p) == p for p in self.paths()):
      return self
    return SearchSpace(
      tuple(
        dataclasses.replace(
          s, members=tuple(dataclasses.replace(m, path=fn(m.path)) for m in s.members)
        )
        for s in self.channel_spaces
      )
    )

  # --- vectorised group maths ---------------------------------------------------------------

  def group_reduce(
    self,
    fn: Callable[..., jax.Array],
    *trees: Any,
    roles: Sequence[str] = (PRODUCER,),
    dtype: Any = jnp.float32,
  ) -> jax.Array:
    """(num_groups,) sum over each group's elements of ``fn(*leaves)`` (elementwise fn).

    Members with a role outside ``roles`` or a path missing from ``trees[0]`` are skipped.
    """
    return self.group_reduce_many((fn,), *trees, roles=roles, dtype=dtype)[0]

  def group_reduce_many(
    self,
    fns: Sequence[Callable[..., jax.Array]],
    *trees: Any,
    roles: Sequence[str] = (PRODUCER,),
    dtype: Any = jnp.float32,
  ) -> jax.Array:
    """(len(fns), num_groups): :meth:`group_reduce` of every ``fn`` in ``fns``, fused.

    Every member's per-channel partial sums of all ``fns`` are computed where the leaf lives
    (sharded), summed per space, and spaces of equal size are stacked into one vector per
    statistic that is replicated once: one collective per statistic and distinct space size,
    instead of one per member, statistic and space.
    """
    leaf_maps = [dict(leaves_with_paths(t)) for t in trees]
    k = len(fns)
    accs: list[jax.Array] = []
    like: Any = None
    for s in self.prunable_spaces:
      acc = None
      for m in s.members:
        if m.role not in roles or m.path not in leaf_maps[0]:
          continue
        leaves = [jnp.asarray(lm[m.path]).astype(dtype) for lm in leaf_maps]
        like = leaves[0] if like is None else like
        part = _reduce_member(fns, leaves, m, s.size)
        acc = part if acc is None else _add(acc, part)
      accs.append(jnp.zeros((k, s.size), dtype) if acc is None else acc)
    if not accs:
      return jnp.zeros((k, 0), dtype)
    return jnp.concatenate(_replicate_by_size(accs, like), axis=1)

  def check_producers(self, tree: Any, what: str = "variables") -> None:
    """Raise ValueError naming the path if a prunable space's producer is not a leaf of ``tree``."""
    paths = {p for p, _ in leaves_with_paths(tree)}
    for s in self.prunable_spaces:
      for m in s.producers():
        if m.path not in paths:
          hint = ""
          if match_leaf(m.path, paths) is not None:
            hint = " (the paths differ by a trailing 'value': discover on the same kind of tree)"
          raise ValueError(
            f"producer {path_str(m.path)!r} of space {s.label()!r} is not a leaf of "
            f"the given {what}{hint}"
          )

  def group_norms(self, variables: Any) -> jax.Array:
    """(num_groups,) L2 norm over each group's producer slices."""
    self.check_producers(variables)
    return jnp.sqrt(self.group_reduce(lambda x: x * x, variables))

  def expand(
    self,
    values: ArrayLike,
    tree: Any,
    *,
    fill: ArrayLike,
    combine: Callable[[jax.Array, jax.Array], jax.Array],
    roles: Sequence[str] = (PRODUCER,),
  ) -> Any:
    """Broadcast (num_groups,) ``values`` onto ``tree``'s leaves.

    Returns a tree with the same structure whose leaves are arrays broadcastable to the
    corresponding leaf (``fill`` where no member touches it; members on the same leaf are
    folded with ``combine``).
    """
    values = jnp.asarray(values)
    per_path: dict[Path, list[tuple[AxisSlice, int, int]]] = {}
    for s, off in zip(self.prunable_spaces, self.group_offsets, strict=True):
      for m in s.members:
        if m.role in roles:
          per_path.setdefault(m.path, []).append((m, s.size, off))

    def leaf_fn(path, x):
      out = jnp.asarray(fill, values.dtype)
      for m, n, off in per_path.get(path, ()):
        out = combine(out, expand_from_channels(values[off : off + n], m, n, np.ndim(x), fill))
      # a replicated per-axis vector: each device slices its part of it locally
      return shard_like(replicate(out, x) if np.ndim(out) else out, x)

    return tree_map_with_paths(leaf_fn, tree)

  def group_mask_tree(self, mask: ArrayLike, tree: Any, roles: Sequence[str] = (PRODUCER,)) -> Any:
    """bool (num_groups,) -> per-leaf bool arrays, True where an element is in a masked group."""
    return self.expand(
      jnp.asarray(mask, bool), tree, fill=False, combine=jnp.logical_or, roles=roles
    )

  def zero_groups(self, variables: Any, group_ids: ArrayLike) -> Any:
    """``variables`` with the producer slices of ``group_ids`` set to exactly 0.0.

    ``group_ids`` is an int array of group ids or a bool mask of shape (num_groups,).
    """
    ids = jnp.asarray(group_ids)
    if ids.dtype == jnp.bool_:
      if ids.shape != (self.num_groups,):
        raise ValueError(
          f"zero_groups: bool mask must have shape ({self.num_groups},), got {ids.shape}"
        )
      mask = ids
    else:
      ids_np = np.asarray(group_ids) if not isinstance(group_ids, jax.core.Tracer) else None
      if (
        ids_np is not None and ids_np.size and (ids_np.min() < 0 or ids_np.max() >= self.num_groups)
      ):
        raise ValueError(f"zero_groups: group ids must lie in [0, {self.num_groups}), got {ids_np}")
      mask = jnp.zeros((self.num_groups,), bool).at[ids].set(True)
    self.check_producers(variables)
    masks = self.group_mask_tree(mask, variables)
    return jax.tree_util.tree_map(
      lambda x, z: jnp.where(z, jnp.zeros((), x.dtype), x), variables, masks
    )

  # --- reporting ----------------------------------------------------------------------------

  def summary(self, variables: Any = None) -> str:
    """A human table: each space, its size, prunable or why not, and its members."""
    lines = [
      f"SearchSpace: {len(self.channel_spaces)} channel spaces, {self.num_groups} prunable groups"
    ]
    hdr = f"{'#':>3}  {'size':>6}  {'prunable':<8}  {'space / reason'}"
    lines += [hdr, "-" * max(len(hdr), 60)]
    for i, s in enumerate(self.channel_spaces):
      verdict = "yes" if s.prunable else "no"
      tail = s.label() + ("" if s.prunable else f"  -- {s.reason}")
      lines.append(f"{i:>3}  {s.size:>6}  {verdict:<8}  {tail}")
      for m in s.members:
        lines.append(f"{'':>3}  {'':>6}  {'':<8}    {m.describe(s.size)}")
    return "\n".join(lines)

  def __repr__(self) -> str:
    return (
      f"SearchSpace(num_spaces={len(self.channel_spaces)}, num_groups={self.num_groups}, "
      f"prunable={len(self.prunable_spaces)})"
    )


def _reduce_member(
  fns: Sequence[Callable[..., jax.Array]], leaves: list[jax.Array], m: AxisSlice, n: int
) -> jax.Array:
  """(len(fns), n): the member's per-channel sums of every ``fn`` of its ``leaves``.

  One reduction per ``fn``. An operand that several ``fns`` read (HESSO's direction ``d`` in
  ``<d, d>`` and ``<x, d>``) is then computed into a buffer of the leaf's size first. One variadic
  ``lax.reduce`` over all ``fns`` would fuse it away (the selection's temporary buffer 7.5 MB ->
  0.14 MB on a 1.9 M-parameter MLP), but XLA:CPU runs a fused variadic reduction as a scalar
  loop: a HESSO-CRIC cycle step was then several times slower (``benchmarks/bench_cycle.py``,
  variant ``fused_stats``).
  """
  return jnp.stack([reduce_to_channels(f(*leaves), m, n) for f in fns])


def _add(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a + b``; under an explicit-axes mesh, both replicated first if their shardings differ."""
  if spec_of(a) != spec_of(b):
    a, b = unshard(a), unshard(b)
  return a + b


def _replicate_by_size(accs: list[jax.Array], like: Any) -> list[jax.Array]:
  """``accs`` (each (k, n_s)) replicated, in order: one collective per statistic and distinct
  space size ``n_s`` (spaces of equal size are stacked), none larger than ``num_groups``."""
  if like is None:
    return accs
  if any(spec_of(a) is not None and any(x is not None for x in spec_of(a)) for a in accs):
    return [unshard(a) for a in accs]  # explicit axes: pieces may be sharded differently
  buckets: dict[int, list[int]] = {}
  for i, a in enumerate(accs):
    buckets.setdefault(a.shape[1], []).append(i)
  out: list[Any] = [None] * len(accs)
  for idx in buckets.values():
    stacked = jnp.stack([accs[i] for i in idx], axis=1)  # (k, spaces of this size, n)
    # one collective per statistic: each carries at most num_groups values
    stacked = jnp.stack([replicate(row, like) for row in stacked])
    for j, i in enumerate(idx):
      out[i] = stacked[:, j]
  return out


def require_space(space: Any, where: str) -> SearchSpace:
  """``space`` itself; TypeError naming ``where`` when it is not a :class:`SearchSpace`."""
  if not isinstance(space, SearchSpace):
    raise TypeError(
      f"{where}: space must be a hesso_jax.SearchSpace, got {type(space).__name__} (discover one "
      "with hj.discover or build one with hj.SearchSpace.from_channel_spaces)"
    )
  return space
