"""`verify`: the checklist that says a deployment is healthy, one line per check.

1. the slot exists on the source (lag, active);
2. the destination's `_dlt_pipeline_state` holds the position the slot was confirmed to;
3. no staged files are left behind (Databricks volume, filesystem), not applicable to DuckDB;
4. the destination holds the copy of every table the stream applies to (integrity.py);
5. no online copy is still in progress (chunks.py): such a table holds only part of its rows.
"""

from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

import dlt

from .destinations import destination_name, staged_leftovers
from .dlt_compat import destination_state
from .state import LoadedState
from .protocol import int_to_lsn
from .exceptions import SlotError, snapshot_command
from .failures import essential_line
from .online import CopyProgress
from .slots import check_slot_usable, current_database, current_wal_lsn, get_slot


@dataclass
class Check:
    name: str
    passed: Optional[bool]  # None: not applicable
    detail: str

    def line(self) -> str:
        mark = {True: "✓", False: "✗", None: "-"}[self.passed]
        return f"{mark} {self.name}: {self.detail}"

    def as_dict(self) -> dict:
        return asdict(self)


def check_slot(conn, slot_name: str) -> Check:
    slot = get_slot(conn, slot_name)
    if slot is None:
        return Check("replication slot", False, f"slot {slot_name!r} does not exist on the source")
    if slot.wal_status == "lost":
        return Check("replication slot", False, f"slot {slot_name!r} was invalidated "
                                                "(wal_status=lost): run `snapshot` again")
    try:  # credentials for another database on the same server see the slot too
        check_slot_usable(slot, slot_name, current_database(conn))
    except SlotError as e:
        return Check("replication slot", False, str(e))
    lag = max(current_wal_lsn(conn) - (slot.confirmed_flush_lsn or 0), 0)
    activity = f"active (pid {slot.active_pid})" if slot.active else "inactive"
    return Check("replication slot", True, f"{slot_name!r} exists, lag {lag} bytes, {activity}")


def destination_position(pipeline: dlt.Pipeline) -> Optional[int]:
    """The position in the newest state stored in the destination, or None without one."""
    loaded = LoadedState.from_pipeline_state(destination_state(pipeline))
    return loaded.position.lsn if loaded.anything_loaded else None


def check_state(conn, slot_name: str, pipeline: dlt.Pipeline) -> Check:
    name = "_dlt_pipeline_state"
    try:
        position = destination_position(pipeline)
    except Exception as e:  # missing dataset or table: the destination says so in its own words
        return Check(name, False, "cannot read the pipeline state in the destination: "
                                  f"{essential_line(e)}")
    if position is None:
        return Check(name, False, "no replication position stored in the destination "
                                  "(run `snapshot`, then `cdc`)")
    slot = get_slot(conn, slot_name)
    confirmed = slot.confirmed_flush_lsn if slot else None
    detail = f"destination holds {int_to_lsn(position)}, slot confirmed " + (
        int_to_lsn(confirmed) if confirmed is not None else "-")
    if confirmed is None:
        return Check(name, False, detail + " (slot missing)")
    if confirmed > position:
        return Check(name, False, detail + ": the slot is ahead of the destination")
    if confirmed < position:
        return Check(name, True, detail + " (the next run confirms the rest)")
    return Check(name, True, detail)


def pending_packages(pipeline: dlt.Pipeline) -> List[str]:
    """Load packages extracted or normalized and not loaded yet (a killed or failed run's)."""
    return list(pipeline.list_extracted_load_packages()) + list(
        pipeline.list_normalized_load_packages())


def check_staged_files(pipeline: dlt.Pipeline) -> Check:
    name = "staged files"
    pending = pending_packages(pipeline)
    if pending:
        return Check(name, False, f"{len(pending)} load package(s) not loaded yet: run `cdc`")
    found = staged_leftovers(pipeline)
    if found is not None:
        return Check(name, *found)
    destination = destination_name(pipeline)
    return Check(name, None, f"not applicable to {destination}")


def check_copies(integrity_problems: Callable[[], List[str]]) -> Check:
    name = "table copies"
    try:
        problems = integrity_problems()
    except Exception as e:  # an unreachable destination fails the check, in its own words
        return Check(name, False, f"cannot read the destination: {essential_line(e)}")
    if problems:
        return Check(name, False, problems[0])
    return Check(name, True, "the destination holds the copy of every published table")


def check_online_copies(in_progress: List[CopyProgress]) -> Check:
    """A table whose online copy is not finished holds only part of its rows."""
    name = "online copies"
    if not in_progress:
        return Check(name, None, "none in progress")
    tables = [progress.table for progress in in_progress]
    return Check(name, False, f"{'; '.join(p.line() for p in in_progress)}: not finished, "
                              f"{snapshot_command(tables, online=True)} finishes it")


def run_checks(conn, slot_name: str, pipeline: dlt.Pipeline,
               integrity_problems: Callable[[], List[str]],
               online: List[CopyProgress]) -> List[Check]:
    return [check_slot(conn, slot_name), check_state(conn, slot_name, pipeline),
            check_staged_files(pipeline), check_copies(integrity_problems),
            check_online_copies(online)]
