"""The search-space data model: channel spaces, axis slices and vectorised group maths.

A :class:`ChannelSpace` is a set of ``size`` parallel channels that live on several parameter
axes at once. Every channel is one zero-invariant group (ZIG). Each place a space lives is an
:class:`AxisSlice`: a parameter path, an axis, a role and a *layout* that maps the channel index
onto the axis::

    axis length == outer * width * inner
    channel c   <->  indices  o * width * inner + (offset + c) * inner + i
                     for every o < outer, i < inner

``outer``/``inner`` describe flattening (e.g. conv features flattened into a dense layer, or the
``head_dim`` inside a fused ``heads * head_dim`` axis); ``offset``/``width`` describe
concatenation (a space occupying ``[offset, offset + size)`` of a ``width``-wide block).

All group maths reshape the member axis into ``(outer, width, inner)``, slice the static channel
range and reduce; there is no gather/scatter and no Python loop over channels, so it all jits and
shards.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PRODUCER = "producer"
CONSUMER = "consumer"
STATE = "state"
ROLES = (PRODUCER, CONSUMER, STATE)

Path = tuple  # tuple of str | int keys


# ----------------------------------------------------------------------------------------------
# Key paths
# ----------------------------------------------------------------------------------------------


def _key_to_plain(k: Any) -> str | int:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      v = getattr(k, attr)
      return v if isinstance(v, (str, int)) else str(v)
  return str(k)


def normalize_path(path: Any) -> Path:
  """A user path ('a/b/c', ('a', 'b'), or a jax key path) as a tuple of str/int keys."""
  if isinstance(path, str):
    return tuple(p for p in path.split("/") if p)
  return tuple(
      k if isinstance(k, (str, int)) else _key_to_plain(k) for k in path
  )


def path_str(path: Path) -> str:
  return "/".join(str(k) for k in path)


def leaves_with_paths(tree: Any) -> list[tuple[Path, Any]]:
  """(normalized path, leaf) pairs in tree-flatten order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(normalize_path(p), leaf) for p, leaf in flat]


def _tree_map_with_paths(fn: Callable[[Path, Any], Any], tree: Any) -> Any:
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(normalize_path(p), x), tree)


# ----------------------------------------------------------------------------------------------
# Data model
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AxisSlice:
  """One place where a channel space lives: ``path``'s ``axis`` under a layout.

  Attributes:
    path: the parameter's key path (tuple of str/int keys).
    axis: the (non-negative) axis of that parameter.
    role: 'producer' (creates the channel: kernel output axis, bias, norm scale/shift),
      'consumer' (contracts it: the next layer's input axis) or 'state' (running statistics).
    offset: first channel position inside the ``width`` block (concatenation).
    width: size of the block the space sits in; ``None`` means the space's size.
    outer: repetitions outside the block (flatten: e.g. H*W spatial positions).
    inner: repetitions inside each channel (flatten: e.g. head_dim of a head).
  """

  path: Path
  axis: int
  role: str = PRODUCER
  offset: int = 0
  width: int | None = None
  outer: int = 1
  inner: int = 1

  def __post_init__(self):
    object.__setattr__(self, "path", normalize_path(self.path))
    if self.role not in ROLES:
      raise ValueError(f"AxisSlice {path_str(self.path)}: role must be one of {ROLES}, got {self.role!r}")
    if self.axis < 0:
      raise ValueError(f"AxisSlice {path_str(self.path)}: axis must be non-negative, got {self.axis}")
    for name in ("offset", "outer", "inner"):
      if getattr(self, name) < (0 if name == "offset" else 1):
        raise ValueError(f"AxisSlice {path_str(self.path)}: bad {name}={getattr(self, name)}")

  def block(self, n: int) -> int:
    return n if self.width is None else self.width

  def axis_length(self, n: int) -> int:
    return self.outer * self.block(n) * self.inner

  def describe(self, n: int) -> str:
    lay = []
    if self.outer != 1:
      lay.append(f"outer={self.outer}")
    if self.width is not None and self.width != n:
      lay.append(f"[{self.offset}:{self.offset + n}] of {self.width}")
    if self.inner != 1:
      lay.append(f"inner={self.inner}")
    extra = f" ({', '.join(lay)})" if lay else ""
    return f"{path_str(self.path)}[{self.axis}] {self.role}{extra}"


@dataclasses.dataclass(frozen=True)
class ChannelSpace:
  """``size`` parallel channels shared by ``members``; each channel is one group.

  ``prunable`` is False (with a ``reason``) when zero-invariance does not hold; such spaces are
  kept for reporting and never pruned.
  """

  size: int
  members: tuple[AxisSlice, ...]
  prunable: bool = True
  reason: str = ""
  name: str = ""

  def __post_init__(self):
    object.__setattr__(self, "members", tuple(self.members))
    if self.size < 1:
      raise ValueError(f"ChannelSpace {self.name!r}: size must be >= 1, got {self.size}")
    for m in self.members:
      if not isinstance(m, AxisSlice):
        raise TypeError(f"ChannelSpace {self.name!r}: members must be AxisSlice, got {type(m)}")
      if m.width is not None and m.offset + self.size > m.width:
        raise ValueError(
            f"ChannelSpace {self.name!r}: member {path_str(m.path)} offset {m.offset} + size "
            f"{self.size} exceeds width {m.width}")
    if self.prunable and not any(m.role == PRODUCER for m in self.members):
      raise ValueError(f"ChannelSpace {self.name!r} is prunable but has no producer member")

  def producers(self) -> tuple[AxisSlice, ...]:
    return tuple(m for m in self.members if m.role == PRODUCER)

  def label(self) -> str:
    if self.name:
      return self.name
    prods = self.producers() or self.members
    return path_str(prods[0].path) + f"[{prods[0].axis}]" if prods else "?"


# ----------------------------------------------------------------------------------------------
# Per-member reshape helpers (static shapes; no gather/scatter)
# ----------------------------------------------------------------------------------------------


def _member_view(x: jax.Array, m: AxisSlice, n: int) -> jax.Array:
  """x with m.axis split into (outer, n, inner) restricted to the space's channels."""
  shape = x.shape
  a = m.axis
  w = m.block(n)
  x = x.reshape(shape[:a] + (m.outer, w, m.inner) + shape[a + 1:])
  if m.offset != 0 or w != n:
    x = jax.lax.slice_in_dim(x, m.offset, m.offset + n, axis=a + 1)
  return x


def _reduce_to_channels(x: jax.Array, m: AxisSlice, n: int) -> jax.Array:
  v = _member_view(x, m, n)
  axes = tuple(i for i in range(v.ndim) if i != m.axis + 1)
  return jnp.sum(v, axis=axes)


def _expand_from_channels(v: jax.Array, m: AxisSlice, n: int, ndim: int, fill) -> jax.Array:
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
  full[m.offset:m.offset + n] = mask
  return np.broadcast_to(full[None, :, None], (m.outer, w, m.inner)).reshape(-1)


def _unshard(v: jax.Array) -> jax.Array:
  """A per-group vector, made replicated under an explicit-axes mesh (sharding in types).

  A reduction over a producer axis sharded along a mesh axis yields a vector sharded along it;
  with ``AxisType.Explicit`` that sharding is part of the type and sorting it is an error. With
  auto axes (or no mesh) the type carries no sharding and this is a no-op.
  """
  spec = getattr(getattr(jax.typeof(v), "sharding", None), "spec", None)
  if spec is not None and any(a is not None for a in spec):
    return jax.sharding.reshard(v, jax.sharding.PartitionSpec())
  return v


def _shard_like(v: jax.Array, x: Any) -> jax.Array:
  """Under an explicit-axes mesh, give broadcastable ``v`` the sharding of leaf ``x`` (no-op else)."""
  xspec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None) if isinstance(
      x, jax.Array) else None
  if xspec is None or not any(a is not None for a in xspec) or np.ndim(v) != np.ndim(x):
    return v
  spec = tuple(a if v.shape[i] == x.shape[i] and v.shape[i] != 1 else None
               for i, a in enumerate(tuple(xspec) + (None,) * (np.ndim(x) - len(xspec))))
  return jax.sharding.reshard(v, jax.sharding.PartitionSpec(*spec))


# ----------------------------------------------------------------------------------------------
# SearchSpace
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """All channel spaces of a model. Hashable and static: close over it in ``jax.jit``.

  Group ids run over the *prunable* spaces in order: space k owns ids
  ``[group_offsets[k], group_offsets[k] + size)``.
  """

  channel_spaces: tuple[ChannelSpace, ...]

  def __post_init__(self):
    object.__setattr__(self, "channel_spaces", tuple(self.channel_spaces))

  # --- construction -------------------------------------------------------------------------

  @classmethod
  def from_channel_spaces(cls, spaces: Iterable[ChannelSpace], variables: Any = None) -> "SearchSpace":
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
        or [np.zeros((0,), np.int32)])

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
                f"search space member {path_str(m.path)!r} (space {s.label()!r}) is not a leaf of the "
                f"given variables; known paths include: {known}")
          continue
        shp = shapes[m.path]
        if m.axis >= len(shp):
          raise ValueError(
              f"search space member {path_str(m.path)!r}: axis {m.axis} out of range for shape {shp}")
        want = m.axis_length(s.size)
        if shp[m.axis] != want:
          raise ValueError(
              f"search space member {path_str(m.path)!r}: axis {m.axis} has length {shp[m.axis]} but "
              f"space {s.label()!r} (size {s.size}, outer {m.outer}, width {m.block(s.size)}, inner "
              f"{m.inner}) needs {want}")

  # --- re-rooting ---------------------------------------------------------------------------

  def subtree(self, key: Any) -> "SearchSpace":
    """The space re-rooted at ``key`` (e.g. 'params'); members outside it are dropped.

    Spaces that lose all their producers become unprunable (they cannot be measured there).
    """
    prefix = normalize_path(key) if isinstance(key, str) else normalize_path(
        key if isinstance(key, (tuple, list)) else (key,))
    k = len(prefix)
    out = []
    for s in self.channel_spaces:
      ms = tuple(dataclasses.replace(m, path=m.path[k:]) for m in s.members if m.path[:k] == prefix)
      if s.prunable and not any(m.role == PRODUCER for m in ms):
        raise ValueError(
            f"subtree({key!r}): prunable space {s.label()!r} has no producer under {key!r}; its "
            "groups could not be measured there")
      if ms:
        out.append(dataclasses.replace(s, members=ms))
    return SearchSpace(tuple(out))

  # --- vectorised group maths ---------------------------------------------------------------

  def group_reduce(self, fn: Callable[..., jax.Array], *trees: Any,
                   roles: Sequence[str] = (PRODUCER,), dtype=jnp.float32) -> jax.Array:
    """(num_groups,) sum over each group's elements of ``fn(*leaves)`` (elementwise fn).

    Members with a role outside ``roles`` or a path missing from ``trees[0]`` are skipped.
    """
    leaf_maps = [dict(leaves_with_paths(t)) for t in trees]
    parts = []
    for s in self.prunable_spaces:
      acc = jnp.zeros((s.size,), dtype)
      for m in s.members:
        if m.role not in roles or m.path not in leaf_maps[0]:
          continue
        leaves = [lm[m.path] for lm in leaf_maps]
        val = fn(*[jnp.asarray(l).astype(dtype) for l in leaves])
        acc = acc + _unshard(_reduce_to_channels(val, m, s.size))
      parts.append(acc)
    return jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype)

  def check_producers(self, tree: Any, what: str = "variables") -> None:
    """Raise ValueError naming the path if a prunable space's producer is not a leaf of ``tree``."""
    paths = {p for p, _ in leaves_with_paths(tree)}
    for s in self.prunable_spaces:
      for m in s.producers():
        if m.path not in paths:
          hint = ""
          if m.path + ("value",) in paths or (m.path and m.path[-1] == "value"
                                              and m.path[:-1] in paths):
            hint = " (the paths differ by a trailing 'value': discover on the same kind of tree)"
          raise ValueError(f"producer {path_str(m.path)!r} of space {s.label()!r} is not a leaf of "
                           f"the given {what}{hint}")

  def group_norms(self, variables: Any) -> jax.Array:
    """(num_groups,) L2 norm over each group's producer slices."""
    self.check_producers(variables)
    return jnp.sqrt(self.group_reduce(lambda x: x * x, variables))

  def expand(self, values: jax.Array, tree: Any, *, fill: Any,
             combine: Callable[[jax.Array, jax.Array], jax.Array],
             roles: Sequence[str] = (PRODUCER,)) -> Any:
    """Broadcast (num_groups,) ``values`` onto ``tree``'s leaves.

    Returns a tree with the same structure whose leaves are arrays broadcastable to the
    corresponding leaf (``fill`` where no member touches it; members on the same leaf are
    folded with ``combine``).
    """
    values = jnp.asarray(values)
    per_path: dict[Path, list[tuple[AxisSlice, int, int]]] = {}
    for s, off in zip(self.prunable_spaces, self.group_offsets):
      for m in s.members:
        if m.role in roles:
          per_path.setdefault(m.path, []).append((m, s.size, off))

    def leaf_fn(path, x):
      out = jnp.asarray(fill, values.dtype)
      for m, n, off in per_path.get(path, ()):
        out = combine(out, _expand_from_channels(values[off:off + n], m, n, np.ndim(x), fill))
      return _shard_like(out, x)

    return _tree_map_with_paths(leaf_fn, tree)

  def group_mask_tree(self, mask: jax.Array, tree: Any, roles: Sequence[str] = (PRODUCER,)) -> Any:
    """bool (num_groups,) -> per-leaf bool arrays, True where an element belongs to a masked group."""
    return self.expand(jnp.asarray(mask, bool), tree, fill=False, combine=jnp.logical_or, roles=roles)

  def zero_groups(self, variables: Any, group_ids: Any) -> Any:
    """``variables`` with the producer slices of ``group_ids`` set to exactly 0.0.

    ``group_ids`` is an int array of group ids or a bool mask of shape (num_groups,).
    """
    ids = jnp.asarray(group_ids)
    if ids.dtype == jnp.bool_:
      if ids.shape != (self.num_groups,):
        raise ValueError(f"zero_groups: bool mask must have shape ({self.num_groups},), got {ids.shape}")
      mask = ids
    else:
      ids_np = np.asarray(group_ids) if not isinstance(group_ids, jax.core.Tracer) else None
      if ids_np is not None and ids_np.size and (ids_np.min() < 0 or ids_np.max() >= self.num_groups):
        raise ValueError(f"zero_groups: group ids must lie in [0, {self.num_groups}), got {ids_np}")
      mask = jnp.zeros((self.num_groups,), bool).at[ids].set(True)
    self.check_producers(variables)
    masks = self.group_mask_tree(mask, variables)
    return jax.tree_util.tree_map(lambda x, z: jnp.where(z, jnp.zeros((), x.dtype), x), variables, masks)

  # --- reporting ----------------------------------------------------------------------------

  def summary(self, variables: Any = None) -> str:
    """A human table: each space, its size, prunable or why not, and its members."""
    lines = [f"SearchSpace: {len(self.channel_spaces)} channel spaces, {self.num_groups} prunable groups"]
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
    return (f"SearchSpace(num_spaces={len(self.channel_spaces)}, num_groups={self.num_groups}, "
            f"prunable={len(self.prunable_spaces)})")
