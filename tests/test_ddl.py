"""Schema changes while cdc runs: none wedges the pipeline, none leaves it silently wrong.

The rules are in pg_replication/ddl.py and the README ("Schema changes"): what the stream carries
is carried exactly; what it cannot carry makes `cdc` refuse (exit 10) with the command that fixes
it, and each test runs that command and checks the tables equal the source afterwards.
"""

import pytest

from tests.tools import Project, assert_table_matches, run_sql

EXIT_NO_COPY = 10


@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)


@pytest.fixture
def duckdb_project(tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url)


def _one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _refused_then_fixed(source, project: Project, table: str, reason: str, *tables: str,
                        columns_as=None) -> str:
    """cdc refuses naming the table, the reason and the command; the command fixes it; the other
    tables keep going. Returns the error line."""
    refused = project.run("cdc", expect=EXIT_NO_COPY)
    line = _one_error_line(refused)
    assert f"run `snapshot --tables {table}`" in line and reason in line, line
    project.run("status", expect=9)
    project.run("snapshot", "--tables", table)
    project.run("cdc")
    assert_table_matches(source, project, table, columns_as=columns_as)
    for name in tables:
        assert_table_matches(source, project, name)
    return line


def _items(conn, rows: int = 20) -> None:
    run_sql(conn, "CREATE TABLE items (id int PRIMARY KEY, a text, n int)",
            f"INSERT INTO items SELECT g, 'a' || g, g FROM generate_series(1, {rows}) g",
            "CREATE TABLE other (id int PRIMARY KEY, v text)", "INSERT INTO other VALUES (1, 'x')")


# -- columns added ------------------------------------------------------------------------------


@pytest.mark.parametrize("column", [
    "status text NOT NULL DEFAULT 'active'",
    "r float8 DEFAULT random()",  # volatile: the table is rewritten
    "seq int GENERATED ALWAYS AS IDENTITY",
    "twice int GENERATED ALWAYS AS (n * 2) STORED",
])
def test_column_added_with_values_for_existing_rows_needs_a_copy(source, duckdb_project, column):
    _items(source)
    duckdb_project.run("snapshot")
    name = column.split()[0]
    run_sql(source, "UPDATE items SET a = 'before' WHERE id = 1",
            f"ALTER TABLE items ADD COLUMN {column}",
            "UPDATE items SET a = 'after' WHERE id = 2", "UPDATE other SET v = 'y'")
    _refused_then_fixed(source, duckdb_project, "items", f"column {name} was added", "other")


def test_column_added_with_a_default_needs_a_copy_on_both_destinations(source, project):
    _items(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE items ADD COLUMN status text NOT NULL DEFAULT 'active'",
            "UPDATE items SET a = 'after' WHERE id = 2")
    _refused_then_fixed(source, project, "items", "column status was added with values")
    run_sql(source, "UPDATE items SET status = 'gone' WHERE id = 3")
    project.run("cdc")
    assert_table_matches(source, project, "items")


def test_column_added_without_values_is_carried(source, duckdb_project):
    _items(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items ADD COLUMN note text",
            "UPDATE items SET note = 'n' WHERE id = 1",
            # A default given later applies to new rows only: nothing to copy.
            "ALTER TABLE items ALTER COLUMN note SET DEFAULT 'later'",
            "INSERT INTO items (id, a, n) VALUES (100, 'new', 1)")
    ran = duckdb_project.run("cdc")
    assert "items: column note added" in ran.stdout
    assert_table_matches(source, duckdb_project, "items")
    assert "schema changes" not in duckdb_project.run("cdc").stdout  # reported once


# -- renames ------------------------------------------------------------------------------------


def test_column_rename_keeps_the_destination_column(source, project):
    _items(source)
    project.run("snapshot")
    run_sql(source, "UPDATE items SET a = 'old name' WHERE id = 1",
            "ALTER TABLE items RENAME COLUMN a TO b",
            "UPDATE items SET b = 'new name' WHERE id = 2",
            "INSERT INTO items VALUES (21, 'inserted', 0)")
    ran = project.run("cdc")
    assert "column a renamed to b" in ran.stdout
    # Values are never split between an old and a new column: `a` holds every row's value.
    assert_table_matches(source, project, "items", columns_as={"b": "a"})
    assert all(row.get("b") is None for row in project.dest_rows("items"))
    # Renamed again in a later run: still the same destination column.
    run_sql(source, "ALTER TABLE items RENAME COLUMN b TO c", "UPDATE items SET c = 'c' WHERE id = 3")
    project.run("cdc")
    assert_table_matches(source, project, "items", columns_as={"c": "a"})


def test_primary_key_rename_does_not_wedge(source, project):
    _items(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE items RENAME COLUMN id TO item_id",
            "UPDATE items SET a = 'changed' WHERE item_id = 1",
            "DELETE FROM items WHERE item_id = 2", "INSERT INTO items VALUES (50, 'x', 1)")
    project.run("cdc")
    assert_table_matches(source, project, "items", columns_as={"item_id": "id"})
    run_sql(source, "UPDATE items SET a = 'again' WHERE item_id = 3")
    project.run("cdc")
    assert_table_matches(source, project, "items", columns_as={"item_id": "id"})


def test_column_renamed_twice_between_runs_needs_a_copy(source, duckdb_project):
    _items(source)
    duckdb_project.run("snapshot")
    # The middle name is in the stream only: which column it was cannot be told afterwards.
    run_sql(source, "ALTER TABLE items RENAME COLUMN a TO b", "UPDATE items SET b = 'b' WHERE id = 1",
            "ALTER TABLE items RENAME COLUMN b TO c", "UPDATE items SET c = 'c' WHERE id = 2")
    refused = duckdb_project.run("cdc", expect=EXIT_NO_COPY)
    assert "run `snapshot --tables items`" in _one_error_line(refused)
    duckdb_project.run("snapshot", "--tables", "items")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "items")


def test_swapped_column_names_need_a_copy(source, duckdb_project):
    run_sql(source, "CREATE TABLE pair (id int PRIMARY KEY, x text, y text)",
            "INSERT INTO pair VALUES (1, 'x1', 'y1')")
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE pair RENAME COLUMN x TO tmp", "ALTER TABLE pair RENAME COLUMN y TO x",
            "ALTER TABLE pair RENAME COLUMN tmp TO y", "UPDATE pair SET x = 'new' WHERE id = 1")
    _refused_then_fixed(source, duckdb_project, "pair", "a name another column had")


def test_table_renamed_twice_between_runs(source, duckdb_project):
    _items(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items RENAME TO items2", "UPDATE items2 SET a = 'x' WHERE id = 1",
            "ALTER TABLE items2 RENAME TO items3", "UPDATE items3 SET a = 'y' WHERE id = 2")
    _refused_then_fixed(source, duckdb_project, "items3", "no copy of table items3", "other")


# -- drops, type changes ------------------------------------------------------------------------


def test_drop_and_re_add_of_a_column_needs_a_copy(source, project):
    _items(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE items DROP COLUMN a", "ALTER TABLE items ADD COLUMN a int",
            "UPDATE items SET a = 7 WHERE id = 1")
    # The new column has another destination type: it continues in a variant column, the old
    # column keeps no stale value (the copy replaced every row).
    _refused_then_fixed(source, project, "items", "column a was added under a name",
                        columns_as={"a": "a__v_bigint"})
    assert all(row["a"] is None for row in project.dest_rows("items"))


def test_drop_and_re_add_across_runs_needs_a_copy(source, duckdb_project):
    _items(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items DROP COLUMN a", "UPDATE items SET n = 0 WHERE id = 1")
    assert "column a dropped" in duckdb_project.run("cdc").stdout
    run_sql(source, "ALTER TABLE items ADD COLUMN a text")
    _refused_then_fixed(source, duckdb_project, "items", "column a was added under a name")


def test_type_change_with_a_rewrite_needs_a_copy(source, duckdb_project):
    _items(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items ALTER COLUMN n TYPE int USING n * 100",
            "UPDATE items SET a = 'z' WHERE id = 1")
    # int to int with USING: the same type in the end, but every value changed without WAL.
    run_sql(source, "ALTER TABLE items ALTER COLUMN n TYPE bigint USING n + 1")
    _refused_then_fixed(source, duckdb_project, "items", "the type of column n changed")


def test_int_to_bigint_needs_a_copy_and_keeps_its_column(source, duckdb_project):
    _items(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items ALTER COLUMN n TYPE bigint",
            "UPDATE items SET n = 5000000000 WHERE id = 4")
    _refused_then_fixed(source, duckdb_project, "items", "the type of column n changed")
    # Integers land as bigint whatever their size: no variant column.
    assert "n__v_bigint" not in duckdb_project.dest_column_types("items")


def test_type_change_without_a_rewrite_is_carried(source, duckdb_project):
    run_sql(source, "CREATE TABLE v (id int PRIMARY KEY, s varchar(10))",
            "INSERT INTO v VALUES (1, 'short')")
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE v ALTER COLUMN s TYPE varchar(40)",
            "UPDATE v SET s = 'a longer value than ten' WHERE id = 1")
    assert "the type of column s changed" in duckdb_project.run("cdc").stdout
    assert_table_matches(source, duckdb_project, "v")


def test_unchanged_toast_then_column_dropped_does_not_wedge(source, duckdb_project):
    run_sql(source, "CREATE TABLE docs (id int PRIMARY KEY, title text, body text)",
            "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL",
            "INSERT INTO docs SELECT g, 't' || g, repeat('b', 5000) FROM generate_series(1, 5) g")
    duckdb_project.run("snapshot")
    run_sql(source, "UPDATE docs SET title = 'kept' WHERE id = 1", "ALTER TABLE docs DROP COLUMN body")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "docs")
    duckdb_project.run("cdc")


# -- DDL inside a data transaction --------------------------------------------------------------


def test_ddl_inside_a_data_transaction(source, duckdb_project):
    _items(source)
    duckdb_project.run("snapshot")
    run_sql(source, "BEGIN", "UPDATE items SET a = 'in tx' WHERE id = 1",
            "ALTER TABLE items RENAME COLUMN a TO b", "UPDATE items SET b = 'renamed' WHERE id = 2",
            "COMMIT")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "items", columns_as={"b": "a"})
    run_sql(source, "BEGIN", "UPDATE items SET n = -1 WHERE id = 3",
            "ALTER TABLE items ADD COLUMN flag bool NOT NULL DEFAULT true",
            "UPDATE items SET flag = false WHERE id = 4", "COMMIT")
    refused = duckdb_project.run("cdc", expect=EXIT_NO_COPY)
    assert "column flag was added with values" in _one_error_line(refused)
    duckdb_project.run("snapshot", "--tables", "items")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "items")


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
    assert "run `snapshot --tables papers`" in _one_error_line(refused)
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
        pytest.skip("VIRTUAL generated columns need PostgreSQL 18 (make test-pg18)")
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


def test_partition_attached_with_rows_and_one_detached_in_the_same_run(source, project):
    _measurements(source)
    project.run("snapshot")
    run_sql(source, "CREATE TABLE m_3 (id int, day int, v text, PRIMARY KEY (id, day))",
            "INSERT INTO m_3 VALUES (100, 25, 'was there before')",
            "ALTER TABLE m ATTACH PARTITION m_3 FOR VALUES FROM (20) TO (30)",
            "ALTER TABLE m DETACH PARTITION m_1", "UPDATE m SET v = 'changed' WHERE id = 15")
    line = _refused_then_fixed(source, project, "m", "partition m_3 was attached holding rows")
    assert "partition m_1 was detached or dropped with its rows" in line


def test_empty_partition_created_is_carried(source, duckdb_project):
    _measurements(source)
    duckdb_project.run("snapshot")
    run_sql(source, "CREATE TABLE m_3 PARTITION OF m FOR VALUES FROM (20) TO (30)")
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
    _refused_then_fixed(source, duckdb_project, "m", "partition m_2 was detached or dropped")


def test_column_with_a_default_added_to_a_partitioned_table(source, project):
    _measurements(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE m ADD COLUMN kind text NOT NULL DEFAULT 'k'",
            "UPDATE m SET kind = 'changed' WHERE id = 1")
    _refused_then_fixed(source, project, "m", "column kind was added with values")


# -- new tables ---------------------------------------------------------------------------------


def test_new_table_in_a_schema_wide_publication_needs_its_copy(source, duckdb_project):
    _items(source)
    # An admin's publication for the whole schema: a new table is published by itself.
    run_sql(source, f"CREATE PUBLICATION {duckdb_project.pub} FOR TABLES IN SCHEMA public "
                    "WITH (publish_via_partition_root = true)")
    duckdb_project.run("snapshot")
    run_sql(source, "CREATE TABLE fresh (id int PRIMARY KEY, v text)",
            "INSERT INTO fresh VALUES (1, 'before its copy')", "UPDATE other SET v = 'z'")
    _refused_then_fixed(source, duckdb_project, "fresh", "no copy of table fresh", "other")


def test_new_table_outside_the_publication_is_reported(source, duckdb_project):
    _items(source)
    duckdb_project.run("snapshot")
    run_sql(source, "CREATE TABLE fresh (id int PRIMARY KEY, v text)", "INSERT INTO fresh VALUES (1, 'a')")
    ran = duckdb_project.run("cdc")
    assert "not replicated: fresh" in ran.stdout and "snapshot --tables fresh" in ran.stdout
    assert "not replicated" in duckdb_project.run("status").stdout
    duckdb_project.run("snapshot", "--tables", "fresh")
    run_sql(source, "INSERT INTO fresh VALUES (2, 'b')")
    assert "not replicated" not in duckdb_project.run("cdc").stdout
    assert_table_matches(source, duckdb_project, "fresh")
