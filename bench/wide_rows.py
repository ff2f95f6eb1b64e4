"""Peak memory of `cdc` when rows are wide: bounded by bytes, not only by the row count.

    python bench/wide_rows.py --rows 3000 --value-kb 190

Two tables of `--rows` rows each, one with a `--value-kb` KB text value per row (stored out of
line, TOASTed), one with a short one. After the snapshot, each table gets a mass UPDATE that does
not touch the text value: its WAL is small, and `cdc` reads every unchanged wide value back from
the source by key. Each round runs `cdc` for the narrow table's pipeline, then for the wide
table's, each in its own process and DuckDB file. Prints the medians (wall time, peak RSS), the
ratio wide/narrow of the peak RSS (goal: at most 1.5, and below DuckDB's default budget plus
~300 MB), the same for the snapshots, and a final `RESULT wide_rows {...}` line. Every run uses
the CLI's default DuckDB budget (192 MB).
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from common import (add_repeat_option, cli, connect_autocommit, measure, median_of, print_result,
                    round_environment, start_cluster)


def _create(cur, table: str, rows: int, value_bytes: int) -> None:
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int, body text)")
    cur.execute(f"ALTER TABLE {table} ALTER COLUMN body SET STORAGE EXTERNAL")
    # md5 chunks: incompressible enough that the value stays out of line at its full size.
    cur.execute(f"INSERT INTO {table} SELECT g, 0, (SELECT string_agg(md5(g::text || i::text), '') "
                f"FROM generate_series(1, {max(value_bytes // 32, 1)}) i) "
                f"FROM generate_series(1, {rows}) g")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--value-kb", type=int, default=190)
    add_repeat_option(parser)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-wide-"))
    cluster = start_cluster()
    try:
        conn = connect_autocommit(cluster.url)
        with conn.cursor() as cur:
            _create(cur, "narrow", args.rows, 16)
            _create(cur, "wide", args.rows, args.value_kb * 1024)
        runs = {"narrow": [], "wide": []}
        snapshots = {"narrow": [], "wide": []}
        failed = {}
        for round_number in range(args.repeat):
            for table in runs:
                index = round_number * 2 + (0 if table == "narrow" else 1)
                env = round_environment(cluster.url, workdir, index)
                env["SOURCES__PG_REPLICATION__PUB_NAME"] = f"pub_{table}_{round_number}"
                try:
                    snapshots[table].append(measure(f"snapshot {table}",
                                                    cli("snapshot", "--tables", table),
                                                    args.rows, env))
                    with conn.cursor() as cur:
                        cur.execute(f"UPDATE {table} SET n = n + 1")  # body unchanged: no WAL
                    runs[table].append(measure(f"cdc {table}", cli("cdc"), args.rows, env))
                except RuntimeError as e:  # a run that fails is reported, not measured
                    failed[table] = str(e).splitlines()[0][:300]
                    print(f"  round {round_number + 1}: cdc {table} FAILED: {failed[table]}")
                    continue
                print(f"  round {round_number + 1}: {runs[table][-1].line()}")
        if failed:
            print_result("wide_rows", {"rows": args.rows, "value_kb": args.value_kb,
                                       "failed": failed})
            return
        narrow, wide = median_of(runs["narrow"]), median_of(runs["wide"])
        copy_narrow, copy_wide = median_of(snapshots["narrow"]), median_of(snapshots["wide"])
        print(f"medians of {args.repeat} rounds, {args.rows:,} rows each, wide values "
              f"{args.value_kb} KB:")
        for measured in (copy_narrow, copy_wide, narrow, wide):
            print(measured.line())
        ratio = wide.peak_rss_mb / narrow.peak_rss_mb
        copy_ratio = copy_wide.peak_rss_mb / copy_narrow.peak_rss_mb
        print(f"peak RSS wide / narrow: cdc {ratio:.2f}x, snapshot {copy_ratio:.2f}x")
        print_result("wide_rows", {
            "rows": args.rows, "value_kb": args.value_kb, "repeat": args.repeat,
            "narrow_peak_rss_mb": round(narrow.peak_rss_mb, 1),
            "wide_peak_rss_mb": round(wide.peak_rss_mb, 1),
            "wide_over_narrow_rss": round(ratio, 2),
            "snapshot_narrow_peak_rss_mb": round(copy_narrow.peak_rss_mb, 1),
            "snapshot_wide_peak_rss_mb": round(copy_wide.peak_rss_mb, 1),
            "snapshot_wide_over_narrow_rss": round(copy_ratio, 2),
            "narrow_s": round(narrow.seconds, 2), "wide_s": round(wide.seconds, 2),
        })
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
