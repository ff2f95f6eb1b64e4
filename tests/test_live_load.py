"""pgbench's TPC-B workload runs while snapshot and several cdc runs happen; at the end the
destination equals the source row for row (pgbench_history, which has no key, is appended)."""

import shutil
import time

import pytest

from tests.tools import PGBENCH_TABLES, assert_table_matches, pgbench_load


@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")
def test_pgbench_during_snapshot_and_cdc_runs(source, project):
    with pgbench_load(project.source_url, seconds=25, clients=4):
        time.sleep(1)
        project.run("snapshot")
        for _ in range(3):
            project.run("cdc")
    project.run("cdc")
    for table in PGBENCH_TABLES:
        assert_table_matches(source, project, table)
