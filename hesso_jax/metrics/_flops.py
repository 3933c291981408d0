"""A FLOP / MAC counting interpreter over jaxprs.

Counting convention (the documented contract):

* ``dot_general``: MACs = prod(output shape) x prod(contracting dims). This covers every matmul
  in the traced function: dense layers, einsums, attention's ``q @ k^T`` and ``probs @ v``.
* ``conv_general_dilated``: MACs = prod(output shape) x (kernel input features per group) x
  prod(kernel window). ``feature_group_count`` is accounted for because the kernel's input
  feature dimension is already ``in / groups``; padding positions are counted (dense count).
* FLOPs = 2 x MACs (one multiply and one add per MAC).
* Everything else is free by default. With ``elementwise=True`` (FLOPs only) every elementwise
  arithmetic primitive costs 1 flop per *output* element and reductions cost 1 flop per *input*
  element (data movement -- reshape, transpose, broadcast, slice, convert -- stays free).
* Control flow: ``scan`` multiplies its body by ``length``; ``while`` counts its cond and body
  ONCE (the trip count is unknown at trace time); ``cond``/``switch`` takes the most expensive
  branch; ``pjit``/``closed_call``/``remat``/``custom_jvp_call``/``custom_vjp_call``/
  ``shard_map`` and any other primitive carrying jaxprs: the sum over its jaxprs (forward only).

The reference implementation (OTO) and the torch tools (thop, ptflops) report MACs of conv and
linear layers; ``unit='macs'`` gives that number (attention's matmuls included).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from hesso_jax import _jaxpr as J

__all__ = ["UNITS", "Cost", "count_flops", "jaxpr_cost", "jaxpr_flops"]

UNITS = ("flops", "macs")


class Cost(NamedTuple):
  """The cost of a jaxpr: multiply-accumulates of dot/conv, and elementwise operations."""

  macs: float = 0.0
  elementwise: float = 0.0

  @property
  def flops(self) -> float:
    """2 x MACs + elementwise operations."""
    return 2.0 * self.macs + self.elementwise

  def __add__(self, other: Any) -> Cost:
    return Cost(self.macs + other.macs, self.elementwise + other.elementwise)

  def scale(self, k: float) -> Cost:
    """The cost of running ``k`` times."""
    return Cost(k * self.macs, k * self.elementwise)


def _size(aval: Any) -> int:
  shape = getattr(aval, "shape", ())
  return int(math.prod(shape)) if shape else 1


def _dot_macs(eqn: Any) -> float:
  lhs = eqn.invars[0].aval
  (lc, _), _ = eqn.params["dimension_numbers"]
  k = math.prod(lhs.shape[d] for d in lc) if lc else 1
  return float(_size(eqn.outvars[0].aval) * k)


def _conv_macs(eqn: Any) -> float:
  rhs = eqn.invars[1].aval
  # ConvDimensionNumbers(lhs_spec, rhs_spec, out_spec); rhs_spec = (out_feat, in_feat, *spatial)
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec
  cin = rhs.shape[rhs_spec[1]]
  window = math.prod(rhs.shape[d] for d in rhs_spec[2:])
  return float(_size(eqn.outvars[0].aval) * cin * window)


def _elementwise_ops(eqn: Any) -> float:
  name = eqn.primitive.name
  if name in J.ELEMENTWISE_PRIMITIVES:
    return float(sum(_size(v.aval) for v in eqn.outvars))
  if name in J.REDUCTION_PRIMITIVES:
    return float(_size(eqn.invars[0].aval))
  return 0.0


def _eqn_cost(eqn: Any, elementwise: bool) -> Cost:
  name = eqn.primitive.name
  sub = lambda j: jaxpr_cost(j, elementwise=elementwise)
  if name == "dot_general":
    return Cost(macs=_dot_macs(eqn))
  if name == "conv_general_dilated":
    return Cost(macs=_conv_macs(eqn))
  if name == "scan":
    return sub(eqn.params["jaxpr"]).scale(eqn.params["length"])
  if name == "while":
    return sub(eqn.params["body_jaxpr"]) + sub(eqn.params["cond_jaxpr"])
  if name == "cond":
    return max((sub(b) for b in eqn.params["branches"]), key=lambda c: c.flops, default=Cost())
  subs = list(J.sub_jaxprs(eqn.params))
  if subs:
    return sum((sub(j) for j in subs), Cost())
  return Cost(elementwise=_elementwise_ops(eqn)) if elementwise else Cost()


def jaxpr_cost(jaxpr: Any, *, elementwise: bool = False) -> Cost:
  """The :class:`Cost` of a (closed) jaxpr under the module's convention."""
  jaxpr, _ = J.open_jaxpr(jaxpr)
  return sum((_eqn_cost(eqn, elementwise) for eqn in jaxpr.eqns), Cost())


def jaxpr_flops(jaxpr: Any, *, elementwise: bool = False) -> float:
  """FLOPs of a (closed) jaxpr under the module's convention."""
  return jaxpr_cost(jaxpr, elementwise=elementwise).flops


def _check_unit(unit: str, elementwise: bool) -> None:
  if not isinstance(unit, str):
    raise TypeError(f"unit must be a str, one of {UNITS}; got {type(unit).__name__}")
  if unit not in UNITS:
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
  if unit == "macs" and elementwise:
    raise ValueError(
      "elementwise=True counts FLOPs of elementwise ops, which are not "
      "multiply-accumulates: use unit='flops' with it"
    )


def count_flops(
  fn: Callable[..., Any], *args: Any, elementwise: bool = False, unit: str = "flops", **kwargs: Any
) -> float:
  """FLOPs (or MACs with ``unit='macs'``) of ``fn(*args, **kwargs)``.

  ``fn`` is traced with ``jax.make_jaxpr`` (args may be ``jax.ShapeDtypeStruct``); see the
  module docstring for what is counted.
  """
  _check_unit(unit, elementwise)
  closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
  cost = jaxpr_cost(closed.jaxpr, elementwise=elementwise)
  return float(cost.flops if unit == "flops" else cost.macs)
