"""Delivery guarantees: the slot moves only after the destination committed; failed and killed runs
converge on the next run; overlapping runs are refused."""

import random
import signal
import socket
import subprocess
import time

import duckdb
import psycopg2
import pytest

from tests.tools import DATASET, Project, assert_table_matches, one_error_line, run_sql


@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)


def _require_names(project, table: str, required: bool) -> None:
    """Makes the destination refuse (or accept again) NULL in column `name`."""
    if project.destination == "filesystem":
        from deltalake import DeltaTable

        delta = DeltaTable(str(project.delta_root / DATASET / table))
        if required:
            delta.alter.add_constraint({"name_required": "name IS NOT NULL"})
        else:
            delta.alter.drop_constraint("name_required")
        return
    action = "SET" if required else "DROP"
    with duckdb.connect(str(project.duckdb_path)) as con:
        con.execute(f"ALTER TABLE {DATASET}.{table} ALTER COLUMN name {action} NOT NULL")




def _duckdb_sql(project, statement: str) -> None:
    with duckdb.connect(str(project.duckdb_path)) as con:
        con.execute(f"SET search_path = '{DATASET}'")
        con.execute(statement)


def _items(conn, rows=50):
    run_sql(conn, "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int)",
         f"INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, {rows}) g")


def test_failed_load_keeps_the_slot_and_the_pending_package_loads_first(source, project):
    _items(source)
    project.run("snapshot")
    confirmed = project.slot_confirmed_lsn()
    # The destination starts refusing NULL names: the next load fails after extract/normalize.
    _require_names(project, "items", True)
    run_sql(source, "UPDATE items SET name = NULL WHERE id = 1", "UPDATE items SET qty = 0 WHERE id = 2")

    failed = project.run("cdc", expect=7)
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("Error: ")
    assert "slot was not advanced" in failed.stderr
    assert project.slot_confirmed_lsn() == confirmed
    # status tells an operator that the failed run's load waits for the next run
    pending = project.run("status", expect=None).stdout
    assert "1 load package(s) a killed or failed run left" in pending

    _require_names(project, "items", False)
    run_sql(source, "UPDATE items SET qty = 3 WHERE id = 3")
    rerun = project.run("cdc")  # the failed package first, then the new change
    assert "after loading a package an earlier run left" in rerun.stdout
    assert_table_matches(source, project, "items")
    assert project.slot_confirmed_lsn() > confirmed
    # and nothing is left to do
    assert "cdc: 0 changes" in project.run("cdc").stdout


def _refused_for_good(source, project) -> str:
    """A snapshot whose load the destination refuses for good: a CHECK constraint added by hand
    to a destination table, which a source row breaks. Returns the refusal's line. (A column
    dropped by hand did this until a snapshot learned to add it back.)"""
    _items(source)
    run_sql(source, "CREATE TABLE other (id int PRIMARY KEY, v text)",
            "INSERT INTO other VALUES (1, 'a')")
    project.run("snapshot")
    _recreate_items(project, "CHECK (qty >= 0)")
    run_sql(source, "UPDATE items SET qty = -5 WHERE id = 1", "INSERT INTO other VALUES (2, 'b')")
    return one_error_line(project.run("snapshot", expect=7))


def _recreate_items(project, *constraints: str) -> None:
    """The destination's `items` made again by hand, with `constraints`, holding its rows."""
    import duckdb

    with duckdb.connect(str(project.duckdb_path)) as con:
        con.execute("SET search_path = 'bronze_postgres_raw'")
        create = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = 'items' "
                             "AND schema_name = 'bronze_postgres_raw'").fetchone()[0]
        con.execute("ALTER TABLE items RENAME TO items_before")
        body = create.rstrip().rstrip(";").rstrip()[:-1]  # without its closing parenthesis
        body = body.split(", CHECK")[0]  # without the constraints added before
        con.execute(body + "".join(", " + c for c in constraints) + ")")
        con.execute("INSERT INTO items SELECT * FROM items_before")
        con.execute("DROP TABLE items_before")


def test_a_load_the_destination_refuses_for_good_is_named_with_its_way_out(
        source, duckdb_project):
    """Before, every later run retried the refused load and exited 7 with "run the command
    again once the destination works", which no rerun could make true; a snapshot of the table
    failed the same way."""
    project = duckdb_project
    line = _refused_for_good(source, project)
    assert "refused the load of table items for good" in line, line
    assert "CHECK constraint failed" in line, line
    assert "`snapshot --tables items,other`" in line, line
    # the package holds `other` too: setting it aside needs a copy of both
    for args in (["cdc"], ["snapshot", "--tables", "items"], ["verify", "--data", "--wait", "0"]):
        assert "refused the load of table items for good" in one_error_line(
            project.run(*args, expect=7)), args
    confirmed = project.slot_confirmed_lsn()
    _duckdb_sql(project, "DROP TABLE items")  # what was changed by hand, undone
    project.run("snapshot", "--tables", "items,other")
    assert project.slot_confirmed_lsn() == confirmed  # the set-aside load confirmed nothing
    run_sql(source, "UPDATE items SET qty = -1 WHERE id = 2", "DELETE FROM other WHERE id = 1")
    project.run("cdc")
    for table in ("items", "other"):
        assert_table_matches(source, project, table)
    project.run("verify", "--data")


def test_a_pending_load_never_recreates_a_table_dropped_since(source, duckdb_project):
    """Changes to `items` wait in a pending load (refused here; killed in test_crash) when the
    table is dropped in the destination: the table is named missing, with the snapshot that
    copies it, before the load is tried again (which could create it holding only those rows)."""
    project = duckdb_project
    _items(source)
    project.run("snapshot")
    _recreate_items(project, "CHECK (qty >= 0)")
    run_sql(source, "ALTER TABLE items ADD COLUMN extra int",  # dlt migrates: creates tables
            "UPDATE items SET qty = -1, extra = 1 WHERE id <= 3")
    project.run("cdc", expect=7)
    _duckdb_sql(project, "DROP TABLE items")
    expected = ("items missing from the destination although copied (changes to it wait in a "
                "pending load): run `snapshot --tables items`")
    assert expected in one_error_line(project.run("cdc", expect=10))
    project.run("snapshot", "--tables", "items")
    run_sql(source, "UPDATE items SET name = 'after' WHERE id = 4")
    project.run("cdc")
    assert_table_matches(source, project, "items")


def test_a_refused_load_loads_once_the_destination_is_restored(source, duckdb_project):
    project = duckdb_project
    _refused_for_good(source, project)
    _recreate_items(project)  # without the constraint
    project.run("cdc")  # the pending copy loads, then the changes
    for table in ("items", "other"):
        assert_table_matches(source, project, table)


def test_killed_runs_lose_nothing_and_duplicate_nothing(source, project):
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    _items(source, rows=1000)
    project.run("snapshot")
    for round_number in range(3):
        run_sql(source,
             f"INSERT INTO items SELECT g, 'r{round_number}', g FROM "
             f"generate_series({100_000 * (round_number + 1)}, {100_000 * (round_number + 1) + 40_000}) g",
             f"UPDATE items SET qty = qty + 1 WHERE id % 3 = {round_number}",
             f"DELETE FROM items WHERE id % 17 = {round_number}")
        process = project.start("cdc")
        time.sleep(rng.uniform(0.5, 4.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    project.run("cdc")
    assert_table_matches(source, project, "items"), f"seed {seed}"
    assert "cdc: 0 changes" in project.run("cdc").stdout, f"seed {seed}"


def test_a_second_run_while_one_holds_the_slot_exits_with_one_line(source, project):
    _items(source)
    project.run("snapshot")
    holder = psycopg2.connect(project.source_url, application_name="billing-job")
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                    ("pg_replication:" + project.slot,))
    try:
        refused = project.run("cdc", expect=5)
        assert refused.stderr.strip().splitlines() == [
            f"Error: slot '{project.slot}' is in use by another run (billing-job, server pid "
            f"{holder.get_backend_pid()}); try again later"
        ]
        assert project.run("snapshot", expect=5).stderr.count("\n") == 1
    finally:
        holder.close()

    # A run of ours holding it is named by its own process id and machine.
    follower = project.start("cdc", "--follow", "--interval", "0.2")
    try:
        deadline = time.monotonic() + 60
        while True:
            busy = project.run("cdc", expect=None)
            if busy.exit_code == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert busy.exit_code == 5, busy.stderr
        assert f"(pg_replication pid {follower.pid} on {socket.gethostname()}"[:60] in busy.stderr
    finally:
        follower.terminate()
        follower.communicate(timeout=120)

    # A foreign consumer streaming from the slot is refused the same way.
    receiver = subprocess.Popen(
        ["pg_recvlogical", "-d", project.source_url, "--slot", project.slot, "--start", "-o",
         "proto_version=1", "-o", f"publication_names={project.pub}", "-f", "/dev/null"],
        stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            with source.cursor() as cur:
                cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                            (project.slot,))
                if cur.fetchone()[0]:
                    break
            time.sleep(0.1)
        busy = project.run("cdc", expect=5)
        assert "is in use" in busy.stderr and busy.stderr.count("\n") == 1
    finally:
        receiver.terminate()
        receiver.wait()


def test_two_cdc_runs_started_together_never_corrupt(source, project):
    _items(source, rows=100)
    project.run("snapshot")
    run_sql(source, "INSERT INTO items SELECT g, 'x', g FROM generate_series(1000, 60000) g",
         "UPDATE items SET qty = -1 WHERE id < 50")
    first, second = project.start("cdc"), project.start("cdc")
    codes = sorted([first.wait(timeout=300), second.wait(timeout=300)])
    assert codes[0] == 0 and codes[1] in (0, 5)
    project.run("cdc")
    assert_table_matches(source, project, "items")


@pytest.mark.slow
def test_nothing_to_read_returns_and_max_seconds_bounds_a_run(source, project):
    _items(source)
    project.run("snapshot")
    idle = project.run("cdc", timeout=60)
    assert "cdc: 0 changes, no new changes" in idle.stdout
    # Enough that no bound tried below reads them all: 20 000 were read whole within 0.3 s.
    transactions = 100_000
    run_sql(source, f"DO $$ BEGIN FOR i IN 1..{transactions} LOOP "
                 "UPDATE items SET qty = i WHERE id = 1 + i % 50; COMMIT; END LOOP; END $$")
    loaded = 0
    # On a busy machine 0.1 s may pass before the stream's first commit: a longer bound then.
    for max_seconds in ("0.1", "0.3", "1"):
        bounded = project.run("cdc", "--max-seconds", max_seconds)
        loaded += int(bounded.stdout.split("cdc: ")[1].split(" changes")[0])
        if loaded:
            break
    assert 1 <= loaded < transactions
    rest = project.run("cdc")
    assert f"cdc: {transactions - loaded} changes" in rest.stdout
    assert_table_matches(source, project, "items")


@pytest.mark.parametrize("bad_slot", ["Bad-Slot", "x" * 64])
def test_invalid_slot_name_is_a_config_error(source, project, bad_slot):
    _items(source)
    result = project.run("cdc", expect=2, env={"SOURCES__PG_REPLICATION__SLOT_NAME": bad_slot})
    assert result.stderr.startswith("Error: invalid slot name") and result.stderr.count("\n") == 1
