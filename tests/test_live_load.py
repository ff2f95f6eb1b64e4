"""pgbench's TPC-B workload runs while snapshot and several cdc runs happen; at the end the
destination equals the source row for row (pgbench_history, which has no key, is appended)."""

import shutil
import subprocess
import time

import pytest

from tests.tools import assert_table_matches

TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]


@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")
def test_pgbench_during_snapshot_and_cdc_runs(source, project):
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", project.source_url], check=True,
                   capture_output=True)
    bench = subprocess.Popen(["pgbench", "-n", "-c", "4", "-T", "25", project.source_url],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        project.run("snapshot")
        for _ in range(3):
            project.run("cdc")
    finally:
        _, errors = bench.communicate(timeout=120)
    assert bench.returncode == 0, errors
    project.run("cdc")
    with source.cursor() as cur:
        cur.execute("SELECT count(*) FROM pgbench_history")
        assert cur.fetchone()[0] > 100, "pgbench made transactions during the runs"
    for table in TABLES:
        assert_table_matches(source, project, table)
