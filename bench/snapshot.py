"""Snapshot speed against its limit and against stock dlt, in one run on one throw-away server.

    python bench/snapshot.py --rows 1000000

Measures, each in its own process and `--repeat` times interleaved (median wall time, median work
time without interpreter start and imports, rows/s, highest peak RSS):
- raw `COPY (SELECT * FROM t) TO STDOUT` into /dev/null: the limit;
- dlt `sql_database` with the connectorx backend into DuckDB: the best stock path;
- our `snapshot` into DuckDB, with its COPY reader (the default);
- our `snapshot --reader sql_database` (dlt's sql_database, pyarrow backend, in the same
  exported snapshot) into DuckDB.
Prints the ratios ours/COPY, connectorx/ours and sql_database reader/COPY reader side by side, and a
final `RESULT snapshot {...}` line.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import (add_repeat_option, cli, cli_env, dlt_phases, fill_bench_table, measure,
                    median_of, median_phases, phases_line, print_result, round_environment,
                    start_cluster)

COPY_SCRIPT = """
import sys, time, psycopg2
started = time.perf_counter()
conn = psycopg2.connect(sys.argv[1])
with open("/dev/null", "wb") as sink, conn.cursor() as cur:
    cur.copy_expert("COPY (SELECT * FROM bench) TO STDOUT", sink, size=1 << 20)
print(f"WORK {time.perf_counter() - started:.3f}")
"""

CONNECTORX_SCRIPT = """
import sys, time, dlt
from dlt.sources.sql_database import sql_database
started = time.perf_counter()
url, duckdb_path, pipelines = sys.argv[1:4]
source = sql_database(url.replace("postgresql://", "postgresql+psycopg2://"), table_names=["bench"],
                      backend="connectorx")
pipeline = dlt.pipeline("bench_cx", destination=dlt.destinations.duckdb(duckdb_path),
                        dataset_name="bench_connectorx", pipelines_dir=pipelines)
pipeline.run(source, write_disposition="replace")
print(f"WORK {time.perf_counter() - started:.3f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-connectorx", action="store_true")
    add_repeat_option(parser)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-snapshot-"))
    cluster = start_cluster()
    try:
        size_mb = fill_bench_table(cluster.url, args.rows)
        print(f"table bench: {args.rows:,} rows, {size_mb:.0f} MB on disk")
        connectorx_env = cli_env(cluster.url, workdir)

        runs = {"copy": [], "connectorx": [], "ours": [], "ours_sql_database": []}
        phases = []  # where our run spent its time, from dlt's trace
        for round_number in range(args.repeat):
            runs["copy"].append(measure(
                "raw COPY to /dev/null", [sys.executable, "-c", COPY_SCRIPT, cluster.url],
                args.rows))
            if not args.skip_connectorx:
                runs["connectorx"].append(measure(
                    "dlt sql_database connectorx",
                    [sys.executable, "-c", CONNECTORX_SCRIPT, cluster.url,
                     str(workdir / f"cx{round_number}.duckdb"),
                     str(workdir / f"cx_pipelines{round_number}")],
                    args.rows, connectorx_env))
            round_env = round_environment(cluster.url, workdir, round_number)
            runs["ours"].append(measure("pipeline_main.py snapshot", cli("snapshot"), args.rows,
                                        round_env))
            phases.append(dlt_phases(round_env["DLT_DATA_DIR"]))
            runs["ours_sql_database"].append(measure(
                "pipeline_main.py snapshot --reader sql_database",
                cli("snapshot", "--reader", "sql_database"), args.rows,
                round_environment(cluster.url, workdir, round_number, "sql")))
            for contender in runs.values():
                if contender:
                    print(f"  round {round_number + 1}: {contender[-1].line()}")
        copy, ours = median_of(runs["copy"]), median_of(runs["ours"])
        by_sql_database = median_of(runs["ours_sql_database"])
        connectorx = median_of(runs["connectorx"]) if runs["connectorx"] else None
        print(f"medians of {args.repeat} interleaved runs:")
        for figure in (copy, connectorx, ours, by_sql_database):
            if figure:
                print(figure.line())
        our_phases = median_phases(phases)
        print(f"ours by dlt step: {phases_line(our_phases)}")
        figures = {
            "rows": args.rows,
            "repeat": args.repeat,
            "copy_s": round(copy.work_seconds, 3),
            "ours_s": round(ours.work_seconds, 3),
            "ours_wall_s": round(ours.seconds, 3),
            "ours_peak_rss_mb": round(ours.peak_rss_mb, 1),
            "ours_over_copy": round(ours.work_seconds / copy.work_seconds, 2),
            "ours_over_copy_wall": round(ours.seconds / copy.seconds, 2),
            **{f"ours_{name}_s": round(seconds, 3) for name, seconds in our_phases.items()},
        }
        figures["sql_database_reader_s"] = round(by_sql_database.work_seconds, 3)
        figures["sql_database_reader_peak_rss_mb"] = round(by_sql_database.peak_rss_mb, 1)
        figures["sql_database_over_copy_reader"] = round(
            by_sql_database.work_seconds / ours.work_seconds, 2)
        print(f"readers side by side: COPY {ours.work_seconds:.2f} s, {ours.peak_rss_mb:.0f} MB; "
              f"sql_database {by_sql_database.work_seconds:.2f} s, "
              f"{by_sql_database.peak_rss_mb:.0f} MB "
              f"({figures['sql_database_over_copy_reader']:.2f}x the COPY reader's time)")
        print(f"ours / COPY: {figures['ours_over_copy']:.2f}x work time "
              f"({figures['ours_over_copy_wall']:.2f}x wall, interpreter start included)")
        if connectorx:
            figures["connectorx_s"] = round(connectorx.work_seconds, 3)
            figures["connectorx_peak_rss_mb"] = round(connectorx.peak_rss_mb, 1)
            figures["connectorx_over_ours"] = round(connectorx.work_seconds / ours.work_seconds, 2)
            print(f"connectorx / ours: {figures['connectorx_over_ours']:.2f}x work time")
        print_result("snapshot", figures)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
