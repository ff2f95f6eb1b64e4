"""Turns any exception a run can raise into one readable line and an exit code.

Failures of the libraries below a run (dlt, psycopg2, tomlkit) are recognised by their type and
reported as the ReplicationError they stand for; the exit code is that class's `exit_code`.
"""

import re
from typing import List, Optional, Tuple

import psycopg2

from .exceptions import (ConfigError, ExitCode, LoadError, ReplicationError,
                         SourceConnectionError, mask_secrets)

# dlt_compat imports this module (for the text of its LoadError), so the dlt exception classes it
# names are imported where they are used, not here.


def describe_failure(error: BaseException) -> Tuple[str, ExitCode]:
    """(one line without secrets, exit code) for an exception raised by a job."""
    inner, step = _unwrap(error)
    if isinstance(inner, ReplicationError) and inner.exit_code is not ExitCode.UNEXPECTED:
        return mask_secrets(str(inner)), inner.exit_code
    known = _as_replication_error(inner, step)
    if known is None:
        return mask_secrets(f"{type(inner).__name__}: {essential_line(inner)}"), ExitCode.UNEXPECTED
    return mask_secrets(str(known)), known.exit_code


def _as_replication_error(error: BaseException, step: Optional[str]
                          ) -> Optional[ReplicationError]:
    """The ReplicationError a library's exception stands for, or None when it is unexpected."""
    # Exactly these classes: libpq's lost or refused connections. psycopg2.errors' SQLSTATE
    # classes derive from OperationalError too (deadlock, disk full...) but are no lost connection.
    if type(error) in (psycopg2.OperationalError, psycopg2.InterfaceError):
        return SourceConnectionError(
            f"lost the connection to the source database: {essential_line(error)}")
    config_text = _config_error_text(error)
    if config_text:
        return ConfigError(config_text)
    # dlt talks to the destination in these steps ("sync" reads its state before extracting).
    if step in ("sync", "load", "normalize") or _from_destination(error):
        during = {"sync": "connect", None: "load"}.get(step, step)
        return LoadError(destination_failed(during, essential_line(error)))
    return None


def destination_failed(during: str, line: str) -> str:
    """The message of a LoadError: what failed, and that running the command again is safe."""
    return (f"the destination failed during {during}: {line}; the slot was not advanced: run the "
            "command again once the destination works")


def _from_destination(error: BaseException) -> bool:
    """Raised by dlt's destination layer or by a destination's client library."""
    from .dlt_compat import DESTINATION_ERRORS

    return isinstance(error, DESTINATION_ERRORS) or _from_destination_client_library(error)


# The client libraries of the destinations (databricks-sql-connector, duckdb, deltalake, and the
# HTTP and Thrift layers under them) have no common base class: they are told by their module.
_DESTINATION_CLIENT_PACKAGES = {"databricks", "urllib3", "requests", "duckdb", "deltalake",
                                "thrift"}


def _from_destination_client_library(error: BaseException) -> bool:
    """Raised by a destination's client library (which dlt lets through, e.g. while it reads the
    destination's state before a run); the only check by module name."""
    return type(error).__module__.split(".")[0] in _DESTINATION_CLIENT_PACKAGES


def _unwrap(error: BaseException) -> Tuple[BaseException, Optional[str]]:
    """Looks through dlt's PipelineStepFailed (and exception chains) for the real cause."""
    from .dlt_compat import PIPELINE_STEP_FAILED

    inner, step = error, None
    for _ in range(10):
        if isinstance(inner, PIPELINE_STEP_FAILED):
            step, inner = inner.step, inner.exception
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


def _config_error_text(error: BaseException) -> Optional[str]:
    """The message of the ConfigError a dlt configuration or TOML error stands for, or None."""
    from .dlt_compat import (CONFIG_FILE_UNREADABLE, CONFIG_VALUE_ERRORS,
                             DESTINATION_NAME_ERRORS, TOML_ERRORS)

    if isinstance(error, TOML_ERRORS):
        return f"malformed configuration file (.dlt/config.toml or secrets.toml): {error}"
    if isinstance(error, CONFIG_FILE_UNREADABLE):
        # dlt's text: "A problem encountered when loading <file> from paths [...]:\n<reason>"
        reasons = text_lines(str(error))[1:]
        reason = reasons[0] if reasons else essential_line(error)
        path = (error.full_paths or [error.file_name])[0]
        return f"malformed configuration file {path}: {reason}"
    if isinstance(error, CONFIG_VALUE_ERRORS):
        return f"missing or invalid configuration: {essential_line(error)}"
    if isinstance(error, DESTINATION_NAME_ERRORS):
        return f"unknown destination: {essential_line(error)}"
    return None
