"""Tables the change stream carries only the inserts of, and the check that keeps them honest.

A table whose rows PostgreSQL cannot identify (no primary key, a deferrable one, REPLICA IDENTITY
NOTHING, a key-less table even under FULL) is published for INSERT and TRUNCATE only: in a
publication of UPDATE and DELETE, PostgreSQL would reject the application's own UPDATE and DELETE
on it. So an UPDATE or DELETE of such a table never reaches the stream, and the destination would
go on differing from the source without a word.

What does see them: the server's cumulative statistics. `n_tup_upd` and `n_tup_del` of
`pg_stat_all_tables` count every row updated or deleted, per relation (partitions count their
own rows; a partitioned table counts nothing itself). The copy records their sum for each such
table, read *before* the slot's consistent point, so every UPDATE or DELETE after the hand-off
raises it. `cdc`, `status` and `verify` compare the sum now with it:

- higher: the application updated or deleted rows since the copy; the table needs a new copy.
  (Statements that rolled back count too: a refusal, never a wrong destination.)
- lower, or the statistics were reset since the copy: nothing can be told; the table needs a
  new copy too. A reset is seen by its time stamps, recorded with the count: `pg_stat_reset()`
  and a reset of one table's counters set the database's `stats_reset`, and a crash of the
  server (which discards all statistics) sets every shared one (`pg_stat_bgwriter` and
  `pg_stat_archiver` are compared). A clean restart keeps them all, and the counts.
- a table copied before counts were recorded, or a server with `track_counts = off`, cannot be
  checked: the table needs a new copy.

On PostgreSQL 14 and older, counts travel to the statistics collector over UDP, which may drop
them under load: the check is best-effort there. From 15 on, they are kept in shared memory.

Statistics reach the shared counters about a second after the writing session goes idle, so an
UPDATE committed just before a run may only be seen by the next run; the check never forgets
one, since the recorded sum only moves with a new copy.
"""

from typing import Any, Dict, Iterable, List, Optional

from .exceptions import snapshot_command
from .handoff import short_names
from .standby import primary_connection
from .state import LoadedState

# The sum over the relation itself, or over the leaves of a partitioned table. Cleared first: in
# a transaction, statistics are otherwise read once and cached (stats_fetch_consistency).
_COUNTS_SQL = """
SELECT r.oid, coalesce(sum(s.n_tup_upd + s.n_tup_del), 0)::bigint
FROM pg_class r
LEFT JOIN LATERAL (SELECT relid FROM pg_partition_tree(r.oid) WHERE isleaf AND r.relkind = 'p'
                   UNION ALL SELECT r.oid WHERE r.relkind <> 'p') AS leaf ON true
LEFT JOIN pg_stat_all_tables s ON s.relid = leaf.relid
WHERE r.oid = ANY (%s)
GROUP BY r.oid
"""


# When the statistics the counts build on were last reset (see the module docstring): the
# database's own stamp, and two shared ones, which a crash resets together (a monitoring tool may
# reset one of them alone now and then).
_EPOCH_SQL = """
SELECT (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database())::text,
       (SELECT stats_reset FROM pg_stat_bgwriter)::text,
       (SELECT stats_reset FROM pg_stat_archiver)::text,
       current_setting('track_counts')::bool
"""

# The recorded count (state.WRITE_COUNT_KEY): rows, and the reset stamps they count since.
ROWS, SINCE = "rows", "stats_since"


def updated_or_deleted_rows(conn, oids: Iterable[int]) -> Dict[int, Dict[str, Any]]:
    """Per table OID: rows updated or deleted since the statistics' last reset, and its stamps
    ([database, bgwriter, archiver]; None for all when the server counts nothing:
    track_counts = off)."""
    oids = list(oids)
    if not oids:
        return {}
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute(_EPOCH_SQL)
        database, bgwriter, archiver, counting = cur.fetchone()
        since = [database, bgwriter, archiver] if counting else None
        cur.execute(_COUNTS_SQL, (oids,))
        return {int(oid): {ROWS: int(count), SINCE: since} for oid, count in cur.fetchall()}


def _was_reset(recorded: Any, now: Any) -> bool:
    """Whether the statistics were reset between two stamp lists (or cannot be read)."""
    if not isinstance(recorded, list) or now is None:
        return True
    database_reset = recorded[0] != now[0]
    crashed = recorded[1] != now[1] and recorded[2] != now[2]
    return database_reset or crashed


def insert_only_problems(conn, loaded: LoadedState, required: Iterable[str],
                         schema_name: str, primary_dsn: Optional[str] = None) -> List[str]:
    """The problem line (at most one, naming every table and the command) when an insert-only
    table among the `required` table_keys was updated or deleted from since its copy, or cannot
    be checked (copied before counts were recorded; statistics reset or off; a standby source
    without `primary_dsn`, whose statistics do not count the primary's writes)."""
    required = set(required)
    keys = sorted(key for key in required if key in loaded.write_counts and key in loaded.oids)
    # Copied before this check existed (its shape says it has no key, and no count was recorded).
    unchecked = sorted(key for key in required - set(keys)
                       if key in loaded.shapes and not loaded.shapes[key].get("key"))
    if not keys and not unchecked:
        return []
    with primary_connection(conn, primary_dsn) as counts:
        if counts is None:
            names = short_names(keys + unchecked, schema_name)
            return [f"{', '.join(names)}: a table without a key takes only inserts through the "
                    "stream, and its updates and deletes are found in the primary's statistics, "
                    "which the standby the source points at does not have: set "
                    "primary_credentials to the primary"]
        now = updated_or_deleted_rows(counts, (loaded.oids[key] for key in keys))
    reasons: Dict[str, List[str]] = {}
    for key in keys:
        count, recorded = now.get(loaded.oids[key]), loaded.write_counts[key]
        if count is None:  # dropped: the hand-offs and the shape check speak for it
            continue
        if count[SINCE] is None:
            reason = "the server counts no changes (track_counts = off)"
        elif _was_reset(recorded.get(SINCE), count[SINCE]):
            reason = "the server's statistics were reset since the copy (a crash or pg_stat_reset)"
        elif count[ROWS] < recorded[ROWS]:
            reason = "the server counts fewer changes than at the copy (a partition detached?)"
        elif count[ROWS] > recorded[ROWS]:
            reason = "the server counts UPDATE or DELETE since the copy"
        else:
            continue
        reasons.setdefault(reason, []).append(key)
    if unchecked:
        reasons["it was copied before updates and deletes of such tables were checked"] = unchecked
    if not reasons:
        return []
    names = short_names(sorted(key for found in reasons.values() for key in found), schema_name)
    what = "; ".join(f"{', '.join(short_names(found, schema_name))}: {reason}"
                     for reason, found in reasons.items())
    them = "it" if len(names) == 1 else "them"
    table_word = "table " if len(names) == 1 else "tables "
    return [f"{table_word}{', '.join(names)} can take only inserts through the change stream (no "
            f"usable row identity), and the pipeline cannot be sure none was updated or deleted "
            f"({what}): run {snapshot_command(names)} to copy {them} again (and give {them} a "
            "primary key if the application updates them)"]
