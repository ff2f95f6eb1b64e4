"""The change stream, as building blocks: a dlt resource that reads one segment of the slot (one
dlt load) and stores the new position in the source state, which dlt commits with the load.

Progress lives in the dlt source state of the source named `pg_replication` (state.py), shared
with the snapshot. The slot itself is confirmed only after a load succeeded: `jobs.run_cdc` does it
right after loading; the library's `flush_slot` confirms, before reading, the stored position of a
pipeline that has no pending load.

The job layer (jobs.run_cdc) hands its connection down, having checked the settings, the server
and the slot once; the library's resource opens and checks its own when it starts.
"""

import contextlib
import functools
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import dlt
import pyarrow as pa

from .bounds import RunBounds
from .catalog import (TableInfo, describe_schema_tables, fetch_current_values, load_type_catalog,
                      table_key)
from .changes import BatchLimits, ChangeCollector, SegmentResult, TableBatch, read_changes
from .chunks import Chunk
from .connect import connect
from .ddl import ColumnMap
from .destinations import load_bytes_for, merge_strategy_for
from .dlt_compat import current_load_id, current_pipeline
from .exceptions import CopyMissingError, SlotError
from .filters import with_filters
from .handoff import NEVER, NO_COPY, HandoffRule
from .hints import (LOAD_ID_COLUMN, DeltaOptions, existing_destination_column, mark_batch,
                    with_column_hints, with_delta_options)
from .insert_only import insert_only_problems
from .integrity import check_schema_changes, filter_problems
from .settings import PgReplicationConfiguration as Settings
from .slots import (advance_slot, check_slot_usable, current_database, current_wal_lsn,
                    existing_publications, get_slot, publication_relations, publication_tables)
from .snapshot import release_freed_memory
from .state import (LoadedState, Position, end_online_copy, record_chunk, record_shapes,
                    record_truncate, save_position)
from .protocol import int_to_lsn
from .standby import is_standby, primary_connection, replay_lsn, wait_for_replay
from .stream import ReplicationStream, emit_heartbeat

Shapes = Dict[str, Dict[str, Any]]


def changes_resource(*, settings: Settings, bounds: RunBounds = RunBounds(),
                     result: Optional[SegmentResult] = None, conn=None, flush_slot: bool = False,
                     require_copies: bool = False, table_shapes: Optional[Shapes] = None,
                     include_columns: Optional[Dict[str, Sequence[str]]] = None,
                     columns: Optional[Dict[str, Dict[str, Any]]] = None,
                     chunk: Optional[Chunk] = None, ended_copies: Sequence[str] = ()) -> Any:
    """The changes in the slot since the stored position, as one dlt resource (see
    sources.replication_resource for the arguments). With `conn`, the caller holds a connection
    and has checked the slot; otherwise the resource connects and checks when it starts. With
    `chunk`, an online copy's chunk is handed on at its high watermark (chunks.py), and the
    copy's progress stored with the load; the online copies of `ended_copies` (table_keys) end
    with it."""

    def changes() -> Iterator[Any]:
        segment = result if result is not None else SegmentResult(Position())
        state = dlt.current.source_state()
        loaded = LoadedState.from_source_state(state)
        segment.position = loaded.position
        reader = _SlotSegment(settings, bounds.started(), segment, loaded,
                                HandoffRule(loaded.handoffs, require_copies, loaded.oids),
                                ShapeCheck(loaded, settings, table_shapes),
                                include_columns, columns, chunk)
        with _checked_connection(conn, settings) as connection:
            pipeline = current_pipeline()
            if flush_slot and pipeline is not None and not pipeline.has_pending_data:
                advance_slot(connection, settings.slot_name, loaded.position.lsn)
            yield from reader.read(connection)
        for key in ended_copies:
            end_online_copy(state, key)
        if chunk is not None and chunk.released is not None:
            record_chunk(state, table_key(chunk.table.schema, chunk.table.name), chunk.last_key,
                         chunk.rows.num_rows, chunk.last)
        save_position(state, segment.position)
        release_freed_memory()  # before the destination loads, in this process for DuckDB

    return dlt.resource(changes, name="changes", write_disposition="merge")()


@contextlib.contextmanager
def _checked_connection(conn, settings: Settings) -> Iterator[Any]:
    """`conn` when the caller holds one; otherwise a new connection to a usable slot."""
    if conn is not None:
        yield conn
        return
    own = connect(settings.dsn)
    try:
        slot = _existing_slot(own, settings.slot_name)
        check_slot_usable(slot, settings.slot_name, current_database(own))
        yield own
    finally:
        own.close()


def _existing_slot(conn, slot_name: str):
    slot = get_slot(conn, slot_name)
    if slot is None:
        raise SlotError(f"slot {slot_name!r} does not exist; run `snapshot` to create it")
    return slot


class _SlotSegment:
    """One segment: from the stored position up to the stop (or a bound), into `segment`."""

    def __init__(self, settings: Settings, bounds: RunBounds,
                 segment: SegmentResult, loaded: LoadedState, handoffs: HandoffRule,
                 shape_check: "ShapeCheck", include_columns, columns,
                 chunk: Optional[Chunk] = None) -> None:
        self.settings, self.bounds, self.segment = settings, bounds, segment
        self.chunk = chunk
        self.loaded, self.handoffs, self.shape_check = loaded, handoffs, shape_check
        self.include_columns, self.columns = include_columns, columns
        pipeline = current_pipeline()
        self.merge_strategy = merge_strategy_for(pipeline, settings.merge_strategy)
        self.limits = BatchLimits(settings.target_batch_size, settings.target_batch_bytes,
                                  load_bytes_for(pipeline, settings.target_load_bytes))

    def read(self, conn) -> Iterator[Any]:
        publications = existing_publications(conn, self.settings.pub_name)
        published = _published_tables(conn, self.settings, publications)
        stop_lsn, stop_written = self.bounds.stop_lsn, self.bounds.stop_written
        if not stop_lsn:
            stop_lsn, stop_written = run_stop_position(conn, self.settings.primary_dsn)
        column_maps = self.shape_check.column_maps(conn)  # after the stop is fixed (ddl.py)
        slot = _existing_slot(conn, self.settings.slot_name)  # dropped since the checks?
        streamed, deferred_until = _publications_to_stream(
            conn, publications, self.handoffs, slot.confirmed_flush_lsn or 0)
        if deferred_until is not None and deferred_until <= stop_lsn:
            stop_lsn, stop_written = deferred_until, False
        reached = True  # nothing to decode before stop_lsn
        if streamed:
            collector = self._collector(conn, published, column_maps)
            yield from self._stream(collector, streamed, stop_lsn, stop_written)
            reached = self._streamed_to(stop_lsn, deferred_until)
        self._finish(stop_lsn, deferred_until, reached)

    def _collector(self, conn, published: Dict[str, TableInfo],
                   column_maps: Dict[str, ColumnMap]) -> ChangeCollector:
        return ChangeCollector(published, load_type_catalog(conn),
                               functools.partial(fetch_current_values, conn),
                               self.settings.deletes, self.merge_strategy,
                               existing_destination_column(),
                               _in_schemas(self.settings.schema_names, self.handoffs.applies_from),
                               column_maps, self.handoffs.copied_before,
                               self.limits.buffer_bytes, self.settings.schema_name)

    def _stream(self, collector: ChangeCollector, streamed: List[str],
                stop_lsn: int, stop_written: bool) -> Iterator[Any]:
        segment, bounds = self.segment, self.bounds
        # The server will send WAL up to a message the run wrote, and the rest of a transaction
        # a load split: silence then means it is still decoding, not that nothing is left.
        pending = segment.position.partial_commit_lsn
        with ReplicationStream(self.settings.dsn, self.settings.slot_name, streamed, stop_lsn,
                               bounds.deadline, bounds.stop_was_requested,
                               messages=self.chunk is not None,
                               patient=stop_written or pending is not None) as stream:
            sent_hints: Dict[str, int] = {}
            for batch in read_changes(stream.messages(), collector, self.loaded.position,
                                      stop_lsn, segment, self.limits, bounds,
                                      lambda: stream.received_bytes, self.chunk):
                if batch.xid is not None:
                    self.shape_check.carried_truncate(batch.key, batch.xid)
                yield _batch_item(batch, sent_hints, self.include_columns, self.columns,
                                  self.settings.delta_options)
            if segment.exhausted and not segment.more:
                segment.confirm_lsn = max(segment.confirm_lsn, stream.wal_end)
            segment.stalled = stream.stalled
        _keep_pending_transaction(segment, stream.stalled)

    def _streamed_to(self, stop_lsn: int, deferred_until: Optional[int]) -> bool:
        """Whether the stream was read up to the stop."""
        segment = self.segment
        if deferred_until is not None:
            # A deferred publication's changes were not decoded: confirm no further than the
            # stop (or the end of the last transaction taken).
            segment.confirm_lsn = min(segment.confirm_lsn, max(stop_lsn, segment.position.lsn))
        return not segment.more and segment.confirm_lsn >= stop_lsn

    def _finish(self, stop_lsn: int, deferred_until: Optional[int], reached: bool) -> None:
        segment = self.segment
        if segment.position.partial_commit_lsn is not None:
            reached = False  # the rest of a split transaction never came: not at the stop
        if reached:
            segment.confirm_lsn = max(segment.confirm_lsn, stop_lsn)
            # A publication waited for this position: read on with it.
            segment.more = stop_lsn == deferred_until
        if segment.position.partial_commit_lsn is None:
            # Everything before confirm_lsn is read (loaded, or not ours): store that as the
            # position too, so the destination's state and the confirmed slot agree.
            segment.position = Position(max(segment.position.lsn, segment.confirm_lsn))


class ShapeCheck:
    """The table shapes a segment records and reads with (ddl.py): those a check before the run
    accepted (`cdc`), or, for the library, the result of a check made here."""

    def __init__(self, loaded: LoadedState, settings: Settings,
                 checked: Optional[Shapes]) -> None:
        self.loaded, self.settings, self.checked = loaded, settings, checked

    def column_maps(self, conn) -> Dict[str, ColumnMap]:
        """Records the shapes in the source state and returns each table's ColumnMap.

        Raises:
            CopyMissingError: (checking here) a table changed in a way the stream cannot carry,
                one that takes only inserts was updated (insert_only.py), or its column list or
                row filter is not the one its copy had (filters.py).
        """
        shapes = self.checked
        if shapes is None:
            settings, copied = self.settings, list(self.loaded.handoffs)
            problems, checks = check_schema_changes(conn, settings.schema_name, self.loaded)
            problems += insert_only_problems(conn, self.loaded, copied, settings.schema_name,
                                             settings.primary_dsn)
            problems += filter_problems(conn, settings, self.loaded, copied)
            if problems:
                raise CopyMissingError(problems[0])
            shapes = {key: check.shape for key, check in checks.items()}
        state = dlt.current.source_state()
        record_shapes(state, shapes)
        recorded = LoadedState.from_source_state(state).shapes
        return {key: ColumnMap.from_shape(shape) for key, shape in recorded.items()}

    def carried_truncate(self, key: str, xid: int) -> None:
        """Records a TRUNCATE the stream carried, in the state loaded with it and in the shapes
        the run's later segments record."""
        record_truncate(dlt.current.source_state(), key, xid)
        if self.checked is not None and key in self.checked:
            carried = self.checked[key].setdefault("truncated_by", [])
            if xid not in carried:
                carried.append(xid)


def _keep_pending_transaction(segment: SegmentResult, stalled: bool) -> None:
    """A transaction a load split (the position holds its first changes) must be decoded
    again: the slot is never confirmed up to its commit until all of it is loaded, whatever the
    stream said it had sent (confirming past it would make the server skip it for good).

    Raises:
        CopyMissingError: The stream went past the transaction without sending the rest of it:
            the slot was confirmed past it by something else, and the rest is gone.
    """
    pending = segment.position.partial_commit_lsn
    if pending is None or segment.confirm_lsn < pending or segment.more:
        return
    if not stalled:
        raise CopyMissingError(
            f"the transaction committed at {int_to_lsn(pending)} was loaded in part "
            f"({segment.position.partial_changes} changes), and the slot no longer sends the "
            "rest (it was confirmed past it by something else): the destination lacks those "
            "changes; run `snapshot` to copy the tables again")
    segment.confirm_lsn = min(segment.confirm_lsn, segment.position.lsn, pending - 1)


def _publications_to_stream(conn, publications: List[str], handoffs: HandoffRule,
                            start_lsn: int) -> Tuple[List[str], Optional[int]]:
    """The publications to decode from `start_lsn`, and the position from which the others are
    needed (or None).

    A publication is decoded from the earliest hand-off of its tables on; before that none of its
    changes would be applied. This matters for a publication created while the stream was
    running (the `_insert_only` one, when the first table without a key comes later): pgoutput
    fails on any change from before a named publication existed. So it is left out until the
    stream reaches that position; the segment stops there, and the next one includes it.
    """
    needed_from = {}
    for name in publications:
        needed_from[name] = min((handoffs.earliest_needed(oid, schema, table)
                                 for oid, schema, table in publication_relations(conn, name)),
                                default=NO_COPY)
    streamed = [name for name in publications if needed_from[name] <= start_lsn]
    later = [needed_from[name] for name in publications if needed_from[name] > start_lsn
             and needed_from[name] < NO_COPY]
    return streamed, (min(later) if later else None)


def _in_schemas(schema_names: Sequence[str], applies_from):
    """A publication an admin made may cover tables of other schemas (`audit.orders` beside
    `public.orders`): their changes are never applied (nor written anywhere)."""

    def rule(schema: str, name: str) -> int:
        return applies_from(schema, name) if schema in schema_names else NEVER

    return rule


def run_stop_position(conn, primary_dsn: Optional[str] = None) -> Tuple[int, bool]:
    """Where a run stops reading, and whether it is a message written now: a heartbeat (so an
    idle slot has a position to reach, and the stream knows the server will send WAL up to it),
    or the WAL insert position when the role may not write one. On a standby the heartbeat is
    written on the primary (`primary_dsn`) and awaited; without one, or when the standby does
    not replay it in time, the standby's replay position (standby.py)."""
    if not is_standby(conn):
        heartbeat = emit_heartbeat(conn)
        return (heartbeat, True) if heartbeat else (current_wal_lsn(conn), False)
    if primary_dsn:
        with primary_connection(conn, primary_dsn) as primary:
            heartbeat = emit_heartbeat(primary)
        if heartbeat and wait_for_replay(conn, heartbeat):
            return heartbeat, True
    return replay_lsn(conn), False


def _published_tables(conn, settings: Settings, publications: List[str]) -> Dict[str, TableInfo]:
    pairs = sorted({(schema, name) for pub in publications
                    for schema, name in publication_tables(conn, pub)
                    if schema in settings.schema_names})
    return with_filters(describe_schema_tables(conn, pairs, settings.schema_name),
                        conn.server_version, settings.table_filters)


def _batch_item(batch: TableBatch, sent_hints: Dict[str, int], include_columns, columns,
                delta_options: DeltaOptions) -> Any:
    data, hints = batch.data, batch.hints
    if include_columns and batch.label in include_columns:  # by table, as the copy's
        keep = set(include_columns[batch.label]) | set(hints.get("primary_key") or [])
        keep |= {n for n in data.column_names if n.startswith("_pg_")}
        data = data.select([n for n in data.column_names if n in keep])
        hints = dict(hints, columns={k: v for k, v in hints["columns"].items() if k in keep})
    hints = with_delta_options(with_column_hints(hints, columns), delta_options)
    if hints.get("write_disposition") == "append":
        load_id = current_load_id()
        data = data.append_column(LOAD_ID_COLUMN, pa.array([load_id] * data.num_rows, pa.string()))
    fresh = sent_hints.get(batch.table_name) != id(batch.hints) or batch.replace
    sent_hints[batch.table_name] = id(batch.hints)
    return mark_batch(data, hints, fresh)
