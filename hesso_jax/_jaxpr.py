"""Jaxpr utilities shared by discovery, compression and counting.

One place that knows how jaxprs are built in the installed jax: which variables are literals or
dropped outputs, how to find the sub-jaxprs of an equation (calls, control flow), and the
primitive tables (elementwise, reductions) that several passes agree on. Everything else in the
package asks these functions instead of duck-typing jaxpr objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax.extend.core as jcore

__all__ = [
  "CALL_PRIMITIVES",
  "CONTROL_FLOW_PRIMITIVES",
  "ELEMENTWISE_PRIMITIVES",
  "REDUCTION_PRIMITIVES",
  "call_body",
  "is_drop",
  "is_literal",
  "iter_eqns",
  "literal_value",
  "open_jaxpr",
  "sub_jaxprs",
]

# Call-like primitives: one body, the equation's inputs map 1:1 to the body's inputs.
# name -> the params key holding the body (a ClosedJaxpr or Jaxpr).
CALL_PRIMITIVES: dict[str, str] = {
  "jit": "jaxpr",
  "pjit": "jaxpr",
  "closed_call": "call_jaxpr",
  "core_call": "call_jaxpr",
  "custom_jvp_call": "call_jaxpr",
  "custom_vjp_call": "call_jaxpr",
  "custom_vjp_call_jaxpr": "fun_jaxpr",
  "remat2": "jaxpr",
  "checkpoint": "jaxpr",
}

# Primitives with their own structured sub-jaxprs (handled case by case by each pass).
CONTROL_FLOW_PRIMITIVES = frozenset({"scan", "while", "cond"})

ELEMENTWISE_PRIMITIVES = frozenset(
  [
    "add",
    "sub",
    "mul",
    "div",
    "rem",
    "pow",
    "integer_pow",
    "max",
    "min",
    "neg",
    "abs",
    "sign",
    "exp",
    "exp2",
    "log",
    "log1p",
    "expm1",
    "tanh",
    "logistic",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "sinh",
    "cosh",
    "asinh",
    "acosh",
    "atanh",
    "sqrt",
    "rsqrt",
    "cbrt",
    "erf",
    "erfc",
    "erf_inv",
    "lgamma",
    "digamma",
    "square",
    "reciprocal",
    "floor",
    "ceil",
    "round",
    "nextafter",
    "select_n",
    "clamp",
    "is_finite",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "xor",
  ]
)

REDUCTION_PRIMITIVES = frozenset(
  [
    "reduce_sum",
    "reduce_max",
    "reduce_min",
    "reduce_prod",
    "reduce_and",
    "reduce_or",
    "argmax",
    "argmin",
    "cumsum",
    "cumprod",
    "cummax",
    "cummin",
    "cumlogsumexp",
    "reduce_precision",
  ]
)


def is_literal(v: Any) -> bool:
  """Whether a jaxpr input variable is a literal constant (``jax.extend.core.Literal``)."""
  return isinstance(v, jcore.Literal)


def literal_value(v: Any) -> Any:
  """The Python/NumPy value of a literal, or ``None`` for a variable."""
  return v.val if isinstance(v, jcore.Literal) else None


def is_drop(v: Any) -> bool:
  """Whether an equation output is dropped (``_``, ``jax.extend.core.DropVar``)."""
  return isinstance(v, jcore.DropVar)


def open_jaxpr(j: Any) -> tuple[Any, list]:
  """``(jaxpr, consts)`` of a ``ClosedJaxpr`` (consts as a list) or of an open ``Jaxpr`` (none)."""
  if isinstance(j, jcore.ClosedJaxpr):
    return j.jaxpr, list(j.consts)
  return j, []


def call_body(eqn: Any) -> Any | None:
  """The body (ClosedJaxpr or Jaxpr) of a call-like equation, or ``None`` if it is not one."""
  name = eqn.primitive.name
  if name not in CALL_PRIMITIVES:
    return None
  key = CALL_PRIMITIVES[name]
  if key not in eqn.params:  # the params key moved between jax versions
    key = next((k for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in eqn.params), None)  # type: ignore[assignment]
  return None if key is None else eqn.params[key]


def sub_jaxprs(params: dict) -> Iterator[Any]:
  """Every (Closed)Jaxpr held in an equation's params, including tuples of branches."""
  for v in params.values():
    if isinstance(v, (jcore.ClosedJaxpr, jcore.Jaxpr)):
      yield v
    elif isinstance(v, (tuple, list)):
      yield from (j for j in v if isinstance(j, (jcore.ClosedJaxpr, jcore.Jaxpr)))


def iter_eqns(jaxpr: Any, *, skip: tuple[str, ...] = ()) -> Iterator[Any]:
  """Every equation of ``jaxpr`` (a Jaxpr or ClosedJaxpr) and of the jaxprs nested in it, in
  order; an equation whose primitive is named in ``skip`` is yielded but not entered.

  >>> import jax, jax.numpy as jnp
  >>> closed = jax.make_jaxpr(lambda x: jax.lax.cond(x > 0, jnp.sin, jnp.cos, x))(1.0)
  >>> [e.primitive.name for e in iter_eqns(closed)]
  ['gt', 'convert_element_type', 'cond', 'cos', 'sin']
  >>> [e.primitive.name for e in iter_eqns(closed, skip=("cond",))]
  ['gt', 'convert_element_type', 'cond']
  """
  for eqn in open_jaxpr(jaxpr)[0].eqns:
    yield eqn
    if eqn.primitive.name not in skip:
      for sub in sub_jaxprs(eqn.params):
        yield from iter_eqns(sub, skip=skip)
