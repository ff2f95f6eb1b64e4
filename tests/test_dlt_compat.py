"""dlt internals the pipeline depends on still exist where pg_replication.dlt_compat takes them
from (written against dlt 1.31.0, requirements.txt). A dlt upgrade that moves or changes one
fails here, by name. No database needed."""

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest

# The exception classes dlt_compat imports, by the path it imports them from.
DLT_EXCEPTION_CLASSES = [
    ("dlt.pipeline.exceptions", "PipelineStepFailed"),
    ("dlt.common.configuration.providers.toml", "TomlProviderReadException"),
    ("dlt.common.configuration.exceptions", "ConfigFieldMissingException"),
    ("dlt.common.configuration.exceptions", "ConfigValueCannotBeCoercedException"),
    ("dlt.common.destination.exceptions", "UnknownDestinationModule"),
    ("dlt.common.destination.exceptions", "InvalidDestinationReference"),
    ("dlt.common.destination.exceptions", "DestinationException"),
    ("tomlkit.exceptions", "TOMLKitError"),
]


@pytest.mark.parametrize("module, name", DLT_EXCEPTION_CLASSES,
                         ids=[name for _, name in DLT_EXCEPTION_CLASSES])
def test_exception_class_exists(module, name):
    cls = getattr(importlib.import_module(module), name, None)
    assert isinstance(cls, type) and issubclass(cls, Exception), f"{module}.{name} is gone"


def test_dlt_compat_names_only_these_classes():
    from pg_replication import dlt_compat

    listed = {getattr(importlib.import_module(module), name)
              for module, name in DLT_EXCEPTION_CLASSES}
    assert set(dlt_compat.EXCEPTION_CLASSES) == listed


def test_destination_name_errors_are_destination_errors():
    # failures.py tests for an unknown destination (exit 2) before any destination error (exit 7)
    from pg_replication import dlt_compat

    for cls in dlt_compat.DESTINATION_NAME_ERRORS:
        assert issubclass(cls, dlt_compat.DESTINATION_ERRORS)


def test_pipeline_step_failed_carries_step_and_cause():
    # failures._unwrap reads `.step` and `.exception`; a failed sync is a destination failure
    from pg_replication.dlt_compat import PIPELINE_STEP_FAILED
    from pg_replication.failures import describe_failure

    pipeline = SimpleNamespace(pipeline_name="p", has_pending_data=False)
    error = PIPELINE_STEP_FAILED(pipeline, "sync", None, RuntimeError("no route to host"))
    assert error.step == "sync" and str(error.exception) == "no route to host"
    message, code = describe_failure(error)
    assert message.startswith("the destination failed during connect: no route to host")
    assert code == 7


def test_toml_read_error_text_and_paths():
    # failures._config_error_text takes the reason from the second line and the file from
    # `.full_paths`
    from pg_replication.dlt_compat import CONFIG_FILE_UNREADABLE
    from pg_replication.failures import describe_failure

    error = CONFIG_FILE_UNREADABLE("config.toml", "config.toml", ["/p/.dlt/config.toml"],
                                   "Unexpected character at line 2")
    message, code = describe_failure(error)
    assert message == ("malformed configuration file /p/.dlt/config.toml: Unexpected character "
                       "at line 2")
    assert code == 2


# -- the other internals dlt_compat uses ---------------------------------------------------------

def test_dlt_is_the_version_dlt_compat_was_written_against():
    """An upgrade must be a decision: review dlt_compat.py, then move this pin with
    requirements.txt."""
    import dlt

    pinned = [line.split("==")[1].strip() for line in
              (Path(__file__).resolve().parents[1] / "requirements.txt").read_text().splitlines()
              if line.startswith("dlt[") or line.startswith("dlt==")]
    assert pinned and dlt.__version__ == pinned[0]


# (module, attribute path) of every dlt internal dlt_compat touches.
DLT_INTERNALS = [
    ("dlt.extract.source", "DltSource"),
    ("dlt.pipeline.state_sync", "load_pipeline_state_from_destination"),
    ("dlt.destinations.exceptions", "DestinationUndefinedEntity"),
    ("dlt.destinations.job_client_impl", "SqlJobClientBase.update_stored_schema"),
    ("dlt.destinations.job_client_impl", "SqlJobClientBase.get_storage_tables"),
    ("dlt.destinations.job_client_impl", "SqlJobClientBase.is_storage_initialized"),
    ("dlt.common.normalizers.naming.snake_case", "NamingConvention.normalize_identifier"),
    ("dlt.common.libs.deltalake", "get_delta_tables"),
    ("dlt.pipeline.pipeline", "Pipeline._get_normalize_storage"),
    ("dlt.pipeline.pipeline", "Pipeline._get_load_storage"),
    ("dlt.common.storages.load_package", "PackageStorage.load_pending_transition"),
    ("dlt.common.storages.load_package", "PackageStorage.clear_pending_transition"),
    ("dlt.common.storages.load_package", "PackageStorage.list_packages"),
    ("dlt.common.storages.load_package", "PackageStorage.delete_package"),
    ("dlt.common.storages.load_package", "PackageStorage.load_schema"),
    # the own merge and replace (with_own_merge)
    ("dlt.common.destination", "Destination.from_reference"),
    ("dlt.common.destination", "Destination.client_class"),
    ("dlt.common.destination", "Destination.destination_type"),
    ("dlt.destinations.job_client_impl", "SqlJobClientBase._create_merge_followup_jobs"),
    ("dlt.destinations.job_client_impl", "SqlJobClientBase._create_replace_followup_jobs"),
    ("dlt.destinations.sql_jobs", "SqlFollowupJob.from_table_chain"),
    ("dlt.destinations.sql_client", "SqlClientBase.with_staging_dataset"),
    ("dlt.destinations.sql_client", "SqlClientBase.make_qualified_table_name"),
    ("dlt.destinations.sql_client", "SqlClientBase.escape_column_name"),
    # verify --data reads the destination's tables (destination_tables)
    ("dlt.destinations.sql_client", "SqlClientBase.execute_query"),
    ("dlt.destinations.sql_client", "SqlClientBase.execute_sql"),
    ("dlt.destinations.impl.filesystem.filesystem",
     "FilesystemClient.get_reference_followup_job_class"),
    ("dlt.destinations.impl.filesystem.filesystem", "FilesystemClient.load_open_table"),
    ("dlt.destinations.impl.filesystem.filesystem", "FilesystemClient.get_open_table_location"),
    ("dlt.destinations.impl.filesystem.filesystem", "DeltaLoadFilesystemJob.run"),
    ("dlt.destinations.impl.filesystem.filesystem", "DeltaLoadFilesystemJob.arrow_dataset"),
    ("dlt.common.libs.deltalake", "evolve_delta_table_schema"),
    ("dlt.common.libs.deltalake", "write_delta_table"),
    ("dlt.common.libs.deltalake", "deltalake_storage_options"),
]


@pytest.mark.parametrize("module, path", DLT_INTERNALS, ids=[p for _, p in DLT_INTERNALS])
def test_dlt_internal_exists(module, path):
    found = importlib.import_module(module)
    for part in path.split("."):
        found = getattr(found, part, None)
        assert found is not None, f"{module}.{path} is gone"


def test_destination_client_settings_dlt_compat_reads():
    """Databricks: `staging_volume_name` and the credentials' `catalog`; the staging dataset's
    name; filesystem: `dataset_path`."""
    from dlt.destinations.impl.databricks.configuration import (DatabricksClientConfiguration,
                                                                DatabricksCredentials)
    from dlt.destinations.impl.filesystem.filesystem import FilesystemClient
    from dlt.destinations.sql_client import SqlClientBase

    assert "staging_volume_name" in DatabricksClientConfiguration.get_resolvable_fields()
    assert "catalog" in DatabricksCredentials.get_resolvable_fields()
    assert "staging_dataset_name" in SqlClientBase.__annotations__
    assert isinstance(getattr(FilesystemClient, "dataset_path", None), property)


def test_own_merge_swaps_the_client_and_keeps_the_destination_type(tmp_path):
    """with_own_merge: the destination keeps dlt's type and name (what the pipeline's state
    records), its client creates the own follow-up jobs, and the Databricks replace strategy is
    a configuration field the factory accepts."""
    import dlt
    from dlt.destinations.impl.databricks.configuration import DatabricksClientConfiguration
    from dlt.destinations.impl.duckdb.duck import DuckDbClient
    from dlt.destinations.impl.filesystem.filesystem import FilesystemClient

    from pg_replication.destinations import OWN_MERGE
    from pg_replication.dlt_compat import has_own_merge, with_own_merge

    for name, client in (("duckdb", DuckDbClient), ("filesystem", FilesystemClient)):
        destination = with_own_merge(name, OWN_MERGE)
        assert has_own_merge(destination)
        assert destination.destination_type == f"dlt.destinations.{name}"
        assert destination.destination_name == name
        assert issubclass(destination.client_class, client)
        assert destination.client_class is not client
        assert with_own_merge(destination, OWN_MERGE) is destination  # not wrapped twice
    assert not has_own_merge(dlt.destinations.duckdb())
    assert "replace_strategy" in DatabricksClientConfiguration.get_resolvable_fields()


def test_make_source_shares_the_state_of_its_name(tmp_path):
    import dlt

    from pg_replication.dlt_compat import make_source

    def rows():
        dlt.current.source_state()["seen"] = True
        yield {"id": 1}

    pipeline = dlt.pipeline("compat_source", pipelines_dir=str(tmp_path), destination="duckdb",
                            dataset_name="compat")
    pipeline.extract(make_source("pg_replication", [dlt.resource(rows, name="r")()]))
    assert pipeline.state["sources"]["pg_replication"]["seen"] is True
