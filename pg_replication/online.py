"""Online copies, as building blocks: reading a table's next chunk between two watermarks, and
what `status` says about the copies in progress. The algorithm, and why it is exact, is written
down in chunks.py; the run that loads the chunks is jobs.py's.
"""

import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import psycopg2.errors

from .catalog import TableInfo, describe_tables
from .chunks import Chunk, chunk_columns
from .connect import connect
from .exceptions import ConfigError
from .filters import TableFilters, with_filters
from .snapshot import begin_snapshot_transaction, read_key_range
from .state import LoadedState
from .stream import emit_watermark


class ChunkReader:
    """Reads the chunks of a run's online copies on a connection of its own.

    Chunks are bounded by rows (`chunk_rows`) and by bytes (`chunk_bytes`): the row limit of a
    table's next chunk follows the bytes per row its previous chunk had (the first one's come
    from the table's size and row estimate).
    """

    def __init__(self, dsn: str, chunk_rows: int, chunk_bytes: int,
                 table_filters: Optional[TableFilters] = None) -> None:
        self.conn = connect(dsn)
        self.table_filters = table_filters or {}  # what the publication leaves out (filters.py)
        self.chunk_rows, self.chunk_bytes = chunk_rows, chunk_bytes
        self.bytes_per_row: Dict[int, float] = {}  # by table OID
        self.problem = ""  # why the last chunk could not be read
        self.gone = False  # because the table is no longer there (dropped, or renamed)

    def close(self) -> None:
        self.conn.close()

    def next_chunk(self, lock, schema: str, name: str, oid: int,
                   progress: Mapping[str, Any]) -> Optional[Chunk]:
        """The chunk after the cursor of the table copied as `oid`, read between a low and a high
        watermark written on the run's connection `lock`; None (and why, in `problem`) when the
        table was dropped (`gone`), renamed, lost its key, or changed its columns while the chunk
        was read."""
        token = uuid.uuid4().hex
        low = emit_watermark(lock, f"{token} low")
        begin_snapshot_transaction(self.conn, None)
        self.gone = False
        try:
            table = self._table_now(self.conn, schema, name)
            if table is None or table.oid != oid or not table.merge_key:
                self.problem = _why_not_readable(self.conn, table, oid)
                self.gone = self.problem == GONE
                return None
            limit = self._row_limit(table)
            rows = read_key_range(self.conn, table, chunk_columns(table), progress.get("cursor"),
                                  limit)
        except psycopg2.errors.UndefinedTable:  # dropped or renamed just now: the next try says
            self.problem = "the table was dropped or renamed while a chunk was read"
            return None
        finally:
            _end_transaction(self.conn)
        high = emit_watermark(lock, f"{token} high")
        if self._table_now(lock, schema, name) != table:
            # Its rows may lack a column the stream has from now on.
            self.problem = "the table's columns changed while a chunk was read"
            return None
        if rows.num_rows:
            self.bytes_per_row[table.oid] = rows.nbytes / rows.num_rows
        last_key = ([rows.column(k)[-1].as_py() for k in table.merge_key] if rows.num_rows
                    else progress.get("cursor"))
        return Chunk(table, rows, last_key, rows.num_rows < limit, f"{token} high", low, high)

    def _table_now(self, conn, schema: str, name: str) -> Optional[TableInfo]:
        """The table as the catalog describes it now and as it is published, or None when it is
        gone (dropped, renamed)."""
        try:
            found = describe_tables(conn, schema, [name]).get(name)
        except ConfigError:
            return None
        return with_filters({name: found}, conn.server_version, self.table_filters)[name]

    def _row_limit(self, table: TableInfo) -> int:
        per_row = self.bytes_per_row.get(table.oid) or _estimated_row_bytes(self.conn, table.oid)
        if per_row is None:  # nothing to go by: a small first chunk tells
            return min(self.chunk_rows, FIRST_CHUNK_ROWS)
        return max(1, min(self.chunk_rows, int(self.chunk_bytes / max(per_row, 1.0))))


FIRST_CHUNK_ROWS = 1_000  # a table never analyzed: the rows of its first chunk


GONE = "the table was dropped"


def _why_not_readable(conn, table: Optional[TableInfo], oid: int) -> str:
    """Why the table copied as `oid` cannot be read under its name now (GONE: dropped)."""
    if table is not None and table.oid == oid:
        return "the table has no key any more"
    with conn.cursor() as cur:
        cur.execute("SELECT relname FROM pg_class WHERE oid = %s", (oid,))
        row = cur.fetchone()
    if row is None:
        return GONE
    return (f"the table was renamed to {row[0]!r}: copy it under its new name "
            "(`snapshot --online --tables ...`)")


def _end_transaction(conn) -> None:
    """Ends the chunk's read-only transaction; a connection that broke meanwhile raises its own
    error already."""
    try:
        conn.rollback()
        conn.autocommit = True
    except Exception:  # noqa: BLE001 - the failure that broke it is the one to report
        pass


def _estimated_row_bytes(conn, oid: int) -> Optional[float]:
    """Bytes per row from the table's size (TOAST included, indexes not) and the planner's row
    estimate; None when the table was never analyzed."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_table_size(oid)::float8 / reltuples FROM pg_class "
                    "WHERE oid = %s AND reltuples > 0", (oid,))
        row = cur.fetchone()
    return float(row[0]) if row and row[0] else None


@dataclass
class CopyProgress:
    """How far one table's online copy is."""

    table: str
    rows: int
    chunks: int
    estimated_rows: Optional[int]  # pg_class.reltuples (n_live_tup before any ANALYZE), or None

    def line(self) -> str:
        total = ""
        if self.estimated_rows:
            share = min(99, int(100 * self.rows / self.estimated_rows))
            total = f" of ~{self.estimated_rows} ({share}%)"
        return f"{self.table}: {self.rows} rows{total} copied online, {self.chunks} chunks"


def copy_progress(conn, loaded: LoadedState, schema_name: str) -> List[CopyProgress]:
    """The online copies in progress, with the planner's estimate of each table's rows."""
    found = []
    for key, progress in sorted(loaded.online_copies.items()):
        with conn.cursor() as cur:  # never analyzed (-1): the statistics' live row count
            cur.execute("SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint "
                        "ELSE s.n_live_tup END FROM pg_class c LEFT JOIN pg_stat_user_tables s "
                        "ON s.relid = c.oid WHERE c.oid = %s", (loaded.oids.get(key, 0),))
            row = cur.fetchone()
        estimate = int(row[0]) if row and row[0] and row[0] > 0 else None
        name = key[len(schema_name) + 1:] if key.startswith(schema_name + ".") else key
        found.append(CopyProgress(name, int(progress.get("rows") or 0),
                                  int(progress.get("chunks") or 0), estimate))
    return found
