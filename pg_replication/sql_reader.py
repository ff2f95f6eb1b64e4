"""The copy read with dlt's `sql_database` (`snapshot --reader sql_database`), inside the same
exported snapshot as the COPY reader, so the hand-off stays exact.

dlt's `sql_table` resource reads each table through an SQLAlchemy engine whose every transaction
imports the exported snapshot: the engine's `begin` event runs `SET TRANSACTION ISOLATION LEVEL
REPEATABLE READ` and `SET TRANSACTION SNAPSHOT` on the raw DBAPI cursor (through SQLAlchemy the
statement would become a server-side cursor under `yield_per`). The snapshot stays importable while
the replication connection that exported it stays open and idle (copies.py keeps it so).

The query selects every column as PostgreSQL's text output (`format('%s', ...)`, the text COPY and
pgoutput send), and the rows are converted by `snapshot.typed_batch`, as the COPY reader's are:
the destination tables come out identical (tests/test_sql_reader.py). That is also why dlt's
`table_adapter_callback` and `query_adapter_callback` are not taken: a copy that left out rows or
columns would differ from what the stream continues with (exclude_columns and row_filters do that
on both sides). dlt's backends (`pyarrow`, `sqlalchemy`, `pandas`; not `connectorx`, which opens
connections of its own outside the snapshot), `chunk_size` and `reflection_level` are.
"""

from typing import Any, Dict, Iterable, Iterator, List

import pyarrow as pa
from psycopg2 import sql

from .catalog import TableInfo
from .connect import SESSION_OPTIONS, application_name
from .exceptions import ConfigError
from .hints import DELETED_COLUMN
from .snapshot import row_filter_conditions, typed_batch, where_clause
from .types import ColumnKind

BACKENDS = ("pyarrow", "sqlalchemy", "pandas")
# Text (and similar) columns are selected as they are: their output is their value.
_AS_IS_TYPES = {25, 1042, 1043}  # text, char(n), varchar


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"invalid sql_database_backend {backend!r}: use one of "
                          f"{', '.join(BACKENDS)} (connectorx opens its own connections, outside "
                          "the snapshot the copy must be read in)")
    return backend


class SqlDatabaseReader:
    """Reads tables with dlt's `sql_table` inside the exported snapshot `snapshot_name`."""

    def __init__(self, dsn: str, snapshot_name: str, quoting, backend: str = "pyarrow",
                 chunk_size: int = 50_000, reflection_level: str = "minimal") -> None:
        self.engine = _snapshot_engine(dsn, snapshot_name)
        self.quoting = quoting  # a psycopg2 connection the queries are rendered with
        self.backend, self.chunk_size = check_backend(backend), chunk_size
        self.reflection_level = reflection_level

    def close(self) -> None:
        self.engine.dispose()

    def read_table(self, table: TableInfo, kinds: Dict[str, ColumnKind], lsn: int,
                   deleted_column: str = DELETED_COLUMN) -> Iterator[pa.Table]:
        """The table's rows as typed Arrow tables with the `_pg_*` columns (as
        snapshot.read_table yields them)."""
        from dlt.sources.sql_database import sql_table

        names = [c.name for c in table.columns]
        query = _text_query(table).as_string(self.quoting)
        resource = sql_table(
            credentials=self.engine, table=table.name, schema=table.schema,
            backend=self.backend, chunk_size=self.chunk_size,
            reflection_level=self.reflection_level,
            query_adapter_callback=lambda select, reflected: _sql_text(query))
        strings = pa.schema([pa.field(name, pa.string()) for name in names])
        for batch in _batches(resource, strings, self.chunk_size):
            yield typed_batch(table, names, batch, kinds, lsn, deleted_column)


def _snapshot_engine(dsn: str, snapshot_name: str) -> Any:
    """An SQLAlchemy engine on psycopg2 with the pipeline's session settings, every transaction
    of which imports the snapshot."""
    import psycopg2
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        "postgresql+psycopg2://", pool_pre_ping=False,
        creator=lambda: psycopg2.connect(dsn, options=SESSION_OPTIONS,
                                         application_name=application_name()))

    @sqlalchemy.event.listens_for(engine, "begin")
    def _import_snapshot(connection) -> None:
        with connection.connection.dbapi_connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))

    return engine


def _text_query(table: TableInfo) -> sql.Composable:
    """Every column as PostgreSQL's text output, NULL as NULL; the row filter applied."""
    columns = []
    for column in table.columns:
        name = sql.Identifier(column.name)
        value = name if column.type_oid in _AS_IS_TYPES else sql.SQL(
            "CASE WHEN {} IS NULL THEN NULL ELSE format('%s', {}) END").format(name, name)
        columns.append(sql.SQL("{} AS {}").format(value, name))
    only = sql.SQL("") if table.is_partitioned else sql.SQL("ONLY ")
    return sql.SQL("SELECT {} FROM {}{}{}").format(
        sql.SQL(", ").join(columns), only, sql.Identifier(table.schema, table.name),
        where_clause(row_filter_conditions(table)))


def _sql_text(query: str) -> Any:
    import sqlalchemy

    # Literal text: a `:name` in it is not a bind parameter.
    return sqlalchemy.text(query.replace(":", r"\:"))


def _batches(items: Iterable[Any], schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
    """The items of any backend (Arrow tables, DataFrames, or rows as dicts: a resource yields
    the `sqlalchemy` backend's rows one by one) as Arrow tables of strings in `schema`'s columns;
    rows are gathered `rows` at a time."""
    pending: List[Dict[str, Any]] = []
    for item in items:
        if isinstance(item, dict):
            pending.append(item)
            if len(pending) >= rows:
                yield pa.Table.from_pylist(pending, schema=schema)
                pending = []
        elif isinstance(item, pa.Table):
            yield pa.table([item.column(name).cast(pa.string()) for name in schema.names],
                           schema=schema)
        else:  # a pandas DataFrame
            yield pa.Table.from_pandas(item, schema=schema, preserve_index=False)
    if pending:
        yield pa.Table.from_pylist(pending, schema=schema)


