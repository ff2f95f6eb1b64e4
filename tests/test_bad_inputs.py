"""Bad inputs: each ends with a non-zero exit code of its own (README's table), exactly one line on
stderr starting with "Error: ", no traceback, no password in the output, and nothing changed on the
replication slots (confirmed_flush_lsn of an existing slot equal before and after, no slot created).

The servers with special settings (password authentication with one replication slot,
wal_level=replica) and the prepared projects are started once for the module.
"""

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from sandbox.pg_server import PostgresCluster, free_port
from tests.tools import CliRunResult, Project

PASSWORD = "s3cr3t-PASS"
EXIT_CONFIG, EXIT_CONNECT, EXIT_NOT_READY = 2, 3, 4


def _url(base: str, user: str = "postgres", password: Optional[str] = PASSWORD,
         port: Optional[int] = None, database: Optional[str] = None) -> str:
    parts = urlsplit(base)
    auth = f"{user}:{password}@" if password is not None else f"{user}@"
    netloc = f"{auth}{parts.hostname}:{port or parts.port}"
    path = "/" + database if database is not None else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


def _admin(url: str):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def _sql(url: str, *statements: str) -> None:
    conn = _admin(url)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def _slots(url: str) -> Dict[str, Tuple[Optional[str], bool]]:
    """Every slot of the server: name -> (confirmed_flush_lsn, active)."""
    conn = _admin(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT slot_name, confirmed_flush_lsn::text, active FROM pg_replication_slots")
            return {name: (lsn, active) for name, lsn, active in cur.fetchall()}
    finally:
        conn.close()


@dataclass
class Prepared:
    """A project whose snapshot is loaded and whose slot holds unconsumed changes."""

    project: Project
    admin_url: str  # superuser URL of the project's server, to look at its slots

    def run(self, *args: str, env: Optional[Dict[str, str]] = None,
            drop: Iterable[str] = ()) -> CliRunResult:
        environment = self.project.environment(env)
        for key in drop:
            environment.pop(key, None)
        proc = subprocess.run(self.project.command(*args), capture_output=True, text=True,
                              env=environment, cwd=self.project.dir, timeout=120)
        return CliRunResult(proc.returncode, proc.stdout, proc.stderr)


def _prepare(tmp: Path, admin_url: str, database: str, source_url: str) -> Prepared:
    _sql(admin_url, f'CREATE DATABASE "{database}"')
    _sql(_url(admin_url, password=None, database=database),
         "CREATE TABLE items (id int PRIMARY KEY, name text)",
         "INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 100) g")
    project = Project(tmp, source_url)
    project.run("snapshot")
    _sql(_url(admin_url, password=None, database=database),
         "UPDATE items SET name = 'pending' WHERE id <= 10",
         "INSERT INTO items VALUES (1000, 'pending')")
    return Prepared(project, admin_url)


@pytest.fixture(scope="module")
def shared(pg_server_url, tmp_path_factory) -> Prepared:
    """On the suite's server (trust authentication: the password in the URL is ignored)."""
    database = "bad_inputs_" + uuid.uuid4().hex[:8]
    prepared = _prepare(tmp_path_factory.mktemp("shared"), pg_server_url, database,
                        _url(pg_server_url, database=database))
    yield prepared
    conn = _admin(pg_server_url)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE database = %s AND NOT active", (database,))
        cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory) -> Prepared:
    """A server with password authentication and max_replication_slots=1, its one slot taken by
    a prepared project that logs in as `app` with PASSWORD."""
    cluster = PostgresCluster(extra_settings={"max_replication_slots": "1",
                                              "password_encryption": "scram-sha-256"}).start()
    try:
        _sql(cluster.url, f"CREATE ROLE app LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        hba = cluster.data / "pg_hba.conf"
        hba.write_text("local all all trust\n"
                       "host all postgres 127.0.0.1/32 trust\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n")
        cluster.pg_ctl("reload")
        yield _prepare(tmp_path_factory.mktemp("one_slot"), cluster.url, "appdb",
                       _url(cluster.url, user="app", database="appdb"))
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def replica_server() -> str:
    cluster = PostgresCluster(extra_settings={"wal_level": "replica"}).start()
    try:
        _sql(cluster.url, 'CREATE DATABASE "appdb"')
        _sql(_url(cluster.url, password=None, database="appdb"),
             "CREATE TABLE items (id int PRIMARY KEY, name text)",
             "INSERT INTO items VALUES (1, 'a')")
        yield cluster.url
    finally:
        cluster.stop()


def assert_clean_failure(result: CliRunResult, exit_code: int, wording: str,
                         slots_before: Dict, slots_after: Dict) -> None:
    context = f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exit_code == exit_code, context
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), context
    assert wording.lower() in lines[0].lower(), f"expected {wording!r} in the line; {context}"
    assert "Traceback" not in result.output, context
    assert PASSWORD not in result.output, f"password in the output; {context}"
    assert slots_after == slots_before, f"slots changed: {slots_before} -> {slots_after}"


def _check(prepared: Prepared, args: List[str], exit_code: int, wording: str,
           env: Optional[Dict[str, str]] = None, drop: Iterable[str] = ()) -> CliRunResult:
    before = _slots(prepared.admin_url)
    result = prepared.run(*args, env=env, drop=drop)
    assert_clean_failure(result, exit_code, wording, before, _slots(prepared.admin_url))
    return result


COMMANDS = ["cdc", "snapshot"]
CREDENTIALS = "SOURCES__PG_REPLICATION__CREDENTIALS"


# -- connecting -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_wrong_password(one_slot, command):
    url = _url(one_slot.project.source_url, user="app", password="wrong-" + PASSWORD)
    _check(one_slot, [command], EXIT_CONNECT, "password authentication failed",
           env={CREDENTIALS: url})


def test_unknown_user(one_slot):
    url = _url(one_slot.project.source_url, user="nobody")
    _check(one_slot, ["cdc"], EXIT_CONNECT, "nobody", env={CREDENTIALS: url})


@pytest.mark.parametrize("command", COMMANDS)
def test_unreachable_port(shared, command):
    url = _url(shared.project.source_url, port=free_port())
    _check(shared, [command], EXIT_CONNECT, "cannot connect", env={CREDENTIALS: url})


def test_unknown_database(shared):
    url = _url(shared.project.source_url, database="no_such_database")
    _check(shared, ["cdc"], EXIT_CONNECT, "no_such_database", env={CREDENTIALS: url})


@pytest.mark.parametrize("url, wording, secret", [
    # libpq reads the host after the first '@': it printed the password's tail as a host name
    ("postgresql://app:se@krit@127.0.0.1:{port}/appdb", "%40", "krit"),
    ("postgresql://app:pw@[::1:{port}/appdb", "cannot be read", "pw"),
    # a '#', '?' or '/' ends the password early: a port, or a host, read out of it
    ("postgresql://app:Ab#Cd@Ef@127.0.0.1:{port}/appdb", "%23", "Ab"),
    ("postgresql://app:Ab@Cd/Ef@127.0.0.1:{port}/appdb", "%2F", "Cd"),
    ("postgresql://app:Gh?Ij@127.0.0.1:{port}/appdb", "%3F", "Gh"),
    # libpq printed the whole password in its "invalid percent-encoded token" error
    ("postgresql://app:Zq%409Vx%yU!Kw@127.0.0.1:{port}/appdb", "%25", "Vx"),
    ("postgresql://app@127.0.0.1:{port}/appdb?password=Qw%ZZerty", "%25", "erty"),
])
def test_a_url_libpq_would_read_otherwise_is_refused_without_its_secret(shared, url, wording,
                                                                         secret):
    port = urlsplit(shared.project.source_url).port
    result = _check(shared, ["cdc"], EXIT_CONFIG, wording,
                    env={CREDENTIALS: url.format(port=port)})
    assert secret not in result.output


# -- the source server is not ready -------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_wal_level_replica(replica_server, tmp_path, command):
    project = Project(tmp_path, _url(replica_server, database="appdb"))
    prepared = Prepared(project, replica_server)
    _check(prepared, [command], EXIT_NOT_READY, "wal_level")


def test_max_replication_slots_exhausted(one_slot, tmp_path):
    # Only snapshot creates slots (cdc without a snapshot refuses before creating anything).
    other = Project(tmp_path, one_slot.project.source_url)  # a second slot name
    prepared = Prepared(other, one_slot.admin_url)
    _check(prepared, ["snapshot"], EXIT_NOT_READY, "all replication slots are in use")


# -- configuration ------------------------------------------------------------------------------


def test_unknown_table_in_tables(shared):
    _check(shared, ["snapshot", "--tables", "items,no_such_table"], EXIT_CONFIG, "no_such_table")


@pytest.mark.parametrize("args, wording", [
    (["verify", "--data", "--max-keys", "0"], "--max-keys"),
    (["cdc", "--interval", "abc"], "--interval"),
    (["snapshot", "--tables"], "--tables"),
    (["--no-such-option", "cdc"], "--no-such-option"),
    (["no-such-command"], "no-such-command"),
])
def test_mistyped_options_are_one_line(shared, args, wording):
    """Click's usage errors end like every other failure, one line (not a usage block)."""
    _check(shared, args, EXIT_CONFIG, wording)


@pytest.mark.parametrize("command, slot_name", [
    ("cdc", "bad name"), ("cdc", 'bad"quote'), ("cdc", "slot;drop"), ("snapshot", "Upper-Case"),
])
def test_slot_name_with_invalid_characters(shared, command, slot_name):
    _check(shared, [command], EXIT_CONFIG, "invalid slot name",
           env={"SOURCES__PG_REPLICATION__SLOT_NAME": slot_name})


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_credentials(shared, command):
    _check(shared, [command], EXIT_CONFIG, "credentials", drop=[CREDENTIALS])


@pytest.mark.parametrize("file_name, garbage", [
    ("config.toml", '[sources.pg_replication\nslot_name = "unterminated\n'),
    ("config.toml", "this is = = not toml\n[[[\n"),
    # unquoted URL with a password: the error line must not repeat it
    ("secrets.toml", f"[sources.pg_replication]\ncredentials = postgresql://app:{PASSWORD}@x/db\n"),
])
def test_malformed_dlt_config_file(shared, file_name, garbage):
    path = Path(shared.project.env["DLT_PROJECT_DIR"]) / ".dlt" / file_name
    path.write_text(garbage)
    try:
        _check(shared, ["cdc"], EXIT_CONFIG, "malformed configuration")
    finally:
        path.unlink()


# -- --debug ------------------------------------------------------------------------------------


def test_debug_adds_the_traceback(shared):
    url = _url(shared.project.source_url, port=free_port())
    before = _slots(shared.admin_url)
    result = shared.run("--debug", "cdc", env={CREDENTIALS: url})
    assert result.exit_code == EXIT_CONNECT, result.output
    assert "Traceback (most recent call last)" in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot connect"), result.stderr
    assert PASSWORD not in result.output, f"password in the --debug output:\n{result.output}"
    assert _slots(shared.admin_url) == before
    # and without --debug the same failure is one line
    _check(shared, ["cdc"], EXIT_CONNECT, "cannot connect", env={CREDENTIALS: url})


def test_the_prepared_projects_still_work(shared, one_slot):
    """After all the failures: the slots still hold the pending changes and cdc loads them."""
    for prepared in (shared, one_slot):
        result = prepared.run("cdc")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("cdc: 11 changes"), result.stdout


def test_snapshot_with_an_existing_slot_needs_one_free_slot(one_slot):
    # A rerun or refresh reads its copy at a temporary slot's consistent point: with no free slot
    # it refuses clearly, and the pipeline's slot stays where it was.
    result = _check(one_slot, ["snapshot"], EXIT_NOT_READY, "temporary slot")
    assert "all replication slots are in use" in result.stderr


def test_destination_out_of_memory_says_so_in_its_one_line():
    from pg_replication.failures import essential_line

    # What dlt wraps around a DuckDB failure of a load job: a traceback, then DuckDB's advice.
    text = ("Job failed\nTraceback (most recent call last):\n  File \"x.py\", line 1, in run\n"
            "dlt.destinations.exceptions.DatabaseTransientException: Out of Memory Error: could "
            "not allocate block of size 555.8 MiB (200.1 KiB/183.1 MiB used)\n\nPossible "
            "solutions:\n* Increasing the memory limit (SET memory_limit='...GB')\n\n"
            "See also https://duckdb.org/docs/current/guides/performance/how_to_tune_workloads")
    line = essential_line(RuntimeError(text))
    assert "Out of Memory Error: could not allocate block" in line
    assert "raise `memory_limit`" in line and "See also" not in line
