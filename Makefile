# The two set-up commands (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint system-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job: capture -> replay -> profile -> rewrite -> replay, on the bundled example.
demo: $(VENV)/.installed
	$(PY) examples/demo.py

system-deps:
	bash scripts/install-system-deps.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The whole test suite, real parts included (py-spy, Chromium + speedscope, SeaweedFS).
test: $(VENV)/.installed system-deps lint
	$(VENV)/bin/pytest -m ""

clean:
	rm -rf $(VENV) build .perfreplay .pytest_cache .mypy_cache .ruff_cache
