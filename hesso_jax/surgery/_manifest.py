"""A JSON-serialisable record of a pruning: which indices of which parameter axes were kept.

A manifest lets a pruned checkpoint be restored without the search space: build the full
model's abstract variables (``jax.eval_shape(model.init, ...)``), ``apply_manifest`` to get the
compressed ``jax.ShapeDtypeStruct`` tree, and hand that to orbax as the restore target.

Format (version 1)::

    {
      "format": "hesso_jax.manifest",
      "version": 1,
      "num_groups": G, "num_kept": K,
      "keep": [true, false, ...],            # per prunable group (the keep-mask used)
      "spaces": {label: [old_size, new_size]},
      "params": {
        "params/conv1/kernel": {
          "old_shape": [3, 3, 1, 8] | null,  # when variables were given to make_manifest
          "axes": {"3": {"old": 8, "kept": [0, 2, 5, ...]}}
        }, ...
      }
    }

Paths are '/'-joined key paths (nnx's trailing '/value' is optional on both sides).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from hesso_jax._paths import leaves_with_paths, normalize_path, path_str, spellings
from hesso_jax.space import SearchSpace, require_space
from hesso_jax.surgery._keep import check_keep, resolve_keep
from hesso_jax.surgery._plan import axis_plan, kept_sizes, slice_leaf

__all__ = ["apply_manifest", "load_manifest", "make_manifest", "save_manifest"]

MANIFEST_FORMAT = "hesso_jax.manifest"
MANIFEST_VERSION = 1


def make_manifest(space: SearchSpace, keep: Any = None, variables: Any = None) -> dict:
  """The manifest of pruning ``space`` with ``keep`` (see module docstring).

  ``keep`` may be None only when ``variables`` is given (then: producer norm != 0). When
  ``variables`` is given, the old full shapes are recorded too and the space is checked
  against them.
  """
  require_space(space, "make_manifest")
  if keep is None:
    if variables is None:
      raise ValueError("make_manifest: keep=None needs variables to compute group norms")
    keep = resolve_keep(space, variables, None)
  k = check_keep(space, keep)
  shapes = {}
  if variables is None:
    space = space.canonical()
  else:
    space = space.rebase(variables)
    shapes = {p: tuple(int(d) for d in np.shape(x)) for p, x in leaves_with_paths(variables)}
  plan = axis_plan(space, k)
  params = {}
  for p, axes in sorted(plan.items(), key=lambda kv: path_str(kv[0])):
    old_shape = shapes.get(p)
    for a, m in axes.items():
      if old_shape is not None and (a >= len(old_shape) or old_shape[a] != m.shape[0]):
        raise ValueError(
          f"make_manifest: {path_str(p)} has shape {old_shape}; the search space expects axis "
          f"{a} of length {m.shape[0]}"
        )
    params[path_str(p)] = {
      "old_shape": list(old_shape) if old_shape is not None else None,
      "axes": {
        str(a): {"old": int(m.shape[0]), "kept": [int(i) for i in np.flatnonzero(m)]}
        for a, m in sorted(axes.items())
      },
    }
  return {
    "format": MANIFEST_FORMAT,
    "version": MANIFEST_VERSION,
    "num_groups": int(space.num_groups),
    "num_kept": int(k.sum()),
    "keep": [bool(b) for b in k],
    "spaces": {lab: [o, n] for lab, (o, n) in kept_sizes(space, k).items()},
    "params": params,
  }


def _check_manifest(manifest: dict) -> None:
  if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
    raise ValueError("not a hesso_jax manifest (missing format field)")
  if manifest.get("version") != MANIFEST_VERSION:
    raise ValueError(
      f"unsupported manifest version {manifest.get('version')!r} (this hesso_jax reads "
      f"version {MANIFEST_VERSION})"
    )


def apply_manifest(manifest: dict, variables: Any, *, strict: bool = True) -> Any:
  """Slice ``variables`` as recorded in ``manifest``.

  Leaves may be concrete arrays or ``jax.ShapeDtypeStruct`` (giving the compressed abstract
  shapes, e.g. an orbax restore target; shardings are carried over). With ``strict`` (default)
  every manifest path must be a leaf of ``variables``; a leaf whose shape disagrees with the
  recorded old lengths raises ValueError.
  """
  _check_manifest(manifest)
  entries = manifest["params"]
  plan = {}
  for ps, e in entries.items():
    plan[ps] = {int(a): _mask(int(d["old"]), d["kept"]) for a, d in e["axes"].items()}
  alias = {k: k for k in plan}  # exact spellings first, then nnx's with / without 'value'
  for k in plan:
    for spelling in spellings(normalize_path(k)):
      alias.setdefault(path_str(spelling), k)
  used = set()

  def leaf_fn(kp: Any, x: Any) -> Any:
    ps = path_str(normalize_path(kp))
    key = alias.get(ps)
    if key is None:
      return x
    used.add(key)
    old_shape = entries[key].get("old_shape")
    if old_shape is not None and tuple(np.shape(x)) != tuple(old_shape):
      raise ValueError(
        f"apply_manifest: {ps} has shape {tuple(np.shape(x))} but the manifest was made for "
        f"{tuple(old_shape)}"
      )
    return slice_leaf(x, plan[key], ps)

  out = jax.tree_util.tree_map_with_path(leaf_fn, variables)
  missing = set(plan) - used
  if strict and missing:
    raise ValueError(
      f"apply_manifest: manifest paths not found in variables: {sorted(missing)[:8]} (pass "
      "strict=False to skip them)"
    )
  return out


def _mask(n: int, kept: list[int]) -> np.ndarray:
  m = np.zeros((n,), bool)
  m[np.asarray(kept, dtype=np.int64)] = True
  return m


def save_manifest(manifest: dict, path: str | os.PathLike) -> None:
  """Write the manifest as JSON."""
  _check_manifest(manifest)
  with open(path, "w") as f:
    json.dump(manifest, f, indent=1)


def load_manifest(path: str | os.PathLike) -> dict:
  """Read a manifest written by :func:`save_manifest` (checks format and version)."""
  with open(path) as f:
    m = json.load(f)
  _check_manifest(m)
  return m
