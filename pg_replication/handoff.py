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

Where it is stored: state.py (`tables[...]["handoff_lsn"]`). A table's hand-off stays until the
table is copied again. A snapshot that creates a new slot (none existed, or the old one was invalidated)
starts a new stream: the hand-offs of the old one are dropped, and tables not copied again must be.
"""

from typing import Dict, Iterable, List, Mapping, Optional

from .catalog import table_key
from .state import LoadedState

# The table has no copy in the destination: a change of it stops the run (CopyMissingError).
NO_COPY = 1 << 64
NEVER = 1 << 65  # the table is not the pipeline's: its changes are skipped, whatever their LSN


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
