"""The pipeline's settings: one dlt configspec, `[sources.pg_replication]`, resolved by dlt for the
CLI and the library alike, with one set of defaults.

dlt looks each key up as `sources.pg_replication.<key>` (TOML, or the environment variable
`SOURCES__PG_REPLICATION__<KEY>`) and then, as it does for every source, in the enclosing
sections. Source credentials fall back to `sources.sql_database.credentials`, so a project that
already configured dlt's `sql_database` source needs nothing more.
"""

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import dlt
from dlt.common.configuration import configspec, resolve_configuration
from dlt.common.configuration.specs import BaseConfiguration

from .changes import BATCH_BYTES
from .connect import to_dsn
from .copy_workers import PART_BLOCKS
from .exceptions import ConfigError
from .hints import DeltaOptions
from .slots import validate_slot_name
from .sql_reader import check_backend
from .names import split_table_name
from .state import SOURCE_NAME, table_key

DEFAULT_SLOT_NAME = "pg_replication_slot"
DEFAULT_PUB_NAME = "pg_replication_pub"


@configspec
class StreamConfiguration(BaseConfiguration):
    """The settings dlt looks up in `[sources.pg_replication]` and, as for any source, in the
    enclosing sections; see the README's Configuration table.

    The per-table arguments of the library (`include_columns`, `columns`) and the run bounds
    (bounds.RunBounds) are passed in code: left to dlt's lookup, `columns` would pick up the
    shell's COLUMNS variable (the terminal width).
    """

    slot_name: str = DEFAULT_SLOT_NAME
    pub_name: str = DEFAULT_PUB_NAME
    # The schemas whose tables are replicated, and the default one among them, whose tables keep
    # their own names (names.py): `schema_names` alone takes its first; neither means "public".
    schema_name: Optional[str] = None
    schema_names: Optional[Any] = None  # a list, or comma-separated
    # A list, or comma-separated: `table` (default schema) or `schema.table`; default every table
    # of the schemas.
    table_names: Optional[Any] = None
    deletes: str = "hard"  # or "soft": deleted rows stay, with `_pg_deleted_at`
    target_batch_size: int = 50_000  # rows buffered before they are handed to dlt
    # Bytes (of the stream, of unchanged TOASTed values read back) buffered before they are
    # handed to dlt: bounds memory when rows are wide.
    target_batch_bytes: int = BATCH_BYTES
    # Arrow bytes one load takes: the segment ends there, in the middle of a transaction if need
    # be, and the next one goes on; bounds what the destination merges at once.
    target_load_bytes: Optional[int] = None  # default: by destination (destinations.py)
    # Only on a dlt destination a library user built (the pipeline's own destinations merge with
    # merges.py): "delete-insert" (SQL destinations) or "upsert" (Delta); default: by destination.
    merge_strategy: Optional[str] = None
    # Databricks, when the pipeline creates a table: TBLPROPERTIES over the defaults
    # (hints.DEFAULT_DELTA_PROPERTIES), the change data feed, liquid clustering on the key.
    delta_table_properties: Optional[Dict[str, Any]] = None
    change_data_feed: bool = False
    cluster_by_key: bool = False
    snapshot_max_wait: Optional[float] = None  # seconds a snapshot may wait for transactions
    # Connections the consistent copy reads over (copy_workers.py); default: by the tables' sizes.
    snapshot_workers: Optional[int] = None
    # A table larger than two of these is read in CTID ranges of about this many bytes, in
    # parallel when there are several workers (PostgreSQL 14+).
    snapshot_part_bytes: int = PART_BLOCKS * 8192
    # What reads the consistent copy: "copy" (COPY TO STDOUT, the fastest) or "sql_database"
    # (dlt's sql_database in the same snapshot, sql_reader.py) with one of its backends.
    snapshot_reader: str = "copy"
    sql_database_backend: str = "pyarrow"
    # An online copy's chunk (chunks.py): at most this many rows, and about this many bytes of
    # text (the row count follows the bytes per row of the table's previous chunk).
    online_chunk_rows: int = 200_000
    online_chunk_bytes: int = 32 << 20
    flush_slot: bool = True  # the library: confirm the loaded position before reading
    # PostgreSQL 15+ (filters.py): per table (as written in table_names), the columns that never
    # leave the source, and a condition on the rows that do (a JSON object in an environment
    # variable).
    exclude_columns: Optional[Dict[str, Any]] = None
    row_filters: Optional[Dict[str, Any]] = None
    # PostgreSQL 17+: a slot synchronized to physical standbys, so it survives a promotion
    # (failover.py); default: on when the server has a standby configured for it.
    failover: Optional[bool] = None

    def source_table(self, written: str) -> Tuple[str, str]:
        """(schema, table) of a table name as a user writes it (`table` or `schema.table`)."""
        return split_table_name(written, self.schema_names, self.schema_name)

    @property
    def table_filters(self) -> Dict[Tuple[str, str], Tuple[List[str], Optional[str]]]:
        """(schema, table) -> (columns excluded, row filter) of the tables exclude_columns or
        row_filters name (however they are written: `t`, `public.t`)."""
        found: Dict[Tuple[str, str], Tuple[List[str], Optional[str]]] = {}
        for name, columns in (self.exclude_columns or {}).items():
            found[self.source_table(name)] = (list(columns), None)
        for name, condition in (self.row_filters or {}).items():
            pair = self.source_table(name)
            found[pair] = (found.get(pair, ([], None))[0], condition)
        return found

    def table_key(self, written: str) -> str:
        """The state's key (state.table_key) of a table name as a user writes it."""
        return table_key(*self.source_table(written))

    @property
    def delta_options(self) -> DeltaOptions:
        return DeltaOptions(self.delta_table_properties or {}, bool(self.change_data_feed),
                            bool(self.cluster_by_key))



@configspec
class PgReplicationConfiguration(StreamConfiguration):
    """All the settings: those of StreamConfiguration and the source's credentials, which are
    read only from `sources.pg_replication.credentials`, else `sources.sql_database.credentials`
    (never from a bare CREDENTIALS variable dlt's wider lookup would find: a stray one would point
    the pipeline at another database)."""

    credentials: Optional[Any] = None  # a postgresql:// URL, libpq key=value pairs or a table
    # When `credentials` point at a physical standby (standby.py): the primary, for heartbeats,
    # publications and the statistics of tables without a key.
    primary_credentials: Optional[Any] = None

    @property
    def dsn(self) -> str:
        """The source as a libpq URL."""
        return to_dsn(self.credentials)

    @property
    def primary_dsn(self) -> Optional[str]:
        """The primary as a libpq URL, when the source is a standby and it is configured."""
        if self.primary_credentials in (None, ""):
            return None
        return to_dsn(_connection_string(self.primary_credentials))


def resolve_settings(**given: Any) -> PgReplicationConfiguration:
    """The settings from configuration, `given` (keys of PgReplicationConfiguration; None means
    "not given") taking precedence; checked once, here (see `checked`)."""
    unknown = sorted(set(given) - set(PgReplicationConfiguration.get_resolvable_fields()))
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}: see PgReplicationConfiguration")
    explicit = {key: value for key, value in given.items() if value is not None}
    if explicit.get("credentials") in (None, ""):
        explicit["credentials"] = configured_credentials()  # "" (none) is not looked up further
    settings = resolve_configuration(PgReplicationConfiguration(),
                                     sections=("sources", SOURCE_NAME), explicit_value=explicit)
    return checked(settings)


def settings_of(**resolved: Any) -> PgReplicationConfiguration:
    """Settings from values dlt has resolved already (the `pg_replication` source's arguments),
    with the credentials from their exact keys when not given; checked (see `checked`)."""
    settings = PgReplicationConfiguration()
    for key, value in resolved.items():
        if value is not None:
            setattr(settings, key, value)
    if settings.credentials in (None, ""):
        settings.credentials = configured_credentials()
    return checked(settings)


def configured_credentials() -> Any:
    """The source credentials at their exact keys; "" when neither is set."""
    for key in ("sources.pg_replication.credentials", "sources.sql_database.credentials"):
        value = dlt.secrets.get(key)
        if value not in (None, ""):
            return _connection_string(value)
    return ""


def checked(settings: PgReplicationConfiguration) -> PgReplicationConfiguration:
    """Completes and checks resolved settings in place (the one place settings are checked).

    Raises:
        ConfigError: no credentials, an invalid slot name, `deletes` or `merge_strategy`.
    """
    settings.credentials = to_dsn(_connection_string(settings.credentials))  # ConfigError if none
    settings.table_names = table_list(settings.table_names)
    _resolve_schemas(settings)
    validate_slot_name(settings.slot_name)
    if settings.deletes not in ("hard", "soft"):
        raise ConfigError(f"invalid deletes {settings.deletes!r}: use \"hard\" or \"soft\"")
    _check_positive(settings)
    _check_filters(settings)
    if settings.snapshot_reader not in ("copy", "sql_database"):
        raise ConfigError(f"invalid snapshot_reader {settings.snapshot_reader!r}: use \"copy\" "
                          "or \"sql_database\"")
    check_backend(settings.sql_database_backend)
    if settings.merge_strategy not in (None, "", "delete-insert", "upsert"):
        raise ConfigError(f"invalid merge_strategy {settings.merge_strategy!r}: use "
                          "\"delete-insert\" or \"upsert\" (default: by destination)")
    return settings


def _resolve_schemas(settings: PgReplicationConfiguration) -> None:
    """Sets `schema_names` (a list) and `schema_name` (the default schema, one of them)."""
    schemas = table_list(settings.schema_names, "schema_names") or []
    if len(set(schemas)) != len(schemas):
        raise ConfigError(f"invalid schema_names {schemas!r}: a schema is named twice")
    default = settings.schema_name or (schemas[0] if schemas else "public")
    if schemas and default not in schemas:
        raise ConfigError(f"schema_name {default!r} is not one of schema_names {schemas!r}: add "
                          "it, or leave schema_name out (the first of schema_names is the default)")
    settings.schema_name, settings.schema_names = default, schemas or [default]


def _check_filters(settings: PgReplicationConfiguration) -> None:
    """exclude_columns: table -> list of column names; row_filters: table -> SQL condition."""
    for key in ("exclude_columns", "row_filters"):
        value = getattr(settings, key)
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else None
            except ValueError:
                raise ConfigError(f"invalid {key}: use a JSON object of tables") from None
            setattr(settings, key, value)
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"invalid {key} {value!r}: use a table of tables")
    for table, columns in (settings.exclude_columns or {}).items():
        if isinstance(columns, str):
            columns = settings.exclude_columns[table] = table_list(columns, "exclude_columns")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise ConfigError(f"invalid exclude_columns for {table!r}: use a list of column names")
    for table, condition in (settings.row_filters or {}).items():
        if not isinstance(condition, str) or not condition.strip():
            raise ConfigError(f"invalid row_filters for {table!r}: use an SQL condition")
    for key in ("exclude_columns", "row_filters"):
        written = list(getattr(settings, key) or {})
        pairs = [settings.source_table(name) for name in written]
        for i, pair in enumerate(pairs):
            if pair in pairs[:i]:  # `t` and `public.t`: one would silently win
                raise ConfigError(f"{key} names table {'.'.join(pair)} twice "
                                  f"({written[pairs.index(pair)]!r} and {written[i]!r})")


def _check_positive(settings: PgReplicationConfiguration) -> None:
    """Sizes and waits below 1 would make every batch or load empty (or wait for nothing)."""
    for key in ("target_batch_size", "target_batch_bytes", "target_load_bytes",
                "snapshot_max_wait", "online_chunk_rows", "online_chunk_bytes",
                "snapshot_workers", "snapshot_part_bytes"):
        value = getattr(settings, key)
        if value is not None and value <= 0:
            raise ConfigError(f"invalid {key} {value!r}: use a number above 0")


def _connection_string(value: Any) -> Any:
    """A TOML table of connection fields (host, database, username...) as a connection string
    (`drivername` may be left out: the source is PostgreSQL)."""
    if isinstance(value, Mapping):
        from dlt.common.configuration.specs import ConnectionStringCredentials

        fields = {"drivername": "postgresql", **dict(value)}
        return ConnectionStringCredentials(fields).to_native_representation()
    return value


def _json_list(text: str, key: str) -> List[str]:
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"invalid {key} {text!r}: use a JSON list of names "
                          "('[\"a\", \"b\"]') or comma-separated names (a,b)")
    return names


def table_list(value: Optional[Any], key: str = "table_names") -> Optional[List[str]]:
    """Names from a list or a comma-separated string (`--tables a,b`); None for none."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().startswith("["):
        value = _json_list(value, key)  # dlt's list syntax in an environment variable
    names: Sequence[str] = value.split(",") if isinstance(value, str) else value
    return [name.strip() for name in names if name.strip()] or None
