"""A catalogue of the primitives that model code emits, and what discovery does with each.

``SPECS`` is a curated list of calls into ``jax.numpy``, ``jax.nn``, ``jax.lax``,
``jax.numpy.linalg``, ``jax.numpy.fft`` (and ``jax.image`` / ``jax.random``, which models use
too), each with small abstract example inputs. :func:`collect` traces every call in the installed
jax, walks the jaxprs (into calls and control flow) and records which primitives appear;
:func:`verdict` says how discovery treats each one:

* ``'rule'``: a propagation rule (:mod:`hesso_jax.discovery.rules`) or the structural handling of
  calls and control flow;
* ``'blocks: <why>'``: a deliberate verdict (``rules.BLOCKING``): the primitive mixes or reorders
  channels so no space through it can be pruned exactly, and the verdict says why;
* ``None``: unknown. The test suite fails on any such primitive, so a jax upgrade that emits a new
  primitive is noticed rather than silently making spaces unprunable.

Run ``python -m hesso_jax.discovery.catalogue`` to print the table for the installed jax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from hesso_jax import _jaxpr as J
from hesso_jax.discovery import rules as R

__all__ = ["CallSpec", "SPECS", "collect", "primitives_of", "verdict", "main"]


@dataclasses.dataclass(frozen=True)
class CallSpec:
  """One public function called on small abstract inputs (shapes; one dtype name, or one each)."""

  name: str
  fn: Callable
  shapes: tuple = ((2, 3, 4),)
  dtype: str | tuple[str, ...] = "float32"

  def inputs(self) -> list:
    dts = (self.dtype,) * len(self.shapes) if isinstance(self.dtype, str) else self.dtype
    return [jax.ShapeDtypeStruct(s, jnp.dtype(d)) for s, d in zip(self.shapes, dts, strict=True)]


_M = ((2, 4, 4),)  # a batch of square matrices
_V = ((8,),)
_I = ((2, 3, 4),)
_IMG = ((1, 6, 6, 3),)


def _conv(x):
  w = jnp.ones((3, 3, 3, 4), x.dtype)
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_t(x):
  return lax.conv_transpose(
    x, jnp.ones((3, 3, 3, 4), x.dtype), (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _scan(x):
  return lax.scan(lambda c, r: (c + r, c * r), jnp.zeros(x.shape[1:], x.dtype), x)


S = CallSpec
SPECS: tuple[CallSpec, ...] = (
  # --- jax.numpy: arithmetic, contractions
  S("jnp.matmul", lambda a, b: a @ b, ((2, 3), (3, 4))),
  S("jnp.einsum", lambda a, b: jnp.einsum("bij,bjk->bik", a, b), ((2, 3, 4), (2, 4, 5))),
  S("jnp.tensordot", lambda a, b: jnp.tensordot(a, b, 1), ((2, 3), (3, 4))),
  S("jnp.outer", jnp.outer, ((3,), (4,))),
  S("jnp.kron", jnp.kron, ((2, 2), (2, 2))),
  S("jnp.cross", jnp.cross, ((4, 3), (4, 3))),
  S("jnp.convolve", jnp.convolve, ((8,), (3,))),
  S("jnp.add/sub/mul/div", lambda a, b: (a + b) * (a - b) / (b + 1), _I * 2),
  S("jnp.power", lambda a: jnp.power(a, 3) + a**2.5 + a**-1),
  S("jnp.floor_divide/mod", lambda a: (a // 2.0) + jnp.mod(a, 3.0) + jnp.remainder(a, 2.0)),
  S("jnp.maximum/minimum", lambda a, b: jnp.maximum(a, b) + jnp.minimum(a, 0.0), _I * 2),
  S("jnp.clip", lambda a: jnp.clip(a, -1.0, 1.0)),
  S("jnp.where", lambda a: jnp.where(a > 0, a, 0.1 * a)),
  S("jnp.abs/sign/neg", lambda a: jnp.abs(a) + jnp.sign(a) - a),
  S("jnp.exp/log/expm1/log1p", lambda a: jnp.exp(a) + jnp.log(a) + jnp.expm1(a) + jnp.log1p(a)),
  S("jnp.exp2/log2/log10", lambda a: jnp.exp2(a) + jnp.log2(a) + jnp.log10(a)),
  S("jnp.sqrt/cbrt/reciprocal", lambda a: jnp.sqrt(a) + jnp.cbrt(a) + jnp.reciprocal(a)),
  S("jnp.trig", lambda a: jnp.sin(a) + jnp.cos(a) + jnp.tan(a) + jnp.arctan2(a, a)),
  S("jnp.arc", lambda a: jnp.arcsin(a) + jnp.arccos(a) + jnp.arctan(a)),
  S(
    "jnp.hyperbolic",
    lambda a: (
      jnp.sinh(a) + jnp.cosh(a) + jnp.tanh(a) + jnp.arctanh(a) + jnp.arcsinh(a) + jnp.arccosh(a)
    ),
  ),
  S(
    "jnp.round/floor/ceil/rint/trunc",
    lambda a: jnp.round(a) + jnp.floor(a) + jnp.ceil(a) + jnp.rint(a) + jnp.trunc(a),
  ),
  S("jnp.square/hypot", lambda a: jnp.square(a) + jnp.hypot(a, a)),
  S("jnp.logaddexp", lambda a: jnp.logaddexp(a, a)),
  S(
    "jnp.isnan/isfinite/nan_to_num",
    lambda a: jnp.nan_to_num(a) + jnp.isnan(a) + jnp.isfinite(a) + jnp.isinf(a),
  ),
  S("jnp.comparisons", lambda a: (a > 0) & (a <= 1) | ~(a == 2) ^ (a != 3)),
  S("jnp.astype", lambda a: a.astype(jnp.bfloat16).astype(jnp.int32).astype(jnp.float32)),
  S("jnp.bitwise", lambda a: (a << 1) >> 1 | (a & 3) ^ jnp.right_shift(a, 2), _I, "int32"),
  S("jnp.heaviside/copysign", lambda a: jnp.heaviside(a, 0.5) + jnp.copysign(a, -a)),
  # --- jax.numpy: reductions and statistics
  S("jnp.sum/mean/prod", lambda a: a.sum(-1) + a.mean(-1) + a.prod(-1)),
  S("jnp.max/min/argmax/argmin", lambda a: a.max(-1) + a.min(-1) + a.argmax(-1) + a.argmin(-1)),
  S("jnp.var/std", lambda a: jnp.var(a, -1) + jnp.std(a, -1)),
  S("jnp.any/all", lambda a: jnp.any(a > 0, -1) | jnp.all(a > 0, -1)),
  S("jnp.cumsum/cumprod", lambda a: jnp.cumsum(a, -1) + jnp.cumprod(a, -1)),
  S("jnp.nanmean/nansum", lambda a: jnp.nanmean(a, -1) + jnp.nansum(a, -1)),
  S("jnp.median/quantile", lambda a: jnp.median(a, -1) + jnp.quantile(a, 0.3, axis=-1)),
  S("jnp.linalg.norm", lambda a: jnp.linalg.norm(a, axis=-1)),
  S("jnp.sort/argsort", lambda a: jnp.sort(a, -1) + jnp.argsort(a, -1)),
  S("jnp.searchsorted", lambda a, v: jnp.searchsorted(a, v), ((8,), (3,))),
  S(
    "jnp.trace/diagonal/diag",
    lambda a: jnp.trace(a[0]) + jnp.diagonal(a[0]).sum() + jnp.diag(a[0, 0]).sum(),
    _M,
  ),
  # --- jax.numpy: shapes
  S("jnp.reshape/ravel", lambda a: a.reshape(6, 4).ravel()),
  S(
    "jnp.transpose/swapaxes/moveaxis",
    lambda a: a.T.swapaxes(0, 2) + jnp.moveaxis(a, 0, 2).transpose(2, 0, 1),
  ),
  S("jnp.expand_dims/squeeze", lambda a: jnp.squeeze(jnp.expand_dims(a, 1), 1)),
  S("jnp.concatenate", lambda a: jnp.concatenate([a, a], -1)),
  S("jnp.stack", lambda a: jnp.stack([a, a], -1)),
  S("jnp.unstack", lambda a: jnp.unstack(a, axis=1)),
  S("jnp.split", lambda a: jnp.split(a, 2, -1)),
  S("jnp.array_split", lambda a: jnp.array_split(a, 3, -1)),
  S("jnp.tile", lambda a: jnp.tile(a, (2, 1, 1))),
  S("jnp.repeat", lambda a: jnp.repeat(a, 2, axis=-1)),
  S("jnp.broadcast_to", lambda a: jnp.broadcast_to(a, (5, 2, 3, 4))),
  S("jnp.flip/roll", lambda a: jnp.flip(a, -1) + jnp.roll(a, 1, -1)),
  S("jnp.pad constant", lambda a: jnp.pad(a, ((0, 0), (1, 1), (2, 0)))),
  S("jnp.pad edge/reflect", lambda a: jnp.pad(a, 1, mode="edge") + jnp.pad(a, 1, mode="reflect")),
  S("jnp.tril/triu", lambda a: jnp.tril(a) + jnp.triu(a, 1)),
  S(
    "jnp.take/indexing",
    lambda a, i: jnp.take(a, i, axis=0) + a[i] + a[:, 1:3].sum(),
    ((5, 3), (4,)),
    ("float32", "int32"),
  ),
  S("jnp.take_along_axis", lambda a: jnp.take_along_axis(a, jnp.argsort(a, -1), -1)),
  S("x.at[].set/add", lambda a: a.at[:, 0].set(0.0).at[0, 1].add(1.0)),
  S(
    "x[dynamic]",
    lambda a, i: lax.dynamic_slice_in_dim(a, i, 2) + a[i],
    ((5, 3), ()),
    ("float32", "int32"),
  ),
  # --- jax.numpy: creation
  S("jnp.arange/linspace", lambda a: a + jnp.arange(4.0) + jnp.linspace(0, 1, 4)),
  S(
    "jnp.eye/ones_like/full_like",
    lambda a: a + jnp.eye(4) + jnp.ones_like(a) + jnp.full_like(a, 2.0),
    ((4, 4),),
  ),
  S("jnp.meshgrid", lambda a: a + sum(jnp.meshgrid(jnp.arange(4.0), jnp.arange(4.0))), ((4, 4),)),
  # --- jax.numpy.linalg / fft
  S("jnp.linalg.inv/solve", lambda a: jnp.linalg.inv(a) + jnp.linalg.solve(a, a), _M),
  S("jnp.linalg.cholesky", jnp.linalg.cholesky, _M),
  S("jnp.linalg.qr", lambda a: jnp.linalg.qr(a)[0], _M),
  S("jnp.linalg.svd", lambda a: jnp.linalg.svd(a)[1], _M),
  S("jnp.linalg.eigh", lambda a: jnp.linalg.eigh(a)[0], _M),
  S("jnp.linalg.det/slogdet", lambda a: jnp.linalg.det(a) + jnp.linalg.slogdet(a)[1], _M),
  S("jnp.linalg.pinv", jnp.linalg.pinv, _M),
  S("jnp.fft.fft/ifft", lambda a: jnp.fft.ifft(jnp.fft.fft(a)).real, _V),
  S("jnp.fft.rfft/irfft", lambda a: jnp.fft.irfft(jnp.fft.rfft(a)), _V),
  S("jnp.fft.fft2", lambda a: jnp.abs(jnp.fft.fft2(a)), _M),
  # --- jax.nn
  S(
    "jax.nn.relu/relu6/hard_tanh", lambda a: jax.nn.relu(a) + jax.nn.relu6(a) + jax.nn.hard_tanh(a)
  ),
  S("jax.nn.gelu", lambda a: jax.nn.gelu(a) + jax.nn.gelu(a, approximate=False)),
  S(
    "jax.nn.silu/sigmoid/softplus",
    lambda a: jax.nn.silu(a) + jax.nn.sigmoid(a) + jax.nn.softplus(a) + jax.nn.log_sigmoid(a),
  ),
  S(
    "jax.nn.elu/selu/celu/leaky_relu",
    lambda a: jax.nn.elu(a) + jax.nn.selu(a) + jax.nn.celu(a) + jax.nn.leaky_relu(a),
  ),
  S(
    "jax.nn.hard_sigmoid/hard_swish/mish",
    lambda a: jax.nn.hard_sigmoid(a) + jax.nn.hard_swish(a) + jax.nn.mish(a) + jax.nn.squareplus(a),
  ),
  S("jax.nn.glu", lambda a: jax.nn.glu(a, -1)),
  S("jax.nn.softmax/log_softmax", lambda a: jax.nn.softmax(a) + jax.nn.log_softmax(a)),
  S("jax.nn.logsumexp", lambda a: jax.nn.logsumexp(a, -1)),
  S("jax.nn.standardize", lambda a: jax.nn.standardize(a, -1)),
  S("jax.nn.one_hot", lambda i: jax.nn.one_hot(i, 5), ((4,),), "int32"),
  S(
    "jax.nn.dot_product_attention",
    lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
    ((2, 5, 2, 4),) * 3,
  ),
  # --- jax.lax
  S("lax.conv_general_dilated", _conv, _IMG),
  S(
    "lax.conv_general_dilated depthwise",
    lambda x: lax.conv_general_dilated(
      x,
      jnp.ones((3, 3, 1, 3)),
      (2, 2),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=3,
    ),
    _IMG,
  ),
  S("lax.conv_transpose", _conv_t, _IMG),
  S(
    "lax.reduce_window max/avg",
    lambda x: (
      lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
      + lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    ),
    _IMG,
  ),
  S(
    "lax.rsqrt/integer_pow/erf",
    lambda a: (
      lax.rsqrt(a)
      + lax.integer_pow(a, 3)
      + lax.erf(a)
      + lax.erfc(a)
      + lax.erf_inv(a)
      + lax.logistic(a)
    ),
  ),
  S("lax.lgamma/digamma", lambda a: lax.lgamma(a) + lax.digamma(a)),
  S("lax.clamp/select", lambda a: lax.clamp(0.0, a, 6.0) + lax.select(a > 0, a, a)),
  S(
    "lax.stop_gradient/reduce_precision",
    lambda a: lax.stop_gradient(a) + lax.reduce_precision(a, exponent_bits=5, mantissa_bits=10),
  ),
  S(
    "lax.cummax/cumlogsumexp",
    lambda a: lax.cummax(a, 2) + lax.cumlogsumexp(a, 2) + lax.cummin(a, 2),
  ),
  S("lax.top_k", lambda a: lax.top_k(a, 2)[0]),
  S("lax.dynamic_update_slice", lambda a: lax.dynamic_update_slice(a, a[:, :1], (0, 1, 0))),
  S("lax.scan", _scan),
  S("lax.fori_loop/while_loop", lambda a: lax.fori_loop(0, 3, lambda i, x: x * 2.0, a)),
  S(
    "lax.cond/switch",
    lambda a: lax.cond(a.sum() > 0, jnp.sin, jnp.cos, a) + lax.switch(1, [jnp.sin, jnp.cos], a),
  ),
  S("lax.map", lambda a: lax.map(jnp.sin, a)),
  S("jax.checkpoint", lambda a: jax.checkpoint(jnp.sin)(a)),
  S("jax.jit (nested)", lambda a: jax.jit(jnp.sin)(a)),
  S("jax.vmap", lambda a, b: jax.vmap(jnp.dot)(a, b), ((2, 3), (2, 3))),
  S("lax.optimization_barrier", lambda a: lax.optimization_barrier(a)),
  S("lax.with_sharding_constraint", lambda a: a),
  S("lax.population_count/clz", lambda a: lax.population_count(a) + lax.clz(a), _I, "int32"),
  S("lax.bitcast_convert_type", lambda a: lax.bitcast_convert_type(a, jnp.int32)),
  S("lax.nextafter/is_finite", lambda a: lax.nextafter(a, a) + lax.is_finite(a)),
  # --- jax.image / jax.random (models call them in the traced function)
  S("jax.image.resize", lambda x: jax.image.resize(x, (1, 12, 12, 3), "bilinear"), _IMG),
  S(
    "jax.random dropout",
    lambda a: jnp.where(jax.random.bernoulli(jax.random.key(0), 0.9, a.shape), a, 0.0),
  ),
  S("jax.random.normal", lambda a: a + jax.random.normal(jax.random.PRNGKey(0), a.shape)),
)
del S


def primitives_of(jaxpr: Any) -> Iterator[str]:
  """Names of every primitive in a (Closed)Jaxpr, recursing into all sub-jaxprs."""
  return (eqn.primitive.name for eqn in J.iter_eqns(jaxpr))


def collect(specs: tuple[CallSpec, ...] = SPECS) -> dict[str, list[str]]:
  """``{primitive: [names of the calls that emit it]}`` in the installed jax.

  A call that no longer traces (a function removed from jax) is reported under the key
  ``'<error> ExceptionType: message'`` instead of aborting the whole catalogue.
  """
  out: dict[str, list[str]] = {}
  for spec in specs:
    try:
      closed = jax.make_jaxpr(spec.fn)(*spec.inputs())
    except Exception as e:  # noqa: BLE001 - a catalogue reports, it does not crash
      out.setdefault(f"<error> {type(e).__name__}: {str(e)[:120]}", []).append(spec.name)
      continue
    for name in dict.fromkeys(primitives_of(closed)):
      out.setdefault(name, []).append(spec.name)
  return out


def verdict(primitive: str) -> str | None:
  """``'rule'``, ``'blocks: <why>'`` or ``None`` (neither a rule nor a documented verdict)."""
  if primitive in R.BLOCKING:
    return f"blocks: {R.BLOCKING[primitive]}"
  if (
    primitive in R.RULES or primitive in J.CALL_PRIMITIVES or primitive in J.CONTROL_FLOW_PRIMITIVES
  ):
    return "rule"
  return None


def main() -> None:
  """Print ``primitive | verdict | emitted by`` for the installed jax; exit 1 on unknowns."""
  table = collect()
  width = max(len(p) for p in table)
  unknown = []
  for prim in sorted(table):
    v = verdict(prim)
    if v is None:
      unknown.append(prim)
    users = ", ".join(table[prim][:3]) + (" ..." if len(table[prim]) > 3 else "")
    print(f"{prim:<{width}}  {v or 'UNKNOWN'}  [{users}]")
  print(
    f"\njax {jax.__version__}: {len(table)} primitives from {len(SPECS)} calls, "
    f"{len(unknown)} without a rule or verdict: {unknown}"
  )
  raise SystemExit(1 if unknown else 0)


if __name__ == "__main__":
  main()
