"""`protocol.decode_message` on pgoutput bytes captured from a real server, and on hand-built bytes.

The server-backed tests create a pgoutput slot in the test's fresh database, make changes, and
read the raw messages with `pg_logical_slot_peek_binary_changes` (the same bytes a walsender puts
in XLogData frames). The pure tests build messages by hand from the PostgreSQL documentation,
"Logical Replication Message Formats".
"""

import struct
import time
import uuid
from dataclasses import dataclass
from typing import List, Optional

import pytest

from pg_replication.exceptions import DecodeError
from pg_replication.protocol import (
    PG_EPOCH_OFFSET_US,
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfo,
    Update,
    decode_message,
    int_to_lsn,
    lsn_to_int,
)

INT4, INT8, TEXT, BOOL, NUMERIC, VARCHAR, TIMESTAMPTZ = 23, 20, 25, 16, 1700, 1043, 1184


# ---- capturing real messages -------------------------------------------------------------------


@dataclass
class Captured:
    lsn: int  # the `lsn` column of pg_logical_slot_peek_binary_changes
    xid: int
    data: bytes
    message: Message


class Wal:
    """One pgoutput slot in the test database, and the raw messages it decodes."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.slot = "s_" + uuid.uuid4().hex[:12]  # slots are cluster-wide: never reuse a name
        self.created = False
        # The sandbox server runs with synchronous_commit = off: commits would reach the decoder
        # only when the WAL writer flushes them. Flush each commit of this session at once.
        self.sql("SET synchronous_commit = on", "SET TimeZone = 'UTC'")

    def sql(self, *statements: str) -> None:
        with self.conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def value(self, query: str, params: tuple = ()):
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchone()[0]

    def insert_lsn(self) -> int:
        return int(self.value("SELECT pg_current_wal_insert_lsn() - '0/0'"))

    def server_now_us(self) -> int:
        return int(self.value("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"))

    def create_slot(self) -> None:
        self.sql(f"SELECT pg_create_logical_replication_slot('{self.slot}', 'pgoutput')")
        self.created = True

    def _wait_flushed(self, timeout: float = 10.0) -> None:
        """Waits until the WAL written so far is flushed: decoding reads only flushed WAL."""
        target = self.insert_lsn()
        deadline = time.monotonic() + timeout
        while int(self.value("SELECT pg_current_wal_flush_lsn() - '0/0'")) < target:
            assert time.monotonic() < deadline, "WAL was not flushed in time"
            time.sleep(0.02)

    def changes(self, publication: str = "p", messages: bool = False, proto_version: int = 1,
                streaming: bool = False) -> List[Captured]:
        """Every message of the slot so far (peek: the slot does not advance)."""
        self._wait_flushed()
        options = ["proto_version", str(proto_version), "publication_names", publication]
        if messages:
            options += ["messages", "true"]
        if streaming:
            options += ["streaming", "on"]
        placeholders = ", ".join(["%s"] * len(options))
        with self.conn.cursor() as cur:
            cur.execute(
                f"SELECT lsn::text, xid::text::bigint, data FROM "
                f"pg_logical_slot_peek_binary_changes(%s, NULL, NULL, {placeholders})",
                (self.slot, *options))
            rows = cur.fetchall()
        captured = []
        in_stream = False
        for lsn, xid, data in rows:
            data = bytes(data)
            message = decode_message(data, in_stream)
            if isinstance(message, StreamStart):
                in_stream = True
            elif isinstance(message, StreamStop):
                in_stream = False
            captured.append(Captured(lsn_to_int(lsn), xid, data, message))
        return captured

    def messages(self, **kwargs) -> List[Message]:
        return [c.message for c in self.changes(**kwargs)]

    def relation_oid(self, name: str) -> int:
        return int(self.value("SELECT %s::regclass::oid::bigint", (name,)))

    def drop(self) -> None:
        if self.created:
            self.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     f"WHERE slot_name = '{self.slot}'")
            self.created = False


@pytest.fixture
def wal(source):
    w = Wal(source)
    try:
        yield w
    finally:
        w.drop()


def of_type(messages: List[Message], cls) -> list:
    return [m for m in messages if isinstance(m, cls)]


def kinds(messages: List[Message]) -> List[str]:
    return [type(m).__name__ for m in messages]


# ---- Begin / Commit -----------------------------------------------------------------------------


def test_begin_and_commit_fields(wal):
    wal.sql("CREATE TABLE t (id int PRIMARY KEY)", "CREATE PUBLICATION p FOR TABLE t")
    wal.create_slot()

    lsn_before = wal.insert_lsn()
    time_before = wal.server_now_us()
    with wal.conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t VALUES (1) RETURNING pg_current_xact_id()::text::bigint")
        xid = cur.fetchone()[0]
        cur.execute("COMMIT")
    time_after = wal.server_now_us()
    lsn_after = wal.insert_lsn()
    wal.sql("INSERT INTO t VALUES (2)")

    captured = wal.changes()
    assert kinds(c.message for c in captured) == [
        "Begin", "Relation", "Insert", "Commit", "Begin", "Insert", "Commit"]
    begin, commit = captured[0].message, captured[3].message

    assert begin.xid == xid % 2**32 == captured[0].xid
    assert lsn_before < begin.final_lsn < lsn_after
    # commit timestamp: Unix epoch microseconds, taken by the server between the two clock reads
    assert time_before <= begin.commit_ts_us <= time_after
    assert abs(begin.commit_ts_us / 1e6 - time.time()) < 600

    assert commit.flags == 0
    assert commit.commit_lsn == begin.final_lsn
    assert commit.end_lsn > commit.commit_lsn
    assert commit.end_lsn <= lsn_after
    assert commit.end_lsn == captured[3].lsn  # the SQL function reports a commit at its end LSN
    assert commit.commit_ts_us == begin.commit_ts_us

    second_begin, second_commit = captured[4].message, captured[6].message
    assert second_begin.xid > begin.xid
    assert second_begin.final_lsn > commit.end_lsn
    assert second_commit.commit_lsn == second_begin.final_lsn
    assert second_commit.commit_ts_us >= commit.commit_ts_us


# ---- Relation / Type ----------------------------------------------------------------------------


def test_relation_message_columns_types_and_keys(wal):
    wal.sql('CREATE SCHEMA "Sch é"',
            'CREATE TABLE "Sch é"."Tbl" (id int PRIMARY KEY, amount numeric(10,2), '
            'label varchar(20), flag bool, note text, at timestamptz, free numeric, big bigint)',
            'CREATE PUBLICATION p FOR TABLE "Sch é"."Tbl"')
    wal.create_slot()
    wal.sql('INSERT INTO "Sch é"."Tbl" (id) VALUES (1)')

    relations = of_type(wal.messages(), Relation)
    assert len(relations) == 1
    rel = relations[0]
    assert rel.relation_id == wal.relation_oid('"Sch é"."Tbl"')
    assert rel.namespace == "Sch é"
    assert rel.name == "Tbl"
    assert rel.replica_identity == "d"
    assert [c.name for c in rel.columns] == ["id", "amount", "label", "flag", "note", "at",
                                             "free", "big"]
    assert [c.type_oid for c in rel.columns] == [INT4, NUMERIC, VARCHAR, BOOL, TEXT, TIMESTAMPTZ,
                                                 NUMERIC, INT8]
    # typmod: numeric(p, s) is ((p << 16) | s) + 4, varchar(n) is n + 4, none is -1
    assert [c.type_modifier for c in rel.columns] == [-1, (10 << 16 | 2) + 4, 20 + 4, -1, -1, -1,
                                                      -1, -1]
    assert [c.is_key for c in rel.columns] == [True] + [False] * 7

    with wal.conn.cursor() as cur:
        cur.execute('SELECT atttypid::int, atttypmod FROM pg_attribute '
                    'WHERE attrelid = \'"Sch é"."Tbl"\'::regclass AND attnum > 0 ORDER BY attnum')
        assert [(c.type_oid, c.type_modifier) for c in rel.columns] == cur.fetchall()


def test_relation_message_replica_identities(wal):
    wal.sql("CREATE TABLE dflt (a int, b int, c text, PRIMARY KEY (b, a))",
            "CREATE TABLE full_t (a int PRIMARY KEY, b text)",
            "ALTER TABLE full_t REPLICA IDENTITY FULL",
            "CREATE TABLE idx (a int, code text NOT NULL, b text)",
            "CREATE UNIQUE INDEX idx_code ON idx (code)",
            "ALTER TABLE idx REPLICA IDENTITY USING INDEX idx_code",
            "CREATE TABLE nothing (a int PRIMARY KEY, b text)",
            "ALTER TABLE nothing REPLICA IDENTITY NOTHING",
            "CREATE PUBLICATION p FOR ALL TABLES")
    wal.create_slot()
    wal.sql("INSERT INTO dflt VALUES (1, 2, 'x')", "INSERT INTO full_t VALUES (1, 'x')",
            "INSERT INTO idx VALUES (1, 'c', 'x')", "INSERT INTO nothing VALUES (1, 'x')")

    relations = {r.name: r for r in of_type(wal.messages(), Relation)}
    assert relations["dflt"].replica_identity == "d"
    assert [c.is_key for c in relations["dflt"].columns] == [True, True, False]
    assert relations["full_t"].replica_identity == "f"
    assert [c.is_key for c in relations["full_t"].columns] == [True, True]  # FULL: every column
    assert relations["idx"].replica_identity == "i"
    assert [(c.name, c.is_key) for c in relations["idx"].columns] == [
        ("a", False), ("code", True), ("b", False)]
    assert relations["nothing"].replica_identity == "n"
    assert [c.is_key for c in relations["nothing"].columns] == [False, False]
    for name, rel in relations.items():
        assert rel.namespace == "public"
        assert rel.relation_id == wal.relation_oid(name)


def test_type_message_for_enum_and_domain_columns(wal):
    wal.sql("CREATE SCHEMA app",
            "CREATE TYPE app.mood AS ENUM ('sad', 'happy')",
            "CREATE DOMAIN app.posint AS int CHECK (VALUE > 0)",
            "CREATE TABLE app.t (id int PRIMARY KEY, m app.mood, n app.posint)",
            "CREATE PUBLICATION p FOR TABLE app.t")
    wal.create_slot()
    wal.sql("INSERT INTO app.t VALUES (1, 'happy', 5)")

    messages = wal.messages()
    mood_oid = int(wal.value("SELECT 'app.mood'::regtype::oid::bigint"))
    posint_oid = int(wal.value("SELECT 'app.posint'::regtype::oid::bigint"))
    types = {t.type_oid: t for t in of_type(messages, TypeInfo)}
    assert types[mood_oid] == TypeInfo(mood_oid, "app", "mood")
    # for a domain the server names the base type; pg_catalog is sent as an empty namespace
    assert types[posint_oid] == TypeInfo(posint_oid, "", "int4")
    # Type messages come before the Relation that uses them, and only for non-built-in types
    assert set(kinds(messages[: messages.index(of_type(messages, Relation)[0])])) == {
        "Begin", "TypeInfo"}
    rel = of_type(messages, Relation)[0]
    assert [c.type_oid for c in rel.columns] == [INT4, mood_oid, posint_oid]
    assert of_type(messages, Insert)[0].new_tuple == [b"1", b"happy", b"5"]


# ---- Insert / Update / Delete -------------------------------------------------------------------


def test_insert_values_and_nulls(wal):
    wal.sql("CREATE TABLE t (id int PRIMARY KEY, n numeric(10,2), v varchar(20), b bool, "
            "ts timestamptz, s text, e text, a int[])",
            "CREATE PUBLICATION p FOR TABLE t")
    wal.create_slot()
    wal.sql("INSERT INTO t VALUES (1, 1.5, 'héllo', true, '2024-01-02 03:04:05.5+00', "
            "E'tab\\tnew\\nline \"q\"', '', '{1,NULL}')",
            "INSERT INTO t (id) VALUES (2)")

    messages = wal.messages()
    rel = of_type(messages, Relation)[0]
    inserts = of_type(messages, Insert)
    assert [i.relation_id for i in inserts] == [rel.relation_id] * 2
    assert inserts[0].new_tuple == [
        b"1", b"1.50", "héllo".encode(), b"t", b"2024-01-02 03:04:05.5+00",
        b'tab\tnew\nline "q"', b"", b"{1,NULL}"]
    assert inserts[1].new_tuple == [b"2"] + [None] * 7


def test_update_without_old_tuple(wal):
    wal.sql("CREATE TABLE t (id int PRIMARY KEY, name text, qty int)",
            "INSERT INTO t VALUES (1, 'a', 1)",
            "CREATE PUBLICATION p FOR TABLE t")
    wal.create_slot()
    wal.sql("UPDATE t SET name = 'b', qty = NULL WHERE id = 1")

    (update,) = of_type(wal.messages(), Update)
    assert update.relation_id == wal.relation_oid("t")
    assert update.old_kind is None and update.old_tuple is None
    assert update.new_tuple == [b"1", b"b", None]


def test_update_of_the_primary_key_sends_old_key(wal):
    wal.sql("CREATE TABLE t (id int, tenant text, name text, PRIMARY KEY (tenant, id))",
            "INSERT INTO t VALUES (1, 'x', 'a')",
            "CREATE PUBLICATION p FOR TABLE t")
    wal.create_slot()
    wal.sql("UPDATE t SET id = 10, name = 'b' WHERE id = 1")

    (update,) = of_type(wal.messages(), Update)
    assert update.old_kind == "K"
    # the old key tuple has every column, NULL for the non-key ones
    assert update.old_tuple == [b"1", b"x", None]
    assert update.new_tuple == [b"10", b"x", b"b"]


def test_update_with_replica_identity_full_sends_old_row(wal):
    wal.sql("CREATE TABLE t (id int PRIMARY KEY, name text, qty int)",
            "ALTER TABLE t REPLICA IDENTITY FULL",
            "INSERT INTO t VALUES (1, 'a', NULL)",
            "CREATE PUBLICATION p FOR TABLE t")
    wal.create_slot()
    wal.sql("UPDATE t SET name = 'b', qty = 7 WHERE id = 1")

    (update,) = of_type(wal.messages(), Update)
    assert update.old_kind == "O"
    assert update.old_tuple == [b"1", b"a", None]
    assert update.new_tuple == [b"1", b"b", b"7"]


def test_update_leaving_a_toasted_value_unchanged(wal):
    wal.sql("CREATE TABLE t (id int PRIMARY KEY, qty int, big text)",
            "ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL",  # out of line, uncompressed
            "CREATE PUBLICATION p FOR TABLE t")
    big = "".join(f"{i:05d}" for i in range(4000))  # 20 000 characters
    wal.create_slot()
    with wal.conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1, 1, %s)", (big,))
    toast_table = wal.value("SELECT reltoastrelid::regclass::text FROM pg_class "
                            "WHERE oid = 't'::regclass")
    assert int(wal.value(f"SELECT count(*) FROM {toast_table}")) > 0  # really TOASTed
    wal.sql("UPDATE t SET qty = 2 WHERE id = 1",
            "UPDATE t SET big = 'small now' WHERE id = 1")

    messages = wal.messages()
    (insert,) = of_type(messages, Insert)
    assert insert.new_tuple == [b"1", b"1", big.encode()]
    unchanged, changed = of_type(messages, Update)
    assert unchanged.old_kind is None
    assert unchanged.new_tuple == [b"1", b"2", UNCHANGED_TOAST]
    assert unchanged.new_tuple[2] is UNCHANGED_TOAST
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert changed.new_tuple == [b"1", b"2", b"small now"]


def test_delete_sends_old_key_or_old_row(wal):
    wal.sql("CREATE TABLE k (id int PRIMARY KEY, name text)",
            "CREATE TABLE f (id int PRIMARY KEY, name text, qty int)",
            "ALTER TABLE f REPLICA IDENTITY FULL",
            "INSERT INTO k VALUES (1, 'a')",
            "INSERT INTO f VALUES (2, 'b', NULL)",
            "CREATE PUBLICATION p FOR ALL TABLES")
    wal.create_slot()
    wal.sql("DELETE FROM k", "DELETE FROM f")

    by_id = {d.relation_id: d for d in of_type(wal.messages(), Delete)}
    by_key = by_id[wal.relation_oid("k")]
    assert by_key.old_kind == "K"
    assert by_key.old_tuple == [b"1", None]
    whole = by_id[wal.relation_oid("f")]
    assert whole.old_kind == "O"
    assert whole.old_tuple == [b"2", b"b", None]


# ---- Truncate -----------------------------------------------------------------------------------


def test_truncate_relations_and_options(wal):
    wal.sql("CREATE TABLE a (id serial PRIMARY KEY)",
            "CREATE TABLE b (id int PRIMARY KEY)",
            "CREATE TABLE c (id int PRIMARY KEY, a_id int REFERENCES a)",
            "INSERT INTO a VALUES (1)", "INSERT INTO c VALUES (1, 1)",
            "CREATE PUBLICATION p FOR ALL TABLES")
    wal.create_slot()
    wal.sql("TRUNCATE a, b RESTART IDENTITY CASCADE",
            "TRUNCATE b",
            "TRUNCATE b RESTART IDENTITY",
            "TRUNCATE a CASCADE")

    truncates = of_type(wal.messages(), Truncate)
    oid = {name: wal.relation_oid(name) for name in "abc"}
    assert len(truncates) == 4
    assert sorted(truncates[0].relation_ids) == sorted([oid["a"], oid["b"], oid["c"]])
    assert (truncates[0].cascade, truncates[0].restart_identity) == (True, True)
    assert truncates[1] == Truncate([oid["b"]], False, False)
    assert truncates[2] == Truncate([oid["b"]], False, True)
    assert sorted(truncates[3].relation_ids) == sorted([oid["a"], oid["c"]])
    assert (truncates[3].cascade, truncates[3].restart_identity) == (True, False)


# ---- logical messages ---------------------------------------------------------------------------


def test_logical_messages(wal):
    wal.sql("CREATE TABLE t (id int PRIMARY KEY)", "CREATE PUBLICATION p FOR TABLE t")
    wal.create_slot()
    wal.sql("SELECT pg_logical_emit_message(true, 'my.prefix', 'hello wörld')",
            "SELECT pg_logical_emit_message(false, 'nontx', '\\x00ff0a'::bytea)",
            # a non-transactional message is decoded even when its transaction rolls back
            "BEGIN",
            "SELECT pg_logical_emit_message(false, 'rolled-back', 'kept')",
            "SELECT pg_logical_emit_message(true, 'rolled-back', 'dropped')",
            "ROLLBACK",
            "INSERT INTO t VALUES (1)")  # commits, so everything before it is flushed

    captured = wal.changes(messages=True)
    messages = [c.message for c in captured]
    assert kinds(messages) == ["Begin", "LogicalMessage", "Commit", "LogicalMessage",
                               "LogicalMessage", "Begin", "Relation", "Insert", "Commit"]
    begin, tx, commit = messages[0:3]
    assert tx.transactional is True
    assert tx.prefix == "my.prefix"
    assert tx.content == "hello wörld".encode()
    assert 0 < tx.lsn <= begin.final_lsn
    assert commit.commit_lsn == begin.final_lsn

    nontx, kept = messages[3], messages[4]
    assert nontx == LogicalMessage(False, nontx.lsn, "nontx", b"\x00\xff\x0a")
    assert kept == LogicalMessage(False, kept.lsn, "rolled-back", b"kept")
    assert commit.end_lsn <= nontx.lsn < kept.lsn < messages[5].final_lsn

    # without the 'messages' option pgoutput sends none
    assert "LogicalMessage" not in kinds(wal.messages())


# ---- Origin -------------------------------------------------------------------------------------


def test_origin_message(wal):
    origin = "o_" + uuid.uuid4().hex[:12]  # origins are cluster-wide
    wal.sql("CREATE TABLE t (id int PRIMARY KEY)", "CREATE PUBLICATION p FOR TABLE t")
    wal.create_slot()
    wal.sql(f"SELECT pg_replication_origin_create('{origin}')")
    try:
        wal.sql(f"SELECT pg_replication_origin_session_setup('{origin}')")
        wal.sql("BEGIN",
                "SELECT pg_replication_origin_xact_setup('1/23456789', now())",
                "INSERT INTO t VALUES (1)",
                "COMMIT")
    finally:
        wal.sql("SELECT pg_replication_origin_session_reset()",
                f"SELECT pg_replication_origin_drop('{origin}')")

    messages = wal.messages()
    assert kinds(messages) == ["Begin", "Origin", "Relation", "Insert", "Commit"]
    assert messages[1] == Origin(lsn_to_int("1/23456789"), origin)
    assert messages[1].commit_lsn == 0x1_23456789


# ---- streamed (in-progress) transactions, protocol version 2 -------------------------------------


def test_streamed_transactions_from_the_server(wal):
    wal.sql("CREATE TABLE t (id int PRIMARY KEY, pad text)", "CREATE PUBLICATION p FOR TABLE t")
    wal.create_slot()
    with wal.conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 800) g "
                    "RETURNING pg_current_xact_id()::text::bigint")
        committed_xid = cur.fetchone()[0] % 2**32
        cur.execute("COMMIT")
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t SELECT g, repeat('y', 200) FROM generate_series(1001, 1800) g "
                    "RETURNING pg_current_xact_id()::text::bigint")
        aborted_xid = cur.fetchone()[0] % 2**32
        cur.execute("ROLLBACK")
    wal.sql("INSERT INTO t VALUES (-1, 'small')",
            # the decoding session's memory limit: bigger transactions are streamed
            "SET logical_decoding_work_mem = '64kB'")

    messages = wal.messages(proto_version=2, streaming=True)
    starts = of_type(messages, StreamStart)
    assert len(starts) >= 4 and len(of_type(messages, StreamStop)) == len(starts)
    assert [s.xid for s in starts if s.first_segment] == [committed_xid, aborted_xid]
    assert {s.xid for s in starts} == {committed_xid, aborted_xid}

    (stream_commit,) = of_type(messages, StreamCommit)
    assert stream_commit.xid == committed_xid
    assert stream_commit.flags == 0
    assert stream_commit.end_lsn > stream_commit.commit_lsn > 0
    assert abs(stream_commit.commit_ts_us / 1e6 - time.time()) < 600
    assert of_type(messages, StreamAbort) == [StreamAbort(aborted_xid, aborted_xid)]

    # the streamed data messages decoded with in_stream=True (their leading xid skipped)
    committed_ids = []
    in_stream_xid = None
    for m in messages:
        if isinstance(m, StreamStart):
            in_stream_xid = m.xid
        elif isinstance(m, StreamStop):
            in_stream_xid = None
        elif isinstance(m, Insert) and in_stream_xid == committed_xid:
            committed_ids.append(int(m.new_tuple[0]))
            assert m.relation_id == wal.relation_oid("t")
            assert m.new_tuple[1] == b"x" * 200
    assert committed_ids == list(range(1, 801))
    relations = of_type(messages, Relation)
    assert relations and all(r.name == "t" and r.relation_id == wal.relation_oid("t")
                             for r in relations)
    # the small transaction is not streamed: plain Begin / (Relation) / Insert / Commit
    last_begin = max(i for i, m in enumerate(messages) if isinstance(m, Begin))
    assert kinds(messages[last_begin:]) in (["Begin", "Insert", "Commit"],
                                             ["Begin", "Relation", "Insert", "Commit"])
    assert messages[-2].new_tuple == [b"-1", b"small"]


def test_every_captured_message_truncated_raises_decode_error(wal):
    wal.sql("CREATE TYPE mood AS ENUM ('sad', 'happy')",
            "CREATE TABLE t (id int PRIMARY KEY, m mood, n numeric(10,2), s text)",
            "ALTER TABLE t REPLICA IDENTITY FULL",
            "CREATE PUBLICATION p FOR TABLE t")
    wal.create_slot()
    wal.sql("INSERT INTO t VALUES (1, 'sad', 1.5, 'text'), (2, NULL, NULL, NULL)",
            "UPDATE t SET s = 'changed' WHERE id = 1",
            "DELETE FROM t WHERE id = 2",
            "TRUNCATE t",
            "SELECT pg_logical_emit_message(true, 'pfx', 'content')")

    captured = wal.changes(messages=True)
    assert {type(c.message) for c in captured} >= {Begin, Commit, TypeInfo, Relation, Insert,
                                                   Update, Delete, Truncate, LogicalMessage}
    for c in captured:
        for end in range(1, len(c.data)):
            with pytest.raises(DecodeError, match=f"'{chr(c.data[0])}'"):
                decode_message(c.data[:end])
        assert decode_message(c.data) == c.message  # decoding is deterministic


# ---- hand-built messages ------------------------------------------------------------------------


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def tuple_data(*values) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED_TOAST:
            out += b"u"
        else:
            out += b"t" + struct.pack("!i", len(value)) + value
    return out


def xid_prefix(xid: Optional[int]) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


def build_relation(xid=None) -> bytes:
    return (b"R" + xid_prefix(xid) + struct.pack("!I", 16384) + cstr("public") + cstr("t")
            + b"d" + struct.pack("!h", 2)
            + b"\x01" + cstr("id") + struct.pack("!Ii", INT4, -1)
            + b"\x00" + cstr("amount") + struct.pack("!Ii", NUMERIC, (10 << 16 | 2) + 4))


def build_type(xid=None) -> bytes:
    return b"Y" + xid_prefix(xid) + struct.pack("!I", 90000) + cstr("app") + cstr("mood")


def build_insert(xid=None) -> bytes:
    return b"I" + xid_prefix(xid) + struct.pack("!I", 16384) + b"N" + tuple_data(b"1", None)


def build_update(xid=None) -> bytes:
    return (b"U" + xid_prefix(xid) + struct.pack("!I", 16384) + b"K" + tuple_data(b"1", None)
            + b"N" + tuple_data(b"2", UNCHANGED_TOAST))


def build_delete(xid=None) -> bytes:
    return b"D" + xid_prefix(xid) + struct.pack("!I", 16384) + b"O" + tuple_data(b"1", b"9.99")


def build_truncate(xid=None) -> bytes:
    return b"T" + xid_prefix(xid) + struct.pack("!ib", 2, 3) + struct.pack("!II", 16384, 16390)


def build_message(xid=None) -> bytes:
    return (b"M" + xid_prefix(xid) + struct.pack("!bQ", 1, 0x1_00000010) + cstr("pfx")
            + struct.pack("!i", 3) + b"a\x00b")


DATA_MESSAGES = {
    "R": (build_relation, Relation(16384, "public", "t", "d", [
        RelationColumn("id", INT4, -1, True),
        RelationColumn("amount", NUMERIC, (10 << 16 | 2) + 4, False)])),
    "Y": (build_type, TypeInfo(90000, "app", "mood")),
    "I": (build_insert, Insert(16384, [b"1", None])),
    "U": (build_update, Update(16384, "K", [b"1", None], [b"2", UNCHANGED_TOAST])),
    "D": (build_delete, Delete(16384, "O", [b"1", b"9.99"])),
    "T": (build_truncate, Truncate([16384, 16390], True, True)),
    "M": (build_message, LogicalMessage(True, 0x1_00000010, "pfx", b"a\x00b")),
}


@pytest.mark.parametrize("tag", sorted(DATA_MESSAGES))
def test_hand_built_data_messages_in_and_out_of_a_stream(tag):
    build, expected = DATA_MESSAGES[tag]
    assert decode_message(build()) == expected
    # inside a streamed transaction the same message carries the (sub)transaction xid first
    assert decode_message(build(xid=0xFFFFFFFE), in_stream=True) == expected
    assert decode_message(build(xid=7), in_stream=True) == expected


def test_stream_start_and_stop():
    assert decode_message(b"S" + struct.pack("!Ib", 1234, 1)) == StreamStart(1234, True)
    assert decode_message(b"S" + struct.pack("!Ib", 0xFFFFFFFF, 0)) == StreamStart(
        0xFFFFFFFF, False)
    assert decode_message(b"E") == StreamStop()


def test_stream_commit():
    commit_ts_pg = 789_000_000_000_000  # microseconds since 2000-01-01
    payload = b"c" + struct.pack("!IbQQq", 4321, 0, 0x2_00000100, 0x2_00000130, commit_ts_pg)
    message = decode_message(payload)
    assert message == StreamCommit(4321, 0, 0x2_00000100, 0x2_00000130,
                                   commit_ts_pg + PG_EPOCH_OFFSET_US)
    assert PG_EPOCH_OFFSET_US == 946_684_800 * 1_000_000  # 2000-01-01T00:00:00Z


def test_stream_abort():
    assert decode_message(b"A" + struct.pack("!II", 4321, 4330)) == StreamAbort(4321, 4330)


def test_begin_commit_origin_hand_built():
    ts = -1_000_000  # one second before 2000-01-01: timestamps are signed
    assert decode_message(b"B" + struct.pack("!QqI", 0xFFFFFFFF_FFFFFFFF, ts, 0xFFFFFFFF)) == \
        Begin(0xFFFFFFFF_FFFFFFFF, ts + PG_EPOCH_OFFSET_US, 0xFFFFFFFF)
    assert decode_message(b"C" + struct.pack("!bQQq", 0, 10, 20, 0)) == \
        Commit(0, 10, 20, PG_EPOCH_OFFSET_US)
    assert decode_message(b"O" + struct.pack("!Q", 99) + cstr("orig")) == Origin(99, "orig")


def test_unknown_tag_raises_decode_error_naming_it():
    with pytest.raises(DecodeError, match=r"'Z'.*0x5a"):
        decode_message(b"Z\x00\x00\x00\x01")
    with pytest.raises(DecodeError, match="0xff"):
        decode_message(b"\xff")
    with pytest.raises(DecodeError, match="empty"):
        decode_message(b"")


@pytest.mark.parametrize("tag, name", [("P", "Prepare"), ("b", "Begin Prepare"),
                                       ("K", "Commit Prepared"), ("r", "Rollback Prepared"),
                                       ("p", "Stream Prepare")])
def test_two_phase_tags_raise_decode_error_naming_them(tag, name):
    payload = tag.encode() + struct.pack("!QQqI", 1, 2, 3, 4) + cstr("gid")
    with pytest.raises(DecodeError, match=f"'{tag}' \\({name}\\).*two-phase"):
        decode_message(payload)


HAND_BUILT = [
    b"B" + struct.pack("!QqI", 1, 2, 3),
    b"C" + struct.pack("!bQQq", 0, 1, 2, 3),
    b"O" + struct.pack("!Q", 5) + cstr("origin"),
    build_relation(), build_type(), build_insert(), build_update(), build_delete(),
    build_truncate(), build_message(),
    b"S" + struct.pack("!Ib", 1, 1),
    b"c" + struct.pack("!IbQQq", 1, 0, 2, 3, 4),
    b"A" + struct.pack("!II", 1, 2),
]


@pytest.mark.parametrize("payload", HAND_BUILT, ids=[chr(p[0]) for p in HAND_BUILT])
def test_truncated_hand_built_messages_raise_decode_error(payload):
    decode_message(payload)  # the whole message decodes
    for end in range(1, len(payload)):
        with pytest.raises(DecodeError, match=f"'{chr(payload[0])}'"):
            decode_message(payload[:end])


@pytest.mark.parametrize("payload", [build_insert(), build_update(), build_delete()],
                         ids=["I", "U", "D"])
def test_truncated_stream_data_messages_raise_decode_error(payload):
    streamed = payload[:1] + struct.pack("!I", 42) + payload[1:]
    decode_message(streamed, in_stream=True)
    for end in range(1, len(streamed)):
        with pytest.raises(DecodeError):
            decode_message(streamed[:end], in_stream=True)


def test_unknown_tuple_value_kind_raises_decode_error():
    payload = b"I" + struct.pack("!I", 16384) + b"N" + struct.pack("!h", 2) + b"n" + b"x"
    with pytest.raises(DecodeError, match=r"'x'.*'I'"):
        decode_message(payload)
    # a value length pointing past the end of the message
    payload = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 1) + b"t" + struct.pack(
        "!i", 10) + b"abc"
    with pytest.raises(DecodeError, match="truncated"):
        decode_message(payload)


def test_unexpected_tuple_markers_raise_decode_error():
    with pytest.raises(DecodeError, match="'X'"):  # Insert needs 'N'
        decode_message(b"I" + struct.pack("!I", 1) + b"X" + tuple_data(b"1"))
    with pytest.raises(DecodeError, match="'N'"):  # Delete needs 'K' or 'O'
        decode_message(b"D" + struct.pack("!I", 1) + b"N" + tuple_data(b"1"))
    with pytest.raises(DecodeError, match="'O'"):  # after the old tuple of an Update comes 'N'
        decode_message(b"U" + struct.pack("!I", 1) + b"K" + tuple_data(b"1") + b"O"
                       + tuple_data(b"1"))


def test_malformed_utf8_name_raises_decode_error():
    payload = b"Y" + struct.pack("!I", 90000) + b"app\xff\x00" + cstr("mood")
    with pytest.raises(DecodeError):
        decode_message(payload)


def test_negative_value_length_raises_decode_error():
    payload = (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 1) + b"t"
               + struct.pack("!i", -1))
    with pytest.raises(DecodeError):
        decode_message(payload)


# ---- LSNs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("0/0", 0),
    ("0/1", 1),
    ("0/16B3748", 0x16B3748),
    ("1/0", 1 << 32),
    ("16/B374D848", 0x16_B374D848),
    ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
])
def test_lsn_round_trip(text, value):
    assert lsn_to_int(text) == value
    assert int_to_lsn(value) == text
    assert lsn_to_int(int_to_lsn(value)) == value
    assert lsn_to_int(text.lower()) == value


def test_lsn_conversions_agree_with_the_server(pg_server_url):
    import psycopg2

    conn = psycopg2.connect(pg_server_url)
    with conn, conn.cursor() as cur:
        for text in ["0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"]:
            cur.execute("SELECT (%s::pg_lsn - '0/0')::numeric::text, %s::pg_lsn::text",
                        (text, text.lower()))
            number, canonical = cur.fetchone()
            assert lsn_to_int(text) == int(number)
            assert int_to_lsn(int(number)) == canonical
    conn.close()
