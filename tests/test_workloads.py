"""Realistic workloads through the CLI: Pagila end to end, and writers running during the jobs.

Every test ends by comparing each destination table with its source table value by value
(`assert_table_matches`), on DuckDB and on local Delta (the Databricks stand-in).
"""

import os
import random
import string
import subprocess
import threading
import time
from collections import Counter
from typing import List, Optional

import psycopg2
import pytest

from tests.tools import Project, assert_table_matches, run_sql

DESTINATIONS = ["duckdb", "filesystem"]

# Fixed, printed in every assertion message; set WORKLOAD_SEED to replay another sequence of
# operations (the interleaving with the jobs still depends on timing).
SEED = int(os.environ.get("WORKLOAD_SEED", "20240611"))


@pytest.fixture(params=DESTINATIONS)
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)




def _base_tables(conn) -> List[str]:
    with conn.cursor() as cur:
        cur.execute("""SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                       AND NOT c.relispartition ORDER BY 1""")
        return [r[0] for r in cur.fetchall()]


def _assert_all_match(conn, project: Project, tables: List[str], context: str) -> None:
    for table in tables:
        try:
            assert_table_matches(conn, project, table)
        except AssertionError as e:
            raise AssertionError(f"[{context}, destination={project.destination}] {e}") from None


def _cdc_changes(result) -> int:
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("cdc: "), result.output
    return int(line.split()[1])


# -- 1. Pagila end to end --------------------------------------------------------------------------

# Films 1-5 get descriptions (and so `fulltext` vectors) too large to stay inline: an UPDATE that
# leaves them alone reaches pgoutput as "unchanged TOAST" ('u'), not as a value.
PAGILA_LARGE_FILMS = """
UPDATE film f SET description = (
    SELECT string_agg(md5(f.film_id::text || '-' || g::text), ' ') FROM generate_series(1, 150) g)
WHERE f.film_id <= 5
"""

PAGILA_WORKLOAD_1 = [
    # new rentals (explicit ids: sequences are not replicated and need not be)
    """INSERT INTO rental (rental_id, rental_date, inventory_id, customer_id, return_date, staff_id)
       VALUES (20001, '2022-02-10 10:00:00+00', 10, 1, NULL, 1),
              (20002, '2022-04-11 11:00:00+00', 20, 2, '2022-04-14 09:00:00+00', 2),
              (20003, '2022-06-12 12:00:00+00', 30, 3, NULL, 1),
              (20004, '2022-07-13 13:00:00+00', 40, 4, NULL, 2),
              (20005, '2022-03-01 08:00:00+00', 50, 5, NULL, 1)""",
    # payments routed into six different monthly partitions, in one statement
    """INSERT INTO payment (payment_id, customer_id, staff_id, rental_id, amount, payment_date)
       VALUES (40001, 1, 1, 20001, 2.99, '2022-02-10 10:05:00+00'),
              (40002, 2, 2, 20002, 4.99, '2022-04-14 09:05:00.123456+00'),
              (40003, 3, 1, 20003, 0.99, '2022-06-12 12:05:00+00'),
              (40004, 4, 2, 20004, 5.99, '2022-07-13 13:05:00+00'),
              (40005, 5, 1, 20005, 1.99, '2022-03-01 08:05:00+00'),
              (40006, 5, 1, 20005, 7.25, '2022-01-30 23:59:59.999999+00')""",
    # films: only rental_rate (and last_update, by trigger) change; description untouched
    "UPDATE film SET rental_rate = rental_rate + 1 WHERE film_id IN (1, 2, 3, 5, 11, 12, 13)",
    # customers
    "UPDATE customer SET email = lower(email) || '.moved', active = 0 WHERE customer_id IN (7, 8)",
    "UPDATE customer SET first_name = 'ZOË', last_name = 'O''Brien-Ünal' WHERE customer_id = 9",
    # deletes in foreign-key order: payments, then their rental; join rows (no inbound keys)
    "BEGIN; DELETE FROM payment WHERE rental_id = 1000; DELETE FROM rental WHERE rental_id = 1000; "
    "COMMIT",
    "DELETE FROM film_actor WHERE actor_id = 1 AND film_id = 1",
    "DELETE FROM film_category WHERE film_id = 2",
    # primary key updates: a cascade into film_actor's key, a payment_id change inside one
    # partition, a payment_date change moving the row to another partition, and a film with
    # unchanged TOASTed columns moving to a new key (cascading into inventory and join tables)
    "UPDATE actor SET actor_id = 5001 WHERE actor_id = 2",
    "UPDATE payment SET payment_id = 45001 WHERE payment_id = 40001",
    "UPDATE payment SET payment_date = payment_date + interval '2 months' WHERE payment_id = 40005",
    "UPDATE film SET film_id = 5004 WHERE film_id = 4",
    # one transaction across many tables, touching some keys twice
    """BEGIN;
       INSERT INTO rental (rental_id, rental_date, inventory_id, customer_id, return_date, staff_id)
              VALUES (20006, '2022-05-05 05:05:05+00', 60, 6, NULL, 1);
       INSERT INTO payment (payment_id, customer_id, staff_id, rental_id, amount, payment_date)
              VALUES (40007, 6, 1, 20006, 3.50, '2022-05-05 05:10:00+00');
       UPDATE customer SET activebool = false WHERE customer_id = 6;
       UPDATE inventory SET store_id = 2 WHERE inventory_id = 61;
       UPDATE rental SET return_date = '2022-05-07 00:00:00+00' WHERE rental_id = 20006;
       DELETE FROM film_category WHERE film_id = 3;
       UPDATE film SET rental_rate = 0.99 WHERE film_id = 1;
       UPDATE staff SET picture = '\\xdeadbeef00' WHERE staff_id = 1;
       INSERT INTO actor (actor_id, first_name, last_name) VALUES (5002, 'NEW', 'ACTOR');
       INSERT INTO film_actor (actor_id, film_id) VALUES (5002, 1), (5002, 5004);
       UPDATE payment SET amount = amount + 1 WHERE payment_id = 40007;
       COMMIT""",
]

PAGILA_WORKLOAD_2 = [
    "UPDATE rental SET return_date = '2022-02-12 18:00:00+00' WHERE rental_id = 20001",
    "UPDATE payment SET amount = 9.99 WHERE payment_id = 45001",
    "DELETE FROM payment WHERE payment_id = 40003",
    # July -> May: back into an earlier partition
    "UPDATE payment SET payment_date = '2022-05-20 00:00:00+00' WHERE payment_id = 40004",
    # insert and re-key a rental in one transaction
    """BEGIN;
       INSERT INTO rental (rental_id, rental_date, inventory_id, customer_id, return_date, staff_id)
              VALUES (20007, '2022-06-01 06:00:00+00', 70, 7, NULL, 2);
       UPDATE rental SET rental_id = 20107 WHERE rental_id = 20007;
       COMMIT""",
    # the re-keyed film (unchanged TOAST under its new key) and the others again
    "UPDATE film SET rental_rate = 3.33 WHERE film_id IN (5004, 1, 2)",
    "UPDATE film SET description = 'short again' WHERE film_id = 3",
    "UPDATE film SET length = length + 1, special_features = '{Trailers,\"Behind the Scenes\"}' "
    "WHERE film_id = 5",
    # a customer removed with everything that references it, in one transaction
    """BEGIN;
       DELETE FROM payment WHERE customer_id = 10;
       DELETE FROM rental WHERE customer_id = 10;
       DELETE FROM customer WHERE customer_id = 10;
       COMMIT""",
    # a key that moved away in the first workload comes back
    "UPDATE actor SET actor_id = 2 WHERE actor_id = 5001",
    "UPDATE address SET phone = '+1 555 0100', address2 = NULL WHERE address_id = 5",
    "INSERT INTO country (country_id, country) VALUES (500, 'Atlantis')",
    "INSERT INTO city (city_id, city, country_id) VALUES (900, 'Poseidonia', 500)",
    "UPDATE city SET city_id = 901 WHERE city_id = 900",
    """BEGIN;
       UPDATE customer SET store_id = 2, last_name = 'Twice' WHERE customer_id = 11;
       INSERT INTO payment (payment_id, customer_id, staff_id, rental_id, amount, payment_date)
              VALUES (40008, 11, 2, 20001, 0.50, '2022-07-31 23:59:59+00');
       UPDATE customer SET last_name = 'Thrice' WHERE customer_id = 11;
       DELETE FROM film_actor WHERE actor_id = 5002 AND film_id = 1;
       UPDATE staff SET picture = NULL, active = false WHERE staff_id = 2;
       COMMIT""",
]


def _load_pagila(project: Project, pagila_dir) -> None:
    for name in ("pagila-schema.sql", "pagila-data.sql"):
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", project.source_url, "-f",
                        str(pagila_dir / name)], check=True, capture_output=True)


def test_pagila_snapshot_then_two_workloads_through_cdc(source, project, pagila_dir):
    """Every Pagila table (partitioned `payment` once) equals the source after each workload."""
    _load_pagila(project, pagila_dir)
    run_sql(source, PAGILA_LARGE_FILMS)
    with source.cursor() as cur:  # the premise: those values are stored out of line
        cur.execute("SELECT count(*) FROM film WHERE film_id <= 5 AND pg_column_size(description) "
                    "> 2000 AND pg_column_size(fulltext) > 2000")
        assert cur.fetchone()[0] == 5
    tables = _base_tables(source)
    assert "payment" in tables and not any(t.startswith("payment_p") for t in tables)

    project.run("snapshot")
    assert project.dest_tables() == tables

    run_sql(source, *PAGILA_WORKLOAD_1)
    first = project.run("cdc")
    assert _cdc_changes(first) > 0
    assert project.dest_tables() == tables, "partitions must land in the one `payment` table"
    _assert_all_match(source, project, tables, "pagila workload 1")
    payments = {r["payment_id"]: r for r in project.dest_rows("payment")}
    assert {40002, 40003, 40004, 40006, 40007, 45001}.issubset(payments)
    assert 40001 not in payments and payments[40005]["payment_date"].month == 5
    films = {r["film_id"]: r for r in project.dest_rows("film")}
    assert 4 not in films and len(films[5004]["description"]) > 4000
    assert all(len(films[f]["description"]) > 4000 and films[f]["fulltext"]
               for f in (1, 2, 3, 5))

    run_sql(source, *PAGILA_WORKLOAD_2)
    project.run("cdc")
    assert project.dest_tables() == tables
    _assert_all_match(source, project, tables, "pagila workload 2")
    films = {r["film_id"]: r for r in project.dest_rows("film")}
    assert films[3]["description"] == "short again"
    assert len(films[5004]["description"]) > 4000 and str(films[5004]["rental_rate"]) == "3.33"


# -- 2./3. a writer running while the jobs run -----------------------------------------------------

ROWS = 200_000
BIG_EVERY = 50  # every 50th pre-filled row has a large body (stored out of line)


def _big_text(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(2600, 4000)))


def _accounts_table(conn, rows: int = ROWS) -> None:
    run_sql(conn,
         """CREATE TABLE accounts (id bigint PRIMARY KEY, qty int NOT NULL, note text,
                                   body text, updated_at timestamptz)""",
         # never compressed inline: a large body is always a TOAST pointer
         "ALTER TABLE accounts ALTER COLUMN body SET STORAGE EXTERNAL",
         f"""INSERT INTO accounts
             SELECT g, g % 1000, 'row ' || g,
                    CASE WHEN g % {BIG_EVERY} = 0 THEN repeat(md5(g::text), 90) END,
                    '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second'
             FROM generate_series(1, {rows}) g""")


class Writer(threading.Thread):
    """Commits a random mixed workload on `accounts` over its own connection until stopped.

    Operations: inserts (some with a large body), updates of random existing ids that leave the
    large body alone, updates of the large body, deletes of random ids, primary-key updates, and
    now and then a multi-statement transaction that touches one key several times.
    """

    def __init__(self, url: str, seed: int, max_id: int, pause: float = 0.004,
                 first_new_id: int = 10_000_000) -> None:
        super().__init__(name=f"writer-{seed}", daemon=True)
        self.url = url
        self.seed = seed
        self.rng = random.Random(seed)
        self.max_id = max_id
        self.pause = pause
        self.next_id = first_new_id
        self.created: List[int] = []
        self.ops: Counter = Counter()
        self.transactions = 0
        self.errors: List[str] = []
        self._halt = threading.Event()

    def halt(self) -> None:
        """Asks the writer to stop after its current transaction."""
        self._halt.set()

    def stop(self) -> None:
        """Stops the writer and fails on anything it ran into."""
        self._halt.set()
        self.join(timeout=60)
        assert not self.is_alive(), f"seed={self.seed}: writer did not stop"
        assert not self.errors, f"seed={self.seed}: writer failed: {self.errors}"

    def wait_for(self, transactions: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.transactions < transactions and not self.errors:
            assert time.monotonic() < deadline, f"seed={self.seed}: writer too slow"
            time.sleep(0.01)
        assert not self.errors, f"seed={self.seed}: writer failed: {self.errors}"

    def _random_id(self) -> int:
        if self.created and self.rng.random() < 0.1:
            return self.rng.choice(self.created)
        return self.rng.randint(1, self.max_id)

    def _new_id(self) -> int:
        self.next_id += 1
        self.created.append(self.next_id)
        return self.next_id

    def _op(self, cur, kind: str, key: Optional[int] = None) -> None:
        rng = self.rng
        self.ops[kind] += 1
        if kind == "insert":
            body = _big_text(rng) if rng.random() < 0.2 else None
            cur.execute("INSERT INTO accounts VALUES (%s, %s, %s, %s, now())",
                        (key or self._new_id(), rng.randint(0, 999), f"new {rng.random()}", body))
        elif kind == "update":  # the large body is left alone: pgoutput sends it as unchanged
            cur.execute("UPDATE accounts SET qty = qty + 1, note = %s, updated_at = now() "
                        "WHERE id = %s", (f"upd {rng.random()}", key or self._random_id()))
        elif kind == "update_body":
            cur.execute("UPDATE accounts SET body = %s WHERE id = %s",
                        (_big_text(rng) if rng.random() < 0.8 else None, key or self._random_id()))
        elif kind == "delete":
            cur.execute("DELETE FROM accounts WHERE id = %s", (key or self._random_id(),))
        elif kind == "rekey":
            cur.execute("UPDATE accounts SET id = %s WHERE id = %s",
                        (self._new_id(), key or self._random_id()))
        else:
            raise ValueError(kind)

    def _transaction(self, cur) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.02:
            # one key several times in one transaction, then moved to a new key
            key = self._new_id()
            self._op(cur, "insert", key)
            self._op(cur, "update", key)
            self._op(cur, "update_body", key)
            self._op(cur, "update")
            self._op(cur, "rekey", key)
            self.ops["multi"] += 1
            return
        if roll < 0.10:
            for kind in rng.choices(["update", "update_body", "delete", "insert"], k=3):
                self._op(cur, kind)
            self.ops["multi"] += 1
            return
        kind = rng.choices(["insert", "update", "update_body", "delete", "rekey"],
                           weights=[30, 35, 12, 12, 6])[0]
        self._op(cur, kind)

    def run(self) -> None:
        try:
            conn = psycopg2.connect(self.url)
        except Exception as e:  # noqa: BLE001 - reported by stop()/wait_for()
            self.errors.append(repr(e))
            return
        try:
            with conn.cursor() as cur:
                while not self._halt.is_set():
                    self._transaction(cur)
                    conn.commit()
                    self.transactions += 1
                    time.sleep(self.pause)
        except Exception as e:  # noqa: BLE001
            self.errors.append(repr(e))
        finally:
            conn.close()


@pytest.mark.slow
def test_writes_during_snapshot_then_cdc_converge(source, project):
    """Commits during the copy are either in it or come through cdc: the result is exact."""
    _accounts_table(source)
    writer = Writer(project.source_url, SEED, ROWS)
    writer.start()
    try:
        writer.wait_for(20)
        before = writer.transactions
        snapshot = project.run("snapshot", timeout=120)
        during = writer.transactions - before
    finally:
        writer.halt()
    writer.stop()
    context = f"seed={SEED}, writer ops {dict(writer.ops)}, {during} transactions during snapshot"
    assert during > 0, context
    assert "accounts: " in snapshot.stdout

    first = project.run("cdc", timeout=120)
    assert _cdc_changes(first) > 0, f"{context}: the writes after the hand-off come through cdc"
    second = project.run("cdc", timeout=120)
    assert "cdc: 0 changes, no new changes" in second.stdout, f"{context}\n{second.output}"
    _assert_all_match(source, project, ["accounts"], context)


@pytest.mark.slow
def test_writes_during_cdc_runs_converge_and_each_run_ends(source, project):
    """Runs under a never-pausing writer end, and once it stops the destination is exact."""
    _accounts_table(source)
    project.run("snapshot")
    writer = Writer(project.source_url, SEED + 1, ROWS)
    writer.start()
    runs = []
    try:
        writer.wait_for(20)
        for _ in range(2):
            # A run reads up to the WAL position at its start: it must end although the
            # writer never pauses (TimeoutExpired here means it chased the writer).
            started = time.monotonic()
            result = project.run("cdc", timeout=120)
            runs.append((round(time.monotonic() - started, 1), result))
    finally:
        writer.halt()
    writer.stop()
    context = (f"seed={SEED + 1}, writer ops {dict(writer.ops)}, runs "
               f"{[(seconds, r.stdout.strip()) for seconds, r in runs]}")
    assert all(_cdc_changes(r) > 0 for _, r in runs), context

    project.run("cdc", timeout=120)
    last = project.run("cdc", timeout=120)
    assert "cdc: 0 changes, no new changes" in last.stdout, f"{context}\n{last.output}"
    _assert_all_match(source, project, ["accounts"], context)


@pytest.mark.slow
def test_cdc_run_ends_while_a_writer_keeps_truncating(source, tmp_path, source_url):
    """A run ends although the writer truncates a table every few hundred milliseconds."""
    # Destination-independent (segments end on TRUNCATE for every merge strategy): DuckDB only.
    project = Project(tmp_path, source_url, destination="duckdb")
    run_sql(source, "CREATE TABLE staging (id int PRIMARY KEY, v text)",
         "CREATE TABLE events (id bigserial PRIMARY KEY, v text)")
    project.run("snapshot")
    stop = threading.Event()
    errors: List[str] = []

    def writer() -> None:
        conn = psycopg2.connect(project.source_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                i = 0
                while not stop.is_set():
                    i += 1
                    cur.execute("INSERT INTO events (v) VALUES ('e')")
                    cur.execute("INSERT INTO staging VALUES (%s, 's')", (i,))
                    if i % 30 == 0:  # about three truncates a second
                        cur.execute("TRUNCATE staging")
                    time.sleep(0.01)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        finally:
            conn.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        # Without the bug this run reads the few segments before its start (one load each: a
        # few seconds alone, 30-40 s on a busy 2-core machine); with it, it never ends.
        project.run("cdc", timeout=120)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    project.run("cdc", timeout=60)
    _assert_all_match(source, project, ["staging", "events"], "truncating writer")
