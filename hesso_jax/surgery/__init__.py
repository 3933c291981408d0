"""Surgery: prune arrays by keep-masks, manifests, nnx module surgery (compress/export: lead)."""

from hesso_jax.surgery.prune import (
    check_keep,
    kept_sizes,
    prune,
    prune_like,
    prune_opt_state,
    prune_space,
    rebase_space,
    reindex_groups,
    resolve_keep,
    size_report,
)
from hesso_jax.surgery.manifest import apply_manifest, load_manifest, make_manifest, save_manifest

try:  # flax is a hard dependency, but keep the array surgery importable without nnx
  from hesso_jax.surgery.nnx_surgery import prune_nnx
except ImportError:  # pragma: no cover
  prune_nnx = None
