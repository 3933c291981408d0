"""Optimizers: HESSO and HESSO-CRIC as optax transformations, and group saliency criteria.

``hesso_jax.optim.saliency`` is the criteria module (``saliency.saliency(space, x, d)``) and
``hesso_jax.optim.cric`` the CRIC module path kept for compatibility. The implementation lives in
private modules: ``_common`` (checks, ranking, selection, masked updates), ``_state`` (finding a
HESSO-family state in any optimizer state), ``_hesso``, ``_cric`` and ``_saliency``.
"""

from hesso_jax.optim import cric, saliency
from hesso_jax.optim._common import masked_updates, select_groups, target_num_groups
from hesso_jax.optim._cric import (DEFAULT_CRIC_IMPORTANCE, CricState, cric_schedule,
                                   hesso_cric)
from hesso_jax.optim._hesso import HessoState, hesso
from hesso_jax.optim._saliency import CRITERIA, DEFAULT_IMPORTANCE
from hesso_jax.optim._state import (PruningState, find_pruning_states, pruned_mask,
                                    redundant_mask)

__all__ = [
    "CRITERIA",
    "CricState",
    "DEFAULT_CRIC_IMPORTANCE",
    "DEFAULT_IMPORTANCE",
    "HessoState",
    "PruningState",
    "cric",
    "cric_schedule",
    "find_pruning_states",
    "hesso",
    "hesso_cric",
    "masked_updates",
    "pruned_mask",
    "redundant_mask",
    "saliency",
    "select_groups",
    "target_num_groups",
]
