"""What the pipeline remembers, and the contract it keeps with the destination.

Everything lives in the dlt source state of the source named `pg_replication`, which dlt loads
together with the data of each load, so the destination and the positions never disagree:

    {"position": Position.to_state(),        # how far the stream is loaded
     "tables": {"public.orders": {"handoff_lsn": C, "oid": 16384, "shape": {...}}, ...},
               # insert-only tables also: "updated_or_deleted": {...} (insert_only.py)
               # a table being copied online also: "online_copy": {"cursor": [key as text] or
               # None, "chunks": 3, "rows": 150000} (chunks.py)
     "slot_name": "pg_replication_slot"}      # the slot these positions belong to

The contract:
- Progress never moves backward: a load stores a position at or after the one before it, and the
  slot is confirmed only up to a position the destination has committed.
- Delivery is at-least-once (a run killed after its load and before the slot's confirmation reads
  the same changes again), made exactly-once in effect by the merge: every row carries `_pg_lsn`,
  and the merge keeps the latest change per key.
- A table's hand-off (handoff.py) says from which commit on its changes come from the stream; its
  `shape` is its catalog as last checked (ddl.py).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, MutableMapping, Optional


def table_key(schema: str, name: str) -> str:
    """How a source table is named in the state: schema-qualified, as the server spells it."""
    return f"{schema}.{name}"


SOURCE_NAME = "pg_replication"  # the dlt source whose state holds all of this
POSITION_KEY = "position"
TABLES_KEY = "tables"
SLOT_KEY = "slot_name"
SHAPE_KEY = "shape"
WRITE_COUNT_KEY = "updated_or_deleted"  # insert-only tables: the server's count at the copy
ONLINE_KEY = "online_copy"  # a table being copied online: its progress (chunks.py)
PUBLISHED_KEY = "published"  # what its publication left out at the copy (filters.py)


@dataclass
class Position:
    """How far the destination holds the slot's changes. Kept in dlt state.

    Every transaction whose commit LSN is below `lsn` is loaded; of the transaction committing at
    `partial_commit_lsn` (if any), the first `partial_changes` changes are loaded too.
    """

    lsn: int = 0
    partial_commit_lsn: Optional[int] = None
    partial_changes: int = 0

    def to_state(self) -> Dict[str, Any]:
        return {"lsn": self.lsn, "partial_commit_lsn": self.partial_commit_lsn,
                "partial_changes": self.partial_changes}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Position":
        return cls(int(state.get("lsn") or 0), state.get("partial_commit_lsn"),
                   int(state.get("partial_changes") or 0))


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
    # table_key -> {"cursor", "chunks", "rows"}: the tables whose online copy is not finished
    online_copies: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # table_key -> {"excluded": [...], "row_filter": as configured, "printed": as the server
    # prints it}: the column list and row filter the copy was made with (filters.py)
    published: Dict[str, Dict[str, Any]] = field(default_factory=dict)

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
                    if entry.get(WRITE_COUNT_KEY)},
                   {key: entry[ONLINE_KEY] for key, entry in tables.items()
                    if entry.get(ONLINE_KEY) is not None},
                   {key: entry[PUBLISHED_KEY] for key, entry in tables.items()
                    if entry.get(PUBLISHED_KEY)})

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
                write_count: Optional[Dict[str, Any]] = None, online: bool = False,
                published: Optional[Dict[str, Any]] = None) -> None:
    """Stores a table's copy; `online`: the copy has only begun, its chunks follow;
    `published`: the column list and row filter it was made with."""
    entry: Dict[str, Any] = {"handoff_lsn": handoff_lsn, "oid": oid}
    for other in (state.get(TABLES_KEY) or {}).values():
        if other.get("oid") == oid:  # a copy in progress under an older name ends: this one counts
            other.pop(ONLINE_KEY, None)
    if online:
        entry[ONLINE_KEY] = {"cursor": None, "chunks": 0, "rows": 0}
    if shape is not None:
        entry[SHAPE_KEY] = shape
    if write_count is not None:
        entry[WRITE_COUNT_KEY] = write_count
    if published:
        entry[PUBLISHED_KEY] = published
    state.setdefault(TABLES_KEY, {})[table_key(schema, name)] = entry


def record_chunk(state: MutableMapping[str, Any], key: str, last_key: Optional[list], rows: int,
                 last: bool) -> None:
    """Stores how far the table's online copy is, with the load that holds its chunk; the last
    chunk ends the copy."""
    entry = (state.get(TABLES_KEY) or {}).get(key)
    progress = entry.get(ONLINE_KEY) if entry else None
    if progress is None:  # copied again meanwhile
        return
    if last:
        del entry[ONLINE_KEY]
        return
    progress.update(cursor=last_key, chunks=progress["chunks"] + 1, rows=progress["rows"] + rows)


def end_online_copy(state: MutableMapping[str, Any], key: str) -> None:
    """The table's online copy ends unfinished (the table is gone): the destination keeps what
    the chunks and the stream brought, as it keeps any dropped table."""
    entry = (state.get(TABLES_KEY) or {}).get(key)
    if entry is not None:
        entry.pop(ONLINE_KEY, None)


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


def save_position(state: MutableMapping[str, Any], position: Position) -> None:
    """Stores how far the stream is loaded (saved with the load that took it there)."""
    state[POSITION_KEY] = position.to_state()
