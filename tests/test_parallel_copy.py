"""`snapshot --workers N`: the consistent copy read over several connections that import one
exported snapshot, large tables in CTID ranges (copy_workers.py)."""

import threading
import time

import psycopg2
import pytest

from pg_replication.catalog import describe_tables
from pg_replication.copy_workers import CopyPart, _ReaderPool, plan_parts, table_sizes
from tests.tools import assert_table_matches, run_sql

PART_BYTES = 8 * 8192  # eight blocks: the tables below are split into many ranges


def _tables(conn) -> None:
    run_sql(conn,
            "CREATE TABLE wide (id int PRIMARY KEY, note text)",
            "INSERT INTO wide SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 4000) g",
            "CREATE TABLE events (payload text)",  # no key: a duplicated or lost row shows
            "INSERT INTO events SELECT repeat(md5(g::text), 5) || (g % 50) "
            "FROM generate_series(1, 4000) g",
            "CREATE TABLE tiny (id int PRIMARY KEY)",
            "INSERT INTO tiny VALUES (1), (2)",
            "CREATE TABLE nothing (id int PRIMARY KEY)",
            "DELETE FROM wide WHERE id % 97 = 0")  # holes in the ranges


def test_parallel_copy_in_ctid_ranges_equals_source(source, project):
    _tables(source)
    tables = describe_tables(source, "public", ["wide", "events"])
    parts = plan_parts(list(tables.values()), table_sizes(source, list(tables.values())), 2,
                       ctid_ranges=True, part_blocks=PART_BYTES // 8192)
    assert sum(1 for part in parts if part.table.name == "wide") > 4  # really split
    stop = threading.Event()

    def write() -> None:  # changes during the copy: the stream carries them afterwards
        import psycopg2

        conn = psycopg2.connect(project.source_url)
        conn.autocommit = True
        key = 0
        while not stop.is_set():
            key = key % 4000 + 1
            with conn.cursor() as cur:
                cur.execute("UPDATE wide SET note = 'changed' WHERE id = %s", (key,))
                cur.execute("INSERT INTO events VALUES ('late')")
        conn.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        result = project.run("snapshot", "--workers", "2",
                             env={"SOURCES__PG_REPLICATION__SNAPSHOT_PART_BYTES": str(PART_BYTES)})
    finally:
        stop.set()
        writer.join()
    assert "nothing: 0 rows" in result.stdout
    project.run("cdc")
    for table in ("wide", "events", "tiny", "nothing"):
        assert_table_matches(source, project, table)


def test_a_failing_part_stops_every_reader_and_is_raised():
    """The reader threads alone (no server): one part fails, the other reader stops."""
    started = threading.Event()
    stopped = []

    def read(conn, part):
        if conn == "bad":
            started.wait(5)
            raise RuntimeError("COPY failed")
        started.set()
        try:
            while True:  # a reader that would go on forever
                yield part.table
        finally:
            stopped.append(conn)

    class Reader(str):  # stands for a connection: what the pool cancels when it stops early
        def cancel(self) -> None:
            pass

    parts = [CopyPart(name) for name in ("a", "b", "c")]
    pool = _ReaderPool([Reader("good"), Reader("bad")], parts, read)
    with pytest.raises(RuntimeError, match="COPY failed"):
        try:
            for _ in pool.results():
                pass
        finally:
            pool.stop()
    assert stopped == ["good"]


def test_a_schema_change_waiting_for_a_table_fails_the_parallel_copy_instead_of_hanging(
        source, project):
    """The first reader locks every table; an ALTER TABLE then queues behind it, and a second
    reader that had not locked the table yet would queue behind the ALTER, which waits for the
    first reader's transaction: a hang PostgreSQL does not see. The second reader locks without
    waiting and the copy fails with one line instead (exit 4), after which the ALTER runs."""
    run_sql(source,
            "CREATE TABLE wide (id int PRIMARY KEY, note text)",
            # a few seconds of reading, in 8-block parts: the ALTER below queues meanwhile
            "INSERT INTO wide SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 300000) g",
            # read after `wide`, in many parts: both readers read some of them
            "CREATE TABLE later (id int PRIMARY KEY, note text)",
            "INSERT INTO later SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 8000) g")
    copying = project.start("snapshot", "--workers", "2", env={
        "SOURCES__PG_REPLICATION__SNAPSHOT_PART_BYTES": str(PART_BYTES)})

    def holders_of_later() -> set:
        with source.cursor() as cur:
            cur.execute("SELECT pid FROM pg_locks WHERE relation = 'later'::regclass "
                        "AND mode = 'AccessShareLock' AND granted AND database = (SELECT oid "
                        "FROM pg_database WHERE datname = current_database()) "
                        "AND pid <> pg_backend_pid()")
            return {row[0] for row in cur.fetchall()}

    # A reader's transaction holds the lock until the copy ends; a catalog query holds it for
    # a moment: the same holder seen twice, 0.2 s apart, is a reader.
    deadline, seen = time.monotonic() + 60, set()
    while not (seen & holders_of_later()):
        assert time.monotonic() < deadline and copying.poll() is None, copying.communicate()
        seen = holders_of_later()
        time.sleep(0.2)
    def alter() -> None:  # waits behind the copy's first reader
        conn = psycopg2.connect(project.source_url)
        conn.autocommit = True
        run_sql(conn, "ALTER TABLE later ADD COLUMN extra int")
        conn.close()

    altering = threading.Thread(target=alter)
    altering.start()
    try:
        _, stderr = copying.communicate(timeout=120)
    finally:
        if copying.poll() is None:
            copying.kill()
        altering.join(60)
    assert copying.returncode == 4, stderr
    assert "table 'later': another session waits to change it" in stderr, stderr
    assert not altering.is_alive(), "the ALTER TABLE still waits"
