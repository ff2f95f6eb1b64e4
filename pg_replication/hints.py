"""The destination table of a source table: its columns, the metadata columns, and dlt hints."""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import pyarrow as pa

from .types import ColumnKind

DeleteMode = Literal["hard", "soft"]
# "lsn-guarded": the pipeline's own merge (merges.py), on the destinations it builds; dlt's
# "delete-insert" or "upsert" on a dlt destination a library user built.
MergeStrategy = Literal["lsn-guarded", "delete-insert", "upsert"]

# The order of changes: `_pg_lsn` is the commit LSN of the change's transaction (snapshot rows:
# the hand-off LSN), `_pg_change_lsn` the change's own WAL position, which orders the changes of
# one transaction (snapshot rows: 0). The commit LSN comes first because the changes of one key
# are in commit order, not always in WAL order: with a deferrable key, a transaction may insert
# a key before another one that commits earlier frees it.
LSN_COLUMN = "_pg_lsn"
CHANGE_LSN_COLUMN = "_pg_change_lsn"
COMMIT_TS_COLUMN = "_pg_commit_ts"  # commit time of the change (NULL for snapshot rows)
DELETED_COLUMN = "_pg_deleted"  # True marks a delete (the hard_delete hint)
DELETED_AT_COLUMN = "_pg_deleted_at"  # soft deletes: when the row was deleted
# Appended (keyless) tables only: the dlt load that wrote the row, so that a load repeated after
# a kill can first remove what its earlier attempt wrote (dlt_compat.repair_crashed_packages).
LOAD_ID_COLUMN = "_dlt_load_id"

TIMESTAMP_UTC = pa.timestamp("us", tz="UTC")

_META_HINTS: Dict[str, Dict[str, Any]] = {
    LSN_COLUMN: {"data_type": "bigint", "nullable": False},
    # Nullable: tables loaded before the column existed gain it with ALTER TABLE ADD COLUMN.
    CHANGE_LSN_COLUMN: {"data_type": "bigint", "nullable": True},
    COMMIT_TS_COLUMN: {"data_type": "timestamp", "timezone": True, "precision": 6, "nullable": True},
    DELETED_COLUMN: {"data_type": "bool", "nullable": True},
    DELETED_AT_COLUMN: {"data_type": "timestamp", "timezone": True, "precision": 6,
                        "nullable": True},
}
META_ARROW_TYPES = {LSN_COLUMN: pa.int64(), CHANGE_LSN_COLUMN: pa.int64(), COMMIT_TS_COLUMN: TIMESTAMP_UTC,
                    DELETED_COLUMN: pa.bool_(), DELETED_AT_COLUMN: TIMESTAMP_UTC,
                    LOAD_ID_COLUMN: pa.string()}


# Columns dlt adds to every table it loads.
DLT_COLUMNS = (LOAD_ID_COLUMN, "_dlt_id")
RESERVED_COLUMNS = (LSN_COLUMN, CHANGE_LSN_COLUMN, COMMIT_TS_COLUMN, DELETED_COLUMN,
                    DELETED_AT_COLUMN) + DLT_COLUMNS


def name_collisions(names: Sequence[str], normalize: Callable[[str], str],
                    reserved: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """Pairs of source names that would land under one destination name (`"Orders"` and
    `orders`), and names that land on a reserved one, paired with it."""
    seen: Dict[str, str] = {normalize(name): name for name in reserved}
    clashes = []
    for name in names:
        target = normalize(name)
        if target in seen:
            clashes.append((seen[target], name))
        else:
            seen[target] = name
    return clashes


def delete_marker(deletes: DeleteMode) -> str:
    """The column that marks a delete: `_pg_deleted` (hard deletes), `_pg_deleted_at` (soft)."""
    return DELETED_COLUMN if deletes == "hard" else DELETED_AT_COLUMN


def meta_columns(deletes: DeleteMode) -> List[str]:
    return [LSN_COLUMN, CHANGE_LSN_COLUMN, COMMIT_TS_COLUMN, delete_marker(deletes)]


def copied_row_meta(rows: int, lsn: int, deleted_column: str) -> List[pa.Array]:
    """The `_pg_*` values of `rows` rows read from the table rather than from a change (a copy,
    an online copy's chunk), in `meta_columns` order: `_pg_lsn` is `lsn`, `_pg_change_lsn` 0,
    no commit time, and the rows are live (`_pg_deleted` False, or `_pg_deleted_at` NULL)."""
    live = (pa.array([False] * rows, pa.bool_()) if deleted_column == DELETED_COLUMN
            else pa.nulls(rows, META_ARROW_TYPES[deleted_column]))
    return [pa.array([lsn] * rows, META_ARROW_TYPES[LSN_COLUMN]),
            pa.array([0] * rows, META_ARROW_TYPES[CHANGE_LSN_COLUMN]),
            pa.nulls(rows, META_ARROW_TYPES[COMMIT_TS_COLUMN]), live]


def table_hints(
    table_name: str,
    columns: Sequence[Tuple[str, ColumnKind]],
    merge_key: Sequence[str],
    deletes: DeleteMode = "hard",
    merge_strategy: MergeStrategy = "delete-insert",
) -> Dict[str, Any]:
    """dlt hints for one table: merge on the row identity, latest `_pg_lsn` wins.

    A table without a row identity (no primary key, no REPLICA IDENTITY index) only ever receives
    inserts (see slots.ensure_publications), so it is appended, each row with its load's id.
    """
    column_hints: Dict[str, Dict[str, Any]] = {}
    for name, kind in columns:
        column_hints[name] = kind.column_schema(name, nullable=name not in merge_key)
        if name in merge_key:
            column_hints[name]["primary_key"] = True
    for name in meta_columns(deletes):
        column_hints[name] = {"name": name, **_META_HINTS[name]}
    if not merge_key:
        column_hints[LOAD_ID_COLUMN] = {"name": LOAD_ID_COLUMN, "data_type": "text",
                                        "nullable": True}
        return {"table_name": table_name, "write_disposition": "append", "columns": column_hints}
    if merge_strategy == "delete-insert":
        column_hints[CHANGE_LSN_COLUMN]["dedup_sort"] = "desc"
    if deletes == "hard":
        column_hints[DELETED_COLUMN]["hard_delete"] = True
    # The own merge replaces dlt's upsert, which every destination accepts.
    strategy = "upsert" if merge_strategy == "lsn-guarded" else merge_strategy
    return {
        "table_name": table_name,
        "write_disposition": {"disposition": "merge", "strategy": strategy},
        "primary_key": list(merge_key),
        "columns": column_hints,
    }


def snapshot_hints(hints: Dict[str, Any]) -> Dict[str, Any]:
    """The same table for an initial copy: replaced whole, so no dedup or delete handling."""
    columns = {}
    for name, column in hints["columns"].items():
        columns[name] = {k: v for k, v in column.items() if k not in ("dedup_sort", "hard_delete")}
    return dict(hints, columns=columns, write_disposition="replace")


ExistingColumn = Callable[[str, str], Optional[Dict[str, Any]]]


def output_column_names(table_name: str, columns: Sequence[Tuple[str, ColumnKind]],
                        existing: Optional[ExistingColumn] = None) -> List[str]:
    """Destination names: the source names, or a variant where the type no longer fits."""
    names = []
    for name, kind in columns:
        current = existing(table_name, name) if existing else None
        if current and current.get("data_type") and type_signature(current) != type_signature(kind.hint):
            names.append(variant_name(name, kind.hint))
        else:
            names.append(name)
    return names


def type_signature(column: Dict[str, Any]) -> Tuple[Any, ...]:
    return (column.get("data_type"), column.get("precision"), column.get("scale"),
            column.get("timezone"))


def variant_name(name: str, column: Dict[str, Any]) -> str:
    """Where a column goes after its source type changed to one the destination column cannot
    hold: `<name>__v_<type>`, like dlt's own variant columns. Old values stay where they were."""
    parts = [str(column["data_type"])]
    if column.get("data_type") == "decimal":
        parts += [str(column.get("precision")), str(column.get("scale"))]
    return f"{name}__v_{'_'.join(parts)}"


# -- Delta table properties on Databricks ---------------------------------------------------------

# dlt's Databricks table hints (the keys its `databricks_adapter` sets): the TBLPROPERTIES of the
# CREATE TABLE, and a column of its CLUSTER BY. Other destinations ignore them.
DATABRICKS_PROPERTIES_HINT = "x-databricks-table-properties"
DATABRICKS_CLUSTER_HINT = "x-databricks-cluster"
# Deletion vectors: a MERGE that deletes or updates a few rows of a file marks them instead of
# rewriting the file (Databricks recommends them for tables merged often).
DEFAULT_DELTA_PROPERTIES = {"delta.enableDeletionVectors": "true"}


@dataclass(frozen=True)
class DeltaOptions:
    """How the pipeline creates its tables on Databricks: table properties (over the defaults),
    the change data feed, liquid clustering on the key. They apply when a table is created."""

    properties: Mapping[str, Any] = field(default_factory=dict)
    change_data_feed: bool = False
    cluster_by_key: bool = False

    def table_properties(self) -> Dict[str, Any]:
        properties = dict(DEFAULT_DELTA_PROPERTIES)
        if self.change_data_feed:
            properties["delta.enableChangeDataFeed"] = "true"
        properties.update(self.properties)
        return properties


def with_delta_options(hints: Dict[str, Any], options: Optional[DeltaOptions]) -> Dict[str, Any]:
    """The hints with the Databricks table properties and, with `cluster_by_key`, the key columns
    as the clustering columns."""
    if options is None:
        return hints
    hints = dict(hints, additional_table_hints={
        DATABRICKS_PROPERTIES_HINT: options.table_properties()})
    if options.cluster_by_key and hints.get("primary_key"):
        columns = {name: dict(column) for name, column in hints["columns"].items()}
        for key in hints["primary_key"]:
            columns[key][DATABRICKS_CLUSTER_HINT] = True
        hints["columns"] = columns
    return hints


# -- handing Arrow tables to dlt -----------------------------------------------------------------

def with_column_hints(hints: Dict[str, Any],
                      columns: Optional[Dict[str, Dict[str, Any]]]) -> Dict[str, Any]:
    """The hints with a user's extra column hints for this table (`columns` per table)."""
    extra = (columns or {}).get(hints["table_name"])
    if not extra:
        return hints
    merged = {name: dict(column) for name, column in hints["columns"].items()}
    for name, column in extra.items():
        merged.setdefault(name, {"name": name}).update(column)
    return dict(hints, columns=merged)


# Parquet key-value metadata that makes a Spark 3.x reader (Databricks' COPY INTO) take our
# dates and timestamps as they are. Spark 3.x reads a file that names no Spark writer version with
# `spark.sql.parquet.datetimeRebaseModeInRead` (default EXCEPTION) and refuses DATE values before
# 1582-10-15 and TIMESTAMP values before 1900 (READ_ANCIENT_DATETIME), our clamp of `-infinity`
# to 0001-01-01 included. A file written by Spark >= 3.0 without the `legacyDateTime` key is read
# without rebase, which is right: pyarrow writes the proleptic Gregorian calendar, as Spark 3 does.
# Spark compares the version as a string, hence "3.0.0". Pyarrow writes an Arrow schema's metadata
# into the parquet footer, and dlt 1.31's writers keep it (tests/test_spark_parquet.py reads the
# files dlt keeps, snapshot and CDC, with a real Spark 3.5).
SPARK_PARQUET_METADATA = {b"org.apache.spark.version": b"3.0.0"}


def mark_batch(data: pa.Table, hints: Dict[str, Any], with_hints: bool) -> Any:
    """An Arrow table for dlt: routed to its table, with the table's hints when they are new,
    and marked for Spark readers (SPARK_PARQUET_METADATA)."""
    import dlt

    data = data.replace_schema_metadata({**(data.schema.metadata or {}), **SPARK_PARQUET_METADATA})
    if not with_hints:
        return dlt.mark.with_table_name(data, hints["table_name"])
    return dlt.mark.with_hints(data, dlt.mark.make_hints(**hints), create_table_variant=True)


def existing_destination_column() -> ExistingColumn:
    """Looks up a column in the schema the current extract updates (for type-change variants)."""
    import dlt

    try:
        schema = dlt.current.source_schema()
    except Exception:  # noqa: BLE001 - outside an extract nothing exists yet
        return lambda table, column: None
    return schema_column_lookup(schema)


def released_columns(table_name: str, copied: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """The hints that release the columns a copy no longer writes (a key column renamed since
    the last copy, a NOT NULL column dropped): nullable, and no longer a key. dlt keeps every
    column a table ever had, with its hints; the copy's rows would carry NULL in them, which dlt
    refuses in a non-nullable column, and the merge would still match on an old key."""
    import dlt

    try:
        schema = dlt.current.source_schema()
    except Exception:  # noqa: BLE001 - outside an extract nothing exists yet
        return {}
    table = schema.tables.get(schema.naming.normalize_tables_path(table_name)) or {}
    kept = {schema.naming.normalize_path(name) for name in copied}
    return {name: dict(column, nullable=True, primary_key=False, merge_key=False)
            for name, column in table.get("columns", {}).items()
            if name not in kept and not name.startswith("_dlt") and column.get("data_type")
            and (column.get("primary_key") or column.get("merge_key")
                 or column.get("nullable") is False)}


def schema_column_lookup(schema: Any) -> ExistingColumn:
    """Looks up a column in a dlt schema (a pipeline's: where verify --data finds variants)."""

    def lookup(table: str, column: str) -> Optional[Dict[str, Any]]:
        found = schema.tables.get(schema.naming.normalize_tables_path(table))  # keeps `__`
        if not found:
            return None
        return found.get("columns", {}).get(schema.naming.normalize_path(column))  # as dlt does

    return lookup
