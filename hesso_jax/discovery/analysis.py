"""Jaxpr analysis: axis atoms -> channel spaces with zero-invariance verdicts.

Two passes over the traced jaxpr (recursing into calls, scans, loops and conds):

1. *atoms*: every axis of every value gets an atom; rules tie atoms (union-find with
   flatten/concatenation structure). Which parameter axes are contracted decides roles.
2. *zeros*: for each value, the set of channel atoms along which it is exactly zero when
   those channels' producers are zero. Contractions and reductions that would drop a channel
   that is *not* zero make its space unprunable.

The result keeps the per-call-site atom environments (:class:`Visit`), which
:mod:`hesso_jax.surgery.compress` re-uses to re-run the jaxpr with smaller shapes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable


from hesso_jax import _jaxpr as J
from hesso_jax.discovery import rules as R
from hesso_jax.discovery.atoms import Atoms
from hesso_jax.discovery.trace import Traced, trace
from hesso_jax.space import (CONSUMER, PRODUCER, STATE, AxisSlice, ChannelSpace, SearchSpace,
                             path_str)


# Atoms with these reasons are not channel axes at all; they are left out of the space.
NOT_CHANNEL_CODES = frozenset({"spatial", "stacked"})
# Reasons that `approximate=True` tolerates.
APPROXIMATE_CODES = frozenset({"norm"})


@dataclasses.dataclass
class Visit:
  """One walk of a jaxpr at one call site: atoms per value, child visits per equation."""

  jaxpr: Any
  env: dict = dataclasses.field(default_factory=dict)
  src: dict = dataclasses.field(default_factory=dict)
  children: dict = dataclasses.field(default_factory=dict)


class _Ctx:
  def __init__(self):
    self.atoms = Atoms()
    self.contracted: set[tuple[int, int]] = set()
    self.looked_up: set[tuple[int, int]] = set()  # axes a gather copies out whole (embeddings)
    self.produced: list[int] = []  # atoms of every computed value (what the function reads)
    self.visit: Visit | None = None

  # Parameter-derived values: var -> (leaf index, {value axis: leaf axis})
  def _src(self, var):
    if self.visit is None or (hasattr(var, "val") and not hasattr(var, "count")):
      return None
    return self.visit.src.get(var)

  def contract(self, var, axis):
    s = self._src(var)
    if s is not None and axis in s[1]:
      self.contracted.add((s[0], s[1][axis]))

  def look_up(self, var, axis):
    """``var``'s ``axis`` is copied out whole by a lookup: the parameter produces it there."""
    s = self._src(var)
    if s is not None and axis in s[1]:
      self.looked_up.add((s[0], s[1][axis]))

  def pass_source(self, invar, outvar, mapping: dict):
    s = self._src(invar)
    if s is None:
      return
    m = {o: s[1][i] for o, i in mapping.items() if i in s[1]}
    if m:
      self.visit.src[outvar] = (s[0], m)


# ----------------------------------------------------------------------------------------------
# Pass 1: atoms
# ----------------------------------------------------------------------------------------------


def _atoms_of(ctx: _Ctx, visit: Visit, v):
  if J.is_literal(v):
    return tuple(ctx.atoms.new(d) for d in R.shape_of(v))
  if J.is_drop(v):
    return tuple(ctx.atoms.new(d) for d in R.shape_of(v))
  return visit.env[v]


def _walk_atoms(ctx: _Ctx, jaxpr, in_atoms, in_src=None, const_atoms=None) -> tuple[Visit, list]:
  visit = Visit(jaxpr)
  for k, v in enumerate(jaxpr.constvars):
    if const_atoms is not None:
      visit.env[v] = const_atoms[k]
    else:
      # Constants captured at trace time (RoPE tables, masks) are sliced along pruned channels by
      # compress, like state; they are never zero, which the zero pass accounts for.
      visit.env[v] = tuple(ctx.atoms.new(d) for d in R.shape_of(v))
  for k, (v, a) in enumerate(zip(jaxpr.invars, in_atoms)):
    visit.env[v] = a
    if in_src is not None and in_src[k] is not None:
      visit.src[v] = in_src[k]
  saved, ctx.visit = ctx.visit, visit
  try:
    for i, eqn in enumerate(jaxpr.eqns):
      ins = [_atoms_of(ctx, visit, v) for v in eqn.invars]
      outs = _eqn_atoms(ctx, visit, i, eqn, ins)
      for v, a in zip(eqn.outvars, outs):
        if not J.is_drop(v):
          visit.env[v] = tuple(a)
          ctx.produced.extend(a)
  finally:
    ctx.visit = saved
  outs = [_atoms_of(ctx, visit, v) for v in jaxpr.outvars]
  return visit, outs


def _srcs(visit, vars_):
  return [visit.src.get(v) if not J.is_literal(v) else None for v in vars_]


def _eqn_atoms(ctx: _Ctx, visit: Visit, i: int, eqn, ins):
  name = eqn.primitive.name
  body = J.call_body(eqn)
  if body is not None:
    inner, _ = J.open_jaxpr(body)
    child, outs = _walk_atoms(ctx, inner, ins, _srcs(visit, eqn.invars))
    visit.children[i] = [child]
    return outs
  if name == "scan":
    return _scan_atoms(ctx, visit, i, eqn, ins)
  if name == "while":
    return _while_atoms(ctx, visit, i, eqn, ins)
  if name == "cond":
    return _cond_atoms(ctx, visit, i, eqn, ins)
  return R.rule_for(name).atoms(ctx, eqn, ins)


def _scan_atoms(ctx, visit, i, eqn, ins):
  p = eqn.params
  body, _ = J.open_jaxpr(p["jaxpr"])
  nc, ncar = p["num_consts"], p["num_carry"]
  srcs = _srcs(visit, eqn.invars)
  inner_in, inner_src = [], []
  for k, a in enumerate(ins):
    s = srcs[k]
    if k < nc + ncar:
      inner_in.append(a)
      inner_src.append(s)
    else:
      ctx.atoms.mark(a[0], "stacked", "scanned-over (stacked layer / time) axis")
      inner_in.append(a[1:])
      inner_src.append(None if s is None else
                       (s[0], {ax - 1: la for ax, la in s[1].items() if ax >= 1}))
  child, outs = _walk_atoms(ctx, body, inner_in, inner_src)
  for k in range(ncar):
    for x, y in zip(inner_in[nc + k], outs[k]):
      ctx.atoms.unify(x, y)
  visit.children[i] = [child]
  res = [inner_in[nc + k] for k in range(ncar)]
  for v, a in zip(eqn.outvars[ncar:], outs[ncar:]):
    lead = ctx.atoms.new(R.shape_of(v)[0], ("stacked", "scan output stacking axis"))
    res.append((lead,) + tuple(a))
  return res


def _while_atoms(ctx, visit, i, eqn, ins):
  p = eqn.params
  cn, bn = p["cond_nconsts"], p["body_nconsts"]
  cj, _ = J.open_jaxpr(p["cond_jaxpr"])
  bj, _ = J.open_jaxpr(p["body_jaxpr"])
  srcs = _srcs(visit, eqn.invars)
  cconsts, bconsts, carry = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
  csrc, bsrc = srcs[:cn], srcs[cn:cn + bn]
  cchild, _ = _walk_atoms(ctx, cj, list(cconsts) + list(carry), list(csrc) + [None] * len(carry))
  bchild, bouts = _walk_atoms(ctx, bj, list(bconsts) + list(carry), list(bsrc) + [None] * len(carry))
  for x, y in zip(carry, bouts):
    for a, b in zip(x, y):
      ctx.atoms.unify(a, b)
  visit.children[i] = [cchild, bchild]
  return list(carry)


def _cond_atoms(ctx, visit, i, eqn, ins):
  branches = eqn.params["branches"]
  ops = ins[1:]
  srcs = _srcs(visit, eqn.invars)[1:]
  kids, outs0 = [], None
  for br in branches:
    bj, _ = J.open_jaxpr(br)
    child, outs = _walk_atoms(ctx, bj, ops, srcs)
    kids.append(child)
    if outs0 is None:
      outs0 = outs
    else:
      for x, y in zip(outs0, outs):
        for a, b in zip(x, y):
          ctx.atoms.unify(a, b)
  visit.children[i] = kids
  return outs0


# ----------------------------------------------------------------------------------------------
# Pass 2: zeros
# ----------------------------------------------------------------------------------------------


def _z_of(visit: Visit, zenv, v):
  if J.is_literal(v):
    return R.ALL if R._is_zero_literal(v) else frozenset()
  return zenv.get(v, frozenset())


def _walk_zeros(ctx: _Ctx, visit: Visit, zin) -> list:
  jaxpr = visit.jaxpr
  zenv = {}
  for v, z in zip(jaxpr.invars, zin):
    zenv[v] = z
  saved, ctx.visit = ctx.visit, visit
  try:
    for i, eqn in enumerate(jaxpr.eqns):
      zs = [_z_of(visit, zenv, v) for v in eqn.invars]
      ins = [visit.env.get(v, ()) if not J.is_literal(v) else () for v in eqn.invars]
      outs = [visit.env.get(v, ()) for v in eqn.outvars]
      zo = _eqn_zeros(ctx, visit, i, eqn, zs, ins, outs)
      for v, z in zip(eqn.outvars, zo):
        zenv[v] = z
  finally:
    ctx.visit = saved
  return [_z_of(visit, zenv, v) for v in jaxpr.outvars]


def _meet(a, b):
  if a is R.ALL:
    return b
  if b is R.ALL:
    return a
  return frozenset(set(a) & set(b))


def _eqn_zeros(ctx, visit, i, eqn, zs, ins, outs):
  name = eqn.primitive.name
  if i in visit.children:
    kids = visit.children[i]
    if name == "scan":
      nc, ncar = eqn.params["num_consts"], eqn.params["num_carry"]
      carry = list(zs[nc:nc + ncar])
      for _ in range(8):
        zo = _walk_zeros(ctx, kids[0], zs[:nc] + carry + zs[nc + ncar:])
        new = [_meet(c, o) for c, o in zip(carry, zo[:ncar])]
        if new == carry:
          break
        carry = new
      return carry + zo[ncar:]
    if name == "while":
      cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
      carry = list(zs[cn + bn:])
      for _ in range(8):
        _walk_zeros(ctx, kids[0], zs[:cn] + carry)
        zo = _walk_zeros(ctx, kids[1], zs[cn:cn + bn] + carry)
        new = [_meet(c, o) for c, o in zip(carry, zo)]
        if new == carry:
          break
        carry = new
      return carry
    if name == "cond":
      res = None
      for kid in kids:
        zo = _walk_zeros(ctx, kid, zs[1:])
        res = zo if res is None else [_meet(a, b) for a, b in zip(res, zo)]
      return res
    return _walk_zeros(ctx, kids[0], zs)
  return R.rule_for(name).zeros(ctx, eqn, zs, ins, outs)


# ----------------------------------------------------------------------------------------------
# Building the search space
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Analysis:
  traced: Traced
  visit: Visit
  atoms: Atoms
  space: SearchSpace
  space_leaves: tuple[int, ...]  # leaf atom of each channel space, same order


def _path_matcher(ignore) -> Callable[[tuple], bool]:
  if ignore is None:
    return lambda p: False
  if callable(ignore):
    return lambda p: bool(ignore(path_str(p)))
  pats = [re.compile(x) for x in ([ignore] if isinstance(ignore, str) else list(ignore))]
  return lambda p: any(r.search(path_str(p)) for r in pats)


def analyse(fn, variables, *args, ignore=None, approximate: bool = False,
            is_state: Callable[[tuple], bool] | None = None, **kwargs) -> Analysis:
  tr = trace(fn, variables, *args, is_state=is_state, **kwargs)
  ctx = _Ctx()
  A = ctx.atoms
  jaxpr = tr.closed.jaxpr
  in_atoms, in_src = [], []
  for k, v in enumerate(jaxpr.invars):
    shp = R.shape_of(v)
    if k < tr.num_var_leaves:
      in_atoms.append(tuple(A.new(d) for d in shp))
      in_src.append((k, {ax: ax for ax in range(len(shp))}))
    else:
      in_atoms.append(tuple(A.new(d, ("input", "tied to the function's data input"))
                            for d in shp))
      in_src.append(None)
  visit, outs = _walk_atoms(ctx, jaxpr, in_atoms, in_src)
  for o in outs:
    A.mark_all(o, "output", "reaches the function's output")
  A.freeze()

  roles: dict[tuple[int, int], str] = {}
  for k in range(tr.num_var_leaves):
    for ax in range(len(R.shape_of(jaxpr.invars[k]))):
      if tr.var_is_state[k]:
        roles[(k, ax)] = STATE
      elif (k, ax) in ctx.contracted and (k, ax) not in ctx.looked_up:
        # a tied embedding's feature axis is contracted by the output head but *produced* by the
        # lookup: it is a producer (zeroing E[:, c] zeroes channel c of the gathered stream)
        roles[(k, ax)] = CONSUMER
      else:
        roles[(k, ax)] = PRODUCER

  zin = []
  for k, v in enumerate(jaxpr.invars):
    if k < tr.num_var_leaves:
      zin.append(A.leafset([a for ax, a in enumerate(in_atoms[k]) if roles[(k, ax)] == PRODUCER]))
    else:
      zin.append(frozenset())
  _walk_zeros(ctx, visit, zin)

  ignored = _path_matcher(ignore)
  members: dict[int, list[AxisSlice]] = {}
  ignored_leaves: dict[int, str] = {}
  for k in range(tr.num_var_leaves):
    path = tr.var_paths[k]
    for ax, a in enumerate(in_atoms[k]):
      for leaf, off, width, outer, inner in A.axis_members(a):
        n = A.size[leaf]
        m = AxisSlice(path, ax, roles[(k, ax)], offset=off,
                      width=None if (width == n and off == 0) else width, outer=outer, inner=inner)
        members.setdefault(leaf, []).append(m)
        if ignored(path):
          ignored_leaves.setdefault(leaf, path_str(path))
  bad = A.inherited_bad()
  used = A.leafset(ctx.produced)
  spaces, leaves = [], []
  for leaf, ms in members.items():
    n = A.size[leaf]
    reasons = [msg for code, msg in _by_cause(bad.get(leaf, []))
               if not (approximate and code in APPROXIMATE_CODES)]
    if n <= 1 or any(code in NOT_CHANNEL_CODES for code, _ in bad.get(leaf, [])):
      continue  # not a channel axis at all (spatial, window, stacked layers)
    if leaf in ignored_leaves:
      reasons.append(f"ignored by the user (matches {ignored_leaves[leaf]})")
    if not reasons:  # derived causes only where no primitive or rule gave the real one
      if not any(m.role == PRODUCER for m in ms):
        reasons.append("no parameter produces this channel")
      if leaf not in used:
        reasons.append("never read by the traced function (e.g. positions beyond the traced "
                       "length)")
    approx = approximate and any(code in APPROXIMATE_CODES for code, _ in bad.get(leaf, []))
    name = _space_name(ms) + (" (approximate)" if approx and not reasons else "")
    spaces.append(ChannelSpace(n, tuple(ms), prunable=not reasons, reason="; ".join(reasons),
                               name=name))
    leaves.append(leaf)
  return Analysis(tr, visit, A, SearchSpace(tuple(spaces)), tuple(leaves))


# Where several causes merge on one space, the first listed is the root one: what the axis *is*
# (the data input's axis, the output's, a gathered vocabulary, an opaque primitive) before what
# follows from it (a contraction or a normalisation that then sees non-zero values).
_CAUSE_ORDER = ("input", "gather", "output", "unknown", "blocked")
_CONSEQUENCES = ("norm", "nonzero")


def _by_cause(reasons: list) -> list:
  def rank(code: str) -> int:
    if code in _CAUSE_ORDER:
      return _CAUSE_ORDER.index(code)
    return len(_CAUSE_ORDER) + (1 if code in _CONSEQUENCES else 0)
  return sorted(reasons, key=lambda r: rank(r[0]))  # stable: otherwise in the order found


def _space_name(ms) -> str:
  prods = [m for m in ms if m.role == PRODUCER] or list(ms)
  weights = [m for m in prods if str(m.path[-1]) in ("kernel", "weight", "w", "embedding")
             or (str(m.path[-1]) == "value" and len(m.path) > 1
                 and str(m.path[-2]) in ("kernel", "weight", "embedding"))]
  m = (weights or prods)[0]
  lay = []
  if m.outer != 1:
    lay.append(f"outer={m.outer}")
  if m.inner != 1:
    lay.append(f"inner={m.inner}")
  return f"{path_str(m.path)}[{m.axis}]" + (f" ({', '.join(lay)})" if lay else "")


def discover(fn: Callable, variables: Any, *args, ignore=None, approximate: bool = False,
             is_state: Callable[[tuple], bool] | None = None, **kwargs) -> SearchSpace:
  """Find the zero-invariant channel spaces of ``fn(variables, *args, **kwargs)``.

  Args:
    fn: any JAX-traceable function whose first argument is the variables pytree. Trace the
      inference (eval / deterministic) function: dropout and batch-statistics updates make
      spaces unprunable.
    variables: pytree of arrays or ``jax.ShapeDtypeStruct`` (no weights needed). Leaves outside
      a linen ``'params'`` collection, and nnx non-``Param`` variables, get the role 'state'.
    *args, **kwargs: example inputs (arrays or ShapeDtypeStructs); non-array leaves are static.
    ignore: regex (or list of regexes, or predicate on the 'a/b/c' path string): spaces touching
      matching parameters are kept out of pruning.
    approximate: also allow spaces that are only tied to LayerNorm/RMSNorm/softmax statistics
      (a transformer's residual stream). Not exact: measure the deviation after compressing.
    is_state: optional predicate on a leaf's key path overriding the default 'state' detection.

  Returns:
    The :class:`~hesso_jax.SearchSpace`; ``space.summary()`` explains every verdict.
  """
  return analyse(fn, variables, *args, ignore=ignore, approximate=approximate, is_state=is_state,
                 **kwargs).space
