"""The compressed callable: re-interpret the traced jaxpr with smaller shapes.

``compress`` traces ``fn`` (the same analysis as :func:`hesso_jax.discover`), slices every
variable along every axis that carries a dropped channel (producers, consumers and state), and
returns a function that evaluates the *traced* jaxpr equation by equation on the smaller
arrays. Shape-carrying parameters (``reshape.new_sizes``, ``broadcast_in_dim.shape``,
``gather.slice_sizes``, ``split.sizes``, ``slice`` bounds, ``feature_group_count``) are
rewritten from the analysis; constants traced from shapes (``1/sqrt(head_dim)``, mean
denominators) stay exactly as traced. Calls are inlined; ``scan``/``while``/``cond`` are
rebuilt with ``lax`` so the result stays a single jittable, library-independent function.
Tables computed in the trace (``iota``: positions, rotary frequencies) are evaluated at full size
and sliced along pruned channels, like captured constants.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import numpy as np
from jax import lax

from hesso_jax import _jaxpr as J
from hesso_jax.discovery.analysis import Analysis, Visit, analyse
from hesso_jax.space import SearchSpace
from hesso_jax.surgery.prune import resolve_keep


class _Shrink:
  """New axis sizes: kept channel counts, and the actual sizes of the data inputs' axes.

  ``dyn`` maps atoms bound to a data input (batch, sequence) to the size seen at call time, so
  the compressed function runs at any batch size, not only the traced one.
  """

  def __init__(self, an: Analysis, leaf_keep: dict, dyn: dict | None = None,
               masks: dict | None = None, corrections: dict | None = None):
    self.an = an
    self.A = an.atoms
    self.leaf_keep = leaf_keep
    self.dyn = dyn or {}
    self._mask: dict[int, np.ndarray] = {} if masks is None else masks
    # (id(visit), equation index) -> folded constant added to that dot_general's output
    self.corrections = {} if corrections is None else corrections
    self.record: dict | None = None  # set while recording operands of fold sites

  def with_inputs(self, visit: Visit, invars, values) -> "_Shrink":
    dyn = {}
    for v, x in zip(invars, values):
      for a, old, new in zip(visit.env[v], v.aval.shape, np.shape(x)):
        if old != new:
          r = self.A.find(a)
          if r in self.A.struct:
            raise ValueError(f"small_fn: input axis of traced size {old} cannot change to {new}")
          if dyn.get(r, new) != new:
            raise ValueError(f"small_fn: inputs disagree on a tied axis ({dyn[r]} vs {new})")
          dyn[r] = int(new)
    return _Shrink(self.an, self.leaf_keep, dyn, self._mask, self.corrections) if dyn else self

  def mask(self, atom: int) -> np.ndarray:
    r = self.A.find(atom)
    if r not in self._mask:
      self._mask[r] = self.A.keep_mask(r, self.leaf_keep)
    return self._mask[r]

  def size(self, atom: int, depth: int = 0) -> int:
    r = self.A.find(atom)
    if r in self.dyn:
      return self.dyn[r]
    if self.dyn and r in self.A.struct and depth < 64:
      n = 1
      for f in self.A.struct[r]:
        n *= sum(self.size(p, depth + 1) for p in f)
      return n
    return int(self.mask(r).sum())

  def shape(self, visit: Visit, v) -> tuple[int, ...]:
    return tuple(self.size(a) for a in visit.env[v])

  def slice_leaf(self, x, atoms):
    for ax, a in enumerate(atoms):
      m = self.mask(a)
      if not m.all():
        x = jax.numpy.take(x, np.nonzero(m)[0], axis=ax)
    return x


def _rewrite_params(sh: _Shrink, visit: Visit, eqn, invals) -> dict:
  name = eqn.primitive.name
  p = dict(eqn.params)
  out = eqn.outvars[0]
  if name == "reshape":
    p["new_sizes"] = sh.shape(visit, out)
  elif name == "broadcast_in_dim":
    p["shape"] = sh.shape(visit, out)
  elif name in ("gather", "dynamic_slice"):
    old = tuple(eqn.invars[0].aval.shape)
    new = np.shape(invals[0])
    p["slice_sizes"] = tuple(new[k] if s == old[k] else s for k, s in enumerate(p["slice_sizes"]))
  elif name == "split":
    p["sizes"] = tuple(sh.shape(visit, o)[p["axis"]] for o in eqn.outvars)
  elif name == "slice":
    starts, limits = list(p["start_indices"]), list(p["limit_indices"])
    old = tuple(eqn.invars[0].aval.shape)
    for k, a in enumerate(visit.env[eqn.invars[0]]):
      m = sh.mask(a)
      if m.all():
        if starts[k] == 0 and limits[k] == old[k]:
          limits[k] = sh.size(a)  # a full slice of an input-sized axis stays full
        continue
      starts[k], limits[k] = int(m[:starts[k]].sum()), int(m[:limits[k]].sum())
    p["start_indices"], p["limit_indices"] = tuple(starts), tuple(limits)
  elif name == "conv_general_dilated":
    dn = p["dimension_numbers"]
    lf = np.shape(invals[0])[dn.lhs_spec[1]]
    rin = np.shape(invals[1])[dn.rhs_spec[1]]
    p["feature_group_count"] = lf // rin
    for key, k in (("lhs_shape", 0), ("rhs_shape", 1)):
      if key in p:
        p[key] = np.shape(invals[k])
  return p


def _eval(sh: _Shrink, visit: Visit, consts, args):
  jaxpr = visit.jaxpr
  env = {}
  for v, x in zip(jaxpr.constvars, consts):
    env[v] = sh.slice_leaf(x, visit.env[v]) if np.ndim(x) else x  # captured constants
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  read = lambda v: v.val if J.is_literal(v) else env[v]
  for i, eqn in enumerate(jaxpr.eqns):
    invals = [read(v) for v in eqn.invars]
    outs = _eval_eqn(sh, visit, i, eqn, invals)
    for v, x in zip(eqn.outvars, outs):
      if not J.is_drop(v):
        env[v] = x
  return [read(v) for v in jaxpr.outvars]


def _eval_eqn(sh: _Shrink, visit: Visit, i: int, eqn, invals):
  name = eqn.primitive.name
  p = eqn.params
  kids = visit.children.get(i)
  body = J.call_body(eqn)
  if kids is not None and body is not None:
    _, consts = J.open_jaxpr(body)
    return _eval(sh, kids[0], consts, invals)
  if name == "scan":
    nc, ncar = p["num_consts"], p["num_carry"]
    _, bconsts = J.open_jaxpr(p["jaxpr"])
    consts, init, xs = invals[:nc], invals[nc:nc + ncar], invals[nc + ncar:]

    def body(carry, x):
      outs = _eval(sh, kids[0], bconsts, list(consts) + list(carry) + list(x))
      return outs[:ncar], outs[ncar:]

    carry, ys = lax.scan(body, list(init), list(xs), length=p["length"], reverse=p["reverse"],
                         unroll=p["unroll"])
    return list(carry) + list(ys)
  if name == "while":
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    _, cjc = J.open_jaxpr(p["cond_jaxpr"])
    _, bjc = J.open_jaxpr(p["body_jaxpr"])
    cc, bc, init = invals[:cn], invals[cn:cn + bn], invals[cn + bn:]
    out = lax.while_loop(lambda c: _eval(sh, kids[0], cjc, list(cc) + list(c))[0],
                         lambda c: _eval(sh, kids[1], bjc, list(bc) + list(c)), list(init))
    return list(out)
  if name == "cond":
    fns = []
    for k, br in enumerate(p["branches"]):
      _, bcs = J.open_jaxpr(br)
      fns.append(lambda *ops, k=k, bcs=bcs: _eval(sh, kids[k], bcs, list(ops)))
    return list(lax.switch(invals[0], fns, *invals[1:]))
  if name == "iota":
    return [_iota(sh, visit, eqn)]
  key = (id(visit), i)
  if sh.record is not None and key in sh.record:
    sh.record[key] = invals
  params = _rewrite_params(sh, visit, eqn, invals)
  out = eqn.primitive.bind(*invals, **params)
  if key in sh.corrections:
    out = out + _slice_correction(sh, visit.env[eqn.outvars[0]], sh.corrections[key]).astype(
        out.dtype)
  return list(out) if eqn.primitive.multiple_results else [out]


def _iota(sh: _Shrink, visit: Visit, eqn):
  """The full iota, sliced along pruned channels (its values are the kept channels' indices)."""
  atoms = visit.env[eqn.outvars[0]]
  shape = tuple(sh.size(a) if sh.mask(a).all() else n
                for a, n in zip(atoms, eqn.outvars[0].aval.shape, strict=True))
  return sh.slice_leaf(eqn.primitive.bind(**{**eqn.params, "shape": shape}), atoms)


def _slice_correction(sh: _Shrink, atoms, corr):
  """A folded correction (size 1 on the broadcast axes) sliced along pruned channels."""
  for ax, a in enumerate(atoms):
    m = sh.mask(a)
    if corr.shape[ax] != 1 and not m.all():
      corr = jax.numpy.take(corr, np.nonzero(m)[0], axis=ax)
  return corr


# ----------------------------------------------------------------------------------------------
# Constant-channel folding
# ----------------------------------------------------------------------------------------------


def _fold_sites(an: Analysis, leaf_keep: dict) -> dict:
  """(id(visit), index) -> [(leaf, Fold)] for every fold site of a channel that is dropped."""
  sites: dict = {}
  for leaf, folds in an.folds.items():
    keep = leaf_keep.get(an.atoms.find(leaf))
    if keep is None or np.all(keep):
      continue
    for f in folds:
      sites.setdefault((id(f.visit), f.index), []).append((leaf, f))
  return sites


def _fold_correction(an: Analysis, leaf_keep: dict, items: list, invals: list):
  """What the dropped channels' constant values add to one ``dot_general``'s output.

  The constant side is rebuilt as ``kvec`` along the contracted axis (its recorded value at the
  dropped channels' positions, which discovery proved input-independent and constant along every
  other axis; 0 elsewhere), size 1 on its free axes, and contracted with the recorded
  (input-independent) other operand: the result broadcasts over the free axes.
  """
  A = an.atoms
  f0 = items[0][1]
  eqn = f0.visit.jaxpr.eqns[f0.index]
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  total = 0.0
  for side in (0, 1):
    mine = [(leaf, f) for leaf, f in items if f.side == side]
    if not mine:
      continue
    var, other = eqn.invars[side], invals[1 - side]
    (c,), my_b, other_b = (lc, lb, rb) if side == 0 else (rc, rb, lb)
    atom = f0.visit.env[var][c]
    x = np.asarray(invals[side])
    along = x[tuple(slice(None) if ax == c else 0 for ax in range(x.ndim))]
    kvec = np.zeros(A.sz(atom), x.dtype)
    for leaf, _ in mine:
      dropped = {l: np.zeros(A.size[l], bool) for l in A.leaves(atom)}
      dropped[leaf] = ~np.asarray(leaf_keep[A.find(leaf)], bool)
      pos = A.keep_mask(atom, dropped)
      kvec[pos] = along[pos]
    if not np.all(np.isfinite(kvec)):
      raise ValueError(f"compress: a folded channel's constant value is not finite ({eqn})")
    shape = [1] * len(var.aval.shape)
    shape[c] = kvec.size
    for mb, ob in zip(my_b, other_b, strict=True):
      shape[mb] = np.shape(other)[ob]
    kshape = [1] * len(shape)
    kshape[c] = kvec.size
    const = jax.numpy.broadcast_to(kvec.astype(var.aval.dtype).reshape(kshape), shape)
    ops = (const, other) if side == 0 else (other, const)
    total = total + lax.dot_general(*ops, eqn.params["dimension_numbers"],
                                    precision=lax.Precision.HIGHEST,
                                    preferred_element_type=eqn.params.get("preferred_element_type"))
  return total


def _fold_corrections(an: Analysis, leaf_keep: dict, consts: list, inputs: list) -> dict:
  """Run the full function once, recording the operands of every fold site of a dropped channel."""
  sites = _fold_sites(an, leaf_keep)
  if not sites:
    return {}
  rec = _Shrink(an, {})
  rec.record = dict.fromkeys(sites)
  _eval(rec, an.visit, consts, inputs)
  return {key: _fold_correction(an, leaf_keep, items, rec.record[key])
          for key, items in sites.items()}  # every site is outside loops: always recorded


# ----------------------------------------------------------------------------------------------
# Matching a user's search space to the analysis
# ----------------------------------------------------------------------------------------------


def _member_key(m):
  return (m.path, m.axis, m.offset, m.width, m.outer, m.inner)


def _match_spaces(space: SearchSpace, an: Analysis) -> list[int]:
  """For each prunable space of ``space``: the analysis leaf atom it corresponds to."""
  index = {}
  for leaf, s in zip(an.space_leaves, an.space.channel_spaces):
    for m in s.members:
      index.setdefault(_member_key(m), set()).add(leaf)
  # also normalise width=None vs width=size
  out = []
  for s in space.prunable_spaces:
    cands = None
    for m in s.members:
      keys = {_member_key(m)}
      if m.width is None:
        keys.add((m.path, m.axis, m.offset, s.size, m.outer, m.inner))
      elif m.width == s.size and m.offset == 0:
        keys.add((m.path, m.axis, 0, None, m.outer, m.inner))
      hits = set().union(*[index.get(k, set()) for k in keys])
      cands = hits if cands is None else cands & hits
    if not cands or len(cands) != 1:
      raise ValueError(
          f"compress: channel space {s.label()!r} does not correspond to a space that discovery "
          f"finds in this function (members: {[m.describe(s.size) for m in s.members][:4]}); "
          "compress needs the space from hj.discover(fn, variables, ...) on the same function")
    out.append(next(iter(cands)))
  return out


def round_up_keep(space: SearchSpace, keep: np.ndarray, multiple_of: int) -> np.ndarray:
  """Keep extra (dropped) groups so each space keeps a multiple of ``multiple_of`` channels.

  The re-kept groups are zero in a model pruned by HESSO, so the compressed function stays exact;
  hardware prefers aligned widths (on CPU, odd channel counts compile to much slower convolutions).
  """
  if multiple_of < 1:
    raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
  keep = np.array(keep, bool)
  for s, off in zip(space.prunable_spaces, space.group_offsets):
    k = keep[off:off + s.size]  # a view: edits land in ``keep``
    want = min(s.size, -(-int(k.sum()) // multiple_of) * multiple_of)
    k[np.nonzero(~k)[0][:want - int(k.sum())]] = True
  return keep


def compress(fn: Callable, variables: Any, space: SearchSpace, *args, keep=None,
             check_zero: bool = True, multiple_of: int = 1, **kwargs) -> tuple[Callable, Any]:
  """Return ``(small_fn, small_variables)`` with the dropped groups cut out of every array.

  ``small_fn(small_variables, *args, **kwargs)`` equals ``fn(variables, *args, **kwargs)``
  whenever the dropped groups' producer slices of ``variables`` are zero. ``keep`` defaults to
  "every group whose producer norm is not exactly 0". Dropping groups that are not zero warns
  (the result is then not equivalent); keeping no channel of a space raises. Spaces found with
  ``discover(..., approximate=True)`` are not exact: their deviation on the example inputs is
  measured, warned about and stored as ``small_fn.max_deviation``. ``multiple_of`` keeps a few
  extra zero channels so every pruned width is a multiple of it (:func:`round_up_keep`).
  Spaces found with ``discover(..., fold=True)`` (named ``... (exact, folded)``) are exact too:
  their dropped channels' constant value times the consumer's dropped rows is computed once here
  (one eager run of ``fn`` on the example inputs) and added to the consumer's output.
  """
  an = analyse(fn, variables, *args, approximate=True, fold=True, **kwargs)
  # validated (shape, dtype, >= 1 channel kept per space); warns if non-zero groups are dropped
  keep = round_up_keep(space, resolve_keep(space, variables, keep, warn=check_zero), multiple_of)
  leaves = _match_spaces(space, an)
  leaf_keep = {}
  approximate = []
  for s, off, leaf in zip(space.prunable_spaces, space.group_offsets, leaves):
    k = keep[off:off + s.size]
    ans = an.space.channel_spaces[an.space_leaves.index(leaf)]
    if not k.all() and not ans.prunable:
      raise ValueError(f"compress: space {s.label()!r} is not zero-invariant ({ans.reason}); "
                       "removing its channels would change the function")
    if not k.all() and "(approximate)" in ans.name:
      approximate.append(s.label())
    leaf_keep[an.atoms.find(leaf)] = k
  tr = an.traced
  top = an.visit
  var_leaves = jax.tree_util.tree_leaves(variables)
  consts = list(tr.closed.consts)
  arg_leaves = [x for x, d in zip(jax.tree_util.tree_leaves((args, kwargs)), tr.arg_dynamic) if d]
  corrections = _fold_corrections(an, leaf_keep, consts, list(var_leaves) + arg_leaves)
  sh = _Shrink(an, leaf_keep, corrections=corrections)
  small_leaves = [sh.slice_leaf(x, top.env[v])
                  for x, v in zip(var_leaves, top.jaxpr.invars[:tr.num_var_leaves])]
  small = jax.tree_util.tree_unflatten(tr.var_treedef, small_leaves)

  def small_fn(small_variables, *a, **kw):
    vl = jax.tree_util.tree_leaves(small_variables)
    if len(vl) != tr.num_var_leaves:
      raise ValueError(f"small_fn: expected {tr.num_var_leaves} variable leaves, got {len(vl)}")
    al, atree = jax.tree_util.tree_flatten((a, kw))
    if atree != tr.arg_treedef:
      raise ValueError("small_fn: arguments must have the structure used at compress time")
    dyn = [x for x, d in zip(al, tr.arg_dynamic) if d]
    call_sh = sh.with_inputs(top, top.jaxpr.invars[tr.num_var_leaves:], dyn)
    outs = _eval(call_sh, top, consts, list(vl) + dyn)
    return jax.tree_util.tree_unflatten(tr.out_tree, outs)

  small_fn.approximate_spaces = tuple(approximate)
  small_fn.max_deviation = 0.0
  if approximate:
    # Not exact by construction (LayerNorm statistics see fewer channels): measure and report.
    full = jax.tree_util.tree_leaves(jax.jit(fn)(variables, *args, **kwargs))
    comp = jax.tree_util.tree_leaves(jax.jit(small_fn)(small, *args, **kwargs))
    dev = max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
              for a, b in zip(full, comp))
    small_fn.max_deviation = dev
    warnings.warn(f"compress: approximate spaces {approximate} were pruned; on the example inputs "
                  f"the compressed output deviates from the full one by up to {dev:.3g}",
                  UserWarning, stacklevel=2)
  return small_fn, small
