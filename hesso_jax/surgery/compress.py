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
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax import lax

from hesso_jax import _jaxpr as J
from hesso_jax.discovery.analysis import Analysis, Visit, analyse
from hesso_jax.space import SearchSpace
from hesso_jax.surgery._keep import resolve_keep


class _Shrink:
  """New axis sizes of one analysis: the kept channel counts (every other axis keeps its size).

  One ``_Shrink`` serves one set of data-input shapes; :class:`_AtShapes` re-analyses the function
  for other shapes (batch, sequence, image resolution).
  """

  def __init__(
    self, an: Analysis, leaf_keep: dict, masks: dict | None = None, corrections: dict | None = None
  ):
    self.an = an
    self.A = an.atoms
    self.leaf_keep = leaf_keep
    self._mask: dict[int, np.ndarray] = {} if masks is None else masks
    # (id(visit), equation index) -> folded constant added to that dot_general's output
    self.corrections = {} if corrections is None else corrections
    self.record: dict | None = None  # set while recording operands of fold sites

  def mask(self, atom: int) -> np.ndarray:
    r = self.A.find(atom)
    if r not in self._mask:
      self._mask[r] = self.A.keep_mask(r, self.leaf_keep)
    return self._mask[r]

  def size(self, atom: int) -> int:
    return int(self.mask(atom).sum())

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
      starts[k], limits[k] = int(m[: starts[k]].sum()), int(m[: limits[k]].sum())
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
  for v, x in zip(jaxpr.constvars, consts, strict=True):
    env[v] = sh.slice_leaf(x, visit.env[v]) if np.ndim(x) else x  # captured constants
  for v, x in zip(jaxpr.invars, args, strict=True):
    env[v] = x
  read = lambda v: v.val if J.is_literal(v) else env[v]
  for i, eqn in enumerate(jaxpr.eqns):
    invals = [read(v) for v in eqn.invars]
    outs = _eval_eqn(sh, visit, i, eqn, invals)
    for v, x in zip(eqn.outvars, outs, strict=True):
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
    consts, init, xs = invals[:nc], invals[nc : nc + ncar], invals[nc + ncar :]

    def body(carry, x):
      outs = _eval(sh, kids[0], bconsts, list(consts) + list(carry) + list(x))
      return outs[:ncar], outs[ncar:]

    carry, ys = lax.scan(
      body, list(init), list(xs), length=p["length"], reverse=p["reverse"], unroll=p["unroll"]
    )
    return list(carry) + list(ys)
  if name == "while":
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    _, cjc = J.open_jaxpr(p["cond_jaxpr"])
    _, bjc = J.open_jaxpr(p["body_jaxpr"])
    cc, bc, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
    out = lax.while_loop(
      lambda c: _eval(sh, kids[0], cjc, list(cc) + list(c))[0],  # type: ignore[index]
      lambda c: _eval(sh, kids[1], bjc, list(bc) + list(c)),  # type: ignore[index]
      list(init),
    )
    return list(out)
  if name == "cond":
    fns = []
    for k, br in enumerate(p["branches"]):
      _, bcs = J.open_jaxpr(br)
      fns.append(lambda *ops, k=k, bcs=bcs: _eval(sh, kids[k], bcs, list(ops)))  # type: ignore[index]
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
      out.dtype
    )
  return list(out) if eqn.primitive.multiple_results else [out]


def _iota(sh: _Shrink, visit: Visit, eqn):
  """The full iota, sliced along pruned channels (its values are the kept channels' indices)."""
  atoms = visit.env[eqn.outvars[0]]
  shape = tuple(
    sh.size(a) if sh.mask(a).all() else n
    for a, n in zip(atoms, eqn.outvars[0].aval.shape, strict=True)
  )
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
    total = total + lax.dot_general(  # type: ignore[assignment,call-arg,misc]
      *ops,
      eqn.params["dimension_numbers"],
      precision=lax.Precision.HIGHEST,
      preferred_element_type=eqn.params.get("preferred_element_type"),
    )
  return total


def _fold_corrections(an: Analysis, leaf_keep: dict, consts: list, inputs: list) -> dict:
  """Run the full function once, recording the operands of every fold site of a dropped channel."""
  sites = _fold_sites(an, leaf_keep)
  if not sites:
    return {}
  rec = _Shrink(an, {})
  rec.record = dict.fromkeys(sites)
  _eval(rec, an.visit, consts, inputs)
  return {
    key: _fold_correction(an, leaf_keep, items, rec.record[key]) for key, items in sites.items()
  }  # every site is outside loops: always recorded


# ----------------------------------------------------------------------------------------------
# Matching a user's search space to the analysis
# ----------------------------------------------------------------------------------------------


def _member_key(m):
  return (m.path, m.axis, m.offset, m.width, m.outer, m.inner)


def _match_spaces(space: SearchSpace, an: Analysis) -> list[int]:
  """For each prunable space of ``space``: the analysis leaf atom it corresponds to."""
  index = {}  # type: ignore[var-annotated]
  for leaf, s in zip(an.space_leaves, an.space.channel_spaces, strict=True):
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
        "compress needs the space from hj.discover(fn, variables, ...) on the same function"
      )
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
  for s, off in zip(space.prunable_spaces, space.group_offsets, strict=True):
    k = keep[off : off + s.size]  # a view: edits land in ``keep``
    want = min(s.size, -(-int(k.sum()) // multiple_of) * multiple_of)
    k[np.nonzero(~k)[0][: want - int(k.sum())]] = True
  return keep


class _AtShapes:
  """The :class:`_Shrink` for the data-input shapes of a call (cached per shapes).

  At the traced shapes it is the compress-time one. At other shapes (batch, sequence length,
  image resolution) ``fn`` is traced and analysed again there, and the same kept channels are
  mapped onto the new analysis: every data-dependent size follows the input, including sizes a
  primitive's parameters carry (``reshape``, ``broadcast_in_dim``, convolution padding) and
  constants traced from them (a mean's ``1 / (H * W)``). Where ``fn`` cannot be traced at the new
  shapes, or its channel structure differs there, the error names the changed dimensions.
  """

  def __init__(
    self, fn: Callable, variables: Any, space: SearchSpace, keep: np.ndarray, sh: _Shrink
  ):
    self.fn, self.space, self.keep, self.sh = fn, space, keep, sh
    self.var_leaves = jax.tree_util.tree_leaves(variables)  # the full ones, to record folds
    self.tr = sh.an.traced
    self.abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x)), variables
    )
    invars = sh.an.visit.jaxpr.invars[self.tr.num_var_leaves :]
    self.traced_key = tuple((tuple(v.aval.shape), np.dtype(v.aval.dtype)) for v in invars)
    self.cache: dict[tuple, _Shrink] = {}

  def __call__(self, dyn: list, small_leaves: list) -> _Shrink:
    key = tuple((tuple(np.shape(x)), np.dtype(jax.numpy.result_type(x))) for x in dyn)
    if key == self.traced_key:
      return self.sh
    if key not in self.cache:
      self.cache[key] = self._retrace(key)
    sh = self.cache[key]
    self._check_variables(sh, small_leaves, key)
    return sh

  def _changed(self, key: tuple) -> str:
    out = []
    for k, ((old, _), (new, _)) in enumerate(zip(self.traced_key, key, strict=True)):
      dims = [
        f"axis {d}: {a} -> {b}" for d, (a, b) in enumerate(zip(old, new, strict=False)) if a != b
      ]
      if len(old) != len(new):
        dims = [f"shape {old} -> {new}"]
      out += [f"data input {k} {x}" for x in dims]
    return ", ".join(out)

  def _retrace(self, key: tuple) -> _Shrink:
    tr = self.tr
    it = iter(jax.ShapeDtypeStruct(shp, dt) for shp, dt in key)
    leaves = [next(it) if d else s for d, s in zip(tr.arg_dynamic, tr.arg_static, strict=True)]
    args, kwargs = jax.tree_util.tree_unflatten(tr.arg_treedef, leaves)
    try:
      an = analyse(self.fn, self.abstract, *args, approximate=True, fold=True, **kwargs)
      ids = _match_spaces(self.space, an)
    except Exception as e:  # noqa: BLE001 - re-raised with the dimensions that changed
      raise ValueError(
        f"small_fn: called at other input sizes ({self._changed(key)}) than at "
        f"compress time, and the function cannot be re-analysed there: "
        f"{type(e).__name__}: {e}"
      ) from e
    leaf_keep = {
      an.atoms.find(leaf): self.keep[off : off + s.size]
      for s, off, leaf in zip(
        self.space.prunable_spaces, self.space.group_offsets, ids, strict=True
      )
    }
    corrections = {}
    if self.sh.corrections:
      # folded constants do not depend on the data inputs: record them on zeros of the new shapes
      zeros = [np.zeros(shp, dt) for shp, dt in key]
      with jax.ensure_compile_time_eval():  # small_fn may be called under jit: record eagerly
        corrections = _fold_corrections(
          an, leaf_keep, list(an.traced.closed.consts), list(self.var_leaves) + zeros
        )
    return _Shrink(an, leaf_keep, corrections=corrections)

  def _check_variables(self, sh: _Shrink, small_leaves: list, key: tuple) -> None:
    invars = sh.an.visit.jaxpr.invars[: self.tr.num_var_leaves]
    for path, v, x in zip(self.tr.var_paths, invars, small_leaves, strict=True):
      want = sh.shape(sh.an.visit, v)
      if tuple(np.shape(x)) != want:
        raise ValueError(
          f"small_fn: at the new input sizes ({self._changed(key)}) variable "
          f"{'/'.join(map(str, path))!r} must have shape {want}, got {np.shape(x)}"
        )


def compress(
  fn: Callable,
  variables: Any,
  space: SearchSpace,
  *args,
  keep=None,
  check_zero: bool = True,
  multiple_of: int = 1,
  **kwargs,
) -> tuple[Callable, Any]:
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
  ``small_fn`` also runs at other data-input sizes (batch, sequence, resolution): ``fn`` is
  re-analysed at those shapes and the same channels are kept.

  Example (two of the four hidden units zeroed, as HESSO leaves them, then cut out):

  >>> import jax, jax.numpy as jnp, hesso_jax as hj
  >>> fn = lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"]
  >>> p = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
  >>> x = jnp.ones((5, 3))
  >>> space = hj.discover(fn, p, x)
  >>> p = space.zero_groups(p, jnp.array([1, 2]))
  >>> small_fn, small = hj.compress(fn, p, space, x)
  >>> small["w1"].shape, small["w2"].shape
  ((3, 2), (2, 2))
  >>> bool(jnp.allclose(small_fn(small, x), fn(p, x)))
  True
  """
  an = analyse(fn, variables, *args, approximate=True, fold=True, **kwargs)
  # validated (shape, dtype, >= 1 channel kept per space); warns if non-zero groups are dropped
  keep = round_up_keep(space, resolve_keep(space, variables, keep, warn=check_zero), multiple_of)
  leaves = _match_spaces(space, an)
  leaf_keep = {}
  approximate = []
  for s, off, leaf in zip(space.prunable_spaces, space.group_offsets, leaves, strict=True):
    k = keep[off : off + s.size]
    ans = an.space.channel_spaces[an.space_leaves.index(leaf)]
    if not k.all() and not ans.prunable:
      raise ValueError(
        f"compress: space {s.label()!r} is not zero-invariant ({ans.reason}); "
        "removing its channels would change the function"
      )
    if not k.all() and "(approximate)" in ans.name:
      approximate.append(s.label())
    leaf_keep[an.atoms.find(leaf)] = k
  tr = an.traced
  top = an.visit
  var_leaves = jax.tree_util.tree_leaves(variables)
  consts = list(tr.closed.consts)
  arg_leaves = [
    x for x, d in zip(jax.tree_util.tree_leaves((args, kwargs)), tr.arg_dynamic, strict=True) if d
  ]
  corrections = _fold_corrections(an, leaf_keep, consts, list(var_leaves) + arg_leaves)
  sh = _Shrink(an, leaf_keep, corrections=corrections)
  small_leaves = [
    sh.slice_leaf(x, top.env[v])
    for x, v in zip(var_leaves, top.jaxpr.invars[: tr.num_var_leaves], strict=True)
  ]
  small = jax.tree_util.tree_unflatten(tr.var_treedef, small_leaves)
  at_shapes = _AtShapes(fn, variables, space, keep, sh)

  def small_fn(small_variables, *a, **kw):
    vl = jax.tree_util.tree_leaves(small_variables)
    if len(vl) != tr.num_var_leaves:
      raise ValueError(f"small_fn: expected {tr.num_var_leaves} variable leaves, got {len(vl)}")
    al, atree = jax.tree_util.tree_flatten((a, kw))
    if atree != tr.arg_treedef:
      raise ValueError("small_fn: arguments must have the structure used at compress time")
    dyn = [x for x, d in zip(al, tr.arg_dynamic, strict=True) if d]
    call_sh = at_shapes(dyn, vl)
    outs = _eval(call_sh, call_sh.an.visit, list(call_sh.an.traced.closed.consts), list(vl) + dyn)
    return jax.tree_util.tree_unflatten(call_sh.an.traced.out_tree, outs)

  small_fn.approximate_spaces = tuple(approximate)  # type: ignore[attr-defined]
  small_fn.max_deviation = 0.0  # type: ignore[attr-defined]
  if approximate:
    # Not exact by construction (LayerNorm statistics see fewer channels): measure and report.
    full = jax.tree_util.tree_leaves(jax.jit(fn)(variables, *args, **kwargs))
    comp = jax.tree_util.tree_leaves(jax.jit(small_fn)(small, *args, **kwargs))
    dev = max(
      float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
      for a, b in zip(full, comp, strict=True)
    )
    small_fn.max_deviation = dev  # type: ignore[attr-defined]
    warnings.warn(
      f"compress: approximate spaces {approximate} were pruned; on the example inputs "
      f"the compressed output deviates from the full one by up to {dev:.3g}",
      UserWarning,
      stacklevel=2,
    )
  return small_fn, small
