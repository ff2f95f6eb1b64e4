"""`verify --data` against a plain `COPY ... TO STDOUT` of the same table, on one throw-away server.

    python bench/verify.py --rows 1000000

The bench table (bench/common.py, ~175 bytes a row) is copied into DuckDB by our `snapshot`; then,
`--repeat` times interleaved, each in its own process:
- raw `COPY (SELECT * FROM bench) TO STDOUT` into /dev/null: reading the table once, the floor;
- `verify --data --tables bench`: checksums of every chunk on both sides (nothing differs, so
  no catch-up and no recheck);
- the same after one row was changed in the destination: the differing chunk is found, the
  destination caught up, the chunk rechecked and the row named.
Prints the medians (work time without interpreter start, peak RSS) and the ratios to COPY, and a
final `RESULT verify {...}` line. The issue's goal: verify --data ≤ 3× COPY.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (WORK_TIME, Measurement, add_repeat_option, cli, cli_env, fill_bench_table,
                    measure, median_of, print_result, start_cluster)
from snapshot import COPY_SCRIPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    add_repeat_option(parser)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    cluster = start_cluster()
    try:
        fill_bench_table(cluster.url, args.rows)
        env = cli_env(cluster.url, workdir)
        subprocess.run(cli("snapshot"), env={**os.environ, **env}, check=True,
                       capture_output=True)
        print(f"table bench: {args.rows:,} rows, copied into DuckDB")
        runs = {"copy": [], "verify": [], "verify_differing": []}
        for round_number in range(args.repeat):
            runs["copy"].append(measure("raw COPY to /dev/null",
                                        [sys.executable, "-c", COPY_SCRIPT, cluster.url],
                                        args.rows))
            runs["verify"].append(measure("verify --data (equal)",
                                          cli("verify", "--data", "--tables", "bench"),
                                          args.rows, env))
            for contender in runs.values():
                if contender:
                    print(f"  round {round_number + 1}: {contender[-1].line()}")
        _change_one_row(workdir / "bench.duckdb")
        runs["verify_differing"].append(_differing_run(args.rows, env))
        print(f"  one row changed: {runs['verify_differing'][-1].line()}")
        copy, equal = median_of(runs["copy"]), median_of(runs["verify"])
        differing = runs["verify_differing"][0]
        print(f"medians of {args.repeat} interleaved runs:")
        for figure in (copy, equal):
            print(figure.line())
        figures = {
            "rows": args.rows, "repeat": args.repeat,
            "copy_s": round(copy.work_seconds, 3),
            "verify_s": round(equal.work_seconds, 3),
            "verify_peak_rss_mb": round(equal.peak_rss_mb, 1),
            "verify_over_copy": round(equal.work_seconds / copy.work_seconds, 2),
            "verify_over_copy_wall": round(equal.seconds / copy.seconds, 2),
            "verify_one_row_differs_s": round(differing.work_seconds, 3),
            "verify_one_row_differs_over_copy": round(differing.work_seconds / copy.work_seconds, 2),
        }
        print(f"verify --data / COPY: {figures['verify_over_copy']:.2f}x work time "
              f"({figures['verify_over_copy_wall']:.2f}x wall); with one row differing: "
              f"{figures['verify_one_row_differs_over_copy']:.2f}x (goal: 3x)")
        print_result("verify", figures)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _change_one_row(duckdb_path: Path) -> None:
    import duckdb

    with duckdb.connect(str(duckdb_path)) as con:
        con.execute("UPDATE bronze_postgres_raw.bench SET title = 'changed' WHERE id = 4242")


def _differing_run(rows: int, env):
    """verify --data exits 9 here (one row differs): measured by hand."""
    started = time.perf_counter()
    result = subprocess.run(cli("verify", "--data", "--tables", "bench"), env={**os.environ, **env},
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert result.returncode == 9 and "different id=4242 (columns title)" in result.stdout, (
        result.stdout + result.stderr)
    found = WORK_TIME.search(result.stdout.strip().splitlines()[-1])
    return Measurement("verify --data (1 row differs)", seconds, 0.0, rows,
                       float(found.group(1)) if found else seconds)


if __name__ == "__main__":
    main()
