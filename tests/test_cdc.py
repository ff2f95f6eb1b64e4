"""`cdc` against a real server, on DuckDB and on local Delta (the Databricks stand-in)."""

import pytest

from tests.tools import Project, assert_table_matches, lsn_in, run_sql

DESTINATIONS = ["duckdb", "filesystem"]


@pytest.fixture(params=DESTINATIONS)
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)




def _rows_by_id(project, table, key="id"):
    return {r[key]: r for r in project.dest_rows(table)}


def _items_table(conn):
    run_sql(conn, """CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int,
                  body text, tags text[], price numeric(8,2))""",
         "INSERT INTO items SELECT g, 'item ' || g, g, NULL, ARRAY['a'], g FROM generate_series(1, 20) g")


def test_inserts_updates_deletes_and_last_change_wins(source, project):
    _items_table(source)
    project.run("snapshot")
    run_sql(source,
         "INSERT INTO items VALUES (100, 'new', 1, NULL, NULL, 1.5)",
         "UPDATE items SET name = 'first' WHERE id = 1",
         "UPDATE items SET name = 'second', qty = 99 WHERE id = 1",
         "DELETE FROM items WHERE id = 2",
         "INSERT INTO items VALUES (2, 'reborn', 2, NULL, NULL, 2)",
         "DELETE FROM items WHERE id = 3",
         # several changes to one key inside one transaction
         "BEGIN; UPDATE items SET qty = 1 WHERE id = 4; UPDATE items SET qty = 2 WHERE id = 4; "
         "UPDATE items SET qty = 3 WHERE id = 4; COMMIT")
    result = project.run("cdc")
    assert result.stdout.startswith("cdc: 9 changes (items 9), LSN ")
    assert_table_matches(source, project, "items")
    rows = _rows_by_id(project, "items")
    assert rows[1]["name"] == "second" and rows[4]["qty"] == 3 and 3 not in rows

    # across loads: a later run overrides, an insert-then-delete disappears
    run_sql(source, "UPDATE items SET name = 'third' WHERE id = 1",
         "INSERT INTO items VALUES (101, 'short-lived', 1, NULL, NULL, 1)",
         "DELETE FROM items WHERE id = 101")
    project.run("cdc")
    assert_table_matches(source, project, "items")
    assert _rows_by_id(project, "items")[1]["name"] == "third"


def test_primary_key_update_moves_the_row(source, project):
    _items_table(source)
    project.run("snapshot")
    run_sql(source, "UPDATE items SET id = 1001 WHERE id = 5",
         "BEGIN; UPDATE items SET id = 2002 WHERE id = 6; UPDATE items SET id = 6 WHERE id = 7; COMMIT")
    project.run("cdc")
    rows = _rows_by_id(project, "items")
    assert 5 not in rows and rows[1001]["name"] == "item 5"
    assert rows[2002]["name"] == "item 6" and rows[6]["name"] == "item 7" and 7 not in rows
    assert_table_matches(source, project, "items")


@pytest.mark.parametrize("identity", ["DEFAULT", "FULL"])
def test_unchanged_toast_column_is_never_nulled(source, project, identity):
    run_sql(source, "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, meta jsonb)",
         f"ALTER TABLE docs REPLICA IDENTITY {identity}",
         "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL",
         "INSERT INTO docs SELECT g, 't' || g, repeat(md5(g::text), 400), "
         "jsonb_build_object('x', repeat('y', 9000)) FROM generate_series(1, 5) g")
    project.run("snapshot")
    run_sql(source,
         "UPDATE docs SET title = 'changed' WHERE id = 1",  # body and meta unchanged: sent as 'u'
         "BEGIN; UPDATE docs SET title = 'twice' WHERE id = 2; UPDATE docs SET title = 'again' "
         "WHERE id = 2; COMMIT",
         "UPDATE docs SET title = 'then gone' WHERE id = 3",
         "DELETE FROM docs WHERE id = 3",
         "UPDATE docs SET title = 'moved' WHERE id = 4",
         "UPDATE docs SET id = 40 WHERE id = 4",
         "INSERT INTO docs VALUES (6, 'fresh', repeat('z', 20000), '{}')",
         "UPDATE docs SET title = 'fresh2' WHERE id = 6")
    project.run("cdc")
    rows = _rows_by_id(project, "docs")
    assert rows[1]["title"] == "changed" and len(rows[1]["body"]) == 12800
    assert rows[2]["title"] == "again" and rows[2]["body"] is not None
    assert 3 not in rows
    assert rows[40]["title"] == "moved" and len(rows[40]["body"]) == 12800
    assert all(r["body"] is not None and r["meta"] is not None for r in rows.values())
    assert_table_matches(source, project, "docs")


@pytest.mark.parametrize("identity", ["DEFAULT", "FULL"])
def test_a_key_stored_out_of_line_that_an_update_leaves_unchanged(source, project, identity):
    """The new row of such an update lacks the key (the value is TOASTed and unchanged); the
    server sends the key in the old tuple instead. cdc failed on it (exit 1, every run: the slot
    was never confirmed again)."""
    run_sql(source,
            "CREATE TABLE paths (path text, part int, hits int, body text, "
            "PRIMARY KEY (path, part))",
            f"ALTER TABLE paths REPLICA IDENTITY {identity}",
            # ~2.4 KB: stored out of line (uncompressed), yet short enough for the key's index
            "ALTER TABLE paths ALTER COLUMN path SET STORAGE EXTERNAL",
            "INSERT INTO paths SELECT lpad(g::text, 4, '0') || repeat('/dir', 600), g % 2, 0, "
            "repeat(md5(g::text), 10) FROM generate_series(1, 8) g")
    project.run("snapshot")
    run_sql(source,
            "UPDATE paths SET hits = 1 WHERE path LIKE '0001%'",  # key and body unchanged
            "UPDATE paths SET hits = 2, body = 'short' WHERE path LIKE '0002%'",
            "UPDATE paths SET part = 7 WHERE path LIKE '0003%'",  # half of the key changes
            "UPDATE paths SET path = 'moved' WHERE path LIKE '0004%'",
            "DELETE FROM paths WHERE path LIKE '0005%'",
            "BEGIN; UPDATE paths SET hits = 3 WHERE path LIKE '0006%'; "
            "UPDATE paths SET hits = 4 WHERE path LIKE '0006%'; COMMIT")
    project.run("cdc")
    assert_table_matches(source, project, "paths")


def test_truncate_empties_the_table_and_later_changes_apply_after_it(source, project):
    _items_table(source)
    run_sql(source, "CREATE TABLE other (id int PRIMARY KEY, v text)",
         "INSERT INTO other VALUES (1, 'keep')")
    project.run("snapshot")
    run_sql(source,
         "UPDATE items SET name = 'before truncate' WHERE id = 1",
         "INSERT INTO other VALUES (2, 'also keep')",
         "TRUNCATE items",
         "INSERT INTO items VALUES (1, 'after truncate', 1, NULL, NULL, 1)",
         "INSERT INTO items VALUES (2, 'after truncate', 1, NULL, NULL, 1)",
         "UPDATE items SET name = 'updated after truncate' WHERE id = 2",
         # DDL and TRUNCATE in one transaction with data changes
         "BEGIN; INSERT INTO items VALUES (3, 'in tx', 1, NULL, NULL, 1); TRUNCATE items; "
         "INSERT INTO items VALUES (4, 'after tx truncate', 1, NULL, NULL, 1); "
         "ALTER TABLE items ADD COLUMN extra text; "
         "INSERT INTO items VALUES (5, 'with extra', 1, NULL, NULL, 1, 'x'); COMMIT")
    project.run("cdc")
    rows = _rows_by_id(project, "items")
    assert sorted(rows) == [4, 5]
    assert rows[5]["extra"] == "x"
    assert_table_matches(source, project, "items")
    assert_table_matches(source, project, "other")


def test_ddl_add_and_drop_do_not_stop_the_pipeline(source, project):
    # (Type changes and the other DDL kinds: tests/test_ddl.py.)
    _items_table(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE items ADD COLUMN color text",
         "UPDATE items SET color = 'red' WHERE id = 1",
         "BEGIN; UPDATE items SET qty = 7 WHERE id = 2; ALTER TABLE items DROP COLUMN body; "
         "UPDATE items SET qty = 8 WHERE id = 3; COMMIT")
    result = project.run("cdc")
    assert "cdc: 3 changes" in result.stdout
    rows = _rows_by_id(project, "items")
    assert rows[1]["color"] == "red"
    assert rows[3]["qty"] == 8 and rows[3]["body"] is None  # dropped column: NULL from then on
    assert "body" in rows[1]  # the destination keeps the dropped column


def test_table_without_primary_key_never_fails_source_writes(source, project):
    run_sql(source, "CREATE TABLE logs (at int, msg text)", "INSERT INTO logs VALUES (1, 'a')")
    _items_table(source)
    snapshot = project.run("snapshot")
    assert "warning: logs has no primary key" in snapshot.stderr
    # In a publication that publishes UPDATE/DELETE, these would fail without a replica identity.
    run_sql(source, "INSERT INTO logs VALUES (2, 'b')", "UPDATE logs SET msg = 'c' WHERE at = 1",
         "DELETE FROM logs WHERE at = 2", "INSERT INTO logs VALUES (3, 'd')")
    project.run("cdc")
    # Append only: inserts arrive, updates and deletes of keyless rows are not captured.
    assert sorted((r["at"], r["msg"]) for r in project.dest_rows("logs")) == [
        (1, "a"), (2, "b"), (3, "d")]


def test_first_cdc_run_without_snapshot_refuses_and_creates_nothing(source, project):
    # A cdc before any snapshot would load changes into tables that never got their copy.
    _items_table(source)
    first = project.run("cdc", expect=10)
    assert first.stderr.splitlines() == [
        f"Error: slot '{project.slot}' does not exist and no snapshot has been loaded: "
        "run `snapshot`"]
    assert project.slot_confirmed_lsn() is None
    project.run("snapshot")
    run_sql(source, "INSERT INTO items VALUES (500, 'after slot', 1, NULL, NULL, 1)")
    project.run("cdc")
    assert len(_rows_by_id(project, "items")) == 21


def test_soft_deletes_keep_rows_with_delete_time(source, project):
    _items_table(source)
    project.run("snapshot")
    run_sql(source, "DELETE FROM items WHERE id = 1", "UPDATE items SET name = 'live' WHERE id = 2")
    project.run("cdc", "--deletes", "soft")
    rows = _rows_by_id(project, "items")
    assert rows[1]["_pg_deleted_at"] is not None
    assert rows[2]["_pg_deleted_at"] is None and rows[2]["name"] == "live"
    assert len(rows) == 20


def test_max_changes_bounds_a_run_at_a_commit_and_the_rest_follows(source, project):
    _items_table(source)
    project.run("snapshot")
    for i in range(5):
        run_sql(source, f"UPDATE items SET qty = {100 + i} WHERE id <= 3")  # 3 changes a transaction
    first = project.run("cdc", "--max-changes", "4")
    assert "cdc: 6 changes" in first.stdout  # stops at the end of the transaction holding #4
    second = project.run("cdc")
    assert "cdc: 9 changes" in second.stdout
    assert_table_matches(source, project, "items")
    third = project.run("cdc")
    assert "cdc: 0 changes, no new changes" in third.stdout


@pytest.mark.slow
def test_snapshot_again_with_existing_slot_converges_after_cdc(source, project):
    _items_table(source)
    project.run("snapshot")
    run_sql(source, "UPDATE items SET name = 'loaded' WHERE id = 1")
    project.run("cdc")
    # Changes the slot holds but cdc has not loaded yet, then a second snapshot (the slot exists:
    # a temporary slot gives this copy its own hand-off) that already contains them.
    run_sql(source, "UPDATE items SET name = 'pending' WHERE id = 2", "DELETE FROM items WHERE id = 3",
         "UPDATE items SET id = 300 WHERE id = 4", "TRUNCATE items",
         "INSERT INTO items SELECT g, 'refilled', g, NULL, NULL, g FROM generate_series(1, 10) g")
    confirmed = project.slot_confirmed_lsn()
    second = project.run("snapshot")
    assert lsn_in(second.stdout, "hand-off LSN ") > confirmed
    assert project.slot_confirmed_lsn() == confirmed  # the slot stays where it was
    run_sql(source, "UPDATE items SET name = 'after resnapshot' WHERE id = 5")
    project.run("cdc")
    assert_table_matches(source, project, "items")


def test_table_added_later_joins_the_publication(source, project):
    _items_table(source)
    run_sql(source, "CREATE TABLE late (id int PRIMARY KEY, v text)", "INSERT INTO late VALUES (1, 'a')")
    project.run("snapshot", "--tables", "items")
    run_sql(source, "INSERT INTO late VALUES (2, 'b')", "UPDATE items SET name = 'x' WHERE id = 1")
    project.run("snapshot", "--tables", "late")
    run_sql(source, "INSERT INTO late VALUES (3, 'c')", "UPDATE late SET v = 'z' WHERE id = 1")
    project.run("cdc")
    assert_table_matches(source, project, "items")
    assert_table_matches(source, project, "late")


def test_deferrable_primary_key_swap_in_one_statement(source, project):
    run_sql(source, "CREATE TABLE swap (id int PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE, v text)",
         "ALTER TABLE swap REPLICA IDENTITY FULL",
         "INSERT INTO swap VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    project.run("snapshot")
    run_sql(source, "UPDATE swap SET id = 3 - id WHERE id IN (1, 2)",
         "BEGIN; SET CONSTRAINTS ALL DEFERRED; INSERT INTO swap VALUES (3, 'new three'); "
         "UPDATE swap SET id = 30 WHERE v = 'c'; COMMIT")
    project.run("cdc")
    assert_table_matches(source, project, "swap")
