"""Group saliency criteria (public module; the implementation lives in ``_saliency``).

``hesso_jax.optim.saliency`` (also ``hj.saliency``) keeps its historical module path:
``saliency.saliency(space, x, d)``, ``saliency.CRITERIA``, the raw criteria and ``normalize``.
"""

from hesso_jax.optim._saliency import (CRITERIA, DEFAULT_IMPORTANCE, EPS, GroupStats,
                                       avg_magnitude, combine, cosine_similarity, group_stats,
                                       magnitude, normalize, raw_criteria, saliency,
                                       taylor_first_order, taylor_second_order,
                                       validate_importance)

__all__ = [
    "CRITERIA",
    "DEFAULT_IMPORTANCE",
    "EPS",
    "GroupStats",
    "avg_magnitude",
    "combine",
    "cosine_similarity",
    "group_stats",
    "magnitude",
    "normalize",
    "raw_criteria",
    "saliency",
    "taylor_first_order",
    "taylor_second_order",
    "validate_importance",
]
