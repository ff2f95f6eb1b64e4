"""Values of any size PostgreSQL allows, and memory bounded by bytes, not only by rows.

The snapshot reads CSV in blocks that always end at a row's end, whatever its length; `cdc` hands
rows on after a byte bound (of the stream, and of unchanged TOASTed values read back) and ends a
load after `target_load_bytes`, in the middle of a transaction if it must, so the destination
merges a bounded amount at a time.
"""

import csv
import io

import duckdb
import pytest

from pg_replication.snapshot import _whole_rows
from tests.tools import DATASET, Project, assert_table_matches, run_sql

# Small bounds, so that a few MB behave like the hundreds of MB they stand for.
SMALL_BOUNDS = {"SOURCES__PG_REPLICATION__TARGET_BATCH_BYTES": str(256 << 10),
                "SOURCES__PG_REPLICATION__TARGET_LOAD_BYTES": str(1 << 20)}


@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)


def _loads(project: Project) -> int:
    """Completed loads the destination records."""
    if project.destination == "filesystem":
        return len(list((project.delta_root / DATASET / "_dlt_loads").iterdir()))
    with duckdb.connect(str(project.duckdb_path), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {DATASET}._dlt_loads").fetchone()[0]


# -- the snapshot's CSV blocks ------------------------------------------------------------------

TRICKY_CSV = (b'1,plain,\n'
              b'2,"with ""quotes"" and , comma",""\n'
              b'3,"line one\nline two\n""quoted\nnewline""",x\n'
              b'4,,"\n\n\n"\n'
              b'5,"' + b'long\n' * 50 + b'",end\n')


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 7, 16, 64, 1 << 20])
def test_csv_blocks_end_at_row_ends_whatever_the_block_size(block_bytes):
    blocks = list(_whole_rows(io.BytesIO(TRICKY_CSV), block_bytes))
    assert b"".join(blocks) == TRICKY_CSV
    for block in blocks:
        rows = list(csv.reader(io.StringIO(block.decode(), newline="")))
        assert rows and all(len(row) == 3 for row in rows), block
    assert sum(len(list(csv.reader(io.StringIO(b.decode(), newline="")))) for b in blocks) == 5


def test_snapshot_copies_values_longer_than_a_csv_block(source, project):
    """Arrow's CSV reader failed on a value longer than its block ("straddling object straddles
    two block boundaries"): a 3 MB bytea is 6 MB of hex."""
    run_sql(source, "CREATE TABLE huge (id int PRIMARY KEY, b bytea, t text, j jsonb)",
            "INSERT INTO huge SELECT g, 'x'::bytea, 'short', '{}' FROM generate_series(1, 50) g",
            # incompressible bytes, text with quotes, commas and newlines, a large document
            "INSERT INTO huge VALUES (100, (SELECT string_agg(decode(md5(i::text), 'hex'), '') "
            "FROM generate_series(1, 200000) i), NULL, NULL)",
            "INSERT INTO huge VALUES (101, NULL, (SELECT string_agg('li\"ne, ' || i || E'\\n', '') "
            "FROM generate_series(1, 400000) i), NULL)",
            "INSERT INTO huge VALUES (102, NULL, NULL, (SELECT jsonb_agg(jsonb_build_object("
            "'k', i, 'v', md5(i::text))) FROM generate_series(1, 60000) i))",
            "INSERT INTO huge SELECT g, 'y'::bytea, 'after', '[]' FROM generate_series(200, 249) g")
    project.run("snapshot")
    assert assert_table_matches(source, project, "huge") == 103


# -- cdc: loads bounded by bytes ----------------------------------------------------------------


def test_mass_update_of_wide_rows_is_loaded_in_bounded_parts(source, project):
    """3,000 rows of 190 KB updated without touching the wide value peaked at 1.7-4.9 GB and failed
    DuckDB's budget: the values read back by key are now loaded a bounded amount at a time, here
    1 MB for ~4 MB, the transaction split between loads."""
    run_sql(source, "CREATE TABLE wide (id int PRIMARY KEY, n int, body text)",
            "ALTER TABLE wide ALTER COLUMN body SET STORAGE EXTERNAL",
            "INSERT INTO wide SELECT g, 0, (SELECT string_agg(md5(g::text || i::text), '') "
            "FROM generate_series(1, 1000) i) FROM generate_series(1, 120) g",
            "CREATE TABLE narrow (id int PRIMARY KEY, v text)")
    project.run("snapshot", env=SMALL_BOUNDS)
    before = _loads(project)
    run_sql(source, "BEGIN", "UPDATE wide SET n = n + 1",  # body unchanged: not in the WAL
            "INSERT INTO narrow SELECT g, 'v' FROM generate_series(1, 10) g",
            "DELETE FROM wide WHERE id % 10 = 0", "COMMIT")
    result = project.run("cdc", env=SMALL_BOUNDS)
    loads = _loads(project) - before
    assert loads >= 3, result.stdout + result.stderr
    assert f"in {loads} loads" in result.stdout
    assert assert_table_matches(source, project, "wide") == 108
    assert [row["n"] for row in project.dest_rows("wide")] == [1] * 108
    assert_table_matches(source, project, "narrow")
    # The slot stands at the end of the transaction, and nothing is read twice.
    again = project.run("cdc", env=SMALL_BOUNDS)
    assert "cdc: 0 changes" in again.stdout
    assert_table_matches(source, project, "wide")


def test_large_values_in_the_stream_are_loaded_in_bounded_parts(source, project):
    """Inserted values travel in the WAL: the stream's bytes bound the buffer and the load."""
    run_sql(source, "CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    project.run("snapshot", env=SMALL_BOUNDS)
    run_sql(source, "INSERT INTO docs SELECT g, (SELECT string_agg(md5(g::text || i::text), '') "
                    "FROM generate_series(1, 12000) i), g FROM generate_series(1, 12) g",
            "UPDATE docs SET n = -n WHERE id <= 6")
    result = project.run("cdc", env=SMALL_BOUNDS)
    assert "in 1 loads" not in result.stdout and ", in " in result.stdout
    assert assert_table_matches(source, project, "docs") == 12


@pytest.mark.slow
def test_ten_megabyte_values_load_within_the_default_duckdb_budget(source, duckdb_project):
    """A cdc of rows with 10 MB values exited 7 on every run (DuckDB out of memory, 192 MB)."""
    run_sql(source, "CREATE TABLE blobs (id int PRIMARY KEY, body text)")
    duckdb_project.run("snapshot")
    run_sql(source, "INSERT INTO blobs SELECT g, (SELECT string_agg(md5(g::text || i::text), '') "
                    "FROM generate_series(1, 320000) i) FROM generate_series(1, 10) g")
    duckdb_project.run("cdc")
    assert assert_table_matches(source, duckdb_project, "blobs") == 10
