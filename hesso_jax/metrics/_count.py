"""``count``: parameters and compute of a function in one call, under a stated convention."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hesso_jax.metrics._flops import count_flops
from hesso_jax.metrics._params import count_params

__all__ = ["count"]


def count(
  fn: Callable[..., Any],
  variables: Any,
  *args: Any,
  params_only: bool = False,
  elementwise: bool = False,
  unit: str = "flops",
  **kwargs: Any,
) -> dict[str, Any]:
  """Parameters and compute of ``fn(variables, *args, **kwargs)``: ``{'params': int, unit: float}``.

  What is counted (see :mod:`hesso_jax.metrics`):

  * ``params``: array elements of ``variables``. Default: every collection, buffers included
    (a linen dict's ``'params'`` AND ``'batch_stats'``). ``params_only=True``: parameters only
    (linen ``'params'``, nnx ``nnx.Param``), as OTO and the torch tools count.
  * ``unit='flops'`` (default): the ``'flops'`` entry is 2 x MACs of every ``dot_general`` and
    convolution (``elementwise=True`` adds 1 flop per element of elementwise ops and
    reductions). ``unit='macs'``: the ``'macs'`` entry holds the multiply-accumulates (as OTO,
    thop and ptflops report them; FLOPs = 2 x MACs).

  Leaves of ``variables`` and ``args`` may be ``jax.ShapeDtypeStruct``. The keyword names
  ``params_only``, ``elementwise`` and ``unit`` are consumed here and not passed to ``fn``.

  Example (a dense layer on a batch of 8: 8 * 4 * 3 = 96 MACs):

  >>> import jax, jax.numpy as jnp
  >>> import hesso_jax as hj
  >>> variables = {"params": {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)},
  ...              "batch_stats": {"mean": jnp.zeros(3)}}
  >>> fn = lambda v, x: x @ v["params"]["w"] + v["params"]["b"]
  >>> x = jax.ShapeDtypeStruct((8, 4), jnp.float32)
  >>> hj.count(fn, variables, x)
  {'params': 18, 'flops': 192.0}
  >>> hj.count(fn, variables, x, params_only=True, unit="macs")
  {'params': 15, 'macs': 96.0}
  """
  return {
    "params": count_params(variables, params_only=params_only),
    unit: count_flops(fn, variables, *args, elementwise=elementwise, unit=unit, **kwargs),
  }
