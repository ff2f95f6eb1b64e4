"""Operating it: status, idle-slot protection, least privilege, --follow, the demo."""

import itertools
import json
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from tests.tools import REPO, assert_table_matches, run_sql




def _items(conn):
    run_sql(conn, "CREATE TABLE items (id int PRIMARY KEY, name text)",
         "INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 10) g")


def test_status_reports_slot_lag_publication_and_last_run(source, project):
    _items(source)
    missing = project.run("status", expect=6)
    assert "does not exist" in missing.stdout

    project.run("snapshot")
    ok = json.loads(project.run("status", "--json").stdout)
    assert ok["slot_name"] == project.slot and ok["slot_exists"] and not ok["active"]
    assert ok["publications"] == {project.pub: ["public.items"]}
    assert ok["wal_status"] in ("reserved", "extended")
    assert ok["last_run"]["command"] == "snapshot" and ok["last_run"]["outcome"] == "succeeded"
    assert ok["last_loaded_lsn"] == ok["confirmed_flush_lsn"]

    run_sql(source, "INSERT INTO items SELECT g, repeat('x', 1000) FROM generate_series(11, 3000) g")
    lagging = project.run("status", "--max-lag-mb", "0.5", expect=9)
    assert "exceeds 0.5 MB" in lagging.stdout
    assert "lag" in lagging.stdout and "WAL retained" in lagging.stdout

    project.run("cdc")
    after = json.loads(project.run("status", "--json", "--max-lag-mb", "0.5").stdout)
    assert after["lag_bytes"] < 512 * 1024
    assert after["last_run"]["command"] == "cdc" and after["last_run"]["summary"].startswith(
        "cdc: 2990 changes")


def test_idle_slot_is_moved_forward_past_unpublished_wal(source, project):
    _items(source)
    project.run("snapshot")
    run_sql(source, "CREATE TABLE unpublished (id int, payload text)")
    for _ in range(8):  # ~64 MB of WAL that the slot's publication never sees
        run_sql(source, "INSERT INTO unpublished SELECT g, repeat(md5(g::text), 30) "
                     "FROM generate_series(1, 8000) g")
    before = json.loads(project.run("status", "--json").stdout)["lag_bytes"]
    assert before > 60 * (1 << 20)
    result = project.run("cdc")
    assert "cdc: 0 changes" in result.stdout
    after = json.loads(project.run("status", "--json").stdout)["lag_bytes"]
    assert after < 16 * (1 << 20)


def test_least_privileged_role_with_a_precreated_publication(source, project):
    _items(source)
    run_sql(source,
         "CREATE ROLE replicator LOGIN REPLICATION PASSWORD 'replicator-pw'",
         "GRANT SELECT ON ALL TABLES IN SCHEMA public TO replicator",
         f"CREATE PUBLICATION {project.pub} FOR TABLE items "
         "WITH (publish_via_partition_root = true)")
    parts = urlsplit(project.source_url)
    url = urlunsplit(parts._replace(netloc=f"replicator:replicator-pw@{parts.hostname}:{parts.port}"))
    env = {"SOURCES__PG_REPLICATION__CREDENTIALS": url}
    result = project.run("snapshot", env=env)
    assert "items: 10 rows" in result.stdout and "replicator-pw" not in result.output
    run_sql(source, "UPDATE items SET name = 'changed' WHERE id = 1", "DELETE FROM items WHERE id = 2")
    project.run("cdc", env=env)
    assert_table_matches(source, project, "items")
    assert json.loads(project.run("status", "--json", env=env).stdout)["slot_exists"]

    # Without the publication and without owning the table, the error says what to grant.
    run_sql(source, f"DROP PUBLICATION {project.pub}")
    run_sql(source, "SELECT pg_drop_replication_slot(%s)" % repr(project.slot).replace('"', "'"))
    refused = project.run("snapshot", env=env, expect=4)
    assert refused.stderr.startswith("Error: ") and refused.stderr.count("\n") == 1
    assert "publication" in refused.stderr and "replicator-pw" not in refused.output


def test_follow_finishes_the_load_in_progress_on_sigterm(source, project):
    _items(source)
    project.run("snapshot")
    follower = project.start("cdc", "--follow", "--interval", "0.5")
    try:
        run_sql(source, "UPDATE items SET name = 'followed' WHERE id = 1")
        with source.cursor() as cur:
            cur.execute("SELECT pg_current_wal_insert_lsn() - '0/0'")
            change_end = int(cur.fetchone()[0])
        # The slot is confirmed only after a load: watch it from the source side, so the test
        # never competes with the follower for the DuckDB file.
        deadline = time.time() + 90
        while (project.slot_confirmed_lsn() or 0) < change_end:
            assert time.time() < deadline, "--follow did not load the change within 90 s"
            assert follower.poll() is None, follower.communicate()[1]
            time.sleep(0.3)
        run_sql(source, "INSERT INTO items SELECT g, 'late' FROM generate_series(100, 20100) g")
        time.sleep(0.5)
        follower.send_signal(signal.SIGTERM)
        stdout, stderr = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stdout.strip().splitlines()[-1].startswith("cdc: ")
    assert {r["id"]: r["name"] for r in project.dest_rows("items")}[1] == "followed"
    # what was read before the signal was loaded and confirmed; the next run takes the rest
    project.run("cdc")
    assert_table_matches(source, project, "items")


def test_follow_waits_while_another_run_holds_the_slot(source, project):
    """A cron `cdc` or a `snapshot --tables` that starts while `--follow` sleeps holds the run
    lock when the follow wakes up: the follow waits for it, it does not exit 5 for good."""
    _items(source)
    project.run("snapshot")
    follower = project.start("cdc", "--follow", "--interval", "0.3")
    other_run = psycopg2.connect(source.dsn)
    other_run.autocommit = True
    try:
        time.sleep(2)  # the follow is between runs, or in one
        with other_run.cursor() as cur:  # what a second run takes (slots.acquire_run_lock)
            cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                        ("pg_replication:" + project.slot,))
        run_sql(source, "UPDATE items SET name = 'after the other run' WHERE id = 1")
        time.sleep(4)  # several of the follow's runs find the lock taken
        assert follower.poll() is None, follower.communicate()
        other_run.close()  # the other run ends
        stderr = _stop_after_catching_up(follower, project, _wal_insert_lsn(source),
                                         "--follow did not go on after the other run")
    finally:
        if follower.poll() is None:
            follower.kill()
        other_run.close()
    assert follower.returncode == 0, stderr
    assert "in use by another run" in stderr and "Traceback" not in stderr
    assert_table_matches(source, project, "items")


@pytest.mark.slow
def test_status_and_readers_of_the_duckdb_file_beside_follow(source, duckdb_project):
    """DuckDB lets one process open its file at a time: `status` next to a running follow must
    neither fail nor make the follow's next load fail; a user's own reader of the file makes
    the follow wait and try again, not exit."""
    import duckdb

    _items(source)
    duckdb_project.run("snapshot")
    follower = duckdb_project.start("cdc", "--follow", "--interval", "0.2")
    statuses, readers = [], 0
    conflict = "not read: a run has the DuckDB file open"
    deadline = time.monotonic() + 90  # rounds until both sides of the conflict were seen
    try:
        for round_number in itertools.count():
            if round_number >= 6 and readers and any(conflict in r.stdout for r in statuses):
                break
            assert time.monotonic() < deadline, "the follow and a reader never met the conflict"
            run_sql(source, f"UPDATE items SET name = 'r{round_number}' WHERE id <= 10")
            statuses.append(duckdb_project.run("status", expect=None))
            try:  # holds the file for a moment, as a query would
                with duckdb.connect(str(duckdb_project.duckdb_path), read_only=True) as con:
                    con.execute("SELECT count(*) FROM bronze_postgres_raw.items").fetchall()
                    time.sleep(0.5)
                readers += 1
            except duckdb.IOException:
                pass  # the follower had it
            assert follower.poll() is None, follower.communicate()
        stderr = _stop_after_catching_up(follower, duckdb_project, _wal_insert_lsn(source),
                                         "--follow did not catch up within 90 s")
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, stderr
    assert "Traceback" not in stderr
    for result in statuses:
        assert result.exit_code == 0, result.output
    assert any(conflict in result.stdout for result in statuses), [r.stdout for r in statuses]
    assert readers, "no reader got the file: the conflict was not exercised"
    assert_table_matches(source, duckdb_project, "items")


def _stop_after_catching_up(follower, project, change_end: int, failure: str) -> str:
    """Waits (from the source side: the follow keeps the DuckDB file) until the follow confirmed
    the slot up to `change_end`, then stops it with SIGTERM; returns its stderr."""
    deadline = time.time() + 90
    while (project.slot_confirmed_lsn() or 0) < change_end:
        assert time.time() < deadline, failure
        assert follower.poll() is None, follower.communicate()
        time.sleep(0.3)
    follower.send_signal(signal.SIGTERM)
    return follower.communicate(timeout=120)[1]


def _wal_insert_lsn(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn() - '0/0'")
        return int(cur.fetchone()[0])


@pytest.mark.slow
def test_credentials_for_another_database_fail_status_verify_and_cdc(source, project,
                                                                     pg_server_url):
    _items(source)
    project.run("snapshot")
    other = "t_" + uuid.uuid4().hex[:12]  # same server, so the slot is visible from there too
    admin = psycopg2.connect(pg_server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{other}"')
        parts = urlsplit(project.source_url)
        env = {"SOURCES__PG_REPLICATION__CREDENTIALS": urlunsplit(parts._replace(path="/" + other))}
        status = project.run("status", env=env, expect=6)
        assert "belongs to database" in status.stdout, status.stdout
        verify = project.run("verify", env=env, expect=9)
        assert "✗ replication slot" in verify.stdout and "belongs to database" in verify.stdout
        project.run("cdc", env=env, expect=6)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
        admin.close()
    project.run("cdc")  # the right credentials again: and all is well
    project.run("status")
    project.run("verify")


@pytest.mark.slow
def test_demo_runs_end_to_end():
    result = subprocess.run([sys.executable, str(REPO / "demo.py")], capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "DIFFERENT" not in result.stdout
    assert result.stdout.count("equal") >= 5
    assert "cdc: 15 changes" in result.stdout
    assert "confirmed_flush_lsn" in result.stdout and "WAL retained" in result.stdout  # status



@pytest.mark.parametrize("destination", ["duckdb", "filesystem"])
def test_verify_checks_slot_state_and_staged_files(source, tmp_path, source_url, destination):
    from tests.tools import Project

    project = Project(tmp_path, source_url, destination=destination)
    _items(source)
    project.run("snapshot")
    run_sql(source, "UPDATE items SET name = 'v' WHERE id = 1")
    project.run("cdc")
    good = project.run("verify")
    lines = good.stdout.strip().splitlines()
    assert lines[0].startswith(f"✓ replication slot: '{project.slot}' exists, lag ")
    assert lines[1].startswith("✓ _dlt_pipeline_state: destination holds ")
    if destination == "duckdb":
        assert lines[2] == "- staged files: not applicable to duckdb"
    else:
        assert lines[2].startswith("✓ staged files: no leftover load files")

    # The slot confirmed past the destination (someone advanced it by hand): verify fails.
    run_sql(source, "BEGIN; SET LOCAL synchronous_commit = on; INSERT INTO items VALUES (99, 'x'); COMMIT")
    run_sql(source, f"SELECT pg_replication_slot_advance('{project.slot}', pg_current_wal_flush_lsn())")
    ahead = project.run("verify", expect=9)
    assert "✗ _dlt_pipeline_state:" in ahead.stdout and "ahead of the destination" in ahead.stdout

    run_sql(source, f"SELECT pg_drop_replication_slot('{project.slot}')")
    missing = project.run("verify", expect=9)
    assert "✗ replication slot:" in missing.stdout
