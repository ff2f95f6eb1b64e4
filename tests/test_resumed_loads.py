"""A run killed after the destination committed a table's rows but before dlt marked the job done.

The next attempt of that package runs the job again: without care it inserts the same rows a
second time (every row of a snapshotted table twice, or a keyless table's appended changes twice)
while every command exits 0. These tests leave exactly that state and check that the next run
makes the destination equal to the source.
"""

import signal
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest

from tests.tools import Project, assert_table_matches, run_sql


@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)


def _normalized(project: Project) -> Path:
    return project.dir / "dlt_data" / "pipelines" / project.pipeline_name / "load" / "normalized"


def _completed_job(project: Project, table: str) -> Optional[Path]:
    """The completed job of a pending package that wrote `table`'s rows into the destination: on
    DuckDB the copy of its file, on Delta the follow-up job that commits to the Delta table."""
    suffix = ".reference" if project.destination == "filesystem" else ".parquet"
    for job in _normalized(project).glob(f"*/completed_jobs/{table}.*"):
        if job.name.endswith(suffix):
            return job
    return None


def _killed_after_commit(project: Project, command: List[str], table: str,
                         changes: Callable[[], None] = lambda: None) -> None:
    """Leaves what a kill between the destination's commit of `table` and dlt's bookkeeping
    leaves: the rows committed, their job still in `started_jobs`, the package pending.

    That window lasts milliseconds here (longer on a remote destination), too short to aim a
    kill at. So the run is killed just after the job was marked complete, while the package is
    still loading, and the job file goes back where the kill would have found it. dlt's resume
    then runs that job again.
    """
    for _attempt in range(5):
        changes()  # what a `cdc` attempt loads (a missed attempt's are loaded before the next)
        process = project.start(*command)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            job = _completed_job(project, table)
            if job is not None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                if job.exists():  # the package was still loading
                    job.rename(job.parent.parent / "started_jobs" / job.name)
                    return
                break
            time.sleep(0.001)
        process.kill()
        process.wait()
        project.run("cdc", expect=None)  # missed the moment: finish what it left, try again
    pytest.fail(f"no kill landed between the load of {table} and the end of its package")


def test_snapshot_killed_after_a_table_committed_is_loaded_once_by_cdc(source, project):
    run_sql(source,
            "CREATE TABLE accounts (id bigint PRIMARY KEY, handle text)",
            "INSERT INTO accounts SELECT g, 'user ' || g FROM generate_series(1, 20000) g",
            "CREATE TABLE statuses (id bigint PRIMARY KEY, account bigint, body text)",
            "INSERT INTO statuses SELECT g, g % 100, repeat('x', 200) FROM generate_series(1, 200000) g")
    _killed_after_commit(project, ["snapshot"], "accounts")

    cdc = project.run("cdc")
    assert "after loading a package an earlier run left" in cdc.stdout
    assert_table_matches(source, project, "accounts")
    assert_table_matches(source, project, "statuses")
    project.run("verify")


def test_snapshot_killed_after_a_table_committed_stays_right_under_another_snapshot(source, project):
    run_sql(source,
            "CREATE TABLE accounts (id bigint PRIMARY KEY, handle text)",
            "INSERT INTO accounts SELECT g, 'user ' || g FROM generate_series(1, 20000) g",
            "CREATE TABLE tags (name text PRIMARY KEY)",
            "INSERT INTO tags SELECT 'tag' || g FROM generate_series(1, 100) g")
    project.run("snapshot", "--tables", "tags")
    _killed_after_commit(project, ["snapshot", "--tables", "accounts"], "accounts")

    # A snapshot of another table loads the package the killed one left first.
    project.run("snapshot", "--tables", "tags")
    run_sql(source, "UPDATE accounts SET handle = 'renamed' WHERE id = 7")
    project.run("cdc")
    assert_table_matches(source, project, "accounts")
    assert_table_matches(source, project, "tags")


def test_cdc_killed_after_a_keyless_table_committed_appends_once(source, project):
    run_sql(source,
            "CREATE TABLE events (account bigint, note text)",  # no key: appended
            "INSERT INTO events SELECT g, 'base' FROM generate_series(1, 1000) g",
            "CREATE TABLE accounts (id bigint PRIMARY KEY, handle text)",
            "INSERT INTO accounts SELECT g, 'user ' || g FROM generate_series(1, 1000) g")
    project.run("snapshot")
    _killed_after_commit(project, ["cdc"], "events", changes=lambda: run_sql(
        source, "INSERT INTO events SELECT g, 'new' FROM generate_series(1, 50000) g",
        "UPDATE accounts SET handle = handle || 'h' WHERE id % 2 = 0"))

    project.run("cdc")
    assert_table_matches(source, project, "events")  # as a multiset: no row twice
    assert_table_matches(source, project, "accounts")
    assert "cdc: 0 changes" in project.run("cdc").stdout


def test_a_state_record_cut_off_by_the_kill_is_written_again(source, tmp_path, source_url):
    """Killed while dlt wrote the pending package's state record into a filesystem destination
    (written in place when a load completes): the record is empty. Every later `cdc` failed to
    read the destination state (exit 7) and WAL piled up; now the record is dropped and written
    again when the package loads."""
    project = Project(tmp_path, source_url, destination="filesystem")
    run_sql(source, "CREATE TABLE accounts (id bigint PRIMARY KEY, handle text)",
            "INSERT INTO accounts SELECT g, 'user ' || g FROM generate_series(1, 1000) g")
    project.run("snapshot")
    _killed_after_commit(project, ["cdc"], "accounts", changes=lambda: run_sql(
        source, "UPDATE accounts SET handle = handle || 'h' WHERE id % 2 = 0"))
    pending = max(p.name for p in _normalized(project).iterdir() if p.is_dir())
    states = project.delta_root / "bronze_postgres_raw" / "_dlt_pipeline_state"
    torn = states / f"{project.pipeline_name}__{pending}__dG9ybg.jsonl"
    torn.write_text("")
    project.run("cdc")
    assert_table_matches(source, project, "accounts")
    assert all(path.stat().st_size > 0 for path in states.iterdir())
    project.run("verify")
