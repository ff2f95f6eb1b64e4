"""From decoded pgoutput messages to per-table Arrow batches, with exact resume positions (the
delivery contract they serve is written in state.py).

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

This module owns the loop over one segment (`SegmentReader`: one handler per message kind, each
telling the loop what to do `Next`), what a segment reads and holds (`SegmentResult`,
`BatchLimits`), and when it ends. The row buffers it fills are a `changes.ChangeCollector`.
"""

import contextlib
import enum
import gc
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

from .arrow_batches import TableBatch
from .bounds import RunBounds
from .chunks import Chunk, chunk_batch
from .exceptions import DecodeError
from .protocol import (Begin, Commit, Delete, Insert, LogicalMessage, Message, Origin, Relation,
                       StreamAbort, StreamCommit, StreamStart, StreamStop, Truncate, TypeInfo,
                       Update)
from .state import Position

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
    # The stream went silent before the stop (the server still decoding past STALL_SECONDS), or
    # ended without the rest of a transaction a load split: the run says so (jobs.py).
    stalled: bool = False

    def took(self, lsn: int) -> None:
        """A change at `lsn` is in the segment."""
        if self.first_lsn is None:
            self.first_lsn = lsn
        self.last_lsn = lsn

    def count(self, table: str, changes: int = 1) -> None:
        self.changes[table] = self.changes.get(table, 0) + changes


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


class Next(enum.Enum):
    """What the loop does after a handler."""

    CONTINUE = "read the next message"
    FLUSH = "hand the buffered rows on; the segment ends if its load is full"
    HAND_ON = "hand on the batches in `pending`, then read the next message"
    TRUNCATE_ALONE = "hand on the truncate in `pending`: it is the whole segment"
    END_SEGMENT = "the segment ends early (truncate, repeated key, load full): load it, read again"
    STOP = "the stop position, `max_changes` or the deadline is reached"


CONTINUE, FLUSH, HAND_ON = Next.CONTINUE, Next.FLUSH, Next.HAND_ON
Handler = Callable[["SegmentReader", int, Message], Next]


class SegmentReader:
    """Reads one segment: per-segment state, and one handler per pgoutput message kind."""

    def __init__(self, collector, position: Position, stop_lsn: int, result: SegmentResult,
                 limits: BatchLimits, bounds: RunBounds,
                 received_bytes: Callable[[], int], chunk: Optional[Chunk] = None) -> None:
        self.collector = collector  # a changes.ChangeCollector: the row buffers
        self.position, self.stop_lsn, self.result, self.bounds = position, stop_lsn, result, bounds
        self.counts: Dict[int, int] = {}  # changes taken per relation id
        self.max_rows, self.load = limits.rows, _LoadSize(limits.load_bytes)
        self.bytes_bound = _ByteBound(received_bytes, limits.buffer_bytes)
        self.check_repeats = collector.merge_strategy == "upsert"
        self.totals = collector.totals  # what the row buffers hold
        self.current: Optional[Begin] = None  # the open transaction
        self.tx: Tuple[int, int] = (0, 0)  # its commit LSN and commit time
        self.skipping = False  # the open transaction is loaded already
        self.check_handoffs = False  # the transaction commits before some table's hand-off
        # Changes of the open transaction so far; the first `already_loaded` are loaded already.
        self.ordinal = self.already_loaded = 0
        self.pending: Iterable[TableBatch] = ()
        # An online copy's chunk waiting for its high watermark, and its table's relation id.
        self.chunk, self.chunk_relation = chunk, chunk.table.oid if chunk is not None else None

    def read(self, messages: Iterator[Tuple[int, Message]]) -> Iterator[TableBatch]:
        """Consumes one segment of the stream and yields its batches; fills `result`."""
        self.collector.start_segment()
        self.result.confirm_lsn = self.position.lsn
        try:
            with _fewer_gc_passes():
                yield from self._read_segment(messages)
        finally:
            for relation_id, count in self.counts.items():
                self.result.count(self.collector.relations[relation_id].label, count)

    def _read_segment(self, messages: Iterator[Tuple[int, Message]]) -> Iterator[TableBatch]:
        handlers, unhandled, continue_ = _HANDLERS, _refuse_unhandled, CONTINUE
        for lsn, message in messages:
            step = handlers.get(type(message), unhandled)(self, lsn, message)
            if step is continue_:
                continue
            if step is FLUSH:
                step = yield from self._hand_on_buffer()
            elif step is HAND_ON:
                yield from self.pending
                continue
            elif step is Next.TRUNCATE_ALONE:
                yield from self.pending
                return
            if step is not CONTINUE:
                break  # END_SEGMENT or STOP
        else:
            self.result.exhausted = True
        yield from self.collector.flush()

    def on_begin(self, lsn: int, message: Begin) -> Next:
        final_lsn, position = message.final_lsn, self.position
        if final_lsn > self.stop_lsn:
            self.result.confirm_lsn = max(self.result.confirm_lsn, final_lsn)
            return Next.STOP
        self.current, self.tx, self.ordinal = message, (final_lsn, message.commit_ts_us), 0
        self.check_handoffs = final_lsn < self.collector.latest_handoff
        self.collector.begin_transaction()
        self.skipping = final_lsn < position.lsn
        self.already_loaded = (position.partial_changes
                               if final_lsn == position.partial_commit_lsn else 0)
        return CONTINUE

    def on_commit(self, lsn: int, message: Commit) -> Next:
        result, end_lsn = self.result, message.end_lsn
        if not self.skipping:
            result.transactions += 1
            result.position = self.position = Position(end_lsn)
        if end_lsn > result.confirm_lsn:
            result.confirm_lsn = end_lsn
        self.current, self.skipping = None, False
        max_changes = self.bounds.max_changes
        if ((max_changes is not None and sum(self.counts.values()) >= max_changes)
                or self.bounds.should_stop()):
            return Next.STOP
        return CONTINUE

    def on_row_change(self, lsn: int, message: Message) -> Next:
        """An Insert, Update or Delete: buffered, unless loaded already or in the table's copy.
        The hot path: it runs per change, so it calls no helper it can do without."""
        # Before the skip: a change loaded already still changed the key in the chunk's window.
        if message.relation_id == self.chunk_relation:
            self.chunk.saw(key for _, key in self.collector.keys_of(message))
        if self.skipping:
            return CONTINUE
        self.ordinal = ordinal = self.ordinal + 1  # as _is_new_change
        if ordinal <= self.already_loaded:
            return CONTINUE
        collector = self.collector
        if self.check_handoffs and collector.in_copy(message.relation_id, self.current.final_lsn):
            return CONTINUE
        if self.check_repeats and collector.would_repeat_key(message):
            return self.end_segment(ordinal - 1)
        collector.add(message, lsn, self.tx)
        counts = self.counts
        counts[message.relation_id] = counts.get(message.relation_id, 0) + 1
        result = self.result
        if result.first_lsn is None:
            result.first_lsn = lsn
        result.last_lsn = lsn
        if (self.totals.rows >= self.max_rows or self.bytes_bound.reached()
                or collector.fill_due()):
            return FLUSH
        return CONTINUE

    def on_truncate(self, lsn: int, message: Truncate) -> Next:
        """The changes before a truncate are loaded, then the truncate alone, then the rest."""
        if self.chunk_relation in message.relation_ids:
            self.chunk.truncated = True
        if self.skipping or not self._is_new_change():
            return CONTINUE
        batches = self.collector.truncate_batches(message, self.current.final_lsn,
                                                  self.current.xid)
        if not batches:
            return CONTINUE
        if self.collector.segment_has_data:
            return self.end_segment(self.ordinal - 1)
        self.pending = _truncate_alone(self, batches, lsn)
        return Next.TRUNCATE_ALONE

    def on_relation(self, lsn: int, message: Relation) -> Next:
        self.pending = self.collector.on_relation(message)  # rows of the previous shape
        if self.current is not None:
            self.check_handoffs = self.current.final_lsn < self.collector.latest_handoff
        return HAND_ON

    def _is_new_change(self) -> bool:
        """Counts the change; False when an earlier segment loaded it already."""
        self.ordinal += 1  # counts every change, so a resumed transaction skips the same ones
        return self.ordinal > self.already_loaded

    def end_segment(self, loaded: int) -> Next:
        """Ends the segment after the open transaction's first `loaded` changes."""
        self.result.position = Position(self.position.lsn, self.current.final_lsn, loaded)
        self.result.more = True
        return Next.END_SEGMENT

    def _hand_on_buffer(self) -> Iterator[TableBatch]:
        """Yields the buffered rows; returns END_SEGMENT when the segment's load is full."""
        for batch in self.collector.flush():
            self.load.add(batch)
            yield batch
        if self.load.full():
            # Loaded so far, this transaction's first `ordinal` changes included.
            return self.end_segment(self.ordinal)
        return CONTINUE



def _truncate_alone(reader: SegmentReader, batches: Iterable[TableBatch],
                    lsn: int) -> Iterator[TableBatch]:
    """The truncate's batches, as the whole segment."""
    for batch in batches:
        reader.result.count(batch.label)
        yield batch
    reader.result.took(lsn)
    reader.end_segment(reader.ordinal)


def _on_message(reader: SegmentReader, lsn: int, message: LogicalMessage) -> Next:
    """A logical message: the pending chunk's high watermark hands the chunk's rows on."""
    chunk = reader.chunk
    if chunk is None or not chunk.is_high_watermark(message):
        return CONTINUE
    batch = chunk_batch(chunk, reader.collector.shapes, reader.collector.arrow)
    chunk.released = batch.data.num_rows
    reader.pending = [batch] if batch.data.num_rows else []
    return HAND_ON


# The handlers of the kinds that carry no change.

def _ignore(reader: SegmentReader, lsn: int, message: Message) -> Next:
    return CONTINUE  # types resolve through the catalog; origins carry no rows


def _refuse_streamed(reader: SegmentReader, lsn: int, message: Message) -> Next:
    raise DecodeError(f"pgoutput sent a streamed transaction ({type(message).__name__}) "
                      "although streaming was not requested")


def _refuse_unhandled(reader: SegmentReader, lsn: int, message: Message) -> Next:
    raise DecodeError(f"unhandled pgoutput message {type(message).__name__}")


# The handler of each message kind: called with the reader, the WAL position and the message.
_HANDLERS: Dict[type, Handler] = {
    Insert: SegmentReader.on_row_change, Update: SegmentReader.on_row_change,
    Delete: SegmentReader.on_row_change, Truncate: SegmentReader.on_truncate,
    Begin: SegmentReader.on_begin, Commit: SegmentReader.on_commit,
    Relation: SegmentReader.on_relation,
    LogicalMessage: _on_message, TypeInfo: _ignore, Origin: _ignore,
    StreamStart: _refuse_streamed, StreamStop: _refuse_streamed,
    StreamCommit: _refuse_streamed, StreamAbort: _refuse_streamed,
}


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
