"""Postgres change data capture for dlt, on logical replication with the pgoutput plugin.

- `pg_replication()`: a dlt source with the changes since the last load (config from
  `[sources.pg_replication]`).
- `init_replication(...)`: creates publication and slot; with `persist_snapshots=True` returns the
  initial copy, read at the slot's consistent point.
- `replication_resource(...)`: the change stream as a single dlt resource.
- `destination(...)`: a dlt destination that merges with the pipeline's own MERGE.

The code map (which module owns what) is in the README.
"""

from .bounds import RunBounds
from .changes import SegmentResult
from .settings import PgReplicationConfiguration
from .sources import destination, init_replication, pg_replication, replication_resource
from .state import Position

__all__ = ["pg_replication", "init_replication", "replication_resource", "destination",
           "PgReplicationConfiguration", "RunBounds", "Position", "SegmentResult"]
