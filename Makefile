# make dev   — create .venv, install, serve `stepstream dev` on http://127.0.0.1:8000 (PORT=8001 for another port)
# make test  — create .venv, install test extras and system tools, lint, type-check, run every test
# make chaos — the full chaos suite (fault scenarios, about 20 minutes); figures in RELIABILITY.md

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
PORT ?= 8000
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: dev test chaos lint typecheck check-python system-deps bench clean

check-python:
	@test -n "$(PYTHON)" || { echo "stepstream needs Python >= 3.11 (python3.11, python3.12 or python3.13 on PATH)"; exit 1; }

$(BIN)/python: | check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.dev-installed

dev: $(VENV)/.dev-installed
	$(BIN)/stepstream dev --host 127.0.0.1 --port $(PORT)

# Redis tests start their own redis-server, Postgres tests their own PostgreSQL (initdb + pg_ctl
# into a temp dir); browser tests drive Debian's chromium.
# Both are installed from Debian's packages when missing and we may (root, or sudo).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then \
			echo "installing$$missing from Debian packages"; \
			$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "warning:$$missing missing and cannot be installed here; those tests will skip (never in CI)"; \
		fi; \
	fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff format --check src tests $(wildcard bench examples)
	$(BIN)/ruff check src tests $(wildcard bench examples)

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

# Tests run in parallel (pytest-xdist), TEST_WORKERS processes: most of a test's time is spent
# waiting (on servers, leases, timers), so twice as many workers as cores keep the cores busy.
# The browser tests stay on one worker, in order (tests/conftest.py, SERIAL). The chaos tests
# run afterwards, alone: their scenarios load the machine on purpose and judge stalls by time.
TEST_WORKERS ?= $(shell echo $$(( 2 * $$(nproc 2>/dev/null || echo 2) )))

test: $(VENV)/.test-installed system-deps lint typecheck
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup --ignore=tests/chaos
	$(BIN)/python -m pytest -q -ra tests/chaos

# The full chaos suite (DESIGN §10, RELIABILITY.md); `make test` runs a quick version of it.
chaos: $(VENV)/.test-installed system-deps
	STEPSTREAM_CHAOS=full $(BIN)/python -m pytest -q -ra tests/chaos -s

bench: $(VENV)/.test-installed
	$(BIN)/python bench/realtime.py

clean:
	rm -rf $(VENV) .stepstream .mypy_cache .ruff_cache .pytest_cache tests/browser/node_modules
