"""Export the compressed callable as StableHLO with ``jax.export``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax import export as jax_export


def export(small_fn: Callable, small_variables: Any, *args, **kwargs) -> jax_export.Exported:
  """``jax.export`` of ``small_fn(small_variables, *args)`` (variables are inputs).

  Keyword arguments are static: they are baked into the exported computation.

  Arguments may be arrays or ``jax.ShapeDtypeStruct`` (use symbolic shapes from
  ``jax.export.symbolic_shape`` for a polymorphic batch). ``exported.serialize()`` gives bytes
  (needs the ``flatbuffers`` package); ``jax.export.deserialize(b).call(small_variables, *args)``
  runs it.

  Example (a batch-polymorphic export of a small function):

  >>> import jax, jax.numpy as jnp
  >>> import hesso_jax as hj
  >>> fn = lambda v, x: jnp.tanh(x @ v["w"])
  >>> v = {"w": jnp.ones((4, 2))}
  >>> (b,) = jax.export.symbolic_shape("b")
  >>> exported = hj.export(fn, v, jax.ShapeDtypeStruct((b, 4), jnp.float32))
  >>> [str(a) for a in exported.in_avals]
  ['float32[4,2]', 'float32[b,4]']
  >>> exported.call(v, jnp.ones((5, 4))).shape
  (5, 2)
  """
  to_spec = lambda x: (
    x
    if isinstance(x, jax.ShapeDtypeStruct)
    else jax.ShapeDtypeStruct(
      jax.numpy.shape(x), jax.numpy.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
    )
  )
  v_spec, a_spec = jax.tree_util.tree_map(to_spec, (small_variables, args))
  f = jax.jit(lambda v, *a: small_fn(v, *a, **kwargs))
  return jax_export.export(f)(v_spec, *a_spec)
