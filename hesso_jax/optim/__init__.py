"""Optimizers: HESSO and HESSO-CRIC as optax transformations, and group saliency criteria.

``hesso_jax.optim.saliency`` is the criteria module (``saliency.saliency(space, x, d)``).
"""

from hesso_jax.optim import saliency
from hesso_jax.optim.saliency import CRITERIA, DEFAULT_IMPORTANCE
from hesso_jax.optim.hesso import HessoState, hesso, pruned_mask, redundant_mask, select_groups
from hesso_jax.optim.cric import CricState, DEFAULT_CRIC_IMPORTANCE, hesso_cric
