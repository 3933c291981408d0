"""hesso_jax: HESSO / HESSO-CRIC structured pruning for JAX.

Public API only (re-exports). See DESIGN.md section 2 for the contract.
"""

from hesso_jax.space import AxisSlice, ChannelSpace, SearchSpace, PRODUCER, CONSUMER, STATE

# optimizer
# discovery
# surgery
# metrics

__version__ = "0.1.0"
