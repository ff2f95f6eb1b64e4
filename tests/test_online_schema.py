"""`snapshot --online` when the tables change shape, get dropped, renamed or truncated by
partition during their copy, and rows whose keys are stored out of line (chunks.py)."""

import random
import threading

import psycopg2
import pytest

from tests.test_online_snapshot import _big_table, _online_progress, _wait_for
from tests.tools import assert_table_matches, run_sql


def test_rows_with_toasted_keys_changed_during_the_copy_are_not_lost(source, project):
    """An update that leaves a TOASTed key unchanged does not send the key: the chunk of its
    window cannot drop it, and is read again instead (it was dropped whole while its cursor
    moved on: its rows never reached the destination)."""
    run_sql(source, "CREATE TABLE docs (path text PRIMARY KEY, hits int NOT NULL)",
            "ALTER TABLE docs ALTER COLUMN path SET STORAGE EXTERNAL",  # stored out of line
            "INSERT INTO docs SELECT lpad(g::text, 6, '0') || repeat('/segment', 300), 0 "
            "FROM generate_series(1, 1500) g", "ANALYZE docs")
    stop = threading.Event()

    def touch() -> None:
        conn = psycopg2.connect(project.source_url)
        conn.autocommit = True
        toucher = random.Random(3)
        while not stop.wait(0.7):
            with conn.cursor() as cur:
                cur.execute("UPDATE docs SET hits = hits + 1 WHERE path LIKE %s",
                            (f"{toucher.randint(1, 1500):06d}%",))
        conn.close()

    writer = threading.Thread(target=touch, daemon=True)
    writer.start()
    try:
        project.run("snapshot", "--online", "--chunk-rows", "100")
    finally:
        stop.set()
        writer.join()
    project.run("cdc")
    assert_table_matches(source, project, "docs")


def test_every_partition_truncated_by_name_during_an_online_copy_is_refused(source, project):
    run_sql(source,
            "CREATE TABLE sales (id int, region int, amount int, PRIMARY KEY (id, region)) "
            "PARTITION BY LIST (region)",
            "CREATE TABLE sales_a PARTITION OF sales FOR VALUES IN (1)",
            "CREATE TABLE sales_b PARTITION OF sales FOR VALUES IN (2)",
            "INSERT INTO sales SELECT g, 1 + g % 2, g FROM generate_series(1, 6000) g",
            "ANALYZE sales")
    copying = project.start("snapshot", "--online", "--chunk-rows", "100")
    _wait_for(lambda: (_online_progress(project).get("sales") or {}).get("chunks", 0) >= 2,
              "two chunks of the partitioned table")
    run_sql(source, "TRUNCATE sales_a, sales_b")  # by name: the stream carries no TRUNCATE
    _, stderr = copying.communicate(timeout=300)
    assert copying.returncode == 10, stderr
    assert "every partition was truncated or rewritten by name" in stderr, stderr
    assert "`snapshot --tables sales`" in stderr


def test_chunk_options_without_online_are_refused(project):
    for option in (["--chunk-rows", "100"], ["--max-seconds", "5"]):
        result = project.run("snapshot", *option, expect=2)
        assert result.stderr.strip() == ("Error: --chunk-rows and --max-seconds go with "
                                         "--online"), result.stderr


@pytest.mark.slow
def test_a_table_dropped_during_its_online_copy_ends_that_copy_only(source, project):
    """The copy of a dropped table ends (the destination keeps what it got, as for any dropped
    table); it used to fail every later run ("unknown table"), after emptying the next table a
    `snapshot --online` registered."""
    for name in ("a", "b", "c"):
        run_sql(source, f"CREATE TABLE {name} (id int PRIMARY KEY, v text)",
                f"INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, 3000) g")
    project.run("snapshot", "--online", "--tables", "a,b", "--chunk-rows", "10",
                "--max-seconds", "0.5")
    assert {"a", "b"} <= set(_online_progress(project))
    project.run("snapshot", "--tables", "c")
    run_sql(source, "DROP TABLE a", "UPDATE c SET v = 'changed' WHERE id <= 10")
    result = project.run("snapshot", "--online", "--tables", "c", "--chunk-rows", "1000")
    assert "the online copy of public.a ended unfinished: the table was dropped" in result.stdout
    assert _online_progress(project) == {}
    project.run("cdc")
    for name in ("b", "c"):
        assert_table_matches(source, project, name)
    assert "✗" not in project.run("verify").stdout


@pytest.mark.slow
def test_a_schema_change_that_needs_a_new_copy_restarts_the_online_copy(source, project):
    """After such a change, the command `verify` names (`snapshot --online --tables t`) went on
    from the old cursor and was refused again, every time."""
    _big_table(source, rows=3000)
    project.run("snapshot", "--online", "--chunk-rows", "100", "--max-seconds", "0.5")
    assert "big" in _online_progress(project)
    run_sql(source, "ALTER TABLE big ADD COLUMN flag int DEFAULT 7")  # rows get 7, no WAL
    refused = project.run("cdc", "--max-seconds", "1", expect=10)
    assert "`snapshot --tables big`" in refused.stderr
    unfinished = project.run("verify", expect=9).stdout
    assert "`snapshot --online --tables big` finishes it" in unfinished
    project.run("snapshot", "--online", "--tables", "big", "--chunk-rows", "1000")
    project.run("cdc")
    assert_table_matches(source, project, "big")


def test_a_schema_change_carried_during_an_online_run_is_named_in_its_summary(source, project):
    _big_table(source, rows=2000)
    project.run("snapshot", "--online", "--chunk-rows", "100", "--max-seconds", "0.5")
    run_sql(source, "ALTER TABLE big DROP COLUMN note")
    result = project.run("snapshot", "--online", "--tables", "big", "--chunk-rows", "500")
    summary = next(line for line in result.stdout.splitlines() if line.startswith("cdc:"))
    assert "schema changes:" in summary and "note" in summary, summary
    project.run("cdc")
    assert_table_matches(source, project, "big")


def test_a_table_renamed_during_its_online_copy_does_not_end_it(source, project):
    """A renamed table is not gone (its OID is there): its copy is not ended, which would leave
    the rows past the cursor out for good should the table get its name back."""
    _big_table(source, rows=2000)
    project.run("snapshot", "--online", "--chunk-rows", "100", "--max-seconds", "0.5")
    run_sql(source, "ALTER TABLE big RENAME TO huge")
    refused = project.run("cdc", "--max-seconds", "2", expect=10)
    assert "run `snapshot --tables huge`" in refused.stderr, refused.stderr
    assert "big" in _online_progress(project)  # not ended: the rows past its cursor are missing
    run_sql(source, "ALTER TABLE huge RENAME TO big")
    project.run("snapshot", "--online", "--tables", "big", "--chunk-rows", "1000")
    project.run("cdc")
    assert_table_matches(source, project, "big")
