"""Every use of a dlt internal (below dlt's public pipeline, source and configuration API):

- reads of the destination (its stored state, which tables exist) and the recreation of tables
  dropped by hand;
- a source built without `@dlt.source`, the running pipeline and load id of an extract;
- the destination client's settings (Databricks staging volumes, the filesystem dataset path);
- repairs of the load packages a killed run leaves;
- the dlt exception classes failures.py recognises.

Kept in one place so that a dlt upgrade that changes them breaks here, loudly, and nowhere else;
tests/test_dlt_compat.py pins each of them to dlt 1.31.0. May import: exceptions, hints.
"""

import functools
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import dlt
import tomlkit.exceptions
from dlt.common.configuration.exceptions import (ConfigFieldMissingException,
                                                 ConfigValueCannotBeCoercedException)
from dlt.common.configuration.providers.toml import TomlProviderReadException
from dlt.common.destination.exceptions import (DestinationException, InvalidDestinationReference,
                                               UnknownDestinationModule)
from dlt.pipeline.exceptions import PipelineStepFailed
from dlt.destinations.job_client_impl import SqlJobClientBase

from .exceptions import LoadError, ReplicationError, essential_line
from .hints import LOAD_ID_COLUMN


def _destination_read(read: Callable) -> Callable:
    """Whatever a destination read raises (its client library, a file system) becomes LoadError."""

    @functools.wraps(read)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return read(*args, **kwargs)
        except ReplicationError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the destination is exit 7
            raise LoadError.during("connect", essential_line(e)) from e

    return wrapper


@_destination_read
def destination_state(pipeline: dlt.Pipeline) -> Optional[Dict[str, Any]]:
    """The newest pipeline state the destination holds from a completed load, or None when it has
    none (no dataset, no state table, or no row for this pipeline)."""
    from dlt.destinations.exceptions import DestinationUndefinedEntity
    from dlt.pipeline.state_sync import load_pipeline_state_from_destination

    with pipeline.destination_client() as client:
        if pipeline.has_pending_data:
            _drop_torn_filesystem_records(client)
        try:
            return load_pipeline_state_from_destination(pipeline.pipeline_name, client)
        except DestinationUndefinedEntity:
            return None


@_destination_read
def _drop_torn_filesystem_records(client: Any) -> None:
    """A filesystem destination's state, load and schema records that a run killed while
    writing them left empty or cut off. dlt writes them in place (not through a rename) when it
    completes a load; the killed run's package is still pending here, so loading it again
    writes them anew. Left in place, every later run would fail to read the state."""
    from dlt.destinations.impl.filesystem.filesystem import FilesystemClient

    if not isinstance(client, FilesystemClient):
        return
    schema = client.schema
    for table in (schema.state_table_name, schema.loads_table_name, schema.version_table_name):
        folder = client.get_table_dir(table)
        if not client.fs_client.isdir(folder):
            continue
        for path in client.fs_client.ls(folder, detail=False):
            if path.endswith((".json", ".jsonl")) and not _parses(client.fs_client, path):
                client.fs_client.rm(path)


def _parses(fs_client: Any, path: str) -> bool:
    import json

    try:
        json.loads(fs_client.read_text(path, encoding="utf-8"))
        return True
    except ValueError:
        return False


def existing_destination_tables(pipeline: dlt.Pipeline, table_names: Iterable[str]) -> Set[str]:
    """Which of the destination tables (named as the pipeline hands them to dlt, before
    snake_case: catalog.TableInfo.target) exist in the destination."""
    return {name for name, columns in _stored_columns(pipeline, table_names).items() if columns}


def columns_gone_from_destination(pipeline: dlt.Pipeline, table_names: Iterable[str]
                                  ) -> Dict[str, List[str]]:
    """For the destination tables that exist (named as existing_destination_tables takes them):
    the columns dlt's schema says a load created that the table no longer has (dropped by hand).
    dlt would add such a column back, empty, with the next load that changes the schema."""
    if not pipeline.default_schema_name:
        return {}
    schema = pipeline.default_schema
    gone = {}
    for name, stored in _stored_columns(pipeline, table_names).items():
        table = schema.tables.get(schema.naming.normalize_tables_path(name))
        if not stored or not table:
            continue
        held = {column.lower() for column in stored}
        lacking = [column for column, hints in table.get("columns", {}).items()
                   if hints.get("data_type") and column.lower() not in held]
        if lacking:
            gone[name] = lacking
    return gone


def _stored_columns(pipeline: dlt.Pipeline, table_names: Iterable[str]
                    ) -> Dict[str, Dict[str, Any]]:
    """Each table name -> its columns in the destination ({}: no such table)."""
    # Without a local schema (a new machine) the names are those the default naming gives, as
    # the pipeline wrote them: `MixedCase` is in `mixed_case`.
    normalize = (pipeline.default_schema.naming.normalize_tables_path
                 if pipeline.default_schema_name else destination_table_identifier)
    wanted = {normalize(name): name for name in table_names}
    if not wanted:
        return {}
    with pipeline.destination_client() as client:
        return {wanted[name]: columns for name, columns in client.get_storage_tables(list(wanted))}


@_destination_read
def drop_tables_a_copy_cannot_fill(pipeline: dlt.Pipeline, table_names: Iterable[str]
                                   ) -> List[str]:
    """Drops, in an SQL destination, the tables about to be replaced by a copy whose NOT NULL
    columns no longer fit it (a key column renamed or added since the last copy), and returns
    their names; recreate_tables_gone_from_destination then creates them as the copy's schema
    says. dlt only adds columns: it would add a new key column NOT NULL to a table that has rows
    (refused), and keep the old key column NOT NULL, which the copy leaves empty."""
    schema, known = _schema_tables(pipeline, table_names)
    with pipeline.destination_client() as client:
        if not known or not client.is_storage_initialized():
            return []
        if not isinstance(client, SqlJobClientBase):
            return _drop_unfillable_delta(client, schema, known)
        stale = _drop_unfillable(client, schema, known)
        # The staging dataset's tables (where the merges stage changes) are updated the same way.
        with_staging = getattr(client, "with_staging_dataset", None)
        if with_staging is not None:
            with with_staging():
                if client.is_storage_initialized():
                    _drop_unfillable(client, schema, known)
    return sorted(known[table] for table in stale)


def _drop_unfillable(client: SqlJobClientBase, schema: Any, tables: Iterable[str]) -> List[str]:
    stale = [table for table, stored in client.get_storage_tables(list(tables))
             if stored and _not_null_differs(schema.tables[table]["columns"], stored)]
    if stale:
        client.sql_client.drop_tables(*stale)
    return stale


def _schema_tables(pipeline: dlt.Pipeline, table_names: Iterable[str]
                   ) -> Tuple[Any, Dict[str, str]]:
    """The pipeline's schema (None before any), and which of the tables (named as the pipeline
    hands them to dlt) it knows: schema table name -> the name as given."""
    if not pipeline.default_schema_name:
        return None, {}
    schema = pipeline.default_schema
    known = {schema.naming.normalize_tables_path(name): name for name in table_names}
    return schema, {table: name for table, name in known.items() if table in schema.tables}


def _drop_unfillable_delta(client: Any, schema: Any, known: Dict[str, str]) -> List[str]:
    """The same for the Delta tables of a filesystem destination: a column the table's Delta
    schema holds NOT NULL makes the copy fail its validation when the copy leaves it NULL."""
    from deltalake import DeltaTable

    stale = []
    for table in known:
        path = client.get_table_dir(table).replace("file://", "")
        if not DeltaTable.is_deltatable(path):
            continue
        stored = {field.name: {"nullable": field.nullable}
                  for field in DeltaTable(path).schema().fields}
        if _not_null_differs(schema.tables[table]["columns"], stored):
            stale.append(table)
    if stale:
        client.drop_tables(*stale, delete_schema=False)
    return sorted(known[table] for table in stale)


def _not_null_differs(columns: Dict[str, Any], stored: Dict[str, Any]) -> bool:
    """Whether a table's stored NOT NULL columns do not fit the columns of its schema."""
    stored = {name.lower(): column for name, column in stored.items()}
    for name, column in columns.items():
        if not column.get("data_type"):
            continue
        wanted_not_null = column.get("nullable") is False
        held = stored.get(name.lower())
        if held is None and wanted_not_null:
            return True  # dlt would add it NOT NULL to a table that has rows
        if held is not None and held.get("nullable") is False and not wanted_not_null:
            return True  # the copy leaves it NULL
    return False


@_destination_read
def recreate_tables_gone_from_destination(pipeline: dlt.Pipeline, table_names: Iterable[str]
                                          ) -> List[str]:
    """Creates again, empty, the tables dlt's schema knows that an SQL destination no longer has,
    and the columns it knows that a table no longer has (dropped by hand); returns the names
    (TableInfo.target, as given) of the tables it changed.

    dlt creates tables and columns only while migrating a schema version the destination has not
    stored; for a stored one it would truncate or insert into what is not there, on every run.
    The client's `update_stored_schema(force=True)` compares the schema with the tables that
    exist and creates what is missing. (File destinations such as Delta create a table as they
    write it.)"""
    schema, known = _schema_tables(pipeline, table_names)
    with pipeline.destination_client() as client:
        # No dataset at all (a deleted database file): dlt's own migration creates everything.
        if (not known or not isinstance(client, SqlJobClientBase)
                or not client.is_storage_initialized()):
            return []
        incomplete = [table for table, stored in client.get_storage_tables(list(known))
                      if _lacks_columns(schema.tables[table]["columns"], stored)]
        if incomplete:
            client.update_stored_schema(only_tables=incomplete, force=True)
    return sorted(known[table] for table in incomplete)


def _lacks_columns(columns: Dict[str, Any], stored: Dict[str, Any]) -> bool:
    """Whether a stored table (no columns: gone) lacks a column of its schema."""
    held = {name.lower() for name in stored}
    return any(column.get("data_type") and name.lower() not in held
               for name, column in columns.items())


def destination_identifier(name: str) -> str:
    """The name dlt's default naming convention (snake_case) gives a source column in the
    destination. dlt normalizes a column's name as a path: `x__y` keeps its `__` and a leading
    `__` goes (`__lead` lands in `lead`), where `normalize_identifier` would give `x_y`."""
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    return NamingConvention().normalize_path(name)


def destination_table_identifier(name: str) -> str:
    """The name dlt's snake_case gives a destination table: unlike a column's, a table's name is a
    path, so the `__` between a schema and its table (names.py) is kept."""
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    return NamingConvention().normalize_tables_path(name)


def make_source(name: str, resources: List[Any]) -> Any:
    """A dlt source named `name` holding `resources`, built without `@dlt.source`: no
    configuration is injected, and it shares the state and schema of that name."""
    from dlt.extract.source import DltSource

    return DltSource(dlt.Schema(name), name, resources)


def current_pipeline() -> Optional[dlt.Pipeline]:
    """The pipeline running this extract; None outside one (the library used on its own)."""
    try:
        return dlt.current.pipeline()
    except Exception:  # noqa: BLE001 - no pipeline context
        return None


def current_load_id() -> str:
    """The load id of the package being extracted (appended rows carry it, see hints.py)."""
    return dlt.current.load_package_state()["load_id"]


def state_version(state: Dict[str, Any]) -> int:
    """dlt's version counter of a pipeline state (local, or as the destination stored it)."""
    return int(state.get("_state_version", 0) or 0)


# -- destination internals ---------------------------------------------------------------------

def databricks_staging_volumes(pipeline: dlt.Pipeline) -> List[str]:
    """The Unity Catalog volumes a Databricks load stages its files in."""
    with pipeline.destination_client() as client:
        config = client.config
        if config.staging_volume_name:
            return [config.staging_volume_name]
        # dlt's default volumes: snapshot (replace) loads stage in the dataset's, merge loads
        # in the staging dataset's.
        catalog = config.credentials.catalog
        return [f"{catalog}.{schema}._dlt_staging_load_volume" for schema in
                (pipeline.dataset_name, client.sql_client.staging_dataset_name)]


def destination_sql(pipeline: dlt.Pipeline, statement: str) -> Any:
    """Runs one statement on an SQL destination and returns its rows."""
    with pipeline.destination_client() as client:
        return client.sql_client.execute_sql(statement)


@dataclass(frozen=True)
class DestinationTables:
    """Reading an SQL destination's tables (verify --data): queries, names, columns."""

    query: Callable[[str], List[Any]]  # rows of one SELECT
    qualified: Callable[[str], str]  # a table's name in SQL, with its dataset
    quote: Callable[[str], str]  # a column's name in SQL
    columns: Callable[[str], Optional[List[str]]]  # a table's column names; None: no such table


@contextmanager
def destination_tables(pipeline: dlt.Pipeline) -> Iterator[DestinationTables]:
    """The pipeline's SQL destination, through dlt's SQL client, open for the block."""
    with pipeline.sql_client() as client:
        def columns(table: str) -> Optional[List[str]]:
            name = client.make_qualified_table_name(table)
            try:
                with client.execute_query(f"SELECT * FROM {name} WHERE 1 = 0") as cursor:
                    return [d[0] for d in cursor.description]
            except Exception:  # noqa: BLE001 - no such table: nothing was loaded into it
                return None

        yield DestinationTables(lambda statement: client.execute_sql(statement) or [],
                                client.make_qualified_table_name, client.escape_column_name,
                                columns)


def filesystem_dataset_root(pipeline: dlt.Pipeline) -> str:
    """The local directory of a filesystem destination's dataset."""
    with pipeline.destination_client() as client:
        return client.dataset_path.replace("file://", "")


# -- the merge and replace the pipeline runs itself (merges.py) ---------------------------------

@dataclass(frozen=True)
class OwnMerge:
    """What replaces dlt's merge and replace statements (merges.py provides each).

    - plan(table schema) -> a plan, or None for a table dlt merges as usual;
    - merge_sql(plan, target, staging, quote) -> the MERGE of a table's staged changes;
    - overwrite_sql(columns, target, staging, quote) -> the one-statement replace of a table;
    - delta_merge(delta table, arrow table, plan): the merge into a local Delta table;
    - first_rows(arrow table, plan) -> the rows a Delta table that does not exist yet starts with.
    """

    plan: Callable[[Dict[str, Any]], Any]
    merge_sql: Callable[..., str]
    overwrite_sql: Callable[..., str]
    delta_merge: Callable[..., None]
    first_rows: Callable[..., Any]


def with_own_merge(destination: Any, own: OwnMerge, atomic_replace: bool = False) -> Any:
    """`destination` (a name or a dlt destination) whose loads merge the tables `own.plan`
    accepts with `own`'s statements instead of dlt's (dlt's delete-insert is two commits on
    Databricks and misreads a column named `d`; its upsert neither deduplicates nor checks which
    change is newer). With `atomic_replace`, tables replaced through the staging dataset
    (`replace_strategy = "insert-from-staging"`) are replaced by `own.overwrite_sql`, one
    statement, instead of TRUNCATE then INSERT.

    dlt picks the job client from the destination factory's `client_class`: the factory's class
    is swapped for a subclass that returns a subclass of its client; the destination keeps its
    type and name."""
    from dlt.common.destination import Destination

    factory = Destination.from_reference(destination)
    if getattr(factory, "own_merge", None) is own:
        return factory
    base = type(factory)
    client = _client_with_own_merge(factory.client_class, own, atomic_replace)
    destination_type = factory.destination_type

    class OwnMergeFactory(base):  # type: ignore[misc, valid-type]
        own_merge = own

        @property
        def client_class(self) -> Any:
            return client

        @property
        def destination_type(self) -> str:
            return destination_type

    OwnMergeFactory.__name__ = OwnMergeFactory.__qualname__ = base.__name__
    factory.__class__ = OwnMergeFactory
    return factory


def has_own_merge(destination: Any) -> bool:
    return getattr(destination, "own_merge", None) is not None


def _client_with_own_merge(base: Any, own: OwnMerge, atomic_replace: bool) -> Any:
    from dlt.destinations.impl.filesystem.filesystem import FilesystemClient

    if issubclass(base, FilesystemClient):
        delta_job = _delta_job_with_own_merge(own)

        class OwnMergeFilesystemClient(base):  # type: ignore[misc, valid-type]
            def get_reference_followup_job_class(self, table: Any) -> Any:
                job = super().get_reference_followup_job_class(table)
                return delta_job if table.get("table_format") == "delta" else job

        return OwnMergeFilesystemClient

    class OwnMergeSqlClient(base):  # type: ignore[misc, valid-type]
        def _create_merge_followup_jobs(self, table_chain: Any) -> List[Any]:
            plan = own.plan(table_chain[0]) if len(table_chain) == 1 else None
            if plan is None:
                return super()._create_merge_followup_jobs(table_chain)
            return [_statements_job(table_chain, self.sql_client, lambda target, staging, quote:
                                    own.merge_sql(plan, target, staging, quote))]

        def _create_replace_followup_jobs(self, table_chain: Any) -> List[Any]:
            strategy = table_chain[0].get("x-replace-strategy")
            if not atomic_replace or strategy != "insert-from-staging":
                return super()._create_replace_followup_jobs(table_chain)
            return [_statements_job([table], self.sql_client, functools.partial(
                own.overwrite_sql, [name for name, column in table["columns"].items()
                                    if column.get("data_type")])) for table in table_chain]

    return OwnMergeSqlClient


def _statements_job(table_chain: Any, sql_client: Any, statement: Callable[[str, str, Any], str]
                    ) -> Any:
    """A dlt SQL follow-up job running `statement(target, staging, quote)` for the chain's
    table (dlt runs it after the table's files are in the staging dataset)."""
    from dlt.destinations.sql_jobs import SqlFollowupJob

    name = table_chain[0]["name"]
    with sql_client.with_staging_dataset():
        staging = sql_client.make_qualified_table_name(name)
    sql = statement(sql_client.make_qualified_table_name(name), staging,
                    sql_client.escape_column_name)
    job = type("OwnStatementsJob", (SqlFollowupJob,),
               {"generate_sql": classmethod(lambda cls, chain, client: [sql])})
    return job.from_table_chain(table_chain, sql_client)


def _delta_job_with_own_merge(own: OwnMerge) -> Any:
    from dlt.common.libs.deltalake import (deltalake_storage_options, evolve_delta_table_schema,
                                           write_delta_table)
    from dlt.destinations.exceptions import DestinationUndefinedEntity
    from dlt.destinations.impl.filesystem.filesystem import DeltaLoadFilesystemJob

    class OwnMergeDeltaJob(DeltaLoadFilesystemJob):
        def run(self) -> None:
            plan = own.plan(self._load_table)
            if self._load_table["write_disposition"] != "merge" or plan is None:
                return super().run()
            data = self.arrow_dataset.to_table()
            try:
                table = self._job_client.load_open_table("delta", self.load_table_name)
            except DestinationUndefinedEntity:
                config = self._job_client.config
                location = self._job_client.get_open_table_location("delta", self.load_table_name)
                write_delta_table(location, own.first_rows(data, plan), "append",
                                  partition_by=self._partition_columns,
                                  storage_options=deltalake_storage_options(
                                      config.credentials, config.deltalake_storage_options),
                                  configuration=config.deltalake_configuration)
                return None
            evolve_delta_table_schema(table, data.schema)
            own.delta_merge(table, data, plan)
            return None

    return OwnMergeDeltaJob


# -- packages a killed run left ----------------------------------------------------------------

@dataclass
class RefusedLoad:
    """A pending load the destination refused for good (a terminal error: retrying repeats it)."""

    refused: List[str]  # destination tables whose files the destination refused
    held: List[str]  # every destination table with rows in the pending packages


def refused_pending_load(pipeline: dlt.Pipeline) -> Optional[RefusedLoad]:
    """The pending load's refusal, or None when nothing pending failed for good. dlt 1.31
    keeps a package whose job failed terminally pending until it is aborted: every later load
    retries it and fails the same way."""
    plan = pipeline.abort_packages(dry_run=True)
    package = (plan or {}).get("package_to_abort")
    if not package or not package.get("terminal_jobs"):
        return None
    refused = {_job_table(path) for path in package["terminal_jobs"]}
    held = set()
    for load_id in (pipeline.list_normalized_load_packages()
                    + pipeline.list_extracted_load_packages()):
        for jobs in pipeline.get_load_package_info(load_id).jobs.values():
            held.update(job.job_file_info.table_name for job in jobs)
    return RefusedLoad(sorted(refused), sorted(t for t in held | refused if not t.startswith("_dlt")))


def pending_change_tables(pipeline: dlt.Pipeline) -> Set[str]:
    """The destination tables (identifiers) that pending packages merge or append rows into:
    tables that must exist already (a pending copy, `replace`, creates its tables)."""
    schema = pipeline.default_schema if pipeline.default_schema_name else None
    tables = set()
    for load_id in (pipeline.list_normalized_load_packages()
                    + pipeline.list_extracted_load_packages()):
        for jobs in pipeline.get_load_package_info(load_id).jobs.values():
            tables.update(job.job_file_info.table_name for job in jobs)
    return {table for table in tables if not table.startswith("_dlt") and schema is not None
            and schema.tables.get(table, {}).get("write_disposition") != "replace"}


def _job_table(path: str) -> str:
    from dlt.common.storages.load_package import ParsedLoadJobFileName

    return ParsedLoadJobFileName.parse(os.path.basename(path)).table_name


def set_aside_pending_loads(pipeline: dlt.Pipeline) -> None:
    """Aborts every pending package: dlt restores the pipeline's local state and schemas to
    where they were before them, and records no completed load for them in the destination."""
    pipeline.abort_packages()


# dlt saves a schema file through a temporary file named by 16 hex digits, renamed into place.
_TORN_SCHEMA_FILE = re.compile(r"^[0-9a-f]{16}$")


def drop_torn_schema_files(pipeline_name: str) -> None:
    """Removes the temporary file of a schema save a kill interrupted: dlt takes every file in
    the pipeline's `schemas` folder for a schema, fails to load this one, and so fails every
    later run (`step=sync`). Called before the pipeline is made: making it lists the schemas."""
    from dlt.common.pipeline import get_dlt_pipelines_dir

    folder = Path(get_dlt_pipelines_dir()) / pipeline_name / "schemas"
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_file() and _TORN_SCHEMA_FILE.match(entry.name):
            entry.unlink()


def repair_crashed_packages(pipeline: dlt.Pipeline) -> None:
    """Undoes what a kill at the wrong moment leaves behind in dlt's package folders, so that
    loading the pending packages gives the destination each of their rows exactly once."""
    _drop_normalized_extract_copies(pipeline)
    for load_id in pipeline.list_normalized_load_packages():
        _redo_uncertain_tables(pipeline, load_id)


def _drop_normalized_extract_copies(pipeline: dlt.Pipeline) -> None:
    """- Killed after normalize committed a package but before it removed the extracted copy: the
      copy would be normalized again and collide with the committed one. It is dropped.
    - Killed after extract wrote a package but before the pipeline saved the schema that goes
      with it: normalize would use the older stored schema (a table still `replace` from the
      snapshot instead of `merge`). The package's own schema is saved first.
    """
    normalized = set(pipeline.list_normalized_load_packages())
    # dlt has no public API for the extracted packages' storage.
    extracted = pipeline._get_normalize_storage().extracted_packages  # noqa: SLF001
    for load_id in extracted.list_packages():
        if load_id in normalized:
            extracted.delete_package(load_id)
            continue
        try:
            package_schema = extracted.load_schema(load_id)
        except FileNotFoundError:
            continue
        if package_schema.name in pipeline.schemas and (
                pipeline.schemas[package_schema.name].version < package_schema.version):
            pipeline.schemas.save_schema(package_schema)


def _redo_uncertain_tables(pipeline: dlt.Pipeline, load_id: str) -> None:
    """Makes the next attempt of a package that was loading when the run died write each of its
    tables exactly once.

    dlt writes a marker for a job once its run returned (the destination committed), and takes
    such a job as done on the next attempt. A job in `started_jobs` without a marker may still
    have committed its rows: the kill came between the destination's commit and the marker (on
    Databricks that includes the removal of the staged file). dlt runs it again. For a merged
    table that is harmless: the merge deduplicates by key. A replaced table (a snapshot, a
    truncate) or an appended one (no key) would get those rows twice. So such a table loses what
    this package wrote, and all its jobs run again: a replaced table is emptied (its truncate had
    already run), an appended one loses the rows carrying this load's id.

    On Delta (filesystem) a table's rows are written by one follow-up job, which dlt runs again
    from `started_jobs`: a replace overwrites the table, so that is exact, and only appended
    tables need their rows removed first.
    """
    package = pipeline.get_load_package_info(load_id)
    # dlt has no public API for a package's job folders and markers.
    packages = pipeline._get_load_storage().normalized_packages  # noqa: SLF001
    on_delta = pipeline.destination.destination_name == "filesystem"
    uncertain = {job.job_file_info.table_name for job in package.jobs.get("started_jobs", [])
                 if packages.load_pending_transition(load_id, Path(job.file_path).name) is None}
    for table_name in sorted(uncertain):
        table = package.schema.tables.get(table_name)
        if table is None or table_name.startswith("_dlt"):
            continue  # dlt's own tables: a repeated state row is harmless
        disposition = table.get("write_disposition")
        if disposition == "replace" and not on_delta:
            _truncate(pipeline, table_name)
        elif disposition == "append" and LOAD_ID_COLUMN in table.get("columns", {}):
            _delete_load_rows(pipeline, table_name, load_id, on_delta)
        else:
            continue
        if not on_delta:
            for job in package.jobs.get("started_jobs", []) + package.jobs.get(
                    "completed_jobs", []):
                if job.job_file_info.table_name == table_name:
                    path = Path(job.file_path)
                    packages.clear_pending_transition(load_id, path.name)
                    os.replace(path, path.parent.parent / "new_jobs" / path.name)


@_destination_read
def _truncate(pipeline: dlt.Pipeline, table_name: str) -> None:
    with pipeline.sql_client() as client:
        client.truncate_tables(table_name)


@_destination_read
def _delete_load_rows(pipeline: dlt.Pipeline, table_name: str, load_id: str,
                      on_delta: bool) -> None:
    if not re.fullmatch(r"[0-9.]+", load_id):  # dlt's load ids are timestamps
        raise ReplicationError(f"unexpected load id {load_id!r}")
    predicate = f"{LOAD_ID_COLUMN} = '{load_id}'"
    if on_delta:
        from dlt.common.libs.deltalake import get_delta_tables

        get_delta_tables(pipeline, table_name)[table_name].delete(predicate)
        return
    with pipeline.sql_client() as client:
        client.execute_sql(f"DELETE FROM {client.make_qualified_table_name(table_name)} "
                           f"WHERE {predicate}")


# -- exception classes (failures.py recognises errors by these types) ---------------------------
# dlt does not export these classes from `dlt`; their paths are those of dlt 1.31
# (tests/test_dlt_compat.py checks that each still exists).


# What `pipeline.run()` and its steps raise around the real failure (`.exception`), naming the
# step that failed (`.step`: "sync", "extract", "normalize", "load"...).
PIPELINE_STEP_FAILED = PipelineStepFailed

# A config.toml or secrets.toml dlt could not parse; `.full_paths` names the file.
CONFIG_FILE_UNREADABLE = TomlProviderReadException

# tomlkit's own errors (dlt's TOML provider parses with it), should one escape dlt unwrapped.
TOML_ERRORS = (tomlkit.exceptions.TOMLKitError,)

# A configuration value that is missing or cannot be turned into its type.
CONFIG_VALUE_ERRORS = (ConfigFieldMissingException, ConfigValueCannotBeCoercedException)

# --destination names no destination dlt knows. (Both also derive from DESTINATION_ERRORS: test
# these first.)
DESTINATION_NAME_ERRORS = (UnknownDestinationModule, InvalidDestinationReference)

# The base of what dlt's destination layer raises: its SQL clients, load jobs, state reads,
# schema updates (terminal and transient alike).
DESTINATION_ERRORS = (DestinationException,)

# Every dlt (and tomlkit) exception class named above, for the test that pins them.
EXCEPTION_CLASSES = (PIPELINE_STEP_FAILED, CONFIG_FILE_UNREADABLE, *TOML_ERRORS,
                     *CONFIG_VALUE_ERRORS, *DESTINATION_NAME_ERRORS, *DESTINATION_ERRORS)
