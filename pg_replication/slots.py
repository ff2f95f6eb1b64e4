"""Replication slot and publication management, server checks, and the run lock.

Every identifier is quoted with psycopg2.sql; nothing is built from names by plain formatting.
"""

import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Any, Collection, Iterator, List, Optional, Sequence, Tuple

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from .catalog import TableInfo
from .filters import (needs_readding, publication_item, published_filters,
                      refuse_rejected_writes)
from .connect import connect, describe_pg_error
from .exceptions import (ConfigError, SlotError, SlotInUseError, SourceNotReadyError,
                         snapshot_command)
from .names import display_name
from .protocol import int_to_lsn, lsn_to_int
from .standby import check_standby

_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
INSERT_ONLY_SUFFIX = "_insert_only"


@dataclass
class SlotInfo:
    name: str
    plugin: str
    database: str
    active: bool
    active_pid: Optional[int]
    restart_lsn: Optional[int]
    confirmed_flush_lsn: Optional[int]
    wal_status: Optional[str]
    safe_wal_size: Optional[int]
    failover: Optional[bool] = None  # PostgreSQL 17+: synchronized to standbys (failover.py)


def validate_slot_name(slot_name: str) -> str:
    if not slot_name or not _SLOT_NAME.match(slot_name):
        raise ConfigError(
            f"invalid slot name {slot_name!r}: use 1-63 lower-case letters, digits and underscores"
        )
    return slot_name


def check_server(conn) -> None:
    """Fails early, with the fix in the message, when the server cannot do logical replication."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('wal_level')")
        (wal_level,) = cur.fetchone()
    if wal_level != "logical":
        raise SourceNotReadyError(
            f"the source has wal_level={wal_level}; logical replication needs wal_level=logical "
            "(set it in postgresql.conf and restart the server)"
        )
    check_standby(conn)


def check_logical_messages(conn) -> None:
    """Raises unless pgoutput can send logical messages (PostgreSQL 14+), which an online copy's
    watermarks are (chunks.py), and the role may write them: checked before any table is
    emptied for its copy."""
    if conn.server_version < 140000:
        raise SourceNotReadyError(
            "an online copy needs PostgreSQL 14 or later (the server runs "
            f"{conn.server_version // 10000}): copy the tables with `snapshot --tables ...`")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(false, 'pg_replication', 'check')")
    except psycopg2.Error as e:
        raise SourceNotReadyError(
            f"an online copy writes watermarks with pg_logical_emit_message, which this role may "
            f"not call ({describe_pg_error(e)}): grant it REPLICATION, or copy the tables with "
            "`snapshot --tables ...`") from None


def get_slot(conn, slot_name: str) -> Optional[SlotInfo]:
    failover = "failover" if conn.server_version >= 170000 else "NULL"
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT slot_name, plugin, database, active, active_pid, restart_lsn::text,
                       confirmed_flush_lsn::text, wal_status, safe_wal_size, {failover}
                FROM pg_replication_slots WHERE slot_name = %s""",
            (slot_name,),
        )
        row = cur.fetchone()
    if row is None:
        return None
    to_int = lambda lsn: lsn_to_int(lsn) if lsn else None  # noqa: E731
    return SlotInfo(row[0], row[1], row[2], row[3], row[4], to_int(row[5]), to_int(row[6]),
                    row[7], row[8], row[9])


def check_slot_usable(slot: SlotInfo, slot_name: str, database: str) -> None:
    if slot.plugin != "pgoutput":
        raise SlotError(f"slot {slot_name!r} uses plugin {slot.plugin!r}, not pgoutput")
    if slot.database != database:
        raise SlotError(f"slot {slot_name!r} belongs to database {slot.database!r}, not {database!r}")
    if slot.wal_status == "lost":
        raise SlotError(
            f"slot {slot_name!r} was invalidated by the server (wal_status=lost): changes were "
            "lost on the source side; run `snapshot` to copy the tables again (it replaces the "
            "slot)"
        )


def current_wal_lsn(conn) -> int:
    """The WAL insert position: past every commit so far, asynchronous commits included (the
    write position, pg_current_wal_lsn(), can lag behind a commit made with
    synchronous_commit=off)."""
    with conn.cursor() as cur:
        # A standby (standby.py) has no insert position: what it replayed is its present.
        cur.execute("SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
                    "ELSE pg_current_wal_insert_lsn() END)::text")
        return lsn_to_int(cur.fetchone()[0])


def current_database(conn) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        return cur.fetchone()[0]


# The tables a publication names (pg_publication_rel), and those it covers through FOR TABLES IN
# SCHEMA or FOR ALL TABLES (the pg_publication_tables view, which lists partitions instead of the
# root unless publish_via_partition_root).
_PUBLISHED_SQL = """
SELECT c.oid, n.nspname, c.relname
FROM pg_publication p
JOIN pg_publication_rel pr ON pr.prpubid = p.oid
JOIN pg_class c ON c.oid = pr.prrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE p.pubname = %s
UNION
SELECT c.oid, n.nspname, c.relname
FROM pg_publication_tables t
JOIN pg_namespace n ON n.nspname = t.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
WHERE t.pubname = %s
ORDER BY 2, 3
"""


def publication_tables(conn, pub_name: str) -> Optional[List[Tuple[str, str]]]:
    """(schema, table) pairs in the publication, or None when it does not exist."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (pub_name,))
        if cur.fetchone() is None:
            return None
        cur.execute(_PUBLISHED_SQL, (pub_name, pub_name))
        return [(schema, name) for _, schema, name in cur.fetchall()]


def publication_relations(conn, pub_name: str) -> List[Tuple[int, str, str]]:
    """(OID, schema, table) of every table in the publication (none when it does not exist)."""
    with conn.cursor() as cur:
        cur.execute(_PUBLISHED_SQL, (pub_name, pub_name))
        return [tuple(row) for row in cur.fetchall()]


def _table_identifier(table: TableInfo) -> sql.Composable:
    return sql.Identifier(table.schema, table.name)


def ensure_publications(conn, pub_name: str, tables: Sequence[TableInfo]) -> List[str]:
    """Creates or extends the publications so that every table is published safely.

    Tables with a row identity (primary key or REPLICA IDENTITY USING INDEX) go into `pub_name`,
    which publishes everything. Tables without one go into `<pub_name>_insert_only`, which
    publishes only INSERT and TRUNCATE: PostgreSQL rejects UPDATE and DELETE on a table that is in
    a publication publishing them and has no replica identity, so putting such a table into the
    main publication would make the application's own writes fail.

    Returns:
        List[str]: The publication names to stream from.
    """
    try:
        return _ensure_publications(conn, pub_name, tables)
    except psycopg2.errors.InsufficientPrivilege as e:
        statements = publication_statements(conn, pub_name,
                                            unpublished_tables(conn, pub_name, tables))
        raise SourceNotReadyError(
            f"cannot create or change publication {pub_name!r} ({describe_pg_error(e)}); "
            f"have an admin run: {'; '.join(statements)}") from None
    except psycopg2.Error as e:
        filtered = [t.label for t in tables if t.row_filter or t.excluded]
        if not filtered:
            raise
        # The server checks a row filter (its syntax, its columns, only immutable functions)
        # when the publication takes it.
        raise ConfigError(f"the publication refused the exclude_columns or row_filters of "
                          f"{', '.join(filtered)}: {describe_pg_error(e)}") from None


def republish_whole(conn, pub_name: str, tables: Sequence[TableInfo]) -> None:
    """Takes the tables out of `pub_name` and adds them back without a column list or row
    filter, in one transaction."""
    names = sql.SQL(", ").join(_table_identifier(t) for t in tables)
    with _transaction(conn) as cur:
        cur.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
            sql.Identifier(pub_name), names))
        cur.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(pub_name), names))


@contextmanager
def _transaction(conn) -> Iterator[Any]:
    """One explicit transaction on an autocommit connection: committed at the end of the block,
    rolled back if it raises."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


def _publication_targets(pub_name: str, tables: Sequence[TableInfo]
                         ) -> List[Tuple[str, List[TableInfo], str]]:
    """(publication, its tables, what it publishes): keyed tables in `pub_name`, the others in
    the insert-only one."""
    return [(pub_name, [t for t in tables if t.merge_key], "insert, update, delete, truncate"),
            (pub_name + INSERT_ONLY_SUFFIX, [t for t in tables if not t.merge_key],
             "insert, truncate")]


def unpublished_tables(conn, pub_name: str, tables: Sequence[TableInfo]) -> List[TableInfo]:
    """The tables not in the publication ensure_publications would put them in."""
    missing = []
    for name, wanted, _ in _publication_targets(pub_name, tables):
        existing = publication_tables(conn, name) or []
        missing += [t for t in wanted if (t.schema, t.name) not in existing]
    return missing


def publication_statements(conn, pub_name: str, tables: Sequence[TableInfo]) -> List[str]:
    """The statements an admin runs to publish the tables (a role that may not)."""
    statements = []
    for name, wanted, publish in _publication_targets(pub_name, tables):
        if not wanted:
            continue
        names = sql.SQL(", ").join(publication_item(t) for t in wanted)
        if publication_tables(conn, name) is None:
            statement = sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {}, "
                                "publish_via_partition_root = true)").format(
                sql.Identifier(name), names, sql.Literal(publish))
        else:
            statement = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(name), names)
        statements.append(statement.as_string(conn))
    return statements


def _ensure_publications(conn, pub_name: str, tables: Sequence[TableInfo]) -> List[str]:
    """In one transaction: a row filter that would make the application's writes fail
    (filters.refuse_rejected_writes) is never committed."""
    targets = _publication_targets(pub_name, tables)
    with _transaction(conn):
        for name, wanted, publish in targets:
            for other, _, _ in targets:
                if other != name:
                    _drop_from_publication(conn, other, wanted)
            if wanted:
                _add_to_publication(conn, name, wanted, publish)
        refuse_rejected_writes(conn, pub_name, targets[0][1])
    return [name for name, _, _ in targets if publication_tables(conn, name) is not None]


def _add_to_publication(conn, pub_name: str, tables: Sequence[TableInfo], publish: str) -> None:
    existing = publication_tables(conn, pub_name)
    with conn.cursor() as cur:
        if existing is None:
            cur.execute(
                sql.SQL(
                    "CREATE PUBLICATION {} FOR TABLE {} "
                    "WITH (publish = {}, publish_via_partition_root = true)"
                ).format(
                    sql.Identifier(pub_name),
                    sql.SQL(", ").join(publication_item(t) for t in tables),
                    sql.Literal(publish),
                )
            )
            return
        published = published_filters(conn, [pub_name])
        again = [t for t in tables if (t.schema, t.name) in existing
                 and needs_readding(t, published)]
        if again:  # with the column list and filter it should have now
            cur.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                sql.Identifier(pub_name), sql.SQL(", ").join(_table_identifier(t) for t in again)))
        missing = [t for t in tables if (t.schema, t.name) not in existing or t in again]
        if missing:
            cur.execute(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(pub_name),
                    sql.SQL(", ").join(publication_item(t) for t in missing),
                )
            )


def _drop_from_publication(conn, pub_name: str, tables: Sequence[TableInfo]) -> None:
    existing = publication_tables(conn, pub_name)
    if not existing:
        return
    present = [t for t in tables if (t.schema, t.name) in existing]
    if present:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                    sql.Identifier(pub_name),
                    sql.SQL(", ").join(_table_identifier(t) for t in present),
                )
            )


def existing_publications(conn, pub_name: str) -> List[str]:
    return [name for name in (pub_name, pub_name + INSERT_ONLY_SUFFIX)
            if publication_tables(conn, name) is not None]


def check_partition_root_publishing(conn, pub_name: str,
                                    filtered: Collection[Tuple[str, str]] = (),
                                    default_schema: str = "public") -> None:
    """Raises SourceNotReadyError when a publication (an admin's) publishes a partitioned table
    without `publish_via_partition_root`: its changes would arrive under each partition's name,
    and the root's destination table would go stale. Also when it leaves out an action, or has a
    column list or row filter for a table other than the (schema, table) pairs `filtered` (those
    the configuration filters: filters.filter_problem checks them)."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT p.pubname, c.relname FROM pg_publication p
               JOIN pg_publication_rel pr ON pr.prpubid = p.oid
               JOIN pg_class c ON c.oid = pr.prrelid
               WHERE p.pubname = ANY (%s) AND NOT p.pubviaroot AND c.relkind = 'p'
               ORDER BY 1, 2""", ([pub_name, pub_name + INSERT_ONLY_SUFFIX],))
        found = cur.fetchall()
    if found:
        publication, table = found[0]
        raise SourceNotReadyError(
            f"publication {publication!r} publishes partitioned table {table} without "
            "publish_via_partition_root, so its changes would arrive per partition: have an admin "
            f"run ALTER PUBLICATION {publication} SET (publish_via_partition_root = true)")
    _check_published_actions(conn, pub_name)
    _check_no_filters(conn, [pub_name, pub_name + INSERT_ONLY_SUFFIX], filtered, default_schema)


def _check_published_actions(conn, pub_name: str) -> None:
    """Raises SourceNotReadyError when a publication (an admin's) leaves out an action the
    pipeline needs: without `truncate` a TRUNCATE would leave every row in the destination,
    without `update`/`delete` (the full publication) those changes would be lost silently."""
    needed = {pub_name: ("insert", "update", "delete", "truncate"),
              pub_name + INSERT_ONLY_SUFFIX: ("insert", "truncate")}
    with conn.cursor() as cur:
        cur.execute("SELECT pubname, pubinsert, pubupdate, pubdelete, pubtruncate "
                    "FROM pg_publication WHERE pubname = ANY (%s) ORDER BY 1", (list(needed),))
        rows = cur.fetchall()
    for name, *flags in rows:
        published = dict(zip(("insert", "update", "delete", "truncate"), flags))
        missing = [action for action in needed[name] if not published[action]]
        if missing:
            raise SourceNotReadyError(
                f"publication {name!r} does not publish {', '.join(missing)}, so those changes "
                f"would be lost: have an admin run ALTER PUBLICATION {name} SET (publish = "
                f"'{', '.join(needed[name])}')")


# PostgreSQL 15+: a publication's column list (prattrs) or row filter (prqual) for a table.
_FILTERED_SQL = """
SELECT p.pubname, n.nspname, c.relname, pr.prattrs IS NOT NULL
FROM pg_publication p
JOIN pg_publication_rel pr ON pr.prpubid = p.oid
JOIN pg_class c ON c.oid = pr.prrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE p.pubname = ANY (%s) AND (pr.prattrs IS NOT NULL OR pr.prqual IS NOT NULL)
ORDER BY 1, 2, 3
"""


def _check_no_filters(conn, publications: List[str], filtered: Collection[Tuple[str, str]],
                      default_schema: str) -> None:
    """Raises SourceNotReadyError when a publication (an admin's) has a column list or a row
    filter: the copy reads whole tables, while the stream would send rows without the columns
    left out (updates would set them to NULL in the destination) and skip filtered rows."""
    if conn.server_version < 150000:  # neither exists before PostgreSQL 15
        return
    with conn.cursor() as cur:
        cur.execute(_FILTERED_SQL, (publications,))
        found = next((row for row in cur.fetchall() if (row[1], row[2]) not in filtered), None)
    if found:
        publication, schema, table, column_list = found
        what = "a column list" if column_list else "a row filter"
        pub_sql = sql.Identifier(publication).as_string(conn)
        table_sql = sql.Identifier(schema, table).as_string(conn)
        raise SourceNotReadyError(
            f"publication {publication!r} has {what} for table {schema}.{table}, which the "
            "pipeline does not apply (the copy would hold what the stream leaves out): have an "
            f"admin run BEGIN; ALTER PUBLICATION {pub_sql} DROP TABLE {table_sql}; "
            f"ALTER PUBLICATION {pub_sql} ADD TABLE {table_sql}; COMMIT; then run "
            f"{snapshot_command([display_name(schema, table, default_schema)])}")


def copy_slot_name(slot_name: str) -> str:
    """The temporary slot a snapshot creates beside `slot_name` to export its copy's snapshot; it
    shows in pg_replication_slots while the copy starts, under a name that says whose it is."""
    return f"{slot_name[:40]}_snapshot_{uuid.uuid4().hex[:8]}"


def create_slot_with_snapshot(dsn: str, slot_name: str, temporary: bool = False,
                              max_wait: Optional[float] = None, failover: bool = False,
                              waiter: str = "snapshot", wait_option: str = "--max-wait"
                              ) -> Tuple[object, int, str]:
    """Creates a pgoutput slot and exports the snapshot of its consistent point; a `failover`
    slot (PostgreSQL 17+, failover.py) is synchronized to standbys. `waiter` names the command
    in what is said while waiting, `wait_option` the option that sets `max_wait`.

    The snapshot sees exactly the transactions whose commit record lies before the consistent
    point; the slot decodes exactly those at or after it. The returned replication connection must
    stay open and idle until every reader has imported the snapshot (`SET TRANSACTION SNAPSHOT`);
    the snapshot dies with it, and so does a `temporary` slot.

    Creating the slot waits for every transaction open at that moment to end; what it waits for is
    said on stderr every few seconds (`_SlotWait`).

    Raises:
        SourceNotReadyError: Still waiting after `max_wait` seconds.

    Returns:
        (connection, consistent point LSN, snapshot name)
    """
    conn = connect(dsn, replication=True)
    waiting = _SlotWait(dsn, conn, max_wait, waiter)
    try:
        with waiting, conn.cursor() as cur:
            # The option list (PostgreSQL 15+) only when it says more than the old syntax.
            options = ("(SNAPSHOT 'export', FAILOVER true)" if failover else "EXPORT_SNAPSHOT")
            cur.execute(
                sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput {}").format(
                    sql.Identifier(slot_name), sql.SQL("TEMPORARY " if temporary else ""),
                    sql.SQL(options))
            )
            _, consistent_point, snapshot_name, _ = cur.fetchone()
    except psycopg2.Error as e:
        conn.close()
        if waiting.gave_up:
            raise SourceNotReadyError(
                f"gave up after waiting {max_wait:g} s for the transactions that were open when "
                f"the snapshot started ({waiting.last_seen or 'none seen'}): end them, or raise "
                f"{wait_option}") from None
        raise _slot_error(e, slot_name, temporary) from None
    return conn, lsn_to_int(consistent_point), snapshot_name


# Transactions a new slot waits for: every one with a transaction id, in any database, and
# prepared ones (which only COMMIT PREPARED or ROLLBACK PREPARED end).
_OPEN_TRANSACTIONS_SQL = """
SELECT format('pid %s (%s for %s)', pid, state, date_trunc('second', now() - xact_start))
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
UNION ALL
SELECT format('prepared transaction %L (for %s)', gid, date_trunc('second', now() - prepared))
FROM pg_prepared_xacts
"""


class _SlotWait:
    """While a slot is being created: says on stderr what it waits for, every few seconds, and
    cancels the creation after `max_wait` seconds (None: waits as long as it takes)."""

    FIRST_REPORT_SECONDS = 5.0
    REPORT_EVERY_SECONDS = 15.0

    def __init__(self, dsn: str, creating, max_wait: Optional[float],
                 waiter: str = "snapshot") -> None:
        self.dsn, self.creating, self.max_wait, self.waiter = dsn, creating, max_wait, waiter
        self.done = threading.Event()
        self.gave_up = False
        self.last_seen = ""
        self.thread = threading.Thread(target=self._watch, name="slot-wait", daemon=True)

    def __enter__(self) -> "_SlotWait":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def _watch(self) -> None:
        started = time.monotonic()
        wait = self.FIRST_REPORT_SECONDS
        if self.max_wait is not None:
            wait = min(wait, self.max_wait)
        while not self.done.wait(wait):
            waited = time.monotonic() - started
            self.last_seen = self._open_transactions()
            print(f"{self.waiter}: waiting {waited:.0f} s for transactions open when it started "
                  "to end: "
                  f"{self.last_seen or 'none seen any more'}", file=sys.stderr, flush=True)
            if self.max_wait is not None and waited >= self.max_wait:
                self.gave_up = True
                self.creating.cancel()
                return
            wait = self.REPORT_EVERY_SECONDS
            if self.max_wait is not None:
                wait = max(min(wait, self.max_wait - waited), 0.1)

    def _open_transactions(self) -> str:
        try:
            conn = connect(self.dsn)
            try:
                with conn.cursor() as cur:
                    cur.execute(_OPEN_TRANSACTIONS_SQL)
                    return ", ".join(row[0] for row in cur.fetchall()[:5])
            finally:
                conn.close()
        except Exception:  # noqa: BLE001 - a report that cannot be made is not an error
            return ""


def create_slot(conn, slot_name: str, failover: bool = False) -> int:
    """Creates the pgoutput slot without a snapshot (a `failover` one: PostgreSQL 17+); returns
    its consistent point."""
    try:
        with conn.cursor() as cur:
            if failover:  # (name, plugin, temporary, two-phase, failover)
                cur.execute("SELECT lsn::text FROM pg_create_logical_replication_slot("
                            "%s, 'pgoutput', false, false, true)", (slot_name,))
            else:
                cur.execute(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                    (slot_name,),
                )
            return lsn_to_int(cur.fetchone()[0])
    except psycopg2.Error as e:
        raise _slot_error(e, slot_name) from None


def _slot_error(error: psycopg2.Error, slot_name: str, temporary: bool = False) -> Exception:
    message = describe_pg_error(error)
    if "all replication slots are in use" in message:
        what = (f"the temporary slot {slot_name!r} that gives a snapshot its exact hand-off"
                if temporary else f"slot {slot_name!r}")
        return SourceNotReadyError(
            f"cannot create {what}: all replication slots are in use "
            "(raise max_replication_slots or drop an unused slot)"
        )
    if "permission denied" in message or "must be superuser or replication" in message:
        return SourceNotReadyError(
            f"cannot create slot {slot_name!r}: the user needs the REPLICATION attribute ({message})"
        )
    if "wal_level" in message:
        return SourceNotReadyError(f"cannot create slot {slot_name!r}: {message}")
    return SlotError(f"cannot create slot {slot_name!r}: {message}")


def advance_slot(conn, slot_name: str, lsn: int) -> None:
    """Confirms the slot up to `lsn` (never backwards), releasing the WAL before it.

    Called only with an LSN whose changes the destination has committed.
    """
    slot = wait_until_inactive(conn, slot_name)
    if slot is None or slot.confirmed_flush_lsn is None or lsn <= slot.confirmed_flush_lsn:
        return
    with conn.cursor() as cur:
        cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                    (slot_name, int_to_lsn(lsn)))


def wait_until_inactive(conn, slot_name: str, timeout: float = 10.0) -> Optional[SlotInfo]:
    """The slot once no process streams from it.

    A walsender exits a moment after its client closed the connection, and the slot counts as
    active until then; a consumer that stays longer is someone else's.

    Raises:
        SlotInUseError: Still active after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        slot = get_slot(conn, slot_name)
        if slot is None or not slot.active:
            return slot
        if time.monotonic() >= deadline:
            raise SlotInUseError(
                f"slot {slot_name!r} is in use by another consumer "
                f"({_session_of(conn, slot.active_pid)})")
        time.sleep(0.02)


def _run_lock_key(cur, slot_name: str) -> int:
    cur.execute("SELECT hashtextextended(%s, 0)", ("pg_replication:" + slot_name,))
    return cur.fetchone()[0]


def run_lock_holder(conn, slot_name: str) -> Optional[int]:
    """The server PID of the session holding the run lock of `slot_name` (a running snapshot or
    cdc), or None."""
    with conn.cursor() as cur:
        key = _run_lock_key(cur, slot_name)
        # A bigint advisory key shows in pg_locks split into classid (high) and objid (low).
        cur.execute(
            """SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
               AND classid::bigint = %s AND objid::bigint = %s""",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        )
        row = cur.fetchone()
    return row[0] if row else None


def acquire_run_lock(conn, slot_name: str, wait: float = 0.0) -> None:
    """Takes a session advisory lock named after the slot, so two runs never overlap; tries for
    `wait` seconds (a run of `cdc --follow` holds it for one run at a time).

    Raises:
        SlotInUseError: Another run (snapshot or cdc) holds it.
    """
    deadline = time.monotonic() + wait
    with conn.cursor() as cur:
        key = _run_lock_key(cur, slot_name)
        while True:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            if cur.fetchone()[0]:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    pid = run_lock_holder(conn, slot_name)
    holder = f" ({_session_of(conn, pid)})" if pid else ""
    raise SlotInUseError(f"slot {slot_name!r} is in use by another run{holder}; try again later")


def _session_of(conn, pid: int) -> str:
    """A server session as an operator finds its process: our runs name theirs
    (connect.application_name); the server pid otherwise."""
    with conn.cursor() as cur:
        cur.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = cur.fetchone()
    name = row[0] if row else ""
    return f"{name}, server pid {pid}" if name else f"server pid {pid}"


def drop_slot(conn, slot_name: str) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot_name,),
        )


def drop_publications(conn, pub_name: str) -> None:
    with conn.cursor() as cur:
        for name in (pub_name, pub_name + INSERT_ONLY_SUFFIX):
            cur.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))

