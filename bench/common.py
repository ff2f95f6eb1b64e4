"""Shared by the benchmarks: a throw-away cluster, timing a child process and its peak memory."""

import json
import os
import re
import subprocess
import sys
import tempfile
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
    seconds: float  # wall time of the whole process, interpreter start and imports included
    peak_rss_mb: float
    rows: int
    work_seconds: float  # the work alone, as the process reports it (wall time if it does not)
    cpu_seconds: float = 0.0  # user + system time of the process (not of the server it talks to)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (f"{self.name:<28} wall {self.seconds:7.2f} s  work {self.work_seconds:7.2f} s  "
                f"{self.rows / self.work_seconds if self.work_seconds else 0:12,.0f} rows/s  "
                f"peak RSS {self.peak_rss_mb:7.1f} MB  cpu {self.cpu_seconds:6.2f} s")


WORK_TIME = re.compile(r"(?:WORK |, )(\d+\.\d+)s?\s*$")


def measure(name: str, args: List[str], rows: int, env: Optional[Dict[str, str]] = None
            ) -> Measurement:
    """Runs a command; returns its wall time, its own work time and its peak RSS (wait4).

    The work time is the last line's trailing seconds: "WORK 1.23" from the helper scripts, or the
    duration at the end of pipeline_main.py's summary line.
    """
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out,
                                   stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        lines = out.read().decode().strip().splitlines()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{name} failed: {err.read().decode()}")
    found = WORK_TIME.search(lines[-1]) if lines else None
    work = float(found.group(1)) if found else seconds
    return Measurement(name, seconds, usage.ru_maxrss / 1024, rows, work,
                       usage.ru_utime + usage.ru_stime)


def median(values: List[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def median_of(runs: List[Measurement]) -> Measurement:
    """One figure for repeated runs: median wall, work and CPU time, the highest peak RSS.

    The machines are shared: one run's time can be off by half; the median of interleaved runs is
    what the ratios are computed from.
    """
    return Measurement(runs[0].name, median([r.seconds for r in runs]),
                       max(r.peak_rss_mb for r in runs), runs[0].rows,
                       median([r.work_seconds for r in runs]),
                       median([r.cpu_seconds for r in runs]))


PHASES_SCRIPT = """
import json, sys, dlt
pipeline = dlt.attach(pipeline_name=sys.argv[2], pipelines_dir=sys.argv[1] + "/pipelines")
trace = pipeline.last_trace
phases = {step.step: (step.finished_at - step.started_at).total_seconds()
          for step in trace.steps if step.step in ("extract", "normalize", "load")}
run_seconds = (trace.finished_at - trace.started_at).total_seconds()
phases["setup"] = max(0.0, run_seconds - sum(phases.values()))
print(json.dumps(phases))
"""


def dlt_phases(dlt_data_dir: str, pipeline_name: str = "bench") -> Dict[str, float]:
    """Seconds of each step of the pipeline's last `run`, from the trace dlt keeps on disk.

    "setup" is what `run` spent outside extract, normalize and load (mostly restoring state from
    the destination). Read in a child process: importing dlt here would grow this process, and a
    child's peak RSS counts the parent's memory it was forked from.
    """
    output = subprocess.run([sys.executable, "-c", PHASES_SCRIPT, dlt_data_dir, pipeline_name],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def median_phases(runs: List[Dict[str, float]]) -> Dict[str, float]:
    return {name: median([run[name] for run in runs]) for name in runs[0]}


def phases_line(phases: Dict[str, float]) -> str:
    return "  ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())


def add_repeat_option(parser) -> None:
    parser.add_argument("--repeat", type=int, default=3,
                        help="Runs of each contender, interleaved; figures are medians (default 3).")


# The benchmark table of both benchmarks (~175 bytes a row when filled by bench/snapshot.py).
BENCH_TABLE_DDL = """CREATE TABLE bench (
    id bigint PRIMARY KEY, quantity int, title text, price numeric(12, 2),
    created_at timestamptz, note text, attributes jsonb, active bool
)"""


FILL_SQL = """
INSERT INTO bench
SELECT g, g % 1000, 'title number ' || g, (g % 100000) / 100.0,
       timestamptz '2024-01-01' + g * interval '1 second',
       md5(g::text) || md5((g + 1)::text),
       jsonb_build_object('k', g % 10, 'tag', 'tag-' || (g % 50)),
       g % 2 = 0
FROM generate_series(1, {rows}) g;
"""



def fill_bench_table(url: str, rows: int, vacuum: bool = True) -> float:
    """Creates and fills the bench table; returns its size on disk in MB."""
    conn = connect_autocommit(url)
    with conn.cursor() as cur:
        cur.execute(BENCH_TABLE_DDL)
        cur.execute(FILL_SQL.format(rows=rows))
        cur.execute("VACUUM ANALYZE bench" if vacuum else "ANALYZE bench")
        cur.execute("SELECT pg_total_relation_size('bench')")
        size_mb = cur.fetchone()[0] / (1 << 20)
    conn.close()
    return size_mb


def connect_autocommit(url: str):
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


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


def round_environment(url: str, workdir: Path, round_number: int,
                      label: str = "") -> Dict[str, str]:
    """A round of our CLI starts from nothing: its own slot, pipeline directory and DuckDB file
    (`label` tells apart two runs of one round)."""
    round_dir = workdir / f"round{round_number}{label}"
    round_dir.mkdir()
    return cli_env(url, round_dir, slot=f"bench_slot_{round_number}{label}")


def cli(*args: str) -> List[str]:
    return [sys.executable, str(REPO / "pipeline_main.py"), "--destination", "duckdb",
            "--pipeline-name", "bench", *args]


def print_result(kind: str, figures: Dict[str, object]) -> None:
    """The last line: one JSON object a script can read."""
    print(f"RESULT {kind} " + json.dumps(figures, sort_keys=True))
