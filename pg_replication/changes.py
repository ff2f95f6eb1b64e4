"""The public face of change decoding: `ChangeCollector`, which buffers the rows of the stream per
relation and turns them into Arrow, and `read_changes`, which reads one segment (the loop and the
delivery contract are in apply.py).

The collector puts together a buffer per relation (relation_buffer.py), the read-back of unchanged
TOASTed values (toast.py) and the Arrow builder (arrow_batches.py). The names callers import from
here (BATCH_BYTES, LOAD_BYTES, BatchLimits, SegmentResult, TableBatch, Position, ...) stay here.
"""

from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from .apply import (BATCH_BYTES, LOAD_BYTES, ROW_GROUP_ROWS, BatchLimits, SegmentReader,
                    SegmentResult)
from .arrow_batches import ArrowBuilder, TableBatch
from .bounds import RunBounds
from .catalog import TableInfo
from .chunks import Chunk
from .ddl import ColumnMap
from .exceptions import CopyMissingError, DecodeError, snapshot_command
from .handoff import NO_COPY
from .hints import DeleteMode, ExistingColumn, MergeStrategy
from .protocol import Delete, Insert, Message, Relation, Truncate, Update
from .relation_buffer import (BufferTotals, Key, RelationBuffer, RelationShapes, TxStamp,
                              table_from_relation)
from .state import Position
from .toast import FIRST_FILL_ROWS, MAX_FILL_ROWS, FetchCurrent, ToastFiller
from .types import PgTypeRow

__all__ = ["BATCH_BYTES", "LOAD_BYTES", "ROW_GROUP_ROWS", "FIRST_FILL_ROWS", "MAX_FILL_ROWS",
           "AppliesFrom", "BatchLimits", "ChangeCollector", "FetchCurrent", "Key", "Position",
           "SegmentResult", "TableBatch", "read_changes"]

# (schema, table) -> the commit LSN from which the table's changes apply (see handoff.HandoffRule),
# or NO_COPY: the table has no copy in the destination, and a change of it stops the run; or
# NEVER: not a table of the pipeline (another schema), its changes are skipped.
AppliesFrom = Callable[[str, str], int]
# The message tags that name a row change in errors.
_TAGS = {Insert: "I", Update: "U", Delete: "D"}


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
        fill_bytes (int): Bytes of unchanged TOASTed values read back at once.
        default_schema (str): The pipeline's default schema: a table of another one lands in
            `schema__table` (names.py); default: every table keeps its own name.
    """

    def __init__(self, tables: Mapping[str, TableInfo], types: Dict[int, PgTypeRow],
                 fetch_current: FetchCurrent, deletes: DeleteMode = "hard",
                 merge_strategy: MergeStrategy = "delete-insert",
                 existing_column: Optional[ExistingColumn] = None,
                 applies_from: AppliesFrom = lambda schema, name: 0,
                 column_maps: Optional[Mapping[str, ColumnMap]] = None,
                 copied_before: Callable[[int], int] = lambda oid: 0,
                 fill_bytes: int = BATCH_BYTES, default_schema: str = "") -> None:
        self.tables_by_oid = {table.oid: table for table in tables.values()}
        self.shapes = RelationShapes(types, deletes, merge_strategy, existing_column,
                                     column_maps or {}, default_schema)
        self.totals = BufferTotals()
        self.filler = ToastFiller(fetch_current, fill_bytes, self.totals)
        # Checked after every change: the filler's own method, bound once.
        self.fill_due: Callable[[], bool] = self.filler.due
        self.arrow = ArrowBuilder(deletes)
        self.applies_from = applies_from
        self.copied_before = copied_before
        self.latest_handoff = 0  # the highest applies_from of any relation seen
        self.merge_strategy = merge_strategy
        self.relations: Dict[int, RelationBuffer] = {}
        self.segment_keys: Dict[str, set] = {}
        self.segment_has_data = False

    @property
    def buffered(self) -> int:
        """Rows buffered, of all relations."""
        return self.totals.rows

    def on_relation(self, relation: Relation) -> Iterable[TableBatch]:
        """Registers a (possibly changed) relation; rows of its previous shape are flushed first."""
        previous = self.relations.get(relation.relation_id)
        flushed = self._flush_relation(previous) if previous is not None else iter(())
        table = self.tables_by_oid.get(relation.relation_id) or table_from_relation(relation)
        applies_from = self.applies_from(relation.namespace, relation.name)
        state = self.shapes.buffer(relation, table, applies_from, self.totals)
        self.latest_handoff = max(self.latest_handoff, applies_from)
        self.relations[relation.relation_id] = state
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
            raise _copy_missing(state, self.tables_by_oid.get(relation_id))
        return commit_lsn < state.applies_from

    def _state(self, relation_id: int, tag: str) -> RelationBuffer:
        state = self.relations.get(relation_id)
        if state is None:
            raise DecodeError(f"pgoutput message '{tag}' refers to relation {relation_id} "
                              "that no Relation message described")
        return state

    def keys_of(self, message: Message) -> List[Tuple[str, Key]]:
        """The (table, key) pairs a change writes, for the repeated-key check."""
        state = self._state(message.relation_id, _TAGS.get(type(message), "D"))
        return [(state.hints["table_name"], key) for key in state.keys_written(message)]

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

    def add(self, message: Message, lsn: int, tx: TxStamp) -> None:
        """Buffers one change: `lsn` is its own WAL position, `tx` its transaction's commit.

        Raises:
            CopyMissingError: The change has a column the pipeline cannot place (ddl.py).
        """
        kind = type(message)
        if kind is Insert:  # the commonest change: written here, one call fewer than an update
            state = self.relations.get(message.relation_id) or self._state(message.relation_id, "I")
            state.append(message.new_tuple, lsn, tx, False)
            if state.transaction_rows is not None:
                state.transaction_rows[state.key_of(message.new_tuple)] = message.new_tuple
        elif kind is Update:
            self._state(message.relation_id, "U").add_update(message, lsn, tx)
        else:
            self._state(message.relation_id, "D").append(message.old_tuple, lsn, tx, True)
        self.segment_has_data = True

    def begin_transaction(self) -> None:
        for state in self.relations.values():
            if state.transaction_rows:
                state.transaction_rows.clear()

    def truncate_batches(self, message: Truncate, commit_lsn: int, xid: int) -> List[TableBatch]:
        """Empty `replace` batches for the truncated tables (the truncate itself), leaving out the
        tables whose copy already holds it."""
        states = [self._state(relation_id, "T") for relation_id in message.relation_ids]
        return [self.arrow.truncate(state, xid) for state in states
                if commit_lsn >= state.applies_from]

    def flush(self) -> Iterator[TableBatch]:
        for state in list(self.relations.values()):
            yield from self._flush_relation(state)

    def start_segment(self) -> None:
        self.segment_keys.clear()
        self.segment_has_data = False

    def _flush_relation(self, state: RelationBuffer) -> Iterator[TableBatch]:
        """Takes the relation's rows out of its buffer now; converts them as they are pulled."""
        if not state.rows:
            return iter(())
        if state.row_index:
            self.segment_keys.setdefault(state.hints["table_name"], set()).update(state.row_index)
        rows, meta, fill = state.take()
        if not fill:
            return iter([self.arrow.batch(state, rows, meta)])
        return (self.arrow.batch(state, part_rows, part_meta)
                for part_rows, part_meta in self.filler.filled_parts(state, rows, meta)
                if part_rows)


def _copy_missing(state: RelationBuffer, now: Optional[TableInfo]) -> CopyMissingError:
    """The refusal of the changes of a table that has no copy; `now`: the table the catalog has
    under the relation's OID (renamed since: the copy takes its name now)."""
    name = state.label
    fix = now.label if now is not None and now.schema == state.relation.namespace else name
    since = f" (named {fix} now)" if fix != name else ""
    return CopyMissingError(
        f"table {name}{since} has changes in the stream but no copy in the destination "
        f"(renamed, or published after the last snapshot): run {snapshot_command([fix])}")


def read_changes(
    messages: Iterator[Tuple[int, Message]],
    collector: ChangeCollector,
    position: Position,
    stop_lsn: int,
    result: SegmentResult,
    limits: BatchLimits = BatchLimits(),
    bounds: RunBounds = RunBounds(),
    received_bytes: Callable[[], int] = lambda: 0,
    chunk: Optional[Chunk] = None,
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
        bounds (RunBounds): Stop at the first commit after `max_changes` changes, the deadline
            or a stop request (its `stop_lsn` is the caller's: the segment may stop earlier).
        received_bytes: The bytes the stream has received so far.
        chunk (Chunk): An online copy's chunk waiting for its high watermark (chunks.py).

    Yields:
        TableBatch: Arrow tables with their dlt hints.
    """
    # Made when the first batch is pulled (this is a generator): the stream's bytes are read then.
    yield from SegmentReader(collector, position, stop_lsn, result, limits, bounds,
                             received_bytes, chunk).read(messages)
