"""Connections to the source database, with the session settings every reader relies on."""

import os
import re
import socket
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from .exceptions import ConfigError, SourceConnectionError, SourceNotReadyError, mask_secrets
from .exceptions import text_lines

# Text output must be identical in the snapshot (COPY) and in CDC (pgoutput), and parseable by
# types.text_to_arrow: ISO dates, UTC offsets, hex bytea, shortest exact floats.
# Timeouts a role or database may set for applications (ALTER ROLE ... SET statement_timeout)
# would cut a long COPY or a snapshot transaction that waits while dlt loads: the pipeline's
# sessions have none.
SESSION_OPTIONS = (
    "-c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC -c bytea_output=hex "
    "-c extra_float_digits=1 -c client_encoding=UTF8 "
    "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0"
)


def application_name() -> str:
    """This process, as pg_stat_activity shows it: a run told that another run holds the slot
    learns which process and machine to look at (PostgreSQL keeps 63 bytes of it)."""
    return f"pg_replication pid {os.getpid()} on {socket.gethostname()}"[:63]


def to_dsn(credentials: Any) -> str:
    """Turns what a user configured (libpq URL, SQLAlchemy URL, dlt credentials) into a libpq URL.

    Raises:
        ConfigError: Nothing usable was configured.
    """
    if credentials is None or credentials == "":
        raise ConfigError(
            "no source credentials: set sources.pg_replication.credentials "
            "(or SOURCES__PG_REPLICATION__CREDENTIALS) to a postgresql:// URL"
        )
    if hasattr(credentials, "to_native_representation"):
        credentials = credentials.to_native_representation()
    text = str(credentials).strip()
    if text.startswith("postgres"):
        _refuse_misread_url(text)
    parts = urlsplit(text)
    if parts.scheme.startswith("postgres"):
        # SQLAlchemy spellings ("postgresql+psycopg2://") are not libpq's.
        return urlunsplit(("postgresql",) + tuple(parts)[1:])
    if "=" in text:  # libpq key=value form
        return text
    raise ConfigError("source credentials must be a postgresql:// URL or libpq key=value pairs")


# What an unencoded character of a password makes of a URL: libpq and Python would read a host,
# a port or a path out of the password, and print that part of it in their errors.
_MISREAD_URL = ("the source URL cannot be read as written: percent-encode the special "
                "characters of its user name and password ('@' as %40, '%' as %25, '#' as %23, "
                "'/' as %2F, '?' as %3F, ':' as %3A)")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _refuse_misread_url(url: str) -> None:
    """Raises ConfigError, naming no part of the URL, when its password would be read as
    something else: more than one '@' (libpq takes the host after the first one), an '@' past
    the host (a '/', '?' or '#' in the password ended it early), a '%' that starts no
    percent-encoded byte, or a port that is not a number."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reads the port: a malformed one raises here
    except ValueError:
        raise ConfigError(_MISREAD_URL) from None
    misread = (parts.netloc.count("@") > 1 or "@" in url[len(parts.scheme) + 3 + len(parts.netloc):]
               or _BAD_PERCENT.search(url))
    if misread:
        raise ConfigError(_MISREAD_URL)


def connect(dsn: str, replication: bool = False):
    """Opens a connection with the session settings: a logical replication one when
    `replication`, else one in autocommit mode.

    Raises:
        SourceConnectionError: The server cannot be reached or refuses the login; the message has
            no password in it.
    """
    kwargs = {"options": SESSION_OPTIONS, "application_name": application_name(),
              "connect_timeout": 10}
    if replication:
        kwargs["connection_factory"] = psycopg2.extras.LogicalReplicationConnection
    try:
        conn = psycopg2.connect(dsn, **kwargs)
    except psycopg2.OperationalError as e:
        message = describe_pg_error(e, dsn)
        if replication and "replication" in message and "role" in message:
            raise SourceNotReadyError(
                f"the source user may not stream changes ({message}): "
                "ALTER ROLE ... WITH REPLICATION"
            ) from None
        raise SourceConnectionError("cannot connect to the source database: " + message) from None
    if not replication:
        conn.autocommit = True
    return conn


def describe_pg_error(error: Exception, dsn: Optional[str] = None) -> str:
    """One line from a psycopg2 error: the server's primary message, no secrets."""
    diag = getattr(error, "diag", None)
    text = getattr(diag, "message_primary", None) if diag is not None else None
    if not text:
        lines = text_lines(str(error))
        text = lines[0] if lines else type(error).__name__
        for prefix in ("FATAL:", "ERROR:"):
            if text.startswith(prefix):
                text = text[len(prefix):].strip()
        # libpq puts the reason after 'connection to server at "...", port N failed:'.
        if len(lines) > 1 and text.endswith("failed:"):
            text = f"{text} {lines[1].replace('FATAL:', '').strip()}"
    secrets = ()
    if dsn:
        try:
            secrets = (urlsplit(dsn).password,)
        except ValueError:
            pass
    return mask_secrets(text, secrets)
