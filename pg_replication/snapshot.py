"""The initial copy of tables, read inside one consistent snapshot and streamed as Arrow tables.

Each table is read with `COPY (SELECT ...) TO STDOUT (FORMAT csv)`: PostgreSQL's text output of
every column, the same text pgoutput sends for a change, parsed by Arrow's CSV reader in C and then
converted by `types.text_to_arrow` exactly as CDC converts it.
"""

import ctypes
import ctypes.util
import os
import threading
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg2 import sql

from .catalog import TableInfo
from .hints import (CHANGE_LSN_COLUMN, COMMIT_TS_COLUMN, DELETED_COLUMN, LSN_COLUMN,
                    copied_row_meta)
from .types import ColumnKind, refuse_inexact_keys, text_to_arrow

# Rows of one table reach dlt in batches of about this many bytes of CSV: small enough that the
# buffers of a batch stay small next to the process, large enough for Arrow to stay efficient.
CSV_BLOCK_BYTES = 2 << 20


def begin_snapshot_transaction(conn, snapshot_name: Optional[str]) -> None:
    """Starts a read-only REPEATABLE READ transaction, inside the exported snapshot when given.

    Without a snapshot name the transaction sees the database as of its first query.
    """
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if snapshot_name:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))


# Blocks [first, end) of a table's heap (end None: to the table's end), read by CTID range.
BlockRange = Tuple[int, Optional[int]]


def _copy_sql(table: TableInfo, blocks: Optional[BlockRange] = None) -> sql.Composable:
    # ONLY: a plain table's inheritance children are tables of their own. A partitioned root has
    # no rows itself and must be read with its partitions.
    only = sql.SQL("") if table.is_partitioned else sql.SQL("ONLY ")
    columns = _row_marker_and(c.name for c in table.columns)
    conditions = row_filter_conditions(table)
    if blocks is not None:  # a TID range scan (PostgreSQL 14+) reads only these blocks
        first, end = blocks
        conditions.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({first},0)")))
        if end is not None:
            conditions.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({end},0)")))
    return sql.SQL("COPY (SELECT {} FROM {}{}{}) TO STDOUT (FORMAT csv)").format(
        columns, only, sql.Identifier(table.schema, table.name), where_clause(conditions)
    )


def row_filter_conditions(table: TableInfo) -> List[sql.Composable]:
    """The publication's row filter as a condition of the copy (filters.py): the copy holds the
    rows the stream's filter lets through."""
    return [sql.SQL("({})").format(sql.SQL(table.row_filter))] if table.row_filter else []


def where_clause(conditions: List[sql.Composable]) -> sql.Composable:
    if not conditions:
        return sql.SQL("")
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions)


def read_table(
    conn,
    table: TableInfo,
    kinds: Dict[str, ColumnKind],
    lsn: int,
    deleted_column: str = DELETED_COLUMN,
    blocks: Optional[BlockRange] = None,
) -> Iterator[pa.Table]:
    """Streams one table (or the rows in `blocks` of it) as Arrow tables with the metadata
    columns, in bounded memory.

    Args:
        conn: A connection inside the snapshot transaction.
        table (TableInfo): The table.
        kinds (Dict[str, ColumnKind]): Conversion per column.
        lsn (int): Value of `_pg_lsn` for every row (the hand-off LSN); `_pg_change_lsn` is 0.
        deleted_column (str): `_pg_deleted` (hard deletes) or `_pg_deleted_at` (soft).
        blocks (BlockRange): Only the rows stored in these blocks (a part of a parallel copy).

    Yields:
        pa.Table: Up to one CSV block of rows each; nothing for an empty table.
    """
    names = [c.name for c in table.columns]
    copy_sql = _copy_sql(table, blocks).as_string(conn)
    for batch in _copy_csv_batches(conn, copy_sql, names):
        yield typed_batch(table, names, batch, kinds, lsn, deleted_column)
    release_freed_memory()


def typed_batch(table: TableInfo, names: List[str], batch: pa.Table,
                kinds: Dict[str, ColumnKind], lsn: int, deleted_column: str) -> pa.Table:
    """Rows read as PostgreSQL's text (one string column per name) as their destination types,
    with the `_pg_*` columns of copied rows (whichever reader read them: sql_reader.py too)."""
    refuse_inexact_keys(table.label, [(name, batch.column(names.index(name)), kinds[name])
                                      for name in table.merge_key])
    arrays: List[pa.Array] = [text_to_arrow(batch.column(i), kinds[name])
                              for i, name in enumerate(names)]
    arrays += copied_row_meta(batch.num_rows, lsn, deleted_column)
    return pa.Table.from_arrays(arrays, names=names + [LSN_COLUMN, CHANGE_LSN_COLUMN,
                                                       COMMIT_TS_COLUMN, deleted_column])


def read_key_range(conn, table: TableInfo, names: List[str], after: Optional[List[str]],
                   limit: int) -> pa.Table:
    """The first `limit` rows of `table` in key order whose key is past `after` (text values of
    the key columns; None: from the start), every column as PostgreSQL's text, as one Arrow table
    of strings (an online copy's chunk, chunks.py). Runs in the caller's transaction."""
    key = sql.SQL(", ").join(sql.Identifier(k) for k in table.merge_key)
    conditions = row_filter_conditions(table)
    if after is not None:  # a row comparison: the key's btree index finds where to start
        conditions.append(sql.SQL("({}) > ({})").format(
            key, sql.SQL(", ").join(sql.Literal(value) for value in after)))
    after_key = where_clause(conditions)
    only = sql.SQL("") if table.is_partitioned else sql.SQL("ONLY ")  # as _copy_sql
    query = sql.SQL("COPY (SELECT {} FROM {}{}{} ORDER BY {} LIMIT {}) TO STDOUT (FORMAT csv)"
                    ).format(_row_marker_and(names), only,
                             sql.Identifier(table.schema, table.name), after_key, key,
                             sql.Literal(limit))
    batches = list(_copy_csv_batches(conn, query.as_string(conn), names))
    schema = pa.schema([pa.field(name, pa.string()) for name in names])
    return pa.Table.from_batches(batches, schema=schema)


def release_freed_memory() -> None:
    """Hands the memory Arrow's allocator and malloc keep for reuse back to the OS.

    After a 1 M-row table they kept ~100 MB that nothing used any more, while an in-process
    destination (DuckDB) then needed its own memory on top.
    """
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_glibc()


def _row_marker_and(names: Iterable[str]) -> sql.Composable:
    """The columns a COPY reads, after a constant `1` that starts every row of its CSV. Arrow's
    CSV reader drops a byte-order mark (U+FEFF) at the start of a block, and skips empty lines:
    without the marker, a first value starting with U+FEFF lost it, and a row of one NULL
    column was lost. `_copy_csv_batches` removes the marker."""
    return sql.SQL("1, ") + sql.SQL(", ").join(sql.Identifier(name) for name in names)


def _copy_csv_batches(conn, copy_sql: str, names: List[str]) -> Iterator[pa.RecordBatch]:
    """Runs COPY in a thread writing into a pipe that Arrow's streaming CSV reader consumes; the
    COPY's first column is the row marker (`_row_marker_and`), left out of the batches."""
    read_fd, write_fd = os.pipe()
    failure: List[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=1 << 20) as sink, conn.cursor() as cur:
                cur.copy_expert(copy_sql, sink, size=1 << 18)
        except BaseException as e:  # reported to the consumer below
            failure.append(e)

    producer = threading.Thread(target=produce, name="snapshot-copy", daemon=True)
    producer.start()
    source = os.fdopen(read_fd, "rb", buffering=1 << 20)
    marker = "pg_replication_row"  # the marker's name in the CSV reader only
    read_options = dict(column_names=[marker, *names], use_threads=False)
    # Quoted newlines make the reader parse serially anyway; its read-ahead threads only kept
    # more blocks alive (measured: ~100 MB more peak RSS, no speed gain).
    parse_options = pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
    convert_options = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in [marker, *names]},
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,  # "" is an empty string, bare empty is NULL
        null_values=[""],
    )
    try:
        for rows in _whole_rows(source, CSV_BLOCK_BYTES):
            # A block holds whole rows, however long one is (Arrow's streaming reader fails on
            # a row longer than its block size; a value may be up to 1 GB).
            options = pacsv.ReadOptions(block_size=len(rows) + 1, **read_options)
            table = pacsv.read_csv(pa.py_buffer(rows), read_options=options,
                                   parse_options=parse_options, convert_options=convert_options)
            del rows
            yield from table.remove_column(0).to_batches()
    finally:
        source.close()  # unblocks the producer if the consumer stopped early
        producer.join()
    if failure:
        raise failure[0]


def _whole_rows(source, block_bytes: int) -> Iterator[bytes]:
    """PostgreSQL's CSV in blocks of about `block_bytes` that each end at the end of a row.

    A row ends at a newline outside quotes. PostgreSQL writes a quote inside a quoted value as
    two quotes, so a newline is outside quotes where the number of quotes before it (from the
    start of a row) is even. A row longer than a block is collected over several reads; each read
    is searched once, so the cost stays linear in the bytes read.
    """
    pending: List[bytes] = []  # the start of a row not yet complete
    pending_quotes = 0
    while True:
        data = source.read(block_bytes)
        if not data:
            break
        end = _last_row_end(data, pending_quotes % 2 == 1)
        if end < 0:
            pending.append(data)
            pending_quotes += data.count(b'"')
            continue
        yield b"".join(pending + [data[:end + 1]]) if pending else data[:end + 1]
        rest = data[end + 1:]
        pending = [rest] if rest else []
        pending_quotes = rest.count(b'"')
    if pending:  # COPY ends every row with a newline; kept for a truncated stream's error
        yield b"".join(pending)


def _last_row_end(data: bytes, starts_in_quotes: bool) -> int:
    """The index of the last newline in `data` that is outside quotes, or -1."""
    end = data.rfind(b"\n")
    if end < 0:
        return -1
    quotes_before = data.count(b'"', 0, end) + (1 if starts_in_quotes else 0)
    while quotes_before % 2:  # inside a quoted value: try the newline before
        previous = data.rfind(b"\n", 0, end)
        if previous < 0:
            return -1
        quotes_before -= data.count(b'"', previous, end)
        end = previous
    return end
