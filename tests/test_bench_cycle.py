"""bench_cycle's ``fused_stats`` variant: the same statistics, without a full-size buffer."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import hesso_jax as hj
from hesso_jax.optim import saliency as sal

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_cycle import fused_stats  # noqa: E402


def _case():
  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.normal(size=(64, 256)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(256, 8)), jnp.float32)}
  space = hj.SearchSpace((hj.ChannelSpace(256, (
      hj.AxisSlice(("a",), 1), hj.AxisSlice(("b",), 0, hj.CONSUMER))),))
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
  return space, params, grads


def _stats(space):
  # the direction is computed inside the program, as HESSO's selection recomputes it
  return lambda p, g: sal.group_stats(space, p, jax.tree_util.tree_map(lambda v: -0.1 * v, g))


def test_fused_stats_gives_the_same_statistics():
  space, params, grads = _case()
  plain = jax.jit(_stats(space))(params, grads)
  with fused_stats():
    fused = jax.jit(_stats(space))(params, grads)
  for a, b in zip(plain, fused, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # summation order differs


_MEASURE = """
import json, jax
from benchmarks.common import compile_counting_allocations
from benchmarks.bench_cycle import fused_stats
from tests.test_bench_cycle import _case, _stats
space, params, grads = _case()
out = {"plain": compile_counting_allocations(jax.jit(_stats(space)).lower(params, grads))[1]}
with fused_stats():
  out["fused"] = compile_counting_allocations(jax.jit(_stats(space)).lower(params, grads))[1]
print(json.dumps(out))
"""


def test_fused_stats_has_no_direction_sized_buffer():
  # in a process without the persistent compilation cache: a cached executable writes no dump
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(HESSO_JAX_TEST_CACHE="0", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  run = subprocess.run([sys.executable, "-c", _MEASURE], env=env, cwd=ROOT, capture_output=True,
                       text=True, check=True, timeout=300)
  out = json.loads(run.stdout.strip().splitlines()[-1])
  leaf_bytes = 4 * 64 * 256
  assert out["plain"]["temp_bytes"] >= leaf_bytes  # the direction, stored for two reductions
  assert out["fused"]["temp_bytes"] < leaf_bytes // 4
