"""The two jobs the CLI runs, `snapshot` and `cdc`, as dlt pipeline runs with a safe slot protocol.

Order of a cdc run (the checks run once, in `_checked_start`; the building blocks below assume
them):
1. check the server and take the run lock (an advisory lock named after the slot), so runs never
   overlap;
2. refuse when the publication lists partitions instead of their tables; move a table that lost
   its row identity to the insert-only publication (so the application's writes keep working)
   and refuse, naming the snapshot that copies it again (integrity.py);
3. refuse when the destination lost what this pipeline loaded (integrity.py);
4. load any package a crashed run left behind (dlt would otherwise load it and silently ignore
   the new data) and confirm the slot up to the position that package carried;
5. refuse when the slot is gone or a table's copy is missing (integrity.py);
6. fix the stop position, then refuse schema changes the stream cannot carry (ddl.py) and updates
   of insert-only tables (insert_only.py);
7. read a segment of changes on the run's connection, load it, and only then confirm the slot up
   to what was loaded; repeat while a segment ended early (truncate, repeated key, load size).

A slot that no load has used (the first snapshot failed or was killed) holds nothing the
destination needs: every table's copy is still to come and will start at its own hand-off. `cdc`
then confirms that slot up to the current WAL position, so it retains no WAL while the pipeline
waits for its snapshot, and refuses with "run `snapshot`".
"""

import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import dlt

from .bounds import RunBounds
from .catalog import TableInfo, table_key, unreplicable_schema_tables
from .changes import SegmentResult
from .connect import connect
from .chunks import Chunk
from .copies import (addable_tables, copy_source, prepare_copy, refuse_unknown_filtered_tables,
                     select_tables)
from .ddl import Leaves, read_leaves
from .destinations import apply_table_format, is_local_duckdb
from .dlt_compat import (destination_state, destination_table_identifier, make_source,
                         recreate_tables_gone_from_destination, drop_tables_a_copy_cannot_fill)
from .exceptions import (CopyMissingError, SlotError, SlotInUseError, SourceNotReadyError,
                         mask_secrets, snapshot_command)
from .failover import align_failover, standby_wait_problem, unguarded_failover_problem
from .failures import essential_line, is_file_lock_conflict
from .handoff import short_names
from .insert_only import insert_only_problems
from .integrity import (check_schema_changes, copy_problems, destination_lost, filter_problems,
                        integrity_problems, loaded_state, release_rejected_filters,
                        release_tables_without_identity,
                        remember_loaded_state, required_tables, schema_change_notes,
                        tables_not_replicated)
from .online import ChunkReader, CopyProgress, copy_progress
from .pending_loads import explain_refusal, finish_pending_load
from .names import destination_table, display_name
from .protocol import int_to_lsn
from .segments import changes_resource, run_stop_position
from .stream import STALL_SECONDS
from .settings import PgReplicationConfiguration as Settings
from .slots import (acquire_run_lock, advance_slot, check_logical_messages,
                    check_partition_root_publishing, check_server, check_slot_usable,
                    current_database, get_slot, run_lock_holder)
from .standby import refuse_on_standby
from .state import SOURCE_NAME, LoadedState, Position
from .status import StatusReport, collect_status, read_run_record, record_run
from .verify import Check, pending_packages, run_checks


@dataclass
class SnapshotReport:
    rows: Dict[str, int]
    handoff_lsn: Optional[int]
    seconds: float
    keyless_tables: List[str] = field(default_factory=list)
    skipped_tables: List[str] = field(default_factory=list)  # UNLOGGED or foreign: no WAL
    online_chunks: Optional[Dict[str, int]] = None  # `--online`: chunks per table copied online

    def summary(self) -> str:
        return f"{sum(self.rows.values())} rows in {len(self.rows)} tables"

    def table_lines(self) -> List[str]:
        return [self._table_line(table, rows) for table, rows in sorted(self.rows.items())]

    def _table_line(self, table: str, rows: int) -> str:
        if self.online_chunks is None:
            return f"{table}: {rows} rows"
        if table in self.online_chunks:
            return f"{table}: {rows} rows copied online in {self.online_chunks[table]} chunks"
        return f"{table}: {rows} rows (no key: copied whole, in one consistent snapshot)"

    def warnings(self) -> List[str]:
        """What the tables left out, or replicated only in part, mean (for stderr)."""
        skipped = [f"warning: {table} is UNLOGGED or a foreign table: PostgreSQL writes no WAL "
                   "for it, so it is not replicated" for table in self.skipped_tables]
        keyless = [f"warning: {table} has no primary key (or a deferrable one): only its "
                   "inserts are replicated (append), and an UPDATE or DELETE of it stops cdc "
                   "until it is copied again; to replicate them give it a primary key, REPLICA "
                   "IDENTITY USING INDEX, or (with a deferrable key) REPLICA IDENTITY FULL"
                   for table in self.keyless_tables]
        return skipped + keyless

    def total_line(self) -> str:
        handoff = f", hand-off LSN {int_to_lsn(self.handoff_lsn)}" if self.handoff_lsn else ""
        return (f"total: {sum(self.rows.values())} rows in {len(self.rows)} tables{handoff}, "
                f"{self.seconds:.2f}s")


@dataclass
class CdcReport:
    changes: Dict[str, int] = field(default_factory=dict)
    first_lsn: Optional[int] = None
    last_lsn: Optional[int] = None
    confirmed_lsn: Optional[int] = None
    pending_loaded: bool = False
    loads: int = 0  # segments loaded: more than one when bounded by bytes, truncates, ...
    seconds: float = 0.0
    schema_changes: List[str] = field(default_factory=list)  # carried on (ddl.py)
    not_replicated: List[str] = field(default_factory=list)  # tables `snapshot --tables` adds
    not_replicable: List[str] = field(default_factory=list)  # why others cannot be added
    # table -> [rows read, chunks] of the online copies' chunks this run loaded (chunks.py)
    copied_online: Dict[str, List[int]] = field(default_factory=dict)
    stuck_copies: Dict[str, str] = field(default_factory=dict)  # table_key -> why it stopped
    ended_copies: List[str] = field(default_factory=list)  # table_keys gone during their copy
    in_progress: List[CopyProgress] = field(default_factory=list)  # online copies not finished

    @property
    def total(self) -> int:
        return sum(self.changes.values())

    def summary(self) -> str:
        per_table = ", ".join(f"{t} {n}" for t, n in sorted(self.changes.items()))
        lsn_range = (f"LSN {int_to_lsn(self.first_lsn)}..{int_to_lsn(self.last_lsn)}"
                     if self.first_lsn is not None else "no new changes")
        confirmed = (f", slot confirmed to {int_to_lsn(self.confirmed_lsn)}"
                     if self.confirmed_lsn else "")
        tables = f" ({per_table})" if per_table else ""
        pending = ", after loading a package an earlier run left" if self.pending_loaded else ""
        if self.loads > 1:
            pending += f", in {self.loads} loads"
        ddl = f"; schema changes: {'; '.join(self.schema_changes)}" if self.schema_changes else ""
        if self.not_replicated:
            ddl += (f"; not replicated: {', '.join(self.not_replicated)} (not in the "
                    f"publication: {snapshot_command(self.not_replicated)} adds them)")
        for line in self.not_replicable:
            ddl += f"; not replicated: {line}"
        return (f"cdc: {self.total} changes{tables}, {lsn_range}{confirmed}{pending}, "
                f"{self.seconds:.2f}s{ddl}{self.online_note()}")

    def online_note(self) -> str:
        """What the run did for the online copies, and what is left of them."""
        note = "".join(f"; {table}: {rows} rows copied online in {chunks} chunks"
                       for table, (rows, chunks) in sorted(self.copied_online.items()))
        for key in self.ended_copies:
            note += (f"; the online copy of {key} ended unfinished: the table was dropped; the "
                     "destination keeps what was copied")
        for key, problem in sorted(self.stuck_copies.items()):
            note += f"; the online copy of {key} could not go on: {problem}"
        if self.in_progress:
            names = [progress.table for progress in self.in_progress]
            note += (f"; online copy in progress: {'; '.join(p.line() for p in self.in_progress)} "
                     f"(it goes on with {snapshot_command(names, online=True)} or "
                     "`cdc --max-seconds N`)")
        return note


def stored_state(pipeline: dlt.Pipeline) -> LoadedState:
    """What the local pipeline state says the destination holds."""
    return LoadedState.from_pipeline_state(pipeline.state)


def stored_position(pipeline: dlt.Pipeline) -> Position:
    """The stream position in the local pipeline state."""
    return stored_state(pipeline).position


def run_snapshot(settings: Settings, pipeline: dlt.Pipeline) -> SnapshotReport:
    """Creates publication and slot if needed and copies the tables as of the slot's start."""
    started = time.monotonic()
    lock = connect(settings.dsn)
    try:
        check_server(lock)
        acquire_run_lock(lock, settings.slot_name)
        tables = select_tables(lock, settings)  # fail fast
        finish_pending_load(pipeline, lock, settings, copying=[
            destination_table_identifier(t.target) for t in tables.values()])
        plan = prepare_copy(lock, settings=settings, tables=tables)
        rows = _run_snapshot_source(copy_source(settings=settings, plan=plan), pipeline, tables,
                                    lock, settings)
        # Every table of one snapshot shares its hand-off: report the first one's.
        first = next(iter(tables.values()))
        handoff = LoadedState.from_pipeline_state(pipeline.state).handoffs.get(
            table_key(first.schema, first.name))
        keyless = sorted(name for name, table in tables.items() if not table.merge_key)
        return SnapshotReport(rows, handoff, time.monotonic() - started, keyless,
                              _skipped_tables(lock, settings))
    finally:
        lock.close()


def _skipped_tables(conn, settings: Settings) -> List[str]:
    """The UNLOGGED and foreign tables among those wanted, as users write them."""
    names = [display_name(schema, name, settings.schema_name)
             for schema, name in unreplicable_schema_tables(conn, settings.schema_names)]
    return [name for name in names if not settings.table_names or name in settings.table_names]


def run_online_snapshot(settings: Settings, pipeline: dlt.Pipeline,
                        on_chunk: Callable[[CopyProgress], None],
                        bounds: RunBounds = RunBounds()) -> Tuple[SnapshotReport, CdcReport]:
    """Copies the keyed tables online (chunks.py), while the change stream is applied and the
    slot confirmed, and the tables without a key whole, inside one exported snapshot. A table
    whose online copy is in progress goes on from its stored cursor. `bounds` (max_seconds)
    may end the run with copies still in progress.

    Raises:
        CopyMissingError: An online copy could not go on (see _advance_online_copies).
    """
    started = time.monotonic()
    lock = connect(settings.dsn)
    try:
        check_server(lock)
        refuse_on_standby(lock, "an online copy (`snapshot --online`)")
        check_logical_messages(lock)
        acquire_run_lock(lock, settings.slot_name)
        tables = select_tables(lock, settings)  # fail fast
        finish_pending_load(pipeline, lock, settings)
        resumed = _resumable_copies(lock, settings, stored_state(pipeline), tables)
        starting = {name: table for name, table in tables.items() if name not in resumed}
        rows: Dict[str, int] = {}
        if starting:  # emptied in the destination, with a hand-off from now on
            plan = prepare_copy(lock, settings=settings, tables=starting, online=list(starting))
            rows = _run_snapshot_source(copy_source(settings=settings, plan=plan), pipeline,
                                        starting, lock, settings)
        report = CdcReport()
        _run_cdc_on(lock, settings, pipeline, bounds, report, on_chunk)
        report.seconds = time.monotonic() - started
        stuck = [(name, problem) for key, problem in report.stuck_copies.items()
                 for name in short_names([key], settings.schema_name) if name in tables]
        if stuck:
            name, problem = stuck[0]
            raise CopyMissingError(
                f"{name}: the online copy could not go on ({problem}, {ONLINE_CHUNK_MISSES} times "
                f"in a row): run {snapshot_command([name], online=True)} again, or "
                f"{snapshot_command([name])} to copy it in one consistent snapshot")
        return _online_snapshot_report(tables, rows, report, started), report
    finally:
        lock.close()


def _resumable_copies(conn, settings: Settings, loaded: LoadedState,
                       tables: Dict[str, TableInfo]) -> List[str]:
    """The named tables whose online copy goes on from its cursor. The others start over: a copy
    that creates a new slot starts a new stream, and a table that changed in a way the stream
    cannot carry (ddl.py) needs a new copy anyway."""
    slot = get_slot(conn, settings.slot_name)
    if slot is None or slot.wal_status == "lost":
        return []
    keys = [key for key in (table_key(t.schema, t.name) for t in tables.values())
            if key in loaded.online_copies]
    if not keys:
        return []
    _, checks = check_schema_changes(conn, settings.schema_name, loaded, keys)
    return short_names([key for key in keys if key in checks and not checks[key].needs_copy],
                       settings.schema_name)


def _online_snapshot_report(tables: Dict[str, TableInfo], rows: Dict[str, int],
                            report: CdcReport, started: float) -> SnapshotReport:
    """What `snapshot --online` says per table: rows and chunks copied online, or rows copied
    whole (`rows`: the consistent copy's counts)."""
    keyless = sorted(name for name, table in tables.items() if not table.merge_key)
    online = [name for name in tables if name not in keyless]
    # The online tables' counts from the consistent copy (0: emptied) give way to their chunks'.
    rows = {name: count for name, count in rows.items() if name not in online}
    chunks: Dict[str, int] = {}
    for name in online:
        rows[name], chunks[name] = report.copied_online.get(name, (0, 0))
    return SnapshotReport(rows, None, time.monotonic() - started, keyless, online_chunks=chunks)


def _run_snapshot_source(source, pipeline: dlt.Pipeline, tables: Dict[str, TableInfo],
                         conn, settings: Settings) -> Dict[str, int]:
    """Loads the copy; returns its rows per table, by TableInfo.label."""
    label_of = {destination_table_identifier(t.target): label for label, t in tables.items()}
    # A copied table dropped in the destination is created again (empty) only once its copy is
    # extracted and normalized: a copy that fails before leaves it missing, so that cdc, verify
    # and status go on saying so (an empty table would pass for a copied one).
    targets = [t.target for t in tables.values()]

    def before_load() -> None:
        drop_tables_a_copy_cannot_fill(pipeline, targets)
        recreate_tables_gone_from_destination(pipeline, targets)

    normalize = _load(source, pipeline, conn, settings, before_load=before_load)
    remember_loaded_state(pipeline)
    counts: Dict[str, int] = {}
    if normalize is not None:
        for table, count in normalize.row_counts.items():
            if not table.startswith("_dlt"):
                label = label_of.get(table, table)
                counts[label] = counts.get(label, 0) + count
    return counts


def run_cdc(settings: Settings, pipeline: dlt.Pipeline, bounds: RunBounds = RunBounds(),
            on_chunk: Callable[[CopyProgress], None] = lambda progress: None) -> CdcReport:
    """Loads the changes since the stored position and confirms the slot after each load.

    A stop requested in `bounds` ends reading at the next commit; what was read is still loaded
    and confirmed. With `max_seconds`, the time left once the stream is caught up advances the
    online copies in progress (chunks.py).
    """
    started = time.monotonic()
    report = CdcReport()
    lock = connect(settings.dsn)
    try:
        _run_cdc_on(lock, settings, pipeline, bounds, report,
                on_chunk if bounds.max_seconds is not None else None)
    finally:
        lock.close()
    report.seconds = time.monotonic() - started
    return report


def _run_cdc_on(lock, settings: Settings, pipeline: dlt.Pipeline, bounds: RunBounds,
            report: CdcReport, on_chunk: Optional[Callable[[CopyProgress], None]]) -> None:
    """A cdc run on the run's connection; then, with `on_chunk`, the online copies' chunks."""
    shapes, expected_truncates, (stop_lsn, written) = _checked_start(lock, settings, pipeline,
                                                                     report)
    if bounds.stop_lsn and bounds.stop_lsn < stop_lsn:  # the caller's stop (catch_up)
        stop_lsn, written = bounds.stop_lsn, False
    # The bounds count from here: the checks above can take seconds on a remote destination.
    bounds = bounds.started(stop_lsn, written)
    while True:
        segment = _load_segment(lock, settings, pipeline, bounds.after(report.total), shapes)
        _confirm_segment(lock, settings, report, segment)
        if not segment.more or bounds.stop_was_requested():
            break
    if report.confirmed_lsn is not None and report.confirmed_lsn >= stop_lsn:
        _refuse_partition_truncates(settings, shapes, expected_truncates)
    if on_chunk is not None and report.confirmed_lsn is not None and report.confirmed_lsn >= stop_lsn:
        _advance_online_copies(lock, settings, pipeline, bounds, report, on_chunk)
    report.in_progress = copy_progress(lock, stored_state(pipeline), settings.schema_name)


def catch_up(lock, settings: Settings, pipeline: dlt.Pipeline, consistent_point: int
             ) -> CdcReport:
    """A cdc run on the run's connection (which holds the run lock) that applies exactly the
    transactions a snapshot exported at `consistent_point` sees: those whose commit record lies
    before it (verify --data). One committing exactly at the point is not in the snapshot (seen
    in the WAL: RUNNING_XACTS, then that COMMIT at the consistent point), so the stop is the
    position before it: a run leaves the transactions committing after its stop."""
    report = CdcReport()
    _run_cdc_on(lock, settings, pipeline, RunBounds(stop_lsn=consistent_point - 1), report,
                None)
    return report


def _confirm_segment(lock, settings: Settings, report: CdcReport, segment: SegmentResult) -> None:
    """Confirms the slot up to what the loaded segment allows, and counts the segment."""
    report.loads += 1
    if segment.confirm_lsn:
        advance_slot(lock, settings.slot_name, segment.confirm_lsn)
        report.confirmed_lsn = segment.confirm_lsn
    _add_counts(report, segment)
    if segment.stalled:
        raise SourceNotReadyError(
            f"the server sent nothing for {STALL_SECONDS:.0f} s before the run's stop position "
            "(still decoding a large transaction, or WAL far behind the slot's restart_lsn?): "
            "what was read is loaded and the slot confirmed that far; run cdc again")


def _advance_online_copies(lock, settings: Settings, pipeline: dlt.Pipeline, bounds: RunBounds,
                           report: CdcReport, on_chunk: Callable[[CopyProgress], None]) -> None:
    """Copies chunks of the online copies in progress, one table after the other, until they are
    done or `bounds` end the run; each chunk is one window of the stream (chunks.py). A table
    whose chunk failed ONLINE_CHUNK_MISSES times in a row is left for this run, and why is noted
    in `report.stuck_copies`."""
    reader = ChunkReader(settings.dsn, settings.online_chunk_rows, settings.online_chunk_bytes,
                         settings.table_filters)
    misses: Dict[str, int] = {}
    try:
        while not bounds.should_stop():
            loaded = stored_state(pipeline)
            keys = sorted(key for key in loaded.online_copies if key not in report.stuck_copies)
            if not keys:
                return
            chunk = _copy_chunk(lock, reader, settings, pipeline, bounds, report, loaded, keys[0])
            if chunk is not None and chunk.released is not None:
                misses.pop(keys[0], None)
                name = short_names([keys[0]], settings.schema_name)[0]
                copied = report.copied_online.setdefault(name, [0, 0])
                copied[0] += chunk.rows.num_rows
                copied[1] += 1
                for progress in copy_progress(lock, stored_state(pipeline), settings.schema_name):
                    on_chunk(progress)
            elif not bounds.stop_was_requested() and not reader.gone:
                misses[keys[0]] = misses.get(keys[0], 0) + 1
                if misses[keys[0]] >= ONLINE_CHUNK_MISSES:
                    report.stuck_copies[keys[0]] = _chunk_problem(chunk, reader)
    finally:
        reader.close()


ONLINE_CHUNK_MISSES = 5  # a run leaves a table's online copy after this many failed chunks


def _chunk_problem(chunk: Optional[Chunk], reader: ChunkReader) -> str:
    """Why a chunk could not be handed on."""
    if chunk is None:
        return reader.problem
    if chunk.unknown_key:
        return ("in every window the stream changed a row whose key it did not send (a TOASTed "
                "key left unchanged), so no chunk could be matched")
    return "the stream did not reach the chunk's high watermark"


def _copy_chunk(lock, reader: ChunkReader, settings: Settings, pipeline: dlt.Pipeline,
                bounds: RunBounds, report: CdcReport, loaded: LoadedState,
                key: str) -> Optional[Chunk]:
    """Reads the table's next chunk, then loads the stream up to its high watermark, where the
    chunk is handed on; None when no chunk could be read (online.ChunkReader.next_chunk). The
    copy of a table that is gone ends there, with a load of the stream up to now."""
    leaves = read_leaves(lock, list(loaded.oids.values()))
    schema, name = key.split(".", 1)
    chunk = reader.next_chunk(lock, schema, name, loaded.oids.get(key, 0),
                              loaded.online_copies[key])
    if chunk is None and not reader.gone:
        return None
    stop, written = ((chunk.high, True) if chunk is not None
                     else run_stop_position(lock, settings.primary_dsn))
    # The window's stop is taken: the schema changes before it are checked.
    shapes, truncates = _refuse_uncarried_schema_changes(lock, settings, loaded, report, leaves)
    window = RunBounds(stop_lsn=stop, stop_requested=bounds.stop_requested, stop_written=written)
    ended = [] if chunk is not None else [key]
    while True:
        pending = chunk if chunk is not None and chunk.released is None else None
        segment = _load_segment(lock, settings, pipeline, window, shapes, pending, ended)
        _confirm_segment(lock, settings, report, segment)
        ended = []  # stored with the first load
        if not segment.more or bounds.stop_was_requested():
            break
    if chunk is None:
        report.ended_copies.append(key)
    if report.confirmed_lsn is not None and report.confirmed_lsn >= stop:
        _refuse_partition_truncates(settings, shapes, truncates)
    return chunk


def _checked_start(lock, settings: Settings, pipeline: dlt.Pipeline, report: CdcReport
                   ) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, int], Tuple[int, bool]]:
    """The checks before a cdc run reads (steps 1-6 of the module docstring); returns the shapes
    to record, the TRUNCATEs expected by the stop, and the stop position (with whether it is a
    heartbeat the run wrote: segments.run_stop_position)."""
    check_server(lock)
    acquire_run_lock(lock, settings.slot_name)
    # First: without publish_via_partition_root the publication lists partitions, not tables.
    check_partition_root_publishing(lock, settings.pub_name, settings.table_filters,
                                    settings.schema_name)
    refuse_unknown_filtered_tables(lock, settings)  # a typo would let a column out
    released = (release_tables_without_identity(lock, settings)
                or release_rejected_filters(lock, settings))
    if released:
        raise CopyMissingError(released)
    remote = destination_state(pipeline)
    lost = destination_lost(pipeline, remote)
    if lost:
        raise CopyMissingError(lost)
    report.pending_loaded = finish_pending_load(pipeline, lock, settings)
    loaded = loaded_state(pipeline, remote)
    _refuse_without_copies(lock, settings, pipeline, loaded)
    # Read before the stop is taken: a TRUNCATE that changed them is before the stop.
    leaves = read_leaves(lock, list(loaded.oids.values()))
    # Taken before the catalog is checked: every DDL the run reads up to is in that check.
    stop = run_stop_position(lock, settings.primary_dsn)
    shapes, expected_truncates = _refuse_uncarried_schema_changes(lock, settings, loaded,
                                                                  report, leaves)
    report.not_replicated, report.not_replicable = _not_replicated(lock, settings)
    return shapes, expected_truncates, stop


def follow_cdc(settings: Settings, pipeline: dlt.Pipeline, interval: float,
               stop: threading.Event, on_report: Callable[[CdcReport], None]) -> None:
    """Runs cdc again and again, `interval` seconds apart, until `stop` is set (SIGTERM).

    A stop during a run ends its reading at the next commit; the run still loads and confirms
    what it read before returning. A run that finds the slot or the DuckDB file taken by another
    process (`_passing_conflict`) is tried again; nothing was confirmed, and the next run loads
    what it left.
    """
    conflicts = 0
    while not stop.is_set():
        try:
            with recorded_run(pipeline, "cdc", retried=lambda e: _passing_conflict(
                    e, conflicts) is not None) as record:
                report = run_cdc(settings, pipeline, RunBounds(stop_requested=stop.is_set))
                record["summary"] = report.summary()
        except Exception as e:
            waiting_for = _passing_conflict(e, conflicts)
            if waiting_for is None:
                raise
            if conflicts == 0 or conflicts % FOLLOW_NOTE_EVERY == 0:
                print(f"cdc: {waiting_for}; trying again every {FOLLOW_LOCK_WAIT:g} s",
                      file=sys.stderr, flush=True)
            conflicts += 1
            stop.wait(FOLLOW_LOCK_WAIT)
            continue
        conflicts = 0
        on_report(report)
        stop.wait(interval)


def _passing_conflict(error: BaseException, conflicts: int) -> Optional[str]:
    """What a follow waits for, or None when `error` ends it:
    - another run (a cron `cdc`, a `snapshot --tables`) holds the slot: it ends on its own, however
      long a snapshot takes;
    - another process opened the DuckDB file (a query, `verify`): only a lasting conflict
      (FOLLOW_LOCK_RETRIES in a row) ends the follow."""
    if isinstance(error, SlotInUseError):
        return essential_line(error)
    if is_file_lock_conflict(error) and conflicts < FOLLOW_LOCK_RETRIES:
        return f"the DuckDB file is open in another process ({essential_line(error)})"
    return None


FOLLOW_LOCK_RETRIES = 30  # consecutive DuckDB file-lock conflicts `cdc --follow` waits through
FOLLOW_LOCK_WAIT = 2.0  # seconds between tries
FOLLOW_NOTE_EVERY = 30  # a long wait is noted on stderr once a minute


def run_status(settings: Settings, pipeline: dlt.Pipeline,
               max_lag_mb: Optional[float]) -> StatusReport:
    conn = connect(settings.dsn)
    try:
        position = stored_position(pipeline).lsn or None
        report = collect_status(conn, settings.slot_name, settings.pub_name, position,
                                read_run_record(pipeline.working_dir), max_lag_mb)
        report.running_pid = run_lock_holder(conn, settings.slot_name)
        report.problems += [problem for problem in (
            standby_wait_problem(conn, settings.slot_name),
            unguarded_failover_problem(conn, settings.slot_name)) if problem]
        if not report.running_pid:  # a running job's own packages are not left behind
            report.pending_packages = len(pending_packages(pipeline))
        # The running job holds DuckDB's file: opening it, even to read, would fail here and
        # make the job's next load fail. Other destinations take concurrent readers.
        report.destination_checked = not (report.running_pid and is_local_duckdb(pipeline))
        if report.destination_checked:
            problems = _destination_problems(conn, settings, pipeline)
            report.destination_checked = problems is not None
            report.problems.extend(problems or [])
        report.not_replicated, report.not_replicable = _not_replicated(conn, settings)
        report.tables = _tables_by_schema(conn, settings)
        report.online_copies = copy_progress(conn, stored_state(pipeline), settings.schema_name)
        return report
    finally:
        conn.close()


def _tables_by_schema(conn, settings: Settings) -> Dict[str, List[str]]:
    """The replicated tables of each configured schema; those of the non-default schemas with
    their destination table."""
    tables: Dict[str, List[str]] = {schema: [] for schema in settings.schema_names}
    for key in required_tables(conn, settings):
        schema, name = key.split(".", 1)
        target = destination_table(schema, name, settings.schema_name)
        landing = destination_table_identifier(target)  # as dlt's snake_case names it
        tables[schema].append(name if landing == name else f"{name} -> {landing}")
    return tables


def _not_replicated(conn, settings: Settings) -> Tuple[List[str], List[str]]:
    """Tables of the schema outside the publication: those a snapshot can add, and why the
    others cannot be (name collisions)."""
    names = tables_not_replicated(conn, settings)
    if not names:
        return [], []
    return addable_tables(conn, settings, names)


def _destination_problems(conn, settings: Settings,
                          pipeline: dlt.Pipeline) -> Optional[List[str]]:
    """The problems `status` reports; None when a run (just started) has the DuckDB file."""
    try:
        return integrity_problems(conn, settings, pipeline)
    except Exception as e:  # noqa: BLE001 - status reports an unreachable destination, not raises
        if is_file_lock_conflict(e):
            return None
        return [mask_secrets(essential_line(e))]


def run_verify(settings: Settings, pipeline: dlt.Pipeline) -> List[Check]:
    conn = connect(settings.dsn)
    try:
        return run_checks(conn, settings.slot_name, pipeline,
                          lambda: integrity_problems(conn, settings, pipeline),
                          copy_progress(conn, stored_state(pipeline), settings.schema_name))
    finally:
        conn.close()


@contextmanager
def recorded_run(pipeline: dlt.Pipeline, command: str,
                 retried: Callable[[BaseException], bool] = lambda e: False
                 ) -> Iterator[Dict[str, str]]:
    """Records the outcome of a run for `status`; the caller puts its summary in the dict. A
    failure the caller tries again (`retried`) is not recorded."""
    record = {"summary": ""}
    try:
        yield record
    except Exception as e:
        if not retried(e):
            record_run(pipeline.working_dir, command, "failed", mask_secrets(essential_line(e)))
        raise
    record_run(pipeline.working_dir, command, "succeeded", record["summary"])


def _refuse_without_copies(conn, settings: Settings, pipeline: dlt.Pipeline,
                           loaded: LoadedState) -> None:
    """Raises unless the slot is usable and every table the stream applies to has its copy."""
    slot = get_slot(conn, settings.slot_name)
    if slot is None:
        # Nothing is created here: a new slot would silently skip the changes since the old one.
        if loaded.anything_loaded:
            raise SlotError(
                f"slot {settings.slot_name!r} does not exist, but the destination holds a copy "
                f"and changes up to {int_to_lsn(loaded.position.lsn)}: the slot was dropped and "
                "the changes since are lost on the source; run `snapshot` to copy the tables "
                "again")
        raise CopyMissingError(f"slot {settings.slot_name!r} does not exist and no snapshot has "
                               "been loaded: run `snapshot`")
    check_slot_usable(slot, settings.slot_name, current_database(conn))
    align_failover(conn, settings.dsn, settings.slot_name, settings.failover)
    held_back = standby_wait_problem(conn, settings.slot_name)
    if held_back:
        raise SourceNotReadyError(held_back)
    problems = copy_problems(conn, settings, pipeline, loaded)
    if not problems:
        return
    if not loaded.anything_loaded:
        # Nothing loaded needs the slot's WAL (see the module docstring).
        advance_slot(conn, settings.slot_name, run_stop_position(conn, settings.primary_dsn)[0])
    raise CopyMissingError(problems[0])


def _refuse_uncarried_schema_changes(conn, settings: Settings, loaded: LoadedState,
                                     report: "CdcReport", leaves: Leaves
                                     ) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, int]]:
    """Raises when a table changed in a way the stream cannot carry (ddl.py), or one that takes
    only inserts had rows updated or deleted (insert_only.py); otherwise returns
    the shapes to record with the load and the TRUNCATEs the stream must carry by the stop
    (table_key -> xid), and notes what changed in the report."""
    required = required_tables(conn, settings)
    problems, checks = check_schema_changes(conn, settings.schema_name, loaded, required, leaves)
    problems += filter_problems(conn, settings, loaded, required)
    # A table taking only inserts that was updated since its copy (insert_only.py).
    problems += insert_only_problems(conn, loaded, required, settings.schema_name,
                                     settings.primary_dsn)
    if problems:
        raise CopyMissingError(problems[0])
    # Added to: an online run checks again before each chunk, against the shapes it recorded.
    report.schema_changes += [note for note in schema_change_notes(checks, settings.schema_name)
                              if note not in report.schema_changes]
    expected = {key: check.expected_truncate for key, check in checks.items()
                if check.expected_truncate is not None}
    return {key: check.shape for key, check in checks.items()}, expected


def _refuse_partition_truncates(settings: Settings, shapes: Dict[str, Dict[str, Any]],
                                expected: Dict[str, int]) -> None:
    """Raises when every partition of a table got new storage in one transaction before the stop
    and the stream, read up to the stop, carried no TRUNCATE of the table in it: its partitions
    were truncated (or rewritten) one by one, which the stream does not carry (ddl._check_leaves).
    The shapes keep the old storage, so every later run refuses too until a new copy."""
    failing = sorted(key for key, xid in expected.items()
                     if xid not in shapes.get(key, {}).get("truncated_by", []))
    if failing:
        names = short_names(failing, settings.schema_name)
        raise CopyMissingError(
            f"{', '.join(names)}: every partition was truncated or rewritten by name (TRUNCATE, "
            "VACUUM FULL, CLUSTER of the partitions), which the change stream does not carry: run "
            f"{snapshot_command(names)} to copy {'it' if len(names) == 1 else 'them'}"
            " again")


def _load_segment(lock, settings: Settings, pipeline: dlt.Pipeline, bounds: RunBounds,
                  shapes: Dict[str, Dict[str, Any]], chunk: Optional[Chunk] = None,
                  ended_copies: Sequence[str] = ()) -> SegmentResult:
    """Reads one segment on the run's checked connection and loads it (with an online copy's
    chunk, when the stream reaches its high watermark; ending the online copies of tables that
    are gone)."""
    segment = SegmentResult(Position())
    resource = changes_resource(settings=settings, bounds=bounds, result=segment, conn=lock,
                                require_copies=True, table_shapes=shapes, chunk=chunk,
                                ended_copies=ended_copies)
    _load(make_source(SOURCE_NAME, [resource]), pipeline, lock, settings)
    remember_loaded_state(pipeline)
    return segment


def _load(source, pipeline: dlt.Pipeline, conn, settings: Settings,
          before_load: Optional[Callable[[], Any]] = None) -> Optional[Any]:
    """Extracts, normalizes and loads `source` (calling `before_load` between normalize and
    load); returns what normalize counted (dlt's NormalizeInfo). A load the destination
    refuses for good is told as such (pending_loads)."""
    apply_table_format(source, pipeline)
    try:
        if before_load is None:
            pipeline.run(source, loader_file_format="parquet")
            return pipeline.last_trace.last_normalize_info if pipeline.last_trace else None
        pipeline.sync_destination()  # as run() does first: a new machine restores the state
        pipeline.extract(source, loader_file_format="parquet")
        normalized = pipeline.normalize()
        before_load()
        pipeline.load()
        return normalized
    except Exception as error:
        refused = explain_refusal(pipeline, conn, settings, error)
        if refused is error:
            raise
        raise refused from error


def _add_counts(report: CdcReport, segment: SegmentResult) -> None:
    for table, count in segment.changes.items():
        report.changes[table] = report.changes.get(table, 0) + count
    if segment.first_lsn is not None:
        report.first_lsn = report.first_lsn if report.first_lsn is not None else segment.first_lsn
        report.last_lsn = segment.last_lsn


