"""From decoded pgoutput messages to per-table Arrow batches, with exact resume positions.

The contract with the destination is at-least-once delivery made exactly-once in effect by the
merge: every row carries `_pg_lsn`, the WAL position of its change, and the merge keeps the highest
per key. Progress is a `Position`, saved in dlt state with each load; the slot is confirmed only up
to a position the destination has committed.

A run reads in segments; one segment is one dlt load. A segment ends early, in the middle of a
transaction if need be, when
- a TRUNCATE arrives: the changes before it are loaded, then the truncate alone (as an empty
  `replace` of the table), then the changes after it; so they apply in order;
- a key repeats and the destination merges with `upsert` (local Delta): a MERGE must not see two
  source rows for one key.
The position then records how many changes of the open transaction are loaded, and the next
segment skips exactly those when the server sends the transaction again.

A change of a table whose transaction commits before that table's hand-off is skipped: the table's
copy already holds it (handoff.py).
"""

import contextlib
import gc
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple)

import pyarrow as pa

from .catalog import TableInfo, table_key
from .ddl import ColumnMap
from .handoff import NEVER, NO_COPY
from .exceptions import CopyMissingError, DecodeError, snapshot_command
from .protocol import (
    UNCHANGED_TOAST, Begin, Commit, Delete, Insert, LogicalMessage, Message, Origin, PartialTuple,
    Relation,
    StreamAbort, StreamCommit, StreamStart, StreamStop, Truncate, TupleValue, TypeInfo, Update,
)
from .hints import (
    COMMIT_TS_COLUMN, DELETED_AT_COLUMN, DELETED_COLUMN, LSN_COLUMN, META_ARROW_TYPES, DeleteMode,
    ExistingColumn, MergeStrategy, output_column_names, table_hints,
)
from .state import Position
from .types import (ColumnKind, PgTypeRow, raw_values_to_arrow, refuse_inexact_keys,
                    resolve_kind)

Key = Tuple[TupleValue, ...]
# (table, key column names, keys, wanted column names) -> {key: values of the wanted columns}
FetchCurrent = Callable[[TableInfo, List[str], List[Key], List[str]], Dict[Key, List[Optional[bytes]]]]
# (schema, table) -> the commit LSN from which the table's changes apply (see handoff.HandoffRule),
# or NO_COPY: the table has no copy in the destination, and a change of it stops the run; or
# NEVER: not a table of the pipeline (another schema), its changes are skipped.
AppliesFrom = Callable[[str, str], int]
# Rows whose unchanged TOASTed values are read back at once: the first part, and at most.
FIRST_FILL_ROWS = 8
MAX_FILL_ROWS = 50_000
# About this many bytes of rows are buffered before they are handed to dlt (besides the row
# count, `batch_size`): the stream's bytes while reading, the values read back while filling.
BATCH_BYTES = 16 << 20
# A segment (one dlt load) of wide rows ends once it handed on about this many bytes of Arrow
# data, so that the destination merges a bounded amount (see _LoadSize).
LOAD_BYTES = 16 << 20
# DuckDB keeps the rows a transaction inserts in memory until it commits, up to a row group of
# this many rows per table, which it then writes out: narrow rows reach that count long before
# `load_bytes`, wide rows (a few KB each and up) do not.
ROW_GROUP_ROWS = 122_880


@dataclass
class SegmentResult:
    """What one segment read, filled in while its batches are consumed."""

    position: Position
    confirm_lsn: int = 0  # the slot may be confirmed up to here once the segment is loaded
    more: bool = False  # ended early (truncate, repeated key): read again after loading
    changes: Dict[str, int] = field(default_factory=dict)
    first_lsn: Optional[int] = None
    last_lsn: Optional[int] = None
    transactions: int = 0
    exhausted: bool = False  # the stream ended by itself: nothing more to read before the stop


@dataclass(frozen=True)
class BatchLimits:
    """How much a segment holds at once: rows and bytes buffered before they are handed to dlt,
    and bytes handed on before the segment ends and is loaded (`target_batch_size`,
    `target_batch_bytes`, `target_load_bytes`)."""

    rows: int = 50_000
    bytes: int = BATCH_BYTES
    load_bytes: int = LOAD_BYTES

    @property
    def buffer_bytes(self) -> int:
        """Bytes buffered before they are handed on: no more than one load takes."""
        return min(self.bytes, self.load_bytes)


@dataclass
class TableBatch:
    table_name: str
    hints: Dict[str, Any]
    data: pa.Table
    replace: bool = False  # the truncate of a table: load it as an empty replace
    xid: Optional[int] = None  # a truncate's transaction (ddl._check_leaves)


@dataclass
class _RelationState:
    """A relation as last described by the server, with its rows not yet handed to dlt."""

    relation: Relation
    table: TableInfo
    kinds: List[ColumnKind]
    key_indexes: List[int]
    hints: Dict[str, Any]
    output_names: List[str]  # destination column names (a variant after a type change)
    rows: List[List[TupleValue]] = field(default_factory=list)
    meta: List[Tuple[int, int, bool]] = field(default_factory=list)  # lsn, commit ts, deleted
    has_unchanged_toast: bool = False
    unfilled: int = 0  # buffered rows with an unchanged TOASTed value to read back
    row_index: Dict[Key, int] = field(default_factory=dict)  # upsert: buffered row of each key
    # Deferrable keys only (under REPLICA IDENTITY FULL): the row last written to each key in the
    # current transaction (see _add_update).
    transaction_rows: Optional[Dict[Key, List[TupleValue]]] = None
    # Changes of transactions committing before this LSN are in the table's copy (handoff.py).
    applies_from: int = 0
    # Per column, its name in the catalog now (renamed since: the new name; None: dropped).
    current_names: List[Optional[str]] = field(default_factory=list)
    generated: int = 0  # generated columns the server did not send, after the sent ones
    problem: Optional[str] = None  # why a change of this shape cannot be applied exactly

    def key_of(self, values: Sequence[TupleValue]) -> Key:
        return tuple(values[i] for i in self.key_indexes)


class ChangeCollector:
    """Buffers rows per relation, column values still as raw text, and turns them into Arrow.

    Args:
        tables (Mapping[str, TableInfo]): The published tables as the catalog describes them now
            (keys, column types for casts); matched to the stream's relations by OID, so a table
            renamed since its changes were written is still found.
        types (Dict[int, PgTypeRow]): pg_type rows for the Relation messages' type OIDs.
        fetch_current (FetchCurrent): Reads current values of unchanged TOASTed columns.
        deletes (DeleteMode): "hard" removes deleted rows, "soft" keeps them with `_pg_deleted_at`.
        merge_strategy (MergeStrategy): "upsert" makes a repeated key end the segment.
        applies_from (AppliesFrom): Per table, the commit LSN from which its changes apply (its
            hand-off); default: every change applies.
        column_maps (Mapping[str, ColumnMap]): Per table_key, where the columns of the stream go
            (renamed columns keep their destination column, ddl.py); default: by their names.
        copied_before (Callable[[int], int]): Per table OID, the latest hand-off of a copy under
            any name (handoff.HandoffRule.copied_before).
    """

    def __init__(self, tables: Mapping[str, TableInfo], types: Dict[int, PgTypeRow],
                 fetch_current: FetchCurrent, deletes: DeleteMode = "hard",
                 merge_strategy: MergeStrategy = "delete-insert",
                 existing_column: Optional[ExistingColumn] = None,
                 applies_from: AppliesFrom = lambda schema, name: 0,
                 column_maps: Optional[Mapping[str, ColumnMap]] = None,
                 copied_before: Callable[[int], int] = lambda oid: 0,
                 fill_bytes: int = BATCH_BYTES) -> None:
        self.fill_bytes = fill_bytes
        self.column_maps = column_maps or {}
        self.copied_before = copied_before
        self.tables_by_oid = {table.oid: table for table in tables.values()}
        self.applies_from = applies_from
        self.latest_handoff = 0  # the highest applies_from of any relation seen
        self.types = types
        self.fetch_current = fetch_current
        self.deletes = deletes
        self.merge_strategy = merge_strategy
        self.existing_column = existing_column
        self.relations: Dict[int, _RelationState] = {}
        self.buffered = 0
        self.unfilled = 0  # buffered rows whose unchanged TOASTed values are still to be read
        # Bytes of values read back per row, as the last part measured (None: nothing read yet).
        self.filled_row_bytes: Optional[float] = None
        self.segment_keys: Dict[str, set] = {}
        self.segment_has_data = False

    # -- relations ------------------------------------------------------------------------------

    def on_relation(self, relation: Relation) -> Iterable[TableBatch]:
        """Registers a (possibly changed) relation; rows of its previous shape are flushed first."""
        previous = self.relations.get(relation.relation_id)
        flushed = self._flush_relation(previous) if previous is not None else iter(())
        table = self.tables_by_oid.get(relation.relation_id) or _table_from_relation(relation)
        column_map = self.column_maps.get(table_key(relation.namespace, relation.name))
        sent = [c.name for c in relation.columns]
        current = [column_map.current.get(n, n) if column_map else n for n in sent]
        kinds = [resolve_kind(c.type_oid, c.type_modifier, self.types) for c in relation.columns]
        by_current = {n: i for i, n in enumerate(current) if n is not None}
        key_indexes = [by_current[k] for k in table.merge_key if k in by_current]
        if not key_indexes and relation.replica_identity != "f":
            key_indexes = [i for i, c in enumerate(relation.columns) if c.is_key]
        # Generated columns the server did not send are read by key, like unchanged TOASTed
        # values; a table without a key leaves them out (in its copy too).
        generated = [c for c in table.columns
                     if c.generated and c.name not in by_current and key_indexes]
        current += [c.name for c in generated]
        kinds += [resolve_kind(c.type_oid, c.type_modifier, self.types) for c in generated]
        names = sent + [c.name for c in generated]
        destination = [column_map.destination.get(n, n) if column_map else n for n in names]
        output_names = output_column_names(relation.name, list(zip(destination, kinds)),
                                           self.existing_column)
        output_key = [output_names[i] for i in key_indexes]
        hints = table_hints(relation.name, list(zip(output_names, kinds)), output_key,
                            self.deletes, self.merge_strategy)
        applies_from = self.applies_from(relation.namespace, relation.name)
        self.latest_handoff = max(self.latest_handoff, applies_from)
        self.relations[relation.relation_id] = _RelationState(
            relation, table, kinds, key_indexes, hints, output_names,
            transaction_rows={} if table.deferrable_key and relation.replica_identity == "f"
            else None, applies_from=applies_from,
            current_names=current, generated=len(generated),
            problem=_unknown_columns_problem(relation, sent, column_map),
        )
        return flushed

    def in_copy(self, relation_id: int, commit_lsn: int) -> bool:
        """True when the change belongs to a transaction the table's copy already holds.

        Raises:
            CopyMissingError: The table has no copy at all (renamed, or published after the last
                snapshot): applying its changes would leave a partial table.
        """
        state = self._state(relation_id, "?")
        if state.applies_from == NO_COPY:
            if commit_lsn < self.copied_before(relation_id):
                return True  # made under an older name; the copy under the newer one holds it
            name = state.relation.name
            now = self.tables_by_oid.get(relation_id)  # renamed since: the copy takes its name now
            fix = now.name if now is not None and now.schema == state.relation.namespace else name
            since = f" (named {fix} now)" if fix != name else ""
            raise CopyMissingError(
                f"table {name}{since} has changes in the stream but no copy in the destination "
                f"(renamed, or published after the last snapshot): run {snapshot_command([fix])}")
        return commit_lsn < state.applies_from

    def _state(self, relation_id: int, tag: str) -> _RelationState:
        state = self.relations.get(relation_id)
        if state is None:
            raise DecodeError(f"pgoutput message '{tag}' refers to relation {relation_id} "
                              "that no Relation message described")
        return state

    # -- row changes ----------------------------------------------------------------------------

    def keys_of(self, message: Message) -> List[Tuple[str, Key]]:
        """The (table, key) pairs a change writes, for the repeated-key check."""
        if isinstance(message, Insert):
            state = self._state(message.relation_id, "I")
            return [(state.relation.name, state.key_of(message.new_tuple))]
        if isinstance(message, Update):
            state = self._state(message.relation_id, "U")
            keys = [(state.relation.name, state.key_of(message.new_tuple))]
            if message.old_tuple is not None:
                keys.append((state.relation.name, state.key_of(message.old_tuple)))
            return keys
        state = self._state(message.relation_id, "D")
        return [(state.relation.name, state.key_of(message.old_tuple))]

    def would_repeat_key(self, message: Message) -> bool:
        """True when an `upsert` merge would see this change's key twice in the segment: the key
        was already handed to dlt in an earlier batch of the segment (within the buffer, a newer
        change simply replaces the older one)."""
        if self.merge_strategy != "upsert":
            return False
        for table, key in self.keys_of(message):
            flushed = self.segment_keys.get(table)
            if flushed and key in flushed:
                return True
        return False

    def add(self, message: Message, lsn: int, commit_ts_us: int) -> None:
        """Buffers one change.

        Raises:
            CopyMissingError: The change has a column the pipeline cannot place (ddl.py).
        """
        kind = type(message)
        if kind is Insert:
            state = self.relations.get(message.relation_id) or self._state(message.relation_id, "I")
            self._append(state, message.new_tuple, lsn, commit_ts_us, False)
            if state.transaction_rows is not None:
                state.transaction_rows[state.key_of(message.new_tuple)] = message.new_tuple
        elif kind is Update:
            self._add_update(message, lsn, commit_ts_us)
        else:
            state = self._state(message.relation_id, "D")
            self._append(state, message.old_tuple, lsn, commit_ts_us, True)

    def _add_update(self, message: Update, lsn: int, commit_ts_us: int) -> None:
        state = self._state(message.relation_id, "U")
        new = message.new_tuple
        old = message.old_tuple
        if old is not None and message.old_kind == "O" and type(new) is PartialTuple:
            # REPLICA IDENTITY FULL sends the whole old row, TOASTed values included.
            new = [o if v is UNCHANGED_TOAST and o is not UNCHANGED_TOAST else v
                   for v, o in zip(new, old)]
        if old is not None and state.key_indexes and state.key_of(old) != state.key_of(new):
            # The key changed: the row under the old key is gone. With a deferrable key another
            # row may have moved into the old key earlier in this transaction while this one
            # still held it (UPDATE t SET id = 3 - id): that row stays, so no delete. Which row
            # holds the key is told by the old row's values (REPLICA IDENTITY FULL sends them).
            written = state.transaction_rows
            holder = written.get(state.key_of(old)) if written is not None else None
            if holder is None or list(holder) == list(old):
                self._append(state, old, lsn, commit_ts_us, True)
        self._append(state, new, lsn, commit_ts_us, False)
        if state.transaction_rows is not None:
            state.transaction_rows[state.key_of(new)] = new

    def begin_transaction(self) -> None:
        for state in self.relations.values():
            if state.transaction_rows:
                state.transaction_rows.clear()

    def _append(self, state: _RelationState, values: List[TupleValue], lsn: int,
                commit_ts_us: int, deleted: bool) -> None:
        if state.problem:
            raise CopyMissingError(state.problem)
        if state.generated:
            values = (list(values) + [None] * state.generated if deleted
                      else PartialTuple(list(values) + [UNCHANGED_TOAST] * state.generated))
        if deleted and self.deletes == "hard":
            values = [v if i in state.key_indexes else None for i, v in enumerate(values)]
        elif type(values) is PartialTuple:
            state.has_unchanged_toast = True
            state.unfilled += 1
            self.unfilled += 1
        self.segment_has_data = True
        if self.merge_strategy == "upsert" and state.key_indexes:
            # One row per key and batch: a MERGE refuses two source rows for one key.
            key = state.key_of(values)
            index = state.row_index.get(key)
            if index is not None:
                state.rows[index] = values
                state.meta[index] = (lsn, commit_ts_us, deleted)
                return
            state.row_index[key] = len(state.rows)
        state.rows.append(values)
        state.meta.append((lsn, commit_ts_us, deleted))
        self.buffered += 1

    # -- truncate -------------------------------------------------------------------------------

    def truncate_batches(self, message: Truncate, commit_lsn: int, xid: int) -> List[TableBatch]:
        """Empty `replace` batches for the truncated tables (the truncate itself), leaving out the
        tables whose copy already holds it."""
        batches = []
        for relation_id in message.relation_ids:
            state = self._state(relation_id, "T")
            if commit_lsn < state.applies_from:
                continue
            data = _empty_table(state, self.deletes)
            hints = dict(state.hints, write_disposition="replace")
            batches.append(TableBatch(state.relation.name, hints, data, replace=True, xid=xid))
        return batches

    # -- flushing -------------------------------------------------------------------------------

    def fill_due(self) -> bool:
        """True when the rows awaiting a read-back are likely to read about `fill_bytes`: their
        values are not in the stream, so the stream's bytes cannot tell (a mass update that left
        190 KB values unchanged sends a few bytes per row). Until a first part has been read the
        guess is small."""
        if self.filled_row_bytes is None:
            return self.unfilled >= FIRST_FILL_ROWS
        return self.unfilled * self.filled_row_bytes >= self.fill_bytes

    def flush(self) -> Iterator[TableBatch]:
        for state in list(self.relations.values()):
            yield from self._flush_relation(state)

    def start_segment(self) -> None:
        self.segment_keys.clear()
        self.segment_has_data = False

    def _flush_relation(self, state: _RelationState) -> Iterator[TableBatch]:
        """Takes the relation's rows out of its buffer now; converts them as they are pulled."""
        if not state.rows:
            return iter(())
        rows, meta, fill = state.rows, state.meta, state.has_unchanged_toast
        self.buffered -= len(meta)
        self.unfilled -= state.unfilled
        state.unfilled = 0
        if state.row_index:
            self.segment_keys.setdefault(state.relation.name, set()).update(state.row_index)
        state.rows, state.meta, state.has_unchanged_toast, state.row_index = [], [], False, {}
        if not fill:
            return iter([self._to_batch(state, rows, meta)])
        return (self._to_batch(state, part_rows, part_meta)
                for part_rows, part_meta in self._filled_parts(state, rows, meta) if part_rows)

    def _to_batch(self, state: _RelationState, rows: List[List[TupleValue]],
                  meta: List[Tuple[int, int, bool]]) -> TableBatch:
        columns = list(zip(*rows))
        refuse_inexact_keys(state.table.name, [
            (state.current_names[i] or state.relation.columns[i].name,
             pa.array(columns[i], pa.string()), state.kinds[i]) for i in state.key_indexes])
        arrays = [raw_values_to_arrow(columns[i], kind) for i, kind in enumerate(state.kinds)]
        lsns, commit_ts, deleted = zip(*meta)
        arrays.append(pa.array(lsns, META_ARROW_TYPES[LSN_COLUMN]))
        arrays.append(pa.array(commit_ts, pa.int64()).cast(META_ARROW_TYPES[COMMIT_TS_COLUMN]))
        if self.deletes == "hard":
            arrays.append(pa.array(deleted, pa.bool_()))
            marker = DELETED_COLUMN
        else:
            arrays.append(pa.array([ts if d else None for ts, d in zip(commit_ts, deleted)],
                                   pa.int64()).cast(META_ARROW_TYPES[DELETED_AT_COLUMN]))
            marker = DELETED_AT_COLUMN
        names = state.output_names + [LSN_COLUMN, COMMIT_TS_COLUMN, marker]
        return TableBatch(state.relation.name, state.hints, pa.Table.from_arrays(arrays, names=names))

    def _filled_parts(self, state: _RelationState, rows: List[List[TupleValue]],
                      meta: List[Tuple[int, int, bool]]
                      ) -> Iterator[Tuple[List[List[TupleValue]], List[Tuple[int, int, bool]]]]:
        """The rows with their unchanged TOASTed values read back, in parts whose values read
        stay near `fill_bytes`: a mass update that left 190 KB values unchanged would otherwise
        read them all into memory at once. Part sizes adapt to the bytes the last part read."""
        start, size = 0, FIRST_FILL_ROWS
        while start < len(rows):
            part_rows, part_meta, read_bytes, found = self._fill_unchanged_toast(
                state, rows[start:start + size], meta[start:start + size])
            if found:  # rows deleted since read nothing and tell nothing about the others
                self.filled_row_bytes = read_bytes / found
            yield part_rows, part_meta
            start += size
            grown = size * 2 if read_bytes * 2 < self.fill_bytes else size
            size = max(1, min(grown, size * self.fill_bytes // max(read_bytes, 1), MAX_FILL_ROWS))

    def _fill_unchanged_toast(self, state: _RelationState, rows: List[List[TupleValue]],
                              meta: List[Tuple[int, int, bool]]):
        """Gives every UPDATE that left a TOASTed column unchanged that column's value; returns
        the rows kept, their metadata, the bytes of values read and the number of rows found.

        pgoutput does not send a TOASTed value an UPDATE did not change (marker 'u'), and the
        merge writes whole rows, so sending NULL would wipe the column in the destination. The
        value is read from the source table by key instead. It is the *current* value; should a
        later transaction have changed it, that change is in the stream after this one and is
        applied after it, so the destination still ends equal to the source. A row that no longer
        exists at the source was deleted (or re-keyed) later, and that change is also in the
        stream: the update is dropped instead of writing a NULL.
        """
        names = state.current_names
        wanted = sorted({i for row, (_, _, deleted) in zip(rows, meta) if not deleted
                         for i, v in enumerate(row) if v is UNCHANGED_TOAST})
        keys = list({state.key_of(row) for row in rows if UNCHANGED_TOAST in row})
        in_catalog = {c.name for c in state.table.columns}
        key_names = [names[i] for i in state.key_indexes]
        # A column dropped since cannot be read: it gets NULL, as rows changed after a drop do.
        readable = [i for i in wanted if names[i] in in_catalog]
        if state.key_indexes and all(n in in_catalog for n in key_names):
            current = self.fetch_current(state.table, key_names, keys,
                                         [names[i] for i in readable]) if readable else None
        else:
            # A table the catalog no longer has (dropped since), or whose key cannot be read:
            # its updates are dropped like those of rows deleted since.
            current = {}
        read_bytes = sum(len(v) for found in (current or {}).values() for v in found if v)
        kept_rows, kept_meta = [], []
        for row, row_meta in zip(rows, meta):
            if UNCHANGED_TOAST in row:
                found = current.get(state.key_of(row)) if current is not None else []
                if found is None:
                    continue
                values = dict(zip(readable, found))
                row = [values.get(i) if v is UNCHANGED_TOAST else v for i, v in enumerate(row)]
            kept_rows.append(row)
            kept_meta.append(row_meta)
        return kept_rows, kept_meta, read_bytes, len(current or {})


def _empty_table(state: _RelationState, deletes: DeleteMode) -> pa.Table:
    marker = DELETED_COLUMN if deletes == "hard" else DELETED_AT_COLUMN
    fields = [pa.field(name, kind.arrow_type) for name, kind in zip(state.output_names, state.kinds)]
    fields += [pa.field(n, META_ARROW_TYPES[n]) for n in (LSN_COLUMN, COMMIT_TS_COLUMN, marker)]
    return pa.schema(fields).empty_table()


def _unknown_columns_problem(relation: Relation, sent: List[str],
                             column_map: Optional[ColumnMap]) -> Optional[str]:
    """A column the recorded shape does not know: renamed (or added and dropped) between two
    runs, so which destination column it belongs to cannot be told."""
    unknown = [n for n in sent if column_map is not None and n not in column_map.destination]
    if not unknown:
        return None
    return (f"table {relation.name} has changes with column(s) {', '.join(unknown)} that the "
            "catalog no longer has (renamed twice, or added and dropped, between two runs): run "
            f"{snapshot_command([relation.name])}")


def _table_from_relation(relation: Relation) -> TableInfo:
    """A table the catalog did not list (published by someone else): keys from the message."""
    key = [c.name for c in relation.columns if c.is_key] if relation.replica_identity != "f" else []
    return TableInfo(relation.namespace, relation.name, relation.relation_id, False,
                     relation.replica_identity, [], key, key)



def read_changes(
    messages: Iterator[Tuple[int, Message]],
    collector: ChangeCollector,
    position: Position,
    stop_lsn: int,
    result: SegmentResult,
    limits: BatchLimits = BatchLimits(),
    max_changes: Optional[int] = None,
    deadline_reached: Callable[[], bool] = lambda: False,
    received_bytes: Callable[[], int] = lambda: 0,
) -> Iterator[TableBatch]:
    """Consumes one segment of the stream and yields its batches; fills `result` as it goes.

    Args:
        messages: (WAL position, message) pairs from ReplicationStream.messages().
        collector (ChangeCollector): Row buffers.
        position (Position): Where the destination stands (from dlt state).
        stop_lsn (int): A transaction committing after this is left for the next run.
        result (SegmentResult): Receives the new position, what may be confirmed, and counts.
        limits (BatchLimits): Rows and bytes buffered before Arrow tables are handed on (bytes
            of the stream, and of values read back), and bytes handed on before the segment ends
            (in the middle of a transaction if need be: the position records how far).
        max_changes (Optional[int]): Stop at the first commit after this many changes.
        deadline_reached: Stop at the next commit when it returns True.
        received_bytes: The bytes the stream has received so far.

    Yields:
        TableBatch: Arrow tables with their dlt hints.
    """
    collector.start_segment()
    result.confirm_lsn = position.lsn
    counts: Dict[int, int] = {}  # changes per relation id
    try:
        with _fewer_gc_passes():
            yield from _read_segment(messages, collector, position, stop_lsn, result, limits,
                                     max_changes, deadline_reached, counts,
                                     _ByteBound(received_bytes, limits.buffer_bytes))
    finally:
        for relation_id, count in counts.items():
            table = collector.relations[relation_id].relation.name
            result.changes[table] = result.changes.get(table, 0) + count


class _ByteBound:
    """Whether the stream received `limit` bytes since the rows were last handed on: memory stays
    bounded by bytes when rows are wide, not only by the row count."""

    def __init__(self, received_bytes: Callable[[], int], limit: int) -> None:
        self.received_bytes, self.limit, self.since = received_bytes, limit, received_bytes()

    def reached(self) -> bool:
        received = self.received_bytes()
        if received - self.since < self.limit:
            return False
        self.since = received
        return True


class _LoadSize:
    """What a segment handed on; full once a destination would hold `limit` bytes of it in
    memory at once: `limit` bytes, in fewer rows than a row group (ROW_GROUP_ROWS). A
    transaction of a million narrow rows stays one load; 3,000 rows of 190 KB become several."""

    def __init__(self, limit: int) -> None:
        self.limit, self.bytes, self.rows = limit, 0, 0

    def add(self, batch: TableBatch) -> None:
        self.bytes += batch.data.nbytes
        self.rows += batch.data.num_rows

    def full(self) -> bool:
        return self.bytes >= self.limit and self.bytes * ROW_GROUP_ROWS >= self.limit * self.rows


@contextlib.contextmanager
def _fewer_gc_passes(first_generation_threshold: int = 100_000) -> Iterator[None]:
    """Lets the cyclic garbage collector run less often while changes are decoded.

    Every change allocates a few objects that hold no cycles (a row's values, its metadata), and
    the buffers keep up to a batch of them alive. With the default threshold (700 allocations) the
    collector ran thousands of times over those buffers: about a third of the time of a
    300 k-change transaction. It still runs, every 100 k allocations.
    """
    previous = gc.get_threshold()
    gc.set_threshold(max(previous[0], first_generation_threshold), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def _read_segment(messages, collector: ChangeCollector, position: Position, stop_lsn: int,
                  result: SegmentResult, limits: BatchLimits, max_changes: Optional[int],
                  deadline_reached: Callable[[], bool], counts: Dict[int, int],
                  bytes_bound: "_ByteBound") -> Iterator[TableBatch]:
    check_repeats = collector.merge_strategy == "upsert"
    current: Optional[Begin] = None
    skipping = False
    check_handoffs = False  # the transaction commits before some table's hand-off
    ordinal = already_loaded = taken = 0
    load = _LoadSize(limits.load_bytes)
    for lsn, message in messages:
        kind = type(message)
        if kind is Insert or kind is Update or kind is Delete or kind is Truncate:
            if skipping:
                continue
            ordinal += 1  # counts every change, so a resumed transaction skips the same ones
            if ordinal <= already_loaded:
                continue
            if kind is Truncate:
                batches = collector.truncate_batches(message, current.final_lsn, current.xid)
                if not batches:
                    continue
                if collector.segment_has_data:
                    result.position = Position(position.lsn, current.final_lsn, ordinal - 1)
                    result.more = True
                    break
                for batch in batches:
                    result.changes[batch.table_name] = result.changes.get(batch.table_name, 0) + 1
                    yield batch
                if result.first_lsn is None:
                    result.first_lsn = lsn
                result.last_lsn = lsn
                result.position = Position(position.lsn, current.final_lsn, ordinal)
                result.more = True
                return
            if check_handoffs and collector.in_copy(message.relation_id, current.final_lsn):
                continue
            if check_repeats and collector.would_repeat_key(message):
                result.position = Position(position.lsn, current.final_lsn, ordinal - 1)
                result.more = True
                break
            collector.add(message, lsn, current.commit_ts_us)
            taken += 1
            counts[message.relation_id] = counts.get(message.relation_id, 0) + 1
            if result.first_lsn is None:
                result.first_lsn = lsn
            result.last_lsn = lsn
            if collector.buffered >= limits.rows or bytes_bound.reached() or collector.fill_due():
                for batch in collector.flush():
                    load.add(batch)
                    yield batch
                if load.full():
                    # Loaded so far, this transaction's first `ordinal` changes included.
                    result.position = Position(position.lsn, current.final_lsn, ordinal)
                    result.more = True
                    break
        elif kind is Begin:
            if message.final_lsn > stop_lsn:
                result.confirm_lsn = max(result.confirm_lsn, message.final_lsn)
                break
            current, ordinal = message, 0
            check_handoffs = message.final_lsn < collector.latest_handoff
            collector.begin_transaction()
            skipping = message.final_lsn < position.lsn
            already_loaded = (position.partial_changes
                              if message.final_lsn == position.partial_commit_lsn else 0)
        elif kind is Commit:
            if not skipping:
                result.transactions += 1
                position = Position(message.end_lsn)
                result.position = position
            result.confirm_lsn = max(result.confirm_lsn, message.end_lsn)
            current, skipping = None, False
            if (max_changes is not None and taken >= max_changes) or deadline_reached():
                break
        elif kind is Relation:
            for batch in collector.on_relation(message):
                yield batch
            if current is not None:
                check_handoffs = current.final_lsn < collector.latest_handoff
        elif kind is TypeInfo or kind is Origin or kind is LogicalMessage:
            continue  # types resolve through the catalog; origins and messages carry no rows
        elif kind in (StreamStart, StreamStop, StreamCommit, StreamAbort):
            raise DecodeError(f"pgoutput sent a streamed transaction ({kind.__name__}) "
                              "although streaming was not requested")
        else:
            raise DecodeError(f"unhandled pgoutput message {kind.__name__}")
    else:
        result.exhausted = True
    yield from collector.flush()
