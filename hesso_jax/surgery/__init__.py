"""Surgery: smaller arrays, optimizer states, search spaces and modules from a keep-mask.

* :mod:`hesso_jax.surgery._keep` -- the keep policy (validation, default: producer norm != 0);
* :mod:`hesso_jax.surgery._plan` -- keep-mask -> per-(path, axis) index masks, sizes, the pruned
  search space;
* :mod:`hesso_jax.surgery._prune` -- array surgery on pytrees (:func:`prune`, :func:`prune_like`);
* :mod:`hesso_jax.surgery._opt_state` -- optimizer-state surgery (:func:`prune_opt_state`);
* :mod:`hesso_jax.surgery._manifest` -- JSON records of a pruning;
* :mod:`hesso_jax.surgery._nnx` -- flax.nnx module surgery (:func:`prune_nnx`);
* :mod:`hesso_jax.surgery._export` -- StableHLO export;
* :mod:`hesso_jax.surgery.compress` -- the compressed callable (re-traced jaxpr).
"""

from hesso_jax.surgery._export import export
from hesso_jax.surgery._keep import check_keep, resolve_keep
from hesso_jax.surgery._manifest import apply_manifest, load_manifest, make_manifest, save_manifest
from hesso_jax.surgery._nnx import prune_nnx
from hesso_jax.surgery._opt_state import prune_opt_state, reindex_groups
from hesso_jax.surgery._plan import kept_sizes, prune_space, size_report
from hesso_jax.surgery._prune import prune, prune_like, rebase_space

__all__ = [
  "apply_manifest",
  "check_keep",
  "export",
  "kept_sizes",
  "load_manifest",
  "make_manifest",
  "prune",
  "prune_like",
  "prune_nnx",
  "prune_opt_state",
  "prune_space",
  "rebase_space",
  "reindex_groups",
  "resolve_keep",
  "save_manifest",
  "size_report",
]
