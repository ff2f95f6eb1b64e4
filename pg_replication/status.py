"""What `status` reports: the slot as the server sees it, and the pipeline's last run."""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .protocol import int_to_lsn
from .exceptions import SlotError, snapshot_command
from .online import CopyProgress
from .slots import (check_slot_usable, current_database, current_wal_lsn, existing_publications,
                    get_slot, publication_tables)

RUN_RECORD_FILE = "last_run.json"


@dataclass
class StatusReport:
    slot_name: str
    slot_exists: bool
    active: bool = False
    active_pid: Optional[int] = None
    confirmed_flush_lsn: Optional[str] = None
    lag_bytes: Optional[int] = None  # WAL written since the slot's confirmed position
    retained_wal_bytes: Optional[int] = None  # WAL the server keeps for the slot (restart_lsn)
    wal_status: Optional[str] = None
    safe_wal_size: Optional[int] = None
    failover: Optional[bool] = None  # PostgreSQL 17+: a failover slot (None: older server)
    publications: Dict[str, List[str]] = field(default_factory=dict)
    # The replicated tables of each configured schema, and where each lands in the destination
    # (names.py): `orders -> sales__orders`.
    tables: Dict[str, List[str]] = field(default_factory=dict)
    last_loaded_lsn: Optional[str] = None
    last_run: Optional[Dict[str, Any]] = None
    problems: List[str] = field(default_factory=list)
    not_replicated: List[str] = field(default_factory=list)  # tables `snapshot --tables` adds
    not_replicable: List[str] = field(default_factory=list)  # why others cannot be added
    running_pid: Optional[int] = None  # server PID of a snapshot or cdc running now
    pending_packages: int = 0  # loads a killed or failed run left; the next run loads them first
    slot_usable: bool = True  # False: another plugin's slot, or another database's
    destination_checked: bool = True  # False: a run had the local DuckDB file open
    online_copies: List[CopyProgress] = field(default_factory=list)  # in progress (chunks.py)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def to_text(self) -> str:
        rows = [
            ("slot", self.slot_name),
            ("exists", _yes_no(self.slot_exists)),
            ("active", f"yes (pid {self.active_pid})" if self.active else "no"),
            ("confirmed_flush_lsn", self.confirmed_flush_lsn or "-"),
            ("lag", _bytes(self.lag_bytes)),
            ("WAL retained", _bytes(self.retained_wal_bytes)),
            ("wal_status", self.wal_status or "-"),
            ("safe_wal_size", _bytes(self.safe_wal_size)),
            ("failover", "-" if self.failover is None else _yes_no(self.failover)),
        ]
        for name, tables in self.publications.items():
            rows.append((f"publication {name}", ", ".join(tables) or "(no tables)"))
        for schema, tables in self.tables.items():
            rows.append((f"tables in {schema}", ", ".join(tables) or "(none)"))
        if self.not_replicated:
            rows.append(("not replicated", ", ".join(self.not_replicated)
                         + f" ({snapshot_command(self.not_replicated)} adds them)"))
        for line in self.not_replicable:
            rows.append(("not replicated", line))
        rows.append(("last loaded LSN", self.last_loaded_lsn or "-"))
        for progress in self.online_copies:
            rows.append(("online copy", progress.line()))
        if self.pending_packages:
            rows.append(("pending", f"{self.pending_packages} load package(s) a killed or failed "
                                    "run left: the next cdc or snapshot loads them first"))
        if self.running_pid:
            rows.append(("running", f"a snapshot or cdc (server pid {self.running_pid})"))
        if not self.destination_checked:
            rows.append(("destination", "not read: a run has the DuckDB file open (DuckDB lets "
                                        "one process open it at a time)"))
        if self.last_run:
            run = self.last_run
            rows.append(("last run", f"{run.get('command')} {run.get('outcome')} at "
                                     f"{run.get('finished_at')}: {run.get('summary', '')}"))
        else:
            rows.append(("last run", "-"))
        width = max(len(name) for name, _ in rows)
        lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
        lines += [f"problem: {problem}" for problem in self.problems]
        return "\n".join(lines)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _bytes(value: Optional[int]) -> str:
    if value is None:
        return "-"
    return f"{value} bytes ({value / (1 << 20):.1f} MB)"


def collect_status(conn, slot_name: str, pub_name: str, last_loaded_lsn: Optional[int],
                   last_run: Optional[Dict[str, Any]], max_lag_mb: Optional[float]) -> StatusReport:
    """Reads the slot and publications; `problems` lists what should make a monitor alert."""
    report = StatusReport(slot_name, slot_exists=False, last_run=last_run)
    report.last_loaded_lsn = int_to_lsn(last_loaded_lsn) if last_loaded_lsn else None
    for name in existing_publications(conn, pub_name):
        report.publications[name] = [f"{schema}.{table}"
                                     for schema, table in publication_tables(conn, name)]
    slot = get_slot(conn, slot_name)
    if slot is None:
        report.problems.append(f"slot {slot_name!r} does not exist (run `snapshot`)")
        return report
    current = current_wal_lsn(conn)
    report.slot_exists = True
    report.active, report.active_pid = slot.active, slot.active_pid
    report.wal_status, report.safe_wal_size = slot.wal_status, slot.safe_wal_size
    report.failover = slot.failover
    if slot.confirmed_flush_lsn is not None:
        report.confirmed_flush_lsn = int_to_lsn(slot.confirmed_flush_lsn)
        report.lag_bytes = max(current - slot.confirmed_flush_lsn, 0)
    if slot.restart_lsn is not None:
        report.retained_wal_bytes = max(current - slot.restart_lsn, 0)
    if slot.wal_status == "lost":
        report.problems.append(
            f"slot {slot_name!r} was invalidated (wal_status=lost): run `snapshot` again")
    else:
        try:  # credentials for another database on the same server see the slot too
            check_slot_usable(slot, slot_name, current_database(conn))
        except SlotError as e:
            report.slot_usable = False
            report.problems.append(str(e))
    if max_lag_mb is not None and report.lag_bytes is not None \
            and report.lag_bytes > max_lag_mb * (1 << 20):
        report.problems.append(f"lag {report.lag_bytes} bytes exceeds {max_lag_mb} MB")
    if last_run and last_run.get("outcome") == "failed":
        report.problems.append(f"last {last_run.get('command')} run failed: "
                               f"{last_run.get('summary')}")
    return report


def record_run(working_dir: str, command: str, outcome: str, summary: str) -> None:
    """Keeps the time and outcome of the last run beside the pipeline's state (for `status`)."""
    path = Path(working_dir) / RUN_RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "outcome": outcome, "summary": summary,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(record))


def read_run_record(working_dir: str) -> Optional[Dict[str, Any]]:
    path = Path(working_dir) / RUN_RECORD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
