"""HESSO-CRIC (public module path kept for compatibility; the implementation lives in ``_cric``).

``from hesso_jax.optim.cric import cric_schedule`` and ``hj.optim.cric.cric_schedule`` keep working;
new code can use ``hesso_jax.optim.cric_schedule``.
"""

from hesso_jax.optim._cric import (DEFAULT_CRIC_IMPORTANCE, CricState, cric_schedule,
                                   hesso_cric)

__all__ = ["CricState", "DEFAULT_CRIC_IMPORTANCE", "cric_schedule", "hesso_cric"]
