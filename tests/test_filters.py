"""Column lists and row filters (PostgreSQL 15+): `exclude_columns` keeps columns on the source
(never in a staged file), `row_filters` keeps rows out, in the copy and the stream alike; what
would make the application's writes fail is refused before the publication changes; a change of
the configuration or the publication asks for a new copy."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.tools import EXIT_NO_COPY, Project, one_error_line, run_sql


@pytest.fixture(autouse=True)
def _postgresql_15(source):
    if source.server_version < 150000:
        pytest.skip("column lists and row filters need PostgreSQL 15+")


def _configure(project: Project, excluded=None, filters=None) -> None:
    for key, value in (("EXCLUDE_COLUMNS", excluded), ("ROW_FILTERS", filters)):
        name = f"SOURCES__PG_REPLICATION__{key}"
        if value is None:
            project.env.pop(name, None)
        else:
            project.env[name] = json.dumps(value)


def _create(conn) -> None:
    run_sql(conn,
            "CREATE TABLE people (id int PRIMARY KEY, name text, ssn text, born date)",
            "INSERT INTO people SELECT g, 'p' || g, 'ssn-' || g, date '1980-01-01' + g "
            "FROM generate_series(1, 200) g",
            "CREATE TABLE events (at int, region text, payload text)",  # no key
            "INSERT INTO events SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'x' || g "
            "FROM generate_series(1, 40) g")


def _held(project: Project, table: str, columns) -> list:
    return sorted(repr({c: row[c] for c in columns}) for row in project.dest_rows(table))


def _staged_columns(project: Project) -> set:
    """Every column name of every parquet file dlt wrote for this pipeline (kept load packages)."""
    names = set()
    for path in Path(project.env["DLT_DATA_DIR"]).rglob("*.parquet"):
        names |= set(pq.read_schema(path).names)
    return names


def test_excluded_columns_and_filtered_rows_stay_on_the_source(source, duckdb_project: Project):
    project = duckdb_project
    _create(source)
    _configure(project, excluded={"people": ["ssn", "born"]},
               filters={"people": "id <= 150", "public.events": "region = 'eu'"})
    project.run("snapshot")
    run_sql(source,
            "UPDATE people SET name = 'renamed', ssn = 'new-ssn' WHERE id IN (3, 160)",
            "UPDATE people SET id = id + 1000 WHERE id = 5",  # leaves the filter: a delete
            "UPDATE people SET id = 0 WHERE id = 170",  # enters it: an insert
            "DELETE FROM people WHERE id IN (10, 190)",
            "INSERT INTO people VALUES (201, 'out', 's', null), (-1, 'in', 's', null)",
            "INSERT INTO events VALUES (100, 'eu', 'in'), (101, 'us', 'out')")
    project.run("cdc")
    kept_columns = ["id", "name"]
    with source.cursor() as cur:
        cur.execute("SELECT id, name FROM people WHERE id <= 150 ORDER BY id")
        want = sorted(repr({"id": i, "name": n}) for i, n in cur.fetchall())
        cur.execute("SELECT at, region, payload FROM events WHERE region = 'eu'")
        want_events = sorted(repr({"at": a, "region": r, "payload": p})
                             for a, r, p in cur.fetchall())
    assert _held(project, "people", kept_columns) == want
    assert _held(project, "events", ["at", "region", "payload"]) == want_events
    assert "ssn" not in project.dest_column_types("people")
    assert "born" not in project.dest_column_types("people")
    assert not {"ssn", "born"} & _staged_columns(project)
    project.run("verify")


def test_what_would_fail_the_applications_writes_is_refused(source, duckdb_project: Project):
    project = duckdb_project
    _create(source)
    _configure(project, excluded={"people": ["id"]})
    line = one_error_line(project.run("snapshot", expect=2))
    assert "people" in line and "id is part of its key" in line, line
    _configure(project, filters={"people": "name <> 'x'"})
    line = one_error_line(project.run("snapshot", expect=2))
    assert "name, outside its key" in line, line
    # Rolled back: the application's UPDATE and DELETE still work.
    run_sql(source, "UPDATE people SET name = 'still works' WHERE id = 1",
            "DELETE FROM people WHERE id = 2")
    # A table without a key publishes inserts only: any column may filter it.
    project.env["SOURCES__PG_REPLICATION__TABLE_NAMES"] = "events"
    _configure(project, filters={"events": "region = 'us'"}, excluded={"events": ["payload"]})
    project.run("snapshot")
    run_sql(source, "INSERT INTO events VALUES (500, 'us', 'p'), (501, 'eu', 'p')")
    project.run("cdc")
    assert sorted(r["at"] for r in project.dest_rows("events")) == list(range(1, 41, 2)) + [500]
    _configure(project, excluded={"nosuch": ["a"]})
    line = one_error_line(project.run("snapshot", expect=2))
    assert "public.nosuch" in line, line
    # cdc checks the names too: a typo added later must not let a column out unnoticed.
    _configure(project, filters={"events": "region = 'us'"}, excluded={"event": ["payload"]})
    line = one_error_line(project.run("cdc", expect=2))
    assert "public.event," in line, line
    # A condition the server refuses is one line naming the setting (nothing changed).
    _configure(project, filters={"events": "region = "})
    line = one_error_line(project.run("snapshot", "--tables", "events", expect=2))
    assert "refused the exclude_columns or row_filters of events" in line, line


@pytest.mark.slow
def test_a_changed_configuration_or_publication_asks_for_a_copy(source, duckdb_project: Project):
    project = duckdb_project
    _create(source)
    project.env["SOURCES__PG_REPLICATION__TABLE_NAMES"] = "people"
    _configure(project, excluded={"people": ["ssn"]})
    project.run("snapshot")
    # One more column to keep on the source: the copy holds it, so a new copy is needed.
    _configure(project, excluded={"people": ["ssn", "born"]})
    line = one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert "exclude_columns or row_filters changed" in line and "--tables people" in line, line
    project.run("snapshot", "--tables", "people")
    project.run("cdc")
    # A column added later is not in the column list: refused until a copy publishes it.
    run_sql(source, "ALTER TABLE people ADD COLUMN email text",
            "UPDATE people SET email = 'e' WHERE id = 1")
    line = one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert "column list is not the configured one" in line, line
    project.run("snapshot", "--tables", "people")
    run_sql(source, "UPDATE people SET email = 'e2' WHERE id = 2")
    project.run("cdc")
    emails = {r["id"]: r["email"] for r in project.dest_rows("people")}
    assert emails[1] == "e" and emails[2] == "e2"
    # The key changes under the column list (REPLICA IDENTITY FULL needs every column): the
    # application's UPDATE fails until the next run takes the list off, and refuses.
    run_sql(source, "ALTER TABLE people REPLICA IDENTITY FULL")
    with pytest.raises(Exception, match="does not cover the replica identity"):
        run_sql(source, "UPDATE people SET name = 'blocked' WHERE id = 3")
    line = one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert "now sends them whole" in line and "--tables people" in line, line
    run_sql(source, "UPDATE people SET name = 'works again' WHERE id = 3")
    run_sql(source, "ALTER TABLE people REPLICA IDENTITY DEFAULT")
    project.run("snapshot", "--tables", "people")
    project.run("cdc")
    # An admin's change of the filter is found too.
    run_sql(source, f"ALTER PUBLICATION {project.pub} SET TABLE people (id, name) WHERE (id < 5)")
    line = one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert "people" in line, line
    assert "people" in project.run("status", expect=9).stdout
