"""HESSO-CRIC: HESSO with a Corrective Redundant Identification Cycle before the one-shot selection.

See :func:`hesso_cric` for the schedule. The step is composed of small pure functions, one per
concern: :func:`cric_phase` (where a step sits in the schedule), :func:`probe_update` (trial
projections and their loss ratios), :func:`cycle_update` (violating sets and termination) and
:func:`final_selection` (the one-shot ranking at termination).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from hesso_jax.optim import _common as cm
from hesso_jax.optim import _saliency as sal
from hesso_jax.space import SearchSpace

__all__ = [
  "CricPhase",
  "CricState",
  "DEFAULT_CRIC_IMPORTANCE",
  "cric_phase",
  "cric_schedule",
  "cycle_update",
  "final_selection",
  "hesso_cric",
  "loss_criterion",
  "probe_update",
]

#: The reference's CRIC defaults: the five saliency criteria at 0.2 plus ``'loss': 1.0``.
DEFAULT_CRIC_IMPORTANCE: Mapping[str, float] = {**sal.DEFAULT_IMPORTANCE, "loss": 1.0}

_NOT_YET = np.iinfo(np.int32).max  # `end` before termination


class CricState(NamedTuple):
  """State of :func:`hesso_cric` (all arrays; a pytree).

  Attributes:
    count: int32, number of ``update`` calls so far (0-based index of the next step).
    redundant: bool (G,), the finally selected groups while they are forgotten (hybrid phase).
    pruned: bool (G,), groups committed to exactly zero (forever).
    active: bool (G,), the current cycle's violating set.
    trial: bool (G,), groups that fell into the bottom-R during cycles and are not yet tested.
    historical: bool (G,), every group that has been a violating set member.
    score_sum: float32 (G,), running sum of the recorded saliency scores.
    score_count: int32 (G,), number of finite scores recorded per group.
    loss_ratio: float32 (num_spaces, num_trials), loss / ref_loss of each trial projection.
    ref_loss: float32, the loss at ``start_cric_step`` (on the cached parameters).
    end: int32, the step at which hybrid training starts (int32 max until CRIC terminates).
    cache: the parameters cached at ``start_cric_step`` (same structure and dtypes as params).
    base_state: the base transformation's state.
  """

  count: jax.Array  # type: ignore[assignment]
  redundant: jax.Array
  pruned: jax.Array
  active: jax.Array
  trial: jax.Array
  historical: jax.Array
  score_sum: jax.Array
  score_count: jax.Array
  loss_ratio: jax.Array
  ref_loss: jax.Array
  end: jax.Array
  cache: Any
  base_state: optax.OptState


def cric_schedule(
  space: SearchSpace,
  *,
  start_cric_step: int,
  sampling_steps: int,
  max_cycle_period: int,
  hybrid_training_steps: int,
  trial_sparsities: Sequence[float] = (0.25, 0.5, 0.75),
) -> dict:
  """Static facts of the schedule (Python ints), for planning a run.

  Returns ``probe_start``, ``probe_steps`` (= 2 * num_spaces * num_trials), ``cycles_start``,
  ``latest_end`` (the latest step at which hybrid training can start) and ``latest_done`` (the
  latest step after which every selected group is committed).
  """
  n = len(space.prunable_spaces) if space.num_groups else 0
  probe = 2 * n * len(tuple(trial_sparsities))
  cyc0 = start_cric_step + probe
  latest_end = cyc0 + max_cycle_period * sampling_steps + 1
  return dict(
    probe_start=start_cric_step,
    probe_steps=probe,
    cycles_start=cyc0,
    latest_end=latest_end,
    latest_done=latest_end + hybrid_training_steps,
  )


# ----------------------------------------------------------------------------------------------
# the phase functions (pure; each unit-tested)
# ----------------------------------------------------------------------------------------------


class CricPhase(NamedTuple):
  """Where a step sits in the CRIC schedule (traced int32 / bool scalars)."""

  probing: jax.Array  # c0 <= step < c0 + 2*N*L
  first: jax.Array  # the first probing step (cache and reference loss)
  proj: jax.Array  # an even probing step: zero the trial's groups
  meas: jax.Array  # an odd probing step: measure the projected loss, restore the cache
  trial_ix: jax.Array  # index of the current trial, space * L + sparsity
  cycling: jax.Array  # c0 + 2*N*L <= step < end
  cycle: jax.Array  # cycle index c
  jc: jax.Array  # step inside the cycle
  boundary: jax.Array  # a cycle's first step
  hybrid: jax.Array  # step >= end
  jh: jax.Array  # step inside hybrid training
  forgetting: jax.Array  # end <= step < end + H


def cric_phase(
  step: jax.Array,
  end: jax.Array,
  *,
  start: ArrayLike,
  sampling_steps: ArrayLike,
  hybrid_steps: ArrayLike,
  num_trials: int,
) -> CricPhase:
  """The phase of ``step``: a pure function of ``(step, end)`` and the static schedule."""
  i32 = lambda v: jnp.asarray(v, jnp.int32)
  c0, S, H = i32(start), i32(sampling_steps), i32(hybrid_steps)
  P0 = c0 + 2 * num_trials  # first cycle step
  v = jnp.maximum(step - c0, 0)
  probing = (step >= c0) & (step < P0)
  cycling = (step >= P0) & (step < end)
  r = jnp.maximum(step - P0, 0)
  hybrid = step >= end
  jh = jnp.maximum(step - end, 0)
  return CricPhase(
    probing=probing,
    first=probing & (v == 0),
    proj=probing & (v % 2 == 0),
    meas=probing & (v % 2 == 1),
    trial_ix=jnp.minimum(v // 2, max(num_trials - 1, 0)),
    cycling=cycling,
    cycle=r // S,
    jc=r % S,
    boundary=cycling & (r % S == 0),
    hybrid=hybrid,
    jh=jh,
    forgetting=hybrid & (jh < H),
  )


def probe_update(
  ph: CricPhase,
  score: jax.Array,
  ratio: jax.Array,
  loss_ratio: jax.Array,
  space: SearchSpace,
  ktab: np.ndarray,
  num_trials_per_space: int,
) -> tuple[jax.Array, jax.Array]:
  """(bool (G,) groups to zero this step, updated (N, L) loss ratios).

  On a projection step the ``ktab[t]`` lowest-``score`` groups of trial ``t``'s space are zeroed;
  on a measurement step ``ratio`` (projected loss / reference loss) is recorded for trial ``t``.
  """
  ids = jnp.asarray(space.space_ids())

  def project(sc):
    within = cm.within_space_rank(jnp.where(jnp.isfinite(sc), sc, jnp.inf), space)
    return (ids == ph.trial_ix // num_trials_per_space) & (within < jnp.asarray(ktab)[ph.trial_ix])

  # the within-space sort only on projection steps (a lax.cond under jit)
  proj_mask = cm.cond(ph.proj, project, lambda sc: jnp.zeros(sc.shape, bool), score)
  flat = loss_ratio.reshape(-1)
  flat = jnp.where(ph.meas & (jnp.arange(flat.shape[0]) == ph.trial_ix), ratio, flat)
  return proj_mask, flat.reshape(loss_ratio.shape)


class CycleSets(NamedTuple):
  active: jax.Array  # this cycle's violating set
  trial: jax.Array  # bottom-R groups not yet tested
  historical: jax.Array  # every group that has been violating
  terminate: jax.Array  # scalar: this step ends the cycles


def cycle_update(
  ph: CricPhase,
  score: jax.Array,
  R: jax.Array,
  sets: CycleSets,
  *,
  max_cycles: ArrayLike,
  tolerance: ArrayLike,
) -> CycleSets:
  """The violating-set bookkeeping of one step (Algorithm CRIC, lines 4, 8, 14, 16).

  At a boundary the next violating set is the bottom ``R`` (first cycle) or the trial set minus
  every earlier violating set. Cycling stops at a boundary (``c >= 1``) when that set has at most
  ``tolerance`` groups (empty, by default: the last cycle brought no new candidate) or when
  ``max_cycles`` cycles ran. Every cycling step adds the current bottom ``R`` to the trial set.
  """
  # the global bottom-R selection only on cycling steps (a lax.cond under jit)
  bottom = cm.cond(
    ph.cycling, lambda sc: cm.lowest_k(sc, R), lambda sc: jnp.zeros(sc.shape, bool), score
  )
  nxt = sets.trial & ~sets.historical
  n_new = jnp.sum(nxt.astype(jnp.int32))
  c = ph.cycle
  terminate = (
    ph.boundary
    & (c >= 1)
    & ((c >= jnp.asarray(max_cycles, jnp.int32)) | (n_new <= jnp.asarray(tolerance, jnp.int32)))
  )
  start = ph.boundary & ~terminate
  active = jnp.where(start, jnp.where(c == 0, bottom, nxt), sets.active)
  active = jnp.where(terminate | ~ph.cycling, jnp.zeros_like(active), active)
  historical = sets.historical | (start & active)
  trial = jnp.where(
    ph.cycling & ~terminate, (sets.trial | bottom) & ~active & ~historical, sets.trial
  )
  return CycleSets(active, trial, historical, terminate)


def loss_criterion(
  loss_ratio: jax.Array, mean_score: jax.Array, space: SearchSpace, ktab: np.ndarray
) -> jax.Array:
  """(G,) the probes' loss signal per group: a log loss ratio (0 = harmless to remove).

  Each group gets the log loss ratio of the *smallest* trial projection of its space that
  removed it (ranked by its mean saliency inside the space): the marginal cost of losing the
  band of groups it belongs to. Groups no trial removed get their space's largest cost. A
  trial's cost is the largest over the trials of its space that zero at most as many groups (a
  running maximum), so the term never decreases with the saliency rank inside a space. Logs
  (clipped at 0: a probe that lowered the loss costs nothing) keep a near-zero reference loss
  from blowing ratios up to 1e3..1e4 and drowning the saliency terms. ``ktab`` is the (N, L)
  table of group counts zeroed by each trial.
  """
  ids = jnp.asarray(space.space_ids())
  cost = jnp.log(jnp.maximum(jnp.where(jnp.isfinite(loss_ratio), loss_ratio, 1e30), 1.0))
  # A larger trial zeroes a superset of a smaller one's groups, so its cost is at least theirs:
  # a lower measured ratio (noise, or a loss saturated far above a tiny reference loss) must not
  # make a higher-saliency band cheaper than a lower one and reverse the saliency order.
  kk = np.asarray(ktab)
  cost = jnp.max(jnp.where(jnp.asarray(kk[:, None, :] <= kk[:, :, None]), cost[:, None, :], 0.0), 2)
  within = cm.within_space_rank(jnp.where(jnp.isfinite(mean_score), mean_score, jnp.inf), space)
  k = jnp.asarray(ktab)[ids]  # (G, L) group counts per trial
  in_trial = within[:, None] < k  # removed by trial t?
  first = jnp.argmin(jnp.where(in_trial, k, jnp.iinfo(jnp.int32).max), axis=1)  # smallest trial
  c = cost[ids]  # (G, L)
  g_cost = jnp.where(
    jnp.any(in_trial, axis=1), jnp.take_along_axis(c, first[:, None], 1)[:, 0], jnp.max(c, axis=1)
  )
  return g_cost


def final_selection(
  score_sum: jax.Array,
  score_count: jax.Array,
  loss_ratio: jax.Array,
  loss_weight: float,
  space: SearchSpace,
  ktab: np.ndarray,
  R: jax.Array,
  multiple_of: ArrayLike,
) -> jax.Array:
  """bool (G,): the ``R`` groups with the lowest mean saliency + ``loss_weight`` * loss term.

  The loss term (:func:`loss_criterion`, a log loss ratio) is scaled by the mean absolute mean
  saliency, so it is in the saliency's units and a negligible loss change stays negligible.
  """
  G = space.num_groups
  mean_score = jnp.where(score_count > 0, score_sum / jnp.maximum(score_count, 1), jnp.inf)
  finite = jnp.isfinite(mean_score)
  unit = jnp.sum(jnp.where(finite, jnp.abs(mean_score), 0.0)) / jnp.maximum(jnp.sum(finite), 1)
  cost = loss_criterion(loss_ratio, mean_score, space, ktab)
  final = mean_score + loss_weight * unit * cost
  final = jnp.where(jnp.isfinite(final), final, jnp.inf)
  return cm.select_groups(final, jnp.ones((G,), bool), R, space, jnp.zeros((G,), bool), multiple_of)


def hesso_cric(
  base_tx: optax.GradientTransformation,
  space: SearchSpace,
  *,
  target_group_sparsity: ArrayLike,
  start_cric_step: ArrayLike = 0,
  sampling_steps: ArrayLike | None = None,
  max_cycle_period: ArrayLike = 10,
  tolerance: ArrayLike = 0,
  hybrid_training_steps: ArrayLike | None = None,
  trial_sparsities: Sequence[float] = (0.25, 0.5, 0.75),
  importance: Mapping[str, float] = DEFAULT_CRIC_IMPORTANCE,
  multiple_of: ArrayLike = 1,
  cycle_forgetting: str = "gradual",
) -> optax.GradientTransformationExtraArgs:
  """HESSO-CRIC: probe, correct, then select ``R`` groups at once and forget them like HESSO.

  The loss must be passed every step, in one of two ways:

  * ``tx.update(grads, state, params, value=loss)`` with ``loss`` computed on ``params`` (the
    usual ``jax.value_and_grad`` output). The reference loss (step ``c0``) and each trial's loss
    then come from different minibatches, which adds minibatch noise to the loss ratios.
  * ``tx.update(grads, state, params, value_fn=lambda p: loss_fn(p, batch))`` (recommended):
    on each measurement step CRIC evaluates the projected model and the cached reference model
    on the *same* current batch (two extra forward passes, inside a ``lax.cond``, only on the
    ``N*L`` measurement steps), so the ratio measures the projection, not the batch. ``value``
    may be given as well (it is then forwarded to the base transformation).

  ``G``, ``R``,
  ``multiple_of`` are as in :func:`hesso_jax.hesso`; ``N`` = number of prunable spaces,
  ``L = len(trial_sparsities)``, ``S = sampling_steps``, ``C = max_cycle_period``,
  ``H = hybrid_training_steps``. With ``step`` the 0-based index of the ``update`` call:

  1. ``step < start_cric_step``: plain training (the base update ``u``).
  2. Probing, ``2*N*L`` steps from ``c0 = start_cric_step``; ``v = step - c0``, trial
     ``t = v // 2`` (space ``t // L``, sparsity ``trial_sparsities[t % L]``). At ``v == 0`` the
     parameters are cached (one full copy: **memory cost = one extra set of parameters**) and the
     loss is the reference loss. Even ``v``: saliency is recorded and the
     ``max(1, floor(n_s * tau))`` lowest-scoring groups of that space are zeroed (no other
     parameter moves). Odd ``v``: the loss of the projected model is recorded as a ratio to the
     reference loss (``value / ref_loss``, or both from ``value_fn`` on the current batch) and
     the cache is restored (update ``cache - params``; exact, as nothing
     else moved).
  3. Cycles of ``S`` steps from ``c0 + 2*N*L``; cycle ``c``, local step ``j``. Saliency is
     recorded every step (running sum and count per group). At ``j == 0`` the violating set is
     the ``R`` lowest-scoring groups (``c == 0``) or the trial set minus all earlier violating
     sets (``c >= 1``), the parameters are restored from the cache, and the violating set is
     forgotten with HESSO's factor ``(S-j-1)/(S-j)`` (exactly zero at ``j == S-1``) while the rest
     trains normally. Every step, groups that fall into the bottom ``R`` and were never
     violating join the trial set. A cycle boundary with ``c >= C`` or with ``<= tolerance`` new
     violating groups terminates instead (at most ``C`` cycles run).
  4. Termination step: final score = mean recorded saliency + ``importance['loss']`` * the loss
     criterion: each group's cost is ``log(max(loss_ratio, 1))`` (running maximum over the
     space's trials by size) of the smallest trial projection of its space that removed it
     (ranked by mean saliency within the space; groups no trial removed get the space's largest
     cost), in units of the mean saliency (a probe that
     multiplies the loss by ``e`` shifts its band by one mean saliency). The ``R`` lowest are
     selected (with ``multiple_of``, like HESSO) and the cache is restored.
  5. Hybrid training over ``H`` steps: the selected groups get ``(x + u)*(H-j-1)/(H-j) - x`` and
     are committed as pruned at ``j == H-1``. Pruned groups are exactly 0.0 after every step.

  The whole schedule is a pure function of ``count`` and the state's ``end`` (the step at which
  hybrid training starts), in one compiled step. The latest possible end is
  ``c0 + 2*N*L + C*S + 1`` (:func:`cric_schedule`).

  Cost: the update is one elementwise expression per leaf, fused by XLA with the base update and
  ``optax.apply_updates``; on top of the base optimizer's pass it reads the parameter cache (for
  the restores on measurement and boundary steps). The snapshot at ``c0`` is a ``lax.cond``:
  with the optimizer state donated (``jax.jit(step, donate_argnums=...)``) the cache is updated
  in place and never copied outside that step; without donation XLA copies it into a fresh
  output buffer every step, as it does for every state leaf.
  Probing and cycle steps recompute the base update for the saliency reductions (behind a
  ``lax.cond``); the final ranking runs only on the termination step.

  When cycling stops: a cycle adds to the trial set the groups that fall into the bottom ``R``
  while its violating set is being forgotten; the next cycle tests those not tested yet, and an
  empty set ends the cycles (``tolerance``). How fast the violating set shrinks decides this.
  With ``cycle_forgetting="immediate"`` (the reference) it is zero from the first step, so the
  bottom ``R`` is largely that zeroed set itself, fewer other groups enter, and cycling can end
  after the first cycle, as the reference's usually does. With ``"gradual"`` (the default) the
  set keeps part of its weight through the cycle, so groups that only look important next to it
  can fall into the bottom ``R`` and get tested, and more cycles run (up to
  ``max_cycle_period``). An early stop therefore reflects the forgetting schedule more than a
  converged ranking. (A zeroed group is not always in the bottom ``R``: its cosine-similarity
  term is 1, the middle of that criterion's range, so at high sparsity the immediate schedule
  runs as many cycles as the gradual one.)

  Why final counts may sit on trial-sparsity boundaries: the loss criterion is constant on each
  *band* of a space (the groups first removed by the same trial projection, i.e. within-space
  saliency ranks in ``[floor(n_s*tau_{i-1}), floor(n_s*tau_i))``). When the loss term is large
  next to the saliency spread, the final ranking is decided band by band, so a space loses whole
  bands and its pruned count lands on ``floor(n_s * tau)`` (e.g. 64 of 128 with ``tau = 0.5``).
  The saliency terms order groups inside a band and decide where the last, partial band is cut.
  The loss term is therefore kept in absolute units: a probe that barely moves the loss (ratio
  1.002) shifts its band by 0.2% of the mean saliency and only refines the saliency ranking; a
  probe that doubles the loss shifts it by 0.7 mean saliencies and protects the band. (An
  earlier version normalised the costs by their own norm, which blew noise-level differences up
  to full weight and put the final counts on band edges.)

  Like :func:`hesso_jax.hesso`, this must be the outermost transformation. Departures from the
  reference (only_train_once ``HESSOCRIC``): ``start_cric_step=0`` works (0-based count);
  probing records saliency only on the unprojected parameters; the cycle forgetting factor
  starts at ``(S-1)/S`` on the restored parameters (the reference zeroes at once, then damps;
  ``cycle_forgetting="immediate"`` follows it);
  the final ranking excludes nothing (the reference's important list excludes the last violating
  set); unprunable spaces keep training during cycles (the reference freezes them); non-finite
  scores or loss ratios make groups never selected. The loss term is a per-group criterion in
  units of the mean saliency rather than the raw ``mean ratio / set size`` added to every group
  of a space: with a near-zero reference loss (a well-fit small model) raw ratios reach
  1e3..1e4, swamp the saliency terms and prune whole layers by space.

  Args:
    base_tx: the base optax transformation.
    space: the search space over the params this transformation sees.
    target_group_sparsity: fraction of prunable groups to remove, in [0, 1).
    start_cric_step: plain steps before probing (>= 0).
    sampling_steps: length of a cycle (>= 1). Required.
    max_cycle_period: most cycles run (>= 1).
    tolerance: stop when a cycle ends with at most this many new violating groups (>= 0).
    hybrid_training_steps: length of the final forgetting period (>= 1). Required.
    trial_sparsities: fractions of each space zeroed in the probes (each in (0, 1)).
    importance: saliency criteria weights plus ``'loss'`` (the loss-ratio weight).
    multiple_of: kept groups per pruned space are a multiple of this (>= 1).
    cycle_forgetting: ``"gradual"`` (default): a violating set is forgotten over the cycle with
      factors ``(S-1)/S, ..., 0`` on the restored parameters. ``"immediate"``: the reference's
      schedule: zeroed at the cycle's first step, then its regrowth damped by ``(S-1)/S, ...,
      1/2`` (see "When cycling stops" above).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params, *, value=None,
    value_fn=None, **extra)`` needs ``params`` and ``value`` or ``value_fn``. State:
    :class:`CricState`.

  Example: a 4-channel layer under a weight-decay loss; one probe, one cycle of two steps, then a
  two-step hybrid period removes the two smallest channels::

    >>> import jax, jax.numpy as jnp, optax, hesso_jax as hj
    >>> space = hj.SearchSpace((hj.ChannelSpace(4, (hj.AxisSlice(("w",), 1),)),))
    >>> params = {"w": jnp.array([[0.1, 2.0, -0.05, 1.0]])}
    >>> loss_fn = lambda p: jnp.sum(p["w"] ** 2)
    >>> tx = hj.hesso_cric(optax.sgd(0.1), space, target_group_sparsity=0.5, sampling_steps=2,
    ...                    max_cycle_period=1, hybrid_training_steps=2, trial_sparsities=(0.5,))
    >>> state = tx.init(params)
    >>> for _ in range(7):
    ...   updates, state = tx.update(jax.grad(loss_fn)(params), state, params, value_fn=loss_fn)
    ...   params = optax.apply_updates(params, updates)
    >>> print(hj.pruned_mask(state), params["w"][0, ::2])
    [ True False  True False] [0. 0.]
  """
  trials, weights, loss_w = _check_args(
    space,
    target_group_sparsity=target_group_sparsity,
    start_cric_step=start_cric_step,
    sampling_steps=sampling_steps,
    max_cycle_period=max_cycle_period,
    tolerance=tolerance,
    hybrid_training_steps=hybrid_training_steps,
    trial_sparsities=trial_sparsities,
    importance=importance,
    multiple_of=multiple_of,
    cycle_forgetting=cycle_forgetting,
  )
  cm.warn_if_unreachable(space, target_group_sparsity, multiple_of)
  base = optax.with_extra_args_support(base_tx)
  G = space.num_groups
  N = len(space.prunable_spaces) if G else 0
  L = len(trials)
  # number of groups zeroed by trial t = (space t // L, sparsity t % L)
  ktab = np.array(
    [max(1, int(np.floor(s.size * tau))) for s in space.prunable_spaces for tau in trials] or [0],
    np.int32,
  )
  cfg = _Config(
    weights,
    loss_w,
    ktab,
    L,
    multiple_of,
    max_cycle_period,
    tolerance,
    sampling_steps,  # type: ignore[arg-type]
    hybrid_training_steps,  # type: ignore[arg-type]
    cycle_forgetting == "immediate",
  )

  def init_fn(params):
    return _init_state(space, base, params, num_trials=(N, L))

  def update_fn(updates, state, params=None, *, value=None, value_fn=None, **extra_args):
    _require_loss(params, value, value_fn)
    if value is not None:
      extra_args = {**extra_args, "value": value}
    count = optax.safe_int32_increment(state.count)
    if G == 0:
      u, base_state = base.update(updates, state.base_state, params, **extra_args)
      return u, state._replace(count=count, base_state=base_state)
    sp = cm.resolve_space(space, params)
    ph = cric_phase(
      state.count,
      state.end,
      start=start_cric_step,
      sampling_steps=sampling_steps,
      hybrid_steps=hybrid_training_steps,
      num_trials=N * L,
    )
    # The snapshot sits behind a lax.cond and everything below reads the cache it returns (the
    # snapshot step never restores or measures, so that is the incoming cache wherever it is
    # read). A select here, or restores that read the incoming cache, would cost a full copy of
    # the parameters every step: the cache and the params are both overwritten in place, each
    # by a computation that still reads the other.
    cache = cm.cond(ph.first, lambda ops: ops[0], lambda ops: ops[1], (params, state.cache))
    ref_loss, ratio = _loss_terms(ph, value, value_fn, params, cache, state.ref_loss)
    R = cm.target_num_groups(G, target_group_sparsity)
    small = state._replace(ref_loss=ref_loss, cache=None, base_state=None)

    def direction():
      # Recomputed inside the scoring branch so that ``u`` is never a lax.cond operand.
      uu, _ = cm.base_step(base, updates, state.base_state, params, extra_args)
      return jax.tree_util.tree_map(jnp.negative, uu)

    small, proj_mask, score = _cric_select(cfg, sp, ph, R, ratio, params, direction, small)
    forget, zero = _cric_masks(ph, small, proj_mask)
    # One scalar serves twice: it gates the masked update (true whenever a mask is set or a
    # restore or a probing hold is due; see masked_updates) and, being computed from every
    # cond's output (the score, the final selection, the loss ratio), it makes the base update
    # wait for those conds (which read params and the base state), so a donated step overwrites
    # both in place instead of copying them every step. One small reduction, as in HESSO.
    live = cm.any_set(forget, zero, small.redundant, jnp.isnan(score))
    live = live | ph.probing | ph.boundary | jnp.isnan(ratio)
    base_in = cm.after(live, state.base_state)
    u, base_state = cm.base_step(base, updates, base_in, params, extra_args)
    out, small = _cric_forget(cfg, sp, ph, params, cache, u, forget, zero, live, small)
    return out, small._replace(count=count, cache=cache, base_state=base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _init_state(space: SearchSpace, base: Any, params: Any, *, num_trials: tuple[int, int]):
  """A fresh :class:`CricState` (``num_trials`` = (probed spaces, trial sparsities))."""
  if not cm.is_params_placeholder(params):
    cm.resolve_space(space, params).validate(params)
  G = space.num_groups
  zeros_b = jnp.zeros((G,), bool)
  return CricState(
    count=jnp.zeros([], jnp.int32),
    redundant=zeros_b,
    pruned=zeros_b,
    active=zeros_b,
    trial=zeros_b,
    historical=zeros_b,
    score_sum=jnp.zeros((G,), jnp.float32),
    score_count=jnp.zeros((G,), jnp.int32),
    loss_ratio=jnp.zeros(num_trials, jnp.float32),
    ref_loss=jnp.zeros([], jnp.float32),
    end=jnp.asarray(_NOT_YET, jnp.int32),
    cache=jax.tree_util.tree_map(jnp.array, params),
    base_state=base.init(params),
  )


def _require_loss(params: Any, value: Any, value_fn: Any) -> None:
  """CRIC's update needs the parameters and the loss (``value=`` or ``value_fn=``)."""
  if params is None:
    raise TypeError(
      "hesso_cric: update() needs params (tx.update(grads, state, params, value=loss))"
    )
  if value is None and value_fn is None:
    raise TypeError(
      "hesso_cric: update() needs the loss: tx.update(grads, state, params, "
      "value=loss) or value_fn=lambda p: loss_fn(p, batch)"
    )


def _check_args(
  space: SearchSpace,
  *,
  target_group_sparsity: ArrayLike,
  start_cric_step: ArrayLike,
  sampling_steps: ArrayLike | None,
  max_cycle_period: ArrayLike,
  tolerance: ArrayLike,
  hybrid_training_steps: ArrayLike | None,
  trial_sparsities: Sequence[float],
  importance: Mapping[str, float],
  multiple_of: ArrayLike,
  cycle_forgetting: str,
) -> tuple[tuple[float, ...], dict, float]:
  """Validate :func:`hesso_cric`'s arguments; returns (trials, saliency weights, loss weight)."""
  if sampling_steps is None:
    raise TypeError(
      "hesso_cric: sampling_steps (the length of one CRIC cycle, e.g. 10-100 steps) is required"
    )
  if hybrid_training_steps is None:
    raise TypeError(
      "hesso_cric: hybrid_training_steps (the length of the final forgetting period) is required"
    )
  cm.check_sparsity("target_group_sparsity", target_group_sparsity)
  cm.check_int("start_cric_step", start_cric_step, lo=0)
  cm.check_int("sampling_steps", sampling_steps, lo=1)
  cm.check_int("max_cycle_period", max_cycle_period, lo=1)
  cm.check_int("tolerance", tolerance, lo=0)
  cm.check_int("hybrid_training_steps", hybrid_training_steps, lo=1)
  cm.check_int("multiple_of", multiple_of, lo=1)
  if cycle_forgetting not in ("gradual", "immediate"):
    raise ValueError(f"cycle_forgetting must be 'gradual' or 'immediate', got {cycle_forgetting!r}")
  trials = _check_trials(trial_sparsities)
  cm.check_space(space)
  weights = sal.validate_importance(importance, extra=("loss",))
  loss_w = weights.pop("loss", 0.0)
  if not weights:
    raise ValueError("importance: at least one saliency criterion besides 'loss' is needed")
  return trials, weights, loss_w


def _check_trials(trial_sparsities: Sequence[float]) -> tuple[float, ...]:
  try:
    trials = tuple(float(t) for t in trial_sparsities)
  except TypeError as e:
    raise TypeError(
      f"trial_sparsities must be a sequence of numbers, got {trial_sparsities!r}"
    ) from e
  if not trials or any(not 0.0 < t < 1.0 for t in trials):
    raise ValueError(
      f"trial_sparsities must be a non-empty sequence of values in (0, 1), got {trial_sparsities!r}"
    )
  return trials


class _Config(NamedTuple):
  """The static configuration a CRIC step needs (hyper-parameters may be traced)."""

  weights: dict
  loss_weight: float
  ktab: np.ndarray
  num_trial_sparsities: int
  multiple_of: ArrayLike
  max_cycles: ArrayLike
  tolerance: ArrayLike
  sampling_steps: ArrayLike
  hybrid_steps: ArrayLike
  immediate: bool  # cycle_forgetting="immediate": zero the violating set at the cycle's start


def _loss_terms(
  ph: CricPhase,
  value: ArrayLike | None,
  value_fn: Callable | None,
  params: Any,
  cache: Any,
  ref_loss: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """(reference loss, projected / reference loss ratio of this step).

  With ``value_fn`` both losses are evaluated on the current batch on measurement steps (the
  forward passes sit inside ``lax.cond``); otherwise the ratio is ``value / ref_loss``.
  """
  f32 = lambda v: jnp.asarray(v, jnp.float32).reshape(())
  if value_fn is None:
    ref_loss = jnp.where(ph.first, f32(value), ref_loss)
    num, den = f32(value), ref_loss
  else:
    ref_loss = cm.cond(ph.first, lambda p: f32(value_fn(p)), lambda p: ref_loss, params)
    num, den = cm.cond(
      ph.meas,
      lambda ops: (f32(value_fn(ops[0])), f32(value_fn(ops[1]))),
      lambda ops: (jnp.ones([], jnp.float32), jnp.ones([], jnp.float32)),
      (params, cache),
    )
  return ref_loss, jnp.where(den != 0, num / den, jnp.inf)


def _cric_select(
  cfg: _Config,
  sp: SearchSpace,
  ph: CricPhase,
  R: jax.Array,
  ratio: jax.Array,
  params: Any,
  direction: Callable[[], Any],
  st: CricState,
) -> tuple[CricState, jax.Array, jax.Array]:
  """The small-state half of a step: scores, probes, cycle sets and the final selection.

  The saliency (of ``direction()``), the selections and the final ranking sit behind
  ``lax.cond``s on their phases. Returns (the small state fields after this step's bookkeeping,
  the groups a probe zeroes this step, the recorded score). ``redundant`` is the final
  selection from the termination step on; committing it as pruned is :func:`_cric_forget`'s.
  """
  G = sp.num_groups
  record = ph.proj | ph.cycling

  def score_fn(x):
    return sal.saliency(sp, x, direction(), cfg.weights)

  score = cm.cond(record, score_fn, lambda x: jnp.zeros((G,), jnp.float32), params)
  ok = record & jnp.isfinite(score)
  score_sum = st.score_sum + jnp.where(ok, score, 0.0)
  score_count = st.score_count + ok.astype(jnp.int32)
  proj_mask, loss_ratio = probe_update(
    ph, score, ratio, st.loss_ratio, sp, cfg.ktab, cfg.num_trial_sparsities
  )
  sets = cycle_update(
    ph,
    score,
    R,
    CycleSets(st.active, st.trial, st.historical, False),  # type: ignore[arg-type]
    max_cycles=cfg.max_cycles,
    tolerance=cfg.tolerance,
  )
  ktab_nl = cfg.ktab.reshape(-1, cfg.num_trial_sparsities)
  redundant = cm.cond(
    sets.terminate,
    lambda ops: final_selection(*ops, cfg.loss_weight, sp, ktab_nl, R, cfg.multiple_of),  # type: ignore[call-arg]
    lambda ops: st.redundant,
    (score_sum, score_count, loss_ratio),
  )
  new = st._replace(
    redundant=redundant,
    active=sets.active,
    trial=sets.trial,
    historical=sets.historical,
    score_sum=score_sum,
    score_count=score_count,
    loss_ratio=loss_ratio,
    end=jnp.where(sets.terminate, st.count + 1, st.end),
  )
  return new, proj_mask, score


def _cric_masks(ph: CricPhase, st: CricState, proj_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(forget, zero) group masks of this step: the cycle's violating set or the final selection
  being forgotten; pruned groups and this step's projection zeroed."""
  forget = jnp.where(ph.cycling, st.active, st.redundant & ph.forgetting)
  return forget, st.pruned | proj_mask


def _cric_forget(
  cfg: _Config,
  sp: SearchSpace,
  ph: CricPhase,
  params: Any,
  cache: Any,
  u: Any,
  forget: jax.Array,
  zero: jax.Array,
  live: jax.Array,
  st: CricState,
) -> tuple[Any, CricState]:
  """The update half of a step: one elementwise expression per leaf (fused with the base update
  and ``apply_updates``), and the commit of the selection at the end of hybrid training.

  Probing steps move nothing but the projection (``hold``: the base update is dropped);
  measurement and cycle-boundary steps restore the cache; ``forget`` groups are forgotten and
  ``zero`` groups zeroed (:func:`_cric_masks`); ``live`` is true whenever any of that applies (it
  gates the masked expression).
  """
  S = jnp.asarray(cfg.sampling_steps, jnp.int32)
  H = jnp.asarray(cfg.hybrid_steps, jnp.int32)
  if cfg.immediate:  # the reference: 0 at the boundary, then (S-1)/S, ..., 1/2 on the regrowth
    cycle_factor = jnp.where(ph.jc == 0, 0.0, cm.decay_factor(S + 1, ph.jc))
  else:  # (S-1)/S, ..., 0: exactly zero at the cycle's last step
    cycle_factor = cm.decay_factor(S, ph.jc)
  factor = jnp.where(ph.cycling, cycle_factor, cm.decay_factor(H, ph.jh))
  out = cm.masked_updates(
    u,
    params,
    sp,
    forget=forget,
    factor=factor,
    zero=zero,
    restore=cache,
    restore_when=ph.meas | ph.boundary,
    hold=ph.probing,
    live=live,
  )
  commit = ph.forgetting & (ph.jh == H - 1)
  return out, st._replace(
    pruned=jnp.where(commit, st.pruned | st.redundant, st.pruned),
    redundant=jnp.where(commit, jnp.zeros_like(st.redundant), st.redundant),
  )
