"""Tables the stream carries only the inserts of: an UPDATE or DELETE of one is never silent.

Their rows have no identity PostgreSQL accepts, so they are published for INSERT and TRUNCATE only
(README, "Tables without a key"). Before, `cdc` exited 0 after the application updated or deleted
rows of such a table, and the destination kept the old rows for good.
"""

import psycopg2
import pytest

from tests.test_crash import own_cluster  # noqa: F401 - a server of the module's own, to crash
from tests.test_table_shapes import INSERT_ONLY, PUBLISHED_SHAPES
from tests.tools import (EXIT_NO_COPY, Project, assert_table_matches, matrix_params,
                         one_error_line, publish_statistics, run_sql)

# Every shape that takes only inserts, from the shapes the snapshot publishes.
SHAPES = dict(PUBLISHED_SHAPES)

WRITES = {
    "update": ["UPDATE s SET v = 'changed' WHERE id = 1"],
    "delete": ["DELETE FROM s WHERE id = 2"],
    # A partitioned table: the row moves to another partition (a delete there, an insert here).
    "key update": ["UPDATE s SET id = 40 WHERE id = 1"],
}


def _refused_until_copied(source, project, table: str = "s", *others: str,
                          insert: str = "INSERT INTO s VALUES (7, 'after the copy')") -> str:
    """cdc refuses (exit 10) naming the table and the command, status and verify fail too, the
    slot stays; the command fixes it. Returns the error line."""
    confirmed = project.slot_confirmed_lsn()
    line = one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert f"{table} can take only inserts" in line and "UPDATE or DELETE" in line, line
    assert f"run `snapshot --tables {table}`" in line, line
    assert project.slot_confirmed_lsn() == confirmed
    assert "can take only inserts" in project.run("status", expect=9).stdout
    assert "can take only inserts" in project.run("verify", expect=9).stdout
    project.run("snapshot", "--tables", table)
    run_sql(source, insert)
    project.run("cdc")
    project.run("verify")
    assert_table_matches(source, project, table)  # as a multiset
    for other in others:
        assert_table_matches(source, project, other)
    return line


# Each write on the plain and the partitioned key-less table; an UPDATE on every other shape.
CASES = [(shape, write) for shape in ("no key", "partitioned without key") for write in WRITES]
CASES += [(shape, "update") for shape in sorted(INSERT_ONLY - {"no key", "partitioned without key"})]


@pytest.mark.parametrize("shape,write", matrix_params(
    CASES, [f"{s}-{w}" for s, w in CASES],
    kept={"deferrable key-update"}))
def test_update_or_delete_of_an_insert_only_table_is_refused_until_copied(
        source, duckdb_project, shape, write):
    run_sql(source, *SHAPES[shape], "INSERT INTO s (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
            "CREATE TABLE other (id int PRIMARY KEY, v text)", "INSERT INTO other VALUES (1, 'x')")
    duckdb_project.run("snapshot")
    run_sql(source, "INSERT INTO s VALUES (4, 'd')", "UPDATE other SET v = 'y'", *WRITES[write])
    publish_statistics(source)
    _refused_until_copied(source, duckdb_project, "s", "other")


@pytest.mark.slow
def test_inserts_alone_never_refuse(source, project):
    run_sql(source, "CREATE TABLE log (at int, what text)", "INSERT INTO log VALUES (1, 'a')")
    # Updated and deleted before the copy: those are in it.
    run_sql(source, "UPDATE log SET what = 'b'", "INSERT INTO log VALUES (1, 'a'), (2, 'c')",
            "DELETE FROM log WHERE what = 'c'")
    publish_statistics(source)
    project.run("snapshot")
    for round_number in range(3):
        run_sql(source, f"INSERT INTO log SELECT g, 'r{round_number}' FROM generate_series(1, 50) g")
        publish_statistics(source)
        project.run("cdc")
    project.run("verify")
    assert_table_matches(source, project, "log")


@pytest.mark.slow
def test_a_delete_cascading_from_a_keyed_table_is_seen(source, duckdb_project):
    run_sql(source, "CREATE TABLE parent (id int PRIMARY KEY)",
            "CREATE TABLE child (parent_id int REFERENCES parent ON DELETE CASCADE, v text)",
            "INSERT INTO parent VALUES (1), (2)",
            "INSERT INTO child VALUES (1, 'a'), (1, 'a'), (2, 'b')")
    duckdb_project.run("snapshot")
    run_sql(source, "DELETE FROM parent WHERE id = 1")
    publish_statistics(source)
    _refused_until_copied(source, duckdb_project, "child", "parent",
                          insert="INSERT INTO child VALUES (2, 'after the copy')")


@pytest.mark.slow
def test_a_rolled_back_update_is_refused_rather_than_trusted(source, duckdb_project):
    """The statistics count rows a rolled-back statement touched: a refusal, never a wrong
    destination (README)."""
    run_sql(source, "CREATE TABLE s (id int, v text)", "INSERT INTO s VALUES (1, 'a')")
    duckdb_project.run("snapshot")
    run_sql(source, "BEGIN", "UPDATE s SET v = 'never'", "ROLLBACK")
    publish_statistics(source)
    _refused_until_copied(source, duckdb_project)


@pytest.mark.parametrize("reset", ["SELECT pg_stat_reset()",
                                   "SELECT pg_stat_reset_single_table_counters('s'::regclass)"])
@pytest.mark.slow
def test_statistics_reset_since_the_copy_is_refused(source, duckdb_project, reset):
    """Even when the count after the reset is back at the recorded one."""
    run_sql(source, "CREATE TABLE s (id int, v text)", "INSERT INTO s VALUES (1, 'a')",
            "UPDATE s SET v = 'before the copy'")
    publish_statistics(source)
    duckdb_project.run("snapshot")
    run_sql(source, reset, "UPDATE s SET v = 'after the reset'")
    publish_statistics(source)
    line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    assert "s: the server's statistics were reset since the copy" in line, line
    assert "run `snapshot --tables s`" in line, line
    duckdb_project.run("snapshot", "--tables", "s")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "s")


def test_a_server_that_counts_nothing_is_refused(source, duckdb_project):
    run_sql(source, "CREATE TABLE s (id int, v text)", "INSERT INTO s VALUES (1, 'a')")
    duckdb_project.run("snapshot")
    database = source.get_dsn_parameters()["dbname"]
    run_sql(source, f'ALTER DATABASE "{database}" SET track_counts = off')  # new sessions
    line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    assert "s: the server counts no changes (track_counts = off)" in line, line


def test_a_crash_of_the_server_that_discards_the_counts_is_refused(own_cluster, tmp_path):
    """A crash discards every count: updates made before it would leave the count where the copy
    recorded it (0 here). A clean restart keeps the counts and refuses nothing."""
    source = psycopg2.connect(own_cluster.url)
    source.autocommit = True
    project = Project(tmp_path, own_cluster.url)
    run_sql(source, "CREATE TABLE kl (a int, b text)",
            "INSERT INTO kl SELECT g, 'x' FROM generate_series(1, 5) g")
    project.run("snapshot")
    source.close()
    own_cluster.pg_ctl("restart", "-m", "fast")
    project.run("cdc")
    source = psycopg2.connect(own_cluster.url)
    source.autocommit = True
    run_sql(source, "UPDATE kl SET b = 'changed' WHERE a <= 2", "DELETE FROM kl WHERE a = 5")
    publish_statistics(source)
    source.close()
    own_cluster.pg_ctl("stop", "-m", "immediate")
    own_cluster.pg_ctl("start")
    line = one_error_line(project.run("cdc", expect=EXIT_NO_COPY))
    assert "kl: the server's statistics were reset since the copy" in line, line


@pytest.mark.slow
def test_only_the_tables_copied_again_are_cleared(source, duckdb_project):
    run_sql(source, "CREATE TABLE a (v text)", "CREATE TABLE b (v text)",
            "INSERT INTO a VALUES ('x')", "INSERT INTO b VALUES ('x')")
    duckdb_project.run("snapshot")
    run_sql(source, "UPDATE a SET v = 'y'", "DELETE FROM b")
    publish_statistics(source)
    line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    assert "tables a, b can take only inserts" in line and "`snapshot --tables a,b`" in line, line
    duckdb_project.run("snapshot", "--tables", "a")
    line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    assert "table b can take only inserts" in line, line
    duckdb_project.run("snapshot", "--tables", "b")
    duckdb_project.run("cdc")
    for table in ("a", "b"):
        assert_table_matches(source, duckdb_project, table)
