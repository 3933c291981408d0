"""Union-find over axis atoms, with structure (flatten / concatenation layouts).

Every axis of every value in a jaxpr is an *atom*. Atoms that must be pruned together are
unioned. An atom may have a *structure*: a row-major product of factors, each factor a
concatenation of parts (other atoms). ``reshape`` creates products, ``concatenate``/``split``/
``slice`` create concatenations. Atoms without structure that reach a parameter axis are the
channel spaces.

Unprunability is a list of (code, message) reasons attached to a root atom; reasons of a
structured atom apply to every leaf inside it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np

Factor = tuple  # tuple[int, ...]  (atoms concatenated)
Layout = list  # list[Factor]     (factors multiplied, row-major)

_MAX_DEPTH = 64
_MAX_REPEATS = 4096  # members one nested leaf may get on one parameter axis


class Atoms:
  def __init__(self):
    self.parent: list[int] = []
    self.size: list[int] = []
    self.struct: dict[int, Layout] = {}
    self.bad: dict[int, list[tuple[str, str]]] = {}
    self._leaf_cache: dict[int, tuple[int, ...]] | None = None

  # --- basics -------------------------------------------------------------------------------

  def new(self, size: int, reason: tuple[str, str] | None = None) -> int:
    a = len(self.parent)
    self.parent.append(a)
    self.size.append(int(size))
    if reason is not None:
      self.bad[a] = [reason]
    return a

  def find(self, a: int) -> int:
    root = a
    while self.parent[root] != root:
      root = self.parent[root]
    while self.parent[a] != root:
      self.parent[a], a = root, self.parent[a]
    return root

  def sz(self, a: int) -> int:
    return self.size[self.find(a)]

  def mark(self, a: int, code: str, msg: str) -> None:
    r = self.find(a)
    lst = self.bad.setdefault(r, [])
    if (code, msg) not in lst:
      lst.append((code, msg))

  def mark_all(self, atoms: Iterable[int], code: str, msg: str) -> None:
    for a in atoms:
      self.mark(a, code, msg)

  # --- unification --------------------------------------------------------------------------

  def unify(self, a: int, b: int, depth: int = 0) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    if self.size[ra] != self.size[rb] or depth > _MAX_DEPTH:
      msg = f"axes of sizes {self.size[ra]} and {self.size[rb]} are tied but cannot be aligned"
      self.mark(ra, "reshape", msg)
      self.mark(rb, "reshape", msg)
      return
    sa, sb = self.struct.pop(ra, None), self.struct.pop(rb, None)
    self.parent[rb] = ra
    if rb in self.bad:
      for r in self.bad.pop(rb):
        if r not in self.bad.setdefault(ra, []):
          self.bad[ra].append(r)
    if sa is None and sb is None:
      return
    if sa is None or sb is None:
      self.struct[ra] = sa if sb is None else sb  # type: ignore[assignment]
      return
    self.struct[ra] = sa
    self.unify_layout(sa, sb, depth + 1)

  def factor_size(self, f: Factor) -> int:
    return sum(self.sz(p) for p in f)

  def expand(self, layout: Layout, depth: int = 0) -> Layout:
    """Substitute single-part factors that have structure; drop size-1 factors."""
    out: Layout = []
    for f in layout:
      if len(f) == 1:
        r = self.find(f[0])
        if r in self.struct and depth < _MAX_DEPTH:
          out.extend(self.expand(self.struct[r], depth + 1))
          continue
        f = (r,)
      else:
        f = self._flatten_parts(f, depth)
      if self.factor_size(f) != 1:
        out.append(tuple(f))
    return out

  def _flatten_parts(self, f: Factor, depth: int) -> Factor:
    """Inline parts that are themselves plain concatenations (concat of concat)."""
    parts: list[int] = []
    for p in f:
      r = self.find(p)
      st = self.struct.get(r)
      if st is not None and len(st) == 1 and depth < _MAX_DEPTH:
        parts.extend(self._flatten_parts(st[0], depth + 1))
      else:
        parts.append(r)
    return tuple(parts)

  def unify_layout(self, la: Layout, lb: Layout, depth: int = 0) -> None:
    la, lb = self.expand(la), self.expand(lb)
    i = j = 0
    while i < len(la) and j < len(lb):
      ga, gb = [la[i]], [lb[j]]
      pa, pb = self.factor_size(la[i]), self.factor_size(lb[j])
      i, j = i + 1, j + 1
      while pa != pb:
        if pa < pb and i < len(la):
          ga.append(la[i])
          pa *= self.factor_size(la[i])
          i += 1
        elif pb < pa and j < len(lb):
          gb.append(lb[j])
          pb *= self.factor_size(lb[j])
          j += 1
        else:
          break
      if pa != pb:
        self._fail(
          ga + gb + la[i:] + lb[j:], "reshape", "reshape splits and merges axes inconsistently"
        )
        return
      self._unify_group(ga, gb, depth)
    if i < len(la) or j < len(lb):
      self._fail(la[i:] + lb[j:], "reshape", "reshape splits and merges axes inconsistently")

  def _fail(self, factors: Sequence[Factor], code: str, msg: str) -> None:
    for f in factors:
      for p in f:
        self.mark(p, code, msg)

  def _unify_group(self, ga: list[Factor], gb: list[Factor], depth: int) -> None:
    if len(ga) == 1 and len(gb) == 1:
      self._unify_factor(ga[0], gb[0], depth)
    elif len(ga) == 1 and len(ga[0]) == 1:
      self._define(ga[0][0], gb, depth)
    elif len(gb) == 1 and len(gb[0]) == 1:
      self._define(gb[0][0], ga, depth)
    elif not (self._copies(ga, gb, depth) or self._copies(gb, ga, depth)):
      self._fail(
        ga + gb, "reshape", "an axis is both split and merged by reshapes (e.g. (6,4)->(4,6))"
      )

  def _copies(self, prod: list[Factor], cat: list[Factor], depth: int) -> bool:
    """(m) x (rest) laid over a concatenation of m parts of size(rest): part i is copy i.

    E.g. a table tiled twice (``jnp.tile(cos, 2)``) multiplied with ``concatenate([-x2, x1])``
    (rotate_half): every part is tied to ``rest`` (coarser than needed, always consistent) and the
    copy factor becomes m parts of size 1, which are never channels.
    """
    if len(cat) != 1 or len(prod) < 2:
      return False
    copies, parts, rest = prod[0], cat[0], prod[1:]
    n = math.prod(self.factor_size(f) for f in rest)
    if self.factor_size(copies) != len(parts) or any(self.sz(p) != n for p in parts):
      return False
    if len(copies) == 1 and len(parts) > 1:  # a plain copy axis: split it into size-1 parts
      if self.find(copies[0]) in self.struct:
        return False
      self._define(copies[0], [tuple(self.new(1) for _ in parts)], depth + 1)
    elif any(self.sz(c) != 1 for c in copies):
      return False
    for p in parts:
      self.unify_layout([(p,)], rest, depth + 1)
    return True

  def _unify_factor(self, fa: Factor, fb: Factor, depth: int) -> None:
    if len(fa) == 1 and len(fb) == 1:
      self.unify(fa[0], fb[0], depth)
    elif len(fa) == 1:
      self._define(fa[0], [fb], depth)
    elif len(fb) == 1:
      self._define(fb[0], [fa], depth)
    elif self.factor_size(fa) == self.factor_size(fb):
      # Refine both concatenations to their common part boundaries (e.g. a fused qkv output
      # sliced as [:d] and then [d:2d]), then tie the parts pairwise.
      bounds = set(np.cumsum([self.sz(p) for p in fa])) | set(np.cumsum([self.sz(p) for p in fb]))
      for p, q in zip(
        self._refine(fa, bounds, depth), self._refine(fb, bounds, depth), strict=True
      ):
        self.unify(p, q, depth)
    else:
      self._fail([fa, fb], "concat", "concatenations of different sizes are tied")

  def _refine(self, f: Factor, bounds: set, depth: int) -> list[int]:
    """Parts of ``f`` split at every boundary in ``bounds`` that falls inside a part."""
    out, start = [], 0  # type: ignore[var-annotated]
    for p in f:
      end = start + self.sz(p)
      cuts = [start] + sorted(b for b in bounds if start < b < end) + [end]
      if len(cuts) > 2:
        subs = tuple(self.new(b - a) for a, b in itertools.pairwise(cuts))
        self._define(p, [subs], depth + 1)
        out.extend(subs)
      else:
        out.append(p)
      start = end
    return out

  def _define(self, a: int, layout: Layout, depth: int) -> None:
    r = self.find(a)
    if r in self.struct:
      self.unify_layout(self.struct[r], layout, depth + 1)
      return
    if r in {self.find(p) for f in layout for p in f}:
      self._fail(layout, "reshape", "cyclic axis structure")
      return
    self.struct[r] = [tuple(f) for f in layout]

  # --- queries (after unification is complete) ----------------------------------------------

  def freeze(self) -> None:
    self._leaf_cache = {}

  def leaves(self, a: int, depth: int = 0) -> tuple[int, ...]:
    r = self.find(a)
    if self._leaf_cache is not None and r in self._leaf_cache:
      return self._leaf_cache[r]
    if r in self.struct and depth < _MAX_DEPTH:
      out: list[int] = []
      for f in self.struct[r]:
        for p in f:
          out.extend(self.leaves(p, depth + 1))
      res = tuple(dict.fromkeys(out))
    else:
      res = (r,)
    if self._leaf_cache is not None:
      self._leaf_cache[r] = res
    return res

  def leafset(self, atoms: Sequence[int]) -> frozenset:
    out: set[int] = set()
    for a in atoms:
      out.update(self.leaves(a))
    return frozenset(out)

  def axis_members(self, a: int):
    """Yield (leaf, offset, width, outer, inner) for every leaf atom on the axis ``a``.

    A leaf at channel c occupies the indices ``o * width * inner + (offset + c) * inner + i``
    (``o < outer``, ``i < inner``). A leaf inside a concatenation part that is itself reshaped
    (a fused qkv projection split into q, k, v and each reshaped into heads) is yielded once per
    repetition of its part (e.g. q's head dim once per head, at offsets ``h * head_dim``).
    """
    yield from self._members(a, 1, self.sz(a), 0, 1, 0)

  def _members(self, a: int, outer: int, width: int, offset: int, inner: int, depth: int):
    factors = self.expand([(a,)])
    if not factors:
      return
    if len(factors) == 1 and len(factors[0]) == 1 and self.find(factors[0][0]) not in self.struct:
      yield self.find(factors[0][0]), offset, width, outer, inner
      return
    sizes = [self.factor_size(f) for f in factors]
    fills = offset == 0 and width == math.prod(sizes)  # ``a`` is the whole block
    for k, f in enumerate(factors):
      o_k, i_k, w_k = math.prod(sizes[:k]), math.prod(sizes[k + 1 :]), sizes[k]
      if fills:
        reps = [(outer * o_k, w_k, 0)]
      elif width % i_k == 0 and offset % i_k == 0 and o_k <= _MAX_REPEATS and depth < _MAX_DEPTH:
        reps = [(outer, width // i_k, offset // i_k + b * w_k) for b in range(o_k)]
      else:
        for p in f:
          for leaf in self.leaves(p):
            self.mark(
              leaf,
              "nested",
              "a concatenation part is reshaped in a way that no "
              "(outer, width, inner) layout describes",
            )
        continue
      start = 0
      for p in f:
        for o, w, base in reps:
          yield from self._members(p, o, w, base + start, inner * i_k, depth + 1)
        start += self.sz(p)

  def inherited_bad(self) -> dict[int, list[tuple[str, str]]]:
    """Reasons per leaf root, including reasons of structured atoms that contain it."""
    out: dict[int, list[tuple[str, str]]] = {}
    for r, reasons in list(self.bad.items()):
      if self.find(r) != r:
        continue
      for leaf in self.leaves(r):
        lst = out.setdefault(leaf, [])
        for x in reasons:
          if x not in lst:
            lst.append(x)
    return out

  def keep_mask(self, a: int, leaf_keep: dict, depth: int = 0):
    """Host-side bool mask over axis ``a`` given per-leaf keep masks (missing: keep all)."""
    r = self.find(a)
    if r in self.struct and depth < _MAX_DEPTH:
      mask = np.ones((1,), bool)
      for f in self.struct[r]:
        fm = np.concatenate([self.keep_mask(p, leaf_keep, depth + 1) for p in f])
        mask = np.logical_and.outer(mask, fm).reshape(-1)
      return mask
    m = leaf_keep.get(r)
    return np.ones((self.size[r],), bool) if m is None else np.asarray(m, bool)
