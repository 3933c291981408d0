"""The ``>>>`` examples in the public docstrings run and print what they show."""

import doctest
import importlib

import pytest

MODULES = [
  "hesso_jax.surgery._prune",  # prune
  "hesso_jax.surgery._nnx",  # prune_nnx
  "hesso_jax.surgery._export",  # export
  "hesso_jax.metrics._count",  # count
  "hesso_jax.checkpoint",  # save_checkpoint
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  result = doctest.testmod(module, optionflags=flags, verbose=False)
  assert result.attempted > 0, f"{name} has no docstring examples"
  assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
