"""CDC speed against pg_recvlogical on the same WAL, in one run on one throw-away server.

    python bench/cdc.py --changes 200000 --tx-size 1
    python bench/cdc.py --changes 1000000 --tx-size 1000000

For each of `--repeat` rounds two slots are created before any change (ours by `snapshot` of the
empty table into a pipeline and DuckDB file of its own, and one for pg_recvlogical); then N changes
are made in transactions of K rows (60% inserts, 30% updates, 10% deletes). Measured round by round,
each in its own process: `pg_recvlogical` (pgoutput, proto 1) into /dev/null up to the end of those
changes (the limit), and our `cdc` into DuckDB. Prints the medians (wall time, rows/s, highest peak
RSS), the ratio ours/pg_recvlogical, and a final `RESULT cdc {...}` line.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from common import (BENCH_TABLE_DDL, add_repeat_option, cli, connect_autocommit, dlt_phases,
                    measure, median_of, median_phases, phases_line, print_result,
                    round_environment, start_cluster)

WORKLOAD_SQL = """
DO $$
DECLARE
    made bigint := 0;
    next_id bigint := 1;
    kind int;
BEGIN
    WHILE made < {changes} LOOP
        kind := made % 10;
        IF kind < 6 OR next_id < 100 THEN
            INSERT INTO bench VALUES (next_id, next_id % 1000, 'title ' || next_id, next_id / 100.0,
                                      now(), md5(next_id::text), '{{"k": 1}}', true);
            next_id := next_id + 1;
        ELSIF kind < 9 THEN
            UPDATE bench SET quantity = quantity + 1, note = md5(made::text)
            WHERE id = 1 + (made * 7919) % (next_id - 1);
        ELSE
            DELETE FROM bench WHERE id = 1 + (made * 104729) % (next_id - 1);
        END IF;
        made := made + 1;
        IF made % {tx_size} = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END $$;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--tx-size", type=int, default=1)
    add_repeat_option(parser)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cdc-"))
    cluster = start_cluster()
    try:
        conn = connect_autocommit(cluster.url)
        with conn.cursor() as cur:
            cur.execute(BENCH_TABLE_DDL)
        envs = [round_environment(cluster.url, workdir, n) for n in range(args.repeat)]
        for env in envs:
            measure("snapshot (creates the slot)", cli("snapshot"), 0, env)
        with conn.cursor() as cur:
            for round_number in range(args.repeat):
                cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                            (f"recv_slot_{round_number}",))
            cur.execute(WORKLOAD_SQL.format(changes=args.changes, tx_size=args.tx_size))
            cur.execute("SELECT pg_current_wal_insert_lsn()::text")
            end_lsn = cur.fetchone()[0]
            cur.execute("CHECKPOINT")
        conn.close()
        print(f"{args.changes:,} changes in transactions of {args.tx_size:,}, WAL up to {end_lsn}")

        recv_runs, our_runs = [], []
        phases = []  # where our run spent its time, from dlt's trace of its (last) load
        for round_number, env in enumerate(envs):
            recv_runs.append(measure("pg_recvlogical to /dev/null", [
                "pg_recvlogical", "-d", cluster.url, "--slot", f"recv_slot_{round_number}",
                "--start", "-o", "proto_version=1", "-o", "publication_names=bench_pub",
                "--endpos", end_lsn, "-f", "/dev/null", "--no-loop"], args.changes))
            our_runs.append(measure("pipeline_main.py cdc", cli("cdc"), args.changes, env))
            phases.append(dlt_phases(env["DLT_DATA_DIR"]))
            print(f"  round {round_number + 1}: {recv_runs[-1].line()}")
            print(f"  round {round_number + 1}: {our_runs[-1].line()}")
        recv, ours = median_of(recv_runs), median_of(our_runs)
        print(f"medians of {args.repeat} interleaved runs:")
        print(recv.line())
        print(ours.line())
        our_phases = median_phases(phases)
        print(f"ours by dlt step (the run's last load): {phases_line(our_phases)}")
        ratio = ours.work_seconds / recv.seconds
        print(f"ours / pg_recvlogical: {ratio:.2f}x work time "
              f"({ours.seconds / recv.seconds:.2f}x wall, interpreter start included)")
        print_result("cdc", {
            "changes": args.changes, "tx_size": args.tx_size, "repeat": args.repeat,
            "pg_recvlogical_s": round(recv.seconds, 3), "ours_s": round(ours.work_seconds, 3),
            "ours_wall_s": round(ours.seconds, 3), "ours_peak_rss_mb": round(ours.peak_rss_mb, 1),
            "ours_over_recvlogical": round(ratio, 2),
            **{f"ours_{name}_s": round(seconds, 3) for name, seconds in our_phases.items()},
        })
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
