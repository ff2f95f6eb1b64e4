"""`snapshot --online`: keyed tables copied in chunks while the change stream keeps being applied
(chunks.py). Every test writes into the table while it is copied, into chunks already read, being
read and not read yet, and ends comparing the destination with the source value by value."""

import json
import random
import re
import signal
import threading
import time

import psycopg2
import pytest

from tests.tools import Project, assert_table_matches, run_sql

ROWS = 6_000
CHUNK_ROWS = "300"


def _big_table(conn, rows: int = ROWS) -> None:
    run_sql(conn,
            "CREATE TABLE big (id int PRIMARY KEY, grp int NOT NULL, note text, "
            "body text, added timestamptz DEFAULT now())",
            "ALTER TABLE big ALTER COLUMN body SET STORAGE EXTERNAL",
            f"INSERT INTO big (id, grp, note) SELECT g, g % 7, 'row ' || g "
            f"FROM generate_series(1, {rows}) g",
            # a few TOASTed values: an update that leaves them unchanged sends no value
            "UPDATE big SET body = repeat(md5(id::text), 200) WHERE id % 500 = 0",
            "ANALYZE big")  # the progress' estimate of the total rows


class Writer:
    """Inserts, updates, deletes and key changes over the whole key range, in small transactions,
    until stopped: into chunks already copied, being copied and not copied yet."""

    def __init__(self, url: str, rows: int = ROWS, truncate_after: float = None) -> None:
        self.url, self.rows, self.truncate_after = url, rows, truncate_after
        self.stop = threading.Event()
        self.done = 0
        self.truncated = False
        self.failure = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        random_keys = random.Random(7)
        started = time.monotonic()
        conn = psycopg2.connect(self.url)
        try:
            while not self.stop.is_set():
                if (self.truncate_after is not None and not self.truncated
                        and time.monotonic() - started > self.truncate_after):
                    with conn, conn.cursor() as cur:
                        cur.execute("TRUNCATE big")
                        cur.execute("INSERT INTO big (id, grp, note) SELECT g, 1, 'after' "
                                    f"FROM generate_series(1, {self.rows}, 3) g")
                    self.truncated = True
                with conn, conn.cursor() as cur:
                    for _ in range(5):
                        self._one_change(cur, random_keys)
                self.done += 1
                time.sleep(0.005)
        except Exception as e:  # noqa: BLE001 - reported by __exit__
            self.failure = e
        finally:
            conn.close()

    def _one_change(self, cur, keys: random.Random) -> None:
        key = keys.randint(1, self.rows)
        kind = keys.random()
        if kind < 0.35:
            cur.execute("UPDATE big SET grp = grp + 1, note = note || '+' WHERE id = %s", (key,))
        elif kind < 0.55:
            cur.execute("DELETE FROM big WHERE id = %s", (key,))
        elif kind < 0.8:
            cur.execute("INSERT INTO big (id, grp, note) VALUES (%s, 0, 'new') "
                        "ON CONFLICT (id) DO UPDATE SET note = 'upserted'", (key,))
        else:  # a key change: the row moves to another chunk (already read, or not yet)
            target = keys.randint(1, self.rows * 2)
            cur.execute("UPDATE big SET id = %s WHERE id = %s AND NOT EXISTS "
                        "(SELECT FROM big WHERE id = %s)", (target, key, target))


def _chunks_in(output: str, table: str = "big") -> int:
    found = re.search(rf"{table}: \d+ rows copied online in (\d+) chunks", output)
    assert found, output
    return int(found.group(1))


@pytest.mark.slow
def test_online_snapshot_under_concurrent_writes_equals_source(source, project):
    _big_table(source)
    run_sql(source, "CREATE TABLE events (payload text)",  # no key: copied whole
            "INSERT INTO events SELECT 'e' || g FROM generate_series(1, 50) g")
    with Writer(project.source_url) as writer:
        result = project.run("snapshot", "--online", "--chunk-rows", CHUNK_ROWS)
    assert writer.done > 20, "the writer did not overlap the copy"
    assert _chunks_in(result.stdout) >= ROWS // int(CHUNK_ROWS) // 2
    assert "events: 50 rows (no key: copied whole, in one consistent snapshot)" in result.stdout
    project.run("cdc")
    assert_table_matches(source, project, "big")
    assert_table_matches(source, project, "events")
    checks = project.run("verify").stdout
    assert "online copies: none in progress" in checks


@pytest.mark.slow
def test_online_snapshot_into_delta_under_concurrent_writes(source, tmp_path, source_url):
    project = Project(tmp_path, source_url, destination="filesystem")
    _big_table(source, rows=3000)
    with Writer(project.source_url, rows=3000) as writer:
        result = project.run("snapshot", "--online", "--chunk-rows", "400")
    assert writer.done > 10, "the writer did not overlap the copy"
    assert _chunks_in(result.stdout) >= 4
    project.run("cdc")
    assert_table_matches(source, project, "big")


def _online_progress(project, retries: int = 3) -> dict:
    """The online copies in progress, by table, as `status --json` reports them (tried again
    when a run was writing the pipeline's state just then)."""
    for _ in range(retries):
        result = project.run("status", "--json", expect=None)
        if result.stdout.startswith("{"):
            report = json.loads(result.stdout)
            return {entry["table"]: entry for entry in report["online_copies"]}
        time.sleep(0.2)
    raise AssertionError(f"status failed: {result.output}")


def _wait_for(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_killed_online_snapshot_resumes_from_its_last_loaded_chunk(source, project):
    _big_table(source)
    chunk_rows = 200
    with Writer(project.source_url):
        first = project.start("snapshot", "--online", "--chunk-rows", str(chunk_rows))
        def eight_chunks_loaded():
            # (a copy that ended, or failed, first would leave nothing to wait for)
            assert first.poll() is None, ("the copy ended before it was killed",
                                          first.returncode, first.communicate())
            found = _online_progress(project).get("big") or {}
            return found if found.get("chunks", 0) >= 8 else None

        progress = _wait_for(eight_chunks_loaded, "8 chunks loaded")
        # A cdc and an online snapshot never overlap: they share the run lock.
        assert "in use by another run" in project.run("cdc", expect=5).stderr
        first.send_signal(signal.SIGKILL)
        first.wait()
        after_kill = _online_progress(project)["big"]
        assert after_kill["chunks"] >= progress["chunks"] and after_kill["rows"] > 0
        result = project.run("snapshot", "--online", "--tables", "big",
                             "--chunk-rows", str(chunk_rows))
    uninterrupted = ROWS // chunk_rows
    resumed = _chunks_in(result.stdout)
    # The rerun goes on from the stored cursor: it reads only what the killed run had not.
    assert resumed <= uninterrupted - after_kill["chunks"] + 3, (resumed, after_kill)
    project.run("cdc")
    assert_table_matches(source, project, "big")
    assert _online_progress(project) == {}


@pytest.mark.slow
def test_truncate_during_an_online_snapshot(source, project):
    _big_table(source)
    with Writer(project.source_url, truncate_after=2.0) as writer:
        project.run("snapshot", "--online", "--chunk-rows", "150")
    assert writer.truncated, "the copy ended before the truncate"
    project.run("cdc")
    assert_table_matches(source, project, "big")


@pytest.mark.slow
def test_online_snapshot_split_across_bounded_cdc_runs(source, project):
    _big_table(source)
    with Writer(project.source_url):
        project.run("snapshot", "--online", "--chunk-rows", "300", "--max-seconds", "0.5")
        assert "big" in _online_progress(project)
        status = project.run("status").stdout
        assert re.search(r"online copy\s+big: \d+ rows of ~\d+ \(\d+%\) copied online, "
                         r"\d+ chunks", status), status
        unfinished = project.run("verify", expect=9).stdout
        assert re.search(r"✗ online copies: big: .*`snapshot --online --tables big` finishes",
                         unfinished), unfinished
        advancing_runs = 0
        deadline = time.monotonic() + 240  # a loaded machine copies less in each second
        while time.monotonic() < deadline:
            summary = project.run("cdc", "--max-seconds", "1",
                                  env={"SOURCES__PG_REPLICATION__ONLINE_CHUNK_ROWS": "500"}).stdout
            advancing_runs += "rows copied online" in summary
            if "online copy in progress" not in summary:
                break
        assert not _online_progress(project), "the bounded runs did not finish the copy"
    assert advancing_runs >= 2, "one run copied everything: nothing was split"
    project.run("cdc")
    assert_table_matches(source, project, "big")
