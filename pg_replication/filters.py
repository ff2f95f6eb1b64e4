"""Column lists and row filters (PostgreSQL 15+): what of a table leaves the source.

`exclude_columns` names, per table, columns that never leave the source (PII): the publication
gets a column list without them, so the server never sends them, and the copy never reads them;
no staged file ever holds them. `row_filters` gives, per table, a condition (SQL) on its rows: the
publication gets it as its WHERE, and the copy reads with it; an UPDATE that moves a row out of
it arrives as a DELETE, one that moves a row in as an INSERT, so the destination holds exactly
the rows that match.

PostgreSQL rejects the application's own UPDATE and DELETE on a table whose publication (one that
publishes them) has a column list without the replica identity's columns, or a row filter on other
columns. So, for a table with a key, a key column cannot be excluded and a row filter may use only
key columns (any column under REPLICA IDENTITY FULL, which in turn allows no column list): checked
inside the transaction that changes the publication, before it commits. A table without a key
(published for INSERT and TRUNCATE only) takes any column list and filter.

The copy records the column list and filter it was made with (state.PUBLISHED_KEY); every run
then compares the configuration and the publication with them, and a difference (the
configuration changed, an admin changed the publication, a column was added, which a column list
does not publish) asks for `snapshot --tables` of the table.
"""

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from psycopg2 import sql

from .catalog import TableInfo
from .exceptions import ConfigError, SourceNotReadyError

FILTERS_SINCE = 150000  # server_version: column lists and row filters in publications

# A publication's column list (names, in column order) and row filter (as the server prints it)
# for each of its tables; None where it has none.
_PUBLISHED_SQL = """
SELECT n.nspname, c.relname,
       (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs)),
       pg_get_expr(pr.prqual, pr.prrelid), pr.prqual::text
FROM pg_publication p
JOIN pg_publication_rel pr ON pr.prpubid = p.oid
JOIN pg_class c ON c.oid = pr.prrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE p.pubname = ANY (%s)
"""

Published = Dict[Tuple[str, str], Tuple[Optional[List[str]], Optional[str], Optional[str]]]


def published_filters(conn, publications: Sequence[str]) -> Published:
    """(schema, table) -> (column list, row filter as printed, row filter's node tree) of the
    tables the publications name; nothing before PostgreSQL 15."""
    if conn.server_version < FILTERS_SINCE:
        return {}
    with conn.cursor() as cur:
        cur.execute(_PUBLISHED_SQL, (list(publications),))
        return {(schema, name): (columns, printed, tree)
                for schema, name, columns, printed, tree in cur.fetchall()}


TableFilters = Mapping[Tuple[str, str], Tuple[Sequence[str], Optional[str]]]


def with_filters(tables: Dict[str, TableInfo], server_version: int,
                 table_filters: TableFilters) -> Dict[str, TableInfo]:
    """The tables (by label) as published: excluded columns left out, row filters set
    (`table_filters`: (schema, table) -> (columns excluded, row filter)).

    Raises:
        ConfigError: A column to exclude is not in its table, or is a key column.
        SourceNotReadyError: Before PostgreSQL 15.
    """
    if table_filters and server_version < FILTERS_SINCE:
        raise SourceNotReadyError(
            "exclude_columns and row_filters need PostgreSQL 15 or later (the server runs "
            f"{server_version // 10000}): the publication would send every column and row")
    shaped = {}
    for label, table in tables.items():
        leave_out, row_filter = table_filters.get((table.schema, table.name), ((), None))
        shaped[label] = _published_shape(table, list(leave_out), row_filter) if (
            leave_out or row_filter) else table
    return shaped


def _published_shape(table: TableInfo, leave_out: List[str],
                     row_filter: Optional[str]) -> TableInfo:
    unknown = [name for name in leave_out if table.column(name) is None]
    if unknown:
        raise ConfigError(f"exclude_columns of table {table.label!r}: no column "
                          f"{', '.join(map(repr, unknown))} (columns are named as in the source)")
    if table.is_partitioned:
        raise ConfigError(f"table {table.label!r} is partitioned: exclude_columns and "
                          "row_filters apply to plain tables only")
    if table.merge_key and leave_out:
        identity = ([c.name for c in table.columns] if table.replica_identity == "f"
                    else table.merge_key)
        kept_out = [name for name in leave_out if name in identity]
        if kept_out:
            raise ConfigError(
                f"exclude_columns of table {table.label!r}: {', '.join(kept_out)} "
                + ("identify its rows (REPLICA IDENTITY FULL: every column does)"
                   if table.replica_identity == "f" else "is part of its key")
                + ", and PostgreSQL would reject the application's UPDATE and DELETE on it")
    columns = [c for c in table.columns if c.name not in leave_out]
    return dataclasses.replace(table, columns=columns, excluded=sorted(leave_out),
                               row_filter=row_filter)


def publication_item(table: TableInfo) -> sql.Composable:
    """`schema.table [(columns)] [WHERE (filter)]` for CREATE/ALTER PUBLICATION."""
    item = sql.Identifier(table.schema, table.name)
    if table.column_list is not None:
        item = sql.SQL("{} ({})").format(
            item, sql.SQL(", ").join(sql.Identifier(name) for name in table.column_list))
    if table.row_filter:
        item = sql.SQL("{} WHERE ({})").format(item, sql.SQL(table.row_filter))
    return item


def refuse_rejected_writes(conn, pub_name: str, tables: Sequence[TableInfo]) -> None:
    """Raises ConfigError when a keyed table's row filter, now in `pub_name` (not committed yet),
    uses a column outside its replica identity: PostgreSQL would reject the application's UPDATE
    and DELETE. The caller rolls back."""
    filtered = [t for t in tables if t.row_filter and t.merge_key and t.replica_identity != "f"]
    if not filtered:
        return
    published = published_filters(conn, [pub_name])
    for table in filtered:
        tree = published.get((table.schema, table.name), (None, None, None))[2] or ""
        used = {int(n) for n in re.findall(r":varattno (\d+)", tree)}
        names = _attribute_names(conn, table, used)
        outside = sorted(set(names) - set(table.merge_key))
        if outside:
            raise ConfigError(
                f"row_filters of table {table.label!r} uses {', '.join(outside)}, outside its "
                f"key ({', '.join(table.merge_key)}): PostgreSQL would reject the application's "
                "UPDATE and DELETE on it; filter on key columns, or give the table REPLICA "
                "IDENTITY FULL")


def rejected_writes(conn, table: TableInfo, published: Published) -> Optional[str]:
    """Why PostgreSQL would now reject the application's UPDATE and DELETE on a table of the
    publication of updates and deletes (its column list leaves out a column of the replica
    identity, or its row filter uses another column: after an ALTER TABLE changed the key or the
    replica identity), or None. `table` as the catalog describes it (no filters applied)."""
    columns, _, tree = published.get((table.schema, table.name), (None, None, None))
    identity = ([c.name for c in table.columns] if table.replica_identity == "f"
                else table.merge_key)
    if columns is not None and not set(identity) <= set(columns):
        return "its column list leaves out a column that now identifies its rows"
    used = _attribute_names(conn, table, {int(n) for n in re.findall(r":varattno (\d+)",
                                                                     tree or "")})
    if not set(used) <= set(identity):
        return "its row filter uses a column that no longer identifies its rows"
    return None


def _attribute_names(conn, table: TableInfo, attnums: Set[int]) -> List[str]:
    if not attnums:
        return []
    with conn.cursor() as cur:
        cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum = ANY (%s)",
                    (table.oid, sorted(attnums)))
        return [row[0] for row in cur.fetchall()]


def needs_readding(table: TableInfo, published: Published) -> bool:
    """Whether a table already in the publication must be taken out and added again to get the
    column list and filter it should have (re-adding a plain table with neither is a no-op)."""
    columns, printed, _ = published.get((table.schema, table.name), (None, None, None))
    return bool(table.excluded or table.row_filter or columns is not None or printed is not None)


def published_record(conn, publications: Sequence[str],
                     table: TableInfo) -> Optional[Dict[str, Any]]:
    """What a copy records of its publication (state.PUBLISHED_KEY); None for a table with
    neither a column list nor a filter."""
    if not table.excluded and not table.row_filter:
        return None
    printed = published_filters(conn, publications).get((table.schema, table.name),
                                                        (None, None, None))[1]
    return {"excluded": table.excluded, "row_filter": table.row_filter, "printed": printed}


def filter_problem(table: TableInfo, recorded: Optional[Mapping[str, Any]],
                   published: Published) -> Optional[str]:
    """Why the table's copy no longer matches what the stream sends, or None: the configuration
    asks for another column list or filter than the copy had, or the publication has another one
    than the configuration asks for (an admin's change, a column added since the copy)."""
    recorded = recorded or {}
    if (sorted(recorded.get("excluded") or []) != table.excluded
            or (recorded.get("row_filter") or None) != table.row_filter):
        return "its exclude_columns or row_filters changed since its copy"
    columns, printed, _ = published.get((table.schema, table.name), (None, None, None))
    expected = table.column_list
    if (columns is None) != (expected is None) or (
            expected is not None and sorted(columns) != sorted(expected)):
        return ("the publication's column list is not the configured one (a column added since "
                "the copy, or changed by an admin)")
    if table.row_filter and not recorded.get("printed"):
        return "the publication had no row filter when the table was copied"
    if printed != (recorded.get("printed") if table.row_filter else None):
        return "the publication's row filter is not the one its copy was made with"
    return None
