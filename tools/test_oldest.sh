#!/usr/bin/env bash
# A reduced test suite on the oldest supported jax / flax / optax / orbax (tools/oldest.txt), in
# its own venv (build/venv-oldest, reused between runs). The newest versions are what `make test`
# installs; together they cover both ends of the range declared in pyproject.toml.
#
#   tools/test_oldest.sh [PYTHON]      # PYTHON: the interpreter to create the venv with
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
VENV=build/venv-oldest
STAMP=$VENV/.installed
if [ ! -f "$STAMP" ] || [ tools/oldest.txt -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # The package with its declared dependencies, resolved against the pinned floors.
  "$VENV/bin/python" -m pip install -q -r tools/oldest.txt -e . pytest equinox
  touch "$STAMP"
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
pins = dict(l.split("==") for l in open("tools/oldest.txt") if "==" in l and not l.startswith("#"))
pins = {k.split("[")[0]: v.strip() for k, v in pins.items()}
got = {k: md.version(k) for k in pins}
assert got == pins, f"the oldest venv does not have the pinned versions: {got} != {pins}"
print("oldest:", ", ".join(f"{k} {v}" for k, v in got.items()))
PY
# nnx.as_pure (used by one optax-contract test, not by the library) needs flax >= 0.12.7.
JAX_PLATFORMS=cpu "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_hesso.py tests/test_cric.py tests/test_saliency.py tests/test_discovery.py \
  tests/test_compress.py tests/test_prune.py tests/test_nnx_surgery.py tests/test_metrics.py \
  tests/test_checkpoint.py tests/test_optax_contract.py \
  --deselect tests/test_optax_contract.py::test_flax_nnx_optimizer
