# The two commands of the README:  make quickstart  /  make test
# (and, while developing, make test-fast)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test test-fast bench docs lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The frameworks the integration and distributed tests run (torch CPU, Lightning,
# transformers, ...): test setup only, never a dependency of tracelet itself.
$(VENV)/.frameworks: $(VENV)/.installed requirements-frameworks.txt
	$(PY) -m pip install --quiet -r requirements-frameworks.txt
	touch $@

quickstart: $(VENV)/.installed
	$(PY) examples/quickstart.py

test: $(VENV)/.frameworks
	scripts/test.sh

# The lane to run often: lint, format, types and every test not marked slow
# (no end-to-end volume tests, no Debian packages): about a minute on 2 cores.
test-fast: $(VENV)/.frameworks
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed
	$(PY) -m benchmarks

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf build dist site .tracelet mlflow.db mlruns .pytest_cache .mypy_cache .ruff_cache
