"""Match discovered channel spaces against hand-derived expectations, by parameter path and axis.

A channel of a space occupies, on each member (path, axis), the indices
``o * width * inner + (offset + c) * inner + i`` (see ``hesso_jax.space``); several members on
the same (path, axis) (e.g. the two halves of a rotary pair) contribute together. Comparing the
*sets of index sets* makes the match independent of channel order, and precise about layouts: a
space that ties q/k head dims to v head dims does not match either expectation.
"""

from __future__ import annotations

from wild_models import Expected

import hesso_jax as hj


def channel_indices(space: hj.ChannelSpace, path: str, axis: int) -> list[frozenset] | None:
  """The indices channel c occupies on (path, axis), for every c; None if not a member there."""
  members = [m for m in space.members if hj.space.path_str(m.path) == path and m.axis == axis]
  if not members:
    return None
  out = []
  for c in range(space.size):
    idx = set()
    for m in members:
      w = m.block(space.size)
      idx.update(o * w * m.inner + (m.offset + c) * m.inner + i
                 for o in range(m.outer) for i in range(m.inner))
    out.append(frozenset(idx))
  return out


def _expected_sets(e: Expected, path_axis: tuple[str, int, object]) -> set[frozenset]:
  _, _, fn = path_axis
  return {frozenset(fn(c)) for c in range(e.size)}


def matches(space: hj.ChannelSpace, e: Expected) -> bool:
  """``space`` is prunable, has ``e.size`` channels and ``e``'s exact layout on every member."""
  if not space.prunable or space.size != e.size:
    return False
  for triple in e.members:
    got = channel_indices(space, triple[0], triple[1])
    if got is None or set(got) != _expected_sets(e, triple):
      return False
  return True


def diagnose(spaces, e: Expected, matched=()) -> str:
  """Why ``e`` is not found: the spaces that hold its members' expected indices instead.

  Members are tried in order until one lies in some space. Spaces in ``matched`` (those that
  match another expectation, e.g. the heads of a fused qkv axis, which overlap every head dim)
  are left out.
  """
  for path, axis, fn in e.members:
    want = set().union(*(frozenset(fn(c)) for c in range(e.size)))
    notes = []
    for s in spaces:
      if any(s is m for m in matched):
        continue
      got = channel_indices(s, path, axis)
      if got is None or not want & set().union(*got):
        continue
      where = f"{s.label()} (size {s.size})"
      if s.prunable:
        notes.append(f"joined into prunable space {where} with a different layout")
      else:
        notes.append(f"unprunable {where}: {s.reason}")
    if notes:
      return "; ".join(notes)
  return "no member is in any channel space"


def match_all(space: hj.SearchSpace, expected) -> tuple[dict, dict]:
  """({label: matching space}, {label: diagnosis}) for every expected space."""
  found = {}
  for e in expected:
    hits = [s for s in space.channel_spaces if matches(s, e)]
    if hits:
      found[e.label] = hits[0]
  missing = {e.label: diagnose(space.channel_spaces, e, tuple(found.values()))
             for e in expected if e.label not in found}
  return found, missing
