"""Every table shape the snapshot publishes: key types, and the application's own writes."""

import psycopg2.errors
import pytest

from tests.tools import (EXIT_NO_COPY, Project, assert_table_matches, matrix_params,
                         one_error_line, publish_statistics, run_sql)


@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)

# (key type, three distinct key values as SQL literals). Their text forms differ between what the
# stream sends and what a cast to text gives (char padding, `t`/`true`, inet masks), or compare
# equal only in their own type (numeric scale, time zones).
KEY_TYPES = [
    ("char(8)", ["'c1'", "'c2      '", "'C1'"]),
    ("varchar(20)", ["'a '", "'a'", "'A'"]),
    ("text", ["'trailing  '", "'Case'", "'case'"]),
    ("boolean", ["true", "false", None]),
    ("inet", ["'10.0.0.1/32'", "'10.0.0.0/8'", "'::1'"]),
    ("cidr", ["'10.0.0.0/8'", "'192.168.0.0/16'", "'10.1.0.0/16'"]),
    ("numeric", ["1.50", "2", "-0.001"]),
    ("numeric(10,3)", ["1.5", "2", "3.25"]),
    ("uuid", ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12'",
              "'00000000-0000-0000-0000-000000000000'"]),
    ("timestamptz", ["'2024-01-01 10:00+02'", "'2024-06-01 00:00:00.123456+00'",
                     "'1999-12-31 23:59:59-08'"]),
    ("timestamp", ["'2024-01-01 10:00'", "'2024-01-01 10:00:00.5'", "'0099-01-01 00:00'"]),
    ("date", ["'2024-01-01'", "'1970-01-01'", "'2000-02-29'"]),
    ("bytea", ["'\\x00ff'", "'\\x'", "'\\xdeadbeef'"]),
    ("interval", ["'1 day'", "'25 hours'", "'1 mon'"]),
]


def _literal_rows(values):
    return [v for v in values if v is not None]


# The key types of the original report in `make test`, the rest in `make test-matrix`.
@pytest.mark.parametrize("key_type,values", matrix_params(
    KEY_TYPES, [k for k, _ in KEY_TYPES], kept={"char(8)", "boolean", "inet"}))
def test_update_after_unchanged_toast_is_applied_for_every_key_type(source, duckdb_project,
                                                                    key_type, values):
    """The current value of an unchanged TOASTed column is read back by key: the key must be
    compared in its own type, or the update is silently dropped."""
    keys = _literal_rows(values)
    run_sql(source, f"CREATE TABLE k (id {key_type} PRIMARY KEY, title text, body text)",
            "ALTER TABLE k ALTER COLUMN body SET STORAGE EXTERNAL",
            *[f"INSERT INTO k VALUES ({key}, 'before', repeat('b', 4000))" for key in keys])
    duckdb_project.run("snapshot")
    run_sql(source, "UPDATE k SET title = 'after'")  # body unchanged: not in the WAL
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "k")
    titles = [row["title"] for row in duckdb_project.dest_rows("k")]
    assert titles == ["after"] * len(keys)


def test_update_after_unchanged_toast_with_a_composite_key(source, duckdb_project):
    run_sql(source, "CREATE TABLE ck (a char(4), b boolean, c inet, body text, n int, "
                    "PRIMARY KEY (a, b, c))",
            "ALTER TABLE ck ALTER COLUMN body SET STORAGE EXTERNAL",
            "INSERT INTO ck VALUES ('x', true, '10.0.0.1', repeat('b', 4000), 0), "
            "('x', false, '10.0.0.1/32', repeat('c', 4000), 0), ('y ', true, '::1', NULL, 0)")
    duckdb_project.run("snapshot")
    run_sql(source, "UPDATE ck SET n = n + 1")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "ck")
    assert [row["n"] for row in duckdb_project.dest_rows("ck")] == [1, 1, 1]


# (key type, a value the destination holds exactly, one it cannot hold apart from other keys)
INEXACT_KEYS = [
    ("timestamptz", "'9999-12-31 23:59:59.999999+00'", "'infinity'"),
    ("timestamp", "'0001-01-01 00:00'", "'0044-03-15 00:00 BC'"),
    ("date", "'2024-01-01'", "'10000-01-01'"),
    ("numeric(10,2)", "1.5", "'NaN'"),
]


@pytest.mark.parametrize("key_type,exact,inexact", matrix_params(
    INEXACT_KEYS, [k for k, _, _ in INEXACT_KEYS], kept={"timestamptz"}))
def test_key_values_the_destination_cannot_tell_apart_are_refused(source, duckdb_project,
                                                                  key_type, exact, inexact):
    """Before, an infinity key overwrote the row of the bound it is clamped to (silently), and a
    NaN key failed every run with an Arrow error naming no table."""
    run_sql(source, f"CREATE TABLE k (id {key_type} PRIMARY KEY, v text)",
            f"INSERT INTO k VALUES ({exact}, 'exact'), ({inexact}, 'inexact')",
            "CREATE TABLE other (id int PRIMARY KEY)")
    line = one_error_line(duckdb_project.run("snapshot", expect=EXIT_NO_COPY))
    assert line.startswith("Error: table k: key column id holds ") and "`snapshot --tables k`" in line
    run_sql(source, f"DELETE FROM k WHERE id = {inexact}")
    duckdb_project.run("snapshot")
    # Through the stream: refused until the row is changed and the table copied again.
    with source.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn() - '0/0'")
        before = int(cur.fetchone()[0])
    run_sql(source, f"INSERT INTO k VALUES ({inexact}, 'again')", "INSERT INTO other VALUES (1)")
    line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    assert "table k: key column id holds" in line, line
    assert duckdb_project.slot_confirmed_lsn() <= before  # the change is still in the slot
    run_sql(source, f"DELETE FROM k WHERE id = {inexact}")
    duckdb_project.run("snapshot", "--tables", "k")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "k")
    assert_table_matches(source, duckdb_project, "other")


# -- deferrable keys ----------------------------------------------------------------------------


def test_deferrable_primary_key_never_fails_the_applications_writes(source, duckdb_project):
    run_sql(source, "CREATE TABLE d (id int PRIMARY KEY DEFERRABLE, v text)",
            "INSERT INTO d VALUES (1, 'a'), (2, 'b')")
    snapshot = duckdb_project.run("snapshot")
    assert "warning: d has no primary key (or a deferrable one)" in snapshot.stderr
    # A deferrable key cannot be the replica identity: in a publication that publishes UPDATE and
    # DELETE these would fail ("does not have a replica identity").
    run_sql(source, "UPDATE d SET v = 'changed' WHERE id = 1", "DELETE FROM d WHERE id = 2",
            "INSERT INTO d VALUES (3, 'c')")
    # Like a table without a key: inserts only, so an UPDATE or DELETE asks for a new copy.
    publish_statistics(source)
    line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    assert "table d can take only inserts" in line and "`snapshot --tables d`" in line, line


def test_deferrable_key_under_replica_identity_full_leaves_no_ghost(source, project):
    run_sql(source, "CREATE TABLE d (id int PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE, v text)",
            "ALTER TABLE d REPLICA IDENTITY FULL", "INSERT INTO d VALUES (1, 'a')")
    project.run("snapshot")
    run_sql(source, "BEGIN", "INSERT INTO d VALUES (5, 'five')", "UPDATE d SET id = 6 WHERE id = 5",
            "UPDATE d SET id = 3 - id WHERE id IN (1, 2)", "COMMIT",
            "BEGIN", "SET CONSTRAINTS ALL DEFERRED", "INSERT INTO d VALUES (7, 'x')",
            "UPDATE d SET id = 8 WHERE id = 7", "INSERT INTO d VALUES (7, 'y')", "COMMIT")
    project.run("cdc")
    assert_table_matches(source, project, "d")


KEY_LOSSES = ["ALTER TABLE k DROP CONSTRAINT k_pkey", "ALTER TABLE k REPLICA IDENTITY NOTHING",
              "ALTER TABLE k DROP CONSTRAINT k_pkey, ADD PRIMARY KEY (id) DEFERRABLE"]


@pytest.mark.parametrize("ddl", matrix_params(KEY_LOSSES, KEY_LOSSES, kept=KEY_LOSSES[:1]))
def test_key_lost_while_published_is_moved_out_so_the_applications_writes_work(
        source, duckdb_project, ddl):
    run_sql(source, "CREATE TABLE k (id int PRIMARY KEY, v text)",
            "INSERT INTO k VALUES (1, 'a'), (2, 'b')", "CREATE TABLE other (id int PRIMARY KEY)")
    duckdb_project.run("snapshot")
    run_sql(source, ddl)
    with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState):  # no replica identity
        run_sql(source, "UPDATE k SET v = 'changed' WHERE id = 1")
    line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
    assert "table k lost its row identity" in line and "run `snapshot --tables k`" in line, line
    # The first cdc after the DDL took it out of the publication of updates and deletes.
    run_sql(source, "UPDATE k SET v = 'changed' WHERE id = 1", "DELETE FROM k WHERE id = 2",
            "INSERT INTO other VALUES (1)")
    # (Counted after the copy they would ask for one more: insert_only.py.)
    publish_statistics(source)
    duckdb_project.run("snapshot", "--tables", "k")
    run_sql(source, "INSERT INTO k VALUES (3, 'c')")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "k")  # no key: as a multiset
    assert_table_matches(source, duckdb_project, "other")


# -- settings of the role or database ------------------------------------------------------------


def test_statement_timeout_set_for_the_database_does_not_cut_the_pipeline(source, duckdb_project):
    run_sql(source, "CREATE TABLE big (id int PRIMARY KEY, v text)",
            "INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g")
    database = source.get_dsn_parameters()["dbname"]
    # Common in production; applies to every new session of this database (not to `source`).
    run_sql(source, f'ALTER DATABASE "{database}" SET statement_timeout = \'5ms\'',
            f'ALTER DATABASE "{database}" SET idle_in_transaction_session_timeout = \'50ms\'')
    duckdb_project.run("snapshot")
    run_sql(source, "UPDATE big SET v = 'changed' WHERE id % 1000 = 0")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "big")


# -- schema contents ----------------------------------------------------------------------------


def test_unlogged_table_is_skipped_with_a_warning(source, duckdb_project):
    run_sql(source, "CREATE TABLE kept (id int PRIMARY KEY)", "INSERT INTO kept VALUES (1)",
            "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY)", "INSERT INTO scratch VALUES (1)")
    snapshot = duckdb_project.run("snapshot")
    assert "warning: scratch is UNLOGGED or a foreign table" in snapshot.stderr
    run_sql(source, "INSERT INTO kept VALUES (2)", "UPDATE scratch SET id = 2")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "kept")
    assert "scratch" not in duckdb_project.dest_tables()


def test_schema_name_typo_is_a_configuration_error(source, duckdb_project):
    run_sql(source, "CREATE TABLE kept (id int PRIMARY KEY)")
    failed = duckdb_project.run("snapshot", expect=2,
                                env={"SOURCES__PG_REPLICATION__SCHEMA_NAME": "pubilc"})
    assert failed.stderr.strip() == ("Error: schema 'pubilc' does not exist in the source database "
                                     "(check `schema_name`)")


# -- names that collide in the destination ------------------------------------------------------


@pytest.mark.parametrize("first,second", [('"Orders"', "orders"), ('"order-items"', "order_items")])
def test_tables_colliding_after_snake_case_are_refused(source, duckdb_project, first, second):
    run_sql(source, f"CREATE TABLE {first} (id int PRIMARY KEY)",
            f"CREATE TABLE {second} (id int PRIMARY KEY)")
    failed = duckdb_project.run("snapshot", expect=2)
    line = failed.stderr.strip()
    assert line.startswith("Error: tables ") and first.strip('"') in line and second in line, line
    assert duckdb_project.slot_confirmed_lsn() is None  # nothing created
    # One of them alone is fine; the other is refused later, naming both.
    duckdb_project.run("snapshot", "--tables", second)
    later = duckdb_project.run("snapshot", "--tables", first.strip('"'), expect=2)
    assert first.strip('"') in later.stderr and second in later.stderr


@pytest.mark.parametrize("columns,clash", [('id int PRIMARY KEY, "Id" int', "'Id'"),
                                           ("id int PRIMARY KEY, _pg_lsn bigint", "'_pg_lsn'"),
                                           # dlt drops a leading `__`: both land in `lead`
                                           ('id int PRIMARY KEY, lead text, "__lead" text',
                                            "'__lead'")])
def test_columns_colliding_in_the_destination_are_refused(source, duckdb_project, columns, clash):
    run_sql(source, f"CREATE TABLE t ({columns})")
    line = duckdb_project.run("snapshot", expect=2).stderr.strip()
    assert line.startswith("Error: table 't': column ") and clash in line, line


# -- publications an admin made -----------------------------------------------------------------


def test_same_named_table_of_another_schema_in_the_publication_is_never_merged(source,
                                                                              duckdb_project):
    run_sql(source, "CREATE TABLE orders (id int PRIMARY KEY, v text)",
            "INSERT INTO orders VALUES (1, 'public')", "CREATE SCHEMA audit",
            "CREATE TABLE audit.orders (id int PRIMARY KEY, v text)",
            "INSERT INTO audit.orders VALUES (1, 'audit')",
            f"CREATE PUBLICATION {duckdb_project.pub} FOR TABLE public.orders, audit.orders "
            "WITH (publish_via_partition_root = true)")
    duckdb_project.run("snapshot")
    run_sql(source, "INSERT INTO audit.orders VALUES (2, 'audit only')",
            "UPDATE audit.orders SET v = 'audit changed' WHERE id = 1", "TRUNCATE audit.orders",
            "INSERT INTO orders VALUES (3, 'public too')")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "orders")


def test_publication_without_partition_root_is_refused_with_the_fix(source, duckdb_project):
    run_sql(source, "CREATE TABLE m (id int, day int, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)",
            "CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM (0) TO (10)",
            "INSERT INTO m VALUES (1, 1)", f"CREATE PUBLICATION {duckdb_project.pub} FOR TABLE m")
    failed = duckdb_project.run("snapshot", expect=4)
    fix = f"ALTER PUBLICATION {duckdb_project.pub} SET (publish_via_partition_root = true)"
    assert fix in failed.stderr and "partitioned table m" in failed.stderr
    run_sql(source, fix)
    duckdb_project.run("snapshot")
    run_sql(source, "INSERT INTO m VALUES (2, 2)")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "m")
    # Changed back by an admin later: cdc refuses instead of letting the root go stale.
    run_sql(source, f"ALTER PUBLICATION {duckdb_project.pub} SET (publish_via_partition_root = false)")
    assert fix in duckdb_project.run("cdc", expect=4).stderr
    status = duckdb_project.run("status", expect=None)
    assert status.exit_code != 0 and fix in status.output and "--tables m_1" not in status.output, status
    verify = duckdb_project.run("verify", expect=None)
    assert verify.exit_code != 0 and fix in verify.output and "--tables m_1" not in verify.output, verify


def test_publication_without_truncate_is_refused_with_the_fix(source, duckdb_project):
    # An admin's publication for inserts, updates and deletes only: a TRUNCATE would leave every
    # row in the destination without a word.
    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')",
            f"CREATE PUBLICATION {duckdb_project.pub} FOR TABLE t "
            "WITH (publish = 'insert, update, delete', publish_via_partition_root = true)")
    failed = duckdb_project.run("snapshot", expect=4)
    fix = (f"ALTER PUBLICATION {duckdb_project.pub} SET "
           "(publish = 'insert, update, delete, truncate')")
    assert fix in failed.stderr and "does not publish truncate" in failed.stderr
    run_sql(source, fix)
    duckdb_project.run("snapshot")
    run_sql(source, f"ALTER PUBLICATION {duckdb_project.pub} SET (publish = 'insert, truncate')",
            "TRUNCATE t")
    refused = duckdb_project.run("cdc", expect=4)
    assert "does not publish update, delete" in refused.stderr
    run_sql(source, fix)
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "t")


def test_publication_column_list_or_row_filter_is_refused_with_the_fix(source, duckdb_project):
    """PostgreSQL 15+: the stream would send rows without the columns left out (an update then
    sets them to NULL in the destination) and skip filtered rows, while the copy reads all."""
    pub = duckdb_project.pub
    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY, v text, secret text)",
            "INSERT INTO t VALUES (1, 'a', 's'), (100, 'b', 's')",
            f"CREATE PUBLICATION {pub} FOR TABLE t (id, v) WITH (publish_via_partition_root = true)")
    fix = (f'BEGIN; ALTER PUBLICATION "{pub}" DROP TABLE "public"."t"; ALTER PUBLICATION '
           f'"{pub}" ADD TABLE "public"."t"; COMMIT; then run `snapshot --tables t`')
    line = one_error_line(duckdb_project.run("snapshot", expect=4))
    assert "has a column list for table public.t" in line and fix in line, line
    run_sql(source, f"ALTER PUBLICATION {pub} SET TABLE t")
    duckdb_project.run("snapshot")
    run_sql(source, f"ALTER PUBLICATION {pub} SET TABLE t WHERE (id < 50)",
            "UPDATE t SET v = 'changed'", "INSERT INTO t VALUES (200, 'c', 's')")
    line = one_error_line(duckdb_project.run("cdc", expect=4))
    assert "has a row filter for table public.t" in line and fix in line, line
    assert fix in duckdb_project.run("verify", expect=9).stdout
    run_sql(source, "BEGIN", f"ALTER PUBLICATION {pub} DROP TABLE public.t",
            f"ALTER PUBLICATION {pub} ADD TABLE public.t", "COMMIT")
    duckdb_project.run("snapshot", "--tables", "t")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "t")


# -- a snapshot waiting for open transactions ---------------------------------------------------


def test_snapshot_waiting_on_an_open_transaction_says_so_and_gives_up(source, source_url,
                                                                      duckdb_project):
    import psycopg2

    run_sql(source, "CREATE TABLE t (id int PRIMARY KEY)")
    blocker = psycopg2.connect(source_url)  # idle in transaction, holding a transaction id
    try:
        with blocker.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1)")
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        failed = duckdb_project.run("snapshot", "--max-wait", "2", expect=4)
        assert f"pid {pid} (idle in transaction" in failed.stderr, failed.stderr
        assert failed.stderr.splitlines()[-1].startswith("Error: gave up after waiting 2 s")
        assert duckdb_project.slot_confirmed_lsn() is None  # no slot left behind
    finally:
        blocker.rollback()
        blocker.close()
    duckdb_project.run("snapshot", "--max-wait", "30")


# -- the application's writes on every table shape the snapshot publishes ----------------------

# (shape, DDL creating table `s` with columns id int, v text, and rows 1..3). A table is put in the
# publication that publishes UPDATE and DELETE only when PostgreSQL can identify its rows.
PUBLISHED_SHAPES = [
    ("primary key", ["CREATE TABLE s (id int PRIMARY KEY, v text)"]),
    ("composite key", ["CREATE TABLE s (id int, v text, k int DEFAULT 1, PRIMARY KEY (id, k))"]),
    ("no key", ["CREATE TABLE s (id int, v text)"]),
    ("no key, identity full", ["CREATE TABLE s (id int, v text)",
                               "ALTER TABLE s REPLICA IDENTITY FULL"]),
    ("unique index as identity", ["CREATE TABLE s (id int NOT NULL, v text)",
                                  "CREATE UNIQUE INDEX s_id ON s (id)",
                                  "ALTER TABLE s REPLICA IDENTITY USING INDEX s_id"]),
    ("unique nullable index", ["CREATE TABLE s (id int UNIQUE, v text)"]),
    ("deferrable key", ["CREATE TABLE s (id int PRIMARY KEY DEFERRABLE, v text)"]),
    ("deferrable key, identity full", ["CREATE TABLE s (id int PRIMARY KEY DEFERRABLE, v text)",
                                       "ALTER TABLE s REPLICA IDENTITY FULL"]),
    ("initially deferred key", ["CREATE TABLE s (id int PRIMARY KEY DEFERRABLE INITIALLY "
                                "DEFERRED, v text)"]),
    ("key, identity nothing", ["CREATE TABLE s (id int PRIMARY KEY, v text)",
                               "ALTER TABLE s REPLICA IDENTITY NOTHING"]),
    ("key, identity full", ["CREATE TABLE s (id int PRIMARY KEY, v text)",
                            "ALTER TABLE s REPLICA IDENTITY FULL"]),
    ("generated column", ["CREATE TABLE s (id int PRIMARY KEY, v text, "
                          "g text GENERATED ALWAYS AS (upper(v)) STORED)"]),
    ("partitioned with key", ["CREATE TABLE s (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)",
                              "CREATE TABLE s_low PARTITION OF s FOR VALUES FROM (0) TO (3)",
                              "CREATE TABLE s_high PARTITION OF s FOR VALUES FROM (3) TO (100)"]),
    ("partitioned without key", ["CREATE TABLE s (id int, v text) PARTITION BY LIST (id)",
                                 "CREATE TABLE s_a PARTITION OF s FOR VALUES IN (1, 2)",
                                 "CREATE TABLE s_b PARTITION OF s DEFAULT"]),
    ("inheritance parent", ["CREATE TABLE s (id int PRIMARY KEY, v text)",
                            "CREATE TABLE s_child (extra int) INHERITS (s)"]),
]


# Shapes whose rows PostgreSQL cannot identify: the table only takes inserts, so its copy may
# hold duplicates and its updates and deletes are not streamed (README, "Tables without a key").
INSERT_ONLY = {"no key", "no key, identity full", "unique nullable index",
               "partitioned without key", "deferrable key", "initially deferred key",
               "key, identity nothing"}
KEYLESS = {"no key", "no key, identity full", "partitioned without key"}


@pytest.mark.parametrize("shape,ddl", matrix_params(
    PUBLISHED_SHAPES, [s for s, _ in PUBLISHED_SHAPES],
    kept={"primary key", "no key", "deferrable key", "partitioned without key"}))
def test_applications_updates_and_deletes_succeed_on_every_published_shape(source, duckdb_project,
                                                                          shape, ddl):
    """Our publication must never make the application's own UPDATE or DELETE fail ("cannot
    update table because it does not have a replica identity"), and what the stream carries
    ends equal to the source (tables without a key: as a multiset)."""
    duplicate = ", (3, 'c')" if shape in KEYLESS else ""
    run_sql(source, *ddl, f"INSERT INTO s (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c'){duplicate}")
    duckdb_project.run("snapshot")
    run_sql(source, "UPDATE s SET v = v || '!' WHERE id = 1", "DELETE FROM s WHERE id = 2",
            "UPDATE s SET id = 40 WHERE id = 1", "INSERT INTO s (id, v) VALUES (5, 'e')",
            "UPDATE s SET v = 'all' WHERE id <> 3", "DELETE FROM s WHERE id = 5")
    if shape == "inheritance parent":
        run_sql(source, "INSERT INTO s_child (id, v, extra) VALUES (9, 'child', 1)",
                "UPDATE s_child SET v = 'child!'", "DELETE FROM s_child WHERE id = 9")
    if shape in INSERT_ONLY:
        # Not streamed, but never silent: cdc asks for a new copy (test_insert_only.py).
        publish_statistics(source)
        line = one_error_line(duckdb_project.run("cdc", expect=EXIT_NO_COPY))
        assert "table s can take only inserts" in line, line
        duckdb_project.run("snapshot", "--tables", "s")
    duckdb_project.run("cdc")
    assert_table_matches(source, duckdb_project, "s")  # without a key: as a multiset


def test_a_primary_key_on_a_generated_column_is_refused_with_the_way_out(source, project):
    """pgoutput does not send generated columns, so an insert came without its key and every
    cdc failed (exit 1, for good). The snapshot refuses such a table, naming the way out."""
    run_sql(source, "CREATE TABLE gk (a int NOT NULL, id int GENERATED ALWAYS AS (a * 2) STORED "
                    "PRIMARY KEY, v text)",
            "INSERT INTO gk (a, v) SELECT g, 'v' || g FROM generate_series(1, 5) g",
            "CREATE TABLE fine (id int PRIMARY KEY)")
    refused = project.run("snapshot", expect=2)
    assert refused.stderr.strip() == (
        "Error: table 'gk': its key includes the generated column 'id', which the change stream "
        "does not send: key it on stored columns (REPLICA IDENTITY USING INDEX on a unique index "
        "of them), or leave the table out (`--tables`)"), refused.stderr
    project.run("snapshot", "--tables", "fine")
    run_sql(source, "CREATE UNIQUE INDEX gk_a ON gk (a)",
            "ALTER TABLE gk REPLICA IDENTITY USING INDEX gk_a")
    project.run("snapshot", "--tables", "gk")
    run_sql(source, "INSERT INTO gk (a, v) VALUES (10, 'new')", "UPDATE gk SET v = 'x' WHERE a = 1")
    project.run("cdc")
    assert_table_matches(source, project, "gk")
