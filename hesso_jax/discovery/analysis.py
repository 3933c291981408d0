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
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from hesso_jax import _jaxpr as J
from hesso_jax.discovery import rules as R
from hesso_jax.discovery import values as V
from hesso_jax.discovery.atoms import Atoms
from hesso_jax.discovery.trace import Traced, trace
from hesso_jax.space import (
  CONSUMER,
  PRODUCER,
  STATE,
  AxisSlice,
  ChannelSpace,
  SearchSpace,
  path_str,
)

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


class Fold(NamedTuple):
  """A contraction where a removed channel's constant value is folded into the output.

  At equation ``index`` of ``visit``, operand ``side`` (0: lhs, 1: rhs) of a ``dot_general``
  equals ``value`` (a scalar, or ``PER_CHANNEL``: an input-independent value per channel) at
  every position of the channel when its producers are zero, and the other operand does not
  depend on the data inputs; removing the channel adds the contraction of that value with the
  other operand's removed rows to the output.
  """

  visit: Visit
  index: int  # type: ignore[assignment]
  side: int
  value: Any


class _Ctx:
  def __init__(self, fold: bool = False):
    self.atoms = Atoms()
    self.contracted: set[tuple[int, int]] = set()
    self.looked_up: set[tuple[int, int]] = set()  # axes a gather copies out whole (embeddings)
    self.produced: list[int] = []  # atoms of every computed value (what the function reads)
    self.visit: Visit | None = None
    self.fold_enabled = fold
    self.folds: dict[int, list[Fold]] = {}  # leaf -> where its constant value is folded
    self.loop_depth = 0  # inside scan / while / cond bodies (no folding there)
    self.cur = None  # (visit, equation index, input Vals) during the zero pass

  def fold(self, eqn, leaf: int) -> bool:
    """Record that contracting ``leaf`` at the current ``dot_general`` can be folded, if it can."""
    if not self.fold_enabled or self.loop_depth or self.cur is None:
      return False
    visit, i, vals = self.cur
    (lc, _), _ = eqn.params["dimension_numbers"]
    if len(lc) != 1:
      return False
    for side in (0, 1):
      k = vals[side].const if vals[side].const is not None else vals[side].known.get(leaf)
      if k is not None and vals[1 - side].indep and (k is V.PER_CHANNEL or bool(np.isfinite(k))):
        self.folds.setdefault(leaf, []).append(Fold(visit, i, side, k))
        return True
    return False

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
      self.visit.src[outvar] = (s[0], m)  # type: ignore[union-attr]


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
  for k, (v, a) in enumerate(zip(jaxpr.invars, in_atoms, strict=True)):
    visit.env[v] = a
    if in_src is not None and in_src[k] is not None:
      visit.src[v] = in_src[k]
  saved, ctx.visit = ctx.visit, visit
  try:
    for i, eqn in enumerate(jaxpr.eqns):
      ins = [_atoms_of(ctx, visit, v) for v in eqn.invars]
      outs = _eqn_atoms(ctx, visit, i, eqn, ins)
      for v, a in zip(eqn.outvars, outs, strict=True):
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
      inner_src.append(
        None if s is None else (s[0], {ax - 1: la for ax, la in s[1].items() if ax >= 1})
      )
  child, outs = _walk_atoms(ctx, body, inner_in, inner_src)
  for k in range(ncar):
    for x, y in zip(inner_in[nc + k], outs[k], strict=True):
      ctx.atoms.unify(x, y)
  visit.children[i] = [child]
  res = [inner_in[nc + k] for k in range(ncar)]
  for v, a in zip(eqn.outvars[ncar:], outs[ncar:], strict=True):
    lead = ctx.atoms.new(R.shape_of(v)[0], ("stacked", "scan output stacking axis"))
    res.append((lead,) + tuple(a))
  return res


def _while_atoms(ctx, visit, i, eqn, ins):
  p = eqn.params
  cn, bn = p["cond_nconsts"], p["body_nconsts"]
  cj, _ = J.open_jaxpr(p["cond_jaxpr"])
  bj, _ = J.open_jaxpr(p["body_jaxpr"])
  srcs = _srcs(visit, eqn.invars)
  cconsts, bconsts, carry = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
  csrc, bsrc = srcs[:cn], srcs[cn : cn + bn]
  cchild, _ = _walk_atoms(ctx, cj, list(cconsts) + list(carry), list(csrc) + [None] * len(carry))
  bchild, bouts = _walk_atoms(
    ctx, bj, list(bconsts) + list(carry), list(bsrc) + [None] * len(carry)
  )
  for x, y in zip(carry, bouts, strict=True):
    for a, b in zip(x, y, strict=True):
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
      for x, y in zip(outs0, outs, strict=True):
        for a, b in zip(x, y, strict=True):
          ctx.atoms.unify(a, b)
  visit.children[i] = kids
  return outs0


# ----------------------------------------------------------------------------------------------
# Pass 2: zeros (and the rest of the value lattice, :mod:`hesso_jax.discovery.values`)
# ----------------------------------------------------------------------------------------------


def _indep_val(ctx: _Ctx, atoms, zeros) -> V.Val:
  """Val of a variable leaf or captured constant: vectors are per-channel along their axis."""
  big = [a for a in atoms if ctx.atoms.sz(a) > 1]
  # Only when each position of the axis is one channel (a leaf, or a concatenation of leaves):
  # along a product layout (heads x head-dim) the value would vary within a channel.
  if ctx.fold_enabled and len(big) == 1 and len(ctx.atoms.expand([(big[0],)])) == 1:
    return V.per_channel(zeros, ctx.atoms.leaves(big[0]))
  return V.Val(zeros, V.EMPTY, None, True)


def _val_of(venv, v) -> V.Val:
  if J.is_literal(v):
    return V.from_literal(v)
  return venv.get(v, V.BOTTOM)


def _walk_zeros(ctx: _Ctx, visit: Visit, vin: list) -> list:
  """Abstract values of ``visit.jaxpr``'s outputs given its inputs' (marks sinks on the way)."""
  jaxpr = visit.jaxpr
  venv = {
    v: _indep_val(ctx, visit.env.get(v, ()), frozenset())  # captured constants
    for v in jaxpr.constvars
  }
  venv.update(zip(jaxpr.invars, vin, strict=True))
  saved = ctx.visit, ctx.cur
  ctx.visit = visit
  try:
    for i, eqn in enumerate(jaxpr.eqns):
      vals = [_val_of(venv, v) for v in eqn.invars]
      ctx.cur = (visit, i, vals)  # type: ignore[assignment]
      for v, val in zip(eqn.outvars, _eqn_zeros(ctx, visit, i, eqn, vals), strict=True):
        venv[v] = val
  finally:
    ctx.visit, ctx.cur = saved
  return [_val_of(venv, v) for v in jaxpr.outvars]


def _fix_point(step: Callable[[list], list], init: list) -> list:
  """Greatest fix-point of ``carry -> meet(carry, step(carry))`` below ``init``.

  Every iteration either stops or strictly shrinks some carry's value, so the loop ends after at
  most ``sum(height)`` iterations; should it not, nothing is claimed about the carries.
  """
  carry = list(init)
  for _ in range(sum(V.height(c) for c in carry) + 2):
    new = [V.meet(c, o) for c, o in zip(carry, step(carry), strict=True)]
    if new == carry:
      return carry
    carry = new
  bottom = [V.BOTTOM for _ in carry]  # pragma: no cover - the bound above is never reached
  step(bottom)  # pragma: no cover - mark the sinks that nothing-known carries reach
  return bottom  # pragma: no cover


def _eqn_zeros(ctx, visit, i, eqn, vals):
  name = eqn.primitive.name
  if i in visit.children:
    kids = visit.children[i]
    if name not in ("scan", "while", "cond"):
      return _walk_zeros(ctx, kids[0], vals)
    ctx.loop_depth += 1
    try:
      return _control_flow_zeros(ctx, kids, eqn, vals)
    finally:
      ctx.loop_depth -= 1
  zs = [v.zeros for v in vals]
  ins = [visit.env.get(v, ()) if not J.is_literal(v) else () for v in eqn.invars]
  outs = [visit.env.get(v, ()) for v in eqn.outvars]
  return V.transfer(eqn, vals, R.rule_for(name).zeros(ctx, eqn, zs, ins, outs))


def _control_flow_zeros(ctx, kids, eqn, vals):
  name = eqn.primitive.name
  if name == "scan":
    nc, ncar = eqn.params["num_consts"], eqn.params["num_carry"]
    last = {}

    def step(c):
      last["out"] = _walk_zeros(ctx, kids[0], vals[:nc] + c + vals[nc + ncar :])
      return last["out"][:ncar]

    carry = _fix_point(step, vals[nc : nc + ncar])  # the last step ran on ``carry`` itself
    return carry + last["out"][ncar:]
  if name == "while":
    cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]

    def step(c):
      _walk_zeros(ctx, kids[0], vals[:cn] + c)
      return _walk_zeros(ctx, kids[1], vals[cn : cn + bn] + c)

    return _fix_point(step, vals[cn + bn :])
  res = None  # cond: what holds on every branch
  for kid in kids:
    zo = _walk_zeros(ctx, kid, vals[1:])
    res = zo if res is None else [V.meet(a, b) for a, b in zip(res, zo, strict=True)]
  return res


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
  folds: dict = dataclasses.field(default_factory=dict)  # leaf -> [Fold] of folded spaces


def _path_matcher(ignore) -> Callable[[tuple], bool]:
  if ignore is None:
    return lambda p: False
  if callable(ignore):
    return lambda p: bool(ignore(path_str(p)))
  pats = [re.compile(x) for x in ([ignore] if isinstance(ignore, str) else list(ignore))]
  return lambda p: any(r.search(path_str(p)) for r in pats)


def _input_atoms(ctx: _Ctx, tr: Traced) -> tuple[list, list]:
  """Fresh atoms for every input axis; data inputs' axes are tied to the input (never channels)."""
  A = ctx.atoms
  in_atoms: list = []
  in_src: list = []
  for k, v in enumerate(tr.closed.jaxpr.invars):
    shp = R.shape_of(v)
    if k < tr.num_var_leaves:
      in_atoms.append(tuple(A.new(d) for d in shp))
      in_src.append((k, {ax: ax for ax in range(len(shp))}))
    else:
      in_atoms.append(tuple(A.new(d, ("input", "tied to the function's data input")) for d in shp))
      in_src.append(None)
  return in_atoms, in_src


def _roles(ctx: _Ctx, tr: Traced) -> dict[tuple[int, int], str]:
  """(variable leaf, axis) -> producer / consumer / state."""
  roles: dict[tuple[int, int], str] = {}
  for k in range(tr.num_var_leaves):
    for ax in range(len(R.shape_of(tr.closed.jaxpr.invars[k]))):
      if tr.var_is_state[k]:
        roles[(k, ax)] = STATE
      elif (k, ax) in ctx.contracted and (k, ax) not in ctx.looked_up:
        # a tied embedding's feature axis is contracted by the output head but *produced* by the
        # lookup: it is a producer (zeroing E[:, c] zeroes channel c of the gathered stream)
        roles[(k, ax)] = CONSUMER
      else:
        roles[(k, ax)] = PRODUCER
  return roles


def _zero_inputs(ctx: _Ctx, tr: Traced, in_atoms: list, roles: dict) -> list:
  """The value pass's inputs: variables are zero where their producer axes' channels are."""
  A = ctx.atoms
  zin = []
  for k in range(len(tr.closed.jaxpr.invars)):
    if k < tr.num_var_leaves:
      prod = [a for ax, a in enumerate(in_atoms[k]) if roles[(k, ax)] == PRODUCER]
      zin.append(_indep_val(ctx, in_atoms[k], A.leafset(prod)))
    else:
      zin.append(V.BOTTOM)  # data inputs: nothing known, input-dependent
  return zin


def _members(ctx: _Ctx, tr: Traced, in_atoms: list, roles: dict, ignore) -> tuple[dict, dict]:
  """Channel leaf -> its member axis slices, and the leaves touched by ignored paths."""
  A = ctx.atoms
  ignored = _path_matcher(ignore)
  members: dict[int, list[AxisSlice]] = {}
  ignored_leaves: dict[int, str] = {}
  for k in range(tr.num_var_leaves):
    path = tr.var_paths[k]
    for ax, a in enumerate(in_atoms[k]):
      for leaf, off, width, outer, inner in A.axis_members(a):
        n = A.size[leaf]
        width = None if (width == n and off == 0) else width
        m = AxisSlice(path, ax, roles[(k, ax)], offset=off, width=width, outer=outer, inner=inner)
        members.setdefault(leaf, []).append(m)
        if ignored(path):
          ignored_leaves.setdefault(leaf, path_str(path))
  return members, ignored_leaves


def _verdicts(ctx: _Ctx, members: dict, ignored_leaves: dict, approximate: bool) -> tuple:
  """One ChannelSpace per channel leaf (with its verdict and reasons), and the leaves."""
  A = ctx.atoms
  bad = A.inherited_bad()
  used = A.leafset(ctx.produced)
  spaces, leaves = [], []
  for leaf, ms in members.items():
    n = A.size[leaf]
    codes = bad.get(leaf, [])
    reasons = [m for c, m in _by_cause(codes) if not (approximate and c in APPROXIMATE_CODES)]
    if n <= 1 or any(code in NOT_CHANNEL_CODES for code, _ in codes):
      continue  # not a channel axis at all (spatial, window, stacked layers)
    if leaf in ignored_leaves:
      reasons.append(f"ignored by the user (matches {ignored_leaves[leaf]})")
    if not reasons:  # derived causes only where no primitive or rule gave the real one
      if not any(m.role == PRODUCER for m in ms):
        reasons.append("no parameter produces this channel")
      if leaf not in used:
        reasons.append(
          "never read by the traced function (e.g. positions beyond the traced length)"
        )
    approx = approximate and any(code in APPROXIMATE_CODES for code, _ in codes)
    name = _space_name(ms) + (" (approximate)" if approx and not reasons else "")
    if leaf in ctx.folds and not reasons:
      name += " (exact, folded)"
    spaces.append(
      ChannelSpace(n, tuple(ms), prunable=not reasons, reason="; ".join(reasons), name=name)
    )
    leaves.append(leaf)
  return spaces, leaves


def analyse(
  fn,
  variables,
  *args,
  ignore=None,
  approximate: bool = False,
  is_state: Callable[[tuple], bool] | None = None,
  fold: bool = False,
  **kwargs,
) -> Analysis:
  """Trace ``fn``, unify axes into channel atoms, run the value pass and give every space a verdict.

  The pipeline is :func:`_input_atoms` -> atom walk (rules' ``atoms``) -> :func:`_roles` ->
  value pass (rules' ``zeros``, :mod:`hesso_jax.discovery.values`) -> :func:`_members` ->
  :func:`_verdicts`. :func:`discover` returns the resulting search space.
  """
  tr = trace(fn, variables, *args, is_state=is_state, **kwargs)
  ctx = _Ctx(fold)
  in_atoms, in_src = _input_atoms(ctx, tr)
  visit, outs = _walk_atoms(ctx, tr.closed.jaxpr, in_atoms, in_src)
  for o in outs:
    ctx.atoms.mark_all(o, "output", "reaches the function's output")
  ctx.atoms.freeze()
  roles = _roles(ctx, tr)
  _walk_zeros(ctx, visit, _zero_inputs(ctx, tr, in_atoms, roles))
  members, ignored_leaves = _members(ctx, tr, in_atoms, roles, ignore)
  spaces, leaves = _verdicts(ctx, members, ignored_leaves, approximate)
  folds = {
    leaf: ctx.folds[leaf]
    for leaf, s in zip(leaves, spaces, strict=True)
    if s.prunable and leaf in ctx.folds
  }
  return Analysis(tr, visit, ctx.atoms, SearchSpace(tuple(spaces)), tuple(leaves), folds)


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
  weights = [
    m
    for m in prods
    if str(m.path[-1]) in ("kernel", "weight", "w", "embedding")
    or (
      str(m.path[-1]) == "value"
      and len(m.path) > 1
      and str(m.path[-2]) in ("kernel", "weight", "embedding")
    )
  ]
  m = (weights or prods)[0]
  lay = []
  if m.outer != 1:
    lay.append(f"outer={m.outer}")
  if m.inner != 1:
    lay.append(f"inner={m.inner}")
  return f"{path_str(m.path)}[{m.axis}]" + (f" ({', '.join(lay)})" if lay else "")


def discover(
  fn: Callable,
  variables: Any,
  *args,
  ignore=None,
  approximate: bool = False,
  is_state: Callable[[tuple], bool] | None = None,
  fold: bool = False,
  **kwargs,
) -> SearchSpace:
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
    fold: also allow spaces whose channels, once their producers are zero, take a known non-zero
      constant value (``sigmoid(0) = 0.5``, ``relu(0 + 1.0) = 1``) that only input-independent
      ``dot_general`` consumers (outside loops) contract. They are named ``... (exact, folded)``:
      :func:`~hesso_jax.compress` removes them exactly by adding their constant contribution to
      the consumer's output; slicing alone (``prune``) or scrambling their consumers is not exact.

  Returns:
    The :class:`~hesso_jax.SearchSpace`; ``space.summary()`` explains every verdict.

  Example: a clamped hidden layer (``relu6``) fed by a zero-padded input is prunable; the logits
  reach the output and are not.

  >>> import jax, jax.numpy as jnp, hesso_jax as hj
  >>> p = {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 3))}
  >>> fn = lambda p, x: jax.nn.relu6(jnp.pad(x, ((0, 0), (0, 2))) @ p["w1"]) @ p["w2"]
  >>> space = hj.discover(fn, p, jnp.ones((5, 2)))
  >>> space.num_groups
  8
  >>> [(s.label(), s.size, s.prunable) for s in space.channel_spaces]
  [('w1[0]', 4, False), ('w1[1]', 8, True), ('w2[1]', 3, False)]
  >>> space.channel_spaces[2].reason
  "reaches the function's output"
  """
  return analyse(
    fn,
    variables,
    *args,
    ignore=ignore,
    approximate=approximate,
    is_state=is_state,
    fold=fold,
    **kwargs,
  ).space
