"""dlt internals the pipeline depends on still exist where pg_replication.dlt_compat takes them
from (written against dlt 1.31.0, requirements.txt). A dlt upgrade that moves or changes one
fails here, by name. No database needed."""

import importlib
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
