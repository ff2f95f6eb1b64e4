"""Errors raised by the replication package, one class per failure a user can act on, and the
CLI's exit codes.

Each class carries its exit code; messages are one readable line and never contain a password
(see `mask_secrets`).
"""

import re
import shlex
import textwrap
from enum import IntEnum
from typing import Any, Iterable, List


# The one definition of the CLI's exit codes: number, name, and the meaning `--help` shows
# (exit_codes_help); the error classes below and the commands use the names.
_EXIT_CODE_TABLE = """
 0 SUCCESS            success
 1 UNEXPECTED         unexpected error (run with --debug for the traceback)
 2 CONFIG             configuration error (credentials, table names, slot name, config file)
 3 SOURCE_CONNECTION  cannot connect to the source database
 4 SOURCE_NOT_READY   source not ready for logical replication (wal_level, slots, privileges)
 5 SLOT_IN_USE        the slot is in use by another run
 6 SLOT               slot missing, invalidated or unusable
 7 LOAD               the destination failed to load; the slot was not advanced
 8 DECODE             a replication message could not be decoded
 9 CHECK_FAILED       status/verify: a check failed (lag above --max-lag-mb, last run failed,
                      verify --data: a table differs, ...)
10 COPY_MISSING       a table's copy is missing from the destination (never loaded, or lost), or
                      a schema change needs a new copy: run the snapshot the message names
"""


def _exit_code_rows(table: str) -> List[List[str]]:
    """[number, name, meaning] per code; an indented line continues the meaning above it."""
    rows: List[List[str]] = []
    for line in table.strip("\n").splitlines():
        if line.startswith("      "):
            rows[-1][2] += " " + line.strip()
        else:
            rows.append(line.split(maxsplit=2))
    return rows


_EXIT_CODE_ROWS = _exit_code_rows(_EXIT_CODE_TABLE)
_MEANINGS = {name: meaning for _, name, meaning in _EXIT_CODE_ROWS}


class _ExitCodeMeaning(IntEnum):
    @property
    def meaning(self) -> str:
        """The line `--help` shows for this code."""
        return _MEANINGS[self.name]


ExitCode = _ExitCodeMeaning(
    "ExitCode", [(name, int(number)) for number, name, _ in _EXIT_CODE_ROWS], module=__name__)


def exit_codes_help() -> str:
    """The exit-code table of `--help`: a number and its meaning a line (wrapped under the
    meaning). It starts with click's `\\b`, which keeps click from re-wrapping the lines."""
    lines = ["\b", "Exit codes:"]
    for code in ExitCode:
        lines.append(textwrap.fill(code.meaning, width=88, initial_indent=f"{code.value:>3}  ",
                                   subsequent_indent=" " * 5))
    return "\n".join(lines) + "\n"


def snapshot_command(names: Iterable[str], online: bool = False) -> str:
    """The `snapshot --tables` command that copies these tables, as a user can paste it into a
    shell (a name with a space or a quote is quoted), between backquotes; `online`: the one that
    copies them online."""
    option = "--online " if online else ""
    return f"`snapshot {option}--tables {shlex.quote(','.join(names))}`"


class ReplicationError(Exception):
    """Base class of every error this package raises on purpose; each subclass names its exit
    code (`class ConfigError(ReplicationError, exit_code=ExitCode.CONFIG)`).

    Raised as such only for states that should not happen: the CLI reports it like any
    unexpected error, with its class name.
    """

    exit_code = ExitCode.UNEXPECTED

    def __init_subclass__(cls, exit_code: ExitCode = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class ConfigError(ReplicationError, exit_code=ExitCode.CONFIG):
    """Configuration is missing or invalid (credentials, table names, slot name...)."""


class SourceConnectionError(ReplicationError, exit_code=ExitCode.SOURCE_CONNECTION):
    """The source database cannot be reached or refuses the login."""


class SourceNotReadyError(ReplicationError, exit_code=ExitCode.SOURCE_NOT_READY):
    """The source server is reachable but cannot replicate (wal_level, slots, privileges)."""


class SlotError(ReplicationError, exit_code=ExitCode.SLOT):
    """The replication slot is missing, invalidated or in use by another run."""


class SlotInUseError(SlotError, exit_code=ExitCode.SLOT_IN_USE):
    """Another run holds the slot."""


class CopyMissingError(ReplicationError, exit_code=ExitCode.COPY_MISSING):
    """The destination lacks a table's copy that the change stream would build on."""


class DecodeError(ReplicationError, exit_code=ExitCode.DECODE):
    """A pgoutput message could not be decoded."""


class LoadError(ReplicationError, exit_code=ExitCode.LOAD):
    """The destination failed to take the data; the slot was not advanced."""

    @classmethod
    def during(cls, step: str, line: str) -> "LoadError":
        """What failed, and that running the command again is safe."""
        return cls(f"the destination failed during {step}: {line}; the slot was not advanced: "
                   "run the command again once the destination works")

    @classmethod
    def refused(cls, refused: List[str], held: List[str], line: str) -> "LoadError":
        """The destination refused a pending load for good: running again repeats it
        (pending_loads)."""
        tables = "table" + ("s " if len(refused) > 1 else " ") + ", ".join(refused)
        return cls(f"the destination refused the load of {tables} for good ({line}); the slot "
                   "was not advanced, and running again repeats the refusal: restore what was "
                   f"changed in the destination and run again, or run {snapshot_command(held)}, "
                   "which sets this load aside and copies the tables it held again")


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_TOKEN = re.compile(r"(access_token\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)", re.IGNORECASE)


def mask_secrets(text: str, secrets: tuple = ()) -> str:
    """Replaces passwords in URLs and `password=` pairs, and every known secret value, with `***`."""
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    text = _KEYWORD_PASSWORD.sub(r"\1***", text)
    text = _TOKEN.sub(r"\1***", text)
    for secret in secrets:
        if secret and len(str(secret)) >= 3:
            text = text.replace(str(secret), "***")
    return text


def text_lines(text: str) -> List[str]:
    """The lines of an error's text that say something: stripped, blank ones left out."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def essential_line(error: BaseException) -> str:
    """The line of an exception's text that says what went wrong (not a traceback header)."""
    lines = text_lines(str(error))
    if not lines:
        return type(error).__name__
    if any("Traceback (most recent call last)" in line for line in lines):
        # The last line that names an error says what happened; lines after it are advice
        # (DuckDB's "Possible solutions: ...", "See also https://...").
        said = [line for line in lines if re.search(r"(Error|Exception)\b.*:", line)
                and not line.startswith("File ")]
        line = (said or lines)[-1]
    else:
        line = lines[0]
    if "out of memory" in line.lower() and "memory_limit" not in line:
        line += (" (out of memory: for the local DuckDB raise `memory_limit` in "
                 "destination.duckdb.credentials.global_config; see the README's Performance)")
    return line
