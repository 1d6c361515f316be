# The two commands of the README: `make demo` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo lint install system-deps clean step-matrix

# The distribution was called `dedupkit` before `rq-dedupkit` (PyPI's `dedupkit` is another
# project); a venv made before the rename still holds that editable install: drop it.
define venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if $(PY) -m pip show -q dedupkit >/dev/null 2>&1; then $(PY) -m pip uninstall -q -y dedupkit; fi
endef

# `make test` (and lint, step-matrix): the package with the whole dev set.
$(VENV)/.installed: pyproject.toml
	$(venv)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# `make demo`: only what the demo needs (the `example` extra).
$(VENV)/.demo-installed: pyproject.toml
	$(venv)
	$(PY) -m pip install -q -e '.[example]'
	touch $@

install: $(VENV)/.installed

system-deps:
	./scripts/ensure-system-deps.sh

lint: install
	$(PY) -m ruff check dedupkit tests examples benchmarks
	$(PY) -m mypy

# All tests: unit (fakeredis), real redis-server + real rq workers, browser. A skipped
# real-Redis test fails the run (DEDUPKIT_REQUIRE_REAL=1).
test: install system-deps lint
	DEDUPKIT_REQUIRE_REAL=1 $(PY) -m pytest $(PYTEST_ARGS)

# Stop real rq workers after every Redis step they send, in every variant, then judge the key
# from RQ's own data (tests/step_matrix.py; issue 9). Long: every step of every variant.
step-matrix: install system-deps
	$(PY) -m tests.step_matrix --full --mode kill $(STEP_MATRIX_ARGS)

demo: $(VENV)/.demo-installed
	$(PY) -m examples.flask_app.demo

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
