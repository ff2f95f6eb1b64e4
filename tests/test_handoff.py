"""Per-table hand-offs: every snapshot hands off exactly, and `cdc` never runs on a destination
without its copy (handoff.py, integrity.py).

Tables without a key are the sharp test: their rows are appended, so a change applied twice stays
as a duplicate row, and `assert_table_matches` compares them as multisets.
"""

import random
import shutil
import signal
import threading
import time

import duckdb
import psycopg2
import pytest

from tests.tools import (DATASET, PGBENCH_TABLES, Project, assert_table_matches, lsn_in,
                         pgbench_load, run_sql)

EXIT_SLOT, EXIT_CHECK_FAILED, EXIT_NO_COPY = 6, 9, 10


@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)



def _one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


class Writer:
    """Inserts into the given tables, one transaction each, until stopped."""

    def __init__(self, url: str, tables, pause: float = 0.002) -> None:
        self.url, self.tables, self.pause = url, tables, pause
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.count = 0

    def _run(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop.is_set():
                self.count += 1
                for table in self.tables:
                    cur.execute(f"INSERT INTO {table} (id, v) VALUES (%s, 'live')",
                                (1_000_000 + self.count,))
                time.sleep(self.pause)
        conn.close()

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _keyed_and_keyless(conn, rows: int = 20_000) -> None:
    run_sql(conn,
            "CREATE TABLE a (id bigint PRIMARY KEY, v text)",
            "CREATE TABLE a_log (id bigint, v text)",  # no key: appended
            "CREATE TABLE b (id bigint PRIMARY KEY, v text)",
            f"INSERT INTO a SELECT g, repeat('x', 100) FROM generate_series(1, {rows}) g",
            f"INSERT INTO a_log SELECT g, repeat('x', 100) FROM generate_series(1, {rows}) g",
            f"INSERT INTO b SELECT g, 'b' FROM generate_series(1, {rows}) g")


# -- reruns after a failed or killed first snapshot ---------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")
def test_killed_first_snapshot_under_pgbench_then_rerun_is_exact(source, duckdb_project):
    seed = random.randrange(1_000_000)
    kill_after = random.Random(seed).uniform(0.2, 3.0)
    with pgbench_load(duckdb_project.source_url, seconds=12):
        time.sleep(0.5)
        first = duckdb_project.start("snapshot")
        time.sleep(kill_after)
        first.send_signal(signal.SIGKILL)
        first.wait()
        duckdb_project.run("snapshot")
        for _ in range(3):
            duckdb_project.run("cdc")
            time.sleep(1)
    duckdb_project.run("cdc")
    for table in PGBENCH_TABLES:  # pgbench_history has no key: compared as a multiset
        try:
            assert_table_matches(source, duckdb_project, table)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}, killed after {kill_after:.2f}s: {e}") from None


def test_failed_first_snapshot_then_good_one_then_dropped_slot_refuses(source, project, tmp_path):
    _keyed_and_keyless(source, rows=100)
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    unwritable = {"DESTINATION__DUCKDB__CREDENTIALS": str(blocker / "dest.duckdb"),
                  "DESTINATION__FILESYSTEM__BUCKET_URL": (blocker / "lake").as_uri()}
    failed = project.run("snapshot", env=unwritable, expect=None)
    assert failed.exit_code != 0
    _one_error_line(failed)
    assert project.slot_confirmed_lsn() is not None, "the failed snapshot left its slot"

    project.run("snapshot")
    run_sql(source, f"SELECT pg_drop_replication_slot('{project.slot}')",
            "INSERT INTO a_log VALUES (500, 'after the drop')")
    refused = project.run("cdc", expect=EXIT_SLOT)
    line = _one_error_line(refused)
    assert f"slot '{project.slot}' does not exist" in line and "run `snapshot`" in line
    assert project.slot_confirmed_lsn() is None, "nothing is created silently"


@pytest.mark.slow
def test_cdc_after_a_snapshot_that_failed_on_its_last_table(source, duckdb_project, tmp_path):
    # The pipeline logs in as a role that may not read the last table: the copy fails there.
    _keyed_and_keyless(source, rows=1000)
    run_sql(source, "CREATE TABLE zz_last (id int PRIMARY KEY, v text)",
            "INSERT INTO zz_last SELECT g, 'z' FROM generate_series(1, 1001) g",
            "DROP ROLE IF EXISTS copier", "CREATE ROLE copier LOGIN REPLICATION",
            "GRANT SELECT ON a, a_log, b TO copier",
            f"CREATE PUBLICATION {duckdb_project.pub} FOR TABLE a, b, zz_last "
            "WITH (publish_via_partition_root = true)",
            f"CREATE PUBLICATION {duckdb_project.pub}_insert_only FOR TABLE a_log "
            "WITH (publish = 'insert, truncate')")
    as_copier = {"SOURCES__PG_REPLICATION__CREDENTIALS":
                 duckdb_project.source_url.replace("postgres@", "copier@")}
    try:
        failed = duckdb_project.run("snapshot", env=as_copier, expect=None)
        assert failed.exit_code != 0 and "zz_last" in _one_error_line(failed)
        run_sql(source, "INSERT INTO zz_last VALUES (5000, 'after')", "UPDATE a SET v = 'u'")

        refused = duckdb_project.run("cdc", env=as_copier, expect=EXIT_NO_COPY)
        assert "run `snapshot`" in _one_error_line(refused)
        assert duckdb_project.run("status", env=as_copier, expect=None).exit_code == EXIT_CHECK_FAILED
        verify = duckdb_project.run("verify", env=as_copier, expect=EXIT_CHECK_FAILED)
        assert "✗ table copies: no snapshot has been loaded" in verify.stdout

        run_sql(source, "GRANT SELECT ON zz_last TO copier")
        duckdb_project.run("snapshot", env=as_copier)
        run_sql(source, "INSERT INTO zz_last VALUES (5001, 'later')", "DELETE FROM b WHERE id < 10",
                "INSERT INTO a_log VALUES (7, 'appended')")
        duckdb_project.run("cdc", env=as_copier)
        for table in ("a", "a_log", "b", "zz_last"):
            assert_table_matches(source, duckdb_project, table)
        duckdb_project.run("verify", env=as_copier)
    finally:
        run_sql(source, f"DROP PUBLICATION IF EXISTS {duckdb_project.pub}",
                f"DROP PUBLICATION IF EXISTS {duckdb_project.pub}_insert_only",
                "DROP OWNED BY copier", "DROP ROLE copier")


def test_a_slot_no_load_used_retains_no_wal_while_cdc_refuses(source, project, tmp_path):
    # The rule for a slot that exists but no load ever confirmed: it holds nothing the destination
    # needs, so cdc confirms it to the current WAL position and asks for a snapshot.
    _keyed_and_keyless(source, rows=100)
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    project.run("snapshot", expect=None,
                env={"DESTINATION__DUCKDB__CREDENTIALS": str(blocker / "dest.duckdb"),
                     "DESTINATION__FILESYSTEM__BUCKET_URL": (blocker / "lake").as_uri()})
    created_at = project.slot_confirmed_lsn()
    run_sql(source, "INSERT INTO a_log SELECT g, 'x' FROM generate_series(1, 5000) g")
    refused = project.run("cdc", expect=EXIT_NO_COPY)
    assert "no snapshot has been loaded into the destination yet: run `snapshot`" in \
        _one_error_line(refused)
    with source.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn() - '0/0'")
        now = int(cur.fetchone()[0])
    assert created_at < project.slot_confirmed_lsn() <= now
    project.run("snapshot")
    run_sql(source, "INSERT INTO a_log VALUES (1, 'after the copy')")
    project.run("cdc")
    assert_table_matches(source, project, "a_log")


# -- snapshots of some tables on a running pipeline ----------------------------------------------


@pytest.mark.slow
def test_resnapshot_of_one_table_under_writes_applies_nothing_twice(source, duckdb_project):
    _keyed_and_keyless(source)
    duckdb_project.run("snapshot")
    run_sql(source, "INSERT INTO a_log VALUES (1, 'before cdc')", "UPDATE b SET v = 'c1'")
    duckdb_project.run("cdc")
    # Writes to a, a_log and b before, during and after the refresh of a and a_log.
    with Writer(duckdb_project.source_url, ["a", "a_log", "b"]) as writer:
        time.sleep(0.3)
        refreshed = duckdb_project.run("snapshot", "--tables", "a,a_log")
        time.sleep(0.3)
    assert writer.count > 20
    handoff = lsn_in(refreshed.stdout, "hand-off LSN ")
    assert duckdb_project.slot_confirmed_lsn() < handoff
    duckdb_project.run("cdc")
    for table in ("a", "a_log", "b"):
        assert_table_matches(source, duckdb_project, table)
    # The writer commits in id order: live rows up to the hand-off came in the copy only (a
    # change applied again by cdc would carry a commit time), the later ones through cdc.
    live = sorted((r["id"], r["_pg_commit_ts"]) for r in duckdb_project.dest_rows("a")
                  if r["id"] > 1_000_000)
    copied = [i for i, commit_ts in live if commit_ts is None]
    streamed = [i for i, commit_ts in live if commit_ts is not None]
    assert copied and streamed and max(copied) < min(streamed)


@pytest.mark.slow
def test_table_added_later_starts_exactly_at_its_own_handoff(source, duckdb_project):
    _keyed_and_keyless(source, rows=100)
    duckdb_project.run("snapshot", "--tables", "a,b")
    run_sql(source, "CREATE TABLE late (id bigint, v text)",  # no key: appended
            "INSERT INTO late SELECT g, 'old' FROM generate_series(1, 30000) g")
    duckdb_project.run("cdc")
    with Writer(duckdb_project.source_url, ["late", "a"]) as writer:
        time.sleep(0.2)
        added = duckdb_project.run("snapshot", "--tables", "late")
        time.sleep(0.2)
    assert writer.count > 10
    assert "late: " in added.stdout
    duckdb_project.run("cdc")
    for table in ("a", "b", "late"):
        assert_table_matches(source, duckdb_project, table)
    handoff = lsn_in(added.stdout, "hand-off LSN ")
    late_rows = duckdb_project.dest_rows("late")
    assert all(r["_pg_lsn"] == handoff for r in late_rows if r["_pg_commit_ts"] is None)
    assert any(r["_pg_commit_ts"] is not None for r in late_rows), "some rows came by cdc"


def test_table_published_by_hand_without_a_copy_is_refused(source, duckdb_project):
    _keyed_and_keyless(source, rows=10)
    duckdb_project.run("snapshot", "--tables", "a,b")
    run_sql(source, "CREATE TABLE extra (id int PRIMARY KEY)", "INSERT INTO extra VALUES (1)",
            f"ALTER PUBLICATION {duckdb_project.pub} ADD TABLE extra")
    refused = duckdb_project.run("cdc", expect=EXIT_NO_COPY)
    assert "no copy of table extra" in _one_error_line(refused)
    assert "run `snapshot --tables extra`" in refused.stderr
    duckdb_project.run("snapshot", "--tables", "extra")
    run_sql(source, "INSERT INTO extra VALUES (2)")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "extra")


# -- the destination lost its copy --------------------------------------------------------------


def test_destination_lost_between_runs_is_refused_and_snapshot_recovers(source, project):
    _keyed_and_keyless(source, rows=1001)
    project.run("snapshot")
    run_sql(source, "UPDATE a SET v = 'one' WHERE id = 1")
    project.run("cdc")
    if project.destination == "duckdb":
        for path in project.dir.glob("dest.duckdb*"):
            path.unlink()
        expected = "the destination no longer holds what this pipeline loaded"
    else:
        shutil.rmtree(project.delta_root / DATASET / "a")
        expected = "table a missing from the destination although copied: run `snapshot --tables a`"
    run_sql(source, "UPDATE a SET v = 'two' WHERE id < 6")

    refused = project.run("cdc", expect=EXIT_NO_COPY)
    assert expected in _one_error_line(refused)
    verify = project.run("verify", expect=EXIT_CHECK_FAILED)
    assert "✗ table copies: " + expected in verify.stdout
    status = project.run("status", expect=EXIT_CHECK_FAILED)
    assert "problem: " + expected in status.stdout

    project.run("snapshot")
    run_sql(source, "UPDATE a SET v = 'three' WHERE id < 3")
    project.run("cdc")
    for table in ("a", "a_log", "b"):
        assert_table_matches(source, project, table)
    project.run("verify")


def test_a_snapshot_that_fails_leaves_a_dropped_table_missing(source, source_url,
                                                            duckdb_project):
    """A table dropped in the destination was created again, empty, before the snapshot that
    would copy it; when that snapshot then gave up (an open transaction), cdc, verify and status
    saw the table, said nothing, and the rows never came back."""
    project = duckdb_project
    _keyed_and_keyless(source, rows=50)
    project.run("snapshot")
    with duckdb.connect(str(project.duckdb_path)) as con:
        con.execute(f"DROP TABLE {DATASET}.a")
    expected = "table a missing from the destination although copied: run `snapshot --tables a`"
    assert expected in _one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    blocker = psycopg2.connect(source_url)  # idle in transaction: the snapshot waits, gives up
    try:
        with blocker.cursor() as cur:
            cur.execute("INSERT INTO b VALUES (1000, 'open')")
        project.run("snapshot", "--tables", "a", "--max-wait", "1", expect=4)
    finally:
        blocker.rollback()
        blocker.close()
    assert expected in _one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert "✗ table copies: " + expected in project.run("verify", expect=EXIT_CHECK_FAILED).stdout
    project.run("snapshot", "--tables", "a")
    project.run("cdc")
    assert_table_matches(source, project, "a")


def test_positions_of_another_slot_are_refused(source, duckdb_project):
    # The configured slot changed (or another pipeline's slot has that name): the stored
    # positions mean nothing for it.
    _keyed_and_keyless(source, rows=10)
    duckdb_project.run("snapshot")
    other = duckdb_project.slot + "_other"
    run_sql(source, f"SELECT pg_create_logical_replication_slot('{other}', 'pgoutput')")
    refused = duckdb_project.run("cdc", env={"SOURCES__PG_REPLICATION__SLOT_NAME": other},
                          expect=EXIT_NO_COPY)
    assert (f"the destination was loaded from slot '{duckdb_project.slot}', not the configured "
            f"'{other}'") in _one_error_line(refused)


def _forget_local_state(project: Project) -> None:
    """A new machine, or a wiped working folder: the pipeline's local state is gone."""
    shutil.rmtree(project.dir / "dlt_data" / "pipelines" / project.pipeline_name)


@pytest.mark.slow
def test_local_state_lost_the_destination_state_is_the_truth(source, duckdb_project):
    _keyed_and_keyless(source, rows=100)
    duckdb_project.run("snapshot", "--tables", "a,a_log")
    duckdb_project.run("snapshot", "--tables", "b")  # a second hand-off, for b only
    run_sql(source, "INSERT INTO a_log VALUES (1, 'x')", "UPDATE b SET v = 'y' WHERE id = 1")
    duckdb_project.run("cdc")
    _forget_local_state(duckdb_project)
    run_sql(source, "INSERT INTO a_log VALUES (2, 'x')", "DELETE FROM b WHERE id = 2",
            "UPDATE a SET v = 'z' WHERE id < 4")
    duckdb_project.run("cdc")
    for table in ("a", "a_log", "b"):
        assert_table_matches(source, duckdb_project, table)


def test_local_state_lost_with_names_snake_case_rewrites(source, duckdb_project):
    """Without a local schema, the destination's tables were looked up under their source
    names: `MixedCase` (in `mixed_case`) and `sales.Items` (in `sales__items`) were said to be
    missing, and cdc refused on every new machine."""
    project = duckdb_project
    run_sql(source, 'CREATE TABLE "MixedCase" (id int PRIMARY KEY, v text)',
            "CREATE SCHEMA sales", 'CREATE TABLE sales."Items" (id int PRIMARY KEY, v text)',
            """INSERT INTO "MixedCase" VALUES (1, 'a')""",
            """INSERT INTO sales."Items" VALUES (1, 'a')""")
    schemas = {"SOURCES__PG_REPLICATION__SCHEMA_NAMES": "public,sales"}
    project.run("snapshot", env=schemas)
    _forget_local_state(project)
    run_sql(source, """UPDATE "MixedCase" SET v = 'b'""", 'DELETE FROM sales."Items"')
    project.run("cdc", env=schemas)
    project.run("verify", env=schemas)
    assert_table_matches(source, project, "MixedCase", dest_table="mixed_case")
    assert_table_matches(source, project, "Items", schema="sales", dest_table="sales__items")


def test_local_state_lost_and_slot_dropped_is_refused(source, duckdb_project):
    _keyed_and_keyless(source, rows=10)
    duckdb_project.run("snapshot")
    _forget_local_state(duckdb_project)
    run_sql(source, f"SELECT pg_drop_replication_slot('{duckdb_project.slot}')",
            "INSERT INTO a_log VALUES (3, 'lost with the slot')")
    refused = duckdb_project.run("cdc", expect=EXIT_SLOT)
    assert f"slot '{duckdb_project.slot}' does not exist" in _one_error_line(refused)
    assert duckdb_project.slot_confirmed_lsn() is None


@pytest.mark.slow
def test_destination_restored_from_a_backup_on_a_new_machine_is_refused(source, tmp_path,
                                                                        source_url):
    # An older destination and no local state: only the slot tells that changes since the backup
    # were loaded (and confirmed) and are gone from the stream.
    project = Project(tmp_path, source_url, destination="duckdb")
    _keyed_and_keyless(source, rows=100)
    project.run("snapshot")
    backup = tmp_path / "backup.duckdb"
    shutil.copy(project.duckdb_path, backup)
    run_sql(source, "UPDATE a SET v = 'after the backup' WHERE id < 50", "DELETE FROM b WHERE id < 9")
    project.run("cdc")
    shutil.copy(backup, project.duckdb_path)
    _forget_local_state(project)

    refused = project.run("cdc", expect=EXIT_NO_COPY)
    line = _one_error_line(refused)
    assert "the slot is confirmed past what the destination holds of tables a, a_log, b" in line
    assert "run `snapshot --tables a,a_log,b`" in line
    assert project.run("status", expect=None).exit_code == EXIT_CHECK_FAILED
    project.run("verify", expect=EXIT_CHECK_FAILED)

    project.run("snapshot", "--tables", "a,a_log,b")
    project.run("cdc")
    for table in ("a", "a_log", "b"):
        assert_table_matches(source, project, table)


def test_unreachable_destination_before_reading_is_exit_7(source, project, tmp_path):
    _keyed_and_keyless(source, rows=10)
    project.run("snapshot")
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    confirmed = project.slot_confirmed_lsn()
    run_sql(source, "INSERT INTO a_log VALUES (1, 'waits')")
    failed = project.run("cdc", expect=7, env={
        "DESTINATION__DUCKDB__CREDENTIALS": str(blocker / "dest.duckdb"),
        "DESTINATION__FILESYSTEM__BUCKET_URL": (blocker / "lake").as_uri()})
    assert "the destination failed" in _one_error_line(failed)
    assert project.slot_confirmed_lsn() == confirmed
    project.run("cdc")
    assert_table_matches(source, project, "a_log")


@pytest.mark.parametrize("rerun", [("--tables", "a"), ()], ids=["that table", "every table"])
def test_destination_table_dropped_by_hand_is_recreated_by_the_snapshot_named(source,
                                                                             duckdb_project,
                                                                             rerun):
    """Before, on DuckDB the snapshot the refusal names failed on every run ("Table with name a
    does not exist"): dlt's stored schema still had the table, so nothing created it again."""
    _keyed_and_keyless(source, rows=20)
    duckdb_project.run("snapshot")
    with duckdb.connect(str(duckdb_project.duckdb_path)) as con:
        con.execute(f"DROP TABLE {DATASET}.a")
    run_sql(source, "UPDATE a SET v = 'after the drop' WHERE id = 1")
    line = _one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    assert "table a missing from the destination although copied: run `snapshot --tables a`" \
        in line
    duckdb_project.run("snapshot", *rerun)
    run_sql(source, "UPDATE a SET v = 'later' WHERE id = 2")
    duckdb_project.run("cdc")
    for table in ("a", "a_log", "b"):
        assert_table_matches(source, duckdb_project, table)
    duckdb_project.run("verify")
