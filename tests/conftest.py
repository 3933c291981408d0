import contextlib
import os
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite is dominated by XLA compile time of many small, distinct programs; the backend
# optimisation level barely matters for their run time but cuts compile time ~2.5x on CPU.
# HESSO_JAX_DEFAULT_XLA=1 keeps XLA's default level: tests/test_default_xla.py runs the tests
# marked `default_xla` (exact zeros, bit-exact resume, compress equivalence) that way.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags and not os.environ.get("HESSO_JAX_DEFAULT_XLA"):
  os.environ["XLA_FLAGS"] = (_flags + " --xla_backend_optimization_level=0").strip()
# Many tests compile the same programs again (fresh closures over equal models and optimizers),
# in this process, in the other xdist worker and in the subprocesses some tests start: JAX's
# persistent compilation cache, for every program, serves those from disk (its key covers the
# program, the XLA flags, the devices and the versions). HESSO_JAX_TEST_CACHE=0 turns it off;
# a JAX_COMPILATION_CACHE_DIR set by the caller is kept. JAX's own size limit is not used: with
# it every write lists and stats the whole cache under a file lock (thousands of entries here,
# so the suite ran several times slower); the cache is emptied at the start of a run instead
# when it has grown past CACHE_LIMIT_BYTES.
CACHE_LIMIT_BYTES = 1 << 30
OWN_CACHE = os.path.join(tempfile.gettempdir(), f"hesso_jax_tests_{os.getuid()}")
if os.environ.get("HESSO_JAX_TEST_CACHE", "1") != "0":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", OWN_CACHE)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
sys.path.insert(0, os.path.dirname(__file__))


def _empty_cache_if_large(path: str, limit: int) -> None:
  """Remove the compilation cache's files when they add up to more than ``limit`` bytes."""
  if not os.path.isdir(path):
    return
  files = [e for e in os.scandir(path) if e.is_file(follow_symlinks=False)]
  if sum(e.stat().st_size for e in files) > limit:
    for e in files:
      with contextlib.suppress(OSError):
        os.remove(e.path)


def pytest_configure(config):
  # once per run, before any worker starts; only the cache this file chose, never the caller's
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") == OWN_CACHE and not os.environ.get(
      "PYTEST_XDIST_WORKER"):
    _empty_cache_if_large(OWN_CACHE, CACHE_LIMIT_BYTES)
  config.addinivalue_line(
      "markers", "default_xla: also run at XLA's default optimisation level (test_default_xla.py)")


@pytest.fixture(scope="session")
def multidevice_root(tmp_path_factory) -> str:
  """A folder shared by all pytest processes of this run (the xdist workers' common parent), where
  tests/_multidevice_worker.py's 8-device run happens once (``results_once``)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  return str(root)
