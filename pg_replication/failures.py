"""Turns any exception a run can raise into one readable line and an exit code.

Failures of the libraries below a run (dlt, psycopg2, tomlkit) are recognised by their type and
reported as the ReplicationError they stand for; the exit code is that class's `exit_code`.
"""

from typing import Optional, Tuple

import psycopg2

from .dlt_compat import (CONFIG_FILE_UNREADABLE, CONFIG_VALUE_ERRORS, DESTINATION_ERRORS,
                         DESTINATION_NAME_ERRORS, PIPELINE_STEP_FAILED, TOML_ERRORS)
from .exceptions import (ConfigError, ExitCode, LoadError, ReplicationError,
                         SourceConnectionError, essential_line, mask_secrets, text_lines)

__all__ = ["describe_failure", "essential_line", "is_file_lock_conflict"]


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
        return LoadError.during(during, essential_line(error))
    return None


def _from_destination(error: BaseException) -> bool:
    """Raised by dlt's destination layer or by a destination's client library."""
    return isinstance(error, DESTINATION_ERRORS) or _from_destination_client_library(error)


# The client libraries of the destinations (databricks-sql-connector, duckdb, deltalake, and the
# HTTP and Thrift layers under them) have no common base class: they are told by their module.
_DESTINATION_CLIENT_PACKAGES = {"databricks", "urllib3", "requests", "duckdb", "deltalake",
                                "thrift"}


def _from_destination_client_library(error: BaseException) -> bool:
    """Raised by a destination's client library (which dlt lets through, e.g. while it reads the
    destination's state before a run); the only check by module name."""
    return type(error).__module__.split(".")[0] in _DESTINATION_CLIENT_PACKAGES


def essential_cause(error: BaseException) -> str:
    """The line that says what went wrong, from the real cause inside dlt's wrappers."""
    return essential_line(_unwrap(error)[0])


def _unwrap(error: BaseException) -> Tuple[BaseException, Optional[str]]:
    """Looks through dlt's PipelineStepFailed (and exception chains) for the real cause."""
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


def _config_error_text(error: BaseException) -> Optional[str]:
    """The message of the ConfigError a dlt configuration or TOML error stands for, or None."""
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
