"""`make demo`: the whole product on a laptop, in about a minute.

Starts a throw-away PostgreSQL (the test harness), creates sample tables, runs `snapshot`, makes
inserts, updates and deletes, runs `cdc` and `status`, and shows the destination (DuckDB) next to
the source.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import psycopg2

from sandbox.pg_server import PostgresCluster
from sandbox.sample_schema import create_sample_schema

HERE = Path(__file__).resolve().parent
CHANGES = """
INSERT INTO customers (id, name, email, country, active) VALUES (100001, 'New Customer', 'new@example.com', 'DE', true);
UPDATE customers SET name = 'Renamed Customer', notes = NULL WHERE id = 2;
UPDATE customers SET id = 200003 WHERE id = 3;
DELETE FROM customers WHERE id = 4;
UPDATE products SET price = price * 2 WHERE sku = 'SKU-1';
DELETE FROM orders WHERE order_id <= 10;
"""


def run(args, env):
    print("$ python pipeline_main.py " + " ".join(args), flush=True)
    subprocess.run([sys.executable, str(HERE / "pipeline_main.py"), *args], env=env, check=True)


def show(conn, duck, sql_pg: str, sql_dest: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql_pg)
        source_rows = cur.fetchall()
    dest_rows = duck.execute(sql_dest).fetchall()
    print(f"  source:      {source_rows}")
    print(f"  destination: {dest_rows}")
    print("  equal" if [tuple(r) for r in source_rows] == [tuple(r) for r in dest_rows] else "  DIFFERENT")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pg-cdc-demo-"))
    cluster = PostgresCluster().start()
    try:
        url = cluster.url
        conn = psycopg2.connect(url)
        conn.autocommit = True
        create_sample_schema(conn, rows=1000)
        env = dict(os.environ, SOURCES__PG_REPLICATION__CREDENTIALS=url,
                   DESTINATION__DUCKDB__CREDENTIALS=str(workdir / "demo.duckdb"),
                   DLT_DATA_DIR=str(workdir / "dlt"), RUNTIME__DLTHUB_TELEMETRY="false",
                   RUNTIME__LOG_LEVEL="ERROR")
        common = ["--destination", "duckdb", "--pipeline-name", "demo"]
        run(common + ["snapshot"], env)
        print("\nChanging the source:" + CHANGES)
        with conn.cursor() as cur:
            cur.execute(CHANGES)
        run(common + ["cdc"], env)
        run(common + ["status"], env)
        print("\nSource next to destination (customers 1-5 and the new one):")
        with duckdb.connect(str(workdir / "demo.duckdb"), read_only=True) as duck:
            query = ("SELECT id, name FROM {} WHERE id <= 5 OR id > 100000 ORDER BY id")
            show(conn, duck, query.format("customers"),
                 query.format("bronze_postgres_raw.customers"))
            print("Row counts:")
            for table in ("customers", "orders", "products", "events"):
                show(conn, duck, f"SELECT count(*) FROM {table}",
                     f"SELECT count(*) FROM bronze_postgres_raw.{table}")
        conn.close()
    finally:
        cluster.stop()
    print(f"\nDestination file: {workdir / 'demo.duckdb'}")


if __name__ == "__main__":
    main()
