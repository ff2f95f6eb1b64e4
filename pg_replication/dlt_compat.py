"""Reads of the destination that dlt offers only below its public pipeline API.

Kept in one place so that a dlt upgrade that changes them breaks here, loudly, and nowhere else.
"""

from typing import Any, Dict, Iterable, Optional, Set

import dlt


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
