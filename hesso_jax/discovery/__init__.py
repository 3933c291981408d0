"""Automatic search-space discovery from jaxprs."""

from hesso_jax.discovery.analysis import Analysis, analyse, discover

__all__ = ["Analysis", "analyse", "discover"]
