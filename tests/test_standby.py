"""Decoding on a physical standby (PostgreSQL 16+): a real primary and a streaming standby built
with `pg_basebackup` from the same binaries (those `make test-versions` runs with, 16 and 18; the
machine's server when it is 16+, else the PostgreSQL 16 of the pgserver wheel). The pipeline's source is the
standby; `primary_credentials` take heartbeats, publications and the statistics of keyless
tables to the primary."""

import glob
import subprocess
from pathlib import Path

import psycopg2
import pytest

from sandbox.pg_server import PostgresCluster, find_bindir, wheel_bindir
from tests.tools import (EXIT_NO_COPY, Project, assert_table_matches, one_error_line,
                         publish_statistics, run_sql)

EXIT_SOURCE_NOT_READY = 4
pytestmark = pytest.mark.versions  # its own clusters, on 16 and 18: `make test-versions`


def _major(bindir: str) -> int:
    out = subprocess.run([f"{bindir}/pg_ctl", "--version"], capture_output=True, text=True)
    return int(out.stdout.split()[-1].split(".")[0])


def _bindir_16_or_later() -> str:
    for candidate in (find_bindir, lambda: wheel_bindir("pgserver")):
        try:
            bindir = candidate()
        except RuntimeError:
            continue
        if _major(bindir) >= 16:
            return bindir
    pytest.skip("no PostgreSQL 16+ server binaries (the pgserver wheel of the dev requirements "
                "has them: run `make install`)")


@pytest.fixture(scope="module")
def servers():
    """(primary, standby), streaming through a physical slot."""
    primary = PostgresCluster(bindir=_bindir_16_or_later()).start()
    try:
        standby = primary.start_standby(slot="standby_for_tests")
        try:
            standby.wait_ready()
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


def _database(servers, name: str):
    primary, standby = servers
    admin = psycopg2.connect(primary.url)
    admin.autocommit = True
    run_sql(admin, f"CREATE DATABASE {name}")
    admin.close()
    urls = [server.url.rsplit("/", 1)[0] + "/" + name for server in (primary, standby)]
    conn = psycopg2.connect(urls[0])
    conn.autocommit = True
    return conn, urls[0], urls[1]


def _wait_replayed(primary_conn, standby_url: str) -> None:
    """Waits until the standby has replayed what the primary wrote so far (read through the
    standby's `postgres` database, which exists before a new database is replayed)."""
    with primary_conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn()")
        (lsn,) = cur.fetchone()
    standby = psycopg2.connect(standby_url.rsplit("/", 1)[0] + "/postgres")
    with standby.cursor() as cur:
        for _ in range(200):
            cur.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,))
            if cur.fetchone()[0]:
                break
            cur.execute("SELECT pg_sleep(0.05)")
    standby.close()


def _tables(conn) -> None:
    run_sql(conn, "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g",
            "CREATE TABLE log (at int, what text)",  # no key: inserts only
            "INSERT INTO log SELECT g, 'e' || g FROM generate_series(1, 5) g")


def _slots(url: str):
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'")
        names = [row[0] for row in cur.fetchall()]
    conn.close()
    return names


def test_cdc_reads_off_a_standby(servers, tmp_path):
    conn, primary_url, standby_url = _database(servers, "standby_full")
    _tables(conn)
    _wait_replayed(conn, standby_url)
    project = Project(tmp_path, standby_url)
    project.env["SOURCES__PG_REPLICATION__PRIMARY_CREDENTIALS"] = primary_url
    project.run("snapshot")
    assert _slots(standby_url) == [project.slot] and project.slot not in _slots(primary_url)
    run_sql(conn, "UPDATE t SET v = 'changed' WHERE id <= 10", "DELETE FROM t WHERE id > 45",
            "INSERT INTO t VALUES (100, 'new')", "INSERT INTO log VALUES (6, 'late')")
    out = project.run("cdc").stdout
    assert "17 changes (log 1, t 16)" in out, out  # heartbeat on the primary, awaited on the standby: all read
    for table in ("t", "log"):
        assert_table_matches(conn, project, table)
    # An UPDATE of the keyless table is found in the primary's statistics.
    run_sql(conn, "UPDATE log SET what = 'x' WHERE at = 1")
    publish_statistics(conn)
    line = one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert "log" in line and "UPDATE or DELETE since the copy" in line, line
    project.run("snapshot", "--tables", "log")
    project.run("cdc")
    assert_table_matches(conn, project, "log")
    project.run("verify")
    conn.close()


def test_a_standby_without_primary_credentials(servers, tmp_path):
    conn, primary_url, standby_url = _database(servers, "standby_alone")
    _tables(conn)
    _wait_replayed(conn, standby_url)
    project = Project(tmp_path, standby_url)
    project.env["SOURCES__PG_REPLICATION__TABLE_NAMES"] = "t"
    # Read-only: the publication must exist; the message gives the statement for the primary.
    line = one_error_line(project.run("snapshot", expect=EXIT_SOURCE_NOT_READY))
    assert "standby" in line and f'CREATE PUBLICATION "{project.pub}" FOR TABLE "public"."t"' in line, line
    run_sql(conn, f"CREATE PUBLICATION {project.pub} FOR TABLE t "
                  "WITH (publish_via_partition_root = true)")
    _wait_replayed(conn, standby_url)
    project.run("snapshot")
    run_sql(conn, "UPDATE t SET v = 'on the primary' WHERE id = 7")
    _wait_replayed(conn, standby_url)
    project.run("cdc")  # reads up to the standby's replay position
    assert_table_matches(conn, project, "t")
    # A row filter cannot be checked against an admin's: only the pipeline sets it (primary).
    project.env["SOURCES__PG_REPLICATION__ROW_FILTERS"] = '{"t": "id < 40"}'
    line = one_error_line(project.run("snapshot", expect=EXIT_SOURCE_NOT_READY))
    assert "as configured" in line and "primary_credentials" in line, line
    del project.env["SOURCES__PG_REPLICATION__ROW_FILTERS"]
    # A table without a key needs the primary's statistics.
    project.env["SOURCES__PG_REPLICATION__TABLE_NAMES"] = "t,log"
    line = one_error_line(project.run("snapshot", "--tables", "log", expect=EXIT_SOURCE_NOT_READY))
    assert "log" in line and "primary_credentials" in line, line
    # Online copies write watermarks: refused on a standby.
    line = one_error_line(project.run("snapshot", "--online", "--tables", "t",
                                      expect=EXIT_SOURCE_NOT_READY))
    assert "cannot run on a standby" in line, line
    conn.close()


def test_a_standby_before_16_is_refused(tmp_path):
    older = [path for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"))
             if _major(path) < 16 and Path(path, "pg_basebackup").exists()]
    if not older:
        pytest.skip("no PostgreSQL server binaries before 16 on this machine (Debian's are 15)")
    bindir = older[-1]
    primary = PostgresCluster(bindir=bindir).start()
    try:
        standby = primary.start_standby()
        try:
            standby.wait_ready()
            conn = _autocommit(primary.url)
            run_sql(conn, "CREATE TABLE t (id int PRIMARY KEY)")
            conn.close()
            line = one_error_line(Project(tmp_path, standby.url).run(
                "snapshot", expect=EXIT_SOURCE_NOT_READY))
            assert "standby" in line and "needs PostgreSQL 16" in line, line
        finally:
            standby.stop()
    finally:
        primary.stop()


def _autocommit(url: str):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def test_a_standby_without_feedback_is_refused(servers, tmp_path):
    conn, _, standby_url = _database(servers, "standby_nofeedback")
    _tables(conn)
    _wait_replayed(conn, standby_url)
    standby = servers[1]
    admin = psycopg2.connect(standby.url)
    admin.autocommit = True
    try:
        # ALTER SYSTEM is refused on a standby: the setting goes through its configuration file.
        standby.set_setting("hot_standby_feedback", "off")
        run_sql(admin, "SELECT pg_reload_conf()", "SELECT pg_sleep(0.3)")
        project = Project(tmp_path, standby_url)
        line = one_error_line(project.run("snapshot", expect=EXIT_SOURCE_NOT_READY))
        assert "hot_standby_feedback" in line, line
    finally:
        standby.set_setting("hot_standby_feedback", "on")
        run_sql(admin, "SELECT pg_reload_conf()")
        admin.close()
    conn.close()
