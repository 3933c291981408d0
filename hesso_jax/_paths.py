"""Key paths: one spelling for parameter paths, and flax.nnx's trailing ``'value'``.

A *path* is a tuple of ``str`` / ``int`` keys (``('params', 'conv1', 'kernel')``). Users may
write it as ``'params/conv1/kernel'`` or pass a jax key path; :func:`normalize_path` turns every
form into the tuple.

flax.nnx spells one parameter two ways: an ``nnx.State`` flattens each ``Variable`` to
``(..., 'kernel', 'value')`` while ``nnx.as_pure`` (what ``nnx.Optimizer`` hands to a
transformation) gives ``(..., 'kernel')``. :func:`spellings` and :func:`match_leaf` are the one
place that knows this; ``SearchSpace.rebase`` uses them to respell a search space for a tree.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeAlias

import jax

__all__ = [
  "NNX_VALUE",
  "Path",
  "leaves_with_paths",
  "match_leaf",
  "normalize_path",
  "path_str",
  "spellings",
  "strip_value",
  "tree_map_with_paths",
]

Path: TypeAlias = tuple  # tuple of str | int keys

NNX_VALUE = "value"
"""The key nnx appends to a ``Variable``'s path when a State is flattened."""


def _key_to_plain(k: Any) -> str | int:
  """A jax key (DictKey, SequenceKey, GetAttrKey, FlattenedIndexKey) as a str or int."""
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      v = getattr(k, attr)
      return v if isinstance(v, (str, int)) else str(v)
  return str(k)


def normalize_path(path: Any) -> Path:
  """A user path (``'a/b/c'``, ``('a', 'b')`` or a jax key path) as a tuple of str/int keys."""
  if isinstance(path, str):
    return tuple(p for p in path.split("/") if p)
  return tuple(k if isinstance(k, (str, int)) else _key_to_plain(k) for k in path)


def path_str(path: Path) -> str:
  """``('params', 'conv', 'kernel')`` -> ``'params/conv/kernel'`` (for messages and JSON)."""
  return "/".join(str(k) for k in path)


def leaves_with_paths(tree: Any) -> list[tuple[Path, Any]]:
  """(normalized path, leaf) pairs in tree-flatten order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(normalize_path(p), leaf) for p, leaf in flat]


def tree_map_with_paths(fn: Callable[[Path, Any], Any], tree: Any) -> Any:
  """``jax.tree_util.tree_map_with_path`` with normalized paths."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(normalize_path(p), x), tree)


def strip_value(path: Path) -> Path:
  """``path`` without nnx's trailing ``'value'`` (unchanged when it has none)."""
  return path[:-1] if path and path[-1] == NNX_VALUE else path


def spellings(path: Path) -> tuple[Path, ...]:
  """The ways a tree may spell ``path``: itself first, then with / without a trailing 'value'."""
  if path and path[-1] == NNX_VALUE:
    return (path, path + (NNX_VALUE,), path[:-1])
  return (path, path + (NNX_VALUE,))


def match_leaf(path: Path, leaf_paths: Collection[Path]) -> Path | None:
  """The element of ``leaf_paths`` that spells ``path`` (exact match preferred), or None."""
  for candidate in spellings(path):
    if candidate in leaf_paths:
      return candidate
  return None
