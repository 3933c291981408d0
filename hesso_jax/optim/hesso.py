"""HESSO as an optax transformation: progressive, saliency-driven forgetting of channel groups.

See :func:`hesso` for the algorithm and DESIGN.md section 4 for the spec.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hesso_jax.optim import saliency as sal
from hesso_jax.space import PRODUCER, SearchSpace, leaves_with_paths, normalize_path

__all__ = [
    "HessoState",
    "hesso",
    "pruned_mask",
    "redundant_mask",
    "select_groups",
    "target_num_groups",
]


class HessoState(NamedTuple):
  """State of :func:`hesso` (all arrays; a pytree).

  Attributes:
    count: int32 scalar, number of ``update`` calls so far (the 0-based index of the next step).
    redundant: bool (G,), groups being forgotten in the current pruning period.
    pruned: bool (G,), groups committed to exactly zero (forever).
    base_state: the base transformation's state.
  """

  count: jax.Array
  redundant: jax.Array
  pruned: jax.Array
  base_state: optax.OptState


# ----------------------------------------------------------------------------------------------
# Helpers shared with cric.py
# ----------------------------------------------------------------------------------------------


def _concrete(v: Any) -> Any:
  """A Python scalar for a concrete number/array, or None for a tracer (e.g. injected hparams)."""
  if isinstance(v, jax.core.Tracer):
    return None
  try:
    a = np.asarray(v)
  except Exception:  # pragma: no cover - exotic inputs
    return None
  if a.shape != ():
    raise ValueError(f"expected a scalar, got an array of shape {a.shape}")
  return a.item()


def _check_int(name: str, v: Any, *, lo: int | None = None, allow_none: bool = False) -> None:
  if v is None:
    if allow_none:
      return
    raise ValueError(f"{name} is required (got None)")
  c = _concrete(v)
  if c is None:
    return
  if isinstance(c, bool) or not float(c).is_integer():
    raise ValueError(f"{name} must be an integer, got {v!r}")
  if lo is not None and c < lo:
    raise ValueError(f"{name} must be >= {lo}, got {v!r}")


def _check_sparsity(name: str, v: Any) -> None:
  c = _concrete(v)
  if c is None:
    return
  if isinstance(c, bool) or not (0.0 <= float(c) < 1.0):
    raise ValueError(f"{name} must lie in [0, 1), got {v!r}")


def target_num_groups(num_groups: int, target_group_sparsity: Any) -> jax.Array:
  """int32 ``R = floor(G * min(s, 0.999))``, valid for a traced ``s``.

  A relative tolerance of 1e-6 absorbs float32 representation error (``0.7`` is
  ``0.69999999`` in float32), so ``R`` agrees with exact arithmetic, e.g. ``floor(10 * 0.7) = 7``.
  """
  s = jnp.clip(jnp.asarray(target_group_sparsity, jnp.float32), 0.0, 0.999)
  return jnp.floor(num_groups * s * (1.0 + 1e-6)).astype(jnp.int32)


def _resolve_space(space: SearchSpace, tree: Any) -> SearchSpace:
  """Adapt member paths to ``tree``'s leaves when they differ only by a trailing ``'value'``.

  flax.nnx states flatten to ``(..., 'kernel', 'value')`` while ``nnx.as_pure`` (what
  ``nnx.Optimizer.update`` hands to the transformation) gives ``(..., 'kernel')``; a space written
  for either works with both. Unmatched paths are left alone so ``validate`` can name them.
  """
  import dataclasses

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


def _producer_paths(space: SearchSpace) -> set:
  return {m.path for s in space.prunable_spaces for m in s.members if m.role == PRODUCER}


def masked_updates(updates: Any, params: Any, space: SearchSpace, *, forget: jax.Array | None = None,
                   factor: Any = None, zero: jax.Array | None = None,
                   restore: Any = None, restore_when: Any = None) -> Any:
  """Per-element combination of the base updates with forgetting and zeroing.

  For every element (producer slices of the space's groups)::

      zero[g]      ->  -x                      (x + update == 0.0 exactly)
      forget[g]    ->  (x + u) * factor - x    (new value (x + u) * factor)
      otherwise    ->  u  (passed through unchanged by ``jnp.where``)

  If ``restore`` (a tree like ``params``) is given, where ``restore_when`` is true ``u`` is first
  replaced by ``restore - x`` for every element of every leaf (so forgetting then scales the
  restored value, and the zero mask still applies on top).
  The result dtype is ``result_type(u, x)`` (== u's dtype when they agree).
  """
  G = space.num_groups
  zero_t = space.group_mask_tree(zero, params) if (zero is not None and G) else None
  forget_t = space.group_mask_tree(forget, params) if (forget is not None and G) else None
  touched = _producer_paths(space)

  flat_u, treedef = jax.tree_util.tree_flatten(updates)
  flat_x = treedef.flatten_up_to(params)
  flat_z = treedef.flatten_up_to(zero_t) if zero_t is not None else [None] * len(flat_u)
  flat_f = treedef.flatten_up_to(forget_t) if forget_t is not None else [None] * len(flat_u)
  flat_c = treedef.flatten_up_to(restore) if restore is not None else [None] * len(flat_u)
  paths = [normalize_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(updates)[0]]

  out = []
  for path, u, x, z, f, c in zip(paths, flat_u, flat_x, flat_z, flat_f, flat_c):
    dt = jnp.result_type(u, x)
    new = jnp.asarray(u).astype(dt)
    xx = jnp.asarray(x).astype(dt)
    if c is not None:
      new = jnp.where(restore_when, (jnp.asarray(c).astype(dt) - xx), new)
    if path in touched and f is not None:
      cdt = jnp.promote_types(dt, jnp.float32)
      fac = jnp.asarray(factor, cdt)
      forgot = ((xx.astype(cdt) + new.astype(cdt)) * fac - xx.astype(cdt)).astype(dt)
      new = jnp.where(f, forgot, new)
    if path in touched and z is not None:
      new = jnp.where(z, -xx, new)
    out.append(new)
  return jax.tree_util.tree_unflatten(treedef, out)


def within_space_rank(scores: jax.Array, space: SearchSpace) -> jax.Array:
  """int32 (G,): rank of each group's score inside its own space (0 = lowest; ties by index)."""
  G = space.num_groups
  ids_np = space.space_ids()
  offs_np = np.array(space.group_offsets, np.int32)
  arange = jnp.arange(G, dtype=jnp.int32)
  perm = jnp.lexsort((arange, jnp.asarray(scores), jnp.asarray(ids_np)))
  pos_in_space = jnp.asarray(np.arange(G, dtype=np.int32) - offs_np[ids_np])  # static
  return jnp.zeros((G,), jnp.int32).at[perm].set(pos_in_space)


def lowest_k(scores: jax.Array, k: Any) -> jax.Array:
  """bool (G,): the ``k`` lowest finite scores, globally (ties by index)."""
  G = scores.shape[0]
  sc = jnp.where(jnp.isfinite(scores), scores, jnp.inf)
  order = jnp.argsort(sc, stable=True)
  rank = jnp.zeros((G,), jnp.int32).at[order].set(jnp.arange(G, dtype=jnp.int32))
  return jnp.isfinite(scores) & (rank < jnp.asarray(k, jnp.int32))


def select_groups(scores: jax.Array, eligible: jax.Array, quota: Any, space: SearchSpace,
                  removed: jax.Array, multiple_of: Any = 1) -> jax.Array:
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
  sizes_np = np.array([s.size for s in space.prunable_spaces], np.int32)
  ids = jnp.asarray(space.space_ids())
  sizes = jnp.asarray(sizes_np)
  m = jnp.maximum(jnp.asarray(multiple_of, jnp.int32), 1)

  scores = jnp.asarray(scores, jnp.float32)
  eligible = eligible & jnp.isfinite(scores)
  sc = jnp.where(eligible, scores, jnp.inf)
  arange = jnp.arange(G, dtype=jnp.int32)
  within = within_space_rank(sc, space)

  removed_s = jax.ops.segment_sum(removed.astype(jnp.int32), ids, num_segments=S)
  cap_s = jnp.maximum(sizes - m - removed_s, 0)
  cand = eligible & (within < cap_s[ids])

  sc2 = jnp.where(cand, scores, jnp.inf)
  order = jnp.argsort(sc2, stable=True)
  grank = jnp.zeros((G,), jnp.int32).at[order].set(arange)
  sel = cand & (grank < jnp.asarray(quota, jnp.int32))

  # multiple_of: round each space's kept count up to a multiple of m (never above what it has).
  a_s = jax.ops.segment_sum(sel.astype(jnp.int32), ids, num_segments=S)
  have = sizes - removed_s
  kept = have - a_s
  rem = kept % m
  kept2 = jnp.where(rem == 0, kept, jnp.minimum(have, kept - rem + m))
  a2 = jnp.clip(have - kept2, 0, a_s)
  return sel & (within < a2[ids])


def _cond(pred, true_fn, false_fn, operands):
  """``lax.cond``, or a plain Python branch when ``pred`` is concrete (eager use).

  Under ``jit`` the predicate is traced and ``lax.cond`` is used (one compiled step). Eagerly,
  ``lax.cond`` would re-trace and re-compile its closures on every call.
  """
  if isinstance(pred, jax.core.Tracer):
    return jax.lax.cond(pred, true_fn, false_fn, operands)
  return true_fn(operands) if bool(pred) else false_fn(operands)


def _find_states(opt_state: Any, types: tuple) -> list:
  found = []

  def visit(x):
    if isinstance(x, types):
      found.append(x)
      return True
    return False

  jax.tree_util.tree_leaves(opt_state, is_leaf=visit)
  return found


def _unwrap(x: Any) -> jax.Array:
  # nnx.Optimizer stores state leaves as OptArray/OptVariable variables.
  if hasattr(x, "get_value"):
    x = x.get_value()
  elif hasattr(x, "value") and not isinstance(x, (jax.Array, np.ndarray)):
    x = x.value
  return jnp.asarray(x)


def _state_types() -> tuple:
  from hesso_jax.optim import cric  # local import: cric imports this module

  return (HessoState, cric.CricState)


def _the_state(opt_state: Any, fn: str):
  found = _find_states(opt_state, _state_types())
  if not found:
    raise ValueError(
        f"{fn}: no HessoState/CricState found in the given optimizer state (type "
        f"{type(opt_state).__name__}); pass the state of a hesso()/hesso_cric() transformation "
        "(possibly chained or wrapped)")
  if len(found) > 1:
    raise ValueError(f"{fn}: found {len(found)} HESSO states in the optimizer state; expected one")
  return found[0]


def pruned_mask(opt_state: Any) -> jax.Array:
  """bool (num_groups,): groups committed to exactly zero, from any (nested) optax state."""
  return _unwrap(_the_state(opt_state, "pruned_mask").pruned).astype(bool)


def redundant_mask(opt_state: Any) -> jax.Array:
  """bool (num_groups,): groups currently being forgotten (not yet committed)."""
  return _unwrap(_the_state(opt_state, "redundant_mask").redundant).astype(bool)


# ----------------------------------------------------------------------------------------------
# HESSO
# ----------------------------------------------------------------------------------------------


def hesso(
    base_tx: optax.GradientTransformation,
    space: SearchSpace,
    *,
    target_group_sparsity: Any,
    warmup_steps: Any,
    pruning_steps: Any,
    pruning_periods: Any = 1,
    importance: Mapping[str, float] = sal.DEFAULT_IMPORTANCE,
    multiple_of: Any = 1,
) -> optax.GradientTransformationExtraArgs:
  """HESSO: train with ``base_tx`` while progressively forgetting the least salient groups.

  Let ``G = space.num_groups``, ``R = floor(G * min(s, 0.999))`` (``s = target_group_sparsity``),
  ``W = warmup_steps``, ``K = pruning_periods``, ``T = pruning_steps // K``. With ``step`` the
  0-based index of the ``update`` call and ``u`` the base update:

  1. ``step < W``: return ``u`` (plain training).
  2. ``W <= step < W + K*T``; ``j = (step - W) % T``, period ``k = (step - W) // T``:

     * ``j == 0``: score all groups (:func:`hesso_jax.optim.saliency.saliency` with ``d = -u``)
       and mark *redundant* the lowest-scoring groups that are neither pruned nor redundant,
       ranked globally over all spaces, so that ``floor(R/K)*(k+1)`` groups (``R`` in the last
       period) are removed in total; each space keeps at least ``multiple_of`` groups and, if it
       is pruned at all, a multiple of ``multiple_of`` (see :func:`select_groups`).
     * redundant producer slices ``x`` get ``(x + u) * (T-j-1)/(T-j) - x``; at ``j == T-1`` the
       factor is 0, the groups are exactly zero and are committed as *pruned*.
  3. Always: pruned groups get ``-x``, so they are exactly 0.0 after every step, forever.

  All other elements get ``u`` unchanged (bit-exact). Consumer and state members are never
  touched. The whole schedule runs inside one compiled step (``lax.cond``/``jnp.where`` on the
  traced count); every numeric argument may be traced, so the transformation works under
  ``optax.inject_hyperparams`` (``target_group_sparsity`` included).

  **HESSO must be the outermost transformation.** Its updates are computed against ``params`` so
  that ``optax.apply_updates`` lands exactly on 0.0; a transformation chained *after* it (e.g. a
  scale or a learning rate) breaks the exact zeros. Put clipping, weight decay and learning rate
  inside ``base_tx`` (``optax.chain(...)`` as the base is fine). ``optax.MultiSteps`` around it is
  fine (its inner update is exactly this one).

  Deliberate departures from the reference (only_train_once ``HESSO``):

  * Already pruned/redundant groups are excluded *before* ranking (the reference takes the
    ``|pruned| + q`` lowest and then a set difference truncated by index order, which can pick
    higher-scoring groups).
  * The base is any optax transformation (standard optax Adam, not the reference's
    first-step-``g`` initialisation quirk).
  * The forgetting factor is applied once per element (the reference applies it repeatedly to
    concatenation-auxiliary slices).
  * Step arithmetic: 0-based count, selection at ``j == 0`` of each period and a linear decay
    reaching exactly zero at ``j == T-1`` (T steps, not the reference's T-1).
  * Quota shortfalls (non-finite scores, ``multiple_of`` rounding, per-space caps) carry over to the
    next period via cumulative targets; the reference loses them.
  * ``multiple_of`` caps are applied before the global ranking, so the quota flows to other spaces
    instead of being dropped (with ``multiple_of=1`` the final count is exactly ``R`` whenever
    ``R <= sum(n_s - 1)``).
  * Groups with non-finite saliency are never selected (the reference would rank NaNs).

  Args:
    base_tx: the base optax transformation (sgd, adam, a chain with clipping, ...).
    space: the :class:`SearchSpace` over the params this transformation sees (e.g.
      ``space.subtree('params')``). Paths that differ only by a trailing ``'value'`` (flax.nnx) are
      matched automatically.
    target_group_sparsity: fraction of prunable groups to remove, in [0, 1).
    warmup_steps: plain training steps before pruning starts (>= 0).
    pruning_steps: total length of the pruning window (>= pruning_periods).
    pruning_periods: number of periods the window is split into (>= 1).
    importance: criterion -> weight (see :mod:`hesso_jax.optim.saliency`).
    multiple_of: kept groups per pruned space are a multiple of this (>= 1).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, **extra)``
    requires ``params`` and forwards extra args to the base. State: :class:`HessoState`.
  """
  _check_sparsity("target_group_sparsity", target_group_sparsity)
  _check_int("warmup_steps", warmup_steps, lo=0)
  _check_int("pruning_periods", pruning_periods, lo=1)
  _check_int("pruning_steps", pruning_steps, lo=1)
  _check_int("multiple_of", multiple_of, lo=1)
  cp, ck = _concrete(pruning_steps), _concrete(pruning_periods)
  if cp is not None and ck is not None and ck > cp:
    raise ValueError(
        f"pruning_periods ({pruning_periods}) must not exceed pruning_steps ({pruning_steps}): each "
        "period needs at least one step")
  if not isinstance(space, SearchSpace):
    raise ValueError(f"space must be a hesso_jax.SearchSpace, got {type(space).__name__}")
  weights = sal.validate_importance(importance)
  base = optax.with_extra_args_support(base_tx)
  G = space.num_groups
  _warn_if_unreachable(space, target_group_sparsity, multiple_of)

  def init_fn(params):
    sp = _resolve_space(space, params)
    sp.validate(params)
    return HessoState(
        count=jnp.zeros([], jnp.int32),
        redundant=jnp.zeros((G,), bool),
        pruned=jnp.zeros((G,), bool),
        base_state=base.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("hesso: update() needs params (tx.update(grads, state, params))")
    sp = _resolve_space(space, params)
    u, base_state = base.update(updates, state.base_state, params, **extra_args)

    step = state.count
    W = jnp.asarray(warmup_steps, jnp.int32)
    K = jnp.maximum(jnp.asarray(pruning_periods, jnp.int32), 1)
    T = jnp.maximum(jnp.asarray(pruning_steps, jnp.int32) // K, 1)
    rel = step - W
    in_window = (rel >= 0) & (rel < K * T)
    relc = jnp.maximum(rel, 0)
    j = relc % T
    k = relc // T
    R = target_num_groups(G, target_group_sparsity)
    through_k = jnp.where(k < K - 1, (R // K) * (k + 1), R)

    redundant, pruned = state.redundant, state.pruned
    if G:
      removed = redundant | pruned
      quota = jnp.maximum(through_k - jnp.sum(removed.astype(jnp.int32)), 0)

      def _select(ops):
        x, uu, red, pr = ops
        d = jax.tree_util.tree_map(lambda a: -a, uu)
        scores = sal.saliency(sp, x, d, weights)
        rem = red | pr
        new = select_groups(scores, ~rem, quota, sp, rem, multiple_of)
        return red | new

      redundant = _cond(in_window & (j == 0), _select, lambda ops: ops[2],
                        (params, u, redundant, pruned))
      factor = (T - j - 1).astype(jnp.float32) / (T - j).astype(jnp.float32)
      out = masked_updates(u, params, sp, forget=redundant & in_window, factor=factor, zero=pruned)
      commit = in_window & (j == T - 1)
      pruned = jnp.where(commit, pruned | redundant, pruned)
      redundant = jnp.where(commit, jnp.zeros_like(redundant), redundant)
    else:
      out = u

    return out, HessoState(
        count=optax.safe_int32_increment(step),
        redundant=redundant,
        pruned=pruned,
        base_state=base_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _warn_if_unreachable(space: SearchSpace, s: Any, multiple_of: Any) -> None:
  cs, cm = _concrete(s), _concrete(multiple_of)
  if cs is None or cm is None or space.num_groups == 0:
    return
  R = int(math.floor(space.num_groups * min(float(cs), 0.999) * (1 + 1e-6)))
  cap = sum(max(sp.size - int(cm), 0) for sp in space.prunable_spaces)
  if R > cap:
    warnings.warn(
        f"target_group_sparsity={cs}: R={R} groups requested but at most {cap} can be removed while "
        f"keeping >= multiple_of={cm} groups in every space; the final sparsity will be lower",
        stacklevel=3)
