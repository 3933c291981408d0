"""The search-space data model's atoms: :class:`AxisSlice` and :class:`ChannelSpace`.

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
"""

from __future__ import annotations

import dataclasses

from hesso_jax._paths import Path, normalize_path, path_str

__all__ = ["CONSUMER", "PRODUCER", "ROLES", "STATE", "AxisSlice", "ChannelSpace"]

PRODUCER = "producer"
CONSUMER = "consumer"
STATE = "state"
ROLES = (PRODUCER, CONSUMER, STATE)


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

  def __post_init__(self) -> None:
    object.__setattr__(self, "path", normalize_path(self.path))
    where = f"AxisSlice {path_str(self.path)}"
    if self.role not in ROLES:
      raise ValueError(f"{where}: role must be one of {ROLES}, got {self.role!r}")
    if self.axis < 0:
      raise ValueError(f"{where}: axis must be non-negative, got {self.axis}")
    for name in ("offset", "outer", "inner"):
      if getattr(self, name) < (0 if name == "offset" else 1):
        raise ValueError(f"{where}: bad {name}={getattr(self, name)}")

  def block(self, n: int) -> int:
    """The width of the block holding a space of size ``n``."""
    return n if self.width is None else self.width

  def axis_length(self, n: int) -> int:
    """The length the member axis must have for a space of size ``n``."""
    return self.outer * self.block(n) * self.inner

  def describe(self, n: int) -> str:
    """One line for :meth:`SearchSpace.summary`: path, axis, role and a non-trivial layout."""
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

  def __post_init__(self) -> None:
    object.__setattr__(self, "members", tuple(self.members))
    if self.size < 1:
      raise ValueError(f"ChannelSpace {self.name!r}: size must be >= 1, got {self.size}")
    for m in self.members:
      if not isinstance(m, AxisSlice):
        raise TypeError(f"ChannelSpace {self.name!r}: members must be AxisSlice, got {type(m)}")
      if m.width is not None and m.offset + self.size > m.width:
        raise ValueError(
          f"ChannelSpace {self.name!r}: member {path_str(m.path)} offset {m.offset} + size "
          f"{self.size} exceeds width {m.width}"
        )
    if self.prunable and not any(m.role == PRODUCER for m in self.members):
      raise ValueError(f"ChannelSpace {self.name!r} is prunable but has no producer member")

  def producers(self) -> tuple[AxisSlice, ...]:
    """The members with role 'producer'."""
    return tuple(m for m in self.members if m.role == PRODUCER)

  def label(self) -> str:
    """The name, or ``'<first producer path>[<axis>]'`` for an unnamed space."""
    if self.name:
      return self.name
    prods = self.producers() or self.members
    return path_str(prods[0].path) + f"[{prods[0].axis}]" if prods else "?"
