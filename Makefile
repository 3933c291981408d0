# Two commands for a newcomer:  `make demo` (set up + prune a real network)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow test-wild notebooks bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,experiments]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# the wild tier: penzai / equimo models (the [wild] extra), marker `wild`
$(VENV)/.installed-wild: $(STAMP)
	$(PY) -m pip install -q -e '.[wild]'
	touch $@

test-wild: $(VENV)/.installed-wild
	$(PY) -m pytest -q -m wild tests/wild

notebooks: $(STAMP)
	$(PY) -m pytest -q -m notebooks tests/test_notebooks.py

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) results .pytest_cache
