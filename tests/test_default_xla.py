"""The exactness claims at XLA's default optimisation level.

conftest.py lowers ``--xla_backend_optimization_level`` to 0 for compile speed, so the suite would
never see what the default (optimising) backend does to exact zeros and bit-identical resumes.
The tests marked ``default_xla`` (HESSO's exact zeros and trajectory, bit-exact resume, compress
equivalence) are run again here in a subprocess with the default level.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the files holding `default_xla` tests (listing them avoids importing the whole suite)
FILES = ["tests/test_default_xla.py", "tests/test_selection_reference.py",
         "tests/test_checkpoint.py", "tests/test_compress_control_flow.py", "tests/test_front_ends.py"]


@pytest.mark.default_xla
def test_the_optimisation_level_is_what_the_mode_says():
  level0 = "--xla_backend_optimization_level=0" in os.environ.get("XLA_FLAGS", "")
  assert level0 != bool(os.environ.get("HESSO_JAX_DEFAULT_XLA"))


@pytest.mark.slow  # a second pytest run in a subprocess (~50 s): the slow tier
def test_marked_subset_passes_at_default_xla_optimisation_level():
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if "xla_backend_optimization_level" not in f)
  env = dict(os.environ, HESSO_JAX_DEFAULT_XLA="1", XLA_FLAGS=flags,
             PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "default_xla",
       "-W", "error::pytest.PytestUnknownMarkWarning", *FILES],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  out = proc.stdout[-6000:] + proc.stderr[-3000:]
  assert proc.returncode == 0, out
  passed = re.search(r"(\d+) passed", proc.stdout)
  assert passed and int(passed.group(1)) == 5, out
  assert not re.search(r"\d+ (failed|skipped|error)", proc.stdout), out
