"""Load packages a failed or killed run left pending: loaded first by the next run, or set aside
when the destination refuses them for good.

A pending package holds rows for some destination tables and the stream position after them;
the slot stays before them until the destination committed them. dlt 1.31 keeps a package
whose load job failed terminally (the destination refused it: a column dropped by hand, a type
changed) pending, and every later run retries it and fails the same way, while WAL piles up
behind the slot. Such a refusal is reported as LoadError.refused (exit 7), naming the tables and the
two ways out:

- restore the destination and run again (the package then loads), or
- `snapshot --tables <every table the package holds>`: the package is aborted (dlt restores the
  local state and schema from before it, and records no completed load for it) and the tables
  are copied again at a new hand-off. That is exact only when *every* table with rows in the
  package is copied again: a table whose merge was applied before the refusal would otherwise
  have the same changes read and applied again, and a table without a key appends them twice.
"""

from typing import Collection, Dict

import dlt

from .dlt_compat import (destination_table_identifier, existing_destination_tables,
                         pending_change_tables, refused_pending_load, repair_crashed_packages,
                         set_aside_pending_loads)
from .exceptions import CopyMissingError, LoadError, snapshot_command
from .failures import essential_cause
from .integrity import remember_loaded_state, required_tables
from .names import destination_table, display_name
from .settings import PgReplicationConfiguration as Settings
from .slots import advance_slot, get_slot
from .state import LoadedState


def finish_pending_load(pipeline: dlt.Pipeline, conn, settings: Settings,
                        copying: Collection[str] = ()) -> bool:
    """Loads what a failed or killed run left extracted or normalized, then confirms its
    position; returns whether there was any. `copying`: the destination tables (identifiers)
    the caller copies again, which lets a refused package be set aside.

    Raises:
        LoadError: The destination refuses the pending package for good (LoadError.refused).
    """
    if not pipeline.has_pending_data:
        return False
    repair_crashed_packages(pipeline)
    _refuse_changes_to_tables_gone(pipeline, conn, settings, copying)
    try:
        pipeline.normalize()
        pipeline.load()
    except Exception as error:
        refusal = refused_pending_load(pipeline)
        if refusal is None:
            raise
        if not set(refusal.held) <= set(copying):
            raise refusal_error(conn, settings, refusal, error) from None
        set_aside_pending_loads(pipeline)
        return True
    remember_loaded_state(pipeline)
    if get_slot(conn, settings.slot_name) is not None:
        advance_slot(conn, settings.slot_name,
                     LoadedState.from_pipeline_state(pipeline.state).position.lsn)
    return True


def _refuse_changes_to_tables_gone(pipeline: dlt.Pipeline, conn, settings: Settings,
                                   copying: Collection[str]) -> None:
    """A pending package of changes to a table dropped in the destination since would create it
    again holding only those rows (dlt creates what it loads into, on Delta always), and the
    table would pass for copied. Refused unless the caller copies the table again.

    Raises:
        CopyMissingError: Naming the tables and the snapshot that copies them.
    """
    changed = pending_change_tables(pipeline) - set(copying)
    gone = sorted(changed - existing_destination_tables(pipeline, changed)) if changed else []
    if gone:
        names = _display_names(conn, settings)
        shown = [names.get(table, table) for table in gone]
        raise CopyMissingError(
            f"{', '.join(shown)} missing from the destination although copied (changes to "
            f"{'it' if len(shown) == 1 else 'them'} wait in a pending load): run "
            f"{snapshot_command(shown)}")


def explain_refusal(pipeline: dlt.Pipeline, conn, settings: Settings,
                    error: BaseException) -> BaseException:
    """`error` of a load, or the refusal (LoadError.refused) it stands for."""
    try:
        refusal = refused_pending_load(pipeline)
        return error if refusal is None else refusal_error(conn, settings, refusal, error)
    except Exception:  # noqa: BLE001 - looking must never hide the error itself
        return error


def refusal_error(conn, settings: Settings, refusal, error: BaseException) -> LoadError:
    names = _display_names(conn, settings)
    return LoadError.refused([names.get(t, t) for t in refusal.refused],
                             [names.get(t, t) for t in refusal.held], essential_cause(error))


def _display_names(conn, settings: Settings) -> Dict[str, str]:
    """Destination table identifier -> the table as a user writes it in --tables."""
    names = {}
    for key in required_tables(conn, settings):
        schema, name = key.split(".", 1)
        target = destination_table(schema, name, settings.schema_name)
        names[destination_table_identifier(target)] = display_name(schema, name,
                                                                   settings.schema_name)
    return names
