# Two commands for a newcomer:  `make demo` (set up + prune a real network)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow test-multiprocess test-wild notebooks wheel-notebooks doctest docs test-oldest bench lint typecheck check-imports clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,experiments,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

# -n: one pytest worker per core (at most 4); the suite is mostly XLA compiles, one thread each
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-multiprocess: $(STAMP)
	$(PY) -m pytest -q -m multiprocess tests/test_multiprocess.py

# the wild tier: penzai / equimo models (the [wild] extra), marker `wild`
$(VENV)/.installed-wild: $(STAMP)
	$(PY) -m pip install -q -e '.[wild]'
	touch $@

test-wild: $(VENV)/.installed-wild
	$(PY) -m pytest -q -m wild tests/wild

notebooks: $(STAMP)
	$(PY) -m pytest -q -m notebooks tests/test_notebooks.py

# The notebooks and the README quickstart from a fresh venv that holds only the built wheel.
wheel-notebooks: $(STAMP)
	tools/wheel_notebooks.sh $(PY)

# The >>> examples in the library's docstrings.
doctest: $(STAMP)
	$(PY) -m pytest -q --doctest-modules hesso_jax

# The documentation site (Sphinx + MyST); warnings are errors. Output: docs/_build/html.
docs: $(STAMP)
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html

# A reduced suite on the oldest supported jax / flax / optax / orbax (tools/oldest.txt).
test-oldest:
	tools/test_oldest.sh $(PYTHON)

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

lint: $(STAMP)
	$(PY) -m ruff check hesso_jax tools tests experiments benchmarks
	$(PY) -m ruff format --check hesso_jax tools

typecheck: $(STAMP)
	$(PY) -m mypy

check-imports: $(STAMP)
	$(PY) tools/check_imports.py

clean:
	rm -rf $(VENV) results .pytest_cache docs/_build build/venv-oldest
