"""A slot the server invalidated (max_slot_wal_keep_size) is reported as lost, with the fix."""

import json
import uuid

import psycopg2
import pytest

from sandbox.pg_server import PostgresCluster
from tests.tools import Project


@pytest.fixture(scope="module")
def small_wal_cluster():
    if __import__("os").environ.get("TEST_DATABASE_URL"):
        pytest.skip("needs its own server with max_slot_wal_keep_size")
    cluster = PostgresCluster(extra_settings={"max_slot_wal_keep_size": "32MB",
                                              "max_wal_size": "64MB", "min_wal_size": "32MB"})
    cluster.start()
    yield cluster
    cluster.stop()


def test_invalidated_slot_is_reported_and_needs_a_snapshot(small_wal_cluster, tmp_path):
    database = "inv_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(small_wal_cluster.url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {database}")
    url = small_wal_cluster.url.rsplit("/", 1)[0] + "/" + database
    project = Project(tmp_path, url)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        cur.execute("INSERT INTO items VALUES (1, 'a')")
    project.run("snapshot")
    with conn.cursor() as cur:
        for _ in range(12):  # ~100 MB of WAL the slot would have to keep
            cur.execute("INSERT INTO items SELECT g, repeat(md5(g::text), 30) "
                        "FROM generate_series(1000000 + 1, 1000000 + 8000) g "
                        "ON CONFLICT (id) DO UPDATE SET v = excluded.v || 'x'")
            cur.execute("SELECT pg_switch_wal()")
        cur.execute("CHECKPOINT")
        cur.execute("CHECKPOINT")
        cur.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                    (project.slot,))
        assert cur.fetchone()[0] == "lost"
    failed = project.run("cdc", expect=6)
    assert failed.stderr.strip().splitlines() == [
        f"Error: slot '{project.slot}' was invalidated by the server (wal_status=lost): changes "
        "were lost on the source side; run `snapshot` to copy the tables again (it replaces the "
        "slot)"]
    status = project.run("status", "--json", expect=6)
    assert json.loads(status.stdout)["wal_status"] == "lost"
    assert "hand-off LSN" in project.run("snapshot").stdout  # a new slot and a new copy
    with conn.cursor() as cur:
        cur.execute("DELETE FROM items WHERE id > 1000000")
    project.run("cdc")
    assert sorted(r["id"] for r in project.dest_rows("items")) == [1]
    conn.close()
    admin.close()
