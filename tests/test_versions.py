"""What depends on the server's version, detected from it: failover slots (PostgreSQL 17+).

`make test` runs this file on the machine's server, `make test-versions` on 16 and 18; the
failover cases run where the server has failover slots (18 in CI) and say why they skip elsewhere.
"""

import json
import re

import psycopg2
import pytest

from tests.tools import Project, assert_table_matches, one_error_line, run_sql

EXIT_SOURCE_NOT_READY = 4


def _server_version(url: str) -> int:
    with psycopg2.connect(url) as conn:
        version = conn.server_version
    conn.close()
    return version


def _slot_failover(conn, slot: str):
    with conn.cursor() as cur:
        cur.execute("SELECT failover FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return cur.fetchone()[0]


@pytest.fixture
def failover_server(source_url):
    if _server_version(source_url) < 170000:
        pytest.skip("failover slots need PostgreSQL 17+ (make test-versions runs this on 18)")


def _table(conn) -> None:
    run_sql(conn, "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g")


def test_failover_true_needs_postgresql_17(source, source_url, duckdb_project: Project):
    if _server_version(source_url) >= 170000:
        pytest.skip("the server has failover slots (the refusal is for PostgreSQL 16 and older)")
    _table(source)
    duckdb_project.env["SOURCES__PG_REPLICATION__FAILOVER"] = "true"
    line = one_error_line(duckdb_project.run("snapshot", expect=EXIT_SOURCE_NOT_READY))
    assert "failover = true needs PostgreSQL 17" in line, line
    # Unset (the default) is off there, and status says the server has none.
    del duckdb_project.env["SOURCES__PG_REPLICATION__FAILOVER"]
    duckdb_project.run("snapshot")
    status = json.loads(duckdb_project.run("status", "--json").stdout)
    assert status["failover"] is None


def test_failover_slot_is_created_and_changed_as_configured(failover_server, source,
                                                            duckdb_project: Project):
    _table(source)
    duckdb_project.env["SOURCES__PG_REPLICATION__FAILOVER"] = "true"
    duckdb_project.run("snapshot")
    assert _slot_failover(source, duckdb_project.slot) is True
    status = json.loads(duckdb_project.run("status", "--json", expect=9).stdout)
    assert status["failover"] is True
    # No standby guards it (synchronized_standby_slots is empty): status alerts.
    assert any("synchronized_standby_slots names no standby" in p for p in status["problems"])
    assert re.search(r"^failover +yes$", duckdb_project.run("status", expect=9).stdout, re.M)
    run_sql(source, "UPDATE t SET v = 'x' WHERE id = 1")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "t")
    # Turned off in the configuration: the next run changes the slot (and loses nothing).
    duckdb_project.env["SOURCES__PG_REPLICATION__FAILOVER"] = "false"
    run_sql(source, "DELETE FROM t WHERE id = 2")
    duckdb_project.run("cdc")
    assert _slot_failover(source, duckdb_project.slot) is False
    assert_table_matches(source, duckdb_project, "t")
    # Left to the default without a standby configured: stays off; an explicit true turns it on.
    del duckdb_project.env["SOURCES__PG_REPLICATION__FAILOVER"]
    duckdb_project.run("cdc")
    assert _slot_failover(source, duckdb_project.slot) is False
    duckdb_project.env["SOURCES__PG_REPLICATION__FAILOVER"] = "true"
    duckdb_project.run("cdc")
    assert _slot_failover(source, duckdb_project.slot) is True
    # Unset again, without a standby configured: the default never turns a failover slot off.
    del duckdb_project.env["SOURCES__PG_REPLICATION__FAILOVER"]
    duckdb_project.run("cdc")
    assert _slot_failover(source, duckdb_project.slot) is True


def test_failover_default_follows_the_standby_configuration(failover_server, source,
                                                           pg_server_url, duckdb_project: Project):
    """Unset, `failover` is on when `synchronized_standby_slots` names a standby's slot. With that
    standby down the server holds the slot's changes back: cdc says so (instead of reporting no
    changes) and `failover = false` is the way out."""
    _table(source)
    admin = psycopg2.connect(pg_server_url)
    admin.autocommit = True
    physical = f"standby_{duckdb_project.slot}"
    try:
        run_sql(admin, f"SELECT pg_create_physical_replication_slot('{physical}')",
                f"ALTER SYSTEM SET synchronized_standby_slots = '{physical}'",
                "SELECT pg_reload_conf()")
        duckdb_project.run("snapshot")  # creating the slot does not wait for the standby
        assert _slot_failover(source, duckdb_project.slot) is True
        run_sql(source, "UPDATE t SET v = 'held back' WHERE id = 3")
        line = one_error_line(duckdb_project.run("cdc", expect=EXIT_SOURCE_NOT_READY))
        assert f"{physical} (no standby connected)" in line and "failover = false" in line, line
        status = duckdb_project.run("status", expect=9)
        assert f"{physical} (no standby connected)" in status.stdout, status.stdout
        duckdb_project.env["SOURCES__PG_REPLICATION__FAILOVER"] = "false"
        assert "1 changes" in duckdb_project.run("cdc").stdout
        assert _slot_failover(source, duckdb_project.slot) is False
        assert_table_matches(source, duckdb_project, "t")
    finally:
        run_sql(admin, "ALTER SYSTEM RESET synchronized_standby_slots", "SELECT pg_reload_conf()",
                f"SELECT pg_drop_replication_slot('{physical}')")
        admin.close()
    # The standby configuration gone, left to the default: an ordinary slot stays one.
    del duckdb_project.env["SOURCES__PG_REPLICATION__FAILOVER"]
    duckdb_project.run("cdc")
    assert _slot_failover(source, duckdb_project.slot) is False


def test_a_slot_on_a_standby_is_never_a_failover_slot(source, tmp_path):
    """A standby's own synchronized_standby_slots (copied by pg_basebackup, or a symmetric HA
    configuration) does not turn failover on there; an explicit true is refused with why."""
    from sandbox.pg_server import PostgresCluster, find_bindir

    if source.server_version < 170000:
        pytest.skip("failover slots need PostgreSQL 17+ (make test-versions runs this on 18)")
    primary = PostgresCluster(bindir=find_bindir()).start()
    try:
        conn = psycopg2.connect(primary.url)
        conn.autocommit = True
        run_sql(conn, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)",
                "CREATE PUBLICATION p_failover FOR TABLE t WITH (publish_via_partition_root = true)")
        standby = primary.start_standby(slot="phys_for_failover")
        try:
            standby.set_setting("synchronized_standby_slots", "phys_for_failover")
            standby.pg_ctl("reload")
            standby.wait_ready()
            run_sql(conn, "SELECT pg_log_standby_snapshot()")
            project = Project(tmp_path, standby.url)
            project.env.update({"SOURCES__PG_REPLICATION__PUB_NAME": "p_failover",
                                "SOURCES__PG_REPLICATION__PRIMARY_CREDENTIALS": primary.url,
                                "SOURCES__PG_REPLICATION__FAILOVER": "true"})
            line = one_error_line(project.run("snapshot", expect=EXIT_SOURCE_NOT_READY))
            assert "the source is a standby" in line and "failover = false" in line, line
            del project.env["SOURCES__PG_REPLICATION__FAILOVER"]
            project.run("snapshot")
            standby_conn = psycopg2.connect(standby.url)
            assert _slot_failover(standby_conn, project.slot) is False
            standby_conn.close()
        finally:
            standby.stop()
        conn.close()
    finally:
        primary.stop()
