"""Failover slots (PostgreSQL 17+): a logical slot created with `failover` is synchronized to
physical standbys that run with `sync_replication_slots = on`, so it survives a promotion and
`cdc` goes on from the new primary instead of needing a new snapshot.

The setting `failover` (settings.py) is True, False or None (the default: on when the server has a
standby configured for it, that is `synchronized_standby_slots` names at least one physical slot,
else off). The slot is created with the wanted value, and an existing slot is changed to it with
`ALTER_REPLICATION_SLOT` (which needs the slot idle: it is, before a run reads). Left to the
default, an existing failover slot is never turned off. Before PostgreSQL 17 there are no failover
slots: asking for one is refused, the default is off.
"""

from typing import Optional

import psycopg2
from psycopg2 import sql

from .connect import connect, describe_pg_error
from .exceptions import SourceNotReadyError
from .slots import get_slot, wait_until_inactive
from .standby import is_standby

FAILOVER_SINCE = 170000  # server_version


def wanted_failover(conn, setting: Optional[bool]) -> bool:
    """Whether the pipeline's slot should be a failover slot on this server.

    Raises:
        SourceNotReadyError: `failover = true` on a server older than PostgreSQL 17.
    """
    if conn.server_version < FAILOVER_SINCE:
        if setting:
            raise SourceNotReadyError(
                f"failover = true needs PostgreSQL 17 or later (the server is "
                f"{conn.server_version // 10000}): set failover = false, or leave it unset")
        return False
    if is_standby(conn):  # a slot created on a standby cannot be a failover slot
        if setting:
            raise SourceNotReadyError(
                "failover = true: the source is a standby, where a slot cannot be a failover "
                "slot (PostgreSQL synchronizes failover slots from the primary): set failover = "
                "false, or point the source at the primary")
        return False
    if setting is not None:
        return setting
    return standby_configured(conn)


def standby_configured(conn) -> bool:
    """The server waits for a physical standby before it sends a failover slot's changes."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('synchronized_standby_slots', true)")
        (value,) = cur.fetchone()
    return bool((value or "").strip())


def align_failover(conn, dsn: str, slot_name: str, setting: Optional[bool]) -> None:
    """Makes the existing slot a failover slot, or not, as wanted (see the module docstring).

    Raises:
        SourceNotReadyError: The role may not change the slot, or the server is too old for an
            explicit `failover = true`.
    """
    wanted = wanted_failover(conn, setting)
    slot = get_slot(conn, slot_name)
    if slot is None or slot.failover is None or slot.failover == wanted:
        return
    if setting is None and not wanted:
        return  # the default never turns off what someone turned on
    wait_until_inactive(conn, slot_name)  # the previous run's walsender may still be exiting
    replication = connect(dsn, replication=True)
    try:
        with replication.cursor() as cur:
            cur.execute(sql.SQL("ALTER_REPLICATION_SLOT {} (FAILOVER {})").format(
                sql.Identifier(slot_name), sql.SQL("true" if wanted else "false")))
    except psycopg2.Error as e:
        raise SourceNotReadyError(f"cannot set failover = {str(wanted).lower()} on slot "
                                  f"{slot_name!r}: {describe_pg_error(e)}") from None
    finally:
        replication.close()


# The physical slots a server waits for before it sends a failover slot's changes, and the state
# of each (missing, invalidated, or no standby connected to it).
_STANDBY_SLOTS_SQL = """
SELECT name, s.slot_type, s.active, s.wal_status
FROM unnest(string_to_array(current_setting('synchronized_standby_slots', true), ',')) AS name
LEFT JOIN pg_replication_slots s ON s.slot_name = btrim(name)
"""


def unguarded_failover_problem(conn, slot_name: str) -> Optional[str]:
    """A failover slot on a server whose `synchronized_standby_slots` names no standby: the
    pipeline may load transactions a standby has not received, which a promotion then loses on
    the source side while the destination keeps them. Reported by `status` (a monitor alerts)."""
    slot = get_slot(conn, slot_name)
    if slot is None or not slot.failover or standby_configured(conn):
        return None
    return (f"slot {slot_name!r} is a failover slot, but synchronized_standby_slots names no "
            "standby: after a promotion the destination may hold transactions the new primary "
            "does not have; have an admin set synchronized_standby_slots to the standby's "
            "physical slot")


def standby_wait_problem(conn, slot_name: str) -> Optional[str]:
    """Why the server would hold the failover slot's changes back, or None.

    PostgreSQL sends a failover slot's changes only once the standbys of
    `synchronized_standby_slots` have received them. With a standby down, a run would read
    nothing and look idle while changes wait; this says so, with the ways out.
    """
    slot = get_slot(conn, slot_name)
    if slot is None or not slot.failover:
        return None
    with conn.cursor() as cur:
        cur.execute(_STANDBY_SLOTS_SQL)
        rows = cur.fetchall()
    waiting = [f"{name.strip()} ({_standby_slot_state(kind, active, wal_status)})"
               for name, kind, active, wal_status in rows
               if name.strip() and not (kind == "physical" and active and wal_status != "lost")]
    if not waiting:
        return None
    return (f"slot {slot_name!r} is a failover slot, and the server sends its changes only once "
            f"the standby slot(s) of synchronized_standby_slots have them: {', '.join(waiting)}; "
            "start the standby, or have an admin take its slot out of synchronized_standby_slots, "
            "or set failover = false (the next run makes the slot an ordinary one)")


def _standby_slot_state(kind: Optional[str], active: Optional[bool],
                        wal_status: Optional[str]) -> str:
    if kind is None:
        return "no such slot"
    if kind != "physical":
        return "not a physical slot"
    if wal_status == "lost":
        return "invalidated"
    return "no standby connected" if not active else "in use"
