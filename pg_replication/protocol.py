"""Decoder of the pgoutput logical replication protocol (protocol version 1 and 2 messages).

Written from the PostgreSQL documentation, "Logical Replication Message Formats". Every message is
one byte of tag followed by big-endian fields; `decode_message` turns one message into a small typed
object. Column values stay as the raw text bytes the server sent (pgoutput's text format), so the
hot path does no per-value conversion; `types.py` converts whole columns at once.

This module does no I/O and imports neither psycopg2 nor dlt.
"""

import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

from .exceptions import DecodeError

_I8 = struct.Struct("!b")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_BEGIN = struct.Struct("!QqI")  # final LSN, commit timestamp, xid
_COMMIT = struct.Struct("!bQQq")  # flags, commit LSN, end LSN, commit timestamp

# Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
PG_EPOCH_OFFSET_US = 946_684_800_000_000


class _UnchangedToast:
    """Marker for a TOASTed value the server did not send because the UPDATE left it unchanged."""

    _instance = None

    def __new__(cls) -> "_UnchangedToast":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST = _UnchangedToast()

class PartialTuple(list):
    """The values of a tuple with at least one UNCHANGED_TOAST: a list whose type says so, so the
    hot path never scans a tuple to find out."""


# A column value as sent: text bytes, None for NULL, or UNCHANGED_TOAST.
TupleValue = Union[bytes, None, _UnchangedToast]


@dataclass(slots=True)
class Begin:
    final_lsn: int  # LSN of the commit record: orders transactions
    commit_ts_us: int  # Unix epoch microseconds
    xid: int


@dataclass(slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # first LSN after the commit record: what a slot is confirmed up to
    commit_ts_us: int


@dataclass(slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(slots=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool  # part of the replica identity


@dataclass(slots=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: List[RelationColumn]


@dataclass(slots=True)
class TypeInfo:
    type_oid: int
    namespace: str
    name: str


@dataclass(slots=True)
class Insert:
    relation_id: int
    new_tuple: List[TupleValue]


@dataclass(slots=True)
class Update:
    relation_id: int
    old_kind: Optional[str]  # "K" (old key only), "O" (whole old row) or None (not sent)
    old_tuple: Optional[List[TupleValue]]
    new_tuple: List[TupleValue]


@dataclass(slots=True)
class Delete:
    relation_id: int
    old_kind: str  # "K" or "O"
    old_tuple: List[TupleValue]


@dataclass(slots=True)
class Truncate:
    relation_ids: List[int]
    cascade: bool
    restart_identity: bool


@dataclass(slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(slots=True)
class StreamStop:
    pass


@dataclass(slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(slots=True)
class StreamAbort:
    xid: int
    subxid: int


Message = Union[
    Begin, Commit, Origin, Relation, TypeInfo, Insert, Update, Delete, Truncate, LogicalMessage,
    StreamStart, StreamStop, StreamCommit, StreamAbort,
]


class _Reader:
    """Cursor over one message's bytes with the protocol's primitive readers."""

    __slots__ = ("buf", "pos", "tag")

    def __init__(self, buf: bytes, tag: str) -> None:
        self.buf = buf
        self.pos = 1
        self.tag = tag

    def _unpack(self, fmt: struct.Struct) -> tuple:
        try:
            values = fmt.unpack_from(self.buf, self.pos)
        except struct.error as e:
            raise DecodeError(
                f"pgoutput message '{self.tag}' is truncated at offset {self.pos}"
            ) from e
        self.pos += fmt.size
        return values

    def i8(self) -> int:
        return self._unpack(_I8)[0]

    def i16(self) -> int:
        return self._unpack(_I16)[0]

    def i32(self) -> int:
        return self._unpack(_I32)[0]

    def u32(self) -> int:
        return self._unpack(_U32)[0]

    def u64(self) -> int:
        return self._unpack(_U64)[0]

    def char(self) -> str:
        if self.pos >= len(self.buf):
            raise DecodeError(f"pgoutput message '{self.tag}' is truncated at offset {self.pos}")
        value = chr(self.buf[self.pos])
        self.pos += 1
        return value

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise DecodeError(
                f"pgoutput message '{self.tag}' has an unterminated string at offset {self.pos}"
            )
        try:
            value = self.buf[self.pos : end].decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(
                f"pgoutput message '{self.tag}' has a string that is not UTF-8 at offset {self.pos}"
            ) from e
        self.pos = end + 1
        return value

    def raw(self, length: int) -> bytes:
        if length < 0 or self.pos + length > len(self.buf):
            raise DecodeError(f"pgoutput message '{self.tag}' is truncated at offset {self.pos}")
        value = self.buf[self.pos : self.pos + length]
        self.pos += length
        return value

    def tuple_data(self) -> List[TupleValue]:
        values, self.pos = _read_tuple(self.buf, self.pos, self.tag)
        return values


def _read_tuple(buf: bytes, pos: int, tag: str) -> tuple:
    """TupleData at `pos`: Int16 column count, then per column a kind byte and maybe a value.

    Returns (values, position after the tuple). The hot path of the decoder: one pass per column,
    names bound locally, no per-column function calls beyond one unpack.
    """
    unpack_length = _I32.unpack_from
    try:
        (count,) = _I16.unpack_from(buf, pos)
        pos += 2
        values: List[TupleValue] = [None] * count
        partial = False
        for i in range(count):
            kind = buf[pos]
            if kind == 0x74 or kind == 0x62:  # 't' text, 'b' binary: Int32 length + bytes
                (length,) = unpack_length(buf, pos + 1)
                if length < 0:
                    raise DecodeError(
                        f"negative value length {length} in pgoutput message '{tag}' "
                        f"at offset {pos + 1}"
                    )
                start = pos + 5
                pos = start + length
                values[i] = buf[start:pos]
            elif kind == 0x6E:  # 'n' NULL
                pos += 1
            elif kind == 0x75:  # 'u' unchanged TOASTed value, not sent
                values[i] = UNCHANGED_TOAST
                partial = True
                pos += 1
            else:
                raise DecodeError(
                    f"unknown tuple value kind {chr(kind)!r} in pgoutput message "
                    f"'{tag}' at offset {pos}"
                )
    except (IndexError, struct.error) as e:
        raise DecodeError(f"pgoutput message '{tag}' is truncated at offset {pos}") from e
    if pos > len(buf):
        raise DecodeError(f"pgoutput message '{tag}' is truncated at offset {len(buf)}")
    return (PartialTuple(values) if partial else values), pos


def _begin(r: _Reader, streaming: bool) -> Begin:
    final_lsn, commit_ts, xid = r._unpack(_BEGIN)
    return Begin(final_lsn, commit_ts + PG_EPOCH_OFFSET_US, xid)


def _commit(r: _Reader, streaming: bool) -> Commit:
    flags, commit_lsn, end_lsn, commit_ts = r._unpack(_COMMIT)
    return Commit(flags, commit_lsn, end_lsn, commit_ts + PG_EPOCH_OFFSET_US)


def _origin(r: _Reader, streaming: bool) -> Origin:
    return Origin(r.u64(), r.cstring())


def _skip_xid(r: _Reader, streaming: bool) -> None:
    # Inside a streamed transaction, data messages carry the xid of the (sub)transaction first.
    if streaming:
        r.u32()


def _relation(r: _Reader, streaming: bool) -> Relation:
    _skip_xid(r, streaming)
    relation_id = r.u32()
    namespace = r.cstring()
    name = r.cstring()
    replica_identity = r.char()
    columns = []
    for _ in range(r.i16()):
        flags = r.i8()
        columns.append(RelationColumn(r.cstring(), r.u32(), r.i32(), bool(flags & 1)))
    return Relation(relation_id, namespace, name, replica_identity, columns)


def _type(r: _Reader, streaming: bool) -> TypeInfo:
    _skip_xid(r, streaming)
    return TypeInfo(r.u32(), r.cstring(), r.cstring())


def _expect(r: _Reader, allowed: str) -> str:
    kind = r.char()
    if kind not in allowed:
        raise DecodeError(
            f"unexpected tuple marker {kind!r} in pgoutput message '{r.tag}' at offset {r.pos - 1}"
        )
    return kind


def _insert(r: _Reader, streaming: bool) -> Insert:
    _skip_xid(r, streaming)
    relation_id = r.u32()
    _expect(r, "N")
    return Insert(relation_id, r.tuple_data())


def _update(r: _Reader, streaming: bool) -> Update:
    _skip_xid(r, streaming)
    relation_id = r.u32()
    kind = _expect(r, "KON")
    old_kind, old_tuple = None, None
    if kind != "N":
        old_kind, old_tuple = kind, r.tuple_data()
        _expect(r, "N")
    return Update(relation_id, old_kind, old_tuple, r.tuple_data())


def _delete(r: _Reader, streaming: bool) -> Delete:
    _skip_xid(r, streaming)
    relation_id = r.u32()
    kind = _expect(r, "KO")
    return Delete(relation_id, kind, r.tuple_data())


def _truncate(r: _Reader, streaming: bool) -> Truncate:
    _skip_xid(r, streaming)
    count = r.i32()
    options = r.i8()
    relation_ids = [r.u32() for _ in range(count)]
    return Truncate(relation_ids, bool(options & 1), bool(options & 2))


def _message(r: _Reader, streaming: bool) -> LogicalMessage:
    _skip_xid(r, streaming)
    flags = r.i8()
    lsn = r.u64()
    prefix = r.cstring()
    length = r.i32()
    return LogicalMessage(bool(flags & 1), lsn, prefix, r.raw(length))


def _stream_start(r: _Reader, streaming: bool) -> StreamStart:
    return StreamStart(r.u32(), r.i8() == 1)


def _stream_stop(r: _Reader, streaming: bool) -> StreamStop:
    return StreamStop()


def _stream_commit(r: _Reader, streaming: bool) -> StreamCommit:
    xid = r.u32()
    flags, commit_lsn, end_lsn, commit_ts = r._unpack(_COMMIT)
    return StreamCommit(xid, flags, commit_lsn, end_lsn, commit_ts + PG_EPOCH_OFFSET_US)


def _stream_abort(r: _Reader, streaming: bool) -> StreamAbort:
    return StreamAbort(r.u32(), r.u32())


_DECODERS: Dict[str, Callable[[_Reader, bool], Message]] = {
    "B": _begin,
    "C": _commit,
    "O": _origin,
    "R": _relation,
    "Y": _type,
    "I": _insert,
    "U": _update,
    "D": _delete,
    "T": _truncate,
    "M": _message,
    "S": _stream_start,
    "E": _stream_stop,
    "c": _stream_commit,
    "A": _stream_abort,
}

_INSERT_HEAD = struct.Struct("!IB")  # relation id, 'N'


def _fast_begin(buf: bytes) -> Begin:
    final_lsn, commit_ts, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(final_lsn, commit_ts + PG_EPOCH_OFFSET_US, xid)


def _fast_commit(buf: bytes) -> Commit:
    flags, commit_lsn, end_lsn, commit_ts = _COMMIT.unpack_from(buf, 1)
    return Commit(flags, commit_lsn, end_lsn, commit_ts + PG_EPOCH_OFFSET_US)


def _fast_insert(buf: bytes) -> Insert:
    relation_id, marker = _INSERT_HEAD.unpack_from(buf, 1)
    if marker != 0x4E:  # 'N'
        return _insert(_Reader(buf, "I"), False)  # the general path names the error
    values, _ = _read_tuple(buf, 6, "I")
    return Insert(relation_id, values)


# Hot messages decoded without a _Reader (outside streamed transactions).
_FAST_DECODERS = {0x42: _fast_begin, 0x43: _fast_commit, 0x49: _fast_insert}

# Protocol version 3 (two-phase commit) messages: never requested by this package.
_TWO_PHASE_TAGS = {"b": "Begin Prepare", "P": "Prepare", "K": "Commit Prepared",
                   "r": "Rollback Prepared", "p": "Stream Prepare"}


def decode_message(payload: bytes, in_stream: bool = False) -> Message:
    """Decodes one pgoutput message.

    Args:
        payload (bytes): The message as received in an XLogData frame.
        in_stream (bool): True between Stream Start and Stream Stop, where data messages carry an xid.

    Returns:
        Message: The typed message.

    Raises:
        DecodeError: The tag is unknown or the message is malformed; the text names tag and offset.
    """
    if not payload:
        raise DecodeError("empty pgoutput message")
    if not in_stream:
        fast = _FAST_DECODERS.get(payload[0])
        if fast is not None:
            try:
                return fast(payload)
            except struct.error as e:
                raise DecodeError(
                    f"pgoutput message '{chr(payload[0])}' is truncated") from e
    tag = chr(payload[0])
    decoder = _DECODERS.get(tag)
    if decoder is None:
        if tag in _TWO_PHASE_TAGS:
            raise DecodeError(
                f"pgoutput message '{tag}' ({_TWO_PHASE_TAGS[tag]}) was not requested: "
                "two-phase decoding is not supported"
            )
        raise DecodeError(f"unknown pgoutput message type {tag!r} (byte 0x{payload[0]:02x})")
    return decoder(_Reader(payload, tag), in_stream)


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' to an integer."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def int_to_lsn(value: int) -> str:
    """An integer to PostgreSQL's 'X/X' LSN notation."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"

