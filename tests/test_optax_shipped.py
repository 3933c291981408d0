"""optax's own generic optimizer tests, run on hesso and hesso_cric.

optax ships the generic tests of its optimizers in the wheel: ``optax/contrib/_common_test.py``
and the first ("COMMON TESTS") half of ``optax/_src/alias_test.py``: extra args, no recompilation,
``tree_map_params``, convergence, ``inject_hyperparams``, dtype preservation (bf16, f16, f32, f64,
complex), ``MultiSteps``, state shape/dtype stability and learning-rate schedules. They are imported
from the installed optax and their test methods are called unchanged (absl's ``parameterized``
keeps the undecorated method as ``__wrapped__``); only the parametrisation is ours:

* the optimizer factory lookup (``_get_opt_factory`` / ``_get_opt``) returns :func:`factory`,
  which builds hesso or hesso_cric around sgd / adam / adamw with a warm-up-only or a pruning
  schedule, and a :class:`~hesso_jax.SearchSpace` from the params it is given (one channel space
  per array: its last axis; see :func:`space_for`);
* optax's tests choose the extra ``value=`` argument (the loss) by optimizer *name*; hesso_cric
  needs it, so its variants run under the names those tests pass it to (``momo`` in the contrib
  tests, ``polyak_sgd`` in the alias tests). That is only the name; the factory is hesso_cric.

By-design exceptions (combinations not generated):

* convergence to the *unconstrained* optimum (``test_optimizers`` / ``test_optimization``) with a
  pruning schedule: half the groups are pruned, so the constrained optimum is reached instead
  (pruned groups exactly 0.0). These run with the warm-up-only schedule.
* complex parameters with hesso_cric in the alias tests: under the name ``polyak_sgd`` optax skips
  them (polyak_sgd does not support complex numbers); they run for hesso.

A few variants run by default; the full product is marked ``slow``.
"""

import itertools

import jax
import numpy as np
import optax
import pytest
from optax._src import alias_test as AT
from optax._src import base
from optax.contrib import _common_test as CT

import hesso_jax as hj

PRUNE, WARMUP = "prune", "warmup"
NEVER = 10 ** 9  # a warm-up longer than any test


def space_for(params) -> hj.SearchSpace:
  """One producer-only channel space per array of rank >= 1: its last axis."""
  spaces = []
  for path, x in hj.space.leaves_with_paths(params):
    if np.ndim(x) >= 1:
      spaces.append(hj.ChannelSpace(np.shape(x)[-1], (hj.AxisSlice(path, np.ndim(x) - 1),),
                                    name=hj.space.path_str(path) or "params"))
  return hj.SearchSpace(tuple(spaces))


def _base(name: str, learning_rate):
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=0.9)
  return getattr(optax, name)(learning_rate)


def _make(variant: str, learning_rate, space: hj.SearchSpace):
  kind, base_name, schedule = variant.split("/")
  tx = _base(base_name, learning_rate)
  if kind == "hesso":
    return hj.hesso(tx, space, target_group_sparsity=0.5,
                    warmup_steps=1 if schedule == PRUNE else NEVER, pruning_steps=2)
  return hj.hesso_cric(tx, space, target_group_sparsity=0.5,
                       start_cric_step=1 if schedule == PRUNE else NEVER, sampling_steps=1,
                       max_cycle_period=1, hybrid_training_steps=1, trial_sparsities=(0.5,))


def factory(variant: str, learning_rate: base.ScalarOrSchedule = 1e-2
            ) -> base.GradientTransformationExtraArgs:
  """``variant`` = 'kind/base/schedule' over a search space built from the params it sees.

  ``init`` builds the space from its params; a leafless params placeholder (what
  ``optax.tree_utils.tree_map_params`` passes) reuses the space of the last real ``init``, so
  that the transformation's own handling of placeholders is what gets tested.
  """
  last = {}

  def init(params):
    if jax.tree_util.tree_leaves(params) or "space" not in last:
      last["space"] = space_for(params)
    return _make(variant, learning_rate, last["space"]).init(params)

  def update(updates, state, params=None, **extra):
    return _make(variant, learning_rate, space_for(params)).update(updates, state, params, **extra)

  return base.GradientTransformationExtraArgs(init, update)


_NAMES = {"contrib": {"hesso": "hesso", "hesso_cric": "momo"},
          "alias": {"hesso": "hesso", "hesso_cric": "polyak_sgd"}}
_LR = {"sgd": 1e-3, "adam": 1e-1, "adamw": 1e-1}


def _lookup(name):
  if name not in ("hesso", "momo", "polyak_sgd"):
    raise ValueError(f"test_optax_shipped: no factory for {name!r}")
  return factory


def _variant(suite, kind, base_name, schedule):
  out = dict(opt_name=_NAMES[suite][kind],
             opt_kwargs={"variant": f"{kind}/{base_name}/{schedule}",
                         "learning_rate": _LR[base_name]})
  if suite == "contrib":
    out.update(wrapper_name=None, wrapper_kwargs=None)
  return out


def _originals(cls):
  """{test name: the undecorated method} of an absl parameterized TestCase."""
  out = {}
  for attr in dir(cls):
    fn = getattr(cls, attr)
    inner = getattr(fn, "__wrapped__", None)
    if attr.startswith("test_") and inner is not None:
      out.setdefault(inner.__name__, inner)
  return out


CONTRIB, ALIAS = _originals(CT.ContribTest), _originals(AT.AliasTest)
CONVERGENCE = {("contrib", "test_optimizers"), ("alias", "test_optimization")}

# extra parameters of each shipped test (besides the optimizer), as optax parametrises them
_EXTRA = {
    ("contrib", "test_optimizers_accept_extra_args"): dict(wrap=[False]),
    ("contrib", "test_optimizers"): dict(
        target=[CT._setup_parabola, CT._setup_rosenbrock, CT._setup_matrix_parabola,
                CT._setup_mixed_tensor_target], dtype=["float32"]),
    ("contrib", "test_optimizers_can_be_wrapped_in_inject_hyperparams"): {},
    ("contrib", "test_preserve_dtype"): dict(dtype=["bfloat16", "float32"]),
    ("contrib", "test_gradient_accumulation"): dict(dtype=["bfloat16", "float32"]),
    ("contrib", "test_state_shape_dtype_shard_stability"): dict(
        dtype=["float16", "bfloat16", "float32", "float64"]),
    ("contrib", "test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such"): {},
    ("alias", "test_optimization"): dict(target=[AT._setup_parabola, AT._setup_rosenbrock],
                                         dtype=["float32", "complex64"]),
    ("alias", "test_optimizers_accept_extra_args"): {},
    ("alias", "test_optimizers_can_be_wrapped_in_inject_hyperparams"): {},
    ("alias", "test_preserve_dtype"): dict(dtype=["bfloat16", "float32"]),
    ("alias", "test_state_shape_dtype_shard_stability"): dict(
        dtype=["float16", "bfloat16", "float32", "float64", "complex64", "complex128"]),
    ("alias", "test_gradient_accumulation"): dict(dtype=["bfloat16", "float32"]),
}
_DTYPE_OBJECTS = {("contrib", "test_state_shape_dtype_shard_stability"),
                  ("alias", "test_optimization"), ("alias", "test_state_shape_dtype_shard_stability")}

KINDS = ("hesso", "hesso_cric")
BASES = ("sgd", "adam", "adamw")
# The default run (< ~60 s): every shipped test once per kind with a pruning schedule and one
# dtype; convergence with the warm-up-only schedule on one target (complex parameters in the alias
# suite). The full product runs under the `slow` marker.
DEFAULT_VARIANTS = {("hesso", "adam", PRUNE), ("hesso_cric", "sgd", PRUNE)}
DEFAULT_CONVERGENCE = {("contrib", "hesso", "adamw", WARMUP, "float32", "_setup_parabola"),
                       ("alias", "hesso", "adamw", WARMUP, "complex64", "_setup_parabola")}
DEFAULT_DTYPES = {"bfloat16", "float16"}


def _default(suite, test, kind, base_name, schedule, kw):
  if (suite, test) in CONVERGENCE:
    key = (suite, kind, base_name, schedule, kw["dtype"], kw["target"].__name__)
    return key in DEFAULT_CONVERGENCE
  if (kind, base_name, schedule) not in DEFAULT_VARIANTS:
    return False
  return "dtype" not in kw or kw["dtype"] in DEFAULT_DTYPES


def _cases():
  for (suite, test), extra in _EXTRA.items():
    for kind, base_name, schedule in itertools.product(KINDS, BASES, (PRUNE, WARMUP)):
      if (suite, test) in CONVERGENCE and schedule == PRUNE:
        continue  # by design: the constrained optimum, not the unconstrained one
      keys = sorted(extra)
      for values in itertools.product(*(extra[k] for k in keys)):
        kw = dict(zip(keys, values, strict=True))
        if suite == "alias" and kind == "hesso_cric" and "complex" in str(kw.get("dtype", "")):
          continue  # under the name polyak_sgd optax skips complex parameters
        label = "-".join([suite, test, kind, base_name, schedule] + [
            getattr(v, "__name__", str(v)) for v in values])
        slow = not _default(suite, test, kind, base_name, schedule, kw)
        yield pytest.param(suite, test, _variant(suite, kind, base_name, schedule), kw, id=label,
                           marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(autouse=True)
def _redirect_factories(monkeypatch):
  monkeypatch.setattr(CT, "_get_opt_factory", _lookup)
  monkeypatch.setattr(AT, "_get_opt", lambda self, name: _lookup(name))


@pytest.mark.parametrize("suite,test,optimizer,extra", list(_cases()))
def test_shipped(suite, test, optimizer, extra):
  cls, fns = (CT.ContribTest, CONTRIB) if suite == "contrib" else (AT.AliasTest, ALIAS)
  if (suite, test) in _DTYPE_OBJECTS and "dtype" in extra:
    extra = dict(extra, dtype=getattr(jax.numpy, extra["dtype"]))
  fns[test](cls(), **optimizer, **extra)


def test_every_generic_shipped_test_is_run():
  """optax adding a generic test shows up here (add it to _EXTRA)."""
  generic_contrib = set(CONTRIB)
  generic_alias = {n for n in ALIAS if n != "test_explicit_dtype"}  # sgd/adam/adamw-specific
  ours = {t for s, t in _EXTRA if s == "contrib"}, {t for s, t in _EXTRA if s == "alias"}
  assert ours == (generic_contrib, generic_alias)
