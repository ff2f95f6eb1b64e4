"""Databricks failures seen from the CLI, offline: an unreachable workspace with a fake token, and
missing credentials. One line, non-zero exit, slot not advanced, token never printed."""

import os

import pytest

FAKE_TOKEN = "dapi-FAKE-TOKEN-0123456789abcdef"


@pytest.fixture
def databricks_project(project, source, monkeypatch):
    for key in list(os.environ):
        if key.startswith("DATABRICKS_"):
            monkeypatch.delenv(key)
    with source.cursor() as cur:
        cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        cur.execute("INSERT INTO items VALUES (1, 'a')")
    project.destination = "databricks"
    return project


@pytest.mark.slow
def test_unreachable_workspace_with_fake_token(databricks_project, source):
    project = databricks_project
    env = {
        "DESTINATION__DATABRICKS__CREDENTIALS__SERVER_HOSTNAME": "127.0.0.1",  # nothing listens
        "DESTINATION__DATABRICKS__CREDENTIALS__HTTP_PATH": "/sql/1.0/warehouses/fake",
        "DESTINATION__DATABRICKS__CREDENTIALS__CATALOG": "main",
        "DESTINATION__DATABRICKS__CREDENTIALS__ACCESS_TOKEN": FAKE_TOKEN,
    }
    snapshot = project.run("snapshot", env=env, expect=7, timeout=240)
    confirmed = project.slot_confirmed_lsn()
    with source.cursor() as cur:
        cur.execute("INSERT INTO items VALUES (2, 'b')")
    failed = project.run("cdc", env=env, expect=7, timeout=240)
    for result in (snapshot, failed):
        assert result.stderr.startswith("Error: the destination failed")
        assert result.stderr.count("\n") == 1, result.stderr
        assert FAKE_TOKEN not in result.output and "Traceback" not in result.output
    assert project.slot_confirmed_lsn() == confirmed


def test_missing_databricks_credentials_is_a_config_error(databricks_project):
    result = databricks_project.run("snapshot", expect=2, timeout=120)
    assert result.stderr.startswith("Error: missing or invalid configuration")
    assert result.stderr.count("\n") == 1
