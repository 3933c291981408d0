"""The README quickstart runs as written, from an installed package, with fewer steps.

The first ```python block under ``## Quickstart`` in README.md is extracted, its ``STEPS = ...``
line is shortened (the only edit), and it runs in a fresh interpreter from an empty working
directory, followed by checks of what it claims: the groups HESSO zeroed are exactly the target
fraction and the compressed function gives the trained one's outputs.

``HESSO_JAX_PYTHON`` selects the interpreter (default: this one); ``make wheel-notebooks`` points it
at a venv that has only the built wheel and its ``[examples]`` extra.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL_STEPS = 60

CHECKS = '''
import math
import jax.numpy as jnp
_p = space.subtree("params")
_zero = int(jnp.sum(_p.group_norms(variables["params"]) == 0.0))
assert _zero == math.floor(0.5 * _p.num_groups), (_zero, _p.num_groups)
_d = float(jnp.max(jnp.abs(small_fn(small, data.x_test) - fn(variables, data.x_test))))
assert _d <= 1e-5, _d
assert sum(a.size for a in jax.tree_util.tree_leaves(small)) < sum(
    a.size for a in jax.tree_util.tree_leaves(variables))
print("QUICKSTART-CHECKS-OK", _zero, _p.num_groups)
'''


def quickstart_source(readme: pathlib.Path = ROOT / "README.md") -> str:
  """The first ```python block after the ``## Quickstart`` heading."""
  text = readme.read_text(encoding="utf-8")
  section = text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
  m = re.search(r"```python\n(.*?)```", section, re.S)
  assert m, "README.md: no ```python block under '## Quickstart'"
  return m.group(1)


def test_quickstart_imports_only_installed_packages():
  tree = ast.parse(quickstart_source())
  mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
  assert mods <= {"jax", "optax", "hesso_jax", "numpy", "flax"}, mods


def test_quickstart_runs(tmp_path):
  src, n = re.subn(r"^STEPS = \d+$", f"STEPS = {SMALL_STEPS}", quickstart_source(), flags=re.M)
  assert n == 1, "the quickstart must set `STEPS = <int>` on one line"
  script = tmp_path / "quickstart.py"
  script.write_text(src + CHECKS, encoding="utf-8")
  python = os.environ.get("HESSO_JAX_PYTHON") or sys.executable
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([python, str(script)], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "QUICKSTART-CHECKS-OK" in proc.stdout
  assert "max |difference|" in proc.stdout and "'params'" in proc.stdout
