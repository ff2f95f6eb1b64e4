"""Turns any exception a run can raise into one readable line and an exit code."""

import re
from typing import Optional, Tuple

from .exceptions import (ConfigError, CopyMissingError, DecodeError, LoadError, ReplicationError,
                         SlotError, SlotInUseError, SourceConnectionError, SourceNotReadyError,
                         mask_secrets)

EXIT_CODES = {
    ConfigError: 2,
    SourceConnectionError: 3,
    SourceNotReadyError: 4,
    SlotInUseError: 5,
    SlotError: 6,
    LoadError: 7,
    DecodeError: 8,
    CopyMissingError: 10,
}
EXIT_UNEXPECTED = 1
EXIT_CHECK_FAILED = 9

# Errors from these packages come from the destination (dlt syncs with it before extracting).
_DESTINATION_MODULES = {"databricks", "urllib3", "requests", "duckdb", "deltalake", "thrift"}
_TOML_ERRORS = {"TomlDecodeError", "TOMLKitError", "ParseError", "UnexpectedCharError",
                "EmptyKeyError", "UnexpectedEofError", "InvalidCharInStringError"}


def describe_failure(error: BaseException) -> Tuple[str, int]:
    """(one line without secrets, exit code) for an exception raised by a job."""
    inner, step = _unwrap(error)
    if isinstance(inner, ReplicationError):
        for cls in type(inner).__mro__:
            if cls in EXIT_CODES:
                return mask_secrets(str(inner)), EXIT_CODES[cls]
    if type(inner).__module__.startswith("psycopg2") and type(inner).__name__ in (
            "OperationalError", "InterfaceError"):
        return (mask_secrets(f"lost the connection to the source database: {essential_line(inner)}"),
                EXIT_CODES[SourceConnectionError])
    config_text = _config_error_text(inner)
    if config_text:
        return mask_secrets(config_text), EXIT_CODES[ConfigError]
    line = essential_line(inner)
    if step in ("sync", "load", "normalize") or _from_destination(inner):
        during = {"sync": "connect", None: "load"}.get(step, step)
        return mask_secrets(destination_failed(during, line)), EXIT_CODES[LoadError]
    return mask_secrets(f"{type(inner).__name__}: {line}"), EXIT_UNEXPECTED


def destination_failed(during: str, line: str) -> str:
    return (f"the destination failed during {during}: {line}; the slot was not advanced: run the "
            "command again once the destination works")


def _from_destination(error: BaseException) -> bool:
    """Raised by a destination's client library or by dlt's destination layer (the reads of the
    destination's state before a run)."""
    module = type(error).__module__
    return module.split(".")[0] in _DESTINATION_MODULES or module.startswith(
        ("dlt.destinations", "dlt.common.destination"))


def _unwrap(error: BaseException) -> Tuple[BaseException, Optional[str]]:
    """Looks through dlt's PipelineStepFailed (and exception chains) for the real cause."""
    inner, step = error, None
    for _ in range(10):
        if type(inner).__name__ == "PipelineStepFailed":
            step = getattr(inner, "step", None)
            inner = getattr(inner, "exception", inner)
            continue
        cause = inner.__cause__ or inner.__context__
        if not isinstance(inner, ReplicationError) and isinstance(cause, ReplicationError):
            inner = cause
            continue
        break
    return inner, step


def is_file_lock_conflict(error: BaseException) -> bool:
    """DuckDB could not lock its database file: another process has it open."""
    inner, _ = _unwrap(error)
    for candidate in (inner, error):
        if "could not set lock on file" in str(candidate).lower():
            return True
    return False


def essential_line(error: BaseException) -> str:
    """The line of an exception's text that says what went wrong (not a traceback header)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
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


def _config_error_text(error: BaseException) -> Optional[str]:
    name = type(error).__name__
    if name in _TOML_ERRORS:
        return f"malformed configuration file (.dlt/config.toml or secrets.toml): {error}"
    if name == "TomlProviderReadException":
        # dlt's text: "A problem encountered when loading <file> from paths [...]:\n<reason>"
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        reason = lines[0] if lines else essential_line(error)
        paths = getattr(error, "full_paths", None) or [getattr(error, "file_name", "")]
        return f"malformed configuration file {paths[0]}: {reason}"
    if name in ("ConfigFieldMissingException", "ConfigValueCannotBeCoercedException"):
        return f"missing or invalid configuration: {essential_line(error)}"
    if name in ("UnknownDestinationModule", "InvalidDestinationReference"):
        return f"unknown destination: {essential_line(error)}"
    return None
