"""dlt-facing building blocks: `init_replication` (slot, publication, snapshot) and
`replication_resource` (the change stream).

Progress lives in the dlt source state of the source named `pg_replication` (shared by the snapshot
and the change stream): the stream's position and each table's hand-off (see handoff.py). dlt
commits that state with each load, so the destination and the positions never disagree.
"""

import functools
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import dlt
import pyarrow as pa
from dlt.extract.source import DltSource

from .catalog import (TableInfo, column_kinds, describe_tables, fetch_current_values,
                      list_tables, load_type_catalog, table_key, unreplicable_tables)
from .changes import (BATCH_BYTES, LOAD_BYTES, BatchLimits, ChangeCollector, SegmentResult,
                      TableBatch, read_changes)
from .connect import connect, to_dsn
from .ddl import ColumnMap, read_catalog, read_leaves, shape_of
from .dlt_compat import destination_identifier
from .exceptions import ConfigError, CopyMissingError, SlotError
from .handoff import NEVER, NO_COPY, HandoffRule
from .state import (SOURCE_NAME, LoadedState, Position, record_copy, record_shapes,
                    record_truncate, save_position, start_snapshot)
from .insert_only import insert_only_problems, updated_or_deleted_rows
from .integrity import check_schema_changes
from .hints import (DELETED_AT_COLUMN, DELETED_COLUMN, LOAD_ID_COLUMN, META_ARROW_TYPES,
                     RESERVED_COLUMNS, DeleteMode, ExistingColumn, MergeStrategy,
                     name_collisions, output_column_names, snapshot_hints, table_hints)
from .slots import (advance_slot, check_partition_root_publishing, check_server, check_slot_usable, copy_slot_name, create_slot,
                    create_slot_with_snapshot, current_database, current_wal_lsn, drop_publications,
                    drop_slot, publication_relations,
                    ensure_publications, existing_publications, get_slot, publication_tables,
                    validate_slot_name)
from .snapshot import begin_snapshot_transaction, read_table, release_freed_memory
from .stream import ReplicationStream, emit_heartbeat

def select_tables(conn, schema_name: str, table_names: Optional[Sequence[str]]) -> Dict[str, TableInfo]:
    """The tables to replicate: those named, or every table of the schema; UNLOGGED and foreign
    tables are left out (`unreplicable_tables`, which the CLI names in a warning)."""
    names = list(table_names) if table_names else list_tables(conn, schema_name)
    skipped = set(unreplicable_tables(conn, schema_name))
    names = [name for name in names if name not in skipped]
    if not names:
        raise ConfigError(f"no tables to replicate in schema {schema_name!r}")
    return describe_tables(conn, schema_name, names)


def refuse_colliding_names(tables, replicated: Sequence[str] = ()) -> None:
    """Raises ConfigError when two source tables (of `tables` and the `replicated` names), or two
    columns of one table, would land under one destination name after dlt's snake_case (they
    would be silently merged), or a column takes a name the pipeline adds (`_pg_lsn`, ...)."""
    tables = list(tables)
    names = sorted({t.name for t in tables} | set(replicated))
    for first, second in name_collisions(names, destination_identifier):
        raise ConfigError(
            f"tables {first!r} and {second!r} would both land in destination table "
            f"{destination_identifier(second)!r}: replicate one of them (`--tables`) or rename it")
    for table in tables:
        clashes = name_collisions([c.name for c in table.columns], destination_identifier,
                                  RESERVED_COLUMNS)
        for first, second in clashes:
            what = ("a column the pipeline adds" if first in RESERVED_COLUMNS
                    else f"column {first!r}")
            raise ConfigError(
                f"table {table.name!r}: column {second!r} would land in destination column "
                f"{destination_identifier(second)!r}, the same as {what}: rename it, or leave "
                "the table out (`--tables`)")


def addable_tables(conn, schema_name: str, pub_name: str,
                   names: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Of tables not replicated yet, those `snapshot --tables` can add, and one line for each of
    the others saying why not (its name, or a column's, collides after snake_case)."""
    accepted = _published_names(conn, schema_name, pub_name)
    addable, refused = [], []
    for name, table in sorted(describe_tables(conn, schema_name, list(names)).items()):
        try:
            refuse_colliding_names([table], accepted)
        except ConfigError as e:
            refused.append(str(e))
            continue
        addable.append(name)
        accepted.append(name)
    return addable, refused


def init_replication(
    slot_name: str,
    pub_name: str,
    schema_name: str = "public",
    table_names: Optional[Sequence[str]] = None,
    credentials: Any = dlt.secrets.value,
    persist_snapshots: bool = False,
    include_columns: Optional[Dict[str, Sequence[str]]] = None,
    columns: Optional[Dict[str, Dict[str, Any]]] = None,
    reset: bool = False,
    deletes: DeleteMode = "hard",
    max_wait_seconds: Optional[float] = None,
) -> Optional[DltSource]:
    """Creates the publication and the replication slot; optionally returns the initial copy.

    Every copy has an exact hand-off (see handoff.py): it is read inside a snapshot exported at a
    logical slot's consistent point, and the change stream applies a copied table's changes only
    from transactions that commit at or after that point. Every transaction lands exactly once, in
    the copy or through the stream, for tables with or without a key.

    - No slot yet (or an invalidated one): the slot is created here and its own exported snapshot
      is the copy's; its consistent point starts the stream, and hand-offs of an earlier stream are
      dropped (tables not copied again must be).
    - The slot exists (a rerun after a failed snapshot, a refresh or a table added later): a
      TEMPORARY slot is created only to export the snapshot; the slot keeps its position. The copied
      tables get the new hand-off, other tables keep theirs.

    The hand-offs are stored in the source state with the copy, so they reach the destination in
    the same load.

    Args:
        slot_name (str): Replication slot (lower-case letters, digits, underscores).
        pub_name (str): Publication; tables without a row identity go to `<pub_name>_insert_only`.
        schema_name (str): Source schema.
        table_names (Optional[Sequence[str]]): Tables to replicate; default every table of the schema.
        credentials: libpq URL or dlt credentials of the source.
        persist_snapshots (bool): Return a dlt source with the initial copy of the tables.
        include_columns (Optional[Dict[str, Sequence[str]]]): Per table, the columns to copy.
        columns (Optional[Dict[str, Dict[str, Any]]]): Per table, extra dlt column hints.
        reset (bool): Drop the slot and publications first (starts over: needs a new snapshot).
        deletes (DeleteMode): "hard" or "soft" (sets the delete marker column of the tables).
        max_wait_seconds (Optional[float]): Give up (SourceNotReadyError) when creating the slot
            for the copy waits longer than this for open transactions; default: wait.

    Returns:
        Optional[DltSource]: The snapshot source when `persist_snapshots`, else None.
    """
    dsn = to_dsn(credentials)
    validate_slot_name(slot_name)
    conn = connect(dsn)
    try:
        check_server(conn)
        tables = select_tables(conn, schema_name, table_names)
        refuse_colliding_names(tables.values(), _published_names(conn, schema_name, pub_name))
        check_partition_root_publishing(conn, pub_name)
        if reset:
            drop_slot(conn, slot_name)
            drop_publications(conn, pub_name)
        ensure_publications(conn, pub_name, list(tables.values()))
        types = load_type_catalog(conn)
        slot = get_slot(conn, slot_name)
        if slot is not None and slot.wal_status == "lost" and persist_snapshots:
            drop_slot(conn, slot_name)  # a new copy starts over: a new slot goes with it
            slot = None
        if slot is not None:
            check_slot_usable(slot, slot_name, current_database(conn))
        if not persist_snapshots:
            if slot is None:
                create_slot(conn, slot_name)
            return None
        # Read before the slot's consistent point: every UPDATE or DELETE after it counts.
        write_counts = updated_or_deleted_rows(
            conn, [table.oid for table in tables.values() if not table.merge_key])
    finally:
        conn.close()
    new_stream = slot is None
    reader, handoff_lsn = _open_snapshot_reader(dsn, slot_name, new_stream, max_wait_seconds)
    return snapshot_source(reader, list(tables.values()), types, handoff_lsn, new_stream,
                           slot_name, include_columns, columns, deletes, write_counts)


def _open_snapshot_reader(dsn: str, slot_name: str, new_stream: bool,
                          max_wait: Optional[float] = None):
    """A connection inside an exported snapshot, and that snapshot's hand-off LSN.

    With `new_stream` the pipeline's slot is created here and exports it; otherwise a temporary
    slot does. The snapshot is imported before the exporting connection closes (which also drops a
    temporary slot): the importing transaction keeps it alive.
    """
    reader = connect(dsn)
    try:
        exporter, handoff_lsn, snapshot_name = create_slot_with_snapshot(
            dsn, slot_name if new_stream else copy_slot_name(slot_name), temporary=not new_stream,
            max_wait=max_wait)
        try:
            begin_snapshot_transaction(reader, snapshot_name)
        finally:
            exporter.close()
        return reader, handoff_lsn
    except Exception:
        reader.close()
        raise


def snapshot_source(reader, tables: List[TableInfo], types, handoff_lsn: int, new_stream: bool,
                    slot_name: str, include_columns=None, columns=None,
                    deletes: DeleteMode = "hard",
                    write_counts: Optional[Dict[int, Dict[str, Any]]] = None) -> DltSource:
    """A `pg_replication` source whose one resource copies `tables` on `reader`'s transaction and
    records their hand-off (handoff.py) in the source state, with the rows updated or deleted
    before it of the insert-only ones (`write_counts` by OID, insert_only.py)."""

    def snapshot_rows() -> Iterator[Any]:
        try:
            state = dlt.current.source_state()
            start_snapshot(state, slot_name, handoff_lsn, new_stream)
            # The catalog as of the hand-off: cdc compares later catalogs with it (ddl.py).
            shapes = read_catalog(reader, [table.oid for table in tables])
            leaves = read_leaves(reader, [table.oid for table in tables])
            for table in tables:
                kinds = column_kinds(table, types)
                names = _included(table.name, _copied_columns(table), include_columns)
                outputs = output_column_names(table.name, [(n, kinds[n]) for n in names],
                                              existing_destination_column())
                renames = dict(zip(names, outputs))
                kinds = {renames.get(n, n): k for n, k in kinds.items()}
                hints = table_hints(table.name, [(renames[n], kinds[renames[n]]) for n in names],
                                    [renames.get(k, k) for k in table.merge_key], deletes)
                hints = snapshot_hints(_with_column_hints(hints, columns))
                marker = DELETED_COLUMN if deletes == "hard" else DELETED_AT_COLUMN
                first = True
                for data in read_table(reader, table, column_kinds(table, types), handoff_lsn,
                                       marker):
                    data = data.rename_columns([renames.get(n, n) for n in data.column_names])
                    data = data.select([n for n in data.column_names if n in hints["columns"]])
                    yield _mark(data, hints, first)
                    first = False
                if first:  # empty table: still replace what the destination holds
                    yield _mark(_empty_like(hints, kinds, marker), hints, True)
                record_copy(state, table.schema, table.name, table.oid, handoff_lsn,
                            shape_of(shapes[table.oid], leaves) if table.oid in shapes else None,
                            (write_counts or {}).get(table.oid))
        finally:
            reader.close()

    # Each table carries its own `replace` hint. The resource itself must not be `replace`: dlt
    # would then also truncate every other table this resource loaded before (a later
    # `snapshot --tables b` would empty table a).
    resource = dlt.resource(snapshot_rows, name="snapshot", write_disposition="append")
    return DltSource(dlt.Schema(SOURCE_NAME), SOURCE_NAME, [resource()])


def _copied_columns(table: TableInfo) -> List[str]:
    """A table without a key leaves out its generated columns: the change stream cannot read
    them back by key (changes.ChangeCollector.on_relation)."""
    return [c.name for c in table.columns if table.merge_key or not c.generated]


def existing_destination_column() -> ExistingColumn:
    """Looks up a column in the schema the current extract updates (for type-change variants)."""
    try:
        schema = dlt.current.source_schema()
    except Exception:
        return lambda table, column: None

    def lookup(table: str, column: str) -> Optional[Dict[str, Any]]:
        found = schema.tables.get(schema.naming.normalize_table_identifier(table))
        if not found:
            return None
        return found.get("columns", {}).get(schema.naming.normalize_identifier(column))

    return lookup


def _included(table_name: str, names: List[str], include_columns) -> List[str]:
    if not include_columns or table_name not in include_columns:
        return names
    wanted = set(include_columns[table_name])
    return [n for n in names if n in wanted]


def _with_column_hints(hints: Dict[str, Any], columns) -> Dict[str, Any]:
    extra = (columns or {}).get(hints["table_name"])
    if not extra:
        return hints
    merged = {name: dict(column) for name, column in hints["columns"].items()}
    for name, column in extra.items():
        merged.setdefault(name, {"name": name}).update(column)
    return dict(hints, columns=merged)


def _empty_like(hints: Dict[str, Any], kinds, marker: str) -> pa.Table:
    fields = []
    for name in hints["columns"]:
        arrow_type = kinds[name].arrow_type if name in kinds else META_ARROW_TYPES[name]
        fields.append(pa.field(name, arrow_type))
    return pa.schema(fields).empty_table()


def _mark(data: pa.Table, hints: Dict[str, Any], with_hints: bool) -> Any:
    if not with_hints:
        return dlt.mark.with_table_name(data, hints["table_name"])
    return dlt.mark.with_hints(data, dlt.mark.make_hints(**hints), create_table_variant=True)


def replication_resource(
    slot_name: str = dlt.config.value,
    pub_name: str = dlt.config.value,
    credentials: Any = dlt.secrets.value,
    schema_name: str = "public",
    include_columns: Optional[Dict[str, Sequence[str]]] = None,
    columns: Optional[Dict[str, Dict[str, Any]]] = None,
    target_batch_size: int = 50_000,
    target_batch_bytes: int = BATCH_BYTES,
    target_load_bytes: int = LOAD_BYTES,
    flush_slot: bool = True,
    deletes: DeleteMode = "hard",
    merge_strategy: MergeStrategy = "delete-insert",
    max_changes: Optional[int] = None,
    max_seconds: Optional[float] = None,
    result: Optional[SegmentResult] = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    stop_lsn: Optional[int] = None,
    require_copies: bool = False,
    table_shapes: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Any:
    """A dlt resource with the changes in the slot since the stored position, one table each.

    Reads up to the server's WAL position at the start (or a bound), in Arrow batches of
    `target_batch_size` rows, and stores the new position in the source state, which dlt commits
    with the load. The slot itself is confirmed only after a load succeeded: `jobs.run_cdc` does it
    right after loading; with `flush_slot` the resource also confirms, before reading, the stored
    position of a pipeline that has no pending load.

    Must run inside a source named `pg_replication` (see `pg_replication()`), which holds the state.

    Args:
        slot_name (str): The pgoutput slot.
        pub_name (str): The publication (and `<pub_name>_insert_only` when it exists).
        credentials: libpq URL or dlt credentials of the source.
        schema_name (str): Schema of the published tables.
        include_columns (Optional[Dict[str, Sequence[str]]]): Per table, the columns to load.
        columns (Optional[Dict[str, Dict[str, Any]]]): Per table, extra dlt column hints.
        target_batch_size (int): Rows buffered before they are handed to dlt; bounds memory.
        target_batch_bytes (int): Bytes (of the stream, of unchanged TOASTed values read back)
            buffered before they are handed to dlt: bounds memory when rows are wide.
        target_load_bytes (int): Arrow bytes one load takes; the resource ends there, in the
            middle of a transaction if need be, and the next run (or segment) goes on from
            there. Bounds what the destination merges at once.
        flush_slot (bool): Confirm the already-loaded position to the slot before reading.
        deletes (DeleteMode): "hard" deletes rows, "soft" keeps them with `_pg_deleted_at`.
        merge_strategy (MergeStrategy): "delete-insert" (SQL destinations), "upsert" (Delta).
        max_changes (Optional[int]): Stop at the first commit after this many changes.
        max_seconds (Optional[float]): Stop at the first commit after this many seconds.
        result (Optional[SegmentResult]): Receives counts, positions and whether more is waiting.
        stop_requested (Optional[Callable[[], bool]]): True stops reading at the next commit.
        stop_lsn (Optional[int]): Read up to here; default the server's WAL position now. A run
            of several segments passes the position it took at its start, so that a source that
            keeps truncating cannot keep the run going.
        require_copies (bool): A copied table gets its changes from its hand-off on
            (handoff.py). A table that was never copied gets every change in the slot, or, with
            True, a change of it stops the run with CopyMissingError (the CLI: applying it would
            leave a partial table).
        table_shapes (Optional[Dict[str, Dict[str, Any]]]): Per table_key, the catalog shape a
            check before this run accepted (ddl.check_tables); stored with the load, and renamed
            columns keep their destination columns. Default: the shapes in the state.
    """
    dsn = to_dsn(credentials)
    validate_slot_name(slot_name)

    def changes() -> Iterator[Any]:
        segment = result if result is not None else SegmentResult(Position())
        loaded = LoadedState.from_source_state(dlt.current.source_state())
        segment.position = loaded.position
        handoffs = HandoffRule(loaded.handoffs, require_copies, loaded.oids)
        yield from _read_segment(dsn, slot_name, pub_name, schema_name, loaded.position, segment,
                                 BatchLimits(target_batch_size, target_batch_bytes,
                                             target_load_bytes),
                                 flush_slot, deletes, merge_strategy,
                                 max_changes, max_seconds, include_columns, columns,
                                 stop_requested or (lambda: False), stop_lsn, handoffs,
                                 _ShapeCheck(loaded, schema_name, table_shapes))
        save_position(dlt.current.source_state(), segment.position)
        release_freed_memory()  # before the destination loads, in this process for DuckDB

    return dlt.resource(changes, name="changes", write_disposition="merge")()


def _read_segment(dsn, slot_name, pub_name, schema_name, position: Position,
                  segment: SegmentResult, limits: BatchLimits, flush_slot: bool, deletes, strategy,
                  max_changes, max_seconds, include_columns, columns,
                  stop_requested: Callable[[], bool], stop_lsn: Optional[int],
                  handoffs: HandoffRule, shape_check: "_ShapeCheck") -> Iterator[Any]:
    started = time.monotonic()
    conn = connect(dsn)
    try:
        slot = get_slot(conn, slot_name)
        if slot is None:
            raise SlotError(f"slot {slot_name!r} does not exist; run `snapshot` to create it")
        check_slot_usable(slot, slot_name, current_database(conn))
        if flush_slot and not _pipeline_has_pending_data():
            advance_slot(conn, slot_name, position.lsn)
        publications = existing_publications(conn, pub_name)
        published = _published_tables(conn, schema_name, publications)
        stop_lsn = stop_lsn or run_stop_position(conn)
        column_maps = shape_check.column_maps(conn)  # after the stop is fixed (ddl.py)
        streamed, deferred_until = _publications_to_stream(
            conn, publications, handoffs, slot.confirmed_flush_lsn or 0)
        if deferred_until is not None and deferred_until <= stop_lsn:
            stop_lsn = deferred_until
        collector = ChangeCollector(published, load_type_catalog(conn),
                                    functools.partial(fetch_current_values, conn), deletes, strategy,
                                    existing_destination_column(),
                                    _in_schema(schema_name, handoffs.applies_from),
                                    column_maps, handoffs.copied_before, limits.buffer_bytes)
        deadline = started + max_seconds if max_seconds else None

        def should_stop() -> bool:
            return stop_requested() or (deadline is not None and time.monotonic() >= deadline)

        reached = not streamed  # nothing to decode before stop_lsn
        if streamed:
            with ReplicationStream(dsn, slot_name, streamed, stop_lsn, deadline,
                                   stop_requested) as stream:
                sent_hints: Dict[str, int] = {}
                for batch in read_changes(stream.messages(), collector, position, stop_lsn,
                                          segment, limits, max_changes, should_stop,
                                          lambda: stream.received_bytes):
                    if batch.xid is not None:
                        shape_check.carried_truncate(table_key(schema_name, batch.table_name),
                                                     batch.xid)
                    yield _batch_item(batch, sent_hints, include_columns, columns)
                if segment.exhausted and not segment.more:
                    segment.confirm_lsn = max(segment.confirm_lsn, stream.wal_end)
            if deferred_until is not None:
                # A deferred publication's changes were not decoded: confirm no further than the
                # stop (or the end of the last transaction taken).
                segment.confirm_lsn = min(segment.confirm_lsn,
                                          max(stop_lsn, segment.position.lsn))
            reached = not segment.more and segment.confirm_lsn >= stop_lsn
        if reached:
            segment.confirm_lsn = max(segment.confirm_lsn, stop_lsn)
            # A publication waited for this position: read on with it.
            segment.more = stop_lsn == deferred_until
        if segment.position.partial_commit_lsn is None:
            # Everything before confirm_lsn is read (loaded, or not ours): store that as the
            # position too, so the destination's state and the confirmed slot agree.
            segment.position = Position(max(segment.position.lsn, segment.confirm_lsn))
    finally:
        conn.close()


class _ShapeCheck:
    """The table shapes a segment records and reads with (ddl.py): those a check before the run
    accepted (`cdc`), or, for the library, the result of a check made here."""

    def __init__(self, loaded: LoadedState, schema_name: str,
                 checked: Optional[Dict[str, Dict[str, Any]]]) -> None:
        self.loaded, self.schema_name, self.checked = loaded, schema_name, checked

    def column_maps(self, conn) -> Dict[str, ColumnMap]:
        """Records the shapes in the source state and returns each table's ColumnMap.

        Raises:
            CopyMissingError: (checking here) a table changed in a way the stream cannot carry,
                or one that takes only inserts was updated (insert_only.py).
        """
        shapes = self.checked
        if shapes is None:
            problems, checks = check_schema_changes(conn, self.schema_name, self.loaded)
            problems += insert_only_problems(conn, self.loaded, self.loaded.handoffs,
                                             self.schema_name)
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


def _publications_to_stream(conn, publications: List[str], handoffs: HandoffRule,
                            start_lsn: int):
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


def _in_schema(schema_name: str, applies_from):
    """A publication an admin made may cover tables of other schemas (`audit.orders` beside
    `public.orders`): their changes are never applied, so never written into a table of the
    configured schema that has the same name."""

    def rule(schema: str, name: str) -> int:
        return applies_from(schema, name) if schema == schema_name else NEVER

    return rule


def run_stop_position(conn) -> int:
    """Where a run stops reading: a heartbeat written now (so an idle slot has a position to
    reach), or the WAL insert position when the role may not write one."""
    return emit_heartbeat(conn) or current_wal_lsn(conn)


def _published_names(conn, schema_name: str, pub_name: str) -> List[str]:
    return sorted({name for pub in existing_publications(conn, pub_name)
                   for schema, name in publication_tables(conn, pub) if schema == schema_name})


def _published_tables(conn, schema_name: str, publications: List[str]) -> Dict[str, TableInfo]:
    names = sorted({name for pub in publications for schema, name in publication_tables(conn, pub)
                    if schema == schema_name})
    return describe_tables(conn, schema_name, names) if names else {}


def _batch_item(batch: TableBatch, sent_hints: Dict[str, int], include_columns, columns) -> Any:
    data, hints = batch.data, batch.hints
    if include_columns and batch.table_name in include_columns:
        keep = set(include_columns[batch.table_name]) | set(hints.get("primary_key") or [])
        keep |= {n for n in data.column_names if n.startswith("_pg_")}
        data = data.select([n for n in data.column_names if n in keep])
        hints = dict(hints, columns={k: v for k, v in hints["columns"].items() if k in keep})
    hints = _with_column_hints(hints, columns)
    if hints.get("write_disposition") == "append":
        load_id = dlt.current.load_package_state()["load_id"]
        data = data.append_column(LOAD_ID_COLUMN, pa.array([load_id] * data.num_rows, pa.string()))
    fresh = sent_hints.get(batch.table_name) != id(batch.hints) or batch.replace
    sent_hints[batch.table_name] = id(batch.hints)
    return _mark(data, hints, fresh)


def _pipeline_has_pending_data() -> bool:
    try:
        return dlt.current.pipeline().has_pending_data
    except Exception:
        return True  # no pipeline context: confirm nothing
