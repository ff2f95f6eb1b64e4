"""Online and parallel copies against the exported-snapshot copy, in one run on one server.

    python bench/online.py --rows 10000000

Three comparisons, each contender in its own process, one after the other:
1. WAL the slot retains at its peak while a table is copied under pgbench's TPC-B load: the
   online copy (`snapshot --online`, which applies the changes and confirms the slot between
   chunks) against the exported-snapshot copy (`snapshot`, then the `cdc` that confirms the slot).
   Sampled every 0.25 s as pg_current_wal_lsn() - restart_lsn.
2. An online copy killed (SIGKILL) at about half its time and run again, against one that runs
   through (no load): the rerun goes on from the last loaded chunk (goal: at most 1.6x).
3. The exported-snapshot copy with `--workers 2` against `--workers 1` (no load), with a raw
   `COPY ... TO STDOUT` of the table as the limit.
Prints the ratios and a final `RESULT online {...}` line.
"""

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List

from common import (cli, connect_autocommit, fill_bench_table, measure, print_result,
                    round_environment, start_cluster)
from snapshot import COPY_SCRIPT


class WalPeak:
    """The highest WAL retained by one slot while the block runs."""

    def __init__(self, url: str, slot: str) -> None:
        self.url, self.slot, self.peak = url, slot, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        conn = connect_autocommit(self.url)
        with conn.cursor() as cur:
            while not self.stop.wait(0.25):
                cur.execute("SELECT (pg_current_wal_lsn() - restart_lsn)::bigint "
                            "FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
                row = cur.fetchone()
                if row and row[0] is not None:
                    self.peak = max(self.peak, int(row[0]))
        conn.close()

    def __enter__(self) -> "WalPeak":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


@contextmanager
def pgbench(url: str, clients: int = 2) -> Iterator[None]:
    process = subprocess.Popen(["pgbench", "-n", "-c", str(clients), "-T", "100000", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait()


def run(args: List[str], env: Dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cli(*args), env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def wal_comparison(url: str, work: Path) -> Dict[str, float]:
    figures = {}
    for round_number, (name, commands) in enumerate([
            ("exported", [["snapshot", "--tables", "bench"], ["cdc"]]),
            ("online", [["snapshot", "--online", "--tables", "bench"]])], start=1):
        env = round_environment(url, work, round_number)
        with pgbench(url), WalPeak(url, env["SOURCES__PG_REPLICATION__SLOT_NAME"]) as peak:
            seconds = sum(run(command, env) for command in commands)
        figures[f"{name}_peak_wal_mb"] = peak.peak / (1 << 20)
        figures[f"{name}_seconds"] = seconds
        print(f"{name:<10} peak WAL retained {peak.peak / (1 << 20):9.1f} MB  in {seconds:7.1f} s",
              flush=True)
    figures["wal_ratio_online_to_exported"] = (figures["online_peak_wal_mb"]
                                               / max(figures["exported_peak_wal_mb"], 1e-9))
    return figures


def resume_comparison(url: str, work: Path) -> Dict[str, float]:
    through = run(["snapshot", "--online", "--tables", "bench"], round_environment(url, work, 3))
    env = round_environment(url, work, 4)
    started = time.perf_counter()
    first = subprocess.Popen(cli("snapshot", "--online", "--tables", "bench"), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(through / 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    run(["snapshot", "--online", "--tables", "bench"], env)
    resumed = time.perf_counter() - started
    print(f"online copy through {through:7.1f} s, killed at half and resumed {resumed:7.1f} s: "
          f"{resumed / through:.2f}x", flush=True)
    return {"online_through_seconds": through, "online_killed_resumed_seconds": resumed,
            "resume_ratio": resumed / through}


def workers_comparison(url: str, work: Path, rows: int) -> Dict[str, float]:
    copy = measure("raw COPY", [sys.executable, "-c", COPY_SCRIPT, url], rows)
    one, two = (measure(f"snapshot --workers {n}", cli("snapshot", "--tables", "bench",
                                                         "--workers", str(n)),
                        rows, round_environment(url, work, 4 + n)) for n in (1, 2))
    print(f"snapshot --workers 1 {one.seconds:7.1f} s ({one.peak_rss_mb:.0f} MB peak RSS), "
          f"--workers 2 {two.seconds:7.1f} s ({two.peak_rss_mb:.0f} MB): "
          f"{two.seconds / one.seconds:.2f}x time, {two.peak_rss_mb / one.peak_rss_mb:.2f}x "
          f"memory; raw COPY {copy.work_seconds:.1f} s", flush=True)
    return {"workers1_seconds": one.seconds, "workers2_seconds": two.seconds,
            "workers_ratio": two.seconds / one.seconds, "raw_copy_seconds": copy.work_seconds,
            "workers1_peak_rss_mb": one.peak_rss_mb, "workers2_peak_rss_mb": two.peak_rss_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--only", choices=["wal", "resume", "workers"], action="append",
                        help="Run only these comparisons (default: all three).")
    args = parser.parse_args()
    chosen = set(args.only or ["wal", "resume", "workers"])
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench is not installed")
    cluster = start_cluster()
    work = Path(tempfile.mkdtemp(prefix="bench-online-"))
    try:
        fill_bench_table(cluster.url, args.rows, vacuum=False)
        subprocess.run(["pgbench", "-i", "-s", "10", "-q", cluster.url], check=True,
                       capture_output=True)
        figures: Dict[str, float] = {"rows": args.rows}
        if "wal" in chosen:
            figures.update(wal_comparison(cluster.url, work))
        if "resume" in chosen:
            figures.update(resume_comparison(cluster.url, work))
        if "workers" in chosen:
            figures.update(workers_comparison(cluster.url, work, args.rows))
        print_result("online", figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        cluster.stop()


if __name__ == "__main__":
    main()
