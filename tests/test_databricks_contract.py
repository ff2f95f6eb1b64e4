"""Offline contract tests for the Databricks destination (no network, no workspace).

A real CDC batch (real PostgreSQL, pgoutput) is extracted and normalized by dlt for destination
`databricks`, exactly as `snapshot` and `cdc` do, but never loaded. From that load package the SQL
dlt would send to Databricks is generated without a connection, and what matters is asserted:

- CREATE TABLE column types, for every type of the CDC type list (README "Types");
- no `time` column anywhere (dlt refuses `time` in parquet for Databricks; Spark cannot read it);
- the parquet files' physical types match the Databricks column types COPY INTO loads them into;
- the merge: one MERGE per table and load (one Delta commit, never a DELETE + INSERT pair), which
  takes the latest change per key (`_pg_lsn`, then `_pg_change_lsn`), never lets an older change
  overwrite a newer row, deletes through `_pg_deleted`, and never hands one key twice to the
  MERGE (Databricks fails with "multiple source rows matched"); the same statement, run on DuckDB
  over the package's own parquet files, leaves the destination equal to the source;
- the snapshot's replace: one INSERT OVERWRITE from the staging dataset (one Delta commit), no
  TRUNCATE or DROP of the live table;
- COPY INTO reads from a Unity Catalog volume (dlt's default one or `staging_volume_name`), and the
  staged file is removed afterwards when `keep_staged_files = false` (what the CLI resolves);
- `verify` and the README grants cover every volume and schema the loads use.

Everything runs offline: the DATABRICKS_* variables are removed (the SDK would try to
authenticate), the credentials are fake, the load jobs run against a recording SQL client, and
any attempt to open a non-loopback network connection fails the test.
"""

import json
import os
import re
import socket
import subprocess
import sys
import types
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List

import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dlt
from dlt.common.destination.exceptions import UnsupportedDataType
from dlt.common.schema import Schema
from dlt.common.storages.load_package import ParsedLoadJobFileName
from dlt.dataset.utils import get_destination_client_initial_config
from dlt.destinations.impl.databricks.databricks import DatabricksClient, DatabricksLoadJob

import pg_replication
from pg_replication import init_replication
from pg_replication.destinations import databricks_destination, merge_strategy_for, table_format_for
from tests.conftest import _with_database
from tests.test_type_parity import ALL_TYPES, VALUES
from tests.tools import REPO

DATASET = "bronze_postgres_raw"
STAGING_DATASET = DATASET + "_staging"
CATALOG = "main"
TABLES = ["everything", "orders", "line_items"]
FAKE_CREDENTIALS = {
    "server_hostname": "dbc-contract-test.cloud.databricks.invalid",
    "http_path": "/sql/1.0/warehouses/0000000000000000",
    "catalog": CATALOG,
    "access_token": "dapi-contract-test-not-a-token",
}

# The Databricks column type of every column of the CDC type list (README "Types").
EXPECTED_EVERYTHING_TYPES = {
    "id": "BIGINT",
    "c_smallint": "BIGINT", "c_integer": "BIGINT", "c_bigint": "BIGINT", "c_domain": "BIGINT",
    "c_real": "DOUBLE", "c_double": "DOUBLE",
    "c_numeric": "STRING",  # numeric without precision: exact, as text
    "c_numeric_ps": "DECIMAL(12,3)",
    "c_text": "STRING", "c_varchar": "STRING", "c_char": "STRING",
    "c_bool": "BOOLEAN", "c_date": "DATE",
    "c_timestamp": "TIMESTAMP_NTZ",  # timestamp without time zone
    "c_timestamptz": "TIMESTAMP",  # timestamp with time zone (UTC)
    "c_time": "STRING", "c_timetz": "STRING", "c_interval": "STRING", "c_uuid": "STRING",
    "c_json": "STRING", "c_jsonb": "STRING",  # dlt `json`: STRING on Databricks
    "c_bytea": "BINARY",
    "c_int_array": "STRING", "c_text_array": "STRING", "c_2d": "STRING",  # JSON lists
    "c_enum": "STRING", "c_tsvector": "STRING", "c_money": "STRING", "c_inet": "STRING",
    "_pg_lsn": "BIGINT", "_pg_change_lsn": "BIGINT", "_pg_commit_ts": "TIMESTAMP",
    "_pg_deleted": "BOOLEAN",
}
EXPECTED_ORDERS_TYPES = {"id": "BIGINT", "status": "STRING", "amount": "DECIMAL(10,2)",
                         "_pg_lsn": "BIGINT", "_pg_change_lsn": "BIGINT",
                         "_pg_commit_ts": "TIMESTAMP",
                         "_pg_deleted": "BOOLEAN"}

# Arrow (parquet) type each Databricks column type is loaded from by COPY INTO.
ARROW_FOR_DATABRICKS = {
    "BIGINT": lambda t: t == pa.int64(),
    "DOUBLE": lambda t: t == pa.float64(),
    "STRING": lambda t: t in (pa.string(), pa.large_string()),
    "BINARY": lambda t: t in (pa.binary(), pa.large_binary()),
    "BOOLEAN": lambda t: t == pa.bool_(),
    "DATE": lambda t: t == pa.date32(),
    "TIMESTAMP": lambda t: pa.types.is_timestamp(t) and t.unit == "us" and t.tz is not None,
    "TIMESTAMP_NTZ": lambda t: pa.types.is_timestamp(t) and t.unit == "us" and t.tz is None,
}


def _one_line(sql: str) -> str:
    return " ".join(sql.split())


# -- offline guard --------------------------------------------------------------------------------


class _NetworkGuard:
    """Fails every Python-level connection to a non-loopback address (PostgreSQL runs locally
    and is reached through libpq, which this does not touch)."""

    def __init__(self) -> None:
        self.attempts: List[str] = []

    @staticmethod
    def _local(host: Any) -> bool:
        return host in (None, "", "localhost", "::1") or str(host).startswith("127.")

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real_getaddrinfo = socket.getaddrinfo
        real_connect = socket.socket.connect
        guard = self

        def getaddrinfo(host, *args, **kwargs):
            if not guard._local(host):
                guard.attempts.append(f"resolve {host}")
                raise socket.gaierror(f"offline contract test: no network ({host})")
            return real_getaddrinfo(host, *args, **kwargs)

        def connect(sock, address):
            host = address[0] if isinstance(address, tuple) else None
            if isinstance(address, tuple) and not guard._local(host):
                guard.attempts.append(f"connect {address}")
                raise OSError(f"offline contract test: no network ({address})")
            return real_connect(sock, address)

        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def offline() -> Iterator[_NetworkGuard]:
    guard = _NetworkGuard()
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("DATABRICKS_"):
                mp.delenv(name)
        mp.setenv("RUNTIME__DLTHUB_TELEMETRY", "false")
        guard.install(mp)
        yield guard


@pytest.fixture(autouse=True)
def _stays_offline(offline: _NetworkGuard) -> Iterator[None]:
    assert not any(k.startswith("DATABRICKS_") for k in os.environ)
    yield
    assert not offline.attempts, f"a test tried to reach the network: {offline.attempts}"


# -- the load packages ---------------------------------------------------------------------------

ORDERS = """
CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, amount numeric(10, 2));
INSERT INTO orders VALUES (1, 'new', 10), (2, 'new', 20), (3, 'new', 30);
CREATE TABLE line_items (order_id int, line int, qty int, PRIMARY KEY (order_id, line));
INSERT INTO line_items VALUES (1, 1, 1), (1, 2, 2);
"""

# One CDC batch: inserts, updates, deletes, primary-key changes, and two changes to one key in
# one transaction.
CHANGES = [
    VALUES.format(id=11, nulls_id=12, special_id=13),
    "UPDATE everything SET c_text = 'updated', c_time = '01:02:03' WHERE id = 1",
    "DELETE FROM everything WHERE id = 2",
    """BEGIN;
       UPDATE orders SET status = 'paid' WHERE id = 1;
       UPDATE orders SET status = 'shipped', amount = 11.5 WHERE id = 1;
       UPDATE orders SET id = 200 WHERE id = 2;
       DELETE FROM orders WHERE id = 3;
       INSERT INTO orders VALUES (4, 'new', 40);
       COMMIT""",
    "UPDATE line_items SET qty = 5 WHERE order_id = 1 AND line = 1",
    "UPDATE line_items SET line = 3 WHERE order_id = 1 AND line = 2",
]


@dataclass
class Package:
    load_id: str
    schema: Schema
    files: Dict[str, str]  # table -> parquet file of the package


@dataclass
class Built:
    pipeline: dlt.Pipeline
    snapshot: Package
    cdc: Package
    source_rows: Dict[str, List[tuple]] = field(default_factory=dict)


def _databricks(**config: Any) -> Any:
    """The destination `snapshot` and `cdc` build, with fake credentials."""
    return databricks_destination(credentials=dict(FAKE_CREDENTIALS), **config)


def _package(pipeline: dlt.Pipeline, load_id: str) -> Package:
    info = pipeline.get_load_package_info(load_id)
    files: Dict[str, str] = {}
    for job in info.jobs["new_jobs"]:
        table = job.job_file_info.table_name
        assert table not in files, f"{table}: several files in one package: {info.jobs}"
        files[table] = job.file_path
    return Package(load_id, info.schema, files)


@pytest.fixture(scope="module")
def built(pg_server_url: str, tmp_path_factory, offline) -> Iterator[Built]:
    """Snapshot + one CDC batch, extracted and normalized for `databricks`; never loaded.

    Module-scoped (built once: slot creation and two extracts take seconds); its database is
    created and dropped like the `source_url` fixture does.
    """
    database = "t_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(pg_server_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')
    source_url = _with_database(pg_server_url, database)
    conn = psycopg2.connect(source_url)
    conn.autocommit = True
    suffix = uuid.uuid4().hex[:8]
    slot, pub = f"dbx_slot_{suffix}", f"dbx_pub_{suffix}"
    try:
        with conn.cursor() as cur:
            cur.execute(ALL_TYPES)
            cur.execute(VALUES.format(id=1, nulls_id=2, special_id=3))
            cur.execute(ORDERS)
        pipeline = dlt.pipeline(
            pipeline_name=f"dbx_contract_{suffix}",
            pipelines_dir=str(tmp_path_factory.mktemp("pipelines")),
            destination=_databricks(),
            dataset_name=DATASET,
        )
        assert merge_strategy_for(pipeline) == "lsn-guarded"  # what `cdc` uses on Databricks
        assert table_format_for(pipeline) is None

        snapshot = init_replication(slot, pub, "public", TABLES, credentials=source_url,
                                    persist_snapshots=True)
        pipeline.extract(snapshot, loader_file_format="parquet")
        pipeline.normalize()
        (snapshot_id,) = pipeline.list_normalized_load_packages()

        with conn.cursor() as cur:
            for statement in CHANGES:
                cur.execute(statement)
        changes = pg_replication.pg_replication(
            credentials=source_url, slot_name=slot, pub_name=pub)
        pipeline.extract(changes, loader_file_format="parquet")
        pipeline.normalize()
        cdc_id = [i for i in pipeline.list_normalized_load_packages() if i != snapshot_id][0]

        result = Built(pipeline, _package(pipeline, snapshot_id), _package(pipeline, cdc_id))
        with conn.cursor() as cur:
            cur.execute("SELECT id, status, amount FROM orders ORDER BY id")
            result.source_rows["orders"] = cur.fetchall()
            cur.execute("SELECT order_id, line, qty FROM line_items ORDER BY 1, 2")
            result.source_rows["line_items"] = cur.fetchall()
            cur.execute("SELECT id, c_text FROM everything ORDER BY id")
            result.source_rows["everything"] = cur.fetchall()
        yield result
    finally:
        conn.close()
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                        "WHERE database = %s AND active_pid IS NOT NULL", (database,))
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE database = %s AND NOT active", (database,))
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


def _client(pipeline: dlt.Pipeline, schema: Schema, destination: Any = None) -> DatabricksClient:
    """The job client the loader would build (`destination.client(schema, config)`); no
    connection is opened."""
    destination = destination or pipeline.destination
    config = get_destination_client_initial_config(destination, dataset_name=pipeline.dataset_name)
    client = destination.client(schema, config)
    assert isinstance(client, DatabricksClient)
    assert client.sql_client.native_connection is None
    return client


def _create_table_sql(client: DatabricksClient, table_name: str) -> str:
    table = client.prepare_load_table(table_name)
    statements = client._get_table_update_sql(table_name, list(table["columns"].values()), False)
    return statements[0]


def _column_types(create_sql: str) -> Dict[str, str]:
    """`name -> TYPE` from dlt's CREATE TABLE (one column per line)."""
    types_: Dict[str, str] = {}
    for line in create_sql.splitlines():
        found = re.match(r"^`([^`]+)` ([A-Z_]+(?:\(\d+,\d+\))?)", line.strip())
        if found:
            types_[found.group(1)] = found.group(2)
    return types_


def _followup_sql(client: DatabricksClient, table_name: str) -> List[str]:
    """The statements the loader runs once the table's files are loaded (dlt's follow-up jobs,
    created exactly as the loader creates them)."""
    table = client.prepare_load_table(table_name)
    statements = []
    for job in client.create_table_chain_completed_followup_jobs([table]):
        with open(job.new_file_path(), encoding="utf-8") as f:
            statements += [_one_line(line) for line in f.read().splitlines() if line.strip()]
    return statements


class _RecordingSqlClient:
    """Installs itself on a job client: statements are recorded instead of sent."""

    def __init__(self, client: DatabricksClient) -> None:
        self.statements: List[str] = []
        self.connection = types.SimpleNamespace()  # the job sets staging_allowed_local_path here
        client.sql_client._conn = self.connection
        client.sql_client.execute_sql = self.execute_sql  # type: ignore[method-assign]

    def execute_sql(self, sql: str, *args: Any, **kwargs: Any) -> None:
        self.statements.append(_one_line(sql))
        return None


def _run_load_job(client: DatabricksClient, package: Package, table_name: str) -> List[str]:
    """Runs dlt's Databricks load job for one file, in the dataset the loader would use."""
    recorder = _RecordingSqlClient(client)
    table = client.prepare_load_table(table_name)
    path = package.files[table_name]
    job = client.create_load_job(table, path, package.load_id)
    assert isinstance(job, DatabricksLoadJob)
    job.set_run_vars(package.load_id, client.schema, table)
    job._job_client = client
    staging = client.should_load_data_to_staging_dataset(table_name)
    with client.with_staging_dataset() if staging else nullcontext():
        job.run()
    assert recorder.connection.staging_allowed_local_path == os.path.dirname(path)
    return recorder.statements


# -- column types ---------------------------------------------------------------------------------


def test_create_table_types_for_every_type_of_the_cdc_list(built: Built):
    client = _client(built.pipeline, built.cdc.schema)
    create = _create_table_sql(client, "everything")
    assert create.startswith(f"CREATE TABLE `{CATALOG}`.`{DATASET}`.`everything` (")
    assert _column_types(create) == EXPECTED_EVERYTHING_TYPES
    assert "`id` BIGINT  NOT NULL" in create and "`_pg_lsn` BIGINT  NOT NULL" in create
    # a deleted row carries only its key: every other column must accept NULL
    nullable = [c for c in EXPECTED_EVERYTHING_TYPES if c not in ("id", "_pg_lsn")]
    for column in nullable:
        assert f"`{column}` {EXPECTED_EVERYTHING_TYPES[column]}  NOT NULL" not in create

    assert _column_types(_create_table_sql(client, "orders")) == EXPECTED_ORDERS_TYPES
    line_items = _create_table_sql(client, "line_items")
    assert _column_types(line_items) == {
        "order_id": "BIGINT", "line": "BIGINT", "qty": "BIGINT", "_pg_lsn": "BIGINT",
        "_pg_change_lsn": "BIGINT", "_pg_commit_ts": "TIMESTAMP", "_pg_deleted": "BOOLEAN"}
    assert "`order_id` BIGINT  NOT NULL" in line_items and "`line` BIGINT  NOT NULL" in line_items


def test_tables_are_created_with_deletion_vectors(built: Built):
    """The default Delta properties (hints.DEFAULT_DELTA_PROPERTIES) reach the CREATE TABLE of
    the snapshot and of the first CDC load alike."""
    for package in (built.snapshot, built.cdc):
        client = _client(built.pipeline, package.schema)
        for table in TABLES:
            create = _one_line(_create_table_sql(client, table))
            assert create.endswith(") TBLPROPERTIES ('delta.enableDeletionVectors'='true')"), create
            assert "CLUSTER BY" not in create


def test_change_data_feed_and_clustering_on_the_key_when_configured(built: Built):
    from pg_replication.hints import DeltaOptions, with_delta_options

    options = DeltaOptions({"delta.logRetentionDuration": "interval 60 days"},
                           change_data_feed=True, cluster_by_key=True)
    hints = with_delta_options({"table_name": "line_items", "primary_key": ["order_id", "line"],
                                "columns": {"order_id": {}, "line": {}, "qty": {}}}, options)
    schema = built.cdc.schema.clone()
    table = schema.tables["line_items"]
    table.update(hints["additional_table_hints"])
    for name, column in hints["columns"].items():
        table["columns"][name].update(column)
    create = _one_line(_create_table_sql(_client(built.pipeline, schema), "line_items"))
    assert create.endswith(
        ") CLUSTER BY (`order_id`,`line`) TBLPROPERTIES ('delta.enableDeletionVectors'='true', "
        "'delta.enableChangeDataFeed'='true', 'delta.logRetentionDuration'='interval 60 days')"
    ), create


def test_snapshot_and_cdc_create_the_same_tables(built: Built):
    """The snapshot creates the tables; the first CDC load must not need an ALTER."""
    snapshot_client = _client(built.pipeline, built.snapshot.schema)
    cdc_client = _client(built.pipeline, built.cdc.schema)
    for table in TABLES:
        assert _create_table_sql(snapshot_client, table) == _create_table_sql(cdc_client, table)
        assert snapshot_client.prepare_load_table(table)["write_disposition"] == "replace"
        assert cdc_client.prepare_load_table(table)["write_disposition"] == "merge"
        # the own merge replaces dlt's upsert (merges.py)
        assert cdc_client.prepare_load_table(table)["x-merge-strategy"] == "upsert"


def test_no_time_column_in_schema_sql_or_parquet(built: Built):
    for package in (built.snapshot, built.cdc):
        client = _client(built.pipeline, package.schema)
        assert set(TABLES) <= set(package.files)
        for table_name in package.schema.data_table_names():
            table = client.prepare_load_table(table_name)
            for column in table["columns"].values():
                assert column.get("data_type") != "time", (table_name, column)
            create = _create_table_sql(client, table_name)
            assert not re.search(r"\bTIME\b|\bINTERVAL\b", create), create
        for table_name, path in package.files.items():
            assert path.endswith(".parquet"), f"{table_name}: {path} (jsonl breaks decimal, " \
                                              "binary and date on Databricks)"
            assert "/load/normalized/" in Path(path).as_posix()
            assert Path(path).is_relative_to(built.pipeline.working_dir)
            for f in pq.read_schema(path):
                assert not pa.types.is_time(f.type), f"{table_name}.{f.name}: {f.type}"
        # what the loader checks before it sends anything: passes for the package's files
        jobs = [ParsedLoadJobFileName.parse(p) for p in package.files.values()]
        client.verify_schema(only_tables=list(package.files), new_jobs=jobs)


def test_a_time_column_would_be_refused_so_the_check_above_is_meaningful(built: Built):
    schema = built.cdc.schema.clone()
    schema.tables["everything"]["columns"]["c_time"]["data_type"] = "time"
    client = _client(built.pipeline, schema)
    jobs = [ParsedLoadJobFileName.parse(built.cdc.files["everything"])]
    with pytest.raises(UnsupportedDataType, match="data_type=time"):
        client.verify_schema(only_tables=["everything"], new_jobs=jobs)


def test_parquet_types_match_the_databricks_columns(built: Built):
    """COPY INTO loads parquet columns by name into these column types: they must agree."""
    for package in (built.snapshot, built.cdc):
        client = _client(built.pipeline, package.schema)
        for table_name in TABLES:
            columns = _column_types(_create_table_sql(client, table_name))
            parquet = pq.ParquetFile(package.files[table_name])
            arrow = parquet.schema_arrow
            assert arrow.names == list(columns), table_name
            for f in arrow:
                db_type = columns[f.name]
                decimal = re.fullmatch(r"DECIMAL\((\d+),(\d+)\)", db_type)
                if decimal:
                    assert f.type == pa.decimal128(int(decimal[1]), int(decimal[2])), (f, db_type)
                else:
                    assert ARROW_FOR_DATABRICKS[db_type](f.type), (table_name, f.name, f.type,
                                                                   db_type)
            # parquet's own flag, which Databricks reads: naive timestamps are not UTC-adjusted
            physical = {c.name: c.logical_type for c in parquet.schema}
            if table_name == "everything":
                naive = json.loads(physical["c_timestamp"].to_json())
                aware = json.loads(physical["c_timestamptz"].to_json())
                assert (naive["Type"], naive["isAdjustedToUTC"], naive["timeUnit"]) == (
                    "Timestamp", False, "microseconds")
                assert (aware["Type"], aware["isAdjustedToUTC"], aware["timeUnit"]) == (
                    "Timestamp", True, "microseconds")


# -- the merge -----------------------------------------------------------------------------------

TARGET = f"`{CATALOG}`.`{DATASET}`.`orders`"
STAGED = f"`{CATALOG}`.`{STAGING_DATASET}`.`orders`"
NEWER = ("(`pg-source`.`_pg_lsn` > `pg-target`.`_pg_lsn` OR (`pg-source`.`_pg_lsn` = "
         "`pg-target`.`_pg_lsn` AND COALESCE(`pg-source`.`_pg_change_lsn`, 0) > "
         "COALESCE(`pg-target`.`_pg_change_lsn`, 0)))")


def test_one_merge_per_table_and_load_guarded_by_lsn(built: Built):
    client = _client(built.pipeline, built.cdc.schema)
    (merge,) = _followup_sql(client, "orders")  # one statement: one Delta commit
    columns = "`id`, `status`, `amount`, `_pg_lsn`, `_pg_change_lsn`, `_pg_commit_ts`, `_pg_deleted`"
    latest = (f"SELECT {columns} FROM (SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY `id` "
              "ORDER BY `_pg_lsn` DESC, `_pg_change_lsn` DESC) AS `pg-rank` FROM "
              f"{STAGED}) AS `pg-ranked` WHERE `pg-rank` = 1")
    assert merge == (
        f"MERGE INTO {TARGET} AS `pg-target` USING ({latest}) AS `pg-source` "
        "ON `pg-target`.`id` = `pg-source`.`id` "
        f"WHEN MATCHED AND COALESCE(`pg-source`.`_pg_deleted`, FALSE) AND {NEWER} THEN DELETE "
        f"WHEN MATCHED AND {NEWER} THEN UPDATE SET `status` = `pg-source`.`status`, "
        "`amount` = `pg-source`.`amount`, `_pg_lsn` = `pg-source`.`_pg_lsn`, "
        "`_pg_change_lsn` = `pg-source`.`_pg_change_lsn`, "
        "`_pg_commit_ts` = `pg-source`.`_pg_commit_ts`, `_pg_deleted` = `pg-source`.`_pg_deleted` "
        "WHEN NOT MATCHED AND NOT COALESCE(`pg-source`.`_pg_deleted`, FALSE) "
        f"THEN INSERT ({columns}) VALUES (`pg-source`.`id`, `pg-source`.`status`, "
        "`pg-source`.`amount`, `pg-source`.`_pg_lsn`, `pg-source`.`_pg_change_lsn`, "
        "`pg-source`.`_pg_commit_ts`, `pg-source`.`_pg_deleted`)")

    # composite keys: deduplicate and match on the whole key
    (line_merge,) = _followup_sql(client, "line_items")
    assert "PARTITION BY `order_id`, `line` ORDER BY" in line_merge
    assert ("ON `pg-target`.`order_id` = `pg-source`.`order_id` AND "
            "`pg-target`.`line` = `pg-source`.`line` WHEN") in line_merge
    for table in TABLES:
        statements = _followup_sql(client, table)
        assert len(statements) == 1 and statements[0].startswith("MERGE INTO"), statements
        assert not any(s.startswith(("DELETE", "INSERT", "TRUNCATE", "DROP")) for s in statements)


def test_two_changes_to_one_key_in_one_load_never_reach_the_merge_twice(built: Built):
    """Databricks MERGE fails with "multiple source rows matched" when a key repeats in its
    source. The batch holds key 1 twice, in one transaction: same `_pg_lsn`, the later change has
    the higher `_pg_change_lsn`."""
    staged = pq.read_table(built.cdc.files["orders"]).to_pylist()
    ids = [r["id"] for r in staged]
    assert ids.count(1) == 2, staged  # both changes of key 1 are in the load
    first, second = [r for r in staged if r["id"] == 1]
    assert second["_pg_lsn"] == first["_pg_lsn"] and second["status"] == "shipped"
    assert second["_pg_change_lsn"] > first["_pg_change_lsn"]
    # the PK change 2 -> 200: a delete of key 2 and an insert of key 200
    assert {(r["id"], r["_pg_deleted"]) for r in staged} >= {(2, True), (200, False), (3, True)}
    deleted_2 = next(r for r in staged if r["id"] == 2)
    assert deleted_2["status"] is None and deleted_2["amount"] is None  # only the key is sent
    client = _client(built.pipeline, built.cdc.schema)
    for table in TABLES:
        (merge,) = _followup_sql(client, table)
        assert "WHERE `pg-rank` = 1) AS `pg-source`" in merge  # one source row per key


def _duckdb_sql(statement: str) -> str:
    return statement.replace(f"`{CATALOG}`.", "").replace("`", '"')


def test_merge_statement_runs_on_duckdb_over_the_package_giving_the_source_state(built: Built):
    """The generated statement, run as it is (identifiers re-quoted) on DuckDB over the
    snapshot (target) and the CDC batch (staging), leaves every table equal to the source; run a
    second time (a retried load), it changes nothing."""
    duckdb = pytest.importorskip("duckdb")
    client = _client(built.pipeline, built.cdc.schema)
    con = duckdb.connect()
    try:
        con.execute(f"CREATE SCHEMA {DATASET}; CREATE SCHEMA {STAGING_DATASET}")
        for table in TABLES:
            con.execute(f"CREATE TABLE {DATASET}.{table} AS "
                        f"SELECT * FROM read_parquet('{built.snapshot.files[table]}')")
            con.execute(f"CREATE TABLE {STAGING_DATASET}.{table} AS "
                        f"SELECT * FROM read_parquet('{built.cdc.files[table]}')")
        for attempt in range(2):
            for table in TABLES:
                for statement in _followup_sql(client, table):
                    con.execute(_duckdb_sql(statement))
            assert con.execute(f"SELECT id, status, amount FROM {DATASET}.orders ORDER BY id"
                               ).fetchall() == built.source_rows["orders"]
            assert con.execute(f"SELECT order_id, line, qty FROM {DATASET}.line_items "
                               "ORDER BY 1, 2").fetchall() == built.source_rows["line_items"]
            assert con.execute(f"SELECT id, c_text FROM {DATASET}.everything ORDER BY id"
                               ).fetchall() == built.source_rows["everything"]
    finally:
        con.close()
    assert built.source_rows["orders"][0][1] == "shipped"  # the later of the two changes won


# -- the snapshot's replace ----------------------------------------------------------------------


def test_snapshot_replaces_each_table_in_one_statement_from_staging(built: Built):
    """dlt's default replace truncates the live table before loading it (empty meanwhile on
    Databricks); here the copy is loaded into the staging dataset and swapped in by one INSERT
    OVERWRITE: one Delta commit, readers see the old rows or the new ones."""
    client = _client(built.pipeline, built.snapshot.schema)
    for table in TABLES:
        assert not client.should_truncate_table_before_load(table)
        assert client.should_load_data_to_staging_dataset(table)
        (statement,) = _followup_sql(client, table)
        columns = ", ".join(f"`{c}`" for c in client.prepare_load_table(table)["columns"])
        assert statement == (f"INSERT OVERWRITE TABLE `{CATALOG}`.`{DATASET}`.`{table}` "
                             f"({columns}) SELECT {columns} FROM "
                             f"`{CATALOG}`.`{STAGING_DATASET}`.`{table}`")
    # the pipeline's own state table is appended, as before
    assert client.prepare_load_table("_dlt_pipeline_state")["write_disposition"] == "append"


# -- COPY INTO, the volume and staged files ------------------------------------------------------


def _volume_statements(statements: List[str], volume: str, dataset: str, table: str,
                       file_path: str) -> Dict[str, str]:
    """Checks PUT -> COPY INTO [-> REMOVE] against the volume; returns them by verb."""
    by_verb = {s.split(" ", 1)[0]: s for s in statements}
    volume_dir = "/Volumes/" + volume.replace(".", "/")
    file_name = os.path.basename(file_path)
    if file_name.startswith(("_", ".")):
        file_name = "valid" + file_name  # dlt's rename: Databricks skips such files
    put = re.fullmatch(rf"PUT '{re.escape(Path(file_path).as_posix())}' INTO "
                       rf"'({re.escape(volume_dir)}/[0-9a-f]+)/{re.escape(file_name)}' "
                       "OVERWRITE", by_verb["PUT"])
    assert put, statements
    staged_dir = put.group(1)
    assert by_verb["COPY"] == (f"COPY INTO `{CATALOG}`.`{dataset}`.`{table}` "
                               f"FROM '{staged_dir}' FILEFORMAT = PARQUET")
    return {"dir": staged_dir, "file": f"{staged_dir}/{file_name}", **by_verb}


def test_copy_into_reads_from_the_default_volume_and_removes_the_staged_file(built: Built):
    destination = _databricks(keep_staged_files=False)
    # merge tables load into the staging dataset; its default volume lives there
    client = _client(built.pipeline, built.cdc.schema, destination)
    statements = _run_load_job(client, built.cdc, "orders")
    volume = f"{CATALOG}.{STAGING_DATASET}._dlt_staging_load_volume"
    assert statements[0] == f"CREATE VOLUME IF NOT EXISTS {volume}"
    staged = _volume_statements(statements, volume, STAGING_DATASET, "orders",
                                built.cdc.files["orders"])
    assert statements[-2:] == [f"REMOVE '{staged['file']}'", f"REMOVE '{staged['dir']}'"]
    assert [s.split(" ", 1)[0] for s in statements] == ["CREATE", "PUT", "COPY", "REMOVE",
                                                        "REMOVE"]

    # `_build_copy_into_statement` is what produced the COPY INTO
    job_copy = DatabricksLoadJob._build_copy_into_statement(
        None, f"`{CATALOG}`.`{STAGING_DATASET}`.`orders`", f"FROM '{staged['dir']}'", "",
        "PARQUET", "")
    assert _one_line(job_copy) == staged["COPY"]

    # the snapshot (replace) loads into the staging dataset too (then one INSERT OVERWRITE);
    # the pipeline state loads into the dataset itself, through the dataset's default volume:
    # `verify` has to look at both volumes
    client = _client(built.pipeline, built.snapshot.schema, destination)
    for table, dataset in (("orders", STAGING_DATASET), ("_dlt_pipeline_state", DATASET)):
        statements = _run_load_job(client, built.snapshot, table)
        volume = f"{CATALOG}.{dataset}._dlt_staging_load_volume"
        assert statements[0] == f"CREATE VOLUME IF NOT EXISTS {volume}"
        staged = _volume_statements(statements, volume, dataset, table,
                                    built.snapshot.files[table])
        assert statements[-2:] == [f"REMOVE '{staged['file']}'", f"REMOVE '{staged['dir']}'"]


def test_named_staging_volume_is_used_and_not_created(built: Built):
    volume = "ucat.ops_schema.cdc_staging"
    destination = _databricks(staging_volume_name=volume, keep_staged_files=False)
    for package, table, dataset in ((built.cdc, "orders", STAGING_DATASET),
                                    (built.snapshot, "everything", STAGING_DATASET),
                                    (built.snapshot, "_dlt_pipeline_state", DATASET)):
        client = _client(built.pipeline, package.schema, destination)
        assert client.config.staging_volume_name == volume
        statements = _run_load_job(client, package, table)
        assert not any(s.startswith("CREATE VOLUME") for s in statements), statements
        staged = _volume_statements(statements, volume, dataset, table, package.files[table])
        assert staged["dir"].startswith("/Volumes/ucat/ops_schema/cdc_staging/")
        assert statements[-2:] == [f"REMOVE '{staged['file']}'", f"REMOVE '{staged['dir']}'"]


def test_dlt_keeps_staged_files_unless_told_otherwise(built: Built):
    """Why the configuration matters: with keep_staged_files (dlt's default) nothing is removed."""
    client = _client(built.pipeline, built.cdc.schema, _databricks(keep_staged_files=True))
    statements = _run_load_job(client, built.cdc, "orders")
    assert [s.split(" ", 1)[0] for s in statements] == ["CREATE", "PUT", "COPY"]
    assert dlt.destinations.databricks.spec().keep_staged_files is True  # dlt's own default


# -- what the CLI resolves -----------------------------------------------------------------------

_CLI_CONFIG_SCRIPT = r"""
import json, socket, sys
sys.path.insert(0, sys.argv[1])

_getaddrinfo = socket.getaddrinfo


def _offline_getaddrinfo(host, *args, **kwargs):
    if host not in (None, "", "localhost") and not str(host).startswith("127."):
        raise SystemExit(f"offline contract test: tried to resolve {host}")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _offline_getaddrinfo
import pipeline_main
from pg_replication.destinations import merge_strategy_for, table_format_for

# the CLI's own path: group options and defaults, environment preparation, pipeline factory
ctx = pipeline_main.cli.make_context("pipeline_main", ["--pipeline-name", "dbx_cli_contract",
                                                       "status"])
with ctx:
    ctx.invoke(pipeline_main.cli.callback, **ctx.params)
    pipeline = pipeline_main._pipeline(ctx)
    client = pipeline.destination_client()
    print(json.dumps({
        "destination": pipeline.destination.destination_name,
        "dataset": pipeline.dataset_name,
        "keep_staged_files": client.config.keep_staged_files,
        "staging_volume_name": client.config.staging_volume_name,
        "merge_strategy": merge_strategy_for(pipeline),
        "table_format": table_format_for(pipeline),
        "connected": client.sql_client.native_connection is not None,
    }))
"""


def _cli_config(tmp_path: Path, extra_env: Dict[str, str]) -> Dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABRICKS_", "DESTINATION__", "SOURCES__", "DLT_",
                                "PIPELINE_", "RUNTIME__"))}
    env.update({
        "DLT_DATA_DIR": str(tmp_path / "dlt_data"),
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        **{f"DESTINATION__DATABRICKS__CREDENTIALS__{k.upper()}": v
           for k, v in FAKE_CREDENTIALS.items()},
        **extra_env,
    })
    proc = subprocess.run([sys.executable, "-c", _CLI_CONFIG_SCRIPT, str(REPO)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert FAKE_CREDENTIALS["access_token"] not in proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_destination_removes_staged_files_and_merges_with_dedup(tmp_path: Path):
    """The destination `pipeline_main.py` builds by default: databricks, bronze_postgres_raw,
    keep_staged_files = false (from the repo's .dlt/config.toml), the own merge, Delta."""
    resolved = _cli_config(tmp_path, {})
    assert resolved == {
        "destination": "databricks", "dataset": DATASET, "keep_staged_files": False,
        "staging_volume_name": None, "merge_strategy": "lsn-guarded", "table_format": None,
        "connected": False,
    }


def test_cli_destination_takes_a_named_staging_volume(tmp_path: Path):
    volume = "main.bronze_postgres_raw.cdc_staging"
    resolved = _cli_config(tmp_path, {"DESTINATION__DATABRICKS__STAGING_VOLUME_NAME": volume})
    assert resolved["staging_volume_name"] == volume
    assert resolved["keep_staged_files"] is False


def test_cli_destination_removes_staged_files_without_the_repo_config(tmp_path: Path):
    """A deployment with its own DLT_PROJECT_DIR (no [destination.databricks] section) still
    removes staged files; keeping them stays configurable."""
    project = tmp_path / "own_project"
    (project / ".dlt").mkdir(parents=True)
    resolved = _cli_config(tmp_path, {"DLT_PROJECT_DIR": str(project)})
    assert resolved["keep_staged_files"] is False
    resolved = _cli_config(tmp_path, {"DLT_PROJECT_DIR": str(project),
                                      "DESTINATION__DATABRICKS__KEEP_STAGED_FILES": "true"})
    assert resolved["keep_staged_files"] is True


# -- what `verify` and the README must cover ------------------------------------------------------


def _staged_volume_roots(built: Built, destination: Any) -> Dict[str, str]:
    """Where dlt's load jobs stage the package files: {table kind: /Volumes/<c>/<s>/<v>}."""
    roots = {}
    for kind, package, table in (("merge (cdc)", built.cdc, "orders"),
                                 ("replace (snapshot)", built.snapshot, "orders"),
                                 ("pipeline state", built.snapshot, "_dlt_pipeline_state")):
        client = _client(built.pipeline, package.schema, destination)
        put = next(s for s in _run_load_job(client, package, table) if s.startswith("PUT"))
        roots[kind] = re.search(r" INTO '(/Volumes/[^/]+/[^/]+/[^/]+)/", put).group(1)
    return roots


@pytest.fixture
def databricks_sql_recorded(monkeypatch) -> List[str]:
    """`with client:` opens no connection; every statement is recorded, answered with no rows."""
    from dlt.destinations.impl.databricks.sql_client import DatabricksSqlClient

    statements: List[str] = []

    def open_connection(self):
        self._conn = types.SimpleNamespace()
        return self._conn

    monkeypatch.setattr(DatabricksSqlClient, "open_connection", open_connection)
    monkeypatch.setattr(DatabricksSqlClient, "close_connection",
                        lambda self: setattr(self, "_conn", None))
    monkeypatch.setattr(DatabricksSqlClient, "execute_sql",
                        lambda self, sql, *a, **k: statements.append(_one_line(sql)))
    return statements


def _verify_listed_volumes(tmp_path: Path, destination: Any, statements: List[str]) -> set:
    from pg_replication.verify import check_staged_files

    pipeline = dlt.pipeline(pipeline_name=f"dbx_verify_{uuid.uuid4().hex[:8]}",
                            pipelines_dir=str(tmp_path), destination=destination,
                            dataset_name=DATASET)
    check = check_staged_files(pipeline)
    assert check.passed is True, check.line()
    return {re.fullmatch(r"LIST '(.+?)/?'", s).group(1) for s in statements
            if s.startswith("LIST")}


def test_verify_lists_the_named_staging_volume(built: Built, tmp_path: Path,
                                               databricks_sql_recorded: List[str]):
    destination = _databricks(staging_volume_name="ucat.ops_schema.cdc_staging",
                              keep_staged_files=False)
    staged = set(_staged_volume_roots(built, destination).values())
    assert staged == {"/Volumes/ucat/ops_schema/cdc_staging"}
    assert staged <= _verify_listed_volumes(tmp_path, destination, databricks_sql_recorded)


def test_verify_lists_every_default_volume_dlt_stages_into(built: Built, tmp_path: Path,
                                                           databricks_sql_recorded: List[str]):
    destination = _databricks(keep_staged_files=False)
    staged = _staged_volume_roots(built, destination)
    assert staged == {
        "merge (cdc)": f"/Volumes/{CATALOG}/{STAGING_DATASET}/_dlt_staging_load_volume",
        "replace (snapshot)": f"/Volumes/{CATALOG}/{STAGING_DATASET}/_dlt_staging_load_volume",
        "pipeline state": f"/Volumes/{CATALOG}/{DATASET}/_dlt_staging_load_volume",
    }
    listed = _verify_listed_volumes(tmp_path, destination, databricks_sql_recorded)
    missing = set(staged.values()) - listed
    assert not missing, f"verify LISTs {sorted(listed)}, never {sorted(missing)}"


def _readme_schema_grants() -> Dict[str, set]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Running against Databricks", 1)[1].split("\n## ", 1)[0]
    grants: Dict[str, set] = {}
    for privileges, schema in re.findall(r"GRANT (.+?) ON SCHEMA (\S+) TO", section):
        grants.setdefault(schema, set()).update(p.strip() for p in privileges.split(","))
    return grants


def test_readme_grants_cover_every_schema_the_load_writes(built: Built):
    client = _client(built.pipeline, built.cdc.schema)
    assert all(client.should_load_data_to_staging_dataset(t) for t in TABLES)
    written = {f"{CATALOG}.{DATASET}", f"{CATALOG}.{client.sql_client.staging_dataset_name}"}
    assert written == {"main.bronze_postgres_raw", "main.bronze_postgres_raw_staging"}
    grants = _readme_schema_grants()
    assert f"{CATALOG}.{DATASET}" in grants  # the section exists and is parsed
    for schema in sorted(written):
        needed = {"USE SCHEMA", "CREATE TABLE", "MODIFY", "SELECT", "CREATE VOLUME"}
        assert needed <= grants.get(schema, set()), (schema, grants)


@pytest.fixture
def databricks_list_answers(monkeypatch) -> Dict[str, Any]:
    """`with client:` opens no connection; LIST of a volume answers from this mapping (volume
    path -> rows, or an exception to raise, as dlt's Databricks SQL client would)."""
    from dlt.destinations.impl.databricks.sql_client import DatabricksSqlClient

    answers: Dict[str, Any] = {}

    def execute_sql(self, sql, *args, **kwargs):
        path = re.fullmatch(r"LIST '(.+?)/?'", _one_line(sql)).group(1)
        answer = answers[path]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(DatabricksSqlClient, "open_connection",
                        lambda self: setattr(self, "_conn", types.SimpleNamespace()))
    monkeypatch.setattr(DatabricksSqlClient, "close_connection",
                        lambda self: setattr(self, "_conn", None))
    monkeypatch.setattr(DatabricksSqlClient, "execute_sql", execute_sql)
    return answers


def _verify_staged(tmp_path: Path) -> Any:
    from pg_replication.verify import check_staged_files

    pipeline = dlt.pipeline(pipeline_name=f"dbx_verify_{uuid.uuid4().hex[:8]}",
                            pipelines_dir=str(tmp_path),
                            destination=_databricks(keep_staged_files=False), dataset_name=DATASET)
    return check_staged_files(pipeline)


DATASET_VOLUME = f"/Volumes/{CATALOG}/{DATASET}/_dlt_staging_load_volume"
STAGING_VOLUME = f"/Volumes/{CATALOG}/{STAGING_DATASET}/_dlt_staging_load_volume"


def test_verify_passes_before_the_first_cdc_created_the_staging_schema(
        tmp_path: Path, databricks_list_answers: Dict[str, Any]):
    """A snapshot-only deployment: the staging schema and its volume do not exist yet."""
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    databricks_list_answers[DATASET_VOLUME] = []
    databricks_list_answers[STAGING_VOLUME] = DatabaseUndefinedRelation(Exception(
        f"[SCHEMA_NOT_FOUND] The schema `{CATALOG}`.`{STAGING_DATASET}` cannot be found."))
    check = _verify_staged(tmp_path)
    assert check.passed is True, check.line()
    assert "nothing staged yet: no volume " f"{CATALOG}.{STAGING_DATASET}." in check.detail
    assert f"no staged files in {CATALOG}.{DATASET}." in check.detail

    databricks_list_answers[STAGING_VOLUME] = Exception(
        "[UC_VOLUME_NOT_FOUND] Volume does not exist")  # the schema exists, the volume not
    assert _verify_staged(tmp_path).passed is True


def test_verify_fails_when_a_volume_cannot_be_listed_or_holds_files(
        tmp_path: Path, databricks_list_answers: Dict[str, Any]):
    databricks_list_answers[DATASET_VOLUME] = []
    databricks_list_answers[STAGING_VOLUME] = Exception(
        "[INSUFFICIENT_PERMISSIONS] Insufficient privileges: User does not have READ VOLUME")
    check = _verify_staged(tmp_path)
    assert check.passed is False
    assert check.detail == (f"cannot list volume {CATALOG}.{STAGING_DATASET}."
                            "_dlt_staging_load_volume: [INSUFFICIENT_PERMISSIONS] Insufficient "
                            "privileges: User does not have READ VOLUME")
    databricks_list_answers[STAGING_VOLUME] = [("a.parquet",), ("b.parquet",)]
    check = _verify_staged(tmp_path)
    assert check.passed is False and "2 file(s) left in volume" in check.detail


# -- the statements on a real Spark ----------------------------------------------------------------
# Spark 3.5 without Delta (tests/spark.py): DDL and INSERT OVERWRITE run against parquet tables
# of the same schema; MERGE and DELETE are parsed and analyzed (Delta would execute them).


def _spark_sql(statement: str) -> str:
    """A Databricks statement for the local Spark: no Unity Catalog level, parquet tables."""
    statement = statement.replace(f"`{CATALOG}`.", "")
    if statement.startswith("CREATE TABLE"):
        columns_end = statement.rindex(")") if "TBLPROPERTIES" not in statement else \
            statement.index(") TBLPROPERTIES")
        statement = statement[:columns_end + 1] + " USING parquet" + statement[columns_end + 1:]
    return statement


@pytest.fixture(scope="module")
def spark_tables(built: Built, spark) -> Any:
    """The snapshot's tables, created in Spark by dlt's own CREATE TABLE statements (dataset and
    staging dataset), the staging tables filled from the snapshot package's parquet files."""
    client = _client(built.pipeline, built.snapshot.schema)
    for dataset in (DATASET, STAGING_DATASET):
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {dataset}")
    for table in TABLES:
        create = _one_line(_create_table_sql(client, table))
        for dataset in (DATASET, STAGING_DATASET):
            spark.sql(_spark_sql(create.replace(f"`{DATASET}`", f"`{dataset}`", 1)))
        spark.sql(f"INSERT INTO {STAGING_DATASET}.{table} "
                  f"SELECT * FROM parquet.`{built.snapshot.files[table]}`")
    return spark


@pytest.mark.slow
def test_spark_runs_the_snapshot_replace_statement(built: Built, spark_tables):
    from tests.spark import analyze

    client = _client(built.pipeline, built.snapshot.schema)
    for table in TABLES:
        (overwrite,) = _followup_sql(client, table)
        analyze(spark_tables, _spark_sql(overwrite))
        spark_tables.sql(_spark_sql(overwrite))  # parquet tables can run it too
        copied = spark_tables.table(f"{DATASET}.{table}").count()
        assert copied == pq.read_metadata(built.snapshot.files[table]).num_rows > 0
    ids = [r.id for r in spark_tables.sql(f"SELECT id FROM {DATASET}.orders ORDER BY id").collect()]
    assert ids == [1, 2, 3]


def test_spark_analyzes_the_merge_of_every_table(built: Built, spark_tables):
    from tests.spark import analyze

    client = _client(built.pipeline, built.cdc.schema)
    for table in TABLES:
        (merge,) = _followup_sql(client, table)
        # the first CDC load adds nothing: the tables the snapshot created take its MERGE
        analyze(spark_tables, _spark_sql(merge))


def test_spark_analyzes_the_merge_of_columns_named_like_aliases(built: Built, spark_tables):
    """A column named `d` broke dlt's delete-insert on Spark (its DELETE's alias `d` resolved to
    the column first): every run of the table failed and WAL piled up. dlt's ALTER adds the
    columns; the own MERGE analyzes, dlt's DELETE is refused as Databricks refused it."""
    from pyspark.errors import AnalysisException

    from dlt.destinations.impl.databricks.databricks import DatabricksMergeJob
    from pg_replication.merges import MergePlan, merge_statement
    from tests.spark import analyze

    schema = built.cdc.schema.clone()
    columns = schema.tables["orders"]["columns"]
    for name in ("d", "s", "source", "target"):
        columns[name] = {"name": name, "data_type": "text", "nullable": True}
    client = _client(built.pipeline, schema)
    table = client.prepare_load_table("orders")
    new_columns = [columns[n] for n in ("d", "s", "source", "target")]
    for dataset in (DATASET, STAGING_DATASET):
        for alter in client._get_table_update_sql("orders", new_columns, True):
            spark_tables.sql(_spark_sql(_one_line(alter).replace(
                f"`{DATASET}`", f"`{dataset}`", 1)))
    plan = MergePlan.for_table(table)
    assert {"d", "s", "source", "target"} <= set(plan.columns)
    sql_client = client.sql_client
    with sql_client.with_staging_dataset():
        staging = sql_client.make_qualified_table_name("orders")
    merge = merge_statement(plan, sql_client.make_qualified_table_name("orders"), staging,
                            sql_client.escape_column_name)
    analyze(spark_tables, _spark_sql(merge))

    delete_insert = dict(table, **{"x-merge-strategy": "delete-insert"})  # dlt's default
    dlt_delete = next(s for s in DatabricksMergeJob.generate_sql([delete_insert], sql_client)
                      if s.startswith("DELETE"))
    with pytest.raises(AnalysisException, match="INVALID_EXTRACT_BASE_FIELD_TYPE"):
        analyze(spark_tables, _spark_sql(_one_line(dlt_delete)))
