"""Parameter and compute counts, and group-sparsity reports.

* :mod:`hesso_jax.metrics._flops` -- the FLOP / MAC counting interpreter over jaxprs, with the
  counting convention (FLOPs = 2 x MACs of ``dot_general`` and convolutions; elementwise ops
  optional);
* :mod:`hesso_jax.metrics._params` -- parameter counts, with or without buffers;
* :mod:`hesso_jax.metrics._count` -- :func:`count`, both in one call;
* :mod:`hesso_jax.metrics._sparsity` -- :func:`sparsity_report`.
"""

from hesso_jax.metrics._count import count
from hesso_jax.metrics._flops import UNITS, count_flops, jaxpr_flops
from hesso_jax.metrics._params import count_params
from hesso_jax.metrics._sparsity import sparsity_report

__all__ = ["UNITS", "count", "count_flops", "count_params", "jaxpr_flops", "sparsity_report"]
