#!/usr/bin/env bash
# Prove that a user's install works: build the wheel, make a fresh venv that holds only that wheel
# (plus ipykernel, to run a notebook at all), and run every notebook (small mode) and the README
# quickstart with it. Each notebook's first cell installs `hesso-jax[<its extras>] @ <wheel>`
# (HESSO_JAX_WHEEL), so the install cell itself is what is tested.
#
#   tools/wheel_notebooks.sh [PYTHON]     # PYTHON: the dev interpreter (pytest, nbclient, build)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python3}}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hesso-wheel.XXXXXX")   # outside the repository
trap 'rm -rf "$WORK"' EXIT

"$PY" -m build --wheel --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/hesso_jax-*.whl)
echo "built $WHEEL"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q ipykernel
if "$WORK/venv/bin/python" -c "import hesso_jax" 2>/dev/null; then
  echo "the fresh venv already imports hesso_jax" >&2; exit 1
fi

export HESSO_JAX_PYTHON="$WORK/venv/bin/python" HESSO_JAX_WHEEL="$WHEEL"
env -u PYTHONPATH "$PY" -m pytest -q -p no:cacheprovider -m notebooks tests/test_notebooks.py
# The quickstart needs [examples]: the notebooks installed the wheel with it.
env -u PYTHONPATH "$PY" -m pytest -q -p no:cacheprovider tests/test_quickstart.py
