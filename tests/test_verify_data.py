"""`verify --data`: equal tables pass, rows changed behind the pipeline's back are found and named,
on DuckDB and on local Delta, and a live write load never raises a false alarm."""

import json

import pyarrow as pa
import pytest

from tests.tools import (REPO, Project, assert_table_matches, items_and_other, one_error_line,
                         pgbench_load, run_sql)

DESTINATIONS = ["duckdb", "filesystem"]
EXIT_DIFFERENT = 9
DATASET = "bronze_postgres_raw"


@pytest.fixture(params=DESTINATIONS)
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)


def _orders(conn, rows: int = 300) -> None:
    run_sql(conn, "CREATE TYPE address AS (street text, zip text)")
    run_sql(conn, """CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2),
                     placed timestamptz, due date, weight float8, ratio real, paid bool,
                     note varchar(40), code char(4), doc jsonb, tags text[], counts int[],
                     blob bytea, local_ts timestamp, free numeric, ship_to address)""",
            f"""INSERT INTO orders SELECT g, 'customer ' || (g % 17), g * 1.25,
                '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour 0.000123 second',
                '2024-01-01'::date + g, g / 7.0, g / 3.0, g % 2 = 0,
                CASE WHEN g % 5 = 0 THEN NULL ELSE 'n' || g END, 'c' || (g % 9),
                jsonb_build_object('g', g, 'é', 'ü'), ARRAY['a' || g, NULL, 'x"y'],
                ARRAY[g, NULL, -g], decode(md5(g::text), 'hex'),
                '2001-02-03 04:05:06.789'::timestamp + g * interval '1 day', g / 3.0,
                ROW('street ' || g, CASE WHEN g % 2 = 0 THEN NULL ELSE g::text END)::address
                FROM generate_series(1, {rows}) g""",
            # the edges the pipeline clamps or maps (types.py)
            "UPDATE orders SET placed = 'infinity', due = '-infinity', weight = 'NaN', "
            "ratio = '-Infinity', amount = 'NaN', code = NULL WHERE id = 1",
            "UPDATE orders SET weight = 1e300, ratio = 0, due = '0044-03-15 BC', "
            "local_ts = '10000-01-01 00:00:00', tags = '{}', counts = NULL WHERE id = 2")


def _verify(project: Project, *args: str, expect: int = 0):
    return project.run("verify", "--data", *args, expect=expect)


def _duckdb_sql(project: Project, statement: str) -> None:
    import duckdb

    with duckdb.connect(str(project.duckdb_path)) as con:
        con.execute("SET search_path = 'bronze_postgres_raw'")
        con.execute(statement)


def _delta(project: Project, table: str):
    from deltalake import DeltaTable

    return DeltaTable(str(project.delta_root / DATASET / table))


def _change_behind_the_back(project: Project, kind: str) -> None:
    """One row of `orders` changed, deleted or inserted in the destination, not in the source."""
    if project.destination == "duckdb":
        _duckdb_sql(project, {
            "different": "UPDATE orders SET customer = 'tampered' WHERE id = 7",
            "missing": "DELETE FROM orders WHERE id = 8",
            "extra": "INSERT INTO orders SELECT * REPLACE (9999 AS id) FROM orders WHERE id = 9",
        }[kind])
        return
    table = _delta(project, "orders")
    if kind == "different":
        table.update(predicate="id = 7", updates={"customer": "'tampered'"})
    elif kind == "missing":
        table.delete("id = 8")
    else:
        from deltalake import write_deltalake

        row = table.to_pyarrow_table(filters=[("id", "=", 9)])
        row = row.set_column(row.schema.get_field_index("id"), "id",
                             pa.array([9999], type=row.schema.field("id").type))
        write_deltalake(table, row, mode="append")


def test_equal_tables_pass_with_every_type(source, project):
    _orders(source)
    run_sql(source, "CREATE TABLE events (kind text, n int)",  # no key: a multiset
            "INSERT INTO events SELECT 'k' || (g % 3), g % 4 FROM generate_series(1, 50) g")
    project.run("snapshot")
    run_sql(source, "UPDATE orders SET customer = 'changed', weight = weight * 2 WHERE id < 20",
            "DELETE FROM orders WHERE id BETWEEN 30 AND 35",
            "INSERT INTO orders (id, customer) VALUES (1000, 'new')",
            "INSERT INTO events VALUES ('k1', 1), ('k1', 1)")
    project.run("cdc")
    result = _verify(project)
    assert "✓ orders: 295 rows equal in" in result.stdout, result.stdout
    assert "✓ events: 52 rows equal in" in result.stdout, result.stdout
    assert "compared again" not in result.stdout  # nothing differed: no catch-up needed


@pytest.mark.parametrize("kind", ["different", "missing", "extra"])
def test_a_row_changed_behind_the_pipeline_is_found_and_named(source, project, kind):
    _orders(source)
    project.run("snapshot")
    _change_behind_the_back(project, kind)
    result = _verify(project, expect=EXIT_DIFFERENT)
    line = next(line for line in result.stdout.splitlines() if "orders" in line and "✗" in line)
    expected = {"different": "different id=7 (columns customer)", "missing": "missing id=8",
                "extra": "extra id=9999"}[kind]
    assert "1 of 16 chunks differ" in line and expected in line, line
    assert "compared again at" in result.stdout
    found = json.loads(_verify(project, "--json", expect=EXIT_DIFFERENT).stdout)
    assert found["equal"] is False
    (orders,) = [t for t in found["tables"] if t["table"] == "orders"]
    assert [d["kind"] for d in orders["differences"]] == [kind]


def test_a_duplicated_row_of_a_table_without_a_key_is_found(source, duckdb_project):
    project = duckdb_project
    run_sql(source, "CREATE TABLE events (kind text, n int)",
            "INSERT INTO events SELECT 'k' || g, g FROM generate_series(1, 40) g")
    project.run("snapshot")
    _duckdb_sql(project, "INSERT INTO events SELECT * FROM events WHERE n = 5")
    result = _verify(project, "--tables", "events", expect=EXIT_DIFFERENT)
    assert "extra (kind=k5, n=5)" in result.stdout, result.stdout
    # a new copy repairs it; a duplicate the source holds too is equal, as multisets
    project.run("snapshot", "--tables", "events")
    run_sql(source, "INSERT INTO events VALUES ('k5', 5)")
    project.run("cdc")
    assert "✓ events: 41 rows equal" in _verify(project, "--tables", "events").stdout


def test_arrays_compare_by_their_elements_output_text(source, duckdb_project):
    """The pipeline writes an array's elements as their output function prints them; a cast of
    the element to text differs for some types (char(n) drops its padding, inet adds /32)."""
    project = duckdb_project
    run_sql(source, """CREATE TABLE arrays (id int PRIMARY KEY, padded char(3)[], hosts inet[],
                       nets cidr[], macs macaddr[], spans interval[], boxes box[], plain char(3),
                       host inet, grid char(2)[][], shifted text[])""",
            """INSERT INTO arrays SELECT g, ARRAY['a', 'bb ', NULL]::char(3)[],
               ARRAY['192.168.1.' || g, '::1', '10.0.0.0/8']::inet[],
               ARRAY['10.' || g || '.0.0/16']::cidr[], ARRAY['08:00:2b:01:02:03']::macaddr[],
               ARRAY[g * interval '1 day 2 hours']::interval[],
               ARRAY['(1,1),(0,0)', '(2,2),(1,' || g || ')']::box[], 'a', ('10.1.1.' || g)::inet,
               '{{"a","b "},{"c",NULL}}', '[0:1]={x,y}'
               FROM generate_series(1, 40) g""")
    project.run("snapshot")
    run_sql(source, "UPDATE arrays SET padded = ARRAY['z  ', 'y']::char(3)[] WHERE id = 3")
    project.run("cdc")
    assert "✓ arrays: 40 rows equal" in _verify(project).stdout
    _duckdb_sql(project, """UPDATE arrays SET padded = '["z","y  "]' WHERE id = 3""")
    _duckdb_sql(project, """UPDATE arrays SET hosts = replace(hosts, '/8', '') WHERE id = 4""")
    line = _verify(project, expect=EXIT_DIFFERENT).stdout
    assert "different id=3 (columns padded)" in line and "different id=4 (columns hosts)" in line


def test_a_key_the_destination_holds_twice_is_named(source, duckdb_project):
    """A keyed table whose destination holds a key twice (a merge gone wrong, a hand-made
    insert) is named as a duplicate, whether or not one of the copies is right."""
    project = duckdb_project
    run_sql(source, "CREATE TABLE coupons (code text PRIMARY KEY, pct int)",
            "INSERT INTO coupons SELECT 'C' || g, g FROM generate_series(1, 60) g",
            "CREATE TABLE visits (id int PRIMARY KEY, page text)",
            "INSERT INTO visits SELECT g, 'p' || g FROM generate_series(1, 60) g")
    project.run("snapshot")
    _duckdb_sql(project, "INSERT INTO coupons SELECT * FROM coupons WHERE code = 'C7'")
    _duckdb_sql(project, "INSERT INTO visits SELECT * REPLACE ('other' AS page) FROM visits WHERE id = 9")
    result = _verify(project, expect=EXIT_DIFFERENT)
    assert "duplicate code=C7 (2 rows in the destination)" in result.stdout, result.stdout
    assert "duplicate id=9 (2 rows in the destination)" in result.stdout, result.stdout
    found = json.loads(_verify(project, "--json", expect=EXIT_DIFFERENT).stdout)
    differences = {t["table"]: t["differences"] for t in found["tables"]}
    assert differences["coupons"] == [
        {"kind": "duplicate", "row": "code=C7", "columns": [], "count": 2}], differences


def test_null_and_empty_text_are_told_apart_in_a_report(source, duckdb_project):
    """A keyless table's rows are shown by their values: NULL on either side as NULL."""
    project = duckdb_project
    run_sql(source, "CREATE TABLE views (path text, referrer text, ms float8)",
            "INSERT INTO views VALUES ('/a', NULL, 0.5), ('/b', '', 0.75)")
    project.run("snapshot")
    _duckdb_sql(project, "DELETE FROM views")
    result = _verify(project, expect=EXIT_DIFFERENT).stdout
    assert "missing (path=/a, referrer=NULL, ms=0.5)" in result, result
    assert "missing (path=/b, referrer='', ms=0.75)" in result, result


def test_tables_are_named_as_snapshot_takes_them(source, duckdb_project):
    """`--tables public.t` names the default schema's `t`, as it does for snapshot."""
    project = duckdb_project
    _orders(source, rows=5)
    project.run("snapshot", "--tables", "public.orders")
    assert "1 table(s) compared" in _verify(project, "--tables", "public.orders").stdout
    assert "1 table(s) compared" in _verify(project, "--tables", "orders,public.orders").stdout


def test_excluded_columns_are_never_compared_nor_printed(source, duckdb_project):
    project = duckdb_project
    if source.server_version < 150000:
        pytest.skip("column lists need PostgreSQL 15")
    run_sql(source, "CREATE TABLE people (id int PRIMARY KEY, name text, ssn text)",
            "INSERT INTO people SELECT g, 'p' || g, 'secret-' || g FROM generate_series(1, 30) g")
    env = {"SOURCES__PG_REPLICATION__EXCLUDE_COLUMNS": '{"people": ["ssn"]}'}
    project.run("snapshot", env=env)
    _duckdb_sql(project, "UPDATE people SET name = 'x' WHERE id = 3")
    result = project.run("verify", "--data", expect=EXIT_DIFFERENT, env=env)
    assert "different id=3 (columns name)" in result.stdout
    assert "secret" not in result.output and "ssn" not in result.output


@pytest.mark.slow
def test_live_writes_raise_no_false_alarm(source_url, source, duckdb_project):
    """pgbench's TPC-B load runs while verify --data compares: every run exits 0."""
    project = duckdb_project
    run_sql(source, "SELECT 1")
    rechecked = 0
    with pgbench_load(source_url, seconds=45):
        project.run("snapshot")
        for _ in range(10):
            result = _verify(project)
            assert result.stdout.count("✓ pgbench_") == 4, result.stdout
            rechecked += "compared again at" in result.stdout
    # The destination was behind the source in the first pass: the recheck decided.
    assert rechecked >= 1, rechecked
    project.run("cdc")
    for table in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers"):
        assert_table_matches(source, project, table)


def test_bad_options_are_refused(source, duckdb_project):
    project = duckdb_project
    result = project.run("verify", "--tables", "x", expect=2)
    assert "--tables, --max-keys and --wait go with --data" in result.stderr
    _orders(source, rows=5)
    project.run("snapshot")
    unknown = project.run("verify", "--data", "--tables", "orders,nope", expect=2)
    line = one_error_line(unknown)
    assert "--tables: nope not replicated (replicated: orders)" in line, line
    assert unknown.stdout == "", unknown.stdout  # not the checklist, then the error
    assert "--tables names no table" in one_error_line(
        project.run("verify", "--data", "--tables", " , ", expect=2))
    assert "1 table(s) compared" in _verify(project, "--tables", "orders,orders").stdout
    checks = json.loads(project.run("verify", "--json").stdout)["checks"]
    assert [c["passed"] for c in checks] == [True, True, None, True, None], checks


def test_before_any_snapshot_nothing_is_said_equal(source, duckdb_project):
    project = duckdb_project
    _orders(source, rows=5)
    result = _verify(project, expect=EXIT_DIFFERENT)  # the checklist: no slot, no state
    assert "data: no table is replicated yet: nothing compared" in result.stdout, result.stdout
    assert "all equal" not in result.stdout


def test_keys_of_every_kind_are_named(source, duckdb_project):
    """Integer keys chunk by key ranges, other keys by their hash: both find and name rows."""
    project = duckdb_project
    run_sql(source,
            "CREATE TABLE by_text (code text PRIMARY KEY, v int)",
            "INSERT INTO by_text SELECT 'code-' || g, g FROM generate_series(1, 500) g",
            "CREATE TABLE by_uuid (id uuid PRIMARY KEY, v int)",
            "INSERT INTO by_uuid SELECT md5(g::text)::uuid, g FROM generate_series(1, 500) g",
            "CREATE TABLE by_pair (a int, b timestamptz, v int, PRIMARY KEY (a, b))",
            "INSERT INTO by_pair SELECT g % 7, '2024-01-01'::timestamptz + g * interval '1 min', g "
            "FROM generate_series(1, 500) g",
            "CREATE TABLE by_negative (id bigint PRIMARY KEY, v int)",
            "INSERT INTO by_negative SELECT g * 1000003, g FROM generate_series(-250, 250) g")
    project.run("snapshot")
    _duckdb_sql(project, "UPDATE by_text SET v = -1 WHERE code = 'code-42'")
    _duckdb_sql(project, "DELETE FROM by_uuid WHERE v = 42")
    _duckdb_sql(project, "UPDATE by_pair SET v = -1 WHERE v = 42")
    _duckdb_sql(project, "INSERT INTO by_negative SELECT * REPLACE (-999999999999 AS id) "
                         "FROM by_negative WHERE v = 1")
    result = _verify(project, expect=EXIT_DIFFERENT)
    lines = {line.split(":")[0][2:]: line for line in result.stdout.splitlines() if "✗" in line}
    assert "different code=code-42 (columns v)" in lines["by_text"], result.stdout
    assert "missing id=a1d0c6e8-3f02-7327-d846-1063f4ac58a6" in lines["by_uuid"], result.stdout
    assert "different (a=0, b=2024-01-01 00:42:00+00) (columns v)" in lines["by_pair"]
    assert "extra id=-999999999999" in lines["by_negative"], result.stdout


def test_databricks_sql_computes_the_same_checksums(source, duckdb_project, spark, tmp_path):
    """The Databricks dialect, run by a local Spark 3.5 over the destination's rows (exported to
    parquet), gives every chunk, row and column the hashes DuckDB gives them."""
    import duckdb

    from pg_replication.canonical import DatabricksDialect, DuckDBDialect
    from pg_replication.catalog import describe_tables
    from pg_replication.data_check import Side, live_rows, table_plans
    from pg_replication.state import LoadedState

    project = duckdb_project
    _orders(source)
    run_sql(source, "CREATE TABLE events (kind text, n int, at timestamp)",
            "INSERT INTO events SELECT 'k' || (g % 3), g % 4, '1999-12-31 23:59:59.5'::timestamp "
            "+ g * interval '1 day' FROM generate_series(1, 50) g")
    project.run("snapshot")
    with duckdb.connect(str(project.duckdb_path), read_only=True) as con:
        for table in ("orders", "events"):
            info = describe_tables(source, "public", [table])[table]
            (plan,) = table_plans(source, [info], LoadedState())
            path = tmp_path / f"{table}.parquet"
            con.execute(f"COPY {DATASET}.{table} TO '{path}' (FORMAT parquet)")
            # Databricks holds its own Delta files; this export of DuckDB's has no Spark writer
            # metadata, so its year-1 dates need the proleptic calendar said explicitly.
            frame = spark.read.option("datetimeRebaseMode", "CORRECTED").parquet(str(path))
            frame.createOrReplaceTempView(table)
            present = frame.columns
            backticks = lambda name: f"`{name}`"  # noqa: E731
            in_spark = Side(plan, DatabricksDialect(),
                            lambda sql: [tuple(row) for row in spark.sql(sql).collect()], table,
                            backticks, present, live_rows(present, backticks), destination=True)
            quoted = lambda name: f'"{name}"'  # noqa: E731
            in_duckdb = Side(plan, DuckDBDialect(), lambda sql: con.execute(sql).fetchall(),
                             f"{DATASET}.{table}", quoted, present, live_rows(present, quoted),
                             destination=True)
            sums = in_duckdb.chunk_sums(2)
            assert sums and in_spark.chunk_sums(2) == sums, table
            chunks = (2, sorted(sums)[:3])
            assert in_spark.row_hashes(chunks) == in_duckdb.row_hashes(chunks), table
            if plan.key:
                keys = list(in_duckdb.row_hashes(chunks))[:5]
                assert in_spark.columns_of(keys) == in_duckdb.columns_of(keys)


@pytest.mark.parametrize("key_type", ["int", "text"])
def test_a_chunk_too_large_to_fetch_is_split_until_the_row_is_found(
        source, duckdb_project, monkeypatch, key_type):
    """Chunks split 256 ways until few rows are left (FETCH_ROWS); a key outside the source's
    range (`~` chunks) is found too."""
    from pg_replication import data_check
    from tests.tools import checksum_differences

    project = duckdb_project
    key = "g" if key_type == "int" else "'k' || g"
    run_sql(source, f"CREATE TABLE wide (id {key_type} PRIMARY KEY, v int)",
            f"INSERT INTO wide SELECT {key}, g FROM generate_series(1, 3000) g")
    project.run("snapshot")
    _duckdb_sql(project, "UPDATE wide SET v = -1 WHERE v = 1234")
    monkeypatch.setattr(data_check, "FETCH_ROWS", 5)
    outside = "123456789" if key_type == "int" else "'zz'"
    found = checksum_differences(source, project, "wide")
    assert found == [f"different id={'1234' if key_type == 'int' else 'k1234'} (columns v)"], found
    _duckdb_sql(project, f"INSERT INTO wide (id, v, _pg_lsn) VALUES ({outside}, 5, 1)")
    found = checksum_differences(source, project, "wide")
    assert f"extra id={outside.strip(chr(39))}" in found, found


def test_a_terminal_sees_a_progress_line_per_table(source, duckdb_project):
    """On a terminal, stderr says which table is being compared; piped, it stays quiet."""
    import os
    import pty
    import subprocess

    project = duckdb_project
    _orders(source, rows=20)
    project.run("snapshot")
    leader, follower = pty.openpty()
    process = subprocess.run(project.command("verify", "--data"), stdout=subprocess.PIPE,
                             stderr=follower, env=project.environment(), cwd=project.dir,
                             timeout=300)
    os.close(follower)
    seen = b""
    try:
        while chunk := os.read(leader, 4096):
            seen += chunk
    except OSError:  # the terminal closed
        pass
    os.close(leader)
    assert process.returncode == 0
    assert b"comparing orders (1/1)" in seen, seen
    assert _verify(project).stderr == ""


@pytest.mark.slow
def test_a_column_continued_in_a_variant_is_compared_there(source, duckdb_project):
    """A column dropped and added again with another type lands in `<name>__v_<type>` after the
    new copy; verify --data compares it there (it reported every row different before)."""
    project = duckdb_project
    items_and_other(source)
    project.run("snapshot")
    run_sql(source, "ALTER TABLE items DROP COLUMN a", "ALTER TABLE items ADD COLUMN a int",
            "UPDATE items SET a = 7 WHERE id = 1")
    project.run("cdc", expect=10)
    project.run("snapshot", "--tables", "items")
    run_sql(source, "UPDATE items SET a = 8 WHERE id = 2")
    project.run("cdc")
    assert "✓ items: 20 rows equal" in _verify(project).stdout
    _duckdb_sql(project, "UPDATE items SET a__v_bigint = 9 WHERE id = 2")
    assert "different id=2 (columns a)" in _verify(project, expect=EXIT_DIFFERENT).stdout


def test_names_dlt_rewrites_and_wide_tables_compare_equal(source, duckdb_project):
    """Columns whose destination name dlt's snake_case rewrites (`txt_` lands in `txtx`) are
    compared under that name, and a table of 60 text columns fits PostgreSQL's 100 arguments a
    call (both were false alarms or a crash)."""
    project = duckdb_project
    wide = ", ".join(f"c{i} text" for i in range(60))
    run_sql(source, 'CREATE TABLE names (id int PRIMARY KEY, "txt_" text, "CamelCase" text, '
                    '"with space" int, "ünï" text, "a-b" bool)',
            "INSERT INTO names VALUES (1, 'a', 'b', 2, 'c', true), (2, '', NULL, NULL, ' x ', false)",
            f"CREATE TABLE wide ({wide}, id int PRIMARY KEY)",
            f"INSERT INTO wide SELECT {', '.join(f'g::text || {i}' for i in range(60))}, g "
            "FROM generate_series(1, 50) g",
            "CREATE TABLE blank_keys (k text PRIMARY KEY, v int)",
            "INSERT INTO blank_keys VALUES ('', 1), (' padded ', 2)")
    project.run("snapshot")
    result = _verify(project)
    for table in ("names", "wide", "blank_keys"):
        assert f"✓ {table}:" in result.stdout, result.stdout
    _duckdb_sql(project, "UPDATE blank_keys SET v = 0")
    _duckdb_sql(project, "UPDATE names SET txtx = 'z' WHERE id = 2")
    result = _verify(project, expect=EXIT_DIFFERENT)
    assert "different k='' (columns v); different k=' padded ' (columns v)" in result.stdout
    assert "different id=2 (columns txt_)" in result.stdout


def test_a_second_run_is_told_the_first_one_runs(source, duckdb_project):
    """While a run holds the run lock (and DuckDB's file), `verify --data` exits 5 without
    touching the destination (it failed to load the checklist's state, exit 7, before)."""
    import psycopg2

    project = duckdb_project
    _orders(source, rows=5)
    project.run("snapshot")
    import duckdb

    holder = psycopg2.connect(project.source_url)  # the run lock, as a running cdc holds it
    held_file = duckdb.connect(str(project.duckdb_path))  # and DuckDB's file
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                        ("pg_replication:" + project.slot,))
        line = one_error_line(project.run("verify", "--data", "--wait", "0", expect=5))
        assert "in use by another run" in line, line
    finally:
        held_file.close()
        holder.close()


@pytest.mark.slow
def test_verify_waits_its_turn_next_to_a_follow(source, duckdb_project):
    """`cdc --follow` holds the run lock one run at a time: verify --data waits for its turn
    (it exited 5 at random before) and the follow goes on afterwards."""
    project = duckdb_project
    _orders(source, rows=50)
    project.run("snapshot")
    follower = project.start("cdc", "--follow", "--interval", "0.3")
    try:
        for round_number in range(4):
            run_sql(source, f"UPDATE orders SET customer = 'r{round_number}' WHERE id <= 20")
            result = _verify(project, "--tables", "orders")
            assert "✓ orders: 50 rows equal" in result.stdout, result.stdout
        assert follower.poll() is None, follower.communicate()
    finally:
        follower.terminate()
        _, stderr = follower.communicate(timeout=120)
    assert follower.returncode == 0 and "Traceback" not in stderr, stderr


CATCH_UP_SCRIPT = """
import sys
from pg_replication.connect import connect
from pg_replication.destinations import make_pipeline
from pg_replication.jobs import catch_up
from pg_replication.settings import resolve_settings
from pg_replication.slots import acquire_run_lock
settings = resolve_settings()
lock = connect(settings.dsn)
acquire_run_lock(lock, settings.slot_name)
catch_up(lock, settings, make_pipeline(sys.argv[1], "duckdb", "bronze_postgres_raw"), int(sys.argv[2]))
"""


def test_the_catch_up_leaves_the_transaction_committing_at_the_snapshot_point(source,
                                                                              duckdb_project):
    """A snapshot exported at a slot's consistent point does not see a transaction whose commit
    record lies exactly there (a new user's pgbench run showed one in the WAL): the catch-up
    verify --data compares against must not apply it."""
    import subprocess
    import sys

    project = duckdb_project
    _orders(source, rows=5)
    project.run("snapshot")
    # (flushed at commit: peeking a slot reads only WAL already flushed)
    run_sql(source, "SET synchronous_commit = on", "INSERT INTO orders (id) VALUES (100)",
            "INSERT INTO orders (id) VALUES (101)")
    with source.cursor() as cur:  # each transaction's commit record position (pgoutput Begin)
        cur.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                    "'proto_version', '1', 'publication_names', %s)", (project.slot, project.pub))
        messages = [bytes(data) for (data,) in cur.fetchall()]
        commits = [int.from_bytes(data[1:9], "big") for data in messages
                   if data[:1] == b"B"]
    assert len(commits) == 2, commits
    caught_up = subprocess.run([sys.executable, "-c", CATCH_UP_SCRIPT, project.pipeline_name,
                                str(commits[1])], cwd=project.dir,
                               env=project.environment({"PYTHONPATH": str(REPO)}),
                               capture_output=True, text=True)
    assert caught_up.returncode == 0, caught_up.stderr
    ids = {row["id"] for row in project.dest_rows("orders")}
    assert 100 in ids and 101 not in ids, sorted(ids)
    project.run("cdc")
    assert 101 in {row["id"] for row in project.dest_rows("orders")}


def test_columns_with_double_underscores_are_compared_where_dlt_wrote_them(source,
                                                                          duckdb_project):
    """dlt keeps a column's `__` (a path separator) and drops a leading one: `x__y` lands in
    `x__y`, `__lead` in `lead`. verify --data read them as `x_y` and `_lead`, absent, so every
    row differed, and a NULL in the source hid any value in the destination; a snapshot refused
    `x_y` beside `x__y` as a collision."""
    project = duckdb_project
    run_sql(source, 'CREATE TABLE dunder (id int PRIMARY KEY, "x__y" text, "a___b" text, '
                    '"__lead" text, c__d int, x_y text)',
            "INSERT INTO dunder VALUES (1, 'a', 'b', 'c', 4, 'x'), (2, NULL, NULL, NULL, NULL, NULL)")
    project.run("snapshot")
    run_sql(source, "INSERT INTO dunder VALUES (3, 'e', 'f', 'g', 5)",
            "UPDATE dunder SET x__y = 'changed' WHERE id = 1")
    project.run("cdc")
    assert "✓ dunder: 3 rows equal" in _verify(project).stdout
    assert_table_matches(source, project, "dunder", columns_as={"__lead": "lead"})
    import duckdb

    with duckdb.connect(str(project.duckdb_path)) as con:
        columns = [row[0] for row in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'dunder' "
            f"AND table_schema = '{DATASET}' "
            "AND column_name NOT LIKE '\\_pg\\_%' ESCAPE '\\' AND column_name NOT LIKE '\\_dlt%' "
            "ESCAPE '\\' ORDER BY ordinal_position").fetchall()]
    _duckdb_sql(project, "UPDATE dunder SET x__y = 'tampered', lead = 'z' WHERE id = 2")
    result = _verify(project, expect=EXIT_DIFFERENT)
    assert "different id=2 (columns x__y, __lead)" in result.stdout, (columns, result.stdout)
    assert columns == ["id", "x__y", "a___b", "lead", "c__d", "x_y"]


def test_a_row_marked_deleted_in_the_destination_is_found(source, duckdb_project):
    """With hard deletes the merge removes a row marked `_pg_deleted`: one that is in the
    destination is extra. verify --data left such rows out and said the tables were equal."""
    project = duckdb_project
    _orders(source, rows=20)
    project.run("snapshot")
    _duckdb_sql(project, "INSERT INTO orders (id, customer, _pg_lsn, _pg_deleted) "
                         "VALUES (5000, 'ghost', 0, true)")
    result = _verify(project, expect=EXIT_DIFFERENT)
    assert "extra id=5000" in result.stdout, result.stdout


def test_arrays_of_oids_compare_equal(source, duckdb_project):
    """The pipeline writes an oid[] as integers; PostgreSQL's JSON of it quotes each element,
    so verify --data said every row differed."""
    project = duckdb_project
    run_sql(source, "CREATE TABLE arrs (id int PRIMARY KEY, oa oid[], xa int8[], ya int2[][])",
            "INSERT INTO arrs VALUES (1, '{1,2,4294967295}', '{-9223372036854775808,NULL}', "
            "'{{1,2},{3,4}}'), (2, '{}', NULL, '[2:2]={7}')")
    project.run("snapshot")
    assert "✓ arrs: 2 rows equal" in _verify(project).stdout
    _duckdb_sql(project, "UPDATE arrs SET oa = [1, 3] WHERE id = 1")
    assert "different id=1 (columns oa)" in _verify(project, expect=EXIT_DIFFERENT).stdout


def test_the_recheck_waits_for_open_transactions_only_as_long_as_wait(source, source_url,
                                                                      duckdb_project):
    """The recheck's snapshot waits for the transactions open when it starts, holding the run
    lock (cdc meanwhile exits 5): it waited as long as they lasted. `--wait` bounds it too."""
    import psycopg2

    project = duckdb_project
    _orders(source, rows=20)
    project.run("snapshot")
    _duckdb_sql(project, "UPDATE orders SET customer = 'tampered' WHERE id = 3")  # a recheck
    blocker = psycopg2.connect(source_url)  # idle in transaction, holding a transaction id
    try:
        with blocker.cursor() as cur:
            cur.execute("UPDATE orders SET note = 'open' WHERE id = 20")
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        failed = _verify(project, "--wait", "2", expect=4)
        assert f"pid {pid} (idle in transaction" in failed.stderr, failed.stderr
        assert "verify --data: waiting" in failed.stderr, failed.stderr
        line = failed.stderr.splitlines()[-1]
        assert line.startswith("Error: gave up after waiting 2 s") and "--wait" in line, line
        assert "Traceback" not in failed.stderr
    finally:
        blocker.rollback()
        blocker.close()
    assert "different id=3 (columns customer)" in _verify(project, expect=EXIT_DIFFERENT).stdout


def test_tables_not_copied_yet_are_not_counted_as_compared(source, duckdb_project):
    """A table of the publication without its copy was counted among those "compared"."""
    project = duckdb_project
    _orders(source, rows=5)
    run_sql(source, "CREATE TABLE later (id int PRIMARY KEY)")
    project.run("snapshot", "--tables", "orders")
    run_sql(source, f"ALTER PUBLICATION {project.pub} ADD TABLE later")
    result = _verify(project, expect=EXIT_DIFFERENT)
    assert "✗ later: not in the destination: `snapshot --tables later` copies it" in result.stdout
    assert "data: 1 table(s) compared, all equal, 1 could not be compared" in result.stdout, \
        result.stdout


def test_keys_are_shown_on_one_line_and_cut_visibly(source, duckdb_project):
    """A key holding a line break broke the report's one line per table; two long keys that
    differ after 60 characters were shown alike, with nothing saying they were cut."""
    project = duckdb_project
    run_sql(source, "CREATE TABLE notes (k text PRIMARY KEY, v int)",
            "INSERT INTO notes VALUES (E'line\\nbreak', 1), (repeat('x', 70) || '1', 2), "
            "(repeat('x', 70) || '2', 3)")
    project.run("snapshot")
    _duckdb_sql(project, "UPDATE notes SET v = v + 10")
    result = _verify(project, expect=EXIT_DIFFERENT)
    line = next(line for line in result.stdout.splitlines() if line.startswith("✗ notes"))
    assert "different k='line\\nbreak' (columns v)" in line, result.stdout
    assert line.count(f"different k={'x' * 60}… (columns v)") == 2, line
