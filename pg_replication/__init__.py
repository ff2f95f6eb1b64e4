"""Postgres change data capture for dlt, on logical replication with the pgoutput plugin.

- `pg_replication()`: a dlt source with the changes since the last load (config from
  `[sources.pg_replication]`).
- `init_replication(...)`: creates publication and slot; with `persist_snapshots=True` returns the
  initial copy, read at the slot's consistent point.
- `replication_resource(...)`: the change stream as a single dlt resource.
"""

from typing import Any, Callable, Dict, Optional, Sequence

import dlt
from dlt.common.configuration import configspec
from dlt.common.configuration.specs import BaseConfiguration

from .changes import BATCH_BYTES, LOAD_BYTES, SegmentResult
from .helpers import init_replication, replication_resource
from .state import SOURCE_NAME, Position
from .hints import DeleteMode, MergeStrategy

__all__ = ["pg_replication", "init_replication", "replication_resource", "Position",
           "SegmentResult"]


@configspec
class PgReplicationSourceConfiguration(BaseConfiguration):
    """What `pg_replication()` reads from `[sources.pg_replication]`.

    Only these arguments come from configuration. The per-table arguments (`columns`,
    `include_columns`) and the run controls are passed in code: left to dlt's lookup, `columns`
    would pick up the shell's COLUMNS variable (the terminal width).
    """

    credentials: Any = None
    slot_name: str = None
    pub_name: str = None
    schema_name: str = "public"
    target_batch_size: int = 50_000
    target_batch_bytes: int = BATCH_BYTES
    target_load_bytes: int = LOAD_BYTES
    flush_slot: bool = True
    deletes: str = "hard"
    merge_strategy: str = "delete-insert"


@dlt.source(name=SOURCE_NAME, section=SOURCE_NAME, spec=PgReplicationSourceConfiguration)
def pg_replication(
    credentials: Any = dlt.secrets.value,
    slot_name: str = dlt.config.value,
    pub_name: str = dlt.config.value,
    schema_name: str = "public",
    include_columns: Optional[Dict[str, Sequence[str]]] = None,
    columns: Optional[Dict[str, Dict[str, Any]]] = None,
    target_batch_size: int = 50_000,
    target_batch_bytes: int = BATCH_BYTES,
    target_load_bytes: int = LOAD_BYTES,
    flush_slot: bool = True,
    deletes: DeleteMode = "hard",
    merge_strategy: MergeStrategy = "delete-insert",
    max_changes: Optional[int] = None,
    max_seconds: Optional[float] = None,
    result: Optional[SegmentResult] = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    stop_lsn: Optional[int] = None,
    require_copies: bool = False,
    table_shapes: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Any:
    """The changes in the replication slot since the last load, merged into one table per source
    table. See `replication_resource` for the arguments."""
    return replication_resource(
        slot_name=slot_name, pub_name=pub_name, credentials=credentials, schema_name=schema_name,
        include_columns=include_columns, columns=columns, target_batch_size=target_batch_size,
        target_batch_bytes=target_batch_bytes, target_load_bytes=target_load_bytes, flush_slot=flush_slot, deletes=deletes, merge_strategy=merge_strategy,
        max_changes=max_changes, max_seconds=max_seconds, result=result,
        stop_requested=stop_requested, stop_lsn=stop_lsn, require_copies=require_copies,
        table_shapes=table_shapes,
    )
