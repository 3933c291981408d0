"""The Colab notebooks: generated from their jupytext sources, linted, and executed (small mode).

``colab/NN_name.py`` (jupytext percent format) is the source of ``colab/NN_name.ipynb``;
``colab/sync.py`` writes the notebooks. The cheap checks always run: every notebook is in sync
with its source and stores no outputs, the install cell installs from the repository declared in
pyproject.toml (overridable with ``HESSO_JAX_WHEEL``), and ``ruff check colab`` passes.

Executing them is slow-ish (about half a minute each on two CPU cores), so those tests carry the
``notebooks`` marker, which the default run deselects (pyproject addopts), and run separately:

    make notebooks          # this interpreter, the package as installed in .venv
    make wheel-notebooks    # a fresh venv holding only the built wheel (tools/wheel_notebooks.sh)

Each notebook runs in a fresh IPython kernel whose interpreter is ``HESSO_JAX_PYTHON`` (default:
this one; a throw-away kernel spec in a temporary JUPYTER_PATH, so no globally registered kernel
is used), from a temporary working directory (the notebooks must not depend on the repository
layout), with ``HESSO_SMALL=1``. When ``HESSO_JAX_PYTHON`` is set, the kernel gets no PYTHONPATH,
so ``hesso_jax`` can only come from what the notebook's install cell installed there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(p.name for p in COLAB.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "hesso-jax-notebook-test"
KERNEL_PYTHON = os.environ.get("HESSO_JAX_PYTHON") or sys.executable
ISOLATED = bool(os.environ.get("HESSO_JAX_PYTHON"))


def _load_sync():
  spec = importlib.util.spec_from_file_location("colab_sync", COLAB / "sync.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_every_notebook_has_a_source():
  assert NOTEBOOKS, "no notebooks in colab/"
  assert [n[:-6] for n in NOTEBOOKS] == [p.stem for p in _load_sync().sources()]


def test_notebooks_are_in_sync_with_their_sources():
  stale = _load_sync().sync(check=True)
  assert not stale, f"{stale} out of date: run `python colab/sync.py` and commit the result"


def test_notebooks_store_no_outputs_and_install_from_the_declared_repository():
  url = _load_sync().repository_url()
  assert url.startswith("https://github.com/"), url
  for name in NOTEBOOKS:
    nb = json.loads((COLAB / name).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
      if cell["cell_type"] == "code":
        assert not cell.get("outputs") and cell.get("execution_count") is None, name
    first = nb["cells"][0]
    src = "".join(first["source"])
    assert first["cell_type"] == "code", name
    for needle in (f'REPO = "{url}"', "HESSO_JAX_WHEEL", 'hesso-jax[{EXTRAS}] @ {src}',
                   "HESSO_SMALL", "find_spec"):
      assert needle in src, (name, needle)


def test_notebook_sources_pass_ruff():
  proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(COLAB)],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """A kernel spec for ``KERNEL_PYTHON`` in a private JUPYTER_PATH (restored afterwards)."""
  d = tmp_path_factory.mktemp("jupyter")
  kdir = d / "kernels" / KERNEL
  kdir.mkdir(parents=True)
  env = {"HESSO_SMALL": "1", "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg",
         "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
  if ISOLATED:
    env["PYTHONPATH"] = ""
  (kdir / "kernel.json").write_text(json.dumps({
      "argv": [KERNEL_PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "hesso_jax notebook tests", "language": "python", "env": env,
  }))
  saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "HESSO_SMALL")}
  os.environ["JUPYTER_PATH"] = os.pathsep.join(
      [str(d)] + ([saved["JUPYTER_PATH"]] if saved["JUPYTER_PATH"] else []))
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
  client = NotebookClient(nb, kernel_name=kernel_env, timeout=900, allow_errors=False,
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
  if ISOLATED:  # the package the kernel used is the installed wheel, not this checkout
    proc = subprocess.run([KERNEL_PYTHON, "-c", "import hesso_jax; print(hesso_jax.__file__)"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert not pathlib.Path(proc.stdout.strip()).resolve().is_relative_to(ROOT), proc.stdout
