"""One propagation rule per primitive (a registry: primitive name -> Rule).

A rule has two halves, run by :mod:`hesso_jax.discovery.analysis` in two passes:

* ``atoms(ctx, eqn, ins) -> outs``: which axes are tied (union-find over axis atoms); may mark
  atoms unprunable with a reason.
* ``zeros(ctx, eqn, zin, ins, outs) -> zouts``: zero-invariance. ``zin[k]`` is the set of leaf
  atoms (channel spaces) along which input k is exactly zero when those channels' producers are
  zero. Rules propagate the sets and flag *sinks* (contractions, reductions) where a channel
  that is not zero would be dropped.

A primitive without a rule gets :func:`unknown`: fresh output atoms, and every atom it touches is
unprunable with a reason naming the primitive. Never a crash, never a wrong space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from hesso_jax import _jaxpr as J

ALL = "ALL"  # zero-set of a literal 0: zero along everything


class AtomsRule(Protocol):
  """Structural pass: unify the axes of ``eqn``'s operands and return its outputs' atoms.

  ``ins`` holds one tuple of atoms (one per axis) per operand; the result is one tuple per output.
  """

  def __call__(self, ctx: Any, eqn: Any, ins: Sequence[tuple]) -> list: ...


class ZerosRule(Protocol):
  """Value pass: from the operands' values (``zin``) return the outputs' values.

  A value says where the result is exactly zero (and what is known besides) when the producers
  of the channels in it are zero; see :mod:`hesso_jax.discovery.values`.
  """

  def __call__(self, ctx: Any, eqn: Any, zin: list, ins: Sequence[tuple], outs: list) -> list: ...


class Rule(NamedTuple):
  """How discovery treats one primitive: its structural and its value rule."""

  atoms: AtomsRule
  zeros: ZerosRule


RULES: dict[str, Rule] = {}


def register(*names: str):
  def deco(rule: Rule):
    for n in names:
      RULES[n] = rule
    return rule

  return deco


def has(z, leaf) -> bool:
  return z is ALL or leaf in z


def shape_of(v) -> tuple[int, ...]:
  return tuple(getattr(v.aval, "shape", ()))


def _fresh(ctx, v, reason=None):
  return tuple(ctx.atoms.new(d, reason) for d in shape_of(v))


# ----------------------------------------------------------------------------------------------
# Unknown primitives
# ----------------------------------------------------------------------------------------------


def unknown_atoms(ctx, eqn, ins):
  msg = f"passes through primitive '{eqn.primitive.name}', which has no discovery rule"
  outs = [_fresh(ctx, v) for v in eqn.outvars]
  for atoms in list(ins) + outs:
    ctx.atoms.mark_all(atoms, "unknown", msg)
  return outs


def no_zeros(ctx, eqn, zin, ins, outs):
  return [frozenset() for _ in outs]


UNKNOWN = Rule(unknown_atoms, no_zeros)

# Deliberate verdicts: primitives that block every space they touch, and why (filled below).
BLOCKING: dict[str, str] = {}


# ----------------------------------------------------------------------------------------------
# Elementwise
# ----------------------------------------------------------------------------------------------


def _same_atoms(ctx, eqn, ins):
  return [ins[0] for _ in eqn.outvars]


def _keep_zeros(ctx, eqn, zin, ins, outs):
  return [zin[0] for _ in outs]


ZERO_PRESERVING_UNARY = (
  "neg",
  "abs",
  "sign",
  "sin",
  "tan",
  "tanh",
  "sinh",
  "asin",
  "asinh",
  "atan",
  "atanh",
  "sqrt",
  "cbrt",
  "erf",
  "erf_inv",
  "expm1",
  "log1p",
  "floor",
  "ceil",
  "round",
  "real",
  "imag",
  "conj",
  "copy",
  "copy_p",
  "convert_element_type",
  "reduce_precision",
  "stop_gradient",
  "square",
  "population_count",
  "sharding_constraint",
  "mesh_cast",
  "reshard",
  "pvary",
)
register(*ZERO_PRESERVING_UNARY)(Rule(_same_atoms, _keep_zeros))

NON_ZERO_PRESERVING_UNARY = (
  "exp",
  "exp2",
  "log",
  "cos",
  "cosh",
  "logistic",
  "rsqrt",
  "acos",
  "acosh",
  "lgamma",
  "digamma",
  "is_finite",
  "not",
  "erfc",
  "bessel_i0e",
  "bessel_i1e",
  "clz",
)
register(*NON_ZERO_PRESERVING_UNARY)(Rule(_same_atoms, no_zeros))


def _integer_pow_zeros(ctx, eqn, zin, ins, outs):
  return [zin[0] if eqn.params["y"] > 0 else frozenset()]


register("integer_pow")(Rule(_same_atoms, _integer_pow_zeros))


def _nary_atoms(ctx, eqn, ins):
  """Join aligned axes of same-rank operands (rank-0 operands broadcast)."""
  out_rank = len(shape_of(eqn.outvars[0]))
  full = [
    a
    for v, a in zip(eqn.invars, ins, strict=True)
    if len(a) == out_rank and len(shape_of(v)) == out_rank
  ]
  if not full:
    return [_fresh(ctx, eqn.outvars[0]) for _ in eqn.outvars]
  out_shape = shape_of(eqn.outvars[0])
  base = list(full[0])
  for other in full[1:]:
    for d, (x, y) in enumerate(zip(base, other, strict=True)):
      sx, sy = ctx.atoms.sz(x), ctx.atoms.sz(y)
      if sx == sy:
        ctx.atoms.unify(x, y)
      elif sx == 1 and sy == out_shape[d]:  # rank-preserving size-1 broadcast
        base[d] = y
  return [tuple(base) for _ in eqn.outvars]


def _is_zero_literal(v) -> bool:
  val = J.literal_value(v)
  if val is None:
    return False
  try:
    return bool(np.all(np.asarray(val) == 0))
  except Exception:  # pragma: no cover - exotic literal
    return False


def _all_zero(ctx, eqn, zin, operands: Sequence[int]):
  """Zero along a leaf iff every operand is zero there (add, sub, max, min, select cases)."""
  out = None
  for k in operands:
    z = ALL if _is_zero_literal(eqn.invars[k]) else zin[k]
    if z is ALL:
      continue
    out = set(z) if out is None else out & set(z)
  return ALL if out is None else frozenset(out)


def _add_like_zeros(ctx, eqn, zin, ins, outs):
  return [_all_zero(ctx, eqn, zin, range(len(zin)))]


def _mul_like_zeros(ctx, eqn, zin, ins, outs):
  if any(z is ALL for z in zin) or any(_is_zero_literal(v) for v in eqn.invars):
    return [ALL]
  out = set()
  for z in zin:
    out |= set(z)
  return [frozenset(out)]


def _div_zeros(ctx, eqn, zin, ins, outs):
  num, den = zin[0], zin[1]
  if den is ALL:
    return [frozenset()]
  if num is ALL:
    return [ALL]
  return [frozenset(set(num) - set(den))]


def _select_zeros(ctx, eqn, zin, ins, outs):
  return [_all_zero(ctx, eqn, zin, range(1, len(zin)))]


register("add", "sub", "max", "min", "add_any", "or", "xor")(Rule(_nary_atoms, _add_like_zeros))
register("mul", "and")(Rule(_nary_atoms, _mul_like_zeros))
register("div", "rem")(Rule(_nary_atoms, _div_zeros))
register("select_n")(Rule(_nary_atoms, _select_zeros))
register(
  "pow",
  "atan2",
  "nextafter",
  "eq",
  "ne",
  "lt",
  "le",
  "gt",
  "ge",
  "le_to",
  "clamp",
  "shift_left",
  "shift_right_logical",
  "shift_right_arithmetic",
)(Rule(_nary_atoms, no_zeros))


# ----------------------------------------------------------------------------------------------
# Contractions
# ----------------------------------------------------------------------------------------------


def _dot_atoms(ctx, eqn, ins):
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  la, ra = ins
  for i, j in zip(lc, rc, strict=True):
    ctx.atoms.unify(la[i], ra[j])
    ctx.contract(eqn.invars[0], i)
    ctx.contract(eqn.invars[1], j)
  for i, j in zip(lb, rb, strict=True):
    ctx.atoms.unify(la[i], ra[j])
  lfree = [a for k, a in enumerate(la) if k not in lc and k not in lb]
  rfree = [a for k, a in enumerate(ra) if k not in rc and k not in rb]
  return [tuple(la[i] for i in lb) + tuple(lfree) + tuple(rfree)]


def _contract_check(ctx, eqn, zl, zr, leaves_contracted, where, fold=False):
  """Mark contracted channels that are not zero on either side (unless their value is folded)."""
  for leaf in leaves_contracted:
    if not (has(zl, leaf) or has(zr, leaf) or (fold and ctx.fold(eqn, leaf))):
      ctx.atoms.mark(
        leaf,
        "nonzero",
        f"{where} contracts this channel while it is not zero when its producers are",
      )


def _free_zeros(ctx, zin, ins_free):
  """Output zero-set: leaves that a zero operand carries through a free/batch axis."""
  out = set()
  for z, atoms in zip(zin, ins_free, strict=True):
    leaves = ctx.atoms.leafset(atoms)
    out |= leaves if z is ALL else (set(z) & leaves)
  return frozenset(out)


def _dot_zeros(ctx, eqn, zin, ins, outs):
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  la, ra = ins
  _contract_check(
    ctx, eqn, zin[0], zin[1], ctx.atoms.leafset([la[i] for i in lc]), "dot_general", fold=True
  )
  lkeep = [a for k, a in enumerate(la) if k not in lc]
  rkeep = [a for k, a in enumerate(ra) if k not in rc]
  return [_free_zeros(ctx, zin, [lkeep, rkeep])]


register("dot_general")(Rule(_dot_atoms, _dot_zeros))


def _conv_specs(eqn):
  dn = eqn.params["dimension_numbers"]
  return dn.lhs_spec, dn.rhs_spec, dn.out_spec


def _conv_atoms(ctx, eqn, ins):
  la, ra = ins
  lhs_spec, rhs_spec, out_spec = _conv_specs(eqn)
  g = eqn.params["feature_group_count"]
  A = ctx.atoms
  if eqn.params.get("batch_group_count", 1) != 1:
    return unknown_atoms(ctx, eqn, ins)
  out_shape = shape_of(eqn.outvars[0])
  out = [None] * len(out_shape)
  lf, rin, rout = la[lhs_spec[1]], ra[rhs_spec[1]], ra[rhs_spec[0]]
  ctx.contract(eqn.invars[1], rhs_spec[1])
  if g == 1:
    A.unify(lf, rin)
    out[out_spec[1]] = rout
  else:
    grp = A.new(g)
    A.unify_layout([(lf,)], [(grp,), (rin,)])
    co = A.new(A.sz(rout) // g)
    A.unify_layout([(rout,)], [(grp,), (co,)])
    out[out_spec[1]] = rout
  out[out_spec[0]] = la[lhs_spec[0]]
  for d in out_spec[2:]:
    out[d] = A.new(out_shape[d], ("spatial", "convolution spatial axis"))
  for d in rhs_spec[2:]:
    A.mark(ra[d], "spatial", "convolution window axis")
  return [tuple(out)]


def _conv_zeros(ctx, eqn, zin, ins, outs):
  la, ra = ins
  lhs_spec, rhs_spec, out_spec = _conv_specs(eqn)
  g = eqn.params["feature_group_count"]
  A = ctx.atoms
  rin_leaves = A.leafset([ra[rhs_spec[1]]])
  _contract_check(ctx, eqn, zin[0], zin[1], rin_leaves, "conv_general_dilated")
  out_leaves = A.leafset(outs[0])
  zo = set()
  for z, atoms in ((zin[1], [ra[rhs_spec[0]]]),):
    lv = A.leafset(atoms)
    zo |= lv if z is ALL else set(z) & lv
  if g > 1:  # channel groups pass from the input feature axis to the output feature axis
    lv = A.leafset([la[lhs_spec[1]]]) - rin_leaves
    zo |= lv if zin[0] is ALL else set(zin[0]) & lv
  return [frozenset(zo & out_leaves)]


register("conv_general_dilated")(Rule(_conv_atoms, _conv_zeros))


# ----------------------------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------------------------


# Reductions whose result depends on every channel's value (not only on the zero ones).
_ORDER_REDUCTIONS = (
  "reduce_max",
  "reduce_min",
  "argmax",
  "argmin",
  "reduce_prod",
  "reduce_and",
  "reduce_or",
  "reduce_xor",
)


def _reduce_atoms(ctx, eqn, ins):
  axes = eqn.params["axes"]
  a = ins[0]
  if eqn.primitive.name in _ORDER_REDUCTIONS:
    for ax in axes:
      ctx.atoms.mark(a[ax], "reduce", f"{eqn.primitive.name} over this channel axis")
  return [tuple(x for k, x in enumerate(a) if k not in axes) for _ in eqn.outvars]


def _reduce_sum_zeros(ctx, eqn, zin, ins, outs):
  axes = eqn.params["axes"]
  z = zin[0]
  for leaf in ctx.atoms.leafset([ins[0][ax] for ax in axes]):
    if not has(z, leaf):
      ctx.atoms.mark(
        leaf,
        "norm",
        "a sum over this channel axis sees non-zero values for removed "
        "channels (LayerNorm/RMSNorm/softmax statistics)",
      )
  keep = ctx.atoms.leafset(outs[0])
  return [keep if z is ALL else frozenset(set(z) & keep)]


register("reduce_sum")(Rule(_reduce_atoms, _reduce_sum_zeros))
register(*_ORDER_REDUCTIONS)(Rule(_reduce_atoms, no_zeros))


def _cum_atoms(ctx, eqn, ins):
  ax = eqn.params["axis"]
  ctx.atoms.mark(ins[0][ax], "reduce", f"{eqn.primitive.name} runs along this channel axis")
  return [ins[0]]


register("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")(Rule(_cum_atoms, no_zeros))


def _reduce_window_atoms(ctx, eqn, ins):
  p = eqn.params
  n = len(ins[0])
  base = p.get("base_dilation") or (1,) * n
  wdil = p.get("window_dilation") or (1,) * n
  trivial = lambda d: (
    p["window_dimensions"][d] == 1
    and p["window_strides"][d] == 1
    and tuple(p["padding"][d]) == (0, 0)
    and base[d] == 1
    and wdil[d] == 1
  )
  return _axiswise(ctx, eqn, ins, trivial, "spatial", "pooling window axis")


register("reduce_window_sum", "reduce_window_max", "reduce_window_min")(
  Rule(_reduce_window_atoms, _keep_zeros)
)
register("reduce_window")(Rule(_reduce_window_atoms, no_zeros))


# ----------------------------------------------------------------------------------------------
# Shape manipulation
# ----------------------------------------------------------------------------------------------


def _broadcast_atoms(ctx, eqn, ins):
  shape = eqn.params["shape"]
  dims = eqn.params["broadcast_dimensions"]
  in_shape = shape_of(eqn.invars[0])
  out = [None] * len(shape)
  for k, d in enumerate(dims):
    if in_shape[k] == shape[d]:
      out[d] = ins[0][k]
  for d in range(len(shape)):
    if out[d] is None:
      out[d] = ctx.atoms.new(shape[d])
  ctx.pass_source(
    eqn.invars[0], eqn.outvars[0], {d: k for k, d in enumerate(dims) if in_shape[k] == shape[d]}
  )
  return [tuple(out)]


register("broadcast_in_dim")(Rule(_broadcast_atoms, _keep_zeros))


def _transpose_atoms(ctx, eqn, ins):
  perm = eqn.params["permutation"]
  ctx.pass_source(eqn.invars[0], eqn.outvars[0], {i: p for i, p in enumerate(perm)})
  return [tuple(ins[0][p] for p in perm)]


register("transpose")(Rule(_transpose_atoms, _keep_zeros))


def _squeeze_atoms(ctx, eqn, ins):
  dims = {d % len(ins[0]) for d in eqn.params["dimensions"]}
  kept = [k for k in range(len(ins[0])) if k not in dims]
  ctx.pass_source(eqn.invars[0], eqn.outvars[0], {i: k for i, k in enumerate(kept)})
  return [tuple(ins[0][k] for k in kept)]


register("squeeze")(Rule(_squeeze_atoms, _keep_zeros))


def reshape_groups(in_shape, out_shape):
  """Split both shapes into minimal groups of equal products (size-1 axes attach anywhere)."""
  groups, i, j = [], 0, 0
  ni, no = len(in_shape), len(out_shape)
  while i < ni or j < no:
    gi, gj = [], []
    pi = pj = 1
    if i < ni:
      gi.append(i)
      pi *= in_shape[i]
      i += 1
    if j < no:
      gj.append(j)
      pj *= out_shape[j]
      j += 1
    while pi != pj:
      if pi < pj and i < ni:
        gi.append(i)
        pi *= in_shape[i]
        i += 1
      elif pj < pi and j < no:
        gj.append(j)
        pj *= out_shape[j]
        j += 1
      else:
        break
    groups.append((gi, gj))
  return groups


def _reshape_atoms(ctx, eqn, ins):
  in_shape, out_shape = shape_of(eqn.invars[0]), tuple(eqn.params["new_sizes"])
  if eqn.params.get("dimensions") is not None:
    return unknown_atoms(ctx, eqn, ins)
  out = [None] * len(out_shape)
  src = {}
  for gi, gj in reshape_groups(in_shape, out_shape):
    gi_n = [k for k in gi if in_shape[k] != 1]
    gj_n = [k for k in gj if out_shape[k] != 1]
    for k in gj:
      if out_shape[k] == 1:
        out[k] = ctx.atoms.new(1)
    if len(gi_n) == 1 and len(gj_n) == 1:
      out[gj_n[0]] = ins[0][gi_n[0]]
      src[gj_n[0]] = gi_n[0]
      continue
    if not gj_n:
      continue
    outs = [ctx.atoms.new(out_shape[k]) for k in gj_n]
    for k, a in zip(gj_n, outs, strict=True):
      out[k] = a
    ctx.atoms.unify_layout([(ins[0][k],) for k in gi_n], [(a,) for a in outs])
  ctx.pass_source(eqn.invars[0], eqn.outvars[0], src)
  return [tuple(out)]


register("reshape")(Rule(_reshape_atoms, _keep_zeros))


def _concat_atoms(ctx, eqn, ins):
  d = eqn.params["dimension"]
  base = ins[0]
  for other in ins[1:]:
    for k, (x, y) in enumerate(zip(base, other, strict=True)):
      if k != d:
        ctx.atoms.unify(x, y)
  parts = tuple(a[d] for v, a in zip(eqn.invars, ins, strict=True) if shape_of(v)[d] > 0)
  cat = ctx.atoms.new(shape_of(eqn.outvars[0])[d])
  ctx.atoms.unify_layout([(cat,)], [parts])
  return [tuple(cat if k == d else x for k, x in enumerate(base))]


def _concat_zeros(ctx, eqn, zin, ins, outs):
  A = ctx.atoms
  out = set()
  leaves = A.leafset(outs[0])
  for leaf in leaves:
    ok = True
    for z, a in zip(zin, ins, strict=True):
      if leaf in A.leafset(a) and not has(z, leaf):
        ok = False
        break
    if ok:
      out.add(leaf)
  return [frozenset(out)]


register("concatenate")(Rule(_concat_atoms, _concat_zeros))


def _split_atoms(ctx, eqn, ins):
  ax = eqn.params["axis"]
  sizes = eqn.params["sizes"]
  parts = [ctx.atoms.new(int(s)) for s in sizes]
  ctx.atoms.unify_layout(
    [(ins[0][ax],)], [tuple(p for p, s in zip(parts, sizes, strict=True) if s > 0)]
  )
  return [tuple(p if k == ax else x for k, x in enumerate(ins[0])) for p in parts]


register("split")(Rule(_split_atoms, lambda ctx, eqn, zin, ins, outs: [zin[0] for _ in outs]))


def _slice_atoms(ctx, eqn, ins):
  start, limit = eqn.params["start_indices"], eqn.params["limit_indices"]
  strides = eqn.params.get("strides") or (1,) * len(start)
  in_shape = shape_of(eqn.invars[0])
  out = []
  for k, a in enumerate(ins[0]):
    s, e, st = start[k], limit[k], strides[k]
    if s == 0 and e == in_shape[k] and st == 1:
      out.append(a)
      continue
    if st != 1:
      ctx.atoms.mark(a, "slice", "strided slice of this channel axis")
      out.append(ctx.atoms.new(shape_of(eqn.outvars[0])[k], ("slice", "strided slice")))
      continue
    pre, mid, post = s, e - s, in_shape[k] - e
    atoms = [ctx.atoms.new(n) if n > 0 else None for n in (pre, mid, post)]
    ctx.atoms.unify_layout([(a,)], [tuple(x for x in atoms if x is not None)])
    out.append(atoms[1])
  return [tuple(out)]


register("slice")(Rule(_slice_atoms, _keep_zeros))


def _axiswise(ctx, eqn, ins, same, code: str, msg: str):
  """Axes where ``same(k)`` keep their atom; the others are unprunable and get a fresh one."""
  out_shape = shape_of(eqn.outvars[0])
  out = []
  for k, a in enumerate(ins[0]):
    if same(k):
      out.append(a)
    else:
      ctx.atoms.mark(a, code, msg)
      out.append(ctx.atoms.new(out_shape[k], (code, msg)))
  return [tuple(out)]


def _pad_atoms(ctx, eqn, ins):
  cfg = eqn.params["padding_config"]
  return _axiswise(ctx, eqn, ins, lambda k: tuple(cfg[k]) == (0, 0, 0), "pad", "padded axis")


def _pad_zeros(ctx, eqn, zin, ins, outs):
  # The pad value is often an argument of a nested jit (jnp.pad): its zero-set is ALL when the
  # value pass knows it is 0, literal or not.
  return [zin[0] if zin[1] is ALL or _is_zero_literal(eqn.invars[1]) else frozenset()]


register("pad")(Rule(_pad_atoms, _pad_zeros))


def _dynamic_slice_atoms(ctx, eqn, ins):
  sizes, in_shape = eqn.params["slice_sizes"], shape_of(eqn.invars[0])
  return _axiswise(
    ctx, eqn, ins, lambda k: sizes[k] == in_shape[k], "slice", "dynamic_slice of this axis"
  )


register("dynamic_slice")(Rule(_dynamic_slice_atoms, _keep_zeros))


def _dus_atoms(ctx, eqn, ins):
  op, up = ins[0], ins[1]
  osh, ush = shape_of(eqn.invars[0]), shape_of(eqn.invars[1])
  for k in range(len(op)):
    if osh[k] == ush[k]:
      ctx.atoms.unify(op[k], up[k])
    else:
      ctx.atoms.mark(op[k], "slice", "dynamic_update_slice of this axis")
      ctx.atoms.mark(up[k], "slice", "dynamic_update_slice of this axis")
  return [op]


register("dynamic_update_slice")(
  Rule(_dus_atoms, lambda ctx, eqn, zin, ins, outs: [_all_zero(ctx, eqn, zin, [0, 1])])
)


def _gather_atoms(ctx, eqn, ins):
  dn = eqn.params["dimension_numbers"]
  sizes = eqn.params["slice_sizes"]
  op, idx = ins[0], ins[1]
  osh = shape_of(eqn.invars[0])
  out_shape = shape_of(eqn.outvars[0])
  indexed = set(dn.collapsed_slice_dims) | set(dn.start_index_map) | set(dn.operand_batching_dims)
  for k in indexed:
    ctx.atoms.mark(op[k], "gather", "indexed by gather (e.g. an embedding table's vocabulary)")
  offset_src = [
    k
    for k in range(len(osh))
    if k not in set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
  ]
  out = [None] * len(out_shape)
  for d, k in zip(dn.offset_dims, offset_src, strict=True):
    if sizes[k] == osh[k] and k not in indexed:
      out[d] = op[k]
      ctx.look_up(eqn.invars[0], k)
    else:
      ctx.atoms.mark(op[k], "gather", "partially gathered axis")
      out[d] = ctx.atoms.new(out_shape[d], ("gather", "partially gathered axis"))
  batch_out = [d for d in range(len(out_shape)) if d not in dn.offset_dims]
  idx_batch = list(range(len(idx) - 1))  # index_vector_dim is last in jnp-produced gathers
  for d, k in zip(batch_out, idx_batch, strict=True):
    if out_shape[d] == shape_of(eqn.invars[1])[k]:
      out[d] = idx[k]
  for d in range(len(out_shape)):
    if out[d] is None:
      out[d] = ctx.atoms.new(out_shape[d], ("gather", "gather output axis"))
  return [tuple(out)]


def _gather_zeros(ctx, eqn, zin, ins, outs):
  z = zin[0]
  keep = ctx.atoms.leafset(outs[0])
  return [keep if z is ALL else frozenset(set(z) & keep)]


register("gather")(Rule(_gather_atoms, _gather_zeros))


def _stack_atoms(ctx, eqn, ins):
  """``stack``: operands' axes are tied; the new axis (one entry per operand) is fresh."""
  ax = eqn.params["axis"]
  for other in ins[1:]:
    for x, y in zip(ins[0], other, strict=True):
      ctx.atoms.unify(x, y)
  new = ctx.atoms.new(len(ins))
  return [tuple(ins[0][:ax]) + (new,) + tuple(ins[0][ax:])]


# zero along a channel iff every stacked operand is (as for add)
register("stack")(Rule(_stack_atoms, _add_like_zeros))


def _unstack_atoms(ctx, eqn, ins):
  """``unstack``: the unstacked axis is a concatenation of size-1 parts, one per output."""
  ax = eqn.params["axis"]
  a = ins[0]
  parts = tuple(ctx.atoms.new(1) for _ in eqn.outvars)
  ctx.atoms.unify_layout([(a[ax],)], [parts])
  kept = [k for k in range(len(a)) if k != ax]
  for o in eqn.outvars:
    ctx.pass_source(eqn.invars[0], o, {i: k for i, k in enumerate(kept)})
  return [tuple(a[k] for k in kept) for _ in eqn.outvars]


register("unstack")(Rule(_unstack_atoms, RULES["split"].zeros))


def _tile_atoms(ctx, eqn, ins):
  """``tile``: an axis repeated r times is the product (r copies) x (the operand's axis)."""
  reps = eqn.params["reps"]
  out = []
  for _k, (a, r) in enumerate(zip(ins[0], reps, strict=True)):
    if r == 1:
      out.append(a)
      continue
    t = ctx.atoms.new(ctx.atoms.sz(a) * r)
    ctx.atoms.unify_layout([(t,)], [(ctx.atoms.new(r),), (a,)])
    out.append(t)
  ctx.pass_source(eqn.invars[0], eqn.outvars[0], {k: k for k, r in enumerate(reps) if r == 1})
  return [tuple(out)]


register("tile")(Rule(_tile_atoms, _keep_zeros))


def _bitcast_atoms(ctx, eqn, ins):
  """Same-width bitcasts are elementwise (0.0 <-> 0); width changes add/remove an axis."""
  if shape_of(eqn.outvars[0]) == shape_of(eqn.invars[0]):
    return [ins[0]]
  return _fresh_bad("bitcast", "bitcast between dtypes of different widths")(ctx, eqn, ins)


register("bitcast_convert_type")(Rule(_bitcast_atoms, _keep_zeros))
register("platform_index")(
  Rule(lambda ctx, eqn, ins: [_fresh(ctx, v) for v in eqn.outvars], no_zeros)
)


def _fresh_bad(code, msg):
  def rule(ctx, eqn, ins):
    outs = [_fresh(ctx, v, (code, msg)) for v in eqn.outvars]
    for a in ins:
      ctx.atoms.mark_all(a, code, msg)
    return outs

  return rule


def _iota_atoms(ctx, eqn, ins):
  # An iota's value is a static function of the index along its axes (positions, rotary
  # frequencies, one-hot classes): like a captured constant table, compress evaluates it at full
  # size and slices it along pruned channels, so its axes may be tied to any space.
  return [_fresh(ctx, v) for v in eqn.outvars]


register("iota")(Rule(_iota_atoms, no_zeros))
register(
  "random_bits",
  "random_seed",
  "random_wrap",
  "random_unwrap",
  "random_fold_in",
  "random_split",
  "threefry2x32",
  "rng_bit_generator",
  "rng_uniform",
)(
  Rule(
    _fresh_bad("random", "random numbers (dropout?): trace the deterministic/eval function"),
    no_zeros,
  )
)


def _rev_atoms(ctx, eqn, ins):
  out = list(ins[0])
  for d in eqn.params["dimensions"]:
    ctx.atoms.mark(out[d], "rev", "reversed axis")
    out[d] = ctx.atoms.new(ctx.atoms.sz(out[d]), ("rev", "reversed axis"))
  return [tuple(out)]


register("rev")(Rule(_rev_atoms, _keep_zeros))


def _sort_atoms(ctx, eqn, ins):
  d = eqn.params["dimension"]
  for a in ins:
    ctx.atoms.mark(a[d], "sort", "sorted along this axis")
  return [ins[0] for _ in eqn.outvars]


register("sort")(Rule(_sort_atoms, no_zeros))


def _top_k_atoms(ctx, eqn, ins):
  a = ins[0]
  ctx.atoms.mark(a[-1], "sort", "top_k along this axis")
  last = ctx.atoms.new(shape_of(eqn.outvars[0])[-1], ("sort", "top_k output"))
  return [a[:-1] + (last,) for _ in eqn.outvars]


register("top_k")(Rule(_top_k_atoms, no_zeros))


def _multi_identity_atoms(ctx, eqn, ins):
  return list(ins)


register("optimization_barrier", "device_put")(
  Rule(_multi_identity_atoms, lambda ctx, eqn, zin, ins, outs: list(zin))
)


BLOCKING.update(
  {
    **{
      p: "linear algebra: every output channel mixes every input channel"
      for p in (
        "cholesky",
        "lu",
        "qr",
        "svd",
        "eigh",
        "eig",
        "schur",
        "hessenberg",
        "tridiagonal",
        "tridiagonal_solve",
        "triangular_solve",
        "householder_product",
        "lu_pivots_to_permutation",
        "custom_linear_solve",
        "cholesky_update",
      )
    },
    "fft": "Fourier transform: every output frequency mixes every input channel",
    **{
      p: "scatter: writes at data-dependent positions, so channels cannot be followed"
      for p in (
        "scatter",
        "scatter-add",
        "scatter_add",
        "scatter-mul",
        "scatter_mul",
        "scatter-min",
        "scatter_min",
        "scatter-max",
        "scatter_max",
        "scatter_sub",
        "scatter-sub",
      )
    },
    **{
      p: "gradient of a pooling window (only in backward passes)"
      for p in ("select_and_scatter_add", "select_and_gather_add", "select_and_scatter")
    },
  }
)
for _p, _why in BLOCKING.items():
  register(_p)(Rule(_fresh_bad("blocked", f"passes through '{_p}' ({_why})"), no_zeros))
del _p, _why


def rule_for(name: str) -> Rule:
  return RULES.get(name, UNKNOWN)


def prod(xs) -> int:
  return int(math.prod(xs))
