"""The public entry points, for dlt users: `pg_replication()` (a dlt source),
`init_replication(...)` and `replication_resource(...)`.

Each resolves the settings once (settings.py, `[sources.pg_replication]`) and hands them, with the
run bounds, to the building blocks: copies.py for the initial copy (`init_replication` connects
and checks the server first), segments.py for the change stream (its resource connects and checks
the slot when it starts). The CLI's jobs (jobs.py) use the same blocks.
"""

from typing import Any, Dict, Optional, Sequence

import dlt

from .bounds import RunBounds
from .changes import SegmentResult
from .connect import connect
from .copies import copy_source, prepare_copy, select_tables
from .destinations import own_merge_destination
from .hints import DeleteMode, MergeStrategy
from .segments import changes_resource
from .settings import StreamConfiguration, resolve_settings, settings_of
from .slots import check_server
from .state import SOURCE_NAME

ColumnsByTable = Optional[Dict[str, Sequence[str]]]
HintsByTable = Optional[Dict[str, Dict[str, Any]]]


@dlt.source(name=SOURCE_NAME, section=SOURCE_NAME, spec=StreamConfiguration)
def pg_replication(
    credentials: Any = None,
    slot_name: str = dlt.config.value,
    pub_name: str = dlt.config.value,
    schema_name: Optional[str] = dlt.config.value,
    schema_names: Optional[Sequence[str]] = dlt.config.value,
    include_columns: ColumnsByTable = None,
    columns: HintsByTable = None,
    target_batch_size: int = dlt.config.value,
    target_batch_bytes: int = dlt.config.value,
    target_load_bytes: Optional[int] = dlt.config.value,
    flush_slot: bool = dlt.config.value,
    deletes: DeleteMode = dlt.config.value,
    merge_strategy: Optional[MergeStrategy] = dlt.config.value,
    bounds: Optional[RunBounds] = None,
    result: Optional[SegmentResult] = None,
    require_copies: bool = False,
    table_shapes: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Any:
    """The changes in the replication slot since the last load, merged into one table per source
    table. dlt resolves the settings (`[sources.pg_replication]`, settings.StreamConfiguration);
    `bounds` limits the run; see `replication_resource` for the other arguments."""
    settings = settings_of(
        credentials=credentials, slot_name=slot_name, pub_name=pub_name, schema_name=schema_name,
        schema_names=schema_names, target_batch_size=target_batch_size, target_batch_bytes=target_batch_bytes,
        target_load_bytes=target_load_bytes, flush_slot=flush_slot, deletes=deletes,
        merge_strategy=merge_strategy)
    return changes_resource(settings=settings, bounds=bounds or RunBounds(), result=result,
                            flush_slot=settings.flush_slot, require_copies=require_copies,
                            table_shapes=table_shapes, include_columns=include_columns,
                            columns=columns)


def init_replication(
    slot_name: Optional[str] = None,
    pub_name: Optional[str] = None,
    schema_name: Optional[str] = None,
    table_names: Optional[Sequence[str]] = None,
    credentials: Any = None,
    persist_snapshots: bool = False,
    include_columns: ColumnsByTable = None,
    columns: HintsByTable = None,
    reset: bool = False,
    deletes: Optional[DeleteMode] = None,
    max_wait_seconds: Optional[float] = None,
    schema_names: Optional[Sequence[str]] = None,
) -> Optional[Any]:
    """Creates the publication and the replication slot; optionally returns the initial copy.

    Every copy has an exact hand-off (handoff.py): it is read inside a snapshot exported at a
    logical slot's consistent point, and the stream applies a copied table's changes only from
    transactions that commit at or after it. Without a slot (or with an invalidated one) the slot
    is created with the copy and a new stream starts; otherwise a TEMPORARY slot exports the
    snapshot and the slot keeps its position. Arguments not given come from configuration.

    Args:
        slot_name, pub_name, schema_name, schema_names, table_names, credentials, deletes: the
            settings (settings.PgReplicationConfiguration); `table_names` entries are `table`
            (of the default schema) or `schema.table`.
        persist_snapshots (bool): Return a dlt source with the initial copy of the tables.
        include_columns (Optional[Dict[str, Sequence[str]]]): Per table, the columns to copy.
        columns (Optional[Dict[str, Dict[str, Any]]]): Per table, extra dlt column hints.
        reset (bool): Drop the slot and publications first (starts over: needs a new snapshot).
        max_wait_seconds (Optional[float]): Give up (SourceNotReadyError) when creating the slot
            for the copy waits longer than this for open transactions; default: wait.

    Returns:
        Optional[DltSource]: The snapshot source when `persist_snapshots`, else None.
    """
    settings = resolve_settings(
        slot_name=slot_name, pub_name=pub_name, schema_name=schema_name, schema_names=schema_names,
        table_names=table_names, credentials=credentials, deletes=deletes,
        snapshot_max_wait=max_wait_seconds)
    conn = connect(settings.dsn)
    try:
        check_server(conn)
        tables = select_tables(conn, settings)
        plan = prepare_copy(conn, settings=settings, tables=tables, reset=reset,
                            create_slot_now=not persist_snapshots)
    finally:
        conn.close()
    if not persist_snapshots:
        return None
    return copy_source(settings=settings, plan=plan, include_columns=include_columns,
                       columns=columns)


def replication_resource(
    slot_name: Optional[str] = None,
    pub_name: Optional[str] = None,
    credentials: Any = None,
    *,
    include_columns: ColumnsByTable = None,
    columns: HintsByTable = None,
    bounds: Optional[RunBounds] = None,
    result: Optional[SegmentResult] = None,
    require_copies: bool = False,
    table_shapes: Optional[Dict[str, Dict[str, Any]]] = None,
    **settings: Any,
) -> Any:
    """A dlt resource with the changes in the slot since the stored position, one table each.

    Reads up to the server's WAL position at the start (or a bound) and stores the new position
    in the source state, which dlt commits with the load (segments.py). Must run inside a source
    named `pg_replication` (see `pg_replication()`), which holds the state.

    Args:
        slot_name, pub_name, credentials, **settings: any key of the settings
            (settings.PgReplicationConfiguration: schema_name, target_batch_size, deletes...);
            those not given (or None) come from configuration.
        include_columns (Optional[Dict[str, Sequence[str]]]): Per table, the columns to load.
        columns (Optional[Dict[str, Dict[str, Any]]]): Per table, extra dlt column hints.
        bounds (Optional[RunBounds]): Where the run stops reading (max_changes, max_seconds,
            stop_lsn, stop_requested); default: the server's WAL position when it starts.
        result (Optional[SegmentResult]): Receives counts, positions and whether more is waiting.
        require_copies (bool): A table never copied gets every change in the slot, or, with
            True (the CLI), a change of it stops the run with CopyMissingError.
        table_shapes (Optional[Dict[str, Dict[str, Any]]]): Per table_key, the catalog shape a
            check before this run accepted (ddl.py); default: checked here.
    """
    resolved = resolve_settings(slot_name=slot_name, pub_name=pub_name,
                                credentials=credentials, **settings)
    return changes_resource(settings=resolved, bounds=bounds or RunBounds(), result=result,
                            flush_slot=resolved.flush_slot, require_copies=require_copies,
                            table_shapes=table_shapes, include_columns=include_columns,
                            columns=columns)


def destination(destination: Any) -> Any:
    """`destination` (a dlt destination name such as "duckdb", "databricks", "filesystem", or one
    you built with `dlt.destinations...`) merging the changes with the pipeline's own
    LSN-guarded MERGE, one statement per table and load (merges.py). Without it, dlt's own
    `merge_strategy` runs, which neither orders changes by commit nor keeps a newer row from an
    older change."""
    return own_merge_destination(destination)

