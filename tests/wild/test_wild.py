"""The wild tier: discovery, compress and HESSO on real third-party model code.

penzai's Llama-, Gemma- (1 and 2) and GPT-NeoX-style transformers (unrolled and ``LayerStack``
variants) and equimo's ViT, ConvNeXt and MobileNetV3, plus two models written by hand the way
people write them without a library (nanoGPT's GPT-2, a ResNet with ``jnp.pad``); random init,
tiny sizes, nothing downloaded. Run with ``make test-wild`` (marker ``wild``; deselected from the
default run because it needs the ``[wild]`` extra: penzai, equimo).

Equivalence tolerance: in float32, ``max |compressed - zeroed| <= 1e-5 * max |zeroed|`` (relative
to the output scale; different summation orders of the smaller contractions move the last bits).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import matching
import numpy as np
import optax
import pytest
import wild_models

import hesso_jax as hj

pytestmark = pytest.mark.wild

NAMES = sorted(wild_models.BUILDERS)
RTOL_OUTPUT_SCALE_F32 = 1e-5


@functools.cache
def _case_and_space(name: str):
  case = wild_models.BUILDERS[name]()
  return case, hj.discover(case.fn, case.variables, *case.args)


def _report(case, space, found, missing) -> str:
  lines = [f"{case.name}: {space.num_groups} prunable groups discovered"]
  for e in case.expected:
    status = "found" if e.label in found else "MISSING: " + missing[e.label]
    lines.append(f"  {e.label} ({e.size}): {status}")
  return "\n".join(lines) + "\n" + space.summary()


@pytest.mark.parametrize("name", NAMES)
def test_every_expected_space_is_found(name):
  """Each hand-derived space is a prunable space with exactly that layout, except the listed gaps,
  which must still be missing for the listed reason (a closed gap fails until it is un-listed)."""
  case, space = _case_and_space(name)
  labels = {e.label for e in case.expected}
  assert set(case.gaps) <= labels, set(case.gaps) - labels
  found, missing = matching.match_all(space, case.expected)
  report = _report(case, space, found, missing)
  unexpected = {k: v for k, v in missing.items() if k not in case.gaps}
  assert not unexpected, f"expected spaces not found:\n{report}"
  closed = [k for k in case.gaps if k in found]
  assert not closed, f"gaps now closed (move them out of `gaps`, update the README):\n{report}"
  moved = {k: missing[k] for k, why in case.gaps.items() if why not in missing[k]}
  assert not moved, f"gaps missing for another reason than listed:\n{report}"


def _zero_fraction_of_each_space(space, variables, frac: float, seed: int):
  """Zero ``frac`` of every prunable space's groups (at least one, never all)."""
  rng = np.random.default_rng(seed)
  ids = []
  for s, off in zip(space.prunable_spaces, space.group_offsets, strict=True):
    k = min(s.size - 1, max(1, int(round(frac * s.size))))
    ids.extend(off + rng.choice(s.size, size=k, replace=False))
  return space.zero_groups(variables, jnp.asarray(np.asarray(ids, dtype=np.int32)))


def _size(tree) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree))


def _assert_equivalent(small_fn, small, fn, full, args):
  ref = np.asarray(jax.jit(fn)(full, *args))
  out = np.asarray(jax.jit(small_fn)(small, *args))
  assert out.shape == ref.shape and ref.dtype == np.float32
  scale = float(np.max(np.abs(ref)))
  err = float(np.max(np.abs(out - ref)))
  assert scale > 0 and err <= RTOL_OUTPUT_SCALE_F32 * scale, (err, scale)


@pytest.mark.parametrize("name", NAMES)
def test_compress_equals_the_zeroed_model(name):
  case, space = _case_and_space(name)
  zeroed = _zero_fraction_of_each_space(space, case.variables, 0.4, seed=0)
  small_fn, small = hj.compress(case.fn, zeroed, space, *case.args)
  assert _size(small) < _size(zeroed)
  _assert_equivalent(small_fn, small, case.fn, zeroed, case.args)


def _loss(case, params):
  logits = case.fn(params, *case.args)
  return optax.softmax_cross_entropy_with_integer_labels(logits, case.labels).mean()


@pytest.mark.parametrize("name", ["penzai_llama", "equimo_mobilenetv3"])
def test_short_hesso_run_gives_exact_zeros_and_an_equal_compressed_model(name):
  case, space = _case_and_space(name)
  tx = hj.hesso(optax.adam(1e-2), space, target_group_sparsity=0.4, warmup_steps=2,
                pruning_steps=6, pruning_periods=2)

  @jax.jit
  def step(p, s):
    g = jax.grad(functools.partial(_loss, case))(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  params, state = case.variables, tx.init(case.variables)
  for _ in range(10):
    params, state = step(params, state)
  pruned = np.asarray(hj.pruned_mask(state))
  assert pruned.sum() == int(space.num_groups * 0.4)
  norms = np.asarray(space.group_norms(params))
  assert np.all(norms[pruned] == 0.0) and np.all(norms[~pruned] > 0)
  small_fn, small = hj.compress(case.fn, params, space, *case.args)
  _assert_equivalent(small_fn, small, case.fn, params, case.args)
  full, comp = hj.count(case.fn, params, *case.args), hj.count(small_fn, small, *case.args)
  assert comp["params"] < full["params"] and comp["flops"] < full["flops"]


# another input resolution for the convolutional models (NCHW for equimo, NHWC for resnet_pad)
OTHER_RESOLUTION = {"equimo_convnext": (2, 3, 24, 24), "equimo_mobilenetv3": (2, 3, 24, 24),
                    "resnet_pad": (2, 12, 12, 3)}


@pytest.mark.parametrize("name", sorted(OTHER_RESOLUTION))
def test_compressed_cnn_runs_at_another_resolution(name):
  """Traced at 16x16 (8x8), called at 24x24 (12x12): still equal to the zeroed full model."""
  case, space = _case_and_space(name)
  zeroed = _zero_fraction_of_each_space(space, case.variables, 0.4, seed=1)
  small_fn, small = hj.compress(case.fn, zeroed, space, *case.args)
  x = jax.random.normal(jax.random.PRNGKey(3), OTHER_RESOLUTION[name])
  _assert_equivalent(small_fn, small, case.fn, zeroed, (x,))
