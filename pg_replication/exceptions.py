"""Errors raised by the replication package, one class per failure a user can act on, and the
CLI's exit codes.

Each class carries its exit code; messages are one readable line and never contain a password
(see `mask_secrets`).
"""

import re
import shlex
import textwrap
from enum import IntEnum
from typing import Iterable


class ExitCode(IntEnum):
    """The CLI's exit codes: the one definition `--help`, the error classes and the commands use.

    Each member carries its meaning, the line `--help` shows for it (`exit_codes_help`)."""

    meaning: str

    def __new__(cls, value: int, meaning: str) -> "ExitCode":
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    SUCCESS = 0, "success"
    UNEXPECTED = 1, "unexpected error (run with --debug for the traceback)"
    CONFIG = 2, "configuration error (credentials, table names, slot name, config file)"
    SOURCE_CONNECTION = 3, "cannot connect to the source database"
    SOURCE_NOT_READY = 4, ("source not ready for logical replication (wal_level, slots, "
                           "privileges)")
    SLOT_IN_USE = 5, "the slot is in use by another run"
    SLOT = 6, "slot missing, invalidated or unusable"
    LOAD = 7, "the destination failed to load; the slot was not advanced"
    DECODE = 8, "a replication message could not be decoded"
    CHECK_FAILED = 9, ("status/verify: a check failed (lag above --max-lag-mb, last run failed, "
                       "...)")
    COPY_MISSING = 10, ("a table's copy is missing from the destination (never loaded, or lost), "
                        "or a schema change needs a new copy: run the snapshot the message names")


def exit_codes_help() -> str:
    """The exit-code table of `--help`: a number and its meaning a line (wrapped under the
    meaning). It starts with click's `\\b`, which keeps click from re-wrapping the lines."""
    lines = ["\b", "Exit codes:"]
    for code in ExitCode:
        lines.append(textwrap.fill(code.meaning, width=88, initial_indent=f"{code.value:>3}  ",
                                   subsequent_indent=" " * 5))
    return "\n".join(lines) + "\n"


def snapshot_command(names: Iterable[str]) -> str:
    """The `snapshot --tables` command that copies these tables, as a user can paste it into a
    shell (a name with a space or a quote is quoted), between backquotes."""
    return f"`snapshot --tables {shlex.quote(','.join(names))}`"


class ReplicationError(Exception):
    """Base class of every error this package raises on purpose.

    Raised as such only for states that should not happen: the CLI reports it like any
    unexpected error, with its class name.
    """

    exit_code = ExitCode.UNEXPECTED


class ConfigError(ReplicationError):
    """Configuration is missing or invalid (credentials, table names, slot name...)."""

    exit_code = ExitCode.CONFIG


class SourceConnectionError(ReplicationError):
    """The source database cannot be reached or refuses the login."""

    exit_code = ExitCode.SOURCE_CONNECTION


class SourceNotReadyError(ReplicationError):
    """The source server is reachable but cannot replicate (wal_level, slots, privileges)."""

    exit_code = ExitCode.SOURCE_NOT_READY


class SlotError(ReplicationError):
    """The replication slot is missing, invalidated or in use by another run."""

    exit_code = ExitCode.SLOT


class SlotInUseError(SlotError):
    """Another run holds the slot."""

    exit_code = ExitCode.SLOT_IN_USE


class CopyMissingError(ReplicationError):
    """The destination lacks a table's copy that the change stream would build on."""

    exit_code = ExitCode.COPY_MISSING


class DecodeError(ReplicationError):
    """A pgoutput message could not be decoded."""

    exit_code = ExitCode.DECODE


class LoadError(ReplicationError):
    """The destination failed to take the data; the slot was not advanced."""

    exit_code = ExitCode.LOAD


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
