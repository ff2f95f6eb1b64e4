"""Several schemas in one pipeline (`schema_names`): one slot and one publication for all, the
default schema's tables under their own names, the others' under `schema__table`; `--tables
schema.table`; collisions and unknown schemas refused; DDL refusals naming `schema.table`."""

import json

import psycopg2
import pytest

from tests.tools import EXIT_NO_COPY, Project, assert_table_matches, one_error_line, run_sql

SCHEMAS = '["public", "sales"]'


def _create(conn) -> None:
    run_sql(conn,
            "CREATE SCHEMA sales",
            "CREATE TABLE public.orders (id int PRIMARY KEY, note text)",
            "CREATE TABLE sales.orders (id int PRIMARY KEY, amount numeric(10, 2), note text)",
            "CREATE TABLE sales.items (order_id int, sku text)",  # no key: appended
            "INSERT INTO public.orders SELECT g, 'public ' || g FROM generate_series(1, 30) g",
            "INSERT INTO sales.orders SELECT g, g * 1.5, 'sales ' || g FROM generate_series(1, 40) g",
            "INSERT INTO sales.items SELECT g % 7, 'sku' || g FROM generate_series(1, 12) g",
            # a schema nobody configured: its table of the same name stays out
            "CREATE SCHEMA audit",
            "CREATE TABLE audit.orders (id int PRIMARY KEY, note text)",
            "INSERT INTO audit.orders VALUES (1, 'audit')")


def _same(conn, project: Project) -> None:
    assert_table_matches(conn, project, "orders")
    assert_table_matches(conn, project, "orders", schema="sales", dest_table="sales__orders")
    assert_table_matches(conn, project, "items", schema="sales", dest_table="sales__items")


def _multi(project: Project, schemas: str = SCHEMAS) -> Project:
    project.env["SOURCES__PG_REPLICATION__SCHEMA_NAMES"] = schemas
    return project


def test_two_schemas_share_one_slot_and_publication(source, duckdb_project: Project):
    project = _multi(duckdb_project)
    _create(source)
    out = project.run("snapshot").stdout
    assert "sales.orders: 40 rows" in out and "orders: 30 rows" in out, out
    assert project.dest_tables() == ["orders", "sales__items", "sales__orders"]
    _same(source, project)
    run_sql(source,
            "INSERT INTO sales.orders VALUES (100, 9.99, 'new')",
            "UPDATE sales.orders SET note = 'changed' WHERE id <= 5",
            "DELETE FROM sales.orders WHERE id BETWEEN 6 AND 8",
            "UPDATE public.orders SET note = 'public changed' WHERE id = 1",
            "DELETE FROM public.orders WHERE id = 2",
            "INSERT INTO sales.items VALUES (100, 'late')",
            "INSERT INTO audit.orders VALUES (2, 'audit, never replicated')",
            "TRUNCATE public.orders")
    run_sql(source, "INSERT INTO public.orders VALUES (7, 'after truncate')")
    summary = project.run("cdc").stdout
    assert "sales.orders" in summary, summary
    _same(source, project)
    with source.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s",
                    (project.slot + "%",))
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                    "WHERE pubname = %s ORDER BY 1", (project.pub,))
        assert [r[0] for r in cur.fetchall()] == ["public.orders", "sales.orders"]
    status = json.loads(project.run("status", "--json").stdout)
    assert status["tables"] == {"public": ["orders"],
                                "sales": ["items -> sales__items", "orders -> sales__orders"]}
    assert "tables in sales" in project.run("status").stdout
    project.run("verify")


@pytest.mark.slow
def test_qualified_table_names_refresh_one_table(source, duckdb_project: Project):
    project = _multi(duckdb_project)
    _create(source)
    project.env["SOURCES__PG_REPLICATION__TABLE_NAMES"] = "orders,sales.orders"
    project.run("snapshot")
    assert project.dest_tables() == ["orders", "sales__orders"]
    run_sql(source, "UPDATE sales.orders SET note = 'x' WHERE id = 3")
    project.run("cdc")
    # A DDL the stream cannot carry, on the non-default schema: refused with the qualified name.
    run_sql(source, "ALTER TABLE sales.orders ADD COLUMN region text DEFAULT 'eu'")
    line = one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert "sales.orders" in line and "`snapshot --tables sales.orders`" in line, line
    out = project.run("snapshot", "--tables", "sales.orders").stdout
    assert "sales.orders: 40 rows" in out and "orders: 30" not in out.replace("sales.orders", ""), out
    run_sql(source, "UPDATE sales.orders SET region = 'us' WHERE id = 4")
    project.run("cdc")
    assert_table_matches(source, project, "orders", schema="sales", dest_table="sales__orders")
    assert_table_matches(source, project, "orders")


def test_names_that_land_on_one_destination_table_are_refused(source, duckdb_project: Project):
    project = _multi(duckdb_project)
    _create(source)
    run_sql(source, 'CREATE TABLE public."Sales__Orders" (id int PRIMARY KEY)')
    line = one_error_line(project.run("snapshot", expect=2))
    assert "'Sales__Orders'" in line and "'sales.orders'" in line and "sales__orders" in line, line
    # One of them left out: accepted. A name with a single underscore is another table.
    run_sql(source, 'DROP TABLE public."Sales__Orders"',
            "CREATE TABLE public.sales_orders (id int PRIMARY KEY)")
    project.run("snapshot")
    assert "sales_orders" in project.dest_tables() and "sales__orders" in project.dest_tables()


def test_schema_settings_are_checked(source, duckdb_project: Project):
    _create(source)
    project = _multi(duckdb_project, '["public", "nowhere"]')
    assert "'nowhere' does not exist" in one_error_line(project.run("snapshot", expect=2))
    project = _multi(duckdb_project, "sales, sales")
    assert "named twice" in one_error_line(project.run("snapshot", expect=2))
    project = _multi(duckdb_project, '["sales"]')
    project.env["SOURCES__PG_REPLICATION__SCHEMA_NAME"] = "public"
    assert "not one of schema_names" in one_error_line(project.run("snapshot", expect=2))
    # `schema_names` alone: its first schema is the default one, whose tables keep their names.
    del project.env["SOURCES__PG_REPLICATION__SCHEMA_NAME"]
    project.env["SOURCES__PG_REPLICATION__SCHEMA_NAMES"] = "sales,public"
    project.run("snapshot")
    assert project.dest_tables() == ["items", "orders", "public__orders"]
    assert_table_matches(source, project, "orders", schema="sales")


def test_library_takes_schema_names(source, source_url, tmp_path):
    import dlt

    from pg_replication import init_replication, pg_replication

    _create(source)
    slot, pub = "lib_slot_schemas", "lib_pub_schemas"
    pipeline = dlt.pipeline("lib_schemas", destination=dlt.destinations.duckdb(
        str(tmp_path / "lib.duckdb")), dataset_name="raw", pipelines_dir=str(tmp_path / "p"))
    # include_columns by table as written, for the copy and the stream alike.
    keep = {"sales.orders": ["id", "amount"]}
    copy = init_replication(slot_name=slot, pub_name=pub, schema_names=["public", "sales"],
                            table_names=["orders", "sales.orders"], credentials=source_url,
                            persist_snapshots=True, include_columns=keep)
    pipeline.run(copy)
    run_sql(source, "INSERT INTO sales.orders VALUES (500, 1, 'lib')")
    pipeline.run(pg_replication(credentials=source_url, slot_name=slot, pub_name=pub,
                                schema_names=["public", "sales"], include_columns=keep))
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM sales__orders WHERE id = 500")
        assert rows[0][0] == 1
        assert client.execute_sql("SELECT count(*) FROM orders")[0][0] == 30
        columns = [row[0] for row in client.execute_sql(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'sales__orders'")]
        assert "amount" in columns and "note" not in columns, columns
    with psycopg2.connect(source_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    conn.close()
