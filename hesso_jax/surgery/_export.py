"""Export the compressed callable as StableHLO with ``jax.export``."""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax import export as jax_export


def export(small_fn: Callable, small_variables: Any, *args, **kwargs) -> jax_export.Exported:
  """``jax.export`` of ``small_fn(small_variables, *args)`` (variables are inputs).

  Keyword arguments are static: they are baked into the exported computation.

  Arguments may be arrays or ``jax.ShapeDtypeStruct`` (use symbolic shapes from
  ``jax.export.symbolic_shape`` for a polymorphic batch). ``exported.serialize()`` gives bytes
  (needs the ``flatbuffers`` package); ``jax.export.deserialize(b).call(small_variables, *args)``
  runs it.
  """
  to_spec = lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
      jax.numpy.shape(x), jax.numpy.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype)
  v_spec, a_spec = jax.tree_util.tree_map(to_spec, (small_variables, args))
  f = jax.jit(lambda v, *a: small_fn(v, *a, **kwargs))
  return jax_export.export(f)(v_spec, *a_spec)
