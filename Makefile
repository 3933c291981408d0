# Two commands for a newcomer:  `make demo` (set up + prune a real network)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow notebooks wheel-notebooks doctest docs test-oldest bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,experiments,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

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

clean:
	rm -rf $(VENV) results .pytest_cache docs/_build build/venv-oldest
