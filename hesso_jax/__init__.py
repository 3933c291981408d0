"""hesso_jax: HESSO / HESSO-CRIC structured pruning for JAX.

Public API only (re-exports). See DESIGN.md section 2 for the contract.
"""

from hesso_jax.space import AxisSlice, ChannelSpace, SearchSpace, PRODUCER, CONSUMER, STATE

# optimizer
from hesso_jax.optim import (CRITERIA, DEFAULT_IMPORTANCE, DEFAULT_CRIC_IMPORTANCE, CricState, HessoState,
                             hesso, hesso_cric, pruned_mask, redundant_mask, saliency)
# discovery
from hesso_jax.discovery import discover
# surgery
from hesso_jax.surgery.compress import compress
from hesso_jax.surgery.export import export
from hesso_jax.surgery import (apply_manifest, kept_sizes, load_manifest, make_manifest, prune, prune_like,
                               prune_nnx, prune_opt_state, prune_space, reindex_groups, save_manifest,
                               size_report)
# metrics
from hesso_jax.metrics import count, count_flops, count_params, sparsity_report

__version__ = "0.1.0"

# scale-out
from hesso_jax.sharding import (abstract_like, abstract_opt_state, opt_state_shardings, param_shardings,
                                replicated, sharded_init)
from hesso_jax.checkpoint import (CheckpointMismatchError, checkpoint_metadata, latest_step,
                                  restore_checkpoint, save_checkpoint)
