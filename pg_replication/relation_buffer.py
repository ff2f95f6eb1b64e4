"""One relation's rows not yet handed to dlt: owns `RelationBuffer` (the relation's shape as the
server last described it, matched to the catalog and the destination's columns) and how a change
becomes buffered rows, values still as raw text."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .catalog import TableInfo, table_key
from .ddl import ColumnMap
from .exceptions import CopyMissingError, snapshot_command
from .hints import DeleteMode, ExistingColumn, MergeStrategy, output_column_names, table_hints
from .names import destination_table, display_name
from .protocol import (UNCHANGED_TOAST, Insert, Message, PartialTuple, Relation, TupleValue,
                       Update)
from .types import ColumnKind, PgTypeRow, resolve_kind

Key = Tuple[TupleValue, ...]
# A transaction's commit: (commit LSN, commit time in microseconds since 1970). Changes are
# ordered by their transaction's commit LSN, then by their own LSN within it (hints.py).
TxStamp = Tuple[int, int]
# What a buffered row carries besides its values: its change's own LSN, its transaction's
# commit, whether it is a delete.
Meta = Tuple[int, TxStamp, bool]


class BufferTotals:
    """What the buffers of all relations hold together."""

    __slots__ = ("rows", "unfilled")

    def __init__(self) -> None:
        self.rows = 0
        self.unfilled = 0  # buffered rows whose unchanged TOASTed values are still to be read


@dataclass
class RelationBuffer:
    """A relation as last described by the server, with its rows not yet handed to dlt."""

    relation: Relation
    table: TableInfo
    label: str  # the table as users write it (names.py): in counts and messages
    kinds: List[ColumnKind]
    key_indexes: List[int]
    hints: Dict[str, Any]
    output_names: List[str]  # destination column names (a variant after a type change)
    totals: BufferTotals
    hard_deletes: bool = True  # a deleted row keeps its key only
    upsert: bool = False  # the merge strategy: one row per key and batch
    rows: List[List[TupleValue]] = field(default_factory=list)
    meta: List[Meta] = field(default_factory=list)
    has_unchanged_toast: bool = False
    unfilled: int = 0  # buffered rows with an unchanged TOASTed value to read back
    row_index: Dict[Key, int] = field(default_factory=dict)  # upsert: buffered row of each key
    # Deferrable keys only (under REPLICA IDENTITY FULL): the row last written to each key in the
    # current transaction (see add_update).
    transaction_rows: Optional[Dict[Key, List[TupleValue]]] = None
    # Changes of transactions committing before this LSN are in the table's copy (handoff.py).
    applies_from: int = 0
    # Per column, its name in the catalog now (renamed since: the new name; None: dropped).
    current_names: List[Optional[str]] = field(default_factory=list)
    generated: int = 0  # generated columns the server did not send, after the sent ones
    problem: Optional[str] = None  # why a change of this shape cannot be applied exactly

    @property
    def table_key(self) -> str:
        """The relation's table as the state keys it (state.table_key)."""
        return table_key(self.relation.namespace, self.relation.name)

    def key_of(self, values: Sequence[TupleValue]) -> Key:
        return tuple(values[i] for i in self.key_indexes)

    def keys_written(self, message: Message) -> List[Key]:
        """The keys an Insert, Update or Delete writes."""
        if isinstance(message, Insert):
            return [self.key_of(message.new_tuple)]
        if isinstance(message, Update):
            keys = [self.key_of(self._new_row(message))]
            if message.old_tuple is not None:
                keys.append(self.key_of(message.old_tuple))
            return keys
        return [self.key_of(message.old_tuple)]

    def _new_row(self, message: Update) -> List[TupleValue]:
        """The new row of an update, with its key. A key value stored out of line (TOASTed) that
        the update left unchanged is not in the new row; the server then sends the old key
        (which is the new one) in the old tuple, as it does for every update of such a row."""
        new, old = message.new_tuple, message.old_tuple
        if type(new) is not PartialTuple or old is None or message.old_kind != "K":
            return new
        filled = list(new)
        for i in self.key_indexes:
            if filled[i] is UNCHANGED_TOAST:
                filled[i] = old[i]
        return PartialTuple(filled) if UNCHANGED_TOAST in filled else filled

    def add_update(self, message: Update, lsn: int, tx: TxStamp) -> None:
        new = self._new_row(message)
        old = message.old_tuple
        if old is not None and message.old_kind == "O" and type(new) is PartialTuple:
            # REPLICA IDENTITY FULL sends the whole old row, TOASTed values included.
            new = [o if v is UNCHANGED_TOAST and o is not UNCHANGED_TOAST else v
                   for v, o in zip(new, old)]
        if old is not None and self.key_indexes and self.key_of(old) != self.key_of(new):
            # The key changed: the row under the old key is gone. With a deferrable key another
            # row may have moved into the old key earlier in this transaction while this one
            # still held it (UPDATE t SET id = 3 - id): that row stays, so no delete. Which row
            # holds the key is told by the old row's values (REPLICA IDENTITY FULL sends them).
            written = self.transaction_rows
            holder = written.get(self.key_of(old)) if written is not None else None
            if holder is None or list(holder) == list(old):
                self.append(old, lsn, tx, True)
        self.append(new, lsn, tx, False)
        if self.transaction_rows is not None:
            self.transaction_rows[self.key_of(new)] = new

    def append(self, values: List[TupleValue], lsn: int, tx: TxStamp, deleted: bool) -> None:
        """Buffers one row.

        Raises:
            CopyMissingError: The change has a column the pipeline cannot place (ddl.py).
        """
        if self.problem:
            raise CopyMissingError(self.problem)
        if self.generated:
            values = (list(values) + [None] * self.generated if deleted
                      else PartialTuple(list(values) + [UNCHANGED_TOAST] * self.generated))
        if deleted and self.hard_deletes:
            values = [v if i in self.key_indexes else None for i, v in enumerate(values)]
        elif type(values) is PartialTuple:
            self.has_unchanged_toast = True
            self.unfilled += 1
            self.totals.unfilled += 1
        if self.upsert and self.key_indexes:
            # One row per key and batch: a MERGE refuses two source rows for one key.
            key = self.key_of(values)
            index = self.row_index.get(key)
            if index is not None:
                self.rows[index] = values
                self.meta[index] = (lsn, tx, deleted)
                return
            self.row_index[key] = len(self.rows)
        self.rows.append(values)
        self.meta.append((lsn, tx, deleted))
        self.totals.rows += 1

    def take(self) -> Tuple[List[List[TupleValue]], List[Tuple[int, int, bool]], bool]:
        """Takes the rows out of the buffer: rows, their metadata, whether any has an unchanged
        TOASTed value to read back."""
        rows, meta, fill = self.rows, self.meta, self.has_unchanged_toast
        self.totals.rows -= len(meta)
        self.totals.unfilled -= self.unfilled
        self.unfilled = 0
        self.rows, self.meta, self.has_unchanged_toast, self.row_index = [], [], False, {}
        return rows, meta, fill


@dataclass(frozen=True)
class RelationShapes:
    """Matches the server's Relation messages to the catalog and the destination's columns."""

    types: Dict[int, PgTypeRow]
    deletes: DeleteMode
    merge_strategy: MergeStrategy
    existing_column: Optional[ExistingColumn]
    column_maps: Mapping[str, ColumnMap]
    # The pipeline's default schema (names.py): a relation of another schema lands in the
    # destination table `schema__name`. "": the relation's own.
    default_schema: str = ""

    def buffer(self, relation: Relation, table: TableInfo, applies_from: int,
               totals: BufferTotals) -> RelationBuffer:
        """An empty buffer for the relation's rows, in the shape the message describes."""
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
        # Named as the message names it: a table renamed since keeps its changes in the
        # destination table of its copy under the old name.
        default = self.default_schema or relation.namespace
        target = destination_table(relation.namespace, relation.name, default)
        label = display_name(relation.namespace, relation.name, default)
        output_names = output_column_names(target, list(zip(destination, kinds)),
                                           self.existing_column)
        output_key = [output_names[i] for i in key_indexes]
        hints = table_hints(target, list(zip(output_names, kinds)), output_key,
                            self.deletes, self.merge_strategy)
        return RelationBuffer(
            relation, table, label, kinds, key_indexes, hints, output_names, totals,
            hard_deletes=self.deletes == "hard", upsert=self.merge_strategy == "upsert",
            transaction_rows={} if table.deferrable_key and relation.replica_identity == "f"
            else None, applies_from=applies_from,
            current_names=current, generated=len(generated),
            problem=_unknown_columns_problem(label, sent, column_map),
        )


def _unknown_columns_problem(label: str, sent: List[str],
                             column_map: Optional[ColumnMap]) -> Optional[str]:
    """A column the recorded shape does not know: renamed (or added and dropped) between two
    runs, so which destination column it belongs to cannot be told."""
    unknown = [n for n in sent if column_map is not None and n not in column_map.destination]
    if not unknown:
        return None
    return (f"table {label} has changes with column(s) {', '.join(unknown)} that the "
            "catalog no longer has (renamed twice, or added and dropped, between two runs): run "
            f"{snapshot_command([label])}")


def table_from_relation(relation: Relation) -> TableInfo:
    """A table the catalog did not list (published by someone else): keys from the message."""
    key = [c.name for c in relation.columns if c.is_key] if relation.replica_identity != "f" else []
    return TableInfo(relation.namespace, relation.name, relation.relation_id, False,
                     relation.replica_identity, [], key, key)
