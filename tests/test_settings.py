"""The one settings object (settings.PgReplicationConfiguration) as dlt resolves it for the CLI
and the library: defaults, overrides, the forms users write. No database needed; each case runs
in its own process, in a project directory of its own, as the CLI would."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RESOLVE = """
import json, sys
sys.path.insert(0, {root!r})
from pg_replication.settings import resolve_settings
try:
    settings = resolve_settings(**json.loads(sys.argv[1]))
    print(json.dumps(dict(settings)))
except Exception as e:
    print(json.dumps({{"error": type(e).__name__, "message": str(e)}}))
"""


def resolve(tmp_path: Path, given=None, env=None, secrets: str = "", config: str = ""):
    (tmp_path / ".dlt").mkdir(exist_ok=True)
    (tmp_path / ".dlt" / "secrets.toml").write_text(secrets)
    (tmp_path / ".dlt" / "config.toml").write_text(config)
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                   "RUNTIME__DLTHUB_TELEMETRY": "false", **(env or {})}
    out = subprocess.run([sys.executable, "-c", RESOLVE.format(root=str(ROOT)),
                          json.dumps(given or {})], cwd=tmp_path, env=environment,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


URL = {"SOURCES__PG_REPLICATION__CREDENTIALS": "postgresql://u:pw@h:5432/db"}


def test_defaults_are_the_documented_ones(tmp_path):
    settings = resolve(tmp_path, env=URL)
    assert settings == {
        "credentials": "postgresql://u:pw@h:5432/db", "slot_name": "pg_replication_slot",
        "pub_name": "pg_replication_pub", "schema_name": "public", "table_names": None,
        "deletes": "hard", "target_batch_size": 50000, "target_batch_bytes": 16 << 20,
        "target_load_bytes": None, "merge_strategy": None, "delta_table_properties": None,
        "change_data_feed": False, "cluster_by_key": False, "snapshot_max_wait": None,
        "snapshot_workers": None, "snapshot_part_bytes": 64 << 20, "online_chunk_rows": 200000,
        "online_chunk_bytes": 32 << 20, "flush_slot": True, "schema_names": ["public"],
        "exclude_columns": None, "row_filters": None, "failover": None,
        "primary_credentials": None, "snapshot_reader": "copy", "sql_database_backend": "pyarrow"}


def test_schema_names_and_filters_from_the_environment(tmp_path):
    env = {**URL, "SOURCES__PG_REPLICATION__SCHEMA_NAMES": '["sales", "public"]',
           "SOURCES__PG_REPLICATION__EXCLUDE_COLUMNS": '{"people": ["ssn"], "sales.x": "a,b"}',
           "SOURCES__PG_REPLICATION__ROW_FILTERS": '{"public.people": "id < 5"}'}
    settings = resolve(tmp_path, env=env)
    assert (settings["schema_names"], settings["schema_name"]) == (["sales", "public"], "sales")
    assert settings["exclude_columns"] == {"people": ["ssn"], "sales.x": ["a", "b"]}
    assert settings["row_filters"] == {"public.people": "id < 5"}


def test_one_table_written_two_ways_in_exclude_columns_is_refused(tmp_path):
    env = {**URL, "SOURCES__PG_REPLICATION__EXCLUDE_COLUMNS": '{"people": ["ssn"], '
                                                             '"public.people": ["born"]}'}
    result = subprocess.run([sys.executable, str(ROOT / "pipeline_main.py"), "--destination",
                             "duckdb", "status"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                 "DLT_PROJECT_DIR": str(tmp_path), **env})
    assert result.returncode == 2 and "names table public.people twice" in result.stderr, result


def test_environment_toml_and_given_values_in_that_order(tmp_path):
    config = '[sources.pg_replication]\nslot_name = "from_toml"\ntable_names = ["a", "b"]\n'
    env = {**URL, "SOURCES__PG_REPLICATION__SLOT_NAME": "from_env",
           "SOURCES__PG_REPLICATION__TARGET_BATCH_SIZE": "123"}
    settings = resolve(tmp_path, env=env, config=config)
    assert (settings["slot_name"], settings["table_names"]) == ("from_env", ["a", "b"])
    assert settings["target_batch_size"] == 123
    settings = resolve(tmp_path, {"slot_name": "given", "table_names": "x, y"}, env, config=config)
    assert (settings["slot_name"], settings["table_names"]) == ("given", ["x", "y"])
    listed = {**URL, "SOURCES__PG_REPLICATION__TABLE_NAMES": '["a", "b,c"]'}  # dlt's list syntax
    assert resolve(tmp_path, env=listed)["table_names"] == ["a", "b,c"]


@pytest.mark.parametrize("section", ["pg_replication", "sql_database"])
def test_credentials_as_a_toml_table(tmp_path, section):
    secrets = (f"[sources.{section}.credentials]\n"  # no drivername: the source is PostgreSQL
               "database = \"db\"\nusername = \"u\"\npassword = \"pw\"\nhost = \"h\"\nport = 5433\n")
    assert resolve(tmp_path, secrets=secrets)["credentials"] == "postgresql://u:pw@h:5433/db"


@pytest.mark.parametrize("given, error, words", [
    ({}, "ConfigError", "no source credentials"),
    ({"credentials": "mysql://u@h/db"}, "ConfigError", "must be a postgresql:// URL"),
    ({"credentials": "postgresql://h/db", "slot_name": "Bad-Slot"}, "ConfigError",
     "invalid slot name"),
    ({"credentials": "postgresql://h/db", "deletes": "sometimes"}, "ConfigError",
     "invalid deletes"),
    ({"credentials": "postgresql://h/db", "merge_strategy": "replace"}, "ConfigError",
     "invalid merge_strategy"),
    ({"credentials": "postgresql://h/db", "table_names": '["a", '}, "ConfigError",
     "invalid table_names"),
    ({"credentials": "postgresql://h/db", "target_batch_size": 0}, "ConfigError",
     "invalid target_batch_size 0"),
    ({"credentials": "postgresql://h/db", "target_load_bytes": -1}, "ConfigError",
     "invalid target_load_bytes -1"),
    ({"credentials": "postgresql://h/db", "target_bach_size": 3}, "TypeError",
     "unknown setting(s) target_bach_size"),
])
def test_bad_settings_are_refused_by_name(tmp_path, given, error, words):
    refused = resolve(tmp_path, given)
    assert refused["error"] == error and words in refused["message"]


def test_a_value_of_the_wrong_type_is_a_configuration_error(tmp_path):
    env = {**URL, "SOURCES__PG_REPLICATION__TARGET_BATCH_SIZE": "many"}
    assert resolve(tmp_path, env=env)["error"] == "ConfigValueCannotBeCoercedException"


def test_credentials_are_read_only_from_their_own_keys(tmp_path):
    """dlt's wider lookup would take a bare CREDENTIALS (or SOURCES__CREDENTIALS) variable left in
    a cron or container environment: a stray one must not point the pipeline at its database."""
    stray = {"CREDENTIALS": "postgresql://stray/db", "SOURCES__CREDENTIALS": "postgresql://s/db"}
    assert "no source credentials" in resolve(tmp_path, env=stray)["message"]
    fallback = "[sources.sql_database]\ncredentials = \"postgresql://u@fallback/db\"\n"
    settings = resolve(tmp_path, env=stray, secrets=fallback)
    assert settings["credentials"] == "postgresql://u@fallback/db"
