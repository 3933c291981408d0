import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite is dominated by XLA compile time of many small, distinct programs; the backend
# optimisation level barely matters for their run time but cuts compile time ~2.5x on CPU.
# HESSO_JAX_DEFAULT_XLA=1 keeps XLA's default level: tests/test_default_xla.py runs the tests
# marked `default_xla` (exact zeros, bit-exact resume, compress equivalence) that way.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags and not os.environ.get("HESSO_JAX_DEFAULT_XLA"):
  os.environ["XLA_FLAGS"] = (_flags + " --xla_backend_optimization_level=0").strip()
sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "default_xla: also run at XLA's default optimisation level (test_default_xla.py)")
