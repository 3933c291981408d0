"""HESSO as an optax transformation: progressive, saliency-driven forgetting of channel groups.

See :func:`hesso` for the algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from hesso_jax.optim import _common as cm
from hesso_jax.optim import _saliency as sal
from hesso_jax.space import SearchSpace

__all__ = ["HessoState", "hesso"]


class HessoState(NamedTuple):
  """State of :func:`hesso` (all arrays; a pytree).

  Attributes:
    count: int32 scalar, number of ``update`` calls so far (the 0-based index of the next step).
    redundant: bool (G,), groups being forgotten in the current pruning period.
    pruned: bool (G,), groups committed to exactly zero (forever).
    base_state: the base transformation's state.
  """

  count: jax.Array  # type: ignore[assignment]
  redundant: jax.Array
  pruned: jax.Array
  base_state: optax.OptState


# ----------------------------------------------------------------------------------------------
# HESSO
# ----------------------------------------------------------------------------------------------


def hesso(
  base_tx: optax.GradientTransformation,
  space: SearchSpace,
  *,
  target_group_sparsity: ArrayLike,
  warmup_steps: ArrayLike,
  pruning_steps: ArrayLike,
  pruning_periods: ArrayLike = 1,
  importance: Mapping[str, float] = sal.DEFAULT_IMPORTANCE,
  multiple_of: ArrayLike = 1,
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

  Cost: the update is one elementwise expression per producer leaf (the ``(G,)`` masks are
  broadcast inside it), which XLA fuses with the base update and ``optax.apply_updates`` into
  the pass the base optimizer makes anyway; outside selection steps nothing else touches a
  full-size array. Selection steps (``j == 0``, behind a ``lax.cond``) recompute the base update
  for the saliency reductions and rank the ``G`` scores (a within-space sort, a global radix
  selection). With the params and optimizer state donated (``jax.jit(step,
  donate_argnums=...)``) both are updated in place and no weight-sized buffer is copied, as with
  the base optimizer alone.

  Example: four channels of one layer, half of them pruned after one warm-up step and a period of
  two steps (zero gradients, so the two smallest-magnitude channels go)::

    >>> import jax.numpy as jnp, optax, hesso_jax as hj
    >>> space = hj.SearchSpace((hj.ChannelSpace(4, (hj.AxisSlice(("w",), 1),)),))
    >>> params = {"w": jnp.array([[0.1, 2.0, -0.05, 1.0]])}
    >>> tx = hj.hesso(optax.sgd(0.1), space, target_group_sparsity=0.5, warmup_steps=1,
    ...               pruning_steps=2)
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update({"w": jnp.zeros((1, 4))}, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params["w"], hj.pruned_mask(state))
    [[0. 2. 0. 1.]] [ True False  True False]
  """
  cm.check_sparsity("target_group_sparsity", target_group_sparsity)
  cm.check_int("warmup_steps", warmup_steps, lo=0)
  cm.check_int("pruning_periods", pruning_periods, lo=1)
  cm.check_int("pruning_steps", pruning_steps, lo=1)
  cm.check_int("multiple_of", multiple_of, lo=1)
  cp = cm.concrete("pruning_steps", pruning_steps)
  ck = cm.concrete("pruning_periods", pruning_periods)
  if cp is not None and ck is not None and ck > cp:
    raise ValueError(
      f"pruning_periods ({pruning_periods}) must not exceed pruning_steps ({pruning_steps}): "
      "each period needs at least one step"
    )
  cm.check_space(space)
  weights = sal.validate_importance(importance)
  base = optax.with_extra_args_support(base_tx)
  G = space.num_groups
  cm.warn_if_unreachable(space, target_group_sparsity, multiple_of)

  def init_fn(params):
    if not cm.is_params_placeholder(params):
      cm.resolve_space(space, params).validate(params)
    return HessoState(
      count=jnp.zeros([], jnp.int32),
      redundant=jnp.zeros((G,), bool),
      pruned=jnp.zeros((G,), bool),
      base_state=base.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise TypeError("hesso: update() needs params (tx.update(grads, state, params))")
    if G == 0:
      u, base_state = base.update(updates, state.base_state, params, **extra_args)
      return u, state._replace(count=optax.safe_int32_increment(state.count), base_state=base_state)
    sched = _Schedule.at(state.count, warmup_steps, pruning_steps, pruning_periods)
    sp = cm.resolve_space(space, params)
    R = cm.target_num_groups(G, target_group_sparsity)

    def direction():
      # Recomputed inside the selection branch from the step's inputs, so that ``u`` is never a
      # lax.cond operand: XLA then fuses the base update, the masked update below and
      # ``optax.apply_updates`` into one pass, as for the base optimizer alone.
      uu, _ = cm.base_step(base, updates, state.base_state, params, extra_args)
      return jax.tree_util.tree_map(jnp.negative, uu)

    redundant = _select(
      sp, weights, multiple_of, R, sched, params, direction, state.redundant, state.pruned
    )
    forget = redundant & sched.in_window
    # "some group is masked": gates the masked update (see masked_updates) and, being computed
    # from the selection's output, makes the base update wait for the selection (which reads
    # params and the base state), so a donated step overwrites both in place instead of copying
    # the base state every step. One small reduction serves both.
    live = cm.any_set(forget, state.pruned)
    base_in = cm.after(live, state.base_state)
    u, base_state = cm.base_step(base, updates, base_in, params, extra_args)
    out, redundant, pruned = _forget(sp, sched, params, u, redundant, forget, state.pruned, live)
    return out, HessoState(
      count=optax.safe_int32_increment(state.count),
      redundant=redundant,
      pruned=pruned,
      base_state=base_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _Schedule(NamedTuple):
  """Where step ``count`` sits in the pruning schedule (all traced int32/bool scalars)."""

  in_window: jax.Array  # warmup <= count < warmup + K*T
  j: jax.Array  # step inside the current period
  k: jax.Array  # period index
  T: jax.Array  # period length
  K: jax.Array  # number of periods

  @classmethod
  def at(
    cls,
    count: jax.Array,
    warmup_steps: ArrayLike,
    pruning_steps: ArrayLike,
    pruning_periods: ArrayLike,
  ) -> _Schedule:
    W = jnp.asarray(warmup_steps, jnp.int32)
    K = jnp.maximum(jnp.asarray(pruning_periods, jnp.int32), 1)
    T = jnp.maximum(jnp.asarray(pruning_steps, jnp.int32) // K, 1)
    rel = count - W
    relc = jnp.maximum(rel, 0)
    return cls((rel >= 0) & (rel < K * T), relc % T, relc // T, T, K)


def _select(
  sp: SearchSpace,
  weights: dict,
  multiple_of: ArrayLike,
  R: jax.Array,
  sched: _Schedule,
  params: Any,
  direction: Callable[[], Any],
  redundant: jax.Array,
  pruned: jax.Array,
) -> jax.Array:
  """The redundant set after this step's selection (at ``j == 0``, behind a ``lax.cond``)."""

  def select(red):
    # all of it inside the branch: a step that does not select runs none of these reductions
    through_k = jnp.where(sched.k < sched.K - 1, (R // sched.K) * (sched.k + 1), R)
    removed = red | pruned
    quota = jnp.maximum(through_k - jnp.sum(removed.astype(jnp.int32)), 0)
    scores = sal.saliency(sp, params, direction(), weights)
    return red | cm.select_groups(scores, ~removed, quota, sp, removed, multiple_of)

  return cm.cond(sched.in_window & (sched.j == 0), select, lambda red: red, redundant)


def _forget(
  sp: SearchSpace,
  sched: _Schedule,
  params: Any,
  u: Any,
  redundant: jax.Array,
  forget: jax.Array,
  pruned: jax.Array,
  live: jax.Array,
) -> tuple[Any, jax.Array, jax.Array]:
  """Forget the redundant groups, commit them at ``j == T-1``, keep pruned groups at zero.

  The update is one elementwise expression per leaf (``forget = redundant & in_window``; ``live``
  = any mask set), which fuses with the base update and ``apply_updates``.
  """
  factor = cm.decay_factor(sched.T, sched.j)
  out = cm.masked_updates(u, params, sp, forget=forget, factor=factor, zero=pruned, live=live)
  commit = sched.in_window & (sched.j == sched.T - 1)
  pruned = jnp.where(commit, pruned | redundant, pruned)
  redundant = jnp.where(commit, jnp.zeros_like(redundant), redundant)
  return out, redundant, pruned
