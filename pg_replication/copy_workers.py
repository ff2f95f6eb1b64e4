"""The consistent copy read over several connections: each has imported the same exported
snapshot, so together they read one state of the database, and each reads whole tables or CTID
ranges of a large one (PostgreSQL 14+ scans a CTID range without reading the other blocks).

The readers are threads; COPY, Arrow's CSV parser and the conversions release the GIL, so they
overlap. What they read goes through one bounded queue to the caller (the dlt resource), so
memory stays bounded per worker: a few batches of about `snapshot.CSV_BLOCK_BYTES` each.

Locks: each reader's transaction holds ACCESS SHARE on what it read until the copy ends. An
ALTER TABLE queued behind one reader's lock would queue every later reader of that table behind
itself, a wait PostgreSQL cannot see as a deadlock. So the first reader locks every table to
read before any part is read (waiting, like a single reader would), and the others lock a table
with NOWAIT before reading a part of it: a schema change waiting for the table then fails the
copy with a clear message instead of hanging it (as `pg_dump --jobs` does).
"""

import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import psycopg2.errors
import pyarrow as pa
from psycopg2 import sql

from .catalog import TableInfo
from .exceptions import SourceNotReadyError
from .snapshot import BlockRange

# A table is split into CTID ranges of about this many 8 KB blocks (64 MB) once it has more
# than two of them; smaller tables are read whole, by one worker.
PART_BLOCKS = 1 << 13
BLOCK_BYTES = 8192  # PostgreSQL's block size unless it was compiled with another
# With more than this many bytes to copy, the default is several workers.
PARALLEL_FROM_BYTES = 1 << 30
MAX_DEFAULT_WORKERS = 4
BATCHES_PER_WORKER = 2  # read ahead per worker, waiting in the queue


@dataclass(frozen=True)
class CopyPart:
    """A table, or the rows stored in a range of its blocks."""

    table: TableInfo
    blocks: Optional[BlockRange] = None


def table_sizes(conn, tables: Sequence[TableInfo]) -> Dict[int, int]:
    """Heap blocks (of BLOCK_BYTES) per table OID (a partitioned table's partitions together)."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT c.oid, CASE WHEN c.relkind = 'p'
                   THEN (SELECT coalesce(sum(pg_relation_size(p.relid)), 0)
                         FROM pg_partition_tree(c.oid) p WHERE p.isleaf)
                   ELSE pg_relation_size(c.oid) END / current_setting('block_size')::int
               FROM pg_class c WHERE c.oid = ANY(%s::oid[])""", ([t.oid for t in tables],))
        return {int(oid): int(blocks) for oid, blocks in cur.fetchall()}


def default_workers(sizes: Dict[int, int]) -> int:
    """One worker for small copies; for large ones one per core, up to MAX_DEFAULT_WORKERS."""
    if sum(sizes.values()) * BLOCK_BYTES < PARALLEL_FROM_BYTES:
        return 1
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def plan_parts(tables: Sequence[TableInfo], sizes: Dict[int, int], workers: int,
               ctid_ranges: bool, part_blocks: int = PART_BLOCKS) -> List[CopyPart]:
    """The parts to read, largest tables first (so the last part to finish is a small one).
    Plain tables larger than two parts are split when `ctid_ranges` (PostgreSQL 14+) and there
    is more than one worker; the last range of a table is open-ended: rows written into new
    blocks after the snapshot are not visible to it anyway."""
    parts: List[CopyPart] = []
    for table in sorted(tables, key=lambda t: -sizes.get(t.oid, 0)):
        blocks = sizes.get(table.oid, 0)
        if workers < 2 or not ctid_ranges or table.is_partitioned or blocks <= 2 * part_blocks:
            parts.append(CopyPart(table))
            continue
        starts = list(range(0, blocks, part_blocks))
        ends: List[Optional[int]] = [*starts[1:], None]
        parts += [CopyPart(table, (first, end)) for first, end in zip(starts, ends)]
    return parts


ReadPart = Callable[[Any, CopyPart], Iterator[pa.Table]]


def read_parts(readers: Sequence[Any], parts: Sequence[CopyPart],
               read: ReadPart) -> Iterator[Tuple[CopyPart, Optional[pa.Table]]]:
    """Reads the parts over the reader connections, one thread each; yields (part, batch) as
    batches arrive, and (part, None) once a part is read whole. The first failure stops every
    reader and is raised here."""
    if len(readers) == 1:  # no thread: the simplest path for the commonest case
        for part in parts:
            for data in read(readers[0], part):
                yield part, data
            yield part, None
        return
    lock_tables(readers[0], {part.table.oid: part.table for part in parts}.values())
    pool = _ReaderPool(readers, parts, _locking_first(read))
    try:
        yield from pool.results()
    finally:
        pool.stop()


def lock_tables(conn, tables: Iterable[TableInfo], nowait: bool = False) -> None:
    """Takes ACCESS SHARE on the tables in the connection's transaction.

    Raises:
        SourceNotReadyError: (`nowait`) another session waits for a stronger lock on one.
    """
    for table in tables:
        statement = sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE{}").format(
            sql.Identifier(table.schema, table.name), sql.SQL(" NOWAIT" if nowait else ""))
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        except psycopg2.errors.LockNotAvailable:
            raise SourceNotReadyError(
                f"table {table.name!r}: another session waits to change it (ALTER TABLE, ...) "
                "while the parallel copy reads it: run the snapshot again once that is done, or "
                "with --workers 1") from None


def _locking_first(read: ReadPart) -> ReadPart:
    """`read`, after the reader locked the part's table without waiting (see the docstring)."""

    def locked_read(conn, part: CopyPart) -> Iterator[pa.Table]:
        lock_tables(conn, [part.table], nowait=True)
        yield from read(conn, part)

    return locked_read


class _ReaderPool:
    """Threads that take parts from a shared list and put their batches into one queue."""

    def __init__(self, readers: Sequence[object], parts: Sequence[CopyPart],
                 read: ReadPart) -> None:
        self.todo, self.readers = list(parts), list(readers)
        self.lock = threading.Lock()
        self.out: "queue.Queue" = queue.Queue(maxsize=BATCHES_PER_WORKER * len(readers))
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(conn, read), daemon=True,
                                         name=f"copy-worker-{i}")
                        for i, conn in enumerate(readers)]
        for thread in self.threads:
            thread.start()

    def results(self) -> Iterator[Tuple[CopyPart, Optional[pa.Table]]]:
        running = len(self.threads)
        while running:
            item = self.out.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    def stop(self) -> None:
        self.stopping.set()
        busy = [thread.is_alive() for thread in self.threads]
        for conn, alive in zip(self.readers, busy):  # a reader blocked in the server returns
            if not alive:
                continue
            try:
                conn.cancel()
            except Exception:  # noqa: BLE001 - a closed or broken connection has nothing to stop
                pass
        while any(thread.is_alive() for thread in self.threads):
            try:  # unblocks a worker waiting to put a batch
                self.out.get(timeout=0.05)
            except queue.Empty:
                pass

    def _next_part(self) -> Optional[CopyPart]:
        with self.lock:
            return self.todo.pop(0) if self.todo else None

    def _work(self, conn, read: ReadPart) -> None:
        try:
            while not self.stopping.is_set():
                part = self._next_part()
                if part is None:
                    break
                for data in read(conn, part):
                    self._put((part, data))
                    if self.stopping.is_set():
                        return
                self._put((part, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(e)
        finally:
            self._put(_DONE)

    def _put(self, item: object) -> None:
        while not self.stopping.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


_DONE = object()  # a worker found no part left
