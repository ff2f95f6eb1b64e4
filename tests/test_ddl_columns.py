"""Column DDL while cdc runs: none wedges the pipeline, none leaves it silently wrong.

The rules are in pg_replication/ddl.py and the README ("Schema changes"): what the stream carries
is carried exactly; what it cannot carry makes `cdc` refuse (exit 10) with the command that fixes
it, and each test runs that command and checks the tables equal the source afterwards.
"""

import pytest

from tests.tools import (EXIT_NO_COPY, Project, assert_table_matches, items_and_other,
                         matrix_params, one_error_line, refused_then_fixed, run_sql)


@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)


# -- columns added ------------------------------------------------------------------------------


ADDED_WITH_VALUES = [
    "status text NOT NULL DEFAULT 'active'",
    "r float8 DEFAULT random()",  # volatile: the table is rewritten
    "seq int GENERATED ALWAYS AS IDENTITY",
    "twice int GENERATED ALWAYS AS (n * 2) STORED",
]


@pytest.mark.parametrize("column", matrix_params(
    ADDED_WITH_VALUES, ADDED_WITH_VALUES, kept=ADDED_WITH_VALUES[1:3]))
def test_column_added_with_values_for_existing_rows_needs_a_copy(source, duckdb_project, column):
    items_and_other(source)
    duckdb_project.run("snapshot")
    name = column.split()[0]
    run_sql(source, "UPDATE items SET a = 'before' WHERE id = 1",
            f"ALTER TABLE items ADD COLUMN {column}",
            "UPDATE items SET a = 'after' WHERE id = 2", "UPDATE other SET v = 'y'")
    refused_then_fixed(source, duckdb_project, "items", f"column {name} was added", "other")


def test_column_added_with_a_default_needs_a_copy_on_both_destinations(source, project):
    items_and_other(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE items ADD COLUMN status text NOT NULL DEFAULT 'active'",
            "UPDATE items SET a = 'after' WHERE id = 2")
    refused_then_fixed(source, project, "items", "column status was added with values",
                       status=True)
    run_sql(source, "UPDATE items SET status = 'gone' WHERE id = 3")
    project.run("cdc")
    assert_table_matches(source, project, "items")


def test_column_added_without_values_is_carried(source, duckdb_project):
    items_and_other(source)
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
    items_and_other(source)
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
    items_and_other(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE items RENAME COLUMN id TO item_id",
            "UPDATE items SET a = 'changed' WHERE item_id = 1",
            "DELETE FROM items WHERE item_id = 2", "INSERT INTO items VALUES (50, 'x', 1)")
    project.run("cdc")
    assert_table_matches(source, project, "items", columns_as={"item_id": "id"})
    run_sql(source, "UPDATE items SET a = 'again' WHERE item_id = 3")
    project.run("cdc")
    assert_table_matches(source, project, "items", columns_as={"item_id": "id"})
    # A copy takes the new name; the old key column must not stay a key (the copy failed on
    # dlt's non-nullable `id`, and every snapshot of the table after it).
    project.run("snapshot", "--tables", "items")
    run_sql(source, "UPDATE items SET a = 'after the copy' WHERE item_id = 4",
            "DELETE FROM items WHERE item_id = 5")
    project.run("cdc")
    assert_table_matches(source, project, "items")
    project.run("verify", "--data")


def test_column_renamed_twice_between_runs_needs_a_copy(source, duckdb_project):
    items_and_other(source)
    duckdb_project.run("snapshot")
    # The middle name is in the stream only: which column it was cannot be told afterwards.
    run_sql(source, "ALTER TABLE items RENAME COLUMN a TO b", "UPDATE items SET b = 'b' WHERE id = 1",
            "ALTER TABLE items RENAME COLUMN b TO c", "UPDATE items SET c = 'c' WHERE id = 2")
    refused = duckdb_project.run("cdc", expect=EXIT_NO_COPY)
    assert "run `snapshot --tables items`" in one_error_line(refused)
    duckdb_project.run("snapshot", "--tables", "items")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "items")


def test_swapped_column_names_need_a_copy(source, duckdb_project):
    run_sql(source, "CREATE TABLE pair (id int PRIMARY KEY, x text, y text)",
            "INSERT INTO pair VALUES (1, 'x1', 'y1')")
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE pair RENAME COLUMN x TO tmp", "ALTER TABLE pair RENAME COLUMN y TO x",
            "ALTER TABLE pair RENAME COLUMN tmp TO y", "UPDATE pair SET x = 'new' WHERE id = 1")
    refused_then_fixed(source, duckdb_project, "pair", "a name another column had")


# -- drops, type changes ------------------------------------------------------------------------


def test_drop_and_re_add_of_a_column_needs_a_copy(source, project):
    items_and_other(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE items DROP COLUMN a", "ALTER TABLE items ADD COLUMN a int",
            "UPDATE items SET a = 7 WHERE id = 1")
    # The new column has another destination type: it continues in a variant column, the old
    # column keeps no stale value (the copy replaced every row).
    refused_then_fixed(source, project, "items", "column a was added under a name",
                        columns_as={"a": "a__v_bigint"})
    assert all(row["a"] is None for row in project.dest_rows("items"))


def test_drop_and_re_add_across_runs_needs_a_copy(source, duckdb_project):
    items_and_other(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items DROP COLUMN a", "UPDATE items SET n = 0 WHERE id = 1")
    assert "column a dropped" in duckdb_project.run("cdc").stdout
    run_sql(source, "ALTER TABLE items ADD COLUMN a text")
    refused_then_fixed(source, duckdb_project, "items", "column a was added under a name")


def test_type_change_with_a_rewrite_needs_a_copy(source, duckdb_project):
    items_and_other(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items ALTER COLUMN n TYPE int USING n * 100",
            "UPDATE items SET a = 'z' WHERE id = 1")
    # int to int with USING: the same type in the end, but every value changed without WAL.
    run_sql(source, "ALTER TABLE items ALTER COLUMN n TYPE bigint USING n + 1")
    refused_then_fixed(source, duckdb_project, "items", "the type of column n changed")


def test_int_to_bigint_needs_a_copy_and_keeps_its_column(source, duckdb_project):
    items_and_other(source)
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TABLE items ALTER COLUMN n TYPE bigint",
            "UPDATE items SET n = 5000000000 WHERE id = 4")
    refused_then_fixed(source, duckdb_project, "items", "the type of column n changed")
    # Integers land as bigint whatever their size: no variant column.
    assert "n__v_bigint" not in duckdb_project.dest_column_types("items")


def test_type_change_without_a_rewrite_is_carried(source, duckdb_project):
    run_sql(source, "CREATE TABLE v (id int PRIMARY KEY, s varchar(10))",
            "INSERT INTO v VALUES (1, 'short')")
    duckdb_project.run("snapshot")
    # A row buffered under the old type, then one under the new: both land.
    run_sql(source, "INSERT INTO v VALUES (2, 'before')", "ALTER TABLE v ALTER COLUMN s TYPE varchar(40)",
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


def test_ddl_inside_a_data_transaction(source, project):
    items_and_other(source)
    project.run("snapshot")
    run_sql(source, "BEGIN", "UPDATE items SET a = 'in tx' WHERE id = 1",
            "ALTER TABLE items RENAME COLUMN a TO b", "UPDATE items SET b = 'renamed' WHERE id = 2",
            "COMMIT")
    project.run("cdc")
    assert_table_matches(source, project, "items", columns_as={"b": "a"})
    run_sql(source, "BEGIN", "UPDATE items SET n = -1 WHERE id = 3",
            "ALTER TABLE items ADD COLUMN flag bool NOT NULL DEFAULT true",
            "UPDATE items SET flag = false WHERE id = 4", "COMMIT")
    refused = project.run("cdc", expect=EXIT_NO_COPY)
    assert "column flag was added with values" in one_error_line(refused)
    project.run("snapshot", "--tables", "items")
    project.run("cdc")
    assert_table_matches(source, project, "items")


@pytest.mark.parametrize("column, renamed", [('"A" text', "a_upper"), ("_pg_lsn bigint", "lsn_2")])
def test_column_added_under_a_name_the_destination_uses_is_refused(source, duckdb_project, column,
                                                                   renamed):
    items_and_other(source)
    duckdb_project.run("snapshot")
    run_sql(source, f"ALTER TABLE items ADD COLUMN {column}", "UPDATE items SET n = 0 WHERE id = 1")
    line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    # A copy alone would be refused too: the advice starts with the rename.
    assert "was added beside" in line and "rename one of the colliding columns" in line, line
    refused = duckdb_project.run("snapshot", "--tables", "items", expect=2)
    assert "rename it" in refused.stderr
    run_sql(source, f"ALTER TABLE items RENAME COLUMN {column.split()[0]} TO {renamed}")
    duckdb_project.run("snapshot", "--tables", "items")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "items")


# -- types the columns use (ALTER TYPE) ---------------------------------------------------------


RENAMED_ENUM_VALUES = [
    ("tier tier", "'pro'"),
    ("tiers tier[]", "ARRAY['pro', 'free']::tier[]"),
    ("tier tier_domain", "'pro'"),
    ("addr address", "ROW('Main St', 'pro')::address"),
]


@pytest.mark.parametrize("column,value", matrix_params(
    RENAMED_ENUM_VALUES, [column for column, _ in RENAMED_ENUM_VALUES],
    kept={"tiers tier[]", "addr address"}))
def test_enum_value_renamed_needs_a_copy(source, duckdb_project, column, value):
    """Before, cdc and verify passed while every stored 'pro' read 'professional' in the source
    and 'pro' in the destination (also inside an array, a domain or a composite)."""
    run_sql(source, "CREATE TYPE tier AS ENUM ('free', 'pro')",
            "CREATE DOMAIN tier_domain AS tier", "CREATE TYPE address AS (street text, t tier)",
            f"CREATE TABLE items (id int PRIMARY KEY, {column})",
            f"INSERT INTO items SELECT g, {value} FROM generate_series(1, 3) g",
            "CREATE TABLE other (id int PRIMARY KEY)", "INSERT INTO other VALUES (1)")
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TYPE tier ADD VALUE 'team'")  # nothing stored changes: carried
    duckdb_project.run("cdc")
    run_sql(source, "ALTER TYPE tier RENAME VALUE 'pro' TO 'professional'",
            "UPDATE items SET id = 10 WHERE id = 1")
    line = refused_then_fixed(source, duckdb_project, "items", "had value 'pro' to 'professional'",
                              "other", status=True)
    assert "enum type tier" in line, line


def test_enum_primary_key_value_renamed_leaves_no_phantom_row(source, duckdb_project):
    run_sql(source, "CREATE TYPE lvl AS ENUM ('low', 'high')",
            "CREATE TABLE cfg (level lvl PRIMARY KEY, v int)",
            "INSERT INTO cfg VALUES ('low', 1), ('high', 2)")
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TYPE lvl RENAME VALUE 'low' TO 'basic'",
            "UPDATE cfg SET v = 3 WHERE level = 'basic'", "DELETE FROM cfg WHERE level = 'basic'")
    refused_then_fixed(source, duckdb_project, "cfg", "enum type lvl had value 'low' to 'basic'")


@pytest.mark.parametrize("ddl", ["ALTER TYPE address ADD ATTRIBUTE country text",
                                 "ALTER TYPE address DROP ATTRIBUTE zip"])
def test_composite_type_attributes_changed_need_a_copy(source, duckdb_project, ddl):
    run_sql(source, "CREATE TYPE address AS (street text, zip text)",
            "CREATE TABLE ship_to (id int PRIMARY KEY, a address)",
            "INSERT INTO ship_to VALUES (1, ROW('Main St', '123')), (2, NULL)")
    duckdb_project.run("snapshot")
    run_sql(source, ddl, "INSERT INTO ship_to VALUES (3, NULL)")
    refused_then_fixed(source, duckdb_project, "ship_to", "composite type address had attributes")


def test_values_added_to_an_empty_enum_are_carried(source, duckdb_project):
    """An enum with no value yet was recorded as a composite, and its first ADD VALUE refused."""
    run_sql(source, "CREATE TYPE state AS ENUM ()",
            "CREATE TABLE jobs (id int PRIMARY KEY, s state)", "INSERT INTO jobs VALUES (1, NULL)")
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TYPE state ADD VALUE 'queued'")
    run_sql(source, "INSERT INTO jobs VALUES (2, 'queued')")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "jobs")


def test_enum_value_renamed_inside_a_range_needs_a_copy(source, duckdb_project):
    run_sql(source, "CREATE TYPE tier AS ENUM ('free', 'pro', 'team')",
            "CREATE TYPE tier_range AS RANGE (subtype = tier)",
            "CREATE TABLE plans (id int PRIMARY KEY, span tier_range)",
            "INSERT INTO plans VALUES (1, tier_range('free', 'pro'))")
    duckdb_project.run("snapshot")
    run_sql(source, "ALTER TYPE tier RENAME VALUE 'pro' TO 'professional'")
    refused_then_fixed(source, duckdb_project, "plans", "enum type tier had value 'pro'")


def test_a_copy_replaces_a_table_in_place_unless_its_not_null_columns_changed(source,
                                                                              duckdb_project):
    """A table is dropped before its copy only when its NOT NULL columns no longer fit (a key
    renamed: test_primary_key_rename_does_not_wedge): a plain copy again, or a copy of a table
    that got a key, keeps the table and what an admin set on it."""
    project = duckdb_project
    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "CREATE TABLE log (n int, v text)", "INSERT INTO t VALUES (1, 'a')",
            "INSERT INTO log VALUES (1, 'a'), (1, 'a')")
    project.run("snapshot")
    import duckdb

    def comments():
        with duckdb.connect(str(project.duckdb_path)) as con:
            return dict(con.execute("SELECT table_name, comment FROM duckdb_tables() "
                                    "WHERE schema_name = 'bronze_postgres_raw'").fetchall())

    with duckdb.connect(str(project.duckdb_path)) as con:
        con.execute("COMMENT ON TABLE bronze_postgres_raw.t IS 'kept'")
        con.execute("COMMENT ON TABLE bronze_postgres_raw.log IS 'kept'")
    project.run("snapshot")
    assert comments()["t"] == "kept" and comments()["log"] == "kept"
    # The table without a key gets one: its column `n`, nullable in the destination, stays so.
    run_sql(source, "DELETE FROM log", "INSERT INTO log VALUES (1, 'a'), (2, 'b')",
            "ALTER TABLE log ADD PRIMARY KEY (n)")
    project.run("snapshot", "--tables", "log")
    assert comments()["t"] == "kept" and comments()["log"] == "kept"
    run_sql(source, "UPDATE log SET v = 'changed' WHERE n = 2", "DELETE FROM log WHERE n = 1")
    project.run("cdc")
    assert_table_matches(source, project, "log")


def test_a_column_dropped_in_the_destination_is_named_and_a_copy_brings_it_back(
        source, duckdb_project):
    """A destination column dropped by hand: dlt's schema still has it, so no load adds it back.
    verify --data said the rows differed, and `snapshot --tables`, the fix it named, failed on
    the same missing column, again and again."""
    project = duckdb_project
    items_and_other(source)
    project.run("snapshot")
    import duckdb

    with duckdb.connect(str(project.duckdb_path)) as con:
        con.execute("ALTER TABLE bronze_postgres_raw.items DROP COLUMN a")
    result = project.run("verify", "--data", expect=9)
    assert "items: column a is missing in the destination" in result.stdout, result.stdout
    assert "snapshot --tables items" in result.stdout
    # A load that changes the schema made dlt add the column back, empty, and cdc exited 0.
    run_sql(source, "ALTER TABLE items ADD COLUMN extra int", "UPDATE items SET extra = 1")
    expected = ("table items: column a missing from the destination although loaded (dropped "
                "there?): run `snapshot --tables items`")
    assert expected in one_error_line(project.run("cdc", expect=10))
    assert expected in project.run("status", expect=9).stdout
    project.run("snapshot", "--tables", "items")
    run_sql(source, "UPDATE items SET a = 'after' WHERE id = 1")
    project.run("cdc")
    assert_table_matches(source, project, "items")
    project.run("verify", "--data")


def test_a_not_null_column_dropped_in_the_source_then_a_copy(source, project):
    """A NOT NULL column dropped in the source stays in the destination, where the rows after
    the drop and the next copy carry NULL in it (a variant of the renamed key column)."""
    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, w int NOT NULL)",
            "INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 5) g")
    project.run("snapshot")
    run_sql(source, "ALTER TABLE t DROP COLUMN v", "INSERT INTO t VALUES (6, 6)",
            "UPDATE t SET w = 0 WHERE id = 1")
    project.run("cdc")
    assert_table_matches(source, project, "t")
    project.run("snapshot", "--tables", "t")
    run_sql(source, "INSERT INTO t VALUES (7, 7)", "DELETE FROM t WHERE id = 2")
    project.run("cdc")
    assert_table_matches(source, project, "t")
    project.run("verify", "--data")


@pytest.mark.parametrize("key", ["code text", "code uuid", "k1 int, code text"])
def test_a_renamed_key_of_any_type_then_a_copy(source, project, key):
    """On Delta, the old key column stayed NOT NULL in the table's schema when the key was text
    or uuid: the copy failed validation (exit 7), and every command after it retried that load."""
    values = {"code text": "'c' || g", "code uuid": "md5(g::text)::uuid",
              "k1 int, code text": "g % 3, 'c' || g"}[key]
    primary = "k1, code" if key.startswith("k1") else "code"
    run_sql(source, f"CREATE TABLE kt ({key}, v int, PRIMARY KEY ({primary}))",
            f"INSERT INTO kt SELECT {values}, g FROM generate_series(1, 30) g")
    project.run("snapshot")
    run_sql(source, "ALTER TABLE kt RENAME COLUMN code TO code2", "UPDATE kt SET v = 0 WHERE v = 1")
    project.run("cdc")
    project.run("snapshot", "--tables", "kt")
    run_sql(source, "UPDATE kt SET v = -1 WHERE v = 2", "DELETE FROM kt WHERE v = 3")
    project.run("cdc")
    assert_table_matches(source, project, "kt")
    project.run("verify", "--data")
