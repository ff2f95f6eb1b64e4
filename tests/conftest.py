"""Fixtures: one real PostgreSQL server for the session, a fresh database and slot per test."""

import os
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from sandbox.pg_server import PostgresCluster
from tests.spark import spark  # noqa: F401 - the session's local Spark, for every test file
from tests.tools import CliRunResult, Project

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")


def pytest_collection_modifyitems(items) -> None:
    """The local-Delta variant of a test run on both destinations is `slow` (make test-slow):
    `make test` runs each behaviour once, on DuckDB."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "filesystem" in callspec.params.values():
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A superuser URL: TEST_DATABASE_URL, or a throw-away cluster started here."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    cluster = PostgresCluster().start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture
def source_url(pg_server_url: str) -> Iterator[str]:
    """A new empty database; its replication slots and the database are dropped afterwards."""
    database = "t_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(pg_server_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')
    try:
        yield _with_database(pg_server_url, database)
    finally:
        _drop_database(admin, database)
        admin.close()


def _drop_database(admin, database: str) -> None:
    """Drops the test database and its slots. A terminated walsender keeps its slot active for a
    moment after pg_terminate_backend returns, and DROP DATABASE ... (FORCE) refuses a database
    with an active slot, so this waits for the slots to go idle before dropping them."""
    deadline = time.monotonic() + 30
    with admin.cursor() as cur:
        while True:
            cur.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE database = %s AND active_pid IS NOT NULL", (database,))
            if not cur.rowcount or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        cur.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s AND NOT active", (database,))
        cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture
def source(source_url: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(source_url)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def project(tmp_path: Path, source_url: str) -> Project:
    """Environment for running the CLI against `source_url` into a DuckDB file in tmp_path."""
    return Project(tmp_path, source_url)


@pytest.fixture
def pagila_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "pagila"
    if not (path / "pagila-schema.sql").exists():
        pytest.skip(f"Pagila dataset not found at {path} (it lives in ../shared, outside the repo)")
    return path


@pytest.fixture
def duckdb_project(tmp_path: Path, source_url: str) -> Project:
    """For cases a file otherwise runs on DuckDB and local Delta that are decided before dlt
    loads anything, or whose Delta variant adds nothing: DuckDB only."""
    return Project(tmp_path, source_url, destination="duckdb")


__all__ = ["CliRunResult"]
