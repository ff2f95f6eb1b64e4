"""Reading from a physical standby (PostgreSQL 16+): the source URL may point at a hot standby
that streams from the primary, so decoding runs off the primary's load.

A standby decodes the WAL it has replayed, and the slot lives there. What needs the primary goes
to `primary_credentials` (optional):

- a heartbeat (the position a run reads up to): written on the primary, then awaited on the
  standby; without a primary, a run reads up to the standby's replay position;
- creating or extending the publications (a standby is read-only): without a primary they must
  exist already, covering the tables (an admin creates them on the primary);
- the counts of UPDATE and DELETE of tables without a key (insert_only.py): a standby's statistics
  do not count the primary's writes, so without a primary such tables are refused;
- a standby snapshot record (`pg_log_standby_snapshot()`), which creating a slot on a standby
  waits for; without a primary the primary writes one every 15 s while it is busy.

Online copies (chunks.py) write watermarks and need the reads to follow them in commit order:
they are refused on a standby.
"""

import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import psycopg2

from .connect import connect
from .exceptions import SourceNotReadyError
from .protocol import lsn_to_int

STANDBY_DECODING_SINCE = 160000  # server_version
REPLAY_WAIT_SECONDS = 30.0  # how long a heartbeat written on the primary is awaited


def is_standby(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        return bool(cur.fetchone()[0])


def check_standby(conn) -> None:
    """On a standby, raises SourceNotReadyError when it cannot decode (before PostgreSQL 16, or
    without `hot_standby_feedback`, with which the primary would remove rows the slot still
    needs and the server would invalidate it)."""
    if not is_standby(conn):
        return
    if conn.server_version < STANDBY_DECODING_SINCE:
        raise SourceNotReadyError(
            "the source is a standby, and logical decoding on a standby needs PostgreSQL 16 or "
            f"later (it runs {conn.server_version // 10000}): point the source at the primary")
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('hot_standby_feedback')")
        (feedback,) = cur.fetchone()
    if feedback != "on":
        raise SourceNotReadyError(
            "the source is a standby with hot_standby_feedback = off, so the primary may remove "
            "rows the slot still needs (and the slot is invalidated): set hot_standby_feedback = "
            "on on the standby (a reload is enough)")


@contextmanager
def primary_connection(conn, primary_dsn: Optional[str]) -> Iterator[Optional[object]]:
    """Where writes and the primary's statistics go: `conn` itself on a primary; on a standby a
    connection to `primary_dsn`, or None without one."""
    if not is_standby(conn):
        yield conn
        return
    if not primary_dsn:
        yield None
        return
    primary = connect(primary_dsn)
    try:
        if is_standby(primary):
            raise SourceNotReadyError("primary_credentials point at a standby too: point them "
                                      "at the primary")
        yield primary
    finally:
        primary.close()


def wait_for_replay(conn, lsn: int, timeout: float = REPLAY_WAIT_SECONDS) -> bool:
    """Waits until the standby has replayed WAL up to `lsn`; False when it did not in time."""
    deadline = time.monotonic() + timeout
    while True:
        if replay_lsn(conn) >= lsn:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def replay_lsn(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_last_wal_replay_lsn()::text")
        (lsn,) = cur.fetchone()
    return lsn_to_int(lsn) if lsn else 0


def log_standby_snapshot(primary_dsn: Optional[str]) -> None:
    """Asks the primary for the record a slot being created on a standby waits for; best effort
    (the role may lack the right, the primary writes one every 15 s anyway while busy)."""
    if not primary_dsn:
        return
    try:
        primary = connect(primary_dsn)
    except Exception:  # noqa: BLE001 - the slot creation reports what it waits for
        return
    try:
        with primary.cursor() as cur:
            cur.execute("SELECT pg_log_standby_snapshot()")
    except psycopg2.Error:
        pass
    finally:
        primary.close()


def refuse_on_standby(conn, what: str) -> None:
    """Raises SourceNotReadyError naming `what` cannot run on a standby."""
    if is_standby(conn):
        raise SourceNotReadyError(f"{what} cannot run on a standby: point the source at the "
                                  "primary for it")


@contextmanager
def standby_snapshots(conn, primary_dsn: Optional[str]) -> Iterator[None]:
    """While a slot is created inside the block on a standby: asks the primary for the standby
    snapshot record the creation waits for, soon and then every few seconds."""
    if not primary_dsn or not is_standby(conn):
        yield
        return
    done = threading.Event()

    def ask() -> None:
        wait = 0.3
        while not done.wait(wait):
            log_standby_snapshot(primary_dsn)
            wait = 3.0

    thread = threading.Thread(target=ask, name="standby-snapshot", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
