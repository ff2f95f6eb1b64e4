"""`verify --data`: compares every replicated table, source against destination (data_check.py),
without crying wolf under live writes.

Under the run lock (no cdc or snapshot runs meanwhile):

1. every chunk of every table is compared: the source as it is now, the destination as loaded.
   Under live writes the destination is behind, so chunks holding rows written since the last
   load differ; equal chunks are done;
2. when some differ, a temporary slot exports a snapshot of the source at its consistent point P,
   a cdc run applies exactly the transactions committed before P (jobs.catch_up), and the
   differing chunks are compared again: the source in that snapshot, the destination as it is
   now. Both then hold the same transactions, so what still differs is a real difference, and
   its rows are named.

Step 2 costs a slot creation, which waits for the transactions open at that moment to end, like
`snapshot` (what it waits for is said on stderr), for at most `wait` seconds (at least
MIN_TRANSACTION_WAIT): the run lock is held meanwhile, and a cdc run would be turned away.
"""

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import dlt

from .catalog import TableInfo, describe_schema_tables
from .connect import connect
from .data_check import (ChunkSums, TablePlan, TableResult, chunk_digits, compare,
                         destination_reader, source_side, table_plans)
from .exceptions import ConfigError, snapshot_command
from .filters import with_filters
from .hints import ExistingColumn, schema_column_lookup
from .integrity import required_tables
from .jobs import catch_up, stored_state
from .online import copy_progress
from .protocol import int_to_lsn
from .settings import PgReplicationConfiguration as Settings
from .slots import acquire_run_lock, check_server, create_slot_with_snapshot
from .snapshot import begin_snapshot_transaction

DEFAULT_MAX_KEYS = 10


@dataclass
class DataReport:
    tables: List[TableResult] = field(default_factory=list)
    caught_up_to: Optional[int] = None  # the snapshot's position the differing chunks were rechecked at
    seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return all(table.equal for table in self.tables)

    def lines(self) -> List[str]:
        lines = [table.line() for table in self.tables]
        if self.caught_up_to is not None:
            lines.append(f"- chunks that differed were compared again at "
                         f"{int_to_lsn(self.caught_up_to)}, once the destination held every "
                         "change before it")
        if not self.tables:
            lines.append("data: no table is replicated yet: nothing compared")
            return lines
        # A table that could not be compared (not copied yet, ...) is not counted as compared.
        compared = [table for table in self.tables if table.problem is None]
        differ = sum(not table.equal for table in compared)
        parts = [f"data: {len(compared)} table(s) compared"]
        if compared:
            parts.append(f"{differ} differ" if differ else "all equal")
        if len(compared) < len(self.tables):
            parts.append(f"{len(self.tables) - len(compared)} could not be compared")
        lines.append(", ".join(parts + [f"{self.seconds:.2f}s"]))
        return lines

    def as_dict(self) -> Dict[str, object]:
        return {"equal": self.equal, "tables": [t.as_dict() for t in self.tables],
                "rechecked_at": (int_to_lsn(self.caught_up_to)
                                 if self.caught_up_to is not None else None),
                "seconds": round(self.seconds, 3)}


MIN_TRANSACTION_WAIT = 1.0  # seconds: `--wait 0` still lets the slot creation itself finish


def run_verify_data(settings: Settings, pipeline: dlt.Pipeline,
                    tables: Optional[Sequence[str]] = None, max_keys: int = DEFAULT_MAX_KEYS,
                    on_progress: Callable[[str], None] = lambda line: None,
                    once_locked: Callable[[], None] = lambda: None,
                    wait: float = 0.0) -> DataReport:
    """Compares `tables` (default: every replicated table); `once_locked` runs as soon as the
    run lock is held, tried for `wait` seconds (the checklist: a running cdc keeps DuckDB's
    file, so `verify --data` reads nothing before it may)."""
    started = time.monotonic()
    lock = connect(settings.dsn)
    try:
        check_server(lock)
        acquire_run_lock(lock, settings.slot_name, wait)
        compared = _tables_to_compare(lock, settings, tables)  # an unknown name: only its error
        once_locked()
        plans = table_plans(lock, compared, stored_state(pipeline), _schema_columns(pipeline))
        results: Dict[str, TableResult] = {}
        sums = _first_pass(lock, settings, pipeline, plans, results, on_progress)
        suspects = {label: found for label, found in sums.items() if found.differing}
        report = DataReport()
        if suspects:
            report.caught_up_to = _recheck(lock, settings, pipeline, plans, suspects, max_keys,
                                           results, on_progress, wait)
        for label, found in sums.items():
            results.setdefault(label, found.result())
        report.tables = [results[plan.label] for plan in plans]
        report.seconds = time.monotonic() - started
        return report
    finally:
        lock.close()


def _tables_to_compare(conn, settings: Settings, wanted: Optional[Sequence[str]]
                       ) -> List[TableInfo]:
    pairs = [tuple(key.split(".", 1)) for key in required_tables(conn, settings)]
    described = with_filters(describe_schema_tables(conn, pairs, settings.schema_name, False),
                             conn.server_version, settings.table_filters)
    if not wanted:
        return list(described.values())
    by_pair = {(table.schema, table.name): table for table in described.values()}
    # `t` and `public.t` name one table: as snapshot takes them, compared once
    pairs = list(dict.fromkeys(settings.source_table(name) for name in wanted))
    unknown = [name for name in wanted if settings.source_table(name) not in by_pair]
    if unknown:
        raise ConfigError(f"--tables: {', '.join(unknown)} not replicated (replicated: "
                          f"{', '.join(described) or 'none'})")
    return [by_pair[pair] for pair in pairs]


def _first_pass(lock, settings: Settings, pipeline: dlt.Pipeline, plans: List[TablePlan],
                results: Dict[str, TableResult], on_progress: Callable[[str], None]
                ) -> Dict[str, ChunkSums]:
    in_progress = {p.table for p in copy_progress(lock, stored_state(pipeline),
                                                  settings.schema_name)}
    utf8 = _utf8(lock)
    sums: Dict[str, ChunkSums] = {}
    with destination_reader(pipeline) as destination:
        for number, plan in enumerate(plans, 1):
            on_progress(f"comparing {plan.label} ({number}/{len(plans)})")
            if plan.label in in_progress:
                results[plan.label] = _problem(plan, "its online copy is not finished: "
                                               f"{snapshot_command([plan.label], online=True)} "
                                               "finishes it")
                continue
            theirs = destination.side(plan)
            if theirs is None:
                results[plan.label] = _problem(plan, "not in the destination: "
                                               f"{snapshot_command([plan.label])} copies it")
                continue
            if theirs.missing:
                results[plan.label] = _problem(
                    plan, f"column {', '.join(theirs.missing)} is missing in the destination: "
                    f"{snapshot_command([plan.label])} copies it again")
                continue
            ours = source_side(plan, lock, utf8)
            sums[plan.label] = ChunkSums.read(
                plan, ours, theirs, chunk_digits(plan, _estimated_rows(lock, plan.table)))
    return sums


def _recheck(lock, settings: Settings, pipeline: dlt.Pipeline, plans: List[TablePlan],
             suspects: Dict[str, ChunkSums], max_keys: int, results: Dict[str, TableResult],
             on_progress: Callable[[str], None], wait: float) -> int:
    """Compares the differing chunks again once the destination holds exactly what a snapshot of
    the source holds; returns the snapshot's position."""
    on_progress(f"{len(suspects)} table(s) differ: catching up to compare them again")
    exporter, point, snapshot_name = create_slot_with_snapshot(
        settings.dsn, f"{settings.slot_name[:40]}_verify_{uuid.uuid4().hex[:8]}", temporary=True,
        max_wait=max(wait, MIN_TRANSACTION_WAIT), waiter="verify --data", wait_option="--wait")
    reader = connect(settings.dsn)
    try:
        begin_snapshot_transaction(reader, snapshot_name)
        exporter.close()  # the reader holds the snapshot now; the temporary slot goes
        catch_up(lock, settings, pipeline, point)
        utf8 = _utf8(lock)
        by_label = {plan.label: plan for plan in plans}
        with destination_reader(pipeline) as destination:
            for label, first in suspects.items():
                on_progress(f"comparing {label} again at {int_to_lsn(point)}")
                plan = by_label[label]
                theirs = destination.side(plan)
                if theirs is None:
                    results[label] = _problem(plan, "gone from the destination")
                    continue
                ours = source_side(plan, reader, utf8)
                again = first.reread(ours, theirs, first.differing)
                results[label] = compare(plan, ours, theirs, max_keys, again)
    finally:
        reader.close()
        exporter.close()
    return point


def _schema_columns(pipeline: dlt.Pipeline) -> Optional[ExistingColumn]:
    return schema_column_lookup(pipeline.default_schema) if pipeline.default_schema_name else None


def _problem(plan: TablePlan, problem: str) -> TableResult:
    return TableResult(plan.label, plan.target, problem=problem)


def _utf8(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SHOW server_encoding")
        return cur.fetchone()[0] == "UTF8"


def _estimated_rows(conn, table: TableInfo) -> int:
    """The planner's row count of the table (of its partitions), or its live rows' count."""
    with conn.cursor() as cur:
        # (pg_partition_tree lists nothing for a table that is not partitioned)
        cur.execute("SELECT coalesce(sum(greatest(c.reltuples, s.n_live_tup, 0)), 0)::bigint "
                    "FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid "
                    "WHERE c.oid = %s OR c.oid IN (SELECT relid FROM pg_partition_tree(%s))",
                    (table.oid, table.oid))
        return int(cur.fetchone()[0])
