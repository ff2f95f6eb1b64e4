"""Everything that depends on the destination: how it merges, its table format, its defaults
(memory for the in-process DuckDB, retries for Databricks, writer settings) and the files a load
may leave staged.

dlt reads most of these settings from its configuration (environment variables here); a value
the user configured always wins: they are only set when absent.
"""

import json
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Tuple

import dlt

from . import merges
from .changes import LOAD_BYTES
from .exceptions import essential_line
from .dlt_compat import (OwnMerge, databricks_staging_volumes, destination_sql,
                         drop_torn_schema_files, filesystem_dataset_root, has_own_merge,
                         with_own_merge)

# The pipeline's own merge and replace statements (merges.py), on every destination it builds.
OWN_MERGE = OwnMerge(plan=merges.MergePlan.for_table, merge_sql=merges.merge_statement,
                     overwrite_sql=merges.overwrite_statement,
                     delta_merge=merges.merge_into_delta, first_rows=merges.first_rows)

WRITER_SETTINGS = {
    # Batches of one table may gain columns mid-run (ADD COLUMN): let dlt's writer null-fill.
    "DATA_WRITER__ARROW_CONCAT_PROMOTE_OPTIONS": "default",
    # Write each Arrow table as it comes (our batches are already bounded by rows and bytes):
    # dlt's default buffers 5,000 rows, which for rows of 190 KB is ~1 GB in memory and one
    # parquet row group as large.
    "DATA_WRITER__BUFFER_MAX_ITEMS": "1",
}
DUCKDB_LOAD_SETTINGS = {
    # DuckDB inserts each file in one transaction and keeps it in memory until the commit when it
    # has fewer rows than a row group: files of wide rows are kept small (8 MB compressed, about
    # 15,000 narrow rows).
    "DATA_WRITER__FILE_MAX_BYTES": str(8 << 20),
    # One load job at a time: DuckDB runs in this process, and parallel inserts of wide rows
    # each took memory of their own (measured: 3,000 rows of 190 KB peaked at 690 MB with dlt's
    # 20 workers, 450 MB with one; post-load memory grew load after load instead of staying flat).
    "LOAD__WORKERS": "1",
}
# Loads into a warehouse (Databricks) are merged there, not in this process: fewer, larger loads.
WAREHOUSE_LOAD_BYTES = 1 << 30
# Destinations that merge in this process: a load's size is its memory.
IN_PROCESS = ("duckdb", "filesystem")

DATABRICKS_RETRY_LIMITS = {"_retry_stop_after_attempts_count": 3,
                           "_retry_stop_after_attempts_duration": 60, "_retry_delay_max": 10}

# DuckDB runs inside this process and by default may use 80% of the machine's memory as its cache;
# a replication job on a shared host gets a fixed budget instead (DuckDB spills to disk beyond it).
# Without vacuum tasks: a checkpoint that compacts a row group holding wide values reads it whole
# and fails the budget (measured: after ~10 merges of 150 rows of 190 KB into 3,000 such rows);
# without them the file stayed as small (22 vs 26 MB narrow, 695 vs 304 MB wide, 60 merges).
# One thread: each DuckDB thread keeps buffers of its own while merging wide rows (measured, 3,000
# rows of 190 KB: peak RSS 375-393 MB with 2 threads, 343 MB with one), and with one load job at a
# time a second thread bought nothing (1 M-change merge 2.13 s vs 2.29 s, snapshot insert 1.82 s
# vs 1.99 s on 2 cores).
DUCKDB_DEFAULT_SETTINGS = {"memory_limit": "192MB", "max_vacuum_tasks": 0, "threads": 1}


def make_pipeline(pipeline_name: str, destination: str, dataset_name: str,
                  progress: Optional[str] = None) -> dlt.Pipeline:
    _set_defaults(WRITER_SETTINGS)
    if destination == "duckdb":
        _set_defaults(DUCKDB_LOAD_SETTINGS)
    options = {"progress": progress} if progress else {}
    drop_torn_schema_files(pipeline_name)
    return dlt.pipeline(pipeline_name=pipeline_name, destination=make_destination(destination),
                        dataset_name=dataset_name, **options)


def make_destination(name: str) -> Any:
    """dlt's destination by name, merging with the pipeline's own MERGE (merges.py).

    Databricks also replaces tables in one statement from the staging dataset, and removes
    staged files unless configured to keep them (dlt's own default keeps every parquet file in
    the volume forever); DuckDB gets a memory budget unless configured."""
    if name == "duckdb":
        if dlt.config.get("destination.duckdb.credentials.global_config") is None:
            _set_defaults({"DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG":
                           json.dumps(DUCKDB_DEFAULT_SETTINGS)})
        return with_own_merge(name, OWN_MERGE)
    if name != "databricks":
        return with_own_merge(name, OWN_MERGE) if name == "filesystem" else name
    if dlt.secrets.get("destination.databricks.credentials.connection_parameters") is None:
        # The SQL connector retries an unreachable workspace for 15 minutes by default; a cron
        # job should fail within about a minute and let the next run try again.
        os.environ["DESTINATION__DATABRICKS__CREDENTIALS__CONNECTION_PARAMETERS"] = json.dumps(
            DATABRICKS_RETRY_LIMITS)
    keep = dlt.config.get("destination.databricks.keep_staged_files")
    return databricks_destination(keep_staged_files=_as_bool(keep, default=False))


def own_merge_destination(destination: Any) -> Any:
    """A destination a library user names or builds, merging with the own MERGE (and, on
    Databricks, replacing tables in one statement)."""
    from dlt.common.destination import Destination

    found = Destination.from_reference(destination)
    if found.destination_name == "databricks":
        found.config_params.setdefault("replace_strategy", "insert-from-staging")
        return with_own_merge(found, OWN_MERGE, atomic_replace=True)
    return with_own_merge(found, OWN_MERGE)


def databricks_destination(**config: Any) -> Any:
    """dlt's Databricks destination (`config`: its settings) with the own merge and replace.

    insert-from-staging loads a replaced table's copy into the staging dataset first; the own
    replace then swaps it in with one INSERT OVERWRITE (dlt's would TRUNCATE, then INSERT, and
    readers would see the table empty meanwhile)."""
    databricks = dlt.destinations.databricks(replace_strategy="insert-from-staging", **config)
    return with_own_merge(databricks, OWN_MERGE, atomic_replace=True)


def _set_defaults(settings: dict) -> None:
    for key, value in settings.items():
        os.environ.setdefault(key, value)


def _as_bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def destination_name(pipeline: Optional[dlt.Pipeline]) -> Optional[str]:
    destination = pipeline.destination if pipeline is not None else None
    return destination.destination_name if destination is not None else None


def merge_strategy_for(pipeline: Optional[dlt.Pipeline],
                       configured: Optional[str] = None) -> str:
    """lsn-guarded on the destinations make_destination builds. On a dlt destination a library
    user built: `merge_strategy`, else delete-insert (deduplicates in SQL); Delta tables
    (filesystem) only take upsert."""
    if pipeline is not None and has_own_merge(pipeline.destination):
        return "lsn-guarded"
    if configured:
        return configured
    return "upsert" if destination_name(pipeline) == "filesystem" else "delete-insert"


def table_format_for(pipeline: dlt.Pipeline) -> Optional[str]:
    return "delta" if destination_name(pipeline) == "filesystem" else None


def apply_table_format(source: Any, pipeline: dlt.Pipeline) -> None:
    table_format = table_format_for(pipeline)
    if table_format:
        for resource in source.resources.values():
            resource.apply_hints(table_format=table_format)


def load_bytes_for(pipeline: Optional[dlt.Pipeline], configured: Optional[int]) -> int:
    """`target_load_bytes`, else the default for where the merge runs: DuckDB and Delta merge
    in this process (changes.LOAD_BYTES), a warehouse merges remotely."""
    if configured:
        return configured
    name = destination_name(pipeline)
    return WAREHOUSE_LOAD_BYTES if name and name not in IN_PROCESS else LOAD_BYTES


def is_local_duckdb(pipeline: dlt.Pipeline) -> bool:
    return destination_name(pipeline) == "duckdb"


# -- files a load may leave staged -------------------------------------------------------------

def staged_leftovers(pipeline: dlt.Pipeline) -> Optional[Tuple[bool, str]]:
    """(nothing left, what was looked at or found) for destinations that stage files; None for
    the others (DuckDB loads from this machine's disk)."""
    name = destination_name(pipeline)
    if name == "databricks":
        return _databricks_volume_leftovers(pipeline)
    if name == "filesystem":
        return _filesystem_leftovers(pipeline)
    return None


def _databricks_volume_leftovers(pipeline: dlt.Pipeline) -> Tuple[bool, str]:
    """Nothing left when every volume is empty or does not exist yet (a deployment that only
    ran `snapshot` has no staging schema); a volume that cannot be listed fails the check."""
    left, empty, absent, unreadable = [], [], [], []
    for volume in databricks_staging_volumes(pipeline):
        try:
            count = _count_volume_entries(pipeline, volume)
        except Exception as e:  # noqa: BLE001 - classified: absent, or cannot be listed
            if _names_a_missing_object(e):
                absent.append(volume)
            else:
                unreadable.append(f"cannot list volume {volume}: {essential_line(e)}")
            continue
        (left if count else empty).append(f"{count} file(s) left in volume {volume}" if count
                                          else volume)
    if unreadable or left:
        return False, "; ".join(unreadable + left)
    found = [f"no staged files in {', '.join(empty)}"] if empty else []
    if absent:
        found.append(f"nothing staged yet: no volume {', '.join(absent)}")
    return True, "; ".join(found)


def _count_volume_entries(pipeline: dlt.Pipeline, volume: str) -> int:
    """Entries in a Unity Catalog volume (raises when it cannot be listed)."""
    path = "/Volumes/" + "/".join(volume.split("."))
    return len(destination_sql(pipeline, f"LIST '{path}'") or [])


def _names_a_missing_object(error: Exception) -> bool:
    """Databricks' answer for a volume, schema or catalog that does not exist: an error class
    ending in NOT_FOUND or DOES_NOT_EXIST (dlt turns SCHEMA_NOT_FOUND into
    DatabaseUndefinedRelation); a denied permission is not one."""
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    text = str(error)
    return (isinstance(error, DatabaseUndefinedRelation) or "does not exist" in text.lower()
            or re.search(r"\[\w*(NOT_FOUND|DOES_NOT_EXIST)\]", text) is not None)


def _filesystem_leftovers(pipeline: dlt.Pipeline) -> Tuple[bool, str]:
    root = Path(filesystem_dataset_root(pipeline))
    if not root.exists():
        return True, "nothing staged"
    strays: List[str] = [p.name for p in root.iterdir() if p.is_file() and p.name != "init"]
    if strays:
        return False, f"unexpected files in {root}: {', '.join(strays[:5])}"
    return True, f"no leftover load files in {root}"
