"""Tables the change stream carries only the inserts of, and the check that keeps them honest.

A table whose rows PostgreSQL cannot identify (no primary key, a deferrable one, REPLICA IDENTITY
NOTHING, a key-less table even under FULL) is published for INSERT and TRUNCATE only: in a
publication of UPDATE and DELETE, PostgreSQL would reject the application's own UPDATE and DELETE
on it. So an UPDATE or DELETE of such a table never reaches the stream, and the destination would
go on differing from the source without a word.

What does see them: the server's cumulative statistics. `n_tup_upd` and `n_tup_del` of
`pg_stat_user_tables` count every row updated or deleted, per relation (partitions count their
own rows; a partitioned table counts nothing itself). The copy records their sum for each such
table, read *before* the slot's consistent point, so every UPDATE or DELETE after the hand-off
raises it. `cdc`, `status` and `verify` compare the sum now with it:

- higher: the application updated or deleted rows since the copy; the table needs a new copy.
  (Statements that rolled back count too: a refusal, never a wrong destination.)
- lower, or the statistics were reset since the copy: nothing can be told; the table needs a
  new copy too. A reset is seen by its time stamps, recorded with the count: `pg_stat_reset()`
  and a reset of one table's counters set the database's `stats_reset`, and a crash of the
  server (which discards all statistics) sets the shared ones (`pg_stat_bgwriter.stats_reset`).
  A clean restart keeps both, and the counts.

Statistics reach the shared counters about a second after the writing session goes idle, so an
UPDATE committed just before a run may only be seen by the next run; the check never forgets
one, since the recorded sum only moves with a new copy.
"""

from typing import Any, Dict, Iterable, List

from .exceptions import snapshot_command
from .handoff import LoadedState, short_names

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


# When the statistics this database's counts build on were last reset (see the module docstring).
_EPOCH_SQL = """
SELECT concat_ws(' / ', (SELECT stats_reset FROM pg_stat_bgwriter)::text,
                 (SELECT stats_reset FROM pg_stat_database
                  WHERE datname = current_database())::text)
"""

ROWS, SINCE = "rows", "stats_since"  # the recorded count, and the reset stamps it belongs to


def updated_or_deleted_rows(conn, oids: Iterable[int]) -> Dict[int, Dict[str, Any]]:
    """Per table OID: rows updated or deleted since the statistics' last reset, and its stamps."""
    oids = list(oids)
    if not oids:
        return {}
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute(_EPOCH_SQL)
        since = cur.fetchone()[0]
        cur.execute(_COUNTS_SQL, (oids,))
        return {int(oid): {ROWS: int(count), SINCE: since} for oid, count in cur.fetchall()}


def insert_only_problems(conn, loaded: LoadedState, required: Iterable[str],
                         schema_name: str) -> List[str]:
    """The problem line (at most one, naming every table and the command) when an insert-only
    table among the `required` table_keys was updated or deleted from since its copy."""
    keys = sorted(key for key in set(required)
                  if key in loaded.write_counts and key in loaded.oids)
    now = updated_or_deleted_rows(conn, (loaded.oids[key] for key in keys))
    changed, reset = [], []
    for key in keys:
        count, recorded = now.get(loaded.oids[key]), loaded.write_counts[key]
        if count is None:  # dropped: the hand-offs and the shape check speak for it
            continue
        if count[SINCE] != recorded.get(SINCE) or count[ROWS] < recorded[ROWS]:
            reset.append(key)
        elif count[ROWS] > recorded[ROWS]:
            changed.append(key)
    if not changed and not reset:
        return []
    names = short_names(changed + reset, schema_name)
    what = []
    if changed:
        what.append(f"the server counts UPDATE or DELETE on {', '.join(names[:len(changed)])} "
                    "since the copy")
    if reset:
        what.append(f"the server's statistics were reset since the copy of "
                    f"{', '.join(names[len(changed):])} (a crash or pg_stat_reset), so it cannot "
                    "tell whether rows were updated or deleted")
    them = "it" if len(names) == 1 else "them"
    table_word = "table " if len(names) == 1 else "tables "
    return [f"{table_word}{', '.join(names)} can take only inserts through the change stream (no "
            f"usable row identity), but {'; '.join(what)}: give {them} a primary key if the "
            f"application updates {them}, then run {snapshot_command(names)} to copy "
            f"{them} again"]
