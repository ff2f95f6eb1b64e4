"""Reading a logical replication slot with psycopg2, bounded by a stop position and a deadline.

This module gives the server no LSN to confirm: confirming happens after the destination has
committed (slots.advance_slot). One exception it cannot prevent (tests/test_stream_feedback.py):
psycopg2 (>= 2.8.3) moves its flush position to the WAL end of keepalives received before the
first data message, and reports it; that confirms only WAL with no output for the publications yet
(a transaction committing later is decoded again), never a change the destination lacks.
"""

import select
import time
from typing import Callable, Iterator, Optional, Sequence, Tuple

import psycopg2

from .connect import connect, describe_pg_error
from .exceptions import SlotError, SlotInUseError
from .protocol import Message, decode_message, lsn_to_int

POLL_SECONDS = 0.2
_BEGIN, _COMMIT, _STREAM_START, _STREAM_STOP = b"BCSE"
# With nothing arriving and the server's sent position not moving for this long, the slot has
# nothing more for us: the stop position may sit in a page header the decoder never "reaches".
IDLE_SECONDS = 1.5
# With a stop position the server is known to send (a message the run wrote, or the rest of a
# transaction a load split), silence means it is still decoding: a large transaction decoded
# again from the slot's restart_lsn, or WAL far behind it. Waited for this long before the run
# gives up and says so (the idle cut-off above would end it quietly short of the stop).
STALL_SECONDS = 120.0
# How long a slot may stay "active" after our own previous connection to it closed.
SLOT_RELEASE_SECONDS = 5.0


class ReplicationStream:
    """Messages of one slot from its confirmed position until `stop_lsn` (or a deadline).

    Args:
        dsn (str): Source connection.
        slot_name (str): The pgoutput slot.
        publication_names (Sequence[str]): Publications to decode.
        stop_lsn (int): Stop at the first transaction boundary once the server has sent WAL up to
            here (normally pg_current_wal_lsn() at the start of the run).
        deadline (float): time.monotonic() after which to stop at the next transaction boundary.
        stop_requested: Returns True to stop at the next transaction boundary (SIGTERM).
        messages (bool): Also send the logical messages written with pg_logical_emit_message
            (PostgreSQL 14+): the watermarks of an online copy (chunks.py).
        patient (bool): The server will send WAL up to `stop_lsn`: wait STALL_SECONDS of silence
            (then `stalled` is set) rather than IDLE_SECONDS.
    """

    def __init__(self, dsn: str, slot_name: str, publication_names: Sequence[str], stop_lsn: int,
                 deadline: Optional[float] = None,
                 stop_requested: Callable[[], bool] = lambda: False,
                 messages: bool = False, patient: bool = False) -> None:
        self.dsn = dsn
        self.idle_seconds = STALL_SECONDS if patient else IDLE_SECONDS
        self.patient = patient
        self.stalled = False  # went silent for idle_seconds before reaching stop_lsn
        self.with_logical_messages = messages  # the online copy's watermarks
        self.slot_name = slot_name
        self.publication_names = list(publication_names)
        self.stop_lsn = stop_lsn
        self.deadline = deadline
        self.stop_requested = stop_requested
        self.in_transaction = False
        self.wal_end = 0  # what the server says it has sent up to
        self.received_bytes = 0  # of decoded messages, for the byte bound on buffered rows
        self._conn = None
        self._cursor = None

    def __enter__(self) -> "ReplicationStream":
        deadline = time.monotonic() + SLOT_RELEASE_SECONDS
        while True:
            try:
                self._start()
                return self
            except SlotInUseError:
                # The previous segment's walsender may still be exiting; anyone else's stays.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _start(self) -> None:
        self._conn = connect(self.dsn, replication=True)
        self._cursor = self._conn.cursor()
        options = {"proto_version": "1", "publication_names": ",".join(self.publication_names)}
        if self.with_logical_messages:  # PostgreSQL 14+
            options["messages"] = "true"
        try:
            self._cursor.start_replication(slot_name=self.slot_name, decode=False,
                                           options=options)
        except psycopg2.Error as e:
            message = describe_pg_error(e)
            self.close()
            if "is active for PID" in message:
                raise SlotInUseError(f"slot {self.slot_name!r} is in use: {message}") from None
            if "does not exist" in message:
                raise SlotError(
                    f"slot {self.slot_name!r} does not exist; run `snapshot` to create it"
                ) from None
            raise SlotError(f"cannot read slot {self.slot_name!r}: {message}") from None

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def messages(self) -> Iterator[Tuple[int, Message]]:
        """Yields (WAL position of the message, decoded message) until the stop condition.

        Between transactions it stops once the server has sent everything up to `stop_lsn`, once
        the slot is idle, or after the deadline. Inside a transaction it always reads on to its end.
        A transaction whose commit lies beyond `stop_lsn` is still yielded by its Begin; the
        consumer decides whether to take it (see changes.read_changes).
        """
        cursor = self._cursor
        read = cursor.read_message
        in_stream = False
        received = False
        last_progress = time.monotonic()
        last_reply_request = 0.0
        while True:
            message = read()
            if message is not None:
                payload = message.payload
                self.received_bytes += len(payload)
                decoded = decode_message(payload, in_stream)
                tag = payload[0]
                if tag == _BEGIN:
                    self.in_transaction = True
                elif tag == _COMMIT:
                    self.in_transaction = False
                elif tag == _STREAM_START:
                    in_stream = True
                elif tag == _STREAM_STOP:
                    in_stream = False
                received = True
                yield message.data_start, decoded
                continue
            now = time.monotonic()
            if received:
                last_progress, received = now, False
            if cursor.wal_end > self.wal_end:
                self.wal_end = cursor.wal_end
                last_progress = now
            if not self.in_transaction and self._should_stop(now, last_progress):
                return
            if now - last_reply_request > POLL_SECONDS:
                cursor.send_feedback(reply=True)  # asks for a keepalive carrying the sent position
                last_reply_request = now
            select.select([cursor], [], [], POLL_SECONDS)

    def _should_stop(self, now: float, last_progress: float) -> bool:
        if self.wal_end >= self.stop_lsn:
            return True
        if self.deadline is not None and now >= self.deadline:
            return True
        if self.stop_requested():
            return True
        if now - last_progress >= self.idle_seconds:
            self.stalled = self.patient
            return True
        return False


def emit_heartbeat(conn) -> Optional[int]:
    """Writes a tiny non-transactional logical message, so an idle slot has a position to reach.

    Returns its LSN, or None when the role may not call pg_logical_emit_message.
    """
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(false, 'pg_replication', 'heartbeat')::text")
            return lsn_to_int(cur.fetchone()[0])
    except psycopg2.Error:
        return None


def emit_watermark(conn, content: str) -> int:
    """Writes a non-transactional logical message (an online copy's watermark, chunks.py) and
    returns the WAL position after it: a transaction commits after the message exactly when its
    commit LSN is at or past this position."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_logical_emit_message(false, %s, %s)::text",
                    (WATERMARK_PREFIX, content))
        return lsn_to_int(cur.fetchone()[0])


WATERMARK_PREFIX = "pg_replication_online"
