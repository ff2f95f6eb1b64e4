"""The library API a dlt user sees: init_replication, pg_replication(), replication_resource."""

import gc

import dlt
import duckdb

from pg_replication import init_replication, pg_replication
from pg_replication.catalog import fetch_current_values, describe_tables, load_type_catalog
from pg_replication.changes import (BatchLimits, ChangeCollector, Position, SegmentResult,
                                    read_changes)
from pg_replication.connect import connect
from pg_replication.slots import current_wal_lsn, ensure_publications
from pg_replication.stream import ReplicationStream
from tests.tools import run_sql


def _duckdb_pipeline(name: str, tmp_path) -> dlt.Pipeline:
    """A dlt pipeline into `api.duckdb` in tmp_path, dataset `api_data`."""
    return dlt.pipeline(name, pipelines_dir=str(tmp_path / "pipelines"),
                        destination=dlt.destinations.duckdb(str(tmp_path / "api.duckdb")),
                        dataset_name="api_data")


def test_pg_replication_source_reads_its_config_and_confirms_only_loaded_positions(
        source, source_url, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCES__PG_REPLICATION__CREDENTIALS", source_url)
    monkeypatch.setenv("SOURCES__PG_REPLICATION__SLOT_NAME", "api_slot")
    monkeypatch.setenv("SOURCES__PG_REPLICATION__PUB_NAME", "api_pub")
    run_sql(source, "CREATE TABLE items (id int PRIMARY KEY, name text)",
         "INSERT INTO items VALUES (1, 'a'), (2, 'b')")
    pipeline = _duckdb_pipeline("api_test", tmp_path)
    snapshot = init_replication("api_slot", "api_pub", "public", ["items"],
                                credentials=source_url, persist_snapshots=True)
    pipeline.run(snapshot)

    def confirmed():
        with source.cursor() as cur:
            cur.execute("SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots "
                        "WHERE slot_name = 'api_slot'")
            return int(cur.fetchone()[0])

    handoff = confirmed()
    run_sql(source, "UPDATE items SET name = 'changed' WHERE id = 1", "DELETE FROM items WHERE id = 2")
    pipeline.run(pg_replication())  # everything from [sources.pg_replication]
    assert confirmed() == handoff, "nothing is confirmed before the destination has it"
    with duckdb.connect(str(tmp_path / "api.duckdb"), read_only=True) as con:
        assert con.execute("SELECT id, name FROM api_data.items").fetchall() == [(1, "changed")]
    position = pipeline.state["sources"]["pg_replication"]["position"]["lsn"]
    assert position > handoff

    pipeline.run(pg_replication())  # flush_slot: confirms the position the last load stored
    assert confirmed() >= position


def test_batches_are_bounded_by_target_batch_size(source, source_url):
    run_sql(source, "CREATE TABLE big (id int PRIMARY KEY, v text)")
    conn = connect(source_url)
    tables = describe_tables(conn, "public", ["big"])
    ensure_publications(conn, "batch_pub", list(tables.values()))
    run_sql(source, "SELECT pg_create_logical_replication_slot('batch_slot', 'pgoutput')",
         "INSERT INTO big SELECT g, 'v' FROM generate_series(1, 1050) g")  # one transaction
    collector = ChangeCollector(tables, load_type_catalog(conn),
                                lambda *args: fetch_current_values(conn, *args))
    result = SegmentResult(Position())
    stop = current_wal_lsn(conn)
    with ReplicationStream(source_url, "batch_slot", ["batch_pub"], stop) as stream:
        sizes = [b.data.num_rows for b in read_changes(stream.messages(), collector, Position(),
                                                       stop, result, BatchLimits(rows=100))]
    conn.close()
    assert sizes == [100] * 10 + [50]
    assert result.changes == {"big": 1050} and result.transactions == 1
    assert result.position.lsn > 0 and result.confirm_lsn >= result.position.lsn


def test_garbage_collection_is_relaxed_only_while_changes_are_read(source, source_url):
    """Decoding raises the GC threshold (a third of a large transaction's time went to the
    collector); the process gets its own setting back when the segment ends."""
    run_sql(source, "CREATE TABLE gc_rows (id int PRIMARY KEY, v text)")
    conn = connect(source_url)
    tables = describe_tables(conn, "public", ["gc_rows"])
    ensure_publications(conn, "gc_pub", list(tables.values()))
    run_sql(source, "SELECT pg_create_logical_replication_slot('gc_slot', 'pgoutput')",
            "INSERT INTO gc_rows SELECT g, 'v' FROM generate_series(1, 300) g")
    collector = ChangeCollector(tables, load_type_catalog(conn),
                                lambda *args: fetch_current_values(conn, *args))
    stop = current_wal_lsn(conn)
    before = gc.get_threshold()
    with ReplicationStream(source_url, "gc_slot", ["gc_pub"], stop) as stream:
        batches = read_changes(stream.messages(), collector, Position(), stop,
                               SegmentResult(Position()), BatchLimits(rows=100))
        next(batches)
        while_reading = gc.get_threshold()
        rest = list(batches)
    conn.close()
    assert while_reading[0] >= 100_000 > before[0]
    assert gc.get_threshold() == before
    assert len(rest) == 2


def test_library_source_keeps_renames_exact_and_refuses_a_filled_column(source, source_url,
                                                                        tmp_path):
    import pytest

    run_sql(source, "CREATE TABLE items (id int PRIMARY KEY, name text)",
            "INSERT INTO items VALUES (1, 'a'), (2, 'b')")
    pipeline = _duckdb_pipeline("api_ddl", tmp_path)
    pipeline.run(init_replication("ddl_slot", "ddl_pub", "public", ["items"],
                                  credentials=source_url, persist_snapshots=True))

    def changes():
        return pg_replication(credentials=source_url, slot_name="ddl_slot", pub_name="ddl_pub")

    run_sql(source, "ALTER TABLE items RENAME COLUMN name TO title",
            "UPDATE items SET title = 'renamed' WHERE id = 1")
    pipeline.run(changes())
    with duckdb.connect(str(tmp_path / "api.duckdb"), read_only=True) as con:
        assert con.execute("SELECT id, name FROM api_data.items ORDER BY id").fetchall() == [
            (1, "renamed"), (2, "b")]
    run_sql(source, "ALTER TABLE items ADD COLUMN status text NOT NULL DEFAULT 'new'")
    with pytest.raises(Exception, match="run `snapshot --tables items`"):
        pipeline.run(changes())


def test_library_source_refuses_an_updated_table_without_a_key(source, source_url, tmp_path):
    import pytest

    from tests.tools import publish_statistics

    run_sql(source, "CREATE TABLE events (seq int, what text)", "INSERT INTO events VALUES (1, 'a')")
    pipeline = _duckdb_pipeline("api_keyless", tmp_path)
    pipeline.run(init_replication("keyless_slot", "keyless_pub", "public", ["events"],
                                  credentials=source_url, persist_snapshots=True))

    def changes():
        return pg_replication(credentials=source_url, slot_name="keyless_slot",
                              pub_name="keyless_pub")

    run_sql(source, "INSERT INTO events VALUES (2, 'b')")
    publish_statistics(source)
    pipeline.run(changes())  # inserts alone are streamed
    run_sql(source, "UPDATE events SET what = 'changed' WHERE seq = 1")
    publish_statistics(source)
    with pytest.raises(Exception, match="events can take only inserts"):
        pipeline.run(changes())
    with duckdb.connect(str(tmp_path / "api.duckdb"), read_only=True) as con:
        assert sorted(con.execute("SELECT seq, what FROM api_data.events").fetchall()) == [
            (1, "a"), (2, "b")]


def test_destination_gives_a_library_pipeline_the_own_merge(source, source_url, tmp_path):
    """`pg_replication.destination(...)` wraps a destination a user built: the changes are
    merged by the pipeline's own MERGE (dlt's strategy in the stored schema is the upsert it
    replaces), so a deferrable key taken before another transaction freed it is kept."""
    import psycopg2

    from pg_replication import destination
    from pg_replication.destinations import merge_strategy_for

    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text)",
            "ALTER TABLE t REPLICA IDENTITY FULL", "INSERT INTO t VALUES (1, 'old')")
    pipeline = dlt.pipeline("api_own_merge", pipelines_dir=str(tmp_path / "pipelines"),
                            destination=destination(dlt.destinations.duckdb(
                                str(tmp_path / "api.duckdb"))), dataset_name="api_data")
    assert merge_strategy_for(pipeline) == "lsn-guarded"
    pipeline.run(init_replication("own_slot", "own_pub", "public", ["t"], credentials=source_url,
                                  persist_snapshots=True))
    other = psycopg2.connect(source_url)
    try:
        with other.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1, 'new')")
        run_sql(source, "DELETE FROM t WHERE v = 'old'")
        other.commit()
    finally:
        other.close()
    pipeline.run(pg_replication(credentials=source_url, slot_name="own_slot", pub_name="own_pub"))
    with duckdb.connect(str(tmp_path / "api.duckdb"), read_only=True) as con:
        assert con.execute("SELECT id, v FROM api_data.t").fetchall() == [(1, "new")]
    assert pipeline.default_schema.tables["t"]["x-merge-strategy"] == "upsert"


def test_a_split_transaction_whose_rest_the_slot_skipped_is_refused(source, source_url, tmp_path):
    """A load ends inside a large transaction (target_load_bytes); if the slot is then confirmed
    past it by something else, the server never sends the rest: the next read must refuse, not
    confirm past the transaction and report success with part of it missing."""
    import pytest

    run_sql(source, "CREATE TABLE big (id int PRIMARY KEY, pad text)")
    pipeline = _duckdb_pipeline("api_split", tmp_path)
    pipeline.run(init_replication("split_slot", "split_pub", "public", ["big"],
                                  credentials=source_url, persist_snapshots=True))

    def changes():
        return pg_replication(credentials=source_url, slot_name="split_slot",
                              pub_name="split_pub", target_load_bytes=200_000)

    run_sql(source, "INSERT INTO big SELECT g, repeat('x', 300) FROM generate_series(1, 5000) g")
    pipeline.run(changes())  # the first part of the transaction only
    with duckdb.connect(str(tmp_path / "api.duckdb"), read_only=True) as con:
        loaded = con.execute("SELECT count(*) FROM api_data.big").fetchone()[0]
    assert 0 < loaded < 5000
    run_sql(source, "SELECT pg_replication_slot_advance('split_slot', pg_current_wal_lsn())")
    with pytest.raises(Exception, match="loaded in part"):
        pipeline.run(changes())
