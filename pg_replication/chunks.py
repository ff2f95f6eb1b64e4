"""An online copy's chunk on its way through the change stream: the watermark algorithm.

An online copy (`snapshot --online`) reads a keyed table in chunks, in key order, while the change
stream keeps being applied and the slot keeps being confirmed; nothing pins WAL for longer than
one chunk. It follows DBLog (Netflix, 2020), with PostgreSQL's commit order:

1. Start: the table gets a hand-off C from a temporary slot (handoff.py) and an empty
   destination table. From then on the stream applies every change of the table committing at or
   after C (an update of a row not copied yet inserts it; a delete of one is a no-op). Every
   transaction committing before C is visible to every later query, so the chunks hold it.
2. Per chunk (online.py): a low watermark L is written into the WAL (a non-transactional
   `pg_logical_emit_message`); the next rows past the cursor are read in key order
   (`WHERE key > cursor ORDER BY key LIMIT n`) in one transaction; a high watermark H is written.
3. The stream is read from where it stands (at or before L: the previous window ended there) up
   to H. Every key the stream changes on the way (old and new keys of an update, deletes,
   inserts) is dropped from the chunk: a superset of DBLog's window [L, H], which costs nothing
   (the stream carries those rows) and covers a transaction that committed before L but became
   visible only after the chunk's read began. A TRUNCATE of the table drops all of the chunk. When
   the stream reaches H, the rest of the chunk is handed to dlt like a change committed at H:
   `_pg_lsn` = H, `_pg_change_lsn` = 0. A change whose key the stream does not send (an update
   that leaves a TOASTed key unchanged) cannot be matched: the chunk is then not handed on, and
   is read again in a new window.
4. The load that holds the chunk also stores the cursor (the chunk's last key) in the dlt state;
   the slot is confirmed after it. A run killed before that load reads the chunk again.

Why the result equals the source, key by key:
- A key the stream changed before H (in the chunk's window) is not taken from the chunk: the
  stream carries its whole row (unchanged TOASTed values are read back), committed at or after C.
- A key the stream did not change before H had, at the chunk's read, the value of its last change
  before the window, which the chunk saw: the row the chunk merges at H is current at H.
- A change committing at or after H is newer than the chunk's row: the merge's LSN guard
  (merges.py) lets it win even when it was loaded before the chunk.
- Rows inserted past the last chunk's end, or below the cursor, come through the stream.

What it relies on, and leaves: a transaction whose commit record the stream loaded *before* the
chunk's window opened must be visible to the chunk's query. PostgreSQL makes a commit visible
right after writing its record, except while the committing session waits for a synchronous
standby; a commit still waiting through a whole load and the next chunk's read would be missed by
the chunk and overwritten by it. The window starts where the previous load ended, so this needs a
synchronous standby stalled for that long.
"""

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Set, Tuple

import pyarrow as pa

from .arrow_batches import ArrowBuilder, TableBatch
from .catalog import TableInfo
from .exceptions import CopyMissingError
from .protocol import LogicalMessage, Relation, RelationColumn
from .relation_buffer import BufferTotals, RelationShapes
from .stream import WATERMARK_PREFIX


def chunk_columns(table: TableInfo) -> List[str]:
    """The columns a chunk reads, in the order a change of the table arrives in (pgoutput sends
    every column but the generated ones, which the stream's buffer puts after them)."""
    return ([c.name for c in table.columns if not c.generated]
            + [c.name for c in table.columns if c.generated])


def relation_of(table: TableInfo) -> Relation:
    """The Relation message the server would send for the table as the catalog describes it: the
    chunk's rows become a batch through the same shapes as the stream's (relation_buffer.py)."""
    key = set(table.merge_key)
    columns = [RelationColumn(c.name, c.type_oid, c.type_modifier, c.name in key)
               for c in table.columns if not c.generated]
    return Relation(table.oid, table.schema, table.name, table.replica_identity, columns)


@dataclass
class Chunk:
    """One chunk of an online copy, from its read until the stream reaches its high watermark.

    `rows` holds every column as PostgreSQL's text (`chunk_columns` order); `last_key` is the key
    of its last row, as text (the cursor once the chunk is loaded).
    """

    table: TableInfo  # as the catalog described it in the chunk's transaction
    rows: pa.Table
    last_key: Optional[List[str]]
    last: bool  # fewer rows than asked for: the table's end
    high_content: str  # the high watermark's message
    low: int = 0  # the WAL positions after the watermarks
    high: int = 0
    changed: Set[Tuple[Optional[str], ...]] = field(default_factory=set)
    truncated: bool = False  # the stream truncated the table in the window: no row is kept
    unknown_key: bool = False  # the stream changed a row whose key it did not send
    released: Optional[int] = None  # rows handed on at the high watermark

    def saw(self, keys: Iterable[tuple]) -> None:
        """The stream changed these keys (raw pgoutput values) before the high watermark."""
        for key in keys:
            if all(isinstance(value, (bytes, memoryview)) for value in key):
                self.changed.add(tuple(bytes(value).decode() for value in key))
            else:  # a key value TOASTed and unchanged: which row it was is not known here,
                self.unknown_key = True  # so the chunk is not handed on (read again)

    def is_high_watermark(self, message: LogicalMessage) -> bool:
        """The chunk's high watermark, while the chunk can still be handed on."""
        return (self.released is None and not self.unknown_key
                and message.prefix == WATERMARK_PREFIX
                and message.content == self.high_content.encode())

    def kept_rows(self) -> pa.Table:
        """The chunk's rows the stream did not change in the window."""
        if self.truncated:
            return self.rows.slice(0, 0)
        if not self.changed or not self.rows.num_rows:
            return self.rows
        keys = self.table.merge_key
        columns = [self.rows.column(name).to_pylist() for name in keys]
        keep = [key not in self.changed for key in zip(*columns)]
        return self.rows.filter(pa.array(keep, pa.bool_()))


def chunk_batch(chunk: Chunk, shapes: RelationShapes, arrow: ArrowBuilder) -> TableBatch:
    """The rows the chunk keeps at its high watermark, as a batch shaped like the table's changes
    (the same destination columns, hints and conversions), committed at the watermark."""
    state = shapes.buffer(relation_of(chunk.table), chunk.table, 0, BufferTotals())
    if state.problem:
        raise CopyMissingError(state.problem)
    return arrow.copied_batch(state, chunk.kept_rows(), chunk.high)
