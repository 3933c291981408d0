"""Execute the Colab notebooks in colab/ top to bottom (small mode), and check they are generated.

Executing them is slow-ish (about half a minute each on two CPU cores), so they carry the
``notebooks`` marker, which the default run deselects (pyproject addopts), and run separately:

    make notebooks          # = .venv/bin/python -m pytest -q -m notebooks tests/test_notebooks.py

Each notebook runs in a fresh IPython kernel started with *this* interpreter (a throw-away kernel
spec pointing at ``sys.executable`` is written to a temporary JUPYTER_PATH, so no globally
registered ``python3`` kernel is needed or used), from a temporary working directory (the
notebooks must not depend on the repository layout), with ``HESSO_SMALL=1``.

The generator check (committed .ipynb == ``colab/build_notebooks.py`` output, no outputs stored)
is cheap and always runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(p.name for p in COLAB.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "hesso-jax-notebook-test"



def _load_builder():
  spec = importlib.util.spec_from_file_location("colab_build_notebooks", COLAB / "build_notebooks.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_notebooks_are_generated_and_have_no_outputs(tmp_path):
  pytest.importorskip("nbformat")
  builder = _load_builder()
  assert sorted(builder.NOTEBOOKS) == NOTEBOOKS, "colab/*.ipynb and build_notebooks.NOTEBOOKS differ"
  for p in builder.build(tmp_path):
    committed = (COLAB / p.name).read_text(encoding="utf-8")
    assert committed == p.read_text(encoding="utf-8"), (
        f"colab/{p.name} is out of date: run `python colab/build_notebooks.py` and commit it")
    nb = json.loads(committed)
    for cell in nb["cells"]:
      if cell["cell_type"] == "code":
        assert not cell.get("outputs") and cell.get("execution_count") is None, p.name
    first = nb["cells"][0]
    src = "".join(first["source"])
    assert first["cell_type"] == "code" and "except ImportError" in src and "HESSO_SMALL" in src, p.name


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """A kernel spec for this interpreter in a private JUPYTER_PATH (restored afterwards)."""
  d = tmp_path_factory.mktemp("jupyter")
  kdir = d / "kernels" / KERNEL
  kdir.mkdir(parents=True)
  (kdir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "hesso_jax notebook tests", "language": "python",
      "env": {"HESSO_SMALL": "1", "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg",
              "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
  }))
  saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "HESSO_SMALL")}
  os.environ["JUPYTER_PATH"] = os.pathsep.join([str(d)] + ([saved["JUPYTER_PATH"]] if saved["JUPYTER_PATH"] else []))
  os.environ["HESSO_SMALL"] = "1"
  yield KERNEL
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, kernel_env, tmp_path):
  import nbformat
  from nbclient import NotebookClient

  nb = nbformat.read(COLAB / name, as_version=4)
  client = NotebookClient(nb, kernel_name=kernel_env, timeout=600, allow_errors=False,
                          resources={"metadata": {"path": str(tmp_path)}})
  t0 = time.perf_counter()
  client.execute()
  secs = time.perf_counter() - t0
  out_dir = os.environ.get("HESSO_NOTEBOOK_OUT")
  if out_dir:  # keep the executed notebook for inspection
    pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, pathlib.Path(out_dir) / name)
  print(f"{name}: executed in {secs:.1f} s (small mode)")
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors, errors
