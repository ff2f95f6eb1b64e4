"""How far one run reads: the bounds a caller sets, carried down to the decoder in one object."""

import time
from dataclasses import dataclass, replace
from typing import Callable, Optional


@dataclass(frozen=True)
class RunBounds:
    """A run stops reading at the first commit after one of these is reached.

    Args:
        max_changes (Optional[int]): this many changes read.
        max_seconds (Optional[float]): this many seconds spent reading, counted from `started()`.
        stop_requested (Optional[Callable[[], bool]]): returns True when the run should stop
            (SIGTERM during `cdc --follow`).
        stop_lsn (Optional[int]): a transaction committing after this WAL position is left for
            the next run; default: the server's position when the run starts reading.
        deadline (Optional[float]): `time.monotonic()` at which `max_seconds` are up (`started()`).
        stop_written (bool): `stop_lsn` is a message the run wrote (a heartbeat, a watermark):
            the server will send WAL up to it, so the stream waits for it (stream.STALL_SECONDS).
    """

    max_changes: Optional[int] = None
    max_seconds: Optional[float] = None
    stop_requested: Optional[Callable[[], bool]] = None
    stop_lsn: Optional[int] = None
    deadline: Optional[float] = None
    stop_written: bool = False

    def started(self, stop_lsn: Optional[int] = None, stop_written: bool = False) -> "RunBounds":
        """The bounds from now on: `max_seconds` become a deadline (once: a run of several
        segments keeps the first), and the stop position is fixed."""
        deadline = self.deadline
        if deadline is None and self.max_seconds:
            deadline = time.monotonic() + self.max_seconds
        if stop_lsn:
            return replace(self, deadline=deadline, stop_lsn=stop_lsn, stop_written=stop_written)
        return replace(self, deadline=deadline)

    def after(self, changes: int) -> "RunBounds":
        """What is left for the next segment once `changes` were read."""
        if self.max_changes is None:
            return self
        return replace(self, max_changes=self.max_changes - changes)

    def stop_was_requested(self) -> bool:
        return self.stop_requested is not None and self.stop_requested()

    def should_stop(self) -> bool:
        """A stop was requested or the deadline passed (checked at each commit)."""
        return self.stop_was_requested() or (self.deadline is not None
                                             and time.monotonic() >= self.deadline)
