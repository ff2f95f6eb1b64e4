"""The parquet files dlt writes for us are read as-is by Spark 3.5 under its default settings.

Databricks loads each staged parquet file with COPY INTO, i.e. a Spark 3.x parquet reader with
`spark.sql.parquet.datetimeRebaseModeInRead=EXCEPTION`: a file that does not say a Spark >= 3.0
wrote it is refused when it holds a DATE before 1582-10-15 or a TIMESTAMP (with time zone) before
1900 (`READ_ANCIENT_DATETIME`), which includes our own clamp of `-infinity` to 0001-01-01
(hints.SPARK_PARQUET_METADATA is the fix). Each file dlt keeps in its completed load packages
(snapshot and CDC alike, also after a column was added mid-run) is read with a real local Spark
(tests/spark.py) and compared with the source, value by value.
"""

import datetime as dt
import json
import os
import re
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Dict, List

import pyarrow.parquet as pq
import pytest

from tests.tools import Project, run_sql

TABLE = "spark_types"

SCHEMA = f"""
CREATE TABLE {TABLE} (
    id int PRIMARY KEY,
    d date, ts timestamp, tstz timestamptz,
    n0 numeric(38, 0), n10 numeric(38, 10),
    b bytea, j json, jb jsonb
)"""

N0_MAX = "9" * 38
N10_MAX = "9" * 28 + "." + "9" * 10
ROWS = f"""
INSERT INTO {TABLE} VALUES
 (1, '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00', {N0_MAX}, {N10_MAX},
  '\\x00ff10', '{{"a": [1, 2.5, null]}}', '{{"b": "x"}}'),
 (2, '-infinity', '-infinity', '-infinity', -{N0_MAX}, -{N10_MAX}, '\\x', '[]', 'null'),
 (3, 'infinity', 'infinity', 'infinity', 0, 0.0000000001, '\\xdeadbeef', '"s"', '{{}}'),
 (4, '1582-10-04', '1582-10-04 12:00:00', '1582-10-04 12:00:00+00', 1, -1, '\\x01', '1', '2'),
 (5, '1582-10-10', '1582-10-10 00:00:00.000001', '1582-10-10 23:59:59-07', 2, 2.5, '\\x02',
  'true', 'false'),
 (6, '1582-10-15', '1582-10-15 00:00:00', '1582-10-15 00:00:00+00', 3, 3, '\\x03', '{{}}', '[]'),
 (7, '1899-12-31', '1899-12-31 23:59:59.999999', '1899-12-31 23:59:59.999999+00', 4, 4,
  '\\x04', '{{}}', '[]'),
 (8, '1900-01-01', '1900-01-01 00:00:00', '1899-12-31 19:00:00-05', 5, 5, '\\x05', '{{}}', '[]'),
 (9, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""

# What the CDC run changes: updates (old rows get new values), inserts, then a new column
# (the same table gains a column mid-run, so dlt writes batches of two shapes).
CHANGES = [
    f"UPDATE {TABLE} SET d = '0001-01-02', tstz = '0001-01-01 00:00:00.000001+00', "
    f"n0 = -{N0_MAX} WHERE id = 1",
    f"UPDATE {TABLE} SET n10 = {N10_MAX}, b = '\\x7f' WHERE id = 2",
    f"INSERT INTO {TABLE} VALUES (21, '-infinity', '0001-01-01 00:00:00', "
    "'1000-06-15 12:00:00+03', "
    f"-{N0_MAX}, -{N10_MAX}, '\\x00', '{{\"k\": \"v\"}}', '[1]')",
    f"ALTER TABLE {TABLE} ADD COLUMN d2 date",
    f"INSERT INTO {TABLE} (id, d, tstz, d2) VALUES (22, '1000-01-01', '1500-03-01 00:00:00+00', "
    "'0001-01-01')",
    f"UPDATE {TABLE} SET d2 = '-infinity', ts = '1899-01-01 00:00:00' WHERE id = 4",
]

# README "Types": infinities (and BC years, years past 9999) are clamped to these bounds.
CLAMPED = {"infinity": "9999-12-31 23:59:59.999999", "-infinity": "0001-01-01 00:00:00"}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
ONE_MICROSECOND = dt.timedelta(microseconds=1)


def _days(text):
    if text is None:
        return None
    return (dt.date.fromisoformat(CLAMPED.get(text, text)[:10]) - EPOCH.date()).days


def _micros(text):
    """Microseconds since the epoch of a timestamp's text (UTC when it names no offset)."""
    if text is None:
        return None
    moment = dt.datetime.fromisoformat(CLAMPED.get(text, text))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (moment - EPOCH) // ONE_MICROSECOND


def _optional(convert):
    return lambda value: None if value is None else convert(value)


# Per column: the source expression (the session time zone is UTC) and how its text becomes the
# expected value; the Spark expression that gives the same from the file (the Spark session is
# UTC too), Spark's type of the column, and how a Spark value becomes comparable.
COLUMNS = {
    "d": ("d::text", _days, "unix_date(d)", "date", None),
    # A `timestamp` column (Arrow timestamp without zone) is TIMESTAMP_NTZ for Spark 3.5.
    "ts": ("ts::text", _micros, "unix_micros(CAST(ts AS TIMESTAMP))", "timestamp_ntz", None),
    "tstz": ("tstz::text", _micros, "unix_micros(tstz)", "timestamp", None),
    "n0": ("n0::text", _optional(Decimal), "n0", "decimal(38,0)", None),
    "n10": ("n10::text", _optional(Decimal), "n10", "decimal(38,10)", None),
    "b": ("b", _optional(bytes), "b", "binary", _optional(bytes)),
    "j": ("j::text", _optional(json.loads), "j", "string", _optional(json.loads)),
    "jb": ("jb::text", _optional(json.loads), "jb", "string", _optional(json.loads)),
    "d2": ("d2::text", _days, "unix_date(d2)", "date", None),  # added during the CDC run
}
SNAPSHOT_COLUMNS = [name for name in COLUMNS if name != "d2"]


def _source_values(conn, columns: List[str]) -> Dict[int, Dict[str, object]]:
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        cur.execute(f"SELECT id, {', '.join(COLUMNS[c][0] for c in columns)} FROM {TABLE}")
        rows = cur.fetchall()
    return {row[0]: {c: COLUMNS[c][1](v) for c, v in zip(columns, row[1:])} for row in rows}


def _loaded_files(project: Project, table: str) -> Dict[str, List[Path]]:
    """The parquet files of `table` in each load package dlt completed, by load id."""
    loaded = (Path(project.env["DLT_DATA_DIR"]) / "pipelines" / project.pipeline_name / "load"
              / "loaded")
    return {package.name: sorted((package / "completed_jobs").glob(f"{table}.*.parquet"))
            for package in sorted(loaded.iterdir())}


def _spark_error(error: Exception) -> str:
    """The error class and message of a JVM error (its text holds whole stack traces)."""
    found = re.search(r"\[[A-Z_.]+\].*", str(error))
    return found.group(0) if found else str(error).splitlines()[0]


def _read(spark, path: Path, columns: List[str]) -> Dict[int, Dict[str, object]]:
    """The file's rows by id, as Spark (default settings) reads them; fails on a refusal."""
    try:
        frame = spark.read.parquet(str(path))
        rows = frame.selectExpr("id", *(COLUMNS[c][2] for c in columns)).collect()
    except Exception as e:  # noqa: BLE001 - any JVM error
        refused = _spark_error(e)
    else:
        refused = None
    if refused:
        pytest.fail(f"Spark 3.5 (default settings) cannot read {path.name}: {refused}")
    types = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    assert {c: types[c] for c in columns} == {c: COLUMNS[c][3] for c in columns}, path.name
    return {row[0]: {c: (COLUMNS[c][4] or (lambda v: v))(value)
                     for c, value in zip(columns, row[1:])} for row in rows}


def _assert_spark_reads(spark, path: Path, columns: List[str], expected) -> set:
    """Each row Spark reads from the file equals `expected` (by id). Returns the ids."""
    got = _read(spark, path, columns)
    for key, values in got.items():
        assert values == {c: expected[key][c] for c in columns}, (path.name, key)
    return set(got)


def _assert_marked_for_spark(path: Path) -> None:
    """The footer says a Spark >= 3.0 wrote the file, with no legacy calendar keys."""
    footer = pq.read_metadata(path).metadata or {}
    keys = sorted(key.decode() for key in footer)
    assert footer.get(b"org.apache.spark.version", b"") >= b"3.0.0", (path.name, keys)
    assert not {b"org.apache.spark.legacyDateTime", b"org.apache.spark.legacyINT96"} & set(
        footer), (path.name, keys)


@pytest.mark.slow
def test_snapshot_and_cdc_files_read_by_spark_exactly(source, project, spark, tmp_path):
    run_sql(source, SCHEMA, ROWS)
    project.run("snapshot")
    snapshot_values = _source_values(source, SNAPSHOT_COLUMNS)
    run_sql(source, *CHANGES)
    assert "column d2 added" in project.run("cdc").stdout
    cdc_values = _source_values(source, list(COLUMNS))

    snapshot_load, cdc_load = [files for files in _loaded_files(project, TABLE).values() if files]
    assert snapshot_load and cdc_load

    # The premise: this Spark refuses such a file when it lacks the Spark writer metadata.
    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(snapshot_load[0]).replace_schema_metadata(None), plain)
    with pytest.raises(Exception, match="READ_ANCIENT_DATETIME"):
        spark.read.parquet(str(plain)).collect()

    read = [_assert_spark_reads(spark, path, SNAPSHOT_COLUMNS, snapshot_values)
            for path in snapshot_load]
    assert set().union(*read) == set(range(1, 10))
    changed = {1, 2, 4, 21, 22}
    seen = set()
    for path in cdc_load:
        columns = [c for c in COLUMNS if c in pq.read_schema(path).names]
        seen |= _assert_spark_reads(spark, path, columns, cdc_values)
    assert seen == changed
    for path in snapshot_load + cdc_load:
        _assert_marked_for_spark(path)


def test_dlt_keeps_the_metadata_when_it_concatenates_casts_and_normalizes(tmp_path, monkeypatch):
    """dlt's arrow writer buffers several tables into one file, casts a narrower table into a
    wider file and rotates files when a column appears; normalize for Databricks rewrites a file
    that lacks a column the schema gained. Every file keeps the metadata mark_batch sets (the
    footer is what Spark reads: the test above shows it suffices). Extract and normalize only:
    no Databricks connection, no Spark, so a dlt upgrade that drops the metadata fails here
    even where Java is missing."""
    import dlt
    import pyarrow as pa

    from pg_replication.hints import mark_batch
    from pg_replication.types import DATE, INT8, TIMESTAMPTZ, resolve_kind

    for name in [n for n in os.environ if n.startswith("DATABRICKS")]:
        monkeypatch.delenv(name)  # the SDK would try to authenticate
    columns = {name: resolve_kind(oid, -1, {}).column_schema(name)
               for name, oid in (("id", INT8), ("d", DATE), ("tstz", TIMESTAMPTZ), ("d2", DATE))}
    hints = {"table_name": "t", "write_disposition": "append",
             "columns": {k: v for k, v in columns.items() if k != "d2"}}
    wider = dict(hints, columns=columns)  # as segments.py sends when a column was added
    ancient = {"d": (dt.date(1, 1, 1), pa.date32()),
               "tstz": (dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc), pa.timestamp("us", "UTC")),
               "d2": (dt.date(1582, 10, 10), pa.date32())}

    def batch(ids, *columns):
        return pa.table({"id": pa.array(ids, pa.int64()), **{
            c: pa.array([ancient[c][0]] * len(ids), ancient[c][1]) for c in columns}})

    @dlt.resource(name="t")
    def rows():
        yield mark_batch(batch([1, 2], "d", "tstz"), hints, True)
        yield mark_batch(batch([3], "d", "tstz"), hints, False)  # concatenated with the first
        yield mark_batch(batch([4], "d", "tstz", "d2"), wider, True)  # a column more: new file
        yield mark_batch(batch([5], "d", "tstz"), wider, False)  # cast into the wider file

    destination = dlt.destinations.databricks(credentials={
        "server_hostname": "example.cloud.databricks.com", "http_path": "/sql/1.0/warehouses/x",
        "access_token": "not-used", "catalog": "c"})
    pipeline = dlt.pipeline("spark_meta", destination=destination, dataset_name="d",
                            pipelines_dir=str(tmp_path))
    pipeline.extract(rows())
    pipeline.normalize()
    files = sorted(tmp_path.glob("spark_meta/load/normalized/*/new_jobs/t.*.parquet"))
    assert len(files) == 2
    rows = []
    for path in files:
        _assert_marked_for_spark(path)
        rows += pq.read_table(path).to_pylist()
    assert sorted(rows, key=lambda row: row["id"]) == [
        {"id": key, "d": ancient["d"][0], "tstz": ancient["tstz"][0],
         "d2": ancient["d2"][0] if key == 4 else None} for key in range(1, 6)]


def test_every_pagila_snapshot_file_read_by_spark(source, project, spark, pagila_dir):
    for name in ("pagila-schema.sql", "pagila-data.sql"):
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", project.source_url, "-f",
                        str(pagila_dir / name)], check=True, capture_output=True)
    project.run("snapshot")
    with source.cursor() as cur:
        cur.execute("""SELECT c.relname FROM pg_class c
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                       AND NOT c.relispartition""")
        tables = sorted(r[0] for r in cur.fetchall())
    files = [path for package in _loaded_files(project, "*").values() for path in package]
    for table in tables:
        with source.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM public."{table}"')
            count = cur.fetchone()[0]
        mine = [p for p in files if p.name.split(".")[0] == table]
        assert mine, f"no parquet file for {table}"
        frame = spark.read.parquet(*map(str, mine))
        frame.write.format("noop").mode("overwrite").save()  # decodes every value
        assert frame.count() == count, table
        for path in mine:
            _assert_marked_for_spark(path)


def test_analyze_resolves_statements_without_running_them(spark):
    """tests/spark.py's `analyze`, for SQL checks: dlt 1.31's delete-insert DELETE aliases the
    target `d`, which Spark resolves to a column `d` of the table (dlt-facts.md)."""
    from pyspark.errors import AnalysisException

    from tests.spark import analyze

    schema = f"analyze_{uuid.uuid4().hex[:8]}"
    spark.sql(f"CREATE SCHEMA {schema}")
    try:
        for table in ("target", "staging"):
            spark.sql(f"CREATE TABLE {schema}.{table} (id INT, d STRING) USING parquet")
        spark.sql(f"INSERT INTO {schema}.target VALUES (1, 'x')")
        delete = (f"DELETE FROM {schema}.target AS {{alias}} WHERE EXISTS (SELECT 1 FROM "
                  f"{schema}.staging AS s WHERE {{alias}}.id = s.id)")
        assert "DeleteFromTable" in analyze(spark, delete.format(alias="t")).toString()
        with pytest.raises(AnalysisException, match="INVALID_EXTRACT_BASE_FIELD_TYPE"):
            analyze(spark, delete.format(alias="d"))
        analyze(spark, f"TRUNCATE TABLE {schema}.target")
        assert spark.table(f"{schema}.target").count() == 1  # analyzed, not run
    finally:
        spark.sql(f"DROP SCHEMA {schema} CASCADE")
