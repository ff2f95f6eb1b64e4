"""Shared by the benchmarks: a throw-away cluster, timing a child process and its peak memory."""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox.pg_server import PostgresCluster  # noqa: E402


@dataclass
class Measurement:
    name: str
    seconds: float
    peak_rss_mb: float
    rows: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (f"{self.name:<28} {self.seconds:8.2f} s  {self.rows_per_second:12,.0f} rows/s  "
                f"peak RSS {self.peak_rss_mb:7.1f} MB")


def measure(name: str, args: List[str], rows: int, env: Optional[Dict[str, str]] = None,
            stdout=subprocess.DEVNULL) -> Measurement:
    """Runs a command, returns its wall time and the peak RSS of the process (wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=stdout,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed ({process.returncode}): {process.stderr.read().decode()}")
    return Measurement(name, seconds, usage.ru_maxrss / 1024, rows)


def start_cluster() -> PostgresCluster:
    # Benchmarks want durable-ish defaults off for speed, like the tests.
    return PostgresCluster(extra_settings={"shared_buffers": "512MB",
                                           "max_wal_size": "4GB",
                                           "logical_decoding_work_mem": "256MB"}).start()


def cli_env(url: str, workdir: Path, slot: str = "bench_slot", pub: str = "bench_pub") -> Dict[str, str]:
    return {
        "SOURCES__PG_REPLICATION__CREDENTIALS": url,
        "SOURCES__PG_REPLICATION__SLOT_NAME": slot,
        "SOURCES__PG_REPLICATION__PUB_NAME": pub,
        "DESTINATION__DUCKDB__CREDENTIALS": str(workdir / "bench.duckdb"),
        "DLT_DATA_DIR": str(workdir / "dlt"),
        "DLT_PROJECT_DIR": str(workdir),
        "RUNTIME__DLTHUB_TELEMETRY": "false",
    }


def cli(*args: str) -> List[str]:
    return [sys.executable, str(REPO / "pipeline_main.py"), "--destination", "duckdb",
            "--pipeline-name", "bench", *args]


def print_result(kind: str, figures: Dict[str, object]) -> None:
    """The last line: one JSON object a script can read."""
    print(f"RESULT {kind} " + json.dumps(figures, sort_keys=True))
