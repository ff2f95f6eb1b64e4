"""Job settings from dlt configuration: `[sources.pg_replication]`, its env vars and defaults."""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import dlt

from .changes import BATCH_BYTES
from .connect import to_dsn
from .hints import DeleteMode

DEFAULT_SLOT_NAME = "pg_replication_slot"
DEFAULT_PUB_NAME = "pg_replication_pub"


@dataclass
class JobSettings:
    dsn: str
    slot_name: str
    pub_name: str
    schema_name: str = "public"
    table_names: Optional[List[str]] = None
    deletes: DeleteMode = "hard"
    target_batch_size: int = 50_000
    target_batch_bytes: int = BATCH_BYTES
    target_load_bytes: Optional[int] = None  # default: by destination (jobs.load_bytes_for)
    snapshot_max_wait: Optional[float] = None  # seconds a snapshot may wait for open transactions


def load_settings(tables: Optional[str] = None, deletes: Optional[str] = None,
                  max_wait: Optional[float] = None) -> JobSettings:
    """Settings from configuration; `tables` (comma-separated), `deletes` and `max_wait`
    override it."""
    return JobSettings(
        dsn=to_dsn(source_credentials()),
        slot_name=_config("slot_name", DEFAULT_SLOT_NAME),
        pub_name=_config("pub_name", DEFAULT_PUB_NAME),
        schema_name=_config("schema_name", "public"),
        table_names=split_names(tables) or _names(_config("table_names")),
        deletes=deletes or _config("deletes", "hard"),
        target_batch_size=int(_config("target_batch_size", 50_000)),
        target_batch_bytes=int(_config("target_batch_bytes", BATCH_BYTES)),
        target_load_bytes=_optional_int(_config("target_load_bytes")),
        snapshot_max_wait=max_wait if max_wait is not None else _optional_float(
            _config("snapshot_max_wait")),
    )


def _optional_int(value: Any) -> Optional[int]:
    return None if value in (None, "") else int(value)


def _optional_float(value: Any) -> Optional[float]:
    return None if value in (None, "") else float(value)


def source_credentials() -> Any:
    """`sources.pg_replication.credentials`, else `sources.sql_database.credentials`."""
    for key in ("sources.pg_replication.credentials", "sources.sql_database.credentials"):
        value = dlt.secrets.get(key)
        if value:
            if isinstance(value, dict):
                from dlt.common.configuration.specs import ConnectionStringCredentials

                value = ConnectionStringCredentials(value).to_native_representation()
            return value
    return None


def _config(key: str, default: Any = None) -> Any:
    value = dlt.config.get(f"sources.pg_replication.{key}")
    return default if value is None else value


def split_names(option: Optional[str]) -> Optional[List[str]]:
    if not option:
        return None
    return [name.strip() for name in option.split(",") if name.strip()]


def _names(value: Optional[Sequence[str]]) -> Optional[List[str]]:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return split_names(value)
    return list(value)
