"""Identifiers that need quoting: a schema, tables and columns with upper case, spaces, double
quotes and reserved words replicate through snapshot and cdc (inserts, updates including an
unchanged TOASTed value, deletes, a primary-key update, truncate), on DuckDB.

Destination names are dlt's snake_case normalization of the source names ("Order Items" ->
order_items, "user name" -> user_name, 'quote"d' -> quote_d). The comparison here maps the
destination columns to the source columns by position (checked against those expected names) and
compares value by value.
"""

from typing import List, Tuple

import duckdb
from psycopg2 import sql

from tests.tools import DATASET, Project, run_sql

SCHEMA = "Sales Data"
# source table -> (expected destination table, expected destination names of its columns)
TABLES = {
    "Order Items": ("order_items", ["order", "id", "user_name", "quote_d", "from", "note"]),
    "select": ("select", ["from", "order", "user_name"]),
}
BIG = 6_000  # characters of "Note" (STORAGE EXTERNAL: TOASTed out of line)




def _create(conn) -> None:
    run_sql(conn,
         'CREATE SCHEMA "Sales Data"',
         '''CREATE TABLE "Sales Data"."Order Items" (
                "Order" int NOT NULL,
                "Id" bigint NOT NULL,
                "user name" text,
                "quote""d" text,
                "from" date,
                "Note" text,
                PRIMARY KEY ("Order", "Id"))''',
         'ALTER TABLE "Sales Data"."Order Items" ALTER COLUMN "Note" SET STORAGE EXTERNAL',
         f'''INSERT INTO "Sales Data"."Order Items"
             SELECT g % 5, g, 'user ' || g, 'say "hi" ' || g, date '2024-01-01' + g,
                    CASE WHEN g % 3 = 0 THEN repeat(chr(65 + g % 26), {BIG}) END
             FROM generate_series(1, 60) g''',
         '''CREATE TABLE "Sales Data"."select" ("from" int PRIMARY KEY, "Order" text,
                                                 "user name" text)''',
         '''INSERT INTO "Sales Data"."select"
             SELECT g, 'order ' || g, CASE WHEN g % 4 = 0 THEN NULL ELSE 'u' || g END
             FROM generate_series(1, 20) g''',
         # a table of the same name in another schema: must stay out of the pipeline
         'CREATE TABLE public."select" ("from" int PRIMARY KEY, "Order" text, "user name" text)',
         "INSERT INTO public.\"select\" VALUES (1000, 'public, not replicated', 'x')")


def _source_rows(conn, table: str) -> Tuple[List[str], List[tuple]]:
    with conn.cursor() as cur:
        cur.execute("""SELECT a.attname FROM pg_attribute a
                       WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
                       ORDER BY a.attnum""",
                    (sql.Identifier(SCHEMA, table).as_string(conn),))
        columns = [r[0] for r in cur.fetchall()]
        cur.execute(sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            sql.Identifier(SCHEMA, table)))
        return columns, cur.fetchall()


def _destination_rows(project: Project, table: str) -> Tuple[List[str], List[tuple]]:
    """Data columns (no _pg_/_dlt_ columns) in table order, and the rows."""
    with duckdb.connect(str(project.duckdb_path), read_only=True) as con:
        columns = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [DATASET, table]).fetchall()]
        assert columns, f"destination table {table!r} not found"
        data = [c for c in columns if not c.startswith(("_pg_", "_dlt_"))]
        quoted = ", ".join('"' + c.replace('"', '""') + '"' for c in data)
        rows = con.execute(f'SELECT {quoted} FROM {DATASET}."{table}"').fetchall()
    return data, rows


def assert_replicated(conn, project: Project, source_table: str) -> int:
    dest_table, expected_names = TABLES[source_table]
    source_columns, source_rows = _source_rows(conn, source_table)
    dest_columns, dest_rows = _destination_rows(project, dest_table)
    mapping = dict(zip(source_columns, dest_columns))
    assert dest_columns == expected_names, (
        f"{source_table}: destination columns {dest_columns}, expected {expected_names} "
        f"for source columns {source_columns}")
    want = sorted(source_rows, key=repr)
    got = sorted(dest_rows, key=repr)
    assert len(got) == len(want), (
        f"{source_table} -> {dest_table}: {len(got)} rows, source has {len(want)}")
    for g, w in zip(got, want):
        assert g == w, (f"{source_table} -> {dest_table} ({mapping}): destination row {g} != "
                        f"source row {w}")
    return len(want)


def _run(project: Project, *args: str):
    return project.run(*args, env={"SOURCES__PG_REPLICATION__SCHEMA_NAME": SCHEMA})


def test_quoted_schema_table_and_column_names_replicate(source, project):
    _create(source)
    snapshot = _run(project, "snapshot")
    assert "Order Items: 60 rows" in snapshot.stdout or "order_items: 60 rows" in snapshot.stdout, (
        snapshot.stdout)
    assert project.dest_tables() == ["order_items", "select"]
    assert assert_replicated(source, project, "Order Items") == 60
    assert assert_replicated(source, project, "select") == 20

    run_sql(source,
         # inserts, with a quote and a TOASTed value
         f'''INSERT INTO "Sales Data"."Order Items" VALUES
             (7, 1000, 'new "user"', 'it''s "quoted"', '2025-02-03', repeat('Q', {BIG})),
             (7, 1001, NULL, NULL, NULL, NULL)''',
         # updates leaving the TOASTed "Note" unchanged (sent as 'unchanged TOAST')
         '''UPDATE "Sales Data"."Order Items" SET "user name" = 'renamed' WHERE "Id" IN (3, 6, 9)''',
         '''UPDATE "Sales Data"."Order Items" SET "from" = NULL, "quote""d" = 'q"q'
            WHERE "Id" = 12''',
         # an update of the TOASTed value itself
         f'''UPDATE "Sales Data"."Order Items" SET "Note" = repeat('z', {BIG + 1}) WHERE "Id" = 15''',
         # deletes
         'DELETE FROM "Sales Data"."Order Items" WHERE "Id" IN (1, 2, 18)',
         # primary-key updates: one key column, then both, of rows with a TOASTed value
         'UPDATE "Sales Data"."Order Items" SET "Id" = 2100 WHERE "Id" = 21',
         'UPDATE "Sales Data"."Order Items" SET "Order" = 99, "Id" = 2400 WHERE "Id" = 24',
         # several changes to one key in one transaction
         '''BEGIN; UPDATE "Sales Data"."Order Items" SET "user name" = 'a' WHERE "Id" = 30;
            UPDATE "Sales Data"."Order Items" SET "user name" = 'b' WHERE "Id" = 30; COMMIT''',
         # "select": changes, then a truncate, then rows after it
         '''UPDATE "Sales Data"."select" SET "Order" = 'before truncate' WHERE "from" = 1''',
         'TRUNCATE "Sales Data"."select"',
         '''INSERT INTO "Sales Data"."select" VALUES (1, 'after "truncate"', NULL),
            (50, 'fifty', 'u50')''',
         '''UPDATE "Sales Data"."select" SET "user name" = 'changed after truncate'
            WHERE "from" = 50''',
         'UPDATE "Sales Data"."select" SET "from" = 51 WHERE "from" = 1',
         # the same-named table in public must not leak into the destination
         "UPDATE public.\"select\" SET \"Order\" = 'public change' WHERE \"from\" = 1000")
    cdc = _run(project, "cdc")
    assert cdc.stdout.startswith("cdc: "), cdc.output
    assert_replicated(source, project, "Order Items")
    assert assert_replicated(source, project, "select") == 2
    assert project.dest_tables() == ["order_items", "select"]

    notes = {row[1]: row[5] for row in _destination_rows(project, "order_items")[1]}  # id, note
    assert all(len(notes[k]) == BIG for k in (3, 6, 9)), "unchanged TOAST value lost"
    assert "cdc: 0 changes" in _run(project, "cdc").stdout


def test_the_printed_snapshot_command_works_when_pasted_into_a_shell(source, duckdb_project):
    """Before, `snapshot --tables Audit Trail,items` was printed unquoted: pasted, it failed with
    "Got unexpected extra argument"."""
    import shlex
    import subprocess

    run_sql(source, 'CREATE TABLE "Audit Trail" (id int PRIMARY KEY, "Note" text)',
            "CREATE TABLE items (id int PRIMARY KEY)", 'INSERT INTO "Audit Trail" VALUES (1, \'a\')')
    duckdb_project.run("snapshot", "--tables", "items")
    run_sql(source, f'ALTER PUBLICATION {duckdb_project.pub} ADD TABLE "Audit Trail"')
    refused = duckdb_project.run("cdc", expect=10).stderr
    command = refused.split("run `")[1].split("`")[0]
    assert command == "snapshot --tables 'Audit Trail'", refused
    shell_line = " ".join(shlex.quote(part) for part in duckdb_project.command()) + " " + command
    subprocess.run(shell_line, shell=True, check=True, env=duckdb_project.environment(),
                   cwd=duckdb_project.dir, capture_output=True)
    run_sql(source, 'UPDATE "Audit Trail" SET "Note" = \'b\'')
    duckdb_project.run("cdc")
    with duckdb.connect(str(duckdb_project.duckdb_path), read_only=True) as con:
        assert con.execute(f"SELECT id, note FROM {DATASET}.audit_trail").fetchall() == [(1, "b")]
