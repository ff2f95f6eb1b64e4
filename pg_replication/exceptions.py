"""Errors raised by the replication package, one class per failure a user can act on.

The CLI maps each class to its own exit code; messages are one readable line and never contain a
password (see `mask_secrets`).
"""

import re
import shlex
from typing import Iterable


def snapshot_command(names: Iterable[str]) -> str:
    """The `snapshot --tables` command that copies these tables, as a user can paste it into a
    shell (a name with a space or a quote is quoted), between backquotes."""
    return f"`snapshot --tables {shlex.quote(','.join(names))}`"


class ReplicationError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ReplicationError):
    """Configuration is missing or invalid (credentials, table names, slot name...)."""


class SourceConnectionError(ReplicationError):
    """The source database cannot be reached or refuses the login."""


class SourceNotReadyError(ReplicationError):
    """The source server is reachable but cannot replicate (wal_level, slots, privileges)."""


class SlotError(ReplicationError):
    """The replication slot is missing, invalidated or in use by another run."""


class SlotInUseError(SlotError):
    """Another run holds the slot."""


class CopyMissingError(ReplicationError):
    """The destination lacks a table's copy that the change stream would build on."""


class DecodeError(ReplicationError):
    """A pgoutput message could not be decoded."""


class LoadError(ReplicationError):
    """The destination failed to take the data; the slot was not advanced."""


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
