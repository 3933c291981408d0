"""The value lattice of the zero-invariance pass: zeros, known constants, input independence.

Each jaxpr value gets a :class:`Val`:

* ``zeros``: the leaf atoms (channel spaces) along which the value is exactly zero when those
  channels' producers are zero (``ALL``: the value is identically zero);
* ``known``: leaf -> the non-zero scalar the value takes at every position of that channel when
  its producers are zero (``sigmoid(0) = 0.5``, ``relu(0 + 1.0) = 1``, a comparison's ``False``),
  or :data:`PER_CHANNEL`: an input-independent value that depends only on which channel of the
  leaf a position belongs to (a BatchNorm's running mean, a constant vector added to the channel);
* ``const``: the scalar every element of the value equals, when that is known at trace time
  (literals, and what is computed from them: a pad or clip bound passed into a nested ``jit``);
* ``indep``: the value does not depend on the function's data inputs (only on parameters,
  state, captured constants and literals).

Elementwise primitives are evaluated on these scalars with NumPy (:func:`transfer`), so
clamping activations (``min(max(x, 0), 6)``, ``clip``, ``hard_tanh``) keep the zeros their
bounds allow, and a constant that crosses a call boundary is as visible as a literal.
Known non-zero values along a channel are what constant-channel folding removes.
"""

from __future__ import annotations

import math
import operator
import types
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from hesso_jax import _jaxpr as J
from hesso_jax.discovery.rules import ALL, has

__all__ = ["BOTTOM", "EMPTY", "PER_CHANNEL", "Val", "from_literal", "meet", "per_channel", "same",
           "transfer"]

EMPTY: Mapping[int, Any] = types.MappingProxyType({})
_MAX_CONST_SIZE = 4096  # larger literals are not inspected for a uniform value


class Val(NamedTuple):
  """Abstract value of one jaxpr variable (see the module docstring)."""

  zeros: Any = frozenset()
  known: Mapping[int, Any] = EMPTY
  const: Any = None
  indep: bool = False


class _PerChannel:
  """Marker in ``Val.known``: a per-channel, input-independent value (not one known scalar)."""

  def __repr__(self) -> str:
    return "PER_CHANNEL"


PER_CHANNEL = _PerChannel()
BOTTOM = Val()
PARAM_INDEP = Val(frozenset(), EMPTY, None, True)


def per_channel(zeros, leaves) -> Val:
  """Val of an input-independent vector (parameters, state, captured constants) whose only
  non-trivial axis carries ``leaves``: along each non-zero leaf its value is per-channel."""
  known = {leaf: PER_CHANNEL for leaf in leaves if not has(zeros, leaf)}
  return Val(zeros, known or EMPTY, None, True)


def same(a, b) -> bool:
  """Equality of two known scalars (``None`` = unknown; NaN equals NaN)."""
  if a is None or b is None:
    return a is None and b is None
  try:
    return bool(a == b) or bool(a != a and b != b)
  except Exception:  # pragma: no cover - exotic dtypes
    return False


def is_zero(c) -> bool:
  try:
    return c is not None and bool(c == 0)
  except Exception:  # pragma: no cover
    return False


def _uniform(x) -> Any:
  """The scalar all elements of ``x`` equal, or ``None``."""
  try:
    x = np.asarray(x)
    if x.size == 0 or x.size > _MAX_CONST_SIZE or x.dtype == object:
      return None
    first = x.reshape(-1)[0]
    return first if bool(np.all(x == first)) else None
  except Exception:  # pragma: no cover - keys, extended dtypes
    return None


def from_literal(v) -> Val:
  """Val of a jaxpr literal: identically zero, or a known constant."""
  c = _uniform(J.literal_value(v))
  return Val(ALL if is_zero(c) else frozenset(), EMPTY, c, True)


def _meet_zeros(a, b):
  if a is ALL:
    return b
  if b is ALL:
    return a
  return a & b


def meet(a: Val, b: Val) -> Val:
  """What holds for both values (join of two control-flow paths, loop fix-point step)."""
  known = EMPTY
  if a.known and b.known:
    known = {k: x for k, x in a.known.items() if k in b.known and same(x, b.known[k])} or EMPTY
  return Val(_meet_zeros(a.zeros, b.zeros), known,
             a.const if same(a.const, b.const) else None, a.indep and b.indep)


def height(v: Val) -> int:
  """An upper bound on how many times ``meet`` can still make ``v`` strictly smaller."""
  return (1 if v.zeros is ALL else len(v.zeros) + 1) + len(v.known) + 2


# ----------------------------------------------------------------------------------------------
# Scalar evaluation of elementwise primitives
# ----------------------------------------------------------------------------------------------


def _div(a, b):
  if np.issubdtype(np.asarray(a).dtype, np.integer):
    return None if b == 0 else int(a / b)  # lax.div rounds toward zero
  return np.true_divide(a, b)


def _erf(x):
  return math.erf(float(x))


_UNARY: dict[str, Callable] = {
    "neg": np.negative, "abs": np.abs, "sign": np.sign, "exp": np.exp, "exp2": np.exp2,
    "log": np.log, "log1p": np.log1p, "expm1": np.expm1, "tanh": np.tanh,
    "logistic": lambda x: 1.0 / (1.0 + np.exp(-x)), "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh, "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x), "cbrt": np.cbrt, "square": np.square, "erf": _erf,
    "erfc": lambda x: 1.0 - _erf(x), "floor": np.floor, "ceil": np.ceil, "is_finite": np.isfinite,
    "not": np.invert, "copy": lambda x: x, "copy_p": lambda x: x, "stop_gradient": lambda x: x,
    "convert_element_type": lambda x: x, "reduce_precision": None,
}
_BINARY: dict[str, Callable] = {
    "add": operator.add, "add_any": operator.add, "sub": operator.sub, "mul": operator.mul,
    "div": _div, "rem": np.fmod, "max": np.maximum, "min": np.minimum, "pow": np.power,
    "atan2": np.arctan2, "eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
    "le": operator.le, "gt": operator.gt, "ge": operator.ge, "and": operator.and_,
    "or": operator.or_, "xor": operator.xor,
}
EVALUATED = frozenset(k for k, f in _UNARY.items() if f is not None) | frozenset(_BINARY) | {
    "integer_pow", "select_n", "clamp"}

# Primitives that move values without changing them: a channel's value along it is unchanged.
MOVING = frozenset("""
broadcast_in_dim reshape transpose squeeze rev slice dynamic_slice expand_dims copy copy_p
sharding_constraint mesh_cast reshard pvary optimization_barrier device_put
""".split())


def _apply(eqn, args: list) -> Any:
  """``eqn``'s primitive on scalar operands (typed like its inputs), or ``None``."""
  name = eqn.primitive.name
  if any(a is PER_CHANNEL for a in args):  # a function of per-channel constants is one too
    return PER_CHANNEL
  try:
    with np.errstate(all="ignore"):
      if name in _UNARY:
        r = _UNARY[name](args[0])
      elif name in _BINARY:
        r = _BINARY[name](*args)
      elif name == "integer_pow":
        r = args[0] ** eqn.params["y"]
      elif name == "select_n":
        r = args[1 + int(args[0])]
      elif name == "clamp":
        r = np.minimum(np.maximum(args[1], args[0]), args[2])
      else:
        return None
    if r is None:
      return None
    return np.asarray(r).astype(eqn.outvars[0].aval.dtype)[()]
  except Exception:  # extended dtypes (PRNG keys), overflow to exotic types: unknown
    return None


def _typed(v, c):
  try:
    return np.asarray(c).astype(v.aval.dtype)[()]
  except Exception:  # pragma: no cover
    return None


def _along(val: Val, var, leaf) -> Any:
  """The scalar ``val`` takes along ``leaf`` when its producers are zero, or ``None``."""
  if val.const is not None:
    return val.const
  if has(val.zeros, leaf):
    return _typed(var, 0)
  return val.known.get(leaf)


def _evaluate(eqn, vals: list[Val], z, indep: bool) -> Val:
  args = [v.const for v in vals]
  const = _apply(eqn, args) if all(a is not None for a in args) else None
  if z is ALL or is_zero(const):
    return Val(ALL, EMPTY, const, indep)
  cand = None  # leaves along which every operand's value is known
  for v in vals:
    if v.const is not None or v.zeros is ALL:
      continue
    s = v.zeros | v.known.keys() if v.known else v.zeros
    cand = s if cand is None else cand & s
  if not cand:
    return Val(z, EMPTY, const, indep)
  zeros, known = set(), {}
  for leaf in cand - z:
    args = [_along(v, var, leaf) for v, var in zip(vals, eqn.invars, strict=True)]
    r = None if any(a is None for a in args) else _apply(eqn, args)
    if r is None:
      continue
    if is_zero(r):
      zeros.add(leaf)
    else:
      known[leaf] = r
  return Val(z | zeros if zeros else z, known or EMPTY, const, indep)


def _pad(eqn, vals: list[Val], z, indep: bool) -> Val:
  x, pv = vals
  if pv.const is None:
    return Val(z, EMPTY, None, indep)
  known = {k: c for k, c in x.known.items() if same(c, pv.const)}
  return Val(z, known or EMPTY, x.const if same(x.const, pv.const) else None, indep)


def transfer(eqn, vals: list[Val], zo: list) -> list[Val]:
  """Output Vals of a first-order equation, given its inputs' Vals and the rule's zero-sets."""
  name = eqn.primitive.name
  indep = all(v.indep for v in vals) and name not in ("random_bits", "rng_uniform",
                                                       "rng_bit_generator")
  if name in EVALUATED and len(zo) == 1:
    return [_evaluate(eqn, vals, zo[0], indep)]
  if name in MOVING:
    if len(zo) == len(vals):  # multi-operand identities (optimization_barrier)
      return [Val(z, v.known, v.const, indep) for z, v in zip(zo, vals)]
    return [Val(z, vals[0].known, vals[0].const, indep) for z in zo]
  if name == "pad":
    return [_pad(eqn, vals, zo[0], indep)]
  return [Val(z, EMPTY, None, indep) for z in zo]
