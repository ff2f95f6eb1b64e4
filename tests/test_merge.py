"""The pipeline's own merge (merges.py): the same semantics on DuckDB (the MERGE statement
Databricks gets too) and on local Delta (deltalake's merge API), case by case, then end to end
through `cdc` against the real server.

Each case: a destination table, one load of staged changes, the rows expected afterwards.
"""

import datetime as dt
from typing import Any, Dict, List, Optional

import pyarrow as pa
import pytest

from pg_replication.merges import MergePlan, first_rows, merge_into_delta, merge_statement
from tests.tools import Project, assert_table_matches, run_sql

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
# A table with columns named like the aliases dlt's statements use (`d`, `s`) and like the
# usual ones (`source`, `target`).
HARD = ["id", "d", "s", "source", "target", "_pg_lsn", "_pg_change_lsn", "_pg_commit_ts",
        "_pg_deleted"]
SOFT = HARD[:-1] + ["_pg_deleted_at"]
SCHEMA = {"id": pa.int64(), "d": pa.string(), "s": pa.string(), "source": pa.int64(),
          "target": pa.int64(), "_pg_lsn": pa.int64(), "_pg_change_lsn": pa.int64(),
          "_pg_commit_ts": pa.timestamp("us", tz="UTC"), "_pg_deleted": pa.bool_(),
          "_pg_deleted_at": pa.timestamp("us", tz="UTC")}


def row(id: int, d: Optional[str], lsn: int, change: Optional[int], deleted: bool = False,
        soft: bool = False) -> Dict[str, Any]:
    values = {"id": id, "d": d, "s": d and d.upper(), "source": lsn, "target": change,
              "_pg_lsn": lsn, "_pg_change_lsn": change, "_pg_commit_ts": T0}
    if soft:
        values["_pg_deleted_at"] = T0 if deleted else None
    else:
        values["_pg_deleted"] = deleted
    if deleted:  # a delete carries the key only
        values.update(d=None, s=None, source=None, target=None)
    return values


def snap(id: int, d: str, lsn: int = 100, soft: bool = False) -> Dict[str, Any]:
    """A snapshot row: the hand-off LSN, change LSN 0."""
    return row(id, d, lsn, 0, soft=soft)


# (target rows, staged changes, expected {id: d} afterwards)
CASES = {
    "double update in one transaction: the later change wins": (
        [snap(1, "a")], [row(1, "b", 200, 150), row(1, "c", 200, 160)], {1: "c"}),
    "changes listed out of order still apply in order": (
        [snap(1, "a")], [row(1, "c", 300, 160), row(1, "b", 200, 170)], {1: "c"}),
    "primary key change: old key deleted, new key inserted": (
        [snap(1, "a"), snap(2, "b")], [row(1, None, 200, 150, deleted=True),
                                       row(10, "a", 200, 150)], {2: "b", 10: "a"}),
    "insert then delete in one load leaves nothing": (
        [snap(1, "a")], [row(5, "x", 200, 150), row(5, None, 200, 160, deleted=True)], {1: "a"}),
    "delete of an unknown key leaves nothing": (
        [snap(1, "a")], [row(9, None, 200, 150, deleted=True)], {1: "a"}),
    "delete then re-insert of a key": (
        [snap(1, "a")], [row(1, None, 200, 150, deleted=True), row(1, "again", 300, 250)],
        {1: "again"}),
    "an older replayed update never overwrites a newer row": (
        [snap(1, "new", lsn=500)], [row(1, "old", 200, 150)], {1: "new"}),
    "an older replayed delete never removes a newer row": (
        [snap(1, "new", lsn=500)], [row(1, None, 200, 150, deleted=True)], {1: "new"}),
    "a change at the hand-off LSN itself is newer than the snapshot row": (
        [snap(1, "a", lsn=200)], [row(1, "b", 200, 150)], {1: "b"}),
    "a row written before _pg_change_lsn existed is ordered by _pg_lsn": (
        [row(1, "old", 200, None)], [row(1, "b", 300, 250)], {1: "b"}),
}


def _table(rows: List[Dict[str, Any]], columns: List[str]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([(c, SCHEMA[c]) for c in columns]))


def _duckdb_merge(target: List[dict], staged: List[dict], columns: List[str],
                  marker: str, times: int = 1) -> Dict[int, dict]:
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE SCHEMA staging")
    target_table, staged_table = _table(target, columns), _table(staged, columns)  # noqa: F841
    con.execute("CREATE TABLE t AS SELECT * FROM target_table")
    con.execute("CREATE TABLE staging.t AS SELECT * FROM staged_table")
    plan = MergePlan(columns, ["id"], marker)
    for _ in range(times):
        con.execute(merge_statement(plan, '"t"', '"staging"."t"', lambda n: f'"{n}"'))
    cursor = con.execute("SELECT * FROM t")
    names = [d[0] for d in cursor.description]
    return {r[0]: dict(zip(names, r)) for r in cursor.fetchall()}


def _delta_merge(tmp_path, target: List[dict], staged: List[dict], columns: List[str],
                 marker: str, times: int = 1) -> Dict[int, dict]:
    from deltalake import DeltaTable, write_deltalake

    plan = MergePlan(columns, ["id"], marker)
    location = str(tmp_path / "t")
    write_deltalake(location, _table(target, columns))
    for _ in range(times):
        merge_into_delta(DeltaTable(location), _table(staged, columns), plan)
    return {r["id"]: r for r in DeltaTable(location).to_pyarrow_table().to_pylist()}


MERGES = {"duckdb": lambda tmp, *a, **k: _duckdb_merge(*a, **k), "delta": _delta_merge}


@pytest.mark.parametrize("engine", list(MERGES))
@pytest.mark.parametrize("case", list(CASES))
def test_merge_case(case, engine, tmp_path):
    target, staged, expected = CASES[case]
    merged = MERGES[engine](tmp_path, target, staged, HARD, "_pg_deleted")
    assert {k: r["d"] for k, r in merged.items()} == expected
    for key, merged_row in merged.items():  # the other columns came along with `d`
        assert merged_row["s"] == (merged_row["d"] and merged_row["d"].upper())


@pytest.mark.parametrize("engine", list(MERGES))
def test_replaying_a_load_changes_nothing(engine, tmp_path):
    target = [snap(i, f"v{i}") for i in range(1, 6)]
    staged = [row(1, "b", 200, 150), row(2, None, 200, 151, deleted=True), row(7, "n", 200, 152),
              row(1, "c", 300, 250)]
    once = MERGES[engine](tmp_path / "once", target, staged, HARD, "_pg_deleted")
    twice = MERGES[engine](tmp_path / "twice", target, staged, HARD, "_pg_deleted", times=2)
    assert once == twice
    assert {k: r["d"] for k, r in once.items()} == {1: "c", 3: "v3", 4: "v4", 5: "v5", 7: "n"}


@pytest.mark.parametrize("engine", list(MERGES))
def test_soft_delete_keeps_the_last_values_and_marks_the_row(engine, tmp_path):
    target = [snap(1, "a", soft=True), snap(2, "b", soft=True)]
    staged = [row(1, None, 200, 150, deleted=True, soft=True),  # values not sent: kept
              row(9, None, 200, 151, deleted=True, soft=True),  # unknown key: nothing
              row(2, None, 200, 152, deleted=True, soft=True),
              row(2, "back", 300, 250, soft=True)]  # deleted, then inserted again
    merged = MERGES[engine](tmp_path, target, staged, SOFT, "_pg_deleted_at")
    assert set(merged) == {1, 2}
    assert merged[1]["d"] == "a" and merged[1]["_pg_deleted_at"] == T0
    assert merged[1]["_pg_lsn"] == 200 and merged[1]["source"] == 100  # meta columns only
    assert merged[2]["d"] == "back" and merged[2]["_pg_deleted_at"] is None


@pytest.mark.parametrize("engine", list(MERGES))
def test_a_table_whose_delete_mode_was_switched_takes_both_kinds_of_delete(engine, tmp_path):
    """`deletes` switched from hard to soft (or back) on a loaded pipeline: the table has both
    marker columns, `_pg_deleted` still the hard-delete one. A soft delete then carried NULL in
    `_pg_deleted` and was merged as an update that wiped the row's values (exit 0)."""
    both = HARD + ["_pg_deleted_at"]
    target = [dict(snap(i, f"v{i}"), _pg_deleted_at=None) for i in (1, 2, 3)]
    soft_delete = dict(row(1, None, 200, 150, deleted=True, soft=True), _pg_deleted=None)
    hard_delete = dict(row(2, None, 200, 151, deleted=True), _pg_deleted_at=None)
    unknown = dict(row(9, None, 200, 152, deleted=True, soft=True), _pg_deleted=None)
    merged = MERGES[engine](tmp_path, target, [soft_delete, hard_delete, unknown], both,
                            "_pg_deleted")
    assert set(merged) == {1, 3}
    assert merged[1]["d"] == "v1" and merged[1]["_pg_deleted_at"] == T0  # kept, marked
    assert merged[3]["d"] == "v3" and merged[3]["_pg_deleted_at"] is None


def test_a_delta_table_created_by_a_merge_starts_with_the_live_rows():
    staged = _table([row(1, "a", 200, 150), row(1, "b", 200, 160),
                     row(2, "x", 200, 170), row(2, None, 200, 180, deleted=True),
                     row(3, None, 200, 190, deleted=True)], HARD)
    rows = first_rows(staged, MergePlan(HARD, ["id"], "_pg_deleted")).to_pylist()
    assert [(r["id"], r["d"]) for r in rows] == [(1, "b")]


def test_plan_only_for_keyed_tables_of_the_pipeline():
    def column(name: str, **hints: Any) -> Dict[str, Any]:
        return {"name": name, "data_type": "bigint", **hints}

    keyed = {"columns": {"id": column("id", primary_key=True), "_pg_lsn": column("_pg_lsn"),
                         "_pg_deleted": column("_pg_deleted", hard_delete=True),
                         "pending": {"name": "pending"}}}
    plan = MergePlan.for_table(keyed)
    assert plan is not None and plan.hard_deletes and plan.keys == ["id"]
    assert plan.columns == ["id", "_pg_lsn", "_pg_deleted"]  # no column without a type
    assert MergePlan.for_table({"columns": {"id": column("id", primary_key=True)}}) is None
    keyless = {"columns": {"id": column("id"), "_pg_lsn": column("_pg_lsn")}}
    assert MergePlan.for_table(keyless) is None


# -- end to end --------------------------------------------------------------------------------

@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)


def test_columns_named_like_aliases_and_every_case_in_one_load(source, project):
    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY, d text, s text, source int, "
                    "target int, rn int)",
            "INSERT INTO t SELECT g, 'd' || g, 's' || g, g, g, g FROM generate_series(1, 10) g")
    project.run("snapshot")
    run_sql(source,
            "BEGIN; UPDATE t SET d = 'first' WHERE id = 1; UPDATE t SET d = 'second', s = 'x' "
            "WHERE id = 1; COMMIT",
            "UPDATE t SET id = 100 WHERE id = 2",
            "BEGIN; INSERT INTO t VALUES (50, 'short', 'lived', 0, 0, 0); "
            "DELETE FROM t WHERE id = 50; COMMIT",
            "DELETE FROM t WHERE id = 3",
            "BEGIN; DELETE FROM t WHERE id = 4; INSERT INTO t VALUES (4, 'back', 'again', 4, 4, 4);"
            " COMMIT")
    project.run("cdc")
    assert_table_matches(source, project, "t")
    project.run("cdc")  # nothing new: unchanged
    assert_table_matches(source, project, "t")


def test_deferrable_key_taken_before_another_transaction_frees_it(source, source_url, project):
    """Transaction A inserts key 1 while B still holds it (the unique check is deferred to
    A's commit); B deletes it and commits first. In WAL order A's insert comes before B's
    delete, in commit order after: the row exists in the source. Ordering a load's changes by
    their own WAL position deleted it in the destination."""
    import psycopg2

    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text)",
            # a deferrable key cannot be the replica identity: FULL sends whole rows
            "ALTER TABLE t REPLICA IDENTITY FULL",
            "INSERT INTO t VALUES (1, 'old'), (2, 'other')")
    project.run("snapshot")
    a = psycopg2.connect(source_url)
    try:
        with a.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1, 'new')")  # A: key 1 twice until B commits
        run_sql(source, "DELETE FROM t WHERE id = 1 AND v = 'old'")  # B, committed first
        a.commit()
    finally:
        a.close()
    assert [r for r in _source_rows(source)] == [(1, "new"), (2, "other")]
    project.run("cdc")
    assert_table_matches(source, project, "t")


def _source_rows(conn) -> List[tuple]:
    with conn.cursor() as cur:
        cur.execute("SELECT id, v FROM t ORDER BY id")
        return cur.fetchall()


def test_a_delta_table_copied_again_is_never_empty_in_between(source, tmp_path, source_url):
    """`snapshot --tables` of a table already loaded: every Delta version a reader can open
    holds the old rows or the new ones (dlt overwrites an open table in one commit)."""
    from deltalake import DeltaTable

    project = Project(tmp_path, source_url, destination="filesystem")
    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 50) g")
    project.run("snapshot")
    run_sql(source, "UPDATE t SET v = 'b'", "INSERT INTO t VALUES (51, 'b')")
    project.run("snapshot", "--tables", "t")
    assert_table_matches(source, project, "t")
    path = str(project.delta_root / "bronze_postgres_raw" / "t")
    latest = DeltaTable(path).version()
    counts = [DeltaTable(path, version=v).to_pyarrow_table().num_rows
              for v in range(latest + 1)]
    assert counts[-1] == 51 and all(count in (50, 51) for count in counts[1:]), counts
