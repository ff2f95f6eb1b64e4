"""The consistent copy read over several connections: each has imported the same exported
snapshot, so together they read one state of the database, and each reads whole tables or CTID
ranges of a large one (PostgreSQL 14+ scans a CTID range without reading the other blocks).

The readers are threads; COPY, Arrow's CSV parser and the conversions release the GIL, so they
overlap. What they read goes through one bounded queue to the caller (the dlt resource), so
memory stays bounded per worker: a few batches of about `snapshot.CSV_BLOCK_BYTES` each.
"""

import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa

from .catalog import TableInfo
from .snapshot import BlockRange

# A table is split into CTID ranges of about this many 8 KB blocks (64 MB) once it has more
# than two of them; smaller tables are read whole, by one worker.
PART_BLOCKS = 1 << 13
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
    """Heap blocks per table OID (a partitioned table's partitions together)."""
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
    if sum(sizes.values()) * 8192 < PARALLEL_FROM_BYTES:
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


ReadPart = Callable[[object, CopyPart], Iterator[pa.Table]]


def read_parts(readers: Sequence[object], parts: Sequence[CopyPart],
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
    pool = _ReaderPool(readers, parts, read)
    try:
        yield from pool.results()
    finally:
        pool.stop()


class _ReaderPool:
    """Threads that take parts from a shared list and put their batches into one queue."""

    def __init__(self, readers: Sequence[object], parts: Sequence[CopyPart],
                 read: ReadPart) -> None:
        self.todo = list(parts)
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
