"""Whether the destination holds the copies the change stream builds on.

`cdc` applies changes on top of each table's copy (handoff.py). It refuses to run, and `status` and
`verify` report a failure, when it cannot be sure that copy is there:

- the destination lost what this pipeline loaded (a deleted DuckDB file, a dropped schema, a new
  workspace): its stored state is missing or older than the last load this machine saw succeed;
- no copy was ever loaded (the first snapshot failed or was killed);
- a published (or configured) table has no copy (a snapshot that failed part-way, a table added to
  the publication by hand), or its destination table is gone;
- the positions belong to another slot than the configured one;
- the slot was confirmed past what the destination holds of a table (a destination restored from
  a backup while the local state was lost): the changes in between are gone from the stream;
- a table changed in a way the stream cannot carry (ddl.py): a DEFAULT that filled existing rows,
  a partition attached with rows, and so on;
- a table that takes only inserts through the stream had rows updated or deleted (insert_only.py).

Which state is the truth: the destination's, since dlt loads it together with the data. The local
state is ahead of it only while a load package is pending, and `cdc` loads those first.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import dlt
import psycopg2

from .catalog import describe_schema_tables, list_schema_tables, load_type_catalog, table_key
from .ddl import Leaves, TableCheck, check_tables
from .dlt_compat import (columns_gone_from_destination, destination_state,
                         existing_destination_tables, state_version)
from .exceptions import SourceNotReadyError, snapshot_command
from .failures import essential_line
from .filters import (FILTERS_SINCE, filter_problem, published_filters, rejected_writes,
                      with_filters)
from .handoff import short_names, tables_without_copy
from .insert_only import insert_only_problems
from .names import destination_table
from .settings import PgReplicationConfiguration as Settings
from .standby import primary_connection
from .state import LoadedState
from .slots import (INSERT_ONLY_SUFFIX, check_partition_root_publishing, ensure_publications,
                    existing_publications, get_slot, publication_tables, republish_whole)

# The state version of the last load this machine saw complete, kept beside the pipeline's state.
LOADED_RECORD_FILE = "last_loaded_state.json"


def remember_loaded_state(pipeline: dlt.Pipeline) -> None:
    """Called after every successful load: the destination now holds this state version."""
    path = Path(pipeline.working_dir) / LOADED_RECORD_FILE
    path.write_text(json.dumps({"state_version": state_version(pipeline.state)}))


def _remembered_version(pipeline: dlt.Pipeline) -> int:
    try:
        record = json.loads((Path(pipeline.working_dir) / LOADED_RECORD_FILE).read_text())
        return int(record.get("state_version") or 0)
    except (OSError, ValueError):
        return 0


def destination_lost(pipeline: dlt.Pipeline, remote: Optional[Dict[str, Any]]) -> Optional[str]:
    """A problem line when the destination no longer holds the last load seen to succeed."""
    remembered = _remembered_version(pipeline)
    if not remembered:
        return None
    if remote is not None and state_version(remote) >= remembered:
        return None
    found = "no pipeline state" if remote is None else (
        f"state version {state_version(remote)}, older than {remembered}")
    return (f"the destination no longer holds what this pipeline loaded ({found}: a deleted "
            "database file, a dropped schema or table?): run `snapshot` to copy the tables again")


def loaded_state(pipeline: dlt.Pipeline, remote: Optional[Dict[str, Any]]) -> LoadedState:
    """What the destination holds: its own state, unless the local one is newer (pending loads)."""
    local = pipeline.state
    if remote is not None and state_version(remote) >= state_version(local):
        return LoadedState.from_pipeline_state(remote)
    return LoadedState.from_pipeline_state(local)


def required_tables(conn, settings: Settings) -> List[str]:
    """table_keys the stream applies changes to: the published tables of the configured
    schemas, and the configured tables."""
    keys = {table_key(schema, name)
            for publication in existing_publications(conn, settings.pub_name)
            for schema, name in publication_tables(conn, publication)
            if schema in settings.schema_names}
    keys |= {settings.table_key(name) for name in settings.table_names or []}
    return sorted(keys)


def tables_not_replicated(conn, settings: Settings) -> List[Tuple[str, str]]:
    """(schema, table) of the tables of the schemas not published (created since the snapshot,
    or left out of it), when every table of the schemas is wanted (no `table_names`): not an
    error, since a new table may be scratch space, but said on every run and in `status`."""
    if settings.table_names:
        return []
    required = set(required_tables(conn, settings))
    return [(schema, name) for schema, name in list_schema_tables(conn, settings.schema_names)
            if table_key(schema, name) not in required]


def copy_problems(conn, settings: Settings, pipeline: dlt.Pipeline,
                  loaded: LoadedState) -> List[str]:
    """Problem lines, each with the command that fixes it; [] when every copy is in place."""
    if not loaded.anything_loaded:
        return ["no snapshot has been loaded into the destination yet: run `snapshot`"]
    if loaded.slot_name and loaded.slot_name != settings.slot_name:
        return [f"the destination was loaded from slot {loaded.slot_name!r}, not the configured "
                f"{settings.slot_name!r}: run `snapshot` to start over from "
                f"{settings.slot_name!r}"]
    problems = []
    required = required_tables(conn, settings)
    uncopied = short_names(tables_without_copy(required, loaded), settings.schema_name)
    if uncopied:
        problems.append(
            f"no copy of {_tables(uncopied)} in the destination for the current slot (a failed "
            "or partial snapshot, a new slot, or a table published later): run "
            f"{snapshot_command(uncopied)}")
    behind = [] if _has_local_state(pipeline) else short_names(
        _behind_the_slot(conn, settings, loaded, required), settings.schema_name)
    if behind:
        problems.append(
            f"the slot is confirmed past what the destination holds of {_tables(behind)} (a "
            "destination restored from a backup?): the changes in between are gone from the "
            f"stream; run {snapshot_command(behind)}")
    replaced = short_names(_replaced_tables(conn, settings, loaded, required),
                           settings.schema_name)
    if replaced:
        problems.append(
            f"{_tables(replaced)} {'is' if len(replaced) == 1 else 'are'} not the table copied "
            "under that name (renamed over, swapped, or dropped and created again since the "
            f"copy): run {snapshot_command(replaced)}")
    copied = {destination_table(*key.split(".", 1), settings.schema_name): key
              for key in required if key in loaded.handoffs}
    present = existing_destination_tables(pipeline, copied)
    gone = short_names(sorted(key for target, key in copied.items() if target not in present),
                       settings.schema_name)
    if gone:
        problems.append(f"{_tables(gone)} missing from the destination although copied: run "
                        f"{snapshot_command(gone)}")
    lacking = columns_gone_from_destination(
        pipeline, {target: key for target, key in copied.items() if target in present})
    for target, columns in lacking.items():
        name = short_names([copied[target]], settings.schema_name)[0]
        problems.append(f"table {name}: column {', '.join(columns)} missing from the destination "
                        f"although loaded (dropped there?): run {snapshot_command([name])}")
    return problems


def _replaced_tables(conn, settings: Settings, loaded: LoadedState,
                     required: List[str]) -> List[str]:
    """Copied table_keys whose name now belongs to another table (another OID): its changes
    would be merged into the copy of the one that had the name. Checked for the required
    tables, and, when every table of the schema is wanted, for the others too (a table dropped
    and created again is not published, but its destination table holds the old one's rows)."""
    wanted = set(required)
    if not settings.table_names:
        wanted |= {table_key(schema, name)
                   for schema, name in list_schema_tables(conn, settings.schema_names)}
    copied = [key for key in wanted if key in loaded.oids
              and key.split(".", 1)[0] in settings.schema_names]
    if not copied:
        return []
    with conn.cursor() as cur:
        cur.execute("SELECT n.nspname || '.' || c.relname, c.oid FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname || '.' || c.relname = ANY (%s) AND c.relkind IN ('r', 'p')",
                    (copied,))
        now = {key: int(oid) for key, oid in cur.fetchall()}
    return sorted(key for key in copied if key in now and now[key] != loaded.oids[key])


def _has_local_state(pipeline: dlt.Pipeline) -> bool:
    return LoadedState.from_pipeline_state(pipeline.state).anything_loaded


def _behind_the_slot(conn, settings: Settings, loaded: LoadedState,
                     required: List[str]) -> List[str]:
    """Copied tables the stream would have to bring from before the slot's confirmed position.

    The destination holds a table up to the later of its hand-off and the stream position; the
    slot is confirmed only up to what the destination committed, so it is never past that unless
    the destination went back (or the slot was confirmed by someone else). Checked only without
    a local state (a new machine): with one, a destination that went back is found by its state
    version (destination_lost). (With a local state after killed runs this check also fired, not
    yet understood: see the closing note of stop 10.)
    """
    slot = get_slot(conn, settings.slot_name)
    confirmed = slot.confirmed_flush_lsn if slot else None
    if confirmed is None:
        return []
    return sorted(key for key in required if key in loaded.handoffs
                  and max(loaded.handoffs[key], loaded.position.lsn) < confirmed)


def release_tables_without_identity(conn, settings: Settings) -> Optional[str]:
    """Moves the tables that lost their row identity (primary key dropped, made deferrable,
    REPLICA IDENTITY NOTHING) out of the publication of updates and deletes, and returns the
    problem line, or None.

    While such a table is in a publication that publishes UPDATE and DELETE, PostgreSQL rejects
    the application's own UPDATE and DELETE on it ("does not have a replica identity"). In the
    insert-only publication they work again; the changes they make are no longer streamed, so the
    table needs a new copy (and is appended from then on).
    """
    pairs = sorted((schema, name) for schema, name in publication_tables(conn, settings.pub_name)
                   or [] if schema in settings.schema_names)
    lost = [table for table in describe_schema_tables(conn, pairs, settings.schema_name).values()
            if not table.merge_key]
    if not lost:
        return None
    shown = [table.label for table in lost]
    them = "it" if len(shown) == 1 else "them"
    problem = (f"{_tables(shown)} lost {'its' if len(shown) == 1 else 'their'} row identity "
               "(primary key dropped or deferrable, or REPLICA IDENTITY NOTHING), so the "
               f"application's UPDATE and DELETE on {them} fail")
    try:
        with primary_connection(conn, settings.primary_dsn) as primary:
            if primary is None:
                raise SourceNotReadyError("the source is a standby, set primary_credentials")
            # Autocommit: done, whatever follows.
            ensure_publications(primary, settings.pub_name, lost)
    except (psycopg2.Error, SourceNotReadyError) as e:
        return (f"{problem}: have an admin take {them} out of publication {settings.pub_name} "
                f"({essential_line(e)}), then run {snapshot_command(shown)}")
    return (f"{problem}ed: moved to publication {settings.pub_name + INSERT_ONLY_SUFFIX}, where "
            "they work again, but those changes are not streamed: run "
            f"{snapshot_command(shown)} to copy {them} again")


def release_rejected_filters(conn, settings: Settings) -> Optional[str]:
    """Takes the column list and row filter off the tables whose key or replica identity changed
    so that PostgreSQL now rejects the application's UPDATE and DELETE on them (filters.py), and
    returns the problem line, or None. Published whole, they work again; the stream would send
    what the copy lacks, so the table needs a new copy (filter_problems asks for it too)."""
    if not settings.table_filters or conn.server_version < FILTERS_SINCE:
        return None
    published = published_filters(conn, [settings.pub_name])
    pairs = [pair for pair in settings.table_filters if pair in published]
    tables = describe_schema_tables(conn, pairs, settings.schema_name, strict=False)
    found = [(table, why) for table in tables.values()
             if (why := rejected_writes(conn, table, published))]
    if not found:
        return None
    shown = [table.label for table, _ in found]
    problem = (f"{_tables(shown)}: {'; '.join(why for _, why in found)}, so PostgreSQL rejects "
               "the application's UPDATE and DELETE")
    try:
        with primary_connection(conn, settings.primary_dsn) as primary:
            if primary is None:
                raise SourceNotReadyError("the source is a standby, set primary_credentials")
            republish_whole(primary, settings.pub_name, [table for table, _ in found])
    except (psycopg2.Error, SourceNotReadyError) as e:
        return (f"{problem}: have an admin take the column list and row filter off in "
                f"publication {settings.pub_name} ({essential_line(e)}), then fix "
                f"exclude_columns or row_filters and run {snapshot_command(shown)}")
    return (f"{problem}: the publication now sends them whole, so they work again; fix "
            f"exclude_columns or row_filters, then run {snapshot_command(shown)}")


def check_schema_changes(conn, schema_name: str, loaded: LoadedState,
                         replicated: Optional[List[str]] = None, leaves: Optional[Leaves] = None
                         ) -> Tuple[List[str], Dict[str, TableCheck]]:
    """Compares each copied table's catalog with its recorded shape (ddl.py); only the
    `replicated` table_keys when given (a table taken out of the publication no longer matters).
    `leaves`: the partitions as read before the run's stop was taken (ddl.read_leaves).

    Returns:
        The problem line (at most one, naming every table that needs a new copy and the command),
        and the checks by table_key (their shapes to record, their notes).
    """
    recorded = {key: (loaded.oids[key], loaded.shapes.get(key)) for key in loaded.handoffs
                if key in loaded.oids and (replicated is None or key in replicated)}
    checks = check_tables(conn, recorded, load_type_catalog(conn), leaves)
    failing = {key: check for key, check in checks.items() if check.needs_copy}
    if not failing:
        return [], checks
    names = short_names(sorted(failing), schema_name)
    reasons = "; ".join(f"{name}: {', '.join(failing[key].needs_copy)}"
                        for name, key in zip(names, sorted(failing)))
    rename = ("rename one of the colliding columns (the destination cannot tell them apart), "
              "then " if any(check.needs_rename for check in failing.values()) else "")
    return [f"{_tables(names)} changed in a way the change stream cannot carry ({reasons}): "
            f"{rename}run {snapshot_command(names)} to copy "
            f"{'it' if len(names) == 1 else 'them'} again"], checks


def schema_change_notes(checks: Dict[str, TableCheck], schema: str) -> List[str]:
    """What changed and is carried on, per table, for a run's summary line."""
    return [f"{name}: {', '.join(checks[key].notes)}"
            for name, key in zip(short_names(sorted(checks), schema), sorted(checks))
            if checks[key].notes]


def integrity_problems(conn, settings: Settings, pipeline: dlt.Pipeline) -> List[str]:
    """Every problem, for `status` and `verify` (which load nothing)."""
    try:  # before anything reads the publication: without it, it lists partitions
        check_partition_root_publishing(conn, settings.pub_name, settings.table_filters,
                                        settings.schema_name)
    except SourceNotReadyError as e:
        return [str(e)]
    remote = destination_state(pipeline)
    lost = destination_lost(pipeline, remote)
    if lost:
        return [lost]
    loaded = loaded_state(pipeline, remote)
    problems = copy_problems(conn, settings, pipeline, loaded)
    if loaded.anything_loaded:
        required = required_tables(conn, settings)
        problems += check_schema_changes(conn, settings.schema_name, loaded, required)[0]
        problems += filter_problems(conn, settings, loaded, required)
        problems += insert_only_problems(conn, loaded, required, settings.schema_name,
                                         settings.primary_dsn)
    return problems


def filter_problems(conn, settings: Settings, loaded: LoadedState,
                    required: List[str]) -> List[str]:
    """The problem line (at most one) when a copied table's column list or row filter is no
    longer what its copy was made with (filters.py), naming the command that copies it again."""
    copied = [key for key in required if key in loaded.handoffs]
    if not copied or conn.server_version < FILTERS_SINCE:
        return []
    pairs = [tuple(key.split(".", 1)) for key in copied]
    tables = with_filters(describe_schema_tables(conn, pairs, settings.schema_name, strict=False),
                          conn.server_version, settings.table_filters)
    published = published_filters(conn, existing_publications(conn, settings.pub_name))
    found = [(table.label, problem) for table in tables.values()
             if (problem := filter_problem(table, loaded.published.get(
                 table_key(table.schema, table.name)), published))]
    if not found:
        return []
    names = [label for label, _ in found]
    return [f"{'; '.join(f'{label}: {problem}' for label, problem in found)}: run "
            f"{snapshot_command(names)} to copy {'it' if len(names) == 1 else 'them'} with the "
            "columns and rows the stream sends now"]


def _tables(names: List[str]) -> str:
    return ("table " if len(names) == 1 else "tables ") + ", ".join(names)
