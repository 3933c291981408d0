"""Group saliency (importance) criteria, vectorised over all groups of a :class:`SearchSpace`.

Every criterion is computed from three per-group reductions over the groups' *producer* slices
(``space.group_reduce``; static shapes, no gather/scatter, no Python loop over channels):

    xx_g = <x_g, x_g>      dd_g = <d_g, d_g>      xd_g = <x_g, d_g>

where ``x`` are the current parameters and ``d`` the search direction. In HESSO ``d = -u`` with
``u`` the base transformation's update (which already carries sign and learning rate). For complex
leaves the inner product is the real one, ``<x, d> = Re sum x conj(d)`` (so ``xx = sum |x|^2``);
with real leaves this is exactly the real formula.

==========================  ================================================
criterion                   raw score of group g
==========================  ================================================
``magnitude``               ``sqrt(xx_g)``
``avg_magnitude``           ``sqrt(xx_g) / (number of elements of g)``
``cosine_similarity``       ``xd_g / (sqrt(xx_g) * sqrt(dd_g) + eps) + 1``
``taylor_first_order``      ``|xd_g|``
``taylor_second_order``     ``0.5 * xd_g ** 2``
==========================  ================================================

Each raw criterion vector is divided by its global L2 norm (over all groups), then the criteria are
weighted and summed. Lowest score = most redundant. Because each criterion is normalised globally,
the scale of ``d`` (the learning rate) cancels exactly: unlike the reference (``/ (norm + 1e-8)``)
no additive epsilon is used in the normaliser, only a guard for an all-zero criterion vector (which
then contributes 0). The ``eps`` in ``cosine_similarity``'s denominator stays.

Non-finite values (NaN/inf gradients or parameters) make a group *most important*: its score is
``+inf`` (never selected) and its raw values are excluded from the global normalisers, so one bad
group does not poison the scores of the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hesso_jax.space import SearchSpace

__all__ = [
  "CRITERIA",
  "DEFAULT_IMPORTANCE",
  "GroupStats",
  "group_stats",
  "magnitude",
  "avg_magnitude",
  "cosine_similarity",
  "taylor_first_order",
  "taylor_second_order",
  "raw_criteria",
  "normalize",
  "combine",
  "saliency",
  "validate_importance",
]

EPS = 1e-8

CRITERIA = (
  "magnitude",
  "avg_magnitude",
  "cosine_similarity",
  "taylor_first_order",
  "taylor_second_order",
)

#: The reference's default weights: 0.2 for each of the five criteria.
DEFAULT_IMPORTANCE: Mapping[str, float] = {c: 0.2 for c in CRITERIA}


class GroupStats(NamedTuple):
  """Per-group reductions every criterion is built from (all float32, shape (G,))."""

  xx: jax.Array  # <x_g, x_g>
  dd: jax.Array  # <d_g, d_g>   (zeros when no direction was given)
  xd: jax.Array  # <x_g, d_g>   (zeros when no direction was given)
  size: jax.Array  # number of producer elements of g (float32)


def _real_parts(tree: Any) -> tuple[Any, Any]:
  """(real parts, imaginary parts) of a tree with complex leaves; (tree, None) if all are real."""
  if not any(jnp.iscomplexobj(x) for x in jax.tree_util.tree_leaves(tree)):
    return tree, None
  return jax.tree_util.tree_map(jnp.real, tree), jax.tree_util.tree_map(jnp.imag, tree)


def _reduce(
  space: SearchSpace,
  fns: tuple[Any, ...],
  a: tuple[Any, Any],
  b: tuple[Any, Any] | None = None,
) -> jax.Array:
  """(len(fns), G): ``sum fn(re a, re b) + sum fn(im a, im b)`` for every ``fn``, fused.

  The real inner products of (complex) leaves; all statistics are reduced in one
  ``group_reduce_many`` call so a sharded step replicates them together.
  """
  trees = [a[0]] if b is None else [a[0], b[0]]
  out = space.group_reduce_many(fns, *trees)
  if a[1] is not None or (b is not None and b[1] is not None):
    im = [
      t[1] if t[1] is not None else jax.tree_util.tree_map(jnp.zeros_like, t[0])
      for t in ([a] if b is None else [a, b])
    ]
    out = out + space.group_reduce_many(fns, *im)
  return out


def group_stats(space: SearchSpace, params: Any, direction: Any = None) -> GroupStats:
  """The reductions ``xx``, ``dd``, ``xd`` and group sizes, vectorised over all groups.

  Complex leaves are supported: ``xx = sum |x|^2``, ``dd = sum |d|^2`` and
  ``xd = Re sum x conj(d)`` (the real inner product of C^n as R^2n), which are exactly the real
  formulas when every leaf is real (the imaginary pass is skipped then).
  """
  x = _real_parts(params)
  if direction is None:
    xx = _reduce(space, (lambda a: a * a,), x)[0]
    dd = jnp.zeros_like(xx)
    xd = jnp.zeros_like(xx)
  else:
    d = _real_parts(direction)
    fns = (lambda a, b: a * a, lambda a, b: b * b, lambda a, b: a * b)
    xx, dd, xd = _reduce(space, fns, x, d)
  size = jnp.asarray(np.maximum(space.group_sizes(params), 1), jnp.float32)
  return GroupStats(xx, dd, xd, size)


# --- raw criteria on precomputed stats -----------------------------------------------------------


def _magnitude(st: GroupStats, eps: float = EPS) -> jax.Array:
  del eps
  return jnp.sqrt(st.xx)


def _avg_magnitude(st: GroupStats, eps: float = EPS) -> jax.Array:
  del eps
  return jnp.sqrt(st.xx) / st.size


def _cosine_similarity(st: GroupStats, eps: float = EPS) -> jax.Array:
  return st.xd / (jnp.sqrt(st.xx) * jnp.sqrt(st.dd) + eps) + 1.0


def _taylor_first_order(st: GroupStats, eps: float = EPS) -> jax.Array:
  del eps
  return jnp.abs(st.xd)


def _taylor_second_order(st: GroupStats, eps: float = EPS) -> jax.Array:
  del eps
  return 0.5 * st.xd * st.xd


_RAW = {
  "magnitude": _magnitude,
  "avg_magnitude": _avg_magnitude,
  "cosine_similarity": _cosine_similarity,
  "taylor_first_order": _taylor_first_order,
  "taylor_second_order": _taylor_second_order,
}


# --- public per-criterion functions (raw, un-normalised, shape (G,)) -----------------------------


def magnitude(space: SearchSpace, params: Any, direction: Any = None) -> jax.Array:
  """Raw ``||x_g||_2`` per group."""
  return _magnitude(group_stats(space, params, None))


def avg_magnitude(space: SearchSpace, params: Any, direction: Any = None) -> jax.Array:
  """Raw ``||x_g||_2 / numel(g)`` per group."""
  return _avg_magnitude(group_stats(space, params, None))


def cosine_similarity(
  space: SearchSpace, params: Any, direction: Any, eps: float = EPS
) -> jax.Array:
  """Raw ``<x_g, d_g> / (||x_g|| ||d_g|| + eps) + 1`` per group (range [0, 2])."""
  return _cosine_similarity(group_stats(space, params, direction), eps)


def taylor_first_order(space: SearchSpace, params: Any, direction: Any) -> jax.Array:
  """Raw ``|<x_g, d_g>|`` per group."""
  return _taylor_first_order(group_stats(space, params, direction))


def taylor_second_order(space: SearchSpace, params: Any, direction: Any) -> jax.Array:
  """Raw ``0.5 <x_g, d_g>^2`` per group."""
  return _taylor_second_order(group_stats(space, params, direction))


# --- combination ---------------------------------------------------------------------------------


def validate_importance(
  importance: Mapping[str, Any], *, extra: tuple[str, ...] = (), name: str = "importance"
) -> dict[str, float]:
  """Check an importance-weight dict; returns a plain dict.

  Raises TypeError for a non-mapping or a non-numeric weight, ValueError for an unknown criterion
  or a non-finite weight.
  """
  if not isinstance(importance, Mapping):
    raise TypeError(f"{name} must be a dict criterion -> weight, got {type(importance).__name__}")
  allowed = CRITERIA + tuple(extra)
  unknown = [k for k in importance if k not in allowed]
  if unknown:
    raise ValueError(f"{name}: unknown criterion {unknown!r}; known criteria: {list(allowed)}")
  out = {}
  for k, w in importance.items():
    try:
      wf = float(w)
    except (TypeError, ValueError) as e:
      raise TypeError(f"{name}[{k!r}] must be a number, got {w!r}") from e
    if not np.isfinite(wf):
      raise ValueError(f"{name}[{k!r}] must be finite, got {w!r}")
    out[k] = wf
  return out


def raw_criteria(
  space: SearchSpace,
  params: Any,
  direction: Any = None,
  names: tuple[str, ...] = CRITERIA,
  eps: float = EPS,
) -> dict[str, jax.Array]:
  """Raw (un-normalised) criterion vectors ``{name: (G,)}``, sharing one set of reductions."""
  need_d = any(n not in ("magnitude", "avg_magnitude") for n in names)
  if need_d and direction is None:
    raise TypeError(
      f"criteria {[n for n in names if n not in ('magnitude', 'avg_magnitude')]} "
      "need a direction (the update direction d = -u); got direction=None"
    )
  st = group_stats(space, params, direction if need_d else None)
  return {n: _RAW[n](st, eps) for n in names}


def normalize(v: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """``v / ||v||_2`` along the last axis, with the norm over the entries where ``valid`` (others
  count as 0).

  The norm is computed overflow-safely (scaled by the max magnitude). A ``(C, G)`` input
  normalises each of its ``C`` rows on its own, with two reductions in all (:func:`combine` uses
  that: on XLA:CPU every reduction costs a little on every step of the compiled program, even
  inside a branch that does not run, so fewer of them keep HESSO's warm-up step cheap).

  Example::

    >>> import jax.numpy as jnp
    >>> from hesso_jax.optim import saliency
    >>> saliency.normalize(jnp.array([[3.0, 4.0], [0.0, 2.0]]))
    Array([[0.6, 0.8],
           [0. , 1. ]], dtype=float32)
  """
  v = jnp.asarray(v, jnp.float32)
  if valid is None:
    valid = jnp.isfinite(v)
  w = jnp.where(valid, v, 0.0)
  if w.size == 0:
    return w
  m = jnp.max(jnp.abs(w), axis=-1, keepdims=True)
  safe_m = jnp.where(m > 0, m, 1.0)
  norm = m * jnp.sqrt(jnp.sum(jnp.square(w / safe_m), axis=-1, keepdims=True))
  # Only an all-zero criterion is guarded (then every score is 0). An additive eps would not
  # cancel with the scale of d (0.5 <x,d>^2 is ~1e-8 for lr ~1e-4), so none is added.
  return v / jnp.where(m > 0, norm, 1.0)


def combine(raw: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
  """Weighted sum of globally normalised criteria; ``+inf`` where any raw value is non-finite.

  The criteria are stacked and normalised together (one max and one sum reduction for all).
  """
  names = [n for n in weights if n in raw]
  if not names:
    raise ValueError(f"no criterion to combine: weights {list(weights)}, computed {list(raw)}")
  finite = jnp.ones_like(raw[names[0]], dtype=bool)
  for n in names:
    finite &= jnp.isfinite(raw[n])
  stacked = normalize(jnp.stack([jnp.asarray(raw[n], jnp.float32) for n in names]), finite)
  total = jnp.zeros_like(raw[names[0]], dtype=jnp.float32)
  for i, n in enumerate(names):
    total = total + weights[n] * stacked[i]
  return jnp.where(finite & jnp.isfinite(total), total, jnp.inf)


def saliency(
  space: SearchSpace,
  params: Any,
  direction: Any = None,
  importance: Mapping[str, float] = DEFAULT_IMPORTANCE,
  eps: float = EPS,
) -> jax.Array:
  """(num_groups,) float32 saliency; lower = more redundant; ``+inf`` for non-finite groups.

  Args:
    space: the search space over ``params`` (producer members are scored).
    params: current parameters ``x``.
    direction: the search direction ``d`` (same structure as ``params``); in HESSO ``d = -u``.
      Only needed by the gradient-based criteria.
    importance: criterion -> weight (unknown keys raise ValueError).
  """
  weights = validate_importance(importance)
  weights = {k: w for k, w in weights.items() if w != 0.0} or weights
  raw = raw_criteria(space, params, direction, tuple(weights), eps)
  return combine(raw, weights)
