"""HESSO-CRIC (work in progress)."""

from __future__ import annotations

from typing import NamedTuple

import jax

from hesso_jax.optim.saliency import DEFAULT_IMPORTANCE

DEFAULT_CRIC_IMPORTANCE = {**DEFAULT_IMPORTANCE, "loss": 1.0}


class CricState(NamedTuple):
  count: jax.Array
  redundant: jax.Array
  pruned: jax.Array


def hesso_cric(*args, **kwargs):
  raise NotImplementedError("hesso_cric is not implemented yet")
