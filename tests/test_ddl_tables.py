"""Table DDL while cdc runs (renames, drops, partitions, new tables) and generated columns.

The same rules and the same way of testing them as tests/test_ddl_columns.py.
"""

import pytest

from tests.tools import (EXIT_NO_COPY, Project, assert_table_matches, items_and_other,
                         one_error_line, refused_then_fixed, run_sql)


@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)


# -- tables dropped or renamed with changes in the stream ---------------------------------------


def _docs(conn) -> None:
    run_sql(conn,
            "CREATE TABLE docs (id int PRIMARY KEY, title text, body text)",
            "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL",  # always TOASTed
            "INSERT INTO docs SELECT g, 't' || g, repeat('b', 5000) FROM generate_series(1, 20) g")


def test_unchanged_toast_then_table_renamed_does_not_wedge(source, project):
    _docs(source)
    project.run("snapshot")
    # The update leaves `body` unchanged (not in the WAL); its current value is read by key from
    # the table, which by the next run has another name.
    run_sql(source, "UPDATE docs SET title = 'renamed soon' WHERE id = 1",
            "ALTER TABLE docs RENAME TO papers", "UPDATE papers SET title = 'after' WHERE id = 2")
    refused = project.run("cdc", expect=EXIT_NO_COPY)
    assert "run `snapshot --tables papers`" in one_error_line(refused)
    # The command the message names unblocks the pipeline.
    project.run("snapshot", "--tables", "papers")
    run_sql(source, "UPDATE papers SET title = 'later' WHERE id = 3")
    project.run("cdc")
    assert_table_matches(source, project, "papers")
    # The old name keeps what the stream carried up to the rename, the TOASTed value included.
    docs = {r["id"]: r for r in project.dest_rows("docs")}
    assert docs[1]["title"] == "renamed soon" and docs[1]["body"] == "b" * 5000


def test_unchanged_toast_then_table_dropped_does_not_wedge(source, project):
    _docs(source)
    run_sql(source, "CREATE TABLE keep (id int PRIMARY KEY, v text)", "INSERT INTO keep VALUES (1, 'a')")
    project.run("snapshot")
    run_sql(source, "UPDATE docs SET title = 'dropped soon' WHERE id = 1", "DROP TABLE docs",
            "UPDATE keep SET v = 'b'")
    project.run("cdc")
    assert_table_matches(source, project, "keep")
    # A dropped table's copy stays as the stream last could complete it: the update that left the
    # TOASTed value unchanged cannot be read back any more, so the row keeps its earlier values.
    docs = {r["id"]: r for r in project.dest_rows("docs")}
    assert docs[1]["title"] == "t1" and docs[1]["body"] == "b" * 5000
    project.run("cdc")


def test_table_renamed_twice_between_runs(source, duckdb_project):
    items_and_other(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items RENAME TO items2", "UPDATE items2 SET a = 'x' WHERE id = 1",
            "ALTER TABLE items2 RENAME TO items3", "UPDATE items3 SET a = 'y' WHERE id = 2")
    refused_then_fixed(source, duckdb_project, "items3", "no copy of table items3", "other")


def test_table_renamed_and_renamed_back_between_runs_names_the_command_that_works(
        source, duckdb_project):
    items_and_other(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items RENAME TO items_tmp", "UPDATE items_tmp SET a = 'x'",
            "ALTER TABLE items_tmp RENAME TO items", "UPDATE items SET n = 0 WHERE id = 1")
    line = refused_then_fixed(source, duckdb_project, "items", "(named items now)", "other")
    assert "items_tmp" in line, line


@pytest.mark.parametrize("ddl", [
    # Two names swapped in one transaction: each name now belongs to the other table.
    ["BEGIN", "ALTER TABLE items RENAME TO swap", "ALTER TABLE other RENAME TO items",
     "ALTER TABLE swap RENAME TO other", "COMMIT"],
    # Dropped and created again under the same name (not published: a new table).
    ["DROP TABLE items", "CREATE TABLE items (id int PRIMARY KEY, a text, n int)",
     "INSERT INTO items VALUES (1, 'new table', 1)"],
], ids=["swapped", "recreated"])
@pytest.mark.slow
def test_a_name_that_belongs_to_another_table_now_needs_a_copy(source, duckdb_project, ddl):
    """Before, cdc and verify passed while each destination table kept the old table's rows,
    with the new one's changes merged on top."""
    items_and_other(source)
    duckdb_project.run("snapshot")
    run_sql(source, *ddl, "DELETE FROM items WHERE id = 1")
    assert "not the table copied under that name" in duckdb_project.run("verify", expect=9).stdout
    line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    assert "not the table copied under that name" in line, line
    tables = line.split("run `snapshot --tables ")[1].rstrip("`")
    swapped = "ALTER TABLE swap RENAME TO other" in ddl
    assert set(tables.split(",")) == ({"items", "other"} if swapped else {"items"}), line
    duckdb_project.run("snapshot", "--tables", tables)
    run_sql(source, "INSERT INTO items (id) VALUES (77)")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "items")
    assert_table_matches(source, duckdb_project, "other")


# -- generated columns --------------------------------------------------------------------------


def test_generated_columns_are_exact_after_cdc(source, project):
    run_sql(source, "CREATE TABLE g (id int PRIMARY KEY, n int, "
                    "twice int GENERATED ALWAYS AS (n * 2) STORED, label text)",
            "INSERT INTO g (id, n, label) SELECT i, i, 'l' FROM generate_series(1, 5) i",
            "CREATE TABLE g_log (n int, twice int GENERATED ALWAYS AS (n * 2) STORED)",
            "INSERT INTO g_log (n) VALUES (1)")
    project.run("snapshot")
    run_sql(source, "UPDATE g SET n = 100 WHERE id = 1", "INSERT INTO g (id, n) VALUES (6, 6)",
            "UPDATE g SET label = 'only label' WHERE id = 2", "DELETE FROM g WHERE id = 3",
            "INSERT INTO g_log (n) VALUES (2)")
    project.run("cdc")
    assert_table_matches(source, project, "g")
    # A table without a key cannot read them back by key: they are left out on both paths.
    rows = project.dest_rows("g_log")
    assert sorted(r["n"] for r in rows) == [1, 2] and all("twice" not in r for r in rows)


def test_virtual_generated_columns_are_exact_after_cdc(source, project):
    if source.server_version < 180000:
        pytest.skip("VIRTUAL generated columns need PostgreSQL 18 (make test-versions)")
    run_sql(source, "CREATE TABLE gv (id int PRIMARY KEY, n int, "
                    "v int GENERATED ALWAYS AS (n + 1) VIRTUAL, "
                    "s int GENERATED ALWAYS AS (n * 3) STORED)",
            "INSERT INTO gv (id, n) SELECT i, i FROM generate_series(1, 5) i")
    project.run("snapshot")
    run_sql(source, "UPDATE gv SET n = 50 WHERE id = 1", "INSERT INTO gv (id, n) VALUES (9, 9)")
    project.run("cdc")
    assert_table_matches(source, project, "gv")


# -- partitions ---------------------------------------------------------------------------------


def _measurements(conn) -> None:
    run_sql(conn,
            "CREATE TABLE m (id int, day int, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)",
            "CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM (0) TO (10)",
            "CREATE TABLE m_2 PARTITION OF m FOR VALUES FROM (10) TO (20)",
            "INSERT INTO m SELECT g, g % 20, 'v' FROM generate_series(1, 40) g")


@pytest.mark.slow
def test_partition_attached_with_rows_and_one_detached_in_the_same_run(source, project):
    _measurements(source)
    project.run("snapshot")
    run_sql(source, "CREATE TABLE m_3 (id int, day int, v text, PRIMARY KEY (id, day))",
            "INSERT INTO m_3 VALUES (100, 25, 'was there before')",
            "ALTER TABLE m ATTACH PARTITION m_3 FOR VALUES FROM (20) TO (30)",
            "ALTER TABLE m DETACH PARTITION m_1", "UPDATE m SET v = 'changed' WHERE id = 15")
    line = refused_then_fixed(source, project, "m", "partition m_3 was attached holding rows",
                              status=True)
    assert "partition m_1 was detached or dropped with its rows" in line


def test_empty_partition_created_is_carried(source, duckdb_project):
    _measurements(source)
    duckdb_project.run("snapshot")
    # Created and filled before the next run: its rows came through the stream.
    run_sql(source, "CREATE TABLE m_3 PARTITION OF m FOR VALUES FROM (20) TO (30)",
            "INSERT INTO m VALUES (300, 21, 'after the create')")
    assert "partition m_3 added" in duckdb_project.run("cdc").stdout
    run_sql(source, "INSERT INTO m VALUES (200, 25, 'new')",
            "CREATE TABLE m_4 (LIKE m)", "ALTER TABLE m ATTACH PARTITION m_4 FOR VALUES FROM (30) TO (40)",
            "ALTER TABLE m DETACH PARTITION m_4")  # empty both ways
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "m")


def test_partition_dropped_needs_a_copy(source, duckdb_project):
    _measurements(source)
    duckdb_project.run("snapshot")
    run_sql(source, "DROP TABLE m_2")
    refused_then_fixed(source, duckdb_project, "m", "partition m_2 was detached or dropped")


def test_column_with_a_default_added_to_a_partitioned_table(source, project):
    _measurements(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE m ADD COLUMN kind text NOT NULL DEFAULT 'k'",
            "UPDATE m SET kind = 'changed' WHERE id = 1")
    refused_then_fixed(source, project, "m", "column kind was added with values")


def test_partition_truncated_on_its_own_needs_a_copy(source, project):
    # pgoutput sends nothing for a TRUNCATE of a partition published through its root.
    _measurements(source)
    project.run("snapshot")
    run_sql(source, "TRUNCATE m_1", "INSERT INTO m VALUES (500, 5, 'after the truncate')")
    refused_then_fixed(source, project, "m", "partition m_1 truncated or rewritten", status=True)


def test_partition_rewritten_by_vacuum_full_needs_a_copy(source, duckdb_project):
    # Told apart from a TRUNCATE by nothing in the catalog: refused rather than guessed.
    _measurements(source)
    duckdb_project.run("snapshot")
    run_sql(source, "VACUUM FULL m_2")
    refused_then_fixed(source, duckdb_project, "m", "partition m_2 truncated or rewritten")


@pytest.mark.slow
def test_every_partition_truncated_by_name_is_refused_once_the_stream_shows_it(source,
                                                                               duckdb_project):
    # One transaction gave every partition new storage, as a TRUNCATE of `m` would; the stream
    # read up to the stop shows no TRUNCATE of `m` in it.
    _measurements(source)
    duckdb_project.run("snapshot")
    run_sql(source, "TRUNCATE m_1, m_2")
    refused_then_fixed(source, duckdb_project, "m", "every partition was truncated or rewritten")


@pytest.mark.slow
def test_truncate_of_the_partitioned_table_is_carried(source, project):
    _measurements(source)
    project.run("snapshot")
    run_sql(source, "TRUNCATE m", "INSERT INTO m VALUES (600, 15, 'after')")
    project.run("cdc")  # new storage for every partition, carried by the stream
    assert_table_matches(source, project, "m")
    run_sql(source, "INSERT INTO m VALUES (601, 3, 'later')")
    project.run("cdc")  # and accepted from then on
    run_sql(source, "BEGIN; TRUNCATE m; INSERT INTO m VALUES (602, 4, 'x'); COMMIT",
            "TRUNCATE m")
    project.run("cdc")
    assert_table_matches(source, project, "m")
    project.run("cdc")


def test_truncate_of_the_table_then_of_a_partition_needs_a_copy(source, duckdb_project):
    _measurements(source)
    duckdb_project.run("snapshot")
    run_sql(source, "TRUNCATE m", "INSERT INTO m VALUES (700, 5, 'a'), (701, 15, 'b')",
            "TRUNCATE m_2")
    # m_1 has the storage the TRUNCATE of m gave it, which the stream is still to carry; told
    # apart from a partition truncated alone only by the transaction that changed every one.
    refused_then_fixed(source, duckdb_project, "m", "partitions m_1, m_2 truncated or rewritten")


# -- new tables ---------------------------------------------------------------------------------


def test_new_table_in_a_schema_wide_publication_needs_its_copy(source, duckdb_project):
    items_and_other(source)
    # An admin's publication for the whole schema: a new table is published by itself.
    run_sql(source, f"CREATE PUBLICATION {duckdb_project.pub} FOR TABLES IN SCHEMA public "
                    "WITH (publish_via_partition_root = true)")
    duckdb_project.run("snapshot")
    run_sql(source, "CREATE TABLE fresh (id int PRIMARY KEY, v text)",
            "INSERT INTO fresh VALUES (1, 'before its copy')", "UPDATE other SET v = 'z'")
    refused_then_fixed(source, duckdb_project, "fresh", "no copy of table fresh", "other")


def test_new_table_outside_the_publication_is_reported(source, duckdb_project):
    items_and_other(source)
    duckdb_project.run("snapshot")
    run_sql(source, "CREATE TABLE fresh (id int PRIMARY KEY, v text)", "INSERT INTO fresh VALUES (1, 'a')")
    ran = duckdb_project.run("cdc")
    assert "not replicated: fresh" in ran.stdout and "snapshot --tables fresh" in ran.stdout
    assert "not replicated" in duckdb_project.run("status").stdout
    duckdb_project.run("snapshot", "--tables", "fresh")
    run_sql(source, "INSERT INTO fresh VALUES (2, 'b')")
    assert "not replicated" not in duckdb_project.run("cdc").stdout
    assert_table_matches(source, duckdb_project, "fresh")


@pytest.mark.slow
def test_tables_left_out_are_reported_with_a_command_that_works(source, duckdb_project):
    # A whole-schema snapshot is refused while names collide; the user copies what can be copied.
    items_and_other(source)
    run_sql(source, 'CREATE TABLE "Notes" (id int PRIMARY KEY)', "CREATE TABLE notes (id int PRIMARY KEY)",
            'CREATE TABLE wide (id int PRIMARY KEY, "Flag" int, flag int)',
            "CREATE TABLE ok_t (id int PRIMARY KEY)", "INSERT INTO ok_t VALUES (1)")
    duckdb_project.run("snapshot", expect=2)
    duckdb_project.run("snapshot", "--tables", "items,other")
    ran = duckdb_project.run("cdc")
    assert "created since the snapshot" not in ran.stdout  # they were there before
    assert "`snapshot --tables Notes,ok_t` adds them" in ran.stdout, ran.stdout
    assert "'Notes' and 'notes' would both land" in ran.stdout
    assert "table 'wide': column 'flag'" in ran.stdout
    status = duckdb_project.run("status").stdout
    assert "`snapshot --tables Notes,ok_t` adds them" in status and "'wide'" in status
    duckdb_project.run("snapshot", "--tables", "Notes,ok_t")  # the advice works
    assert_table_matches(source, duckdb_project, "ok_t")
