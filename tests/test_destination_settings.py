"""Settings the CLI gives the local DuckDB destination (no PostgreSQL needed)."""

import os

import duckdb
import pytest

from pg_replication.destinations import DUCKDB_DEFAULT_SETTINGS, make_pipeline

GLOBAL_CONFIG = "DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG"


@pytest.fixture
def clean_duckdb_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(tmp_path / "settings.duckdb"))
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt"))
    monkeypatch.setenv("DLT_PROJECT_DIR", str(tmp_path))
    previous = os.environ.pop(GLOBAL_CONFIG, None)
    yield
    os.environ.pop(GLOBAL_CONFIG, None)  # make_destination sets it for the process
    if previous is not None:
        os.environ[GLOBAL_CONFIG] = previous


def _setting_in_use(name: str) -> str:
    pipeline = make_pipeline("settings_test", "duckdb", "settings_data")
    with pipeline.sql_client() as client:
        return str(client.execute_sql(f"SELECT current_setting('{name}')")[0][0])


def _memory_limit_in_use() -> str:
    return _setting_in_use("memory_limit")


def _as_duckdb_shows(limit: str) -> str:
    with duckdb.connect(config={"memory_limit": limit}) as con:
        return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_duckdb_runs_with_a_bounded_memory_budget_by_default(clean_duckdb_environment):
    default = _as_duckdb_shows(DUCKDB_DEFAULT_SETTINGS["memory_limit"])
    with duckdb.connect() as con:  # DuckDB's own default: a share of the machine's memory
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] != default
    assert _memory_limit_in_use() == default


def test_a_configured_duckdb_memory_limit_is_kept(clean_duckdb_environment):
    os.environ[GLOBAL_CONFIG] = '{"memory_limit": "300MB"}'
    assert _memory_limit_in_use() == _as_duckdb_shows("300MB")


def test_duckdb_merges_on_one_thread_without_vacuum_tasks_by_default(clean_duckdb_environment):
    # Both bound the memory of merging wide rows (see jobs.DUCKDB_DEFAULT_SETTINGS).
    with duckdb.connect() as con:
        assert con.execute("SELECT current_setting('threads')").fetchone()[0] != 1 or \
            os.cpu_count() == 1
    assert _setting_in_use("threads") == "1"
    assert _setting_in_use("max_vacuum_tasks") == "0"
