"""hesso_jax: HESSO / HESSO-CRIC structured pruning for JAX.

The public API (``import hesso_jax as hj``), read top-down as the pipeline:

* search space: :class:`SearchSpace`, :class:`ChannelSpace`, :class:`AxisSlice` and the roles;
* discovery: :func:`discover` (jaxpr analysis -> search space);
* optimizers: :func:`hesso`, :func:`hesso_cric` (optax transformations) and their state lookups;
* surgery: :func:`compress`, :func:`prune`, :func:`prune_nnx`, :func:`prune_opt_state`,
  manifests, :func:`export`;
* metrics: :func:`count`, :func:`count_params`, :func:`count_flops`, :func:`sparsity_report`;
* scale-out: shardings and orbax checkpoints.
"""

from hesso_jax.checkpoint import (
  CheckpointMismatchError,
  checkpoint_metadata,
  latest_step,
  restore_checkpoint,
  save_checkpoint,
)
from hesso_jax.discovery import discover
from hesso_jax.metrics import count, count_flops, count_params, sparsity_report
from hesso_jax.optim import (
  CRITERIA,
  DEFAULT_CRIC_IMPORTANCE,
  DEFAULT_IMPORTANCE,
  CricState,
  HessoState,
  hesso,
  hesso_cric,
  pruned_mask,
  redundant_mask,
  saliency,
)
from hesso_jax.sharding import (
  abstract_like,
  abstract_opt_state,
  opt_state_shardings,
  param_shardings,
  replicated,
  sharded_init,
)
from hesso_jax.space import CONSUMER, PRODUCER, STATE, AxisSlice, ChannelSpace, SearchSpace
from hesso_jax.surgery import (
  apply_manifest,
  export,
  kept_sizes,
  load_manifest,
  make_manifest,
  prune,
  prune_like,
  prune_nnx,
  prune_opt_state,
  prune_space,
  reindex_groups,
  save_manifest,
  size_report,
)
from hesso_jax.surgery.compress import compress

__version__ = "0.1.0"

__all__ = [
  "CONSUMER",
  "CRITERIA",
  "DEFAULT_CRIC_IMPORTANCE",
  "DEFAULT_IMPORTANCE",
  "PRODUCER",
  "STATE",
  "AxisSlice",
  "ChannelSpace",
  "CheckpointMismatchError",
  "CricState",
  "HessoState",
  "SearchSpace",
  "abstract_like",
  "abstract_opt_state",
  "apply_manifest",
  "checkpoint_metadata",
  "compress",
  "count",
  "count_flops",
  "count_params",
  "discover",
  "export",
  "hesso",
  "hesso_cric",
  "kept_sizes",
  "latest_step",
  "load_manifest",
  "make_manifest",
  "opt_state_shardings",
  "param_shardings",
  "prune",
  "prune_like",
  "prune_nnx",
  "prune_opt_state",
  "prune_space",
  "pruned_mask",
  "redundant_mask",
  "reindex_groups",
  "replicated",
  "restore_checkpoint",
  "saliency",
  "save_checkpoint",
  "save_manifest",
  "sharded_init",
  "size_report",
  "sparsity_report",
]
