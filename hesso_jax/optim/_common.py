"""Pieces shared by :func:`hesso` and :func:`hesso_cric`: argument checks, schedule arithmetic,
group ranking and selection, and the masked update that forgets and zeroes groups.

Nothing here knows about a concrete optimizer state; both optimizers import this module and
neither imports the other.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hesso_jax.space import PRODUCER, SearchSpace, leaves_with_paths, normalize_path

__all__ = [
  "after",
  "any_set",
  "base_step",
  "check_int",
  "check_space",
  "check_sparsity",
  "concrete",
  "cond",
  "decay_factor",
  "is_params_placeholder",
  "lowest_in_segments",
  "lowest_k",
  "masked_updates",
  "stored",
  "promote_updates",
  "resolve_space",
  "select_groups",
  "sort_key",
  "target_num_groups",
  "warn_if_unreachable",
  "within_space_rank",
]


# ----------------------------------------------------------------------------------------------
# argument checks: TypeError for a wrong type, ValueError for a wrong value
# ----------------------------------------------------------------------------------------------


def concrete(name: str, v: Any) -> Any:
  """A Python scalar for a concrete number, or None for a tracer (e.g. injected hyper-params)."""
  if isinstance(v, jax.core.Tracer):
    return None
  try:
    a = np.asarray(v)
  except Exception as e:  # pragma: no cover - exotic inputs
    raise TypeError(f"{name} must be a number, got {type(v).__name__}") from e
  if a.dtype.kind not in "biuf":
    raise TypeError(f"{name} must be a number, got {v!r}")
  if a.shape != ():
    raise TypeError(f"{name} must be a scalar, got an array of shape {a.shape}")
  return a.item()


def check_int(name: str, v: ArrayLike | None, *, lo: int) -> None:
  """``v`` is an integer (or a tracer) ``>= lo``; None (a missing required value) is a TypeError."""
  if v is None:
    raise TypeError(f"{name} is required (got None)")
  c = concrete(name, v)
  if c is None:
    return
  if isinstance(c, bool) or not float(c).is_integer():
    raise TypeError(f"{name} must be an integer, got {v!r}")
  if c < lo:
    raise ValueError(f"{name} must be >= {lo}, got {v!r}")


def check_sparsity(name: str, v: ArrayLike) -> None:
  """``v`` is a number in [0, 1) (or a tracer)."""
  c = concrete(name, v)
  if c is None:
    return
  if isinstance(c, bool):
    raise TypeError(f"{name} must be a number in [0, 1), got {v!r}")
  if not 0.0 <= float(c) < 1.0:
    raise ValueError(f"{name} must lie in [0, 1), got {v!r}")


def check_space(space: Any) -> None:
  if not isinstance(space, SearchSpace):
    raise TypeError(f"space must be a hesso_jax.SearchSpace, got {type(space).__name__}")


def warn_if_unreachable(space: SearchSpace, s: ArrayLike, multiple_of: ArrayLike) -> None:
  """Warn when ``R`` exceeds what the per-space ``multiple_of`` caps allow to remove."""
  cs, cm = concrete("target_group_sparsity", s), concrete("multiple_of", multiple_of)
  if cs is None or cm is None or space.num_groups == 0:
    return
  R = int(math.floor(space.num_groups * min(float(cs), 0.999) * (1 + 1e-6)))
  cap = sum(max(sp.size - int(cm), 0) for sp in space.prunable_spaces)
  if cap < R:
    warnings.warn(
      f"target_group_sparsity={cs}: R={R} groups requested but at most {cap} can be removed "
      f"while keeping >= multiple_of={cm} groups in every space; the final sparsity will be "
      "lower",
      stacklevel=3,
    )


# ----------------------------------------------------------------------------------------------
# params trees
# ----------------------------------------------------------------------------------------------


def is_params_placeholder(params: Any) -> bool:
  """True for the leafless stand-in ``optax.tree_utils.tree_map_params`` passes to ``init``.

  optax calls ``init`` with an instance of its private, leafless ``_ParamsPlaceholder`` pytree to
  find the params-shaped parts of a state. Only a leafless pytree whose type comes from optax is
  accepted as that placeholder, so a real tree missing its leaves still fails validation.
  """
  return not jax.tree_util.tree_leaves(params) and type(params).__module__.split(".")[0] == "optax"


def resolve_space(space: SearchSpace, tree: Any) -> SearchSpace:
  """Adapt member paths to ``tree``'s leaves when they differ only by a trailing ``'value'``.

  flax.nnx states flatten to ``(..., 'kernel', 'value')`` while ``nnx.as_pure`` (what
  ``nnx.Optimizer.update`` hands to the transformation) gives ``(..., 'kernel')``; a space written
  for either works with both. Unmatched paths are left alone so ``validate`` can name them.
  """
  paths = {p for p, _ in leaves_with_paths(tree)}

  def fix(p):
    if p in paths:
      return p
    if p + ("value",) in paths:
      return p + ("value",)
    if p and p[-1] == "value" and p[:-1] in paths:
      return p[:-1]
    return p

  changed = False
  new_spaces = []
  for s in space.channel_spaces:
    ms = []
    for m in s.members:
      q = fix(m.path)
      changed |= q != m.path
      ms.append(dataclasses.replace(m, path=q) if q != m.path else m)
    new_spaces.append(dataclasses.replace(s, members=tuple(ms)))
  return SearchSpace(tuple(new_spaces)) if changed else space


def cond(pred: jax.Array, true_fn: Callable, false_fn: Callable, operands: Any) -> Any:
  """``lax.cond``, or a plain Python branch when ``pred`` is concrete (eager use).

  Under ``jit`` the predicate is traced and ``lax.cond`` is used (one compiled step). Eagerly,
  ``lax.cond`` would re-trace and re-compile its closures on every call.
  """
  if isinstance(pred, jax.core.Tracer):
    return jax.lax.cond(pred, true_fn, false_fn, operands)
  return true_fn(operands) if bool(pred) else false_fn(operands)


def base_step(base: Any, updates: Any, base_state: Any, params: Any, extra_args: dict) -> Any:
  """(the base transformation's updates cast as :func:`promote_updates` does, its new state).

  The one call both optimizers make for the step's update, for the saliency direction (inside a
  selection ``lax.cond``) and, with ``after(...)`` around ``base_state``, for the update itself.
  """
  u, new_state = base.update(updates, base_state, params, **extra_args)
  return promote_updates(u, params), new_state


def after(signals: Any, tree: Any) -> Any:
  """``tree`` unchanged, but computed after ``signals`` (small arrays the phase conds made).

  Each floating leaf gets ``+ s``, where ``s`` is ``-0.0`` computed from every signal leaf
  (``-(sum(isnan(v)) * 0.0)``: always ``-0.0``, whatever ``v`` is; signals should be ``(G,)``
  vectors or scalars, as the sum reads them whole), and ``x + (-0.0) == x``
  bit for bit for every float, signed zeros and NaNs included. XLA cannot fold ``s`` away, so
  everything computed from the result waits for the conds. That ordering is what lets a donated
  step update the base state and the parameters in place: a cond that reads them (the saliency
  direction, a cache snapshot) then runs before the fused update overwrites them. Without it XLA
  must assume the update may run first and copies that state every step. The extra add sits in
  the elementwise update, so it costs nothing.
  """
  s = jnp.zeros([], jnp.float32)
  for v in jax.tree_util.tree_leaves(signals):
    # a reduction, not v[0]: indexing a sharded signal is not supported under explicit sharding
    s = s + jnp.sum(jnp.isnan(jnp.asarray(v).astype(jnp.float32))).astype(jnp.float32)
  s = -(s * 0.0)

  def dep(x):
    x = jnp.asarray(x)
    return x + s.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  return jax.tree_util.tree_map(dep, tree)


# ----------------------------------------------------------------------------------------------
# schedule arithmetic
# ----------------------------------------------------------------------------------------------


def target_num_groups(num_groups: int, target_group_sparsity: ArrayLike) -> jax.Array:
  """int32 ``R = floor(G * min(s, 0.999))``, valid for a traced ``s``.

  A relative tolerance of 1e-6 absorbs float32 representation error (``0.7`` is
  ``0.69999999`` in float32), so ``R`` agrees with exact arithmetic, e.g. ``floor(10 * 0.7) = 7``.
  """
  s = jnp.clip(jnp.asarray(target_group_sparsity, jnp.float32), 0.0, 0.999)
  return jnp.floor(num_groups * s * (1.0 + 1e-6)).astype(jnp.int32)


def decay_factor(length: jax.Array, j: jax.Array) -> jax.Array:
  """float32 ``(length-j-1)/(length-j)``: step ``j`` of a linear decay, 0 at ``j = length-1``."""
  return (length - j - 1).astype(jnp.float32) / (length - j).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# ranking and selection (vectorised over groups)
# ----------------------------------------------------------------------------------------------


def sort_key(scores: ArrayLike) -> jax.Array:
  """int32 keys that sort exactly as the float32 ``scores`` sort in ``lax.sort``.

  ``lax.sort`` orders floats with ``-0.0 == +0.0`` and every NaN equal and last; with zeros and
  NaNs made canonical, flipping the magnitude bits of negative numbers maps that order onto the
  int32 order. Sorting the int keys (stably) gives the same permutation with a one-compare
  comparator: on XLA:CPU each scalar value of a sort's comparator costs a little on every step of
  the compiled program, even inside a branch that does not run, and the float comparator is five
  times the int one.
  """
  x = jnp.asarray(scores, jnp.float32)
  x = jnp.where(jnp.isnan(x), jnp.nan, jnp.where(x == 0, 0.0, x))
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def within_space_rank(scores: jax.Array, space: SearchSpace) -> jax.Array:
  """int32 (G,): rank of each group's score inside its own space (0 = lowest; ties by index)."""
  return _rank_in_segments(scores, space.space_ids())


def _rank_in_segments(scores: jax.Array, segment_ids: np.ndarray) -> jax.Array:
  """int32 (G,): rank of each score inside its segment (static ids; 0 = lowest; ties by index)."""
  G = scores.shape[0]
  ids_np = np.asarray(segment_ids, np.int32)
  arange = jnp.arange(G, dtype=jnp.int32)
  # stable two-key sort by (segment id, score): ties keep index order
  keys = (jnp.asarray(ids_np), sort_key(scores), arange)
  perm = jax.lax.sort(keys, num_keys=2, is_stable=True)[2]
  # position in sorted order minus where the segment starts there (static)
  sorted_ids = np.sort(ids_np, kind="stable")
  pos_in_segment = np.arange(G) - np.searchsorted(sorted_ids, sorted_ids, side="left")
  return jnp.zeros((G,), jnp.int32).at[perm].set(jnp.asarray(pos_in_segment, jnp.int32))


def lowest_k(scores: jax.Array, k: ArrayLike) -> jax.Array:
  """bool (G,): the ``k`` lowest finite scores, globally (ties by index).

  By radix selection (:func:`lowest_in_segments`), not a sort: the same groups, without the
  ``O(G log G)`` sort, which on XLA:CPU took 0.7 ms for 2048 groups and 30 ms for 65536.

  >>> import jax.numpy as jnp
  >>> lowest_k(jnp.array([3.0, 1.0, jnp.nan, 1.0, -2.0]), 3)
  Array([False,  True, False,  True,  True], dtype=bool)
  """
  G = scores.shape[0]
  fin = jnp.isfinite(scores)
  kk = jnp.clip(jnp.asarray(k, jnp.int32), 0, G).reshape(1)
  return fin & lowest_in_segments(jnp.where(fin, scores, jnp.inf), kk)


#: bits of the key decided per radix-selection round (256 histogram bins)
_RADIX_BITS = 8


def lowest_in_segments(
  scores: jax.Array,
  k: jax.Array,
  segment_ids: np.ndarray | None = None,
) -> jax.Array:
  """bool (G,): in each segment ``s``, the ``k[s]`` lowest ``scores`` (in the order of
  ``lax.sort``, see :func:`sort_key`; ties by index), by radix selection.

  ``segment_ids`` (static, int, one per score; None: one segment) and ``k`` (int32
  ``(num_segments,)``, may be traced, at most each segment's size) say how many per segment.
  Each round histograms the next 8 bits of every candidate's key (one scatter-add of ``G``
  ones) and keeps the bin where the ``k``-th candidate falls: 4 rounds for the float keys and
  ``ceil(log2(G) / 8)`` for the index among equal keys, instead of a sort. The cumulative
  counts are float32 matrix products (exact below 2**24), not reductions: XLA:CPU pays for
  each reduction's scalar sub-computation on every step, even in a ``lax.cond`` branch that does
  not run; a round costs one (the scatter-add's).

  >>> import jax.numpy as jnp, numpy as np
  >>> lowest_in_segments(jnp.array([5.0, 4.0, 4.0, 1.0, 0.0]), jnp.array([2, 1]),
  ...                    np.array([0, 0, 0, 1, 1]))
  Array([False,  True,  True, False,  True], dtype=bool)
  """
  G = scores.shape[0]
  if G == 0:
    return jnp.zeros((0,), bool)
  if segment_ids is None:
    ids, S = None, 1
  else:
    ids_np = np.asarray(segment_ids, np.int32)
    ids, S = jnp.asarray(ids_np), int(ids_np.max()) + 1
  k = jnp.asarray(k, jnp.int32).reshape(S)
  if G >= 2**24:  # the float32 counts are exact below 2**24
    return _lowest_in_segments_by_sort(scores, k, segment_ids)
  per = lambda v: _per_group(v, ids)
  u = jax.lax.bitcast_convert_type(sort_key(scores), jnp.uint32) ^ jnp.uint32(0x80000000)
  idx = jnp.arange(G, dtype=jnp.uint32)
  t, rest = _radix_kth(u, jnp.ones((G,), bool), ids, S, k, 32)
  tie = u == per(t)
  t_idx, _ = _radix_kth(idx, tie, ids, S, rest, max(1, (G - 1).bit_length()))
  return ((u < per(t)) | (tie & (idx <= per(t_idx)))) & per(k > 0)


def _radix_kth(
  vals: jax.Array, cand: jax.Array, ids: jax.Array | None, S: int, k: jax.Array, bits: int
) -> tuple[jax.Array, jax.Array]:
  """Per segment, the value ``v`` of the ``k``-th smallest (1-based) ``cand`` value among the
  low ``bits`` bits of uint32 ``vals``, and how many of the ``k`` are equal to ``v``
  (``k - #(cand & vals < v)``). ``k`` in ``[1, #cand]``; a segment with ``k == 0`` gets junk."""
  R = _RADIX_BITS
  B = 1 << R
  hi_prec = jax.lax.Precision.HIGHEST
  upper = jnp.asarray(np.triu(np.ones((B, B), np.float32)))  # v @ upper: cumulative sums of v
  prefix = jnp.zeros((S,), jnp.uint32)
  need = k.astype(jnp.float32)
  for shift in range(((bits - 1) // R) * R, -1, -R):
    digit = ((vals >> shift) & jnp.uint32(B - 1)).astype(jnp.int32)
    top = shift + R
    if top < 32:  # candidates whose higher bits are the prefix decided so far
      match = cand & ((vals >> top) == (_per_group(prefix, ids) >> top))
    else:
      match = cand
    bins = digit if ids is None else ids * B + digit
    hist = jnp.zeros((S * B,), jnp.int32).at[bins].add(match.astype(jnp.int32))
    hist = hist.reshape(S, B).astype(jnp.float32)
    cum = jnp.dot(hist, upper, precision=hi_prec)  # (S, B): candidates with digit <= j
    below = (cum < need[:, None]).astype(jnp.float32)  # ones on the bins before the k-th's
    # the k-th's digit (number of bins below it) and the candidates in those bins, as the last
    # column of one more cumulative sum: matrix products, where a vector dot would become a
    # reduction (XLA rewrites those), with its per-step cost on XLA:CPU
    tot = jnp.dot(jnp.concatenate([below, below * hist]), upper, precision=hi_prec)[:, B - 1]
    need = need - tot[S:]
    prefix = prefix | (tot[:S].astype(jnp.uint32) << shift)
  return prefix, need.astype(jnp.int32)


def _per_group(v: jax.Array, ids: jax.Array | None) -> jax.Array:
  """A per-segment ``(S,)`` value at every group (``ids`` None: the one segment's)."""
  return v[0] if ids is None else v[ids]


def _lowest_in_segments_by_sort(
  scores: jax.Array, k: jax.Array, segment_ids: np.ndarray | None
) -> jax.Array:
  """:func:`lowest_in_segments` by a stable sort (for 2**24 groups or more)."""
  ids_np = np.zeros(scores.shape, np.int32) if segment_ids is None else segment_ids
  return _rank_in_segments(scores, ids_np) < k[jnp.asarray(ids_np, jnp.int32)]


def select_groups(
  scores: jax.Array,
  eligible: jax.Array,
  quota: ArrayLike,
  space: SearchSpace,
  removed: jax.Array,
  multiple_of: ArrayLike = 1,
) -> jax.Array:
  """bool (G,): the ``quota`` lowest-``scores`` eligible groups, globally ranked, per-space capped.

  * Only ``eligible`` groups with a finite score are candidates.
  * Per space ``s`` with ``n_s`` groups of which ``removed`` already count ``r_s``, at most
    ``n_s - m - r_s`` more are taken (at least ``m = multiple_of`` groups are always kept; a space
    with ``n_s <= m`` is never pruned). Groups beyond the cap are not candidates, so the global
    quota flows to other spaces.
  * Then, per space, the kept count is rounded *up* to a multiple of ``m`` by dropping the
    highest-scoring selected groups of that space (as the reference does; the shortfall stays
    unpruned). A space left untouched keeps all ``n_s`` groups even when ``n_s % m != 0``.

  All of this is vectorised (sorts + segment sums over static space ids); ``quota`` and
  ``multiple_of`` may be traced.
  """
  G = space.num_groups
  if G == 0:
    return jnp.zeros((0,), bool)
  S = len(space.prunable_spaces)
  ids = jnp.asarray(space.space_ids())
  sizes = jnp.asarray(np.array([s.size for s in space.prunable_spaces], np.int32))
  m = jnp.maximum(jnp.asarray(multiple_of, jnp.int32), 1)

  scores = jnp.asarray(scores, jnp.float32)
  eligible = eligible & jnp.isfinite(scores)
  within = within_space_rank(jnp.where(eligible, scores, jnp.inf), space)

  removed_s = jax.ops.segment_sum(removed.astype(jnp.int32), ids, num_segments=S)
  cap_s = jnp.maximum(sizes - m - removed_s, 0)
  cand = eligible & (within < cap_s[ids])
  sel = lowest_k(jnp.where(cand, scores, jnp.inf), quota)

  # multiple_of: round each space's kept count up to a multiple of m (never above what it has).
  a_s = jax.ops.segment_sum(sel.astype(jnp.int32), ids, num_segments=S)
  have = sizes - removed_s
  kept = have - a_s
  rem = kept % m
  kept2 = jnp.where(rem == 0, kept, jnp.minimum(have, kept - rem + m))
  a2 = jnp.clip(have - kept2, 0, a_s)
  return sel & (within < a2[ids])


# ----------------------------------------------------------------------------------------------
# the masked update
# ----------------------------------------------------------------------------------------------


def promote_updates(updates: Any, params: Any) -> Any:
  """``updates`` with each leaf cast to ``result_type(u, x)``, the dtype :func:`masked_updates`
  returns (a no-op when they agree), so both branches of a phase ``lax.cond`` have one type."""
  return jax.tree_util.tree_map(
    lambda u, x: jnp.asarray(u).astype(jnp.result_type(u, x)), updates, params
  )


def _producer_paths(space: SearchSpace) -> set:
  return {m.path for s in space.prunable_spaces for m in s.members if m.role == PRODUCER}


def any_set(*masks: ArrayLike | None) -> jax.Array | None:
  """bool scalar: some element of some given mask is true (None if no mask is given).

  The masks (``(G,)`` vectors or scalars) are or-ed first, so this is a single reduction.
  """
  given = [jnp.asarray(m) for m in masks if m is not None]
  if not given:
    return None
  out = given[0]
  for g in given[1:]:
    out = out | g
  return jnp.any(out)


def stored(live: ArrayLike | None, tree: Any) -> Any:
  """``tree`` (small masks and scalars) as buffers that an elementwise pass reads, not recomputes.

  ``lax.cond(live, identity, zeros)``: a cond's outputs are buffers XLA cannot fuse through, so
  the ``(G,)`` masks and phase scalars are computed once per step, not inside every consumer's
  loop. With ``live`` false every leaf is zeros (false masks, a zero factor): no mask is set
  then (the caller's promise), so nothing that reads them changes. ``None`` leaves stay ``None``;
  with ``live`` None the tree is returned as is. The cond holds no reductions, so it costs no
  thread-local allocations on XLA:CPU (see ``benchmarks/bench_cond.py``).

  >>> import jax, jax.numpy as jnp
  >>> masks = (jnp.array([True, False]), jnp.float32(0.5))
  >>> jax.jit(stored)(jnp.array(True), masks)[0]
  Array([ True, False], dtype=bool)
  >>> jax.jit(stored)(jnp.array(False), masks)[1]
  Array(0., dtype=float32)
  """
  if live is None:
    return tree
  tree = jax.tree_util.tree_map(jnp.asarray, tree)
  zeros = lambda t: jax.tree_util.tree_map(jnp.zeros_like, t)
  if not isinstance(live, jax.core.Tracer):  # eager: nothing to fuse
    return tree if bool(live) else zeros(tree)
  return jax.lax.cond(live, lambda t: t, zeros, tree)


def masked_updates(
  updates: Any,
  params: Any,
  space: SearchSpace,
  *,
  forget: jax.Array | None = None,
  factor: ArrayLike | None = None,
  zero: jax.Array | None = None,
  restore: Any = None,
  restore_when: ArrayLike | None = None,
  hold: ArrayLike | None = None,
  live: ArrayLike | None = None,
) -> Any:
  """Per-element combination of the base updates with forgetting and zeroing.

  For every element (producer slices of the space's groups)::

      zero[g]      ->  -x                      (x + update == 0.0 exactly)
      forget[g]    ->  (x + u) * factor - x    (new value (x + u) * factor)
      otherwise    ->  u  (passed through unchanged by ``jnp.where``)

  If ``restore`` (a tree like ``params``) is given, where ``restore_when`` is true ``u`` is first
  replaced by ``restore - x`` for every element of every leaf (so forgetting then scales the
  restored value, and the zero mask still applies on top). Where the scalar ``hold`` is true the
  base update is dropped first (``u`` becomes 0: nothing moves but what the masks move).
  The result dtype is ``result_type(u, x)`` (== u's dtype when they agree). Each leaf is one
  elementwise expression (the (G,) masks are broadcast inside it), which XLA fuses into one pass.

  The masked expression is wrapped in ``where(live, ..., u)`` with ``live`` the *scalar* "some
  mask is set" (``any(forget) | any(zero)``, ``restore_when`` or ``hold``). The result is the
  same (with every mask false the expression is ``u``), but the loop-invariant scalar lets the CPU
  backend unswitch the fused loop into a masked and a plain version: a step with nothing to mask
  (a warm-up step) runs the base optimizer's own loop, without the per-element mask loads and
  selects, and without reading ``restore``. A caller that has ``live`` already (it must be true
  whenever a mask is set, ``restore_when`` or ``hold``) passes it.

  The masks and scalars reach the loop through :func:`stored` (a ``lax.cond`` on ``live``), so
  XLA does not fuse their computation (phase arithmetic, selects on ``(G,)`` state) into the
  per-element loop: there every such select is one more loop-invariant condition, and LLVM's
  unswitching budget ran out before it reached ``live`` (HESSO-CRIC's warm-up read the cache
  every step).
  """
  G = space.num_groups
  if live is None:
    live = any_set(forget, zero, restore_when if restore is not None else None, hold)
  if restore is None:
    restore_when = None
  if G == 0:
    forget = zero = None
  forget, factor, zero, restore_when, hold, live = stored(
    live, (forget, factor, zero, restore_when, hold, live)
  )
  zero_t = space.group_mask_tree(zero, params) if zero is not None else None
  forget_t = space.group_mask_tree(forget, params) if forget is not None else None
  touched = _producer_paths(space)

  flat_u, treedef = jax.tree_util.tree_flatten(updates)
  n = len(flat_u)
  flat_x = treedef.flatten_up_to(params)  # type: ignore[attr-defined]
  flat_z = treedef.flatten_up_to(zero_t) if zero_t is not None else [None] * n  # type: ignore[attr-defined]
  flat_f = treedef.flatten_up_to(forget_t) if forget_t is not None else [None] * n  # type: ignore[attr-defined]
  flat_c = treedef.flatten_up_to(restore) if restore is not None else [None] * n  # type: ignore[attr-defined]
  paths = [normalize_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(updates)[0]]

  out = []
  for path, u, x, z, f, c in zip(paths, flat_u, flat_x, flat_z, flat_f, flat_c, strict=True):
    dt = jnp.result_type(u, x)
    plain = jnp.asarray(u).astype(dt)
    xx = jnp.asarray(x).astype(dt)
    new = plain
    if hold is not None:
      new = jnp.where(hold, jnp.zeros_like(new), new)
    if c is not None:
      new = jnp.where(restore_when, (jnp.asarray(c).astype(dt) - xx), new)
    if path in touched and f is not None:
      cdt = jnp.promote_types(dt, jnp.float32)
      fac = jnp.asarray(factor, cdt)
      forgot = ((xx.astype(cdt) + new.astype(cdt)) * fac - xx.astype(cdt)).astype(dt)
      new = jnp.where(f, forgot, new)
    if path in touched and z is not None:
      new = jnp.where(z, -xx, new)
    if live is not None and new is not plain:
      new = jnp.where(live, new, plain)
    out.append(new)
  return jax.tree_util.tree_unflatten(treedef, out)
