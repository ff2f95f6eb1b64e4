"""Per-table hand-off positions: where each table's copy ends and its change stream begins.

The definition every other module relies on:

- A copy of a table is read inside the snapshot that a logical replication slot exports when it is
  created (`CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT`). That snapshot sees exactly the
  transactions whose commit record lies *before* the slot's consistent point C.
- The first snapshot uses the pipeline's own slot, created there; every later one (a rerun after a
  failure, `snapshot --tables x`, a table added later) creates a TEMPORARY slot only to get an exact
  C for its copy. The temporary slot is gone when the copy's transaction has imported its snapshot;
  the pipeline's own slot stays where it is.
- C is the table's hand-off LSN. The change stream applies a change of that table only when its
  transaction's commit record is at or after C (pgoutput's Begin.final_lsn >= C). So every
  transaction reaches the destination exactly once: in the copy, or through the stream. That holds
  for tables without a key too, whose rows are appended.

Where it lives: the dlt source state of `pg_replication`, which dlt loads together with the data:

    {"position": Position.to_state(),        # how far the stream is loaded
     "tables": {"public.orders": {"handoff_lsn": C, "oid": 16384, "shape": {...}}, ...},
               # insert-only tables also: "updated_or_deleted": N (insert_only.py)
     "slot_name": "pg_replication_slot"}      # the slot these positions belong to

A table's `shape` is its catalog as last checked (ddl.py). A table's hand-off stays until the table is copied again. A snapshot that creates a new slot
(none existed, or the old one was invalidated) starts a new stream: the hand-offs of the old one
are dropped, and tables not copied again must be.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, MutableMapping, Optional

from .catalog import table_key
from .changes import NO_COPY, Position

SOURCE_NAME = "pg_replication"  # the dlt source whose state holds all of this
POSITION_KEY = "position"
TABLES_KEY = "tables"
SLOT_KEY = "slot_name"
SHAPE_KEY = "shape"
WRITE_COUNT_KEY = "updated_or_deleted"  # insert-only tables: the server's count at the copy


@dataclass
class LoadedState:
    """What the pipeline state says the destination holds."""

    position: Position = field(default_factory=Position)
    handoffs: Dict[str, int] = field(default_factory=dict)  # table_key -> hand-off LSN
    slot_name: Optional[str] = None
    oids: Dict[str, int] = field(default_factory=dict)  # table_key -> pg_class OID when copied
    shapes: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # table_key -> ddl shape
    # table_key -> {"rows": updated or deleted before the copy, "stats_since": the statistics'
    # reset stamps}, for insert-only tables (insert_only.py)
    write_counts: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def anything_loaded(self) -> bool:
        return bool(self.handoffs) or self.position.lsn > 0

    @classmethod
    def from_source_state(cls, state: Optional[Mapping[str, Any]]) -> "LoadedState":
        state = state or {}
        tables = state.get(TABLES_KEY) or {}
        return cls(Position.from_state(state.get(POSITION_KEY) or {}),
                   {key: int(entry["handoff_lsn"]) for key, entry in tables.items()},
                   state.get(SLOT_KEY),
                   {key: int(entry["oid"]) for key, entry in tables.items() if entry.get("oid")},
                   {key: entry[SHAPE_KEY] for key, entry in tables.items() if entry.get(SHAPE_KEY)},
                   {key: entry[WRITE_COUNT_KEY] for key, entry in tables.items()
                    if entry.get(WRITE_COUNT_KEY)})

    @classmethod
    def from_pipeline_state(cls, state: Optional[Mapping[str, Any]]) -> "LoadedState":
        """From a whole dlt pipeline state (local or the destination's)."""
        sources = (state or {}).get("sources", {})
        return cls.from_source_state(sources.get(SOURCE_NAME))


def start_snapshot(state: MutableMapping[str, Any], slot_name: str, handoff_lsn: int,
                   new_stream: bool) -> None:
    """Prepares the source state for a copy; with `new_stream` (the slot was just created) the old
    stream's position and hand-offs no longer mean anything and are replaced."""
    if new_stream:
        state[POSITION_KEY] = Position(handoff_lsn).to_state()
        state[TABLES_KEY] = {}
    state.setdefault(TABLES_KEY, {})
    state[SLOT_KEY] = slot_name


def record_copy(state: MutableMapping[str, Any], schema: str, name: str, oid: int,
                handoff_lsn: int, shape: Optional[Dict[str, Any]] = None,
                write_count: Optional[Dict[str, Any]] = None) -> None:
    entry: Dict[str, Any] = {"handoff_lsn": handoff_lsn, "oid": oid}
    if shape is not None:
        entry[SHAPE_KEY] = shape
    if write_count is not None:
        entry[WRITE_COUNT_KEY] = write_count
    state.setdefault(TABLES_KEY, {})[table_key(schema, name)] = entry


def record_shapes(state: MutableMapping[str, Any], shapes: Mapping[str, Dict[str, Any]]) -> None:
    """Stores the shapes a run checked (ddl.check_tables) with that run's load."""
    tables = state.setdefault(TABLES_KEY, {})
    for key, shape in shapes.items():
        if key in tables:
            tables[key][SHAPE_KEY] = shape


def record_truncate(state: MutableMapping[str, Any], key: str, xid: int) -> None:
    """Notes that the stream carried a TRUNCATE of the table in transaction `xid`: the new
    storage it gave the table's partitions is then explained (ddl._check_leaves)."""
    shape = (state.get(TABLES_KEY) or {}).get(key, {}).get(SHAPE_KEY)
    if shape is not None and xid not in shape.setdefault("truncated_by", []):
        shape["truncated_by"].append(xid)


class HandoffRule:
    """From which commit LSN on the stream applies a table's changes.

    Args:
        handoffs: hand-off LSN per table_key.
        require_copies: True (the CLI): a table without a hand-off has no copy, and a change of it
            stops the run (NO_COPY). False (the library without a snapshot): such a table gets
            every change in the slot.
    """

    def __init__(self, handoffs: Mapping[str, int], require_copies: bool = False,
                 oids: Optional[Mapping[str, int]] = None) -> None:
        self.handoffs = dict(handoffs)
        self.require_copies = require_copies
        self.by_oid: Dict[int, int] = {}  # OID -> earliest hand-off under any name it had
        self.latest_by_oid: Dict[int, int] = {}  # OID -> latest hand-off under any name
        for key, oid in (oids or {}).items():
            self.by_oid[oid] = min(self.by_oid.get(oid, NO_COPY), self.handoffs[key])
            self.latest_by_oid[oid] = max(self.latest_by_oid.get(oid, 0), self.handoffs[key])

    def applies_from(self, schema: str, name: str) -> int:
        found = self.handoffs.get(table_key(schema, name))
        if found is not None:
            return found
        return NO_COPY if self.require_copies else 0

    def copied_before(self, oid: int) -> int:
        """The latest hand-off of a copy of this table under any name: a change made under a name
        without a copy (renamed twice since) that commits before it is in that copy."""
        return self.latest_by_oid.get(oid, 0)

    def earliest_needed(self, oid: int, schema: str, name: str) -> int:
        """From where the stream is needed for a table as the catalog names it now: a table
        renamed since it was copied still needs the changes made under its old name."""
        return min(self.applies_from(schema, name), self.by_oid.get(oid, NO_COPY))


def tables_without_copy(required: Iterable[str], loaded: LoadedState) -> List[str]:
    """The required table_keys that have no hand-off, sorted."""
    return sorted(key for key in set(required) if key not in loaded.handoffs)


def short_names(keys: Iterable[str], schema: str) -> List[str]:
    """table_keys as a user writes them in --tables: without the configured schema."""
    prefix = schema + "."
    return [key[len(prefix):] if key.startswith(prefix) else key for key in keys]
