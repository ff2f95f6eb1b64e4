"""Reads of the destination that dlt offers only below its public pipeline API.

Kept in one place so that a dlt upgrade that changes them breaks here, loudly, and nowhere else.
"""

import functools
from typing import Any, Callable, Dict, Iterable, Optional, Set

import dlt

from .exceptions import LoadError, ReplicationError
from .failures import destination_failed, essential_line


def _destination_read(read: Callable) -> Callable:
    """Whatever a destination read raises (its client library, a file system) becomes LoadError."""

    @functools.wraps(read)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return read(*args, **kwargs)
        except ReplicationError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the destination is exit 7
            raise LoadError(destination_failed("connect", essential_line(e))) from e

    return wrapper


@_destination_read
def destination_state(pipeline: dlt.Pipeline) -> Optional[Dict[str, Any]]:
    """The newest pipeline state the destination holds from a completed load, or None when it has
    none (no dataset, no state table, or no row for this pipeline)."""
    from dlt.destinations.exceptions import DestinationUndefinedEntity
    from dlt.pipeline.state_sync import load_pipeline_state_from_destination

    with pipeline.destination_client() as client:
        try:
            return load_pipeline_state_from_destination(pipeline.pipeline_name, client)
        except DestinationUndefinedEntity:
            return None


@_destination_read
def existing_destination_tables(pipeline: dlt.Pipeline, table_names: Iterable[str]) -> Set[str]:
    """Which of the source-named tables exist in the destination (under their normalized name)."""
    naming = pipeline.default_schema.naming if pipeline.default_schema_name else None
    wanted = {(naming.normalize_table_identifier(name) if naming else name): name
              for name in table_names}
    if not wanted:
        return set()
    with pipeline.destination_client() as client:
        found = client.get_storage_tables(list(wanted))
        return {wanted[name] for name, columns in found if columns}


def destination_identifier(name: str) -> str:
    """The name dlt's default naming convention (snake_case) gives a source table or column in
    the destination."""
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    return NamingConvention().normalize_identifier(name)
