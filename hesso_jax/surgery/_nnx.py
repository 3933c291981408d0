"""Surgery on flax.nnx modules: a new, smaller module with consistent static attributes.

``prune_nnx(model, space, keep)`` splits the model, prunes its state with
:func:`hesso_jax.prune` (every Variable collection: Param, BatchStat, ...), merges it into a
*new* module (the input is not touched) and rewrites the static attributes that the layers use
in ``__call__`` (and that describe their config) from the new parameter shapes:

* ``nnx.Linear``: in_features, out_features
* ``nnx.LinearGeneral``: in_features, out_features, batch_axis (tuples, from the kernel shape)
* ``nnx.Einsum``: kernel_shape, bias_shape
* ``nnx.Conv`` / ``nnx.ConvTranspose``: in_features, out_features, kernel_shape and, for grouped
  convolutions, feature_group_count (out channels per group are preserved); a ``mask`` array is
  sliced like the kernel
* ``nnx.BatchNorm`` / ``nnx.LayerNorm`` / ``nnx.RMSNorm`` / ``nnx.GroupNorm``: num_features
  (GroupNorm: the channels per group must stay whole; normally discovery leaves it unprunable)
* ``nnx.Embed``: num_embeddings, features
* ``nnx.MultiHeadAttention``: num_heads, num_kv_heads, head_dim, qkv_features, in_features,
  in_kv_features, out_features (from query/key/value/out kernels). When the query/key head_dim
  shrinks, the attention's ``1/sqrt(head_dim)`` (recomputed from the *new* depth by
  ``dot_product_attention``) would change; we fold ``sqrt(new/old)`` into the query kernel and
  bias so the output is unchanged (only with the default ``attention_fn`` and
  ``normalize_qk=False``; otherwise ValueError).

Modules of other types whose parameters changed shape get a UserWarning: their static
attributes may be stale (the arrays are still pruned correctly).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import FrozenDict
from flax.nnx.nn import attention as _nnx_attention

from hesso_jax._paths import path_str
from hesso_jax.space import SearchSpace, require_space
from hesso_jax.surgery._keep import resolve_keep
from hesso_jax.surgery._plan import axis_plan, slice_leaf
from hesso_jax.surgery._prune import prune

__all__ = ["prune_nnx"]


def _arr(v):
  if v is None:
    return None
  if isinstance(v, nnx.Variable):
    return v.get_value()
  return v


def _shape(v):
  a = _arr(v)
  return None if a is None else tuple(np.shape(a))


def _fix_linear(mod: nnx.Linear, old) -> None:
  kin, kout = _shape(mod.kernel)
  mod.in_features, mod.out_features = int(kin), int(kout)


def _fix_linear_general(mod: nnx.LinearGeneral, old) -> None:
  ks = _shape(mod.kernel)
  nb, ni, no = len(mod.batch_axis), len(mod.in_features), len(mod.out_features)
  mod.in_features = tuple(int(d) for d in ks[nb : nb + ni])
  mod.out_features = tuple(int(d) for d in ks[nb + ni : nb + ni + no])
  if nb:
    mod.batch_axis = FrozenDict({a: int(ks[i]) for i, a in enumerate(mod.batch_axis.keys())})


def _fix_einsum(mod: nnx.Einsum, old) -> None:
  mod.kernel_shape = _shape(mod.kernel)
  if _arr(mod.bias) is not None:
    mod.bias_shape = _shape(mod.bias)


def _fix_conv(mod, old) -> None:
  ks = _shape(mod.kernel)
  cin_g, cout = int(ks[-2]), int(ks[-1])
  g = int(getattr(mod, "feature_group_count", 1) or 1)
  if g > 1:
    old_out = int(old["out_features"])
    per_group = old_out // g
    if cout % per_group:
      raise ValueError(
        f"prune_nnx: grouped conv (feature_group_count={g}) out_features {old_out} -> {cout} does "
        f"not keep whole groups of {per_group} output channels"
      )
    g = cout // per_group
    mod.feature_group_count = g
  mod.in_features = cin_g * g
  mod.out_features = cout
  mod.kernel_shape = ks


def _fix_conv_transpose(mod, old) -> None:
  ks = _shape(mod.kernel)
  mod.in_features, mod.out_features = int(ks[-2]), int(ks[-1])
  mod.kernel_shape = ks


def _fix_norm(mod, old) -> None:
  for name in ("scale", "bias", "mean", "var"):
    s = _shape(getattr(mod, name, None))
    if s is not None:
      mod.num_features = int(s[0])
      break
  if isinstance(mod, (nnx.LayerNorm, nnx.RMSNorm)) and mod.num_features != old["num_features"]:
    # The traced jaxpr divides the statistics by the ORIGINAL width (exact, what hj.compress
    # keeps); a rebuilt norm would divide by the new width and silently change the output.
    raise ValueError(
      f"prune_nnx: {type(mod).__name__} num_features {old['num_features']} -> "
      f"{mod.num_features}: a rebuilt norm averages over the new width, which changes its output. "
      "Use hj.compress (it keeps the traced 1/width), or keep this space out of pruning "
      "(hj.discover(..., ignore=...))"
    )
  n = int(mod.num_features)  # nnx.GroupNorm declares no num_features attribute
  if isinstance(mod, nnx.GroupNorm) and n != old["num_features"]:
    per = old["num_features"] // mod.num_groups if mod.num_groups else None
    if per and n % per == 0 and mod.group_size is None:
      mod.num_groups = n // per
    elif mod.group_size is not None and n % mod.group_size == 0:
      mod.num_groups = n // mod.group_size
    else:
      raise ValueError(
        f"prune_nnx: GroupNorm num_features {old['num_features']} -> {n} does not keep whole groups"
      )


def _fix_embed(mod: nnx.Embed, old) -> None:
  n, f = _shape(mod.embedding)
  mod.num_embeddings, mod.features = int(n), int(f)


def _fix_mha(mod: nnx.MultiHeadAttention, old) -> None:
  q, k, v, o = (
    _shape(mod.query.kernel),
    _shape(mod.key.kernel),
    _shape(mod.value.kernel),
    _shape(mod.out.kernel),
  )
  if len(q) != 3 or len(k) != 3 or len(v) != 3 or len(o) != 3:
    raise ValueError("prune_nnx: unexpected MultiHeadAttention kernel ranks")
  heads, head_dim = int(q[1]), int(q[2])
  kv_heads = int(k[1])
  if heads % kv_heads:
    raise ValueError(
      f"prune_nnx: MultiHeadAttention num_heads {heads} not divisible by num_kv_heads {kv_heads} "
      "after pruning"
    )
  old_hd = int(old["head_dim"])
  if head_dim != old_hd:
    if mod.normalize_qk:
      raise ValueError(
        "prune_nnx: cannot prune the head_dim of a MultiHeadAttention with normalize_qk=True "
        "(the LayerNorm reduces over head_dim)"
      )
    if mod.attention_fn is not _nnx_attention.dot_product_attention:
      raise ValueError(
        "prune_nnx: head_dim of a MultiHeadAttention with a custom attention_fn changed; cannot "
        "guarantee its 1/sqrt(head_dim) scaling is preserved (use hj.compress instead)"
      )
    # dot_product_attention divides q by sqrt(q.shape[-1]); keep the old scaling.
    factor = math.sqrt(head_dim / old_hd)
    for var in (mod.query.kernel, mod.query.bias):
      if isinstance(var, nnx.Variable):
        x = var.get_value()
        var.set_value((x * jnp.asarray(factor, x.dtype)).astype(x.dtype))
  if int(v[2]) != head_dim:
    msg = (
      f"prune_nnx: MultiHeadAttention value head_dim ({int(v[2])}) differs from the query/key "
      f"head_dim ({head_dim}) after pruning"
    )
    if mod.attention_fn is _nnx_attention.dot_product_attention:
      raise ValueError(
        msg + "; nnx's dot_product_attention needs equal depths. Keep as many value head_dim "
        "channels as query/key ones, or use hj.compress"
      )
    warnings.warn(
      msg + "; the custom attention_fn must support that, and the module's "
      "head_dim/qkv_features attributes describe query/key only",
      UserWarning,
      stacklevel=3,
    )
  mod.num_heads = heads
  mod.num_kv_heads = kv_heads
  mod.head_dim = head_dim
  mod.qkv_features = heads * head_dim
  mod.in_features = int(q[0])
  mod.in_kv_features = int(k[0])
  mod.out_features = int(o[-1])


# (type, attributes to remember before the fix, fixer). Order matters: subclasses first.
_FIXERS: tuple[tuple[type, tuple[str, ...], Callable[[Any, dict[str, Any]], None]], ...] = (
  (nnx.MultiHeadAttention, ("head_dim",), _fix_mha),
  (nnx.LinearGeneral, (), _fix_linear_general),
  (nnx.Linear, (), _fix_linear),
  (nnx.Einsum, (), _fix_einsum),
  (nnx.ConvTranspose, (), _fix_conv_transpose),
  (nnx.Conv, ("out_features",), _fix_conv),
  (nnx.BatchNorm, ("num_features",), _fix_norm),
  (nnx.LayerNorm, ("num_features",), _fix_norm),
  (nnx.RMSNorm, ("num_features",), _fix_norm),
  (nnx.GroupNorm, ("num_features",), _fix_norm),
  (nnx.Embed, (), _fix_embed),
)


def prune_nnx(model: nnx.Module, space: SearchSpace, keep: Any = None) -> nnx.Module:
  """A new, smaller nnx module: pruned arrays and consistent static attributes.

  Args:
    model: an nnx.Module (not modified).
    space: the SearchSpace over ``nnx.split(model)[1]`` (the full nnx.State). Member paths may
      be written with or without nnx's trailing 'value' (``('linear1', 'kernel')``).
    keep: None (keep groups whose producer norm is not 0) or bool (space.num_groups,).

  Returns:
    A new module; ``small(x)`` runs and equals ``model(x)`` when the dropped groups are zero.

  Example (hidden channel 1 of an nnx MLP is zero, so it can go):

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> import hesso_jax as hj
  >>> class MLP(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.l0, self.l1 = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.l1(nnx.relu(self.l0(x)))
  >>> model = MLP(nnx.Rngs(0))
  >>> model.l0.kernel[...] = model.l0.kernel[...].at[:, 1].set(0.0)
  >>> space = hj.SearchSpace((hj.ChannelSpace(4, (
  ...     hj.AxisSlice("l0/kernel", 1), hj.AxisSlice("l0/bias", 0),
  ...     hj.AxisSlice("l1/kernel", 0, hj.CONSUMER))),))
  >>> small = hj.prune_nnx(model, space)
  >>> small.l0.out_features, small.l1.in_features, small.l0.kernel[...].shape
  (3, 3, (3, 3))
  >>> x = jnp.ones((2, 3))
  >>> bool(jnp.allclose(small(x), model(x)))
  True
  """
  require_space(space, "prune_nnx")
  if not isinstance(model, nnx.Module):
    raise TypeError(f"prune_nnx: model must be an nnx.Module, got {type(model).__name__}")
  graphdef, state = nnx.split(model)
  space = space.rebase(state)
  k = resolve_keep(space, state, keep)
  plan = axis_plan(space, k)
  changed = {p for p, axes in plan.items() if any(not m.all() for m in axes.values())}
  # prune() re-resolves keep; pass the validated mask and silence its duplicate warning
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    new_state = prune(state, space, k)
  small = nnx.merge(graphdef, new_state)

  # module path -> (module) for modules owning a changed Variable
  for mpath, mod in list(nnx.iter_modules(small)):
    mpath = tuple(mpath)
    n = len(mpath)
    is_changed = any(len(p) == n + 2 and p[:n] == mpath for p in changed)
    if isinstance(mod, nnx.MultiHeadAttention):
      is_changed = any(p[: len(mpath)] == mpath for p in changed)
    if not is_changed:
      continue
    for typ, remember, fixer in _FIXERS:
      if isinstance(mod, typ):
        old = {a: getattr(mod, a) for a in remember}
        fixer(mod, old)
        if (
          isinstance(mod, (nnx.Conv, nnx.ConvTranspose)) and getattr(mod, "mask", None) is not None
        ):
          kp = mpath + ("kernel", "value")
          if kp in plan:
            mask = mod.mask
            mod.mask = slice_leaf(_arr(mask), plan[kp], path_str(kp))
        break
    else:
      warnings.warn(
        f"prune_nnx: module {path_str(mpath) or '<root>'} ({type(mod).__name__}) had parameters "
        "pruned but hesso_jax does not know its static attributes; they may be stale",
        UserWarning,
        stacklevel=2,
      )
  return small
