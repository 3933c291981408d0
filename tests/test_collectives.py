"""Collectives HESSO and HESSO-CRIC add to a sharded train step (2x4 mesh, 8 CPU devices).

The compiled program of one train step (every phase's branch included) is inspected in a
subprocess (tests/_collectives_worker.py). HESSO's extra communication must stay small: no
collective larger than the number of groups beyond the ones the plain base step has, and few
small ones (the per-group statistics are replicated once per statistic and space size, the masks
expanded onto the leaves from one replicated vector without per-space shuffles).
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.multidevice

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def res():
  path = os.pathsep.join([os.path.dirname(HERE), HERE, os.environ.get("PYTHONPATH", "")])
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=path)
  out = subprocess.run([sys.executable, os.path.join(HERE, "_collectives_worker.py")], env=env,
                       capture_output=True, text=True, timeout=900, check=True)
  line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def _large(colls, num_groups):
  return sorted(n for _, n in colls if n > num_groups + 1)


@pytest.mark.parametrize("kind", ["hesso", "cric"])
def test_no_extra_large_collectives(res, kind):
  assert res["devices"] == 8
  base = _large(res["adam"], res["num_groups"])
  assert base, res["adam"]  # the plain step does communicate (the run really is sharded)
  assert len(_large(res[kind], res["num_groups"])) <= len(base), res[kind]


#: the issue's budget of extra (small) collectives per train step
MAX_EXTRA = 8
#: statistics reduced together in one step (xx, dd, xd of ``group_stats``)
STATS = 3


@pytest.mark.parametrize("kind", ["hesso", "cric"])
def test_few_extra_collectives(res, kind):
  extra = len(res[kind]) - len(res["adam"])
  bound = STATS * len(set(res["space_sizes"]))  # one per statistic and distinct space size
  assert extra <= min(MAX_EXTRA, bound), (extra, bound, res[kind], res["adam"])
