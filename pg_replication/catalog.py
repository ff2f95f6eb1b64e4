"""Reads what the pipeline needs from the source's system catalogs: tables, columns, keys, types."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from psycopg2 import sql

from .exceptions import ConfigError
from .names import destination_table, display_name
from .state import table_key  # noqa: F401 - the state's naming of a table, used with the catalog
from .types import ColumnKind, PgTypeRow, resolve_kind


@dataclass
class ColumnInfo:
    name: str
    type_oid: int
    type_modifier: int
    type_sql: str  # format_type(): usable in a cast
    not_null: bool
    generated: bool = False  # GENERATED ALWAYS AS (...): pgoutput does not send it (before 18)


@dataclass
class TableInfo:
    schema: str
    name: str
    oid: int
    is_partitioned: bool
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: List[ColumnInfo]
    primary_key: List[str]  # empty when there is none
    identity_index_columns: List[str] = field(default_factory=list)
    deferrable_key: bool = False  # the primary key may be violated until commit
    # The pipeline's default schema, which decides the names below (names.py); "": this
    # table's own schema (its plain name everywhere).
    default_schema: str = ""
    # What the publication leaves out (filters.py): columns that never leave the source (gone
    # from `columns` too), and the rows a WHERE keeps.
    excluded: List[str] = field(default_factory=list)
    row_filter: Optional[str] = None

    @property
    def column_list(self) -> Optional[List[str]]:
        """The publication's column list for the table: None (every column) unless some are
        excluded; generated columns are never in one."""
        return [c.name for c in self.columns if not c.generated] if self.excluded else None

    @property
    def label(self) -> str:
        """The table as a user writes it (`--tables`, messages): `name` or `schema.name`."""
        return display_name(self.schema, self.name, self.default_schema or self.schema)

    @property
    def target(self) -> str:
        """Its destination table (before dlt's snake_case): `name` or `schema__name`."""
        return destination_table(self.schema, self.name, self.default_schema or self.schema)

    @property
    def merge_key(self) -> List[str]:
        """The columns that identify a row in the change stream, or [] when nothing does.

        The primary key (not a deferrable one, unless REPLICA IDENTITY FULL), or the unique index
        named by REPLICA IDENTITY USING INDEX. A table with neither cannot publish UPDATE/DELETE
        without making the application's writes fail.
        """
        if self.replica_identity == "i" and self.identity_index_columns:
            return self.identity_index_columns
        if self.replica_identity == "f" and self.primary_key:
            return self.primary_key
        # A deferrable primary key cannot be the replica identity: PostgreSQL then rejects the
        # table's UPDATE and DELETE in a publication that publishes them.
        if self.replica_identity == "d" and self.primary_key and not self.deferrable_key:
            return self.primary_key
        return []

    def column(self, name: str) -> Optional[ColumnInfo]:
        return next((c for c in self.columns if c.name == name), None)


_TABLES_SQL = """
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relpersistence = 'p'
ORDER BY c.relname
"""

# Tables logical decoding cannot see: UNLOGGED ones write no WAL (temporary ones live in their
# session's own schema; foreign ones are not tables of this server).
_UNREPLICABLE_SQL = """
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'f') AND NOT c.relispartition
  AND (c.relpersistence <> 'p' OR c.relkind = 'f')
ORDER BY c.relname
"""

_DESCRIBE_SQL = """
SELECT c.oid, c.relname, c.relkind = 'p', c.relreplident,
       a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       COALESCE(a.attnum = ANY (pk.conkey), false),
       COALESCE(a.attnum = ANY (ri.indkey::int2[]), false), COALESCE(pk.condeferrable, false),
       a.attgenerated <> ''
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
LEFT JOIN pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident
WHERE n.nspname = %s AND c.relname = ANY (%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname, a.attnum
"""

_TYPES_SQL = """
SELECT oid, typname, typtype, typbasetype, typtypmod, typelem, typcategory, typdelim FROM pg_type
"""


def list_tables(conn, schema: str) -> List[str]:
    """Every table of `schema` that can be replicated: plain and partitioned roots; no partitions,
    views, materialized views, UNLOGGED or foreign tables.

    Raises:
        ConfigError: The schema does not exist.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if cur.fetchone() is None:
            raise ConfigError(f"schema {schema!r} does not exist in the source database "
                              "(check `schema_name`)")
        cur.execute(_TABLES_SQL, (schema,))
        return [row[0] for row in cur.fetchall()]


def list_schema_tables(conn, schemas: Sequence[str]) -> List[Tuple[str, str]]:
    """(schema, table) of every replicable table (list_tables) of the `schemas`, in their order."""
    return [(schema, name) for schema in schemas for name in list_tables(conn, schema)]


def unreplicable_tables(conn, schema: str) -> List[str]:
    """UNLOGGED and foreign tables of `schema`: they write no WAL the slot could decode."""
    with conn.cursor() as cur:
        cur.execute(_UNREPLICABLE_SQL, (schema,))
        return [row[0] for row in cur.fetchall()]


def unreplicable_schema_tables(conn, schemas: Sequence[str]) -> List[Tuple[str, str]]:
    """(schema, table) of the UNLOGGED and foreign tables of the `schemas`."""
    return [(schema, name) for schema in schemas for name in unreplicable_tables(conn, schema)]


def describe_tables(conn, schema: str, names: Sequence[str], default_schema: str = "",
                    strict: bool = True) -> Dict[str, TableInfo]:
    """Columns, keys and replica identity of the named tables, in the order given; their
    `default_schema` names them for users and the destination (TableInfo.label, .target).

    Raises:
        ConfigError: (`strict`) A name is not a table of `schema` (a view, a partition or
            missing); otherwise such names are left out.
    """
    with conn.cursor() as cur:
        cur.execute(_DESCRIBE_SQL, (schema, list(names)))
        rows = cur.fetchall()
    tables: Dict[str, TableInfo] = {}
    for (oid, relname, partitioned, identity, attname, typid, typmod, type_sql, not_null,
         in_pk, in_identity_index, deferrable, generated) in rows:
        table = tables.get(relname)
        if table is None:
            table = tables[relname] = TableInfo(schema, relname, oid, partitioned, identity, [], [],
                                                deferrable_key=deferrable,
                                                default_schema=default_schema)
        table.columns.append(ColumnInfo(attname, typid, typmod, type_sql, not_null, generated))
        if in_pk:
            table.primary_key.append(attname)
        if in_identity_index:
            table.identity_index_columns.append(attname)
    missing = [name for name in names if name not in tables]
    if missing and strict:
        raise ConfigError(
            f"unknown table{'s' if len(missing) > 1 else ''} in schema {schema!r}: "
            + ", ".join(sorted(missing))
        )
    return {name: tables[name] for name in names if name in tables}


def describe_schema_tables(conn, tables: Sequence[Tuple[str, str]], default_schema: str,
                           strict: bool = True) -> Dict[str, TableInfo]:
    """describe_tables of (schema, table) pairs of several schemas, by TableInfo.label, in the
    order given."""
    by_schema: Dict[str, List[str]] = {}
    for schema, name in tables:
        by_schema.setdefault(schema, []).append(name)
    described = {(schema, name): table for schema, names in by_schema.items()
                 for name, table in describe_tables(conn, schema, names, default_schema,
                                                    strict).items()}
    return {described[pair].label: described[pair] for pair in tables if pair in described}


def load_type_catalog(conn) -> Dict[int, PgTypeRow]:
    """pg_type by OID: a few hundred rows, read once a run so the stream never queries mid-way."""
    with conn.cursor() as cur:
        cur.execute(_TYPES_SQL)
        return {row[0]: PgTypeRow(*row) for row in cur.fetchall()}


def column_kinds(table: TableInfo, catalog: Dict[int, PgTypeRow]) -> Dict[str, ColumnKind]:
    return {c.name: resolve_kind(c.type_oid, c.type_modifier, catalog) for c in table.columns}


def fetch_current_values(conn, table: TableInfo, key_columns: List[str], keys: List[tuple],
                         columns: List[str]) -> Dict[tuple, List[Optional[bytes]]]:
    """Current text values of `columns` for rows identified by `keys` (text bytes per key column,
    as the stream sent them).

    Keys are compared in their columns' own types, never as text: the text form of a value is not
    unique (`t` and `true`, a char(n) with or without its padding, `10.0.0.1` and `10.0.0.1/32`).
    Values come back as the columns' output text, the form pgoutput sends.
    """
    found: Dict[tuple, List[Optional[bytes]]] = {}
    for start in range(0, len(keys), 1000):
        found.update(_fetch_chunk(conn, table, key_columns, keys[start:start + 1000], columns))
    return found


def _fetch_chunk(conn, table: TableInfo, key_columns: List[str], keys: List[tuple],
                 columns: List[str]) -> Dict[tuple, List[Optional[bytes]]]:
    if not keys or not columns:
        return {}
    key_types = [table.column(name).type_sql for name in key_columns]
    # Each key travels with its position in `keys`; the row found comes back with it.
    row_template = sql.SQL("(%s::int, {})").format(sql.SQL(", ").join(
        sql.SQL("%s::{}").format(sql.SQL(type_sql)) for type_sql in key_types))
    wanted = [sql.Identifier(f"k{i}") for i in range(len(key_columns))]
    only = sql.SQL("") if table.is_partitioned else sql.SQL("ONLY ")
    query = sql.SQL(
        "SELECT w.ord, {} FROM {}{} AS t JOIN (VALUES {}) AS w(ord, {}) ON {}"
    ).format(
        # format() writes a value with its type's output function, as pgoutput does (a cast to
        # text would not: it drops a char(n)'s padding and spells booleans out).
        sql.SQL(", ").join(
            sql.SQL("CASE WHEN t.{0} IS NULL THEN NULL ELSE format('%%s', t.{0}) END").format(
                sql.Identifier(c)) for c in columns),
        only,
        sql.Identifier(table.schema, table.name),
        sql.SQL(", ").join([row_template] * len(keys)),
        sql.SQL(", ").join(wanted),
        sql.SQL(" AND ").join(sql.SQL("t.{} = w.{}").format(sql.Identifier(k), w)
                              for k, w in zip(key_columns, wanted)),
    )
    params: List[Any] = []
    for ordinal, key in enumerate(keys):
        params.append(ordinal)
        params.extend(None if v is None else bytes(v).decode() for v in key)
    found: Dict[tuple, List[Optional[bytes]]] = {}
    with conn.cursor() as cur:
        cur.execute(query, params)
        for row in cur.fetchall():
            found[keys[row[0]]] = [None if v is None else v.encode() for v in row[1:]]
    return found
