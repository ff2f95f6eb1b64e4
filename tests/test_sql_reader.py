"""`snapshot --reader sql_database`: dlt's sql_database reads the copy inside the exported snapshot
(the hand-off stays exact), and the destination tables equal those of the COPY reader, for Pagila
and the type matrix, with each backend that can join a snapshot."""

import subprocess
from pathlib import Path

import duckdb
import pytest

from pg_replication.catalog import column_kinds, describe_tables, load_type_catalog
from pg_replication.connect import connect
from pg_replication.slots import create_slot_with_snapshot
from pg_replication.sql_reader import SqlDatabaseReader
from tests.test_type_parity import ALL_TYPES, VALUES
from tests.tools import DATASET, Project, one_error_line, run_sql


def _snapshot_with(project: Project, reader: str, *extra: str) -> None:
    project.run("snapshot", "--reader", reader, *extra)


def _tables(project: Project) -> dict:
    """Every destination table's rows, without `_pg_lsn` (each snapshot has its own hand-off)."""
    found = {}
    with duckdb.connect(str(project.duckdb_path), read_only=True) as con:
        names = [row[0] for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? "
            "AND table_name NOT LIKE '_dlt%'", [DATASET]).fetchall()]
        for name in names:
            cursor = con.execute(f'SELECT * EXCLUDE (_pg_lsn) FROM {DATASET}."{name}"')
            columns = [(d[0], str(d[1])) for d in cursor.description]
            found[name] = (columns, sorted(map(repr, cursor.fetchall())))
    return found


def _two_projects(tmp_path: Path, source_url: str):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return Project(tmp_path / "a", source_url), Project(tmp_path / "b", source_url)


# The other backends in `make test-matrix`: the same conversion, slower readers.
@pytest.mark.parametrize("backend", ["pyarrow", pytest.param("sqlalchemy", marks=pytest.mark.matrix),
                                     pytest.param("pandas", marks=pytest.mark.matrix)])
def test_type_matrix_lands_the_same_with_either_reader(source, source_url, tmp_path, backend):
    run_sql(source, ALL_TYPES, VALUES.format(id=1, nulls_id=2, special_id=3))
    by_copy, by_dlt = _two_projects(tmp_path, source_url)
    by_dlt.env["SOURCES__PG_REPLICATION__SQL_DATABASE_BACKEND"] = backend
    _snapshot_with(by_copy, "copy")
    _snapshot_with(by_dlt, "sql_database")
    copied, read = _tables(by_copy), _tables(by_dlt)
    assert copied == read and copied["everything"][1], (copied, read)
    # The stream goes on from the sql_database copy's hand-off like from any other.
    run_sql(source, "UPDATE everything SET c_text = 'after' WHERE id = 1")
    by_dlt.run("cdc")
    assert "'after'" in repr(by_dlt.dest_rows("everything"))


@pytest.mark.matrix  # in `make test-matrix`: a minute of Pagila twice
def test_pagila_lands_the_same_with_either_reader(source, source_url, tmp_path, pagila_dir):
    for name in ("pagila-schema.sql", "pagila-data.sql"):
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", source_url, "-f",
                        str(pagila_dir / name)], check=True, capture_output=True)
    by_copy, by_dlt = _two_projects(tmp_path, source_url)
    _snapshot_with(by_copy, "copy")
    _snapshot_with(by_dlt, "sql_database")
    copied, read = _tables(by_copy), _tables(by_dlt)
    assert sorted(copied) == sorted(read) and len(copied) >= 15
    for name in copied:
        assert copied[name] == read[name], name


def test_sql_database_reads_inside_the_exported_snapshot(source, source_url):
    """Rows committed after the snapshot was exported are not in what the reader returns."""
    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g")
    exporter, handoff, name = create_slot_with_snapshot(source_url, "sql_reader_probe",
                                                        temporary=True)
    quoting = connect(source_url)
    try:
        run_sql(source, "INSERT INTO t VALUES (11, 'after the snapshot')",
                "UPDATE t SET v = 'changed after' WHERE id = 1")
        table = describe_tables(source, "public", ["t"])["t"]
        kinds = column_kinds(table, load_type_catalog(source))
        reader = SqlDatabaseReader(source_url, name, quoting, chunk_size=3)
        try:
            rows = [row for batch in reader.read_table(table, kinds, handoff)
                    for row in batch.to_pylist()]
        finally:
            reader.close()
    finally:
        quoting.close()
        exporter.close()
    assert sorted(row["id"] for row in rows) == list(range(1, 11))
    assert {row["v"] for row in rows if row["id"] == 1} == {"v1"}
    assert {row["_pg_lsn"] for row in rows} == {handoff}


def test_a_backend_outside_the_snapshot_is_refused(source, duckdb_project: Project):
    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY)")
    duckdb_project.env["SOURCES__PG_REPLICATION__SQL_DATABASE_BACKEND"] = "connectorx"
    line = one_error_line(duckdb_project.run("snapshot", "--reader", "sql_database", expect=2))
    assert "connectorx" in line and "outside" in line, line


