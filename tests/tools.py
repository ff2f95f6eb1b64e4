"""Test helpers: running the CLI as a user would, reading the destination, comparing with the source."""

import json
import math
import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import psycopg2

from pg_replication.catalog import describe_tables, load_type_catalog
from pg_replication.types import resolve_kind

REPO = Path(__file__).resolve().parents[1]
DATASET = "bronze_postgres_raw"


@dataclass
class CliRunResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Project:
    """A user's working setup: env vars for source, slot, destination, and dlt's folders."""

    def __init__(self, tmp: Path, source_url: str, destination: str = "duckdb") -> None:
        self.dir = tmp
        self.source_url = source_url
        self.destination = destination
        suffix = uuid.uuid4().hex[:8]
        self.slot = f"slot_{suffix}"
        self.pub = f"pub_{suffix}"
        self.pipeline_name = f"p_{suffix}"
        self.duckdb_path = tmp / "dest.duckdb"
        self.delta_root = tmp / "delta"
        (tmp / "project" / ".dlt").mkdir(parents=True, exist_ok=True)
        self.env = {
            "SOURCES__PG_REPLICATION__CREDENTIALS": source_url,
            "SOURCES__PG_REPLICATION__SLOT_NAME": self.slot,
            "SOURCES__PG_REPLICATION__PUB_NAME": self.pub,
            "DESTINATION__DUCKDB__CREDENTIALS": str(self.duckdb_path),
            "DESTINATION__FILESYSTEM__BUCKET_URL": self.delta_root.as_uri(),
            "DLT_DATA_DIR": str(tmp / "dlt_data"),
            "DLT_PROJECT_DIR": str(tmp / "project"),
            "RUNTIME__DLTHUB_TELEMETRY": "false",
        }

    def command(self, *args: str) -> List[str]:
        return [sys.executable, str(REPO / "pipeline_main.py"), "--destination", self.destination,
                "--pipeline-name", self.pipeline_name, *args]

    def environment(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__"))}
        env.update(self.env)
        env.update(extra or {})
        return env

    def run(self, *args: str, expect: Optional[int] = 0, env: Optional[Dict[str, str]] = None,
            timeout: float = 300) -> CliRunResult:
        proc = subprocess.run(self.command(*args), capture_output=True, text=True,
                              env=self.environment(env), cwd=self.dir, timeout=timeout)
        result = CliRunResult(proc.returncode, proc.stdout, proc.stderr)
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code} (expected {expect})\nstdout:\n{result.stdout}\n"
                f"stderr:\n{result.stderr}"
            )
        return result

    def start(self, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.environment(env),
                                cwd=self.dir)

    # -- destination ----------------------------------------------------------------------------

    def dest_rows(self, table: str) -> List[Dict[str, Any]]:
        if self.destination == "filesystem":
            from deltalake import DeltaTable

            return DeltaTable(str(self.delta_root / DATASET / table)).to_pyarrow_table().to_pylist()
        import duckdb

        with duckdb.connect(str(self.duckdb_path), read_only=True) as con:
            cursor = con.execute(f'SELECT * FROM {DATASET}."{table}"')
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def dest_tables(self) -> List[str]:
        if self.destination == "filesystem":
            root = self.delta_root / DATASET
            return sorted(p.name for p in root.iterdir() if (p / "_delta_log").exists())
        import duckdb

        with duckdb.connect(str(self.duckdb_path), read_only=True) as con:
            rows = con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
                [DATASET]).fetchall()
        return sorted(r[0] for r in rows if not r[0].startswith("_dlt"))

    def dest_column_types(self, table: str) -> Dict[str, str]:
        import duckdb

        with duckdb.connect(str(self.duckdb_path), read_only=True) as con:
            rows = con.execute(f'DESCRIBE {DATASET}."{table}"').fetchall()
        return {r[0]: r[1] for r in rows}

    def slot_confirmed_lsn(self) -> Optional[int]:
        with psycopg2.connect(self.source_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots "
                        "WHERE slot_name = %s", (self.slot,))
            row = cur.fetchone()
        conn.close()
        return int(row[0]) if row else None


PGBENCH_TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]


@contextmanager
def pgbench_load(url: str, seconds: int, clients: int = 3) -> Iterator[None]:
    """pgbench's TPC-B tables (scale 1), with its load running inside the block for `seconds`;
    the block waits for the load to end. `pgbench_history` has no key."""
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", url], check=True, capture_output=True)
    bench = subprocess.Popen(["pgbench", "-n", "-c", str(clients), "-T", str(seconds), url],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield
    finally:
        _, errors = bench.communicate(timeout=120)
    assert bench.returncode == 0, errors
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pgbench_history")
        assert cur.fetchone()[0] > 100, "pgbench made transactions during the block"
    conn.close()


def lsn_in(text: str, label: str) -> int:
    """The LSN printed after `label` in a command's output (e.g. "hand-off LSN 0/1A2B")."""
    high, low = text.split(label, 1)[1].split()[0].rstrip(",").split("/")
    return (int(high, 16) << 32) + int(low, 16)


def run_sql(conn, *statements: str) -> None:
    """Runs statements one after another on an autocommit connection."""
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


# -- comparing source and destination -----------------------------------------------------------


def _normal(value: Any) -> Any:
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float):
        return round(value, 10)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc)
    if isinstance(value, Decimal):
        return value.normalize() if value == value else "NaN"
    return value


def source_rows(conn, schema: str, table: str) -> List[Dict[str, Any]]:
    """Rows read with psycopg2, each column as the destination should hold it (see types.py)."""
    info = describe_tables(conn, schema, [table])[table]
    catalog = load_type_catalog(conn)
    selects = []
    for column in info.columns:
        kind = resolve_kind(column.type_oid, column.type_modifier, catalog)
        quoted = '"' + column.name.replace('"', '""') + '"'
        if kind.conversion in ("json", "array"):
            selects.append(f"to_jsonb({quoted})")
        elif kind.conversion == "text" and column.type_oid not in (25, 1042, 1043):
            # The type's output text, as pgoutput and COPY send it (a cast to text is not the
            # same: inet::text keeps a /32 mask that inet's output drops).
            selects.append(f"CASE WHEN {quoted} IS NULL THEN NULL ELSE format('%s', {quoted}) END")
        else:
            selects.append(quoted)
    with conn.cursor() as cur:
        cur.execute(f'SELECT {", ".join(selects)} FROM "{schema}"."{table}"')
        rows = cur.fetchall()
    return [dict(zip([c.name for c in info.columns], row)) for row in rows]


def _comparable(rows: Sequence[Dict[str, Any]], columns: Sequence[str], json_columns: set) -> list:
    out = []
    for row in rows:
        values = []
        for name in columns:
            value = row.get(name)
            if name in json_columns and isinstance(value, str):
                value = json.loads(value)
            values.append(_normal(value))
        out.append(tuple(values))
    return sorted(out, key=repr)


def assert_table_matches(conn, project: Project, table: str, schema: str = "public",
                         dest_table: Optional[str] = None,
                         columns_as: Optional[Dict[str, str]] = None) -> int:
    """Asserts the destination table equals the source table, value by value. Returns row count.

    `columns_as`: source column -> the destination column that holds it (a renamed column keeps
    its destination name; a type change continues in a variant column).
    """
    info = describe_tables(conn, schema, [table])[table]
    catalog = load_type_catalog(conn)
    json_columns = {c.name for c in info.columns
                    if resolve_kind(c.type_oid, c.type_modifier, catalog).conversion
                    in ("json", "array")}
    columns = [c.name for c in info.columns]
    expected = _comparable(source_rows(conn, schema, table), columns, json_columns)
    held_as = {name: (columns_as or {}).get(name, name) for name in columns}
    dest = [{name: row.get(held_as[name]) for name in columns}
            for row in project.dest_rows(dest_table or table)]
    actual = _comparable(dest, columns, json_columns)
    assert len(actual) == len(expected), f"{table}: {len(actual)} rows, source has {len(expected)}"
    for got, want in zip(actual, expected):
        assert got == want, f"{table}: destination row {got} != source row {want}"
    # The same comparison by `verify --data`'s checksums: what passes here must pass there.
    differences = checksum_differences(conn, project, table, schema, dest_table, columns_as)
    assert not differences, f"{table}: verify --data finds {differences}"
    return len(expected)


def checksum_differences(conn, project: Project, table: str, schema: str = "public",
                         dest_table: Optional[str] = None,
                         columns_as: Optional[Dict[str, str]] = None) -> List[str]:
    """The rows `verify --data`'s comparison (data_check.py) finds differing, in process."""
    from pg_replication.canonical import DuckDBDialect
    from pg_replication.data_check import (ChunkSums, DeltaDestination, Side, chunk_digits,
                                           compare, live_rows, source_side,
                                           table_plans)
    from pg_replication.state import LoadedState

    info = describe_tables(conn, schema, [table])[table]
    (plan,) = table_plans(conn, [info], LoadedState())
    plan.target = dest_table or plan.target
    for column in plan.columns:
        column.destination = (columns_as or {}).get(column.name, column.destination)
    ours = source_side(plan, conn, utf8=True)
    if project.destination == "filesystem":
        reader = DeltaDestination(str(project.delta_root / DATASET))
        theirs = reader.side(plan)
    else:
        import duckdb

        reader = duckdb.connect(str(project.duckdb_path), read_only=True)
        present = [row[0] for row in reader.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND "
            "table_name = ?", [DATASET, plan.target]).fetchall()]
        theirs = Side(plan, DuckDBDialect(), lambda sql: reader.execute(sql).fetchall(),
                      f'"{DATASET}"."{plan.target}"', _quoted, present,
                      live_rows(present, _quoted), destination=True)
    try:
        assert theirs is not None, f"{plan.target} is not in the destination"
        sums = ChunkSums.read(plan, ours, theirs, chunk_digits(plan, 1000))
        result = compare(plan, ours, theirs, 10, sums)
        return [] if result.equal else [d.line() for d in result.differences] or [result.line()]
    finally:
        reader.close()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- refusals -----------------------------------------------------------------------------------

EXIT_NO_COPY = 10


def one_error_line(result: CliRunResult) -> str:
    """The single `Error:` line a refused run prints (no traceback)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def refused_then_fixed(conn, project: Project, table: str, reason: str, *tables: str,
                       columns_as: Optional[Dict[str, str]] = None, status: bool = False) -> str:
    """`cdc` refuses naming the table, the reason and the command; running the command fixes it,
    and `table` and `tables` then equal the source. Returns the error line."""
    line = one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert f"run `snapshot --tables {table}`" in line and reason in line, line
    if status:
        assert reason in project.run("status", expect=9).stdout
    project.run("snapshot", "--tables", table)
    project.run("cdc")
    assert_table_matches(conn, project, table, columns_as=columns_as)
    for name in tables:
        assert_table_matches(conn, project, name)
    return line


def items_and_other(conn, rows: int = 20) -> None:
    """`items` (id, a text, n int) with `rows` rows, and a one-row `other` that DDL never touches."""
    run_sql(conn, "CREATE TABLE items (id int PRIMARY KEY, a text, n int)",
            f"INSERT INTO items SELECT g, 'a' || g, g FROM generate_series(1, {rows}) g",
            "CREATE TABLE other (id int PRIMARY KEY, v text)", "INSERT INTO other VALUES (1, 'x')")



def matrix_params(cases, ids, kept) -> list:
    """pytest params of a long parametrized matrix: the ids in `kept` run in `make test`, the
    others carry the `matrix` mark (`make test-matrix`, which CI runs too)."""
    import pytest

    return [pytest.param(*(case if isinstance(case, tuple) else (case,)), id=case_id,
                         marks=() if case_id in kept else pytest.mark.matrix)
            for case, case_id in zip(cases, ids)]


def publish_statistics(conn) -> None:
    """Publishes this session's statistics now (PostgreSQL 15+): a session otherwise publishes
    its counts of updated and deleted rows about a second after it goes idle, and `cdc` checks
    the tables it gets only the inserts of by them (insert_only.py). The flush happens before
    the server answers, so the next run sees them."""
    run_sql(conn, "SELECT pg_stat_force_next_flush()")
