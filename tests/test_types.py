"""`types.py`: type resolution, text-output -> Arrow conversion and array literal parsing.

Mostly pure unit tests. The tests taking `source` read real text output and catalog rows from the
test server, and compare the conversion with what psycopg2 makes of the same values.
"""

import json
import math
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any, List, Optional

import psycopg2
import psycopg2.extensions
import pyarrow as pa
import pytest

from pg_replication.catalog import load_type_catalog
from pg_replication.types import (
    MAX_DECIMAL_PRECISION,
    TEXT_KIND,
    ColumnKind,
    PgTypeRow,
    parse_array,
    raw_values_to_arrow,
    resolve_kind,
    text_to_arrow,
)

# Built-in type OIDs (pg_type.dat); test_builtin_oids_match_the_server checks them.
OIDS = {
    "smallint": 21, "integer": 23, "bigint": 20, "oid": 26, "real": 700, "double precision": 701,
    "json": 114, "jsonb": 3802, "boolean": 16, "bytea": 17, "date": 1082, "timestamp": 1114,
    "timestamptz": 1184, "numeric": 1700, "time": 1083, "timetz": 1266, "interval": 1186,
    "money": 790, "uuid": 2950, "tsvector": 3614, "inet": 869, "cidr": 650, "macaddr": 829,
    "point": 600, "box": 603, "text": 25, "varchar": 1043, "bpchar": 1042,
    "smallint[]": 1005, "integer[]": 1007, "bigint[]": 1016, "oid[]": 1028, "real[]": 1021,
    "double precision[]": 1022, "boolean[]": 1000, "text[]": 1009, "numeric[]": 1231,
    "date[]": 1182,
}

BIGINT_HINT = {"data_type": "bigint"}
DOUBLE_HINT = {"data_type": "double"}

# (type, conversion, arrow type, hint) for every built-in the module docstring lists
BUILTIN_KINDS = [
    ("smallint", "int", pa.int64(), BIGINT_HINT),
    ("integer", "int", pa.int64(), BIGINT_HINT),
    ("bigint", "int", pa.int64(), BIGINT_HINT),
    ("oid", "int", pa.int64(), BIGINT_HINT),
    ("real", "float", pa.float64(), DOUBLE_HINT),
    ("double precision", "float", pa.float64(), DOUBLE_HINT),
    ("json", "json", pa.string(), {"data_type": "json"}),
    ("jsonb", "json", pa.string(), {"data_type": "json"}),
    ("boolean", "bool", pa.bool_(), {"data_type": "bool"}),
    ("bytea", "bytea", pa.binary(), {"data_type": "binary"}),
    ("date", "date", pa.date32(), {"data_type": "date"}),
    ("timestamp", "timestamp", pa.timestamp("us"),
     {"data_type": "timestamp", "timezone": False, "precision": 6}),
    ("timestamptz", "timestamptz", pa.timestamp("us", tz="UTC"),
     {"data_type": "timestamp", "timezone": True, "precision": 6}),
] + [
    (name, "text", pa.string(), {"data_type": "text"})
    for name in ["time", "timetz", "interval", "money", "uuid", "tsvector", "inet", "cidr",
                 "macaddr", "point", "box", "text", "varchar", "bpchar"]
]


def typmod(precision: int, scale: int) -> int:
    """numeric(p, s) atttypmod on PostgreSQL 15: scale as 11-bit two's complement."""
    return ((precision << 16) | (scale & 0x7FF)) + 4


def row(oid, name, type_type="b", base=0, base_mod=-1, element=0, category="U") -> PgTypeRow:
    return PgTypeRow(oid, name, type_type, base, base_mod, element, category)


def arrow(values: List[Optional[str]], kind: ColumnKind) -> list:
    return text_to_arrow(pa.array(values, pa.string()), kind).to_pylist()


def kind_of(type_name: str, modifier: int = -1, catalog=None) -> ColumnKind:
    return resolve_kind(OIDS[type_name], modifier, catalog or {})


UTC = timezone.utc


# ---- resolve_kind -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, conversion, arrow_type, hint", BUILTIN_KINDS,
                         ids=[k[0] for k in BUILTIN_KINDS])
def test_resolve_builtin_types(name, conversion, arrow_type, hint):
    kind = kind_of(name)
    assert kind.conversion == conversion
    assert kind.arrow_type == arrow_type
    assert kind.hint == hint
    assert kind.element is None
    assert kind.column_schema("c") == {"name": "c", "nullable": True, **hint}
    assert kind.column_schema("c", nullable=False)["nullable"] is False


def test_builtin_types_with_a_typmod_keep_their_kind():
    assert kind_of("varchar", 20 + 4) == TEXT_KIND
    assert kind_of("bpchar", 5 + 4) == TEXT_KIND
    assert kind_of("timestamp", 3) == kind_of("timestamp")  # timestamp(3)
    assert kind_of("timestamptz", 0) == kind_of("timestamptz")


def test_unknown_type_is_text():
    assert resolve_kind(987654, -1, {}) == TEXT_KIND
    assert resolve_kind(987654, -1, {987654: row(987654, "geometry")}) == TEXT_KIND


@pytest.mark.parametrize("precision, scale", [(10, 2), (1, 0), (38, 0), (38, 38), (18, 6),
                                              (3, 3)])
def test_numeric_with_precision_is_decimal(precision, scale):
    kind = kind_of("numeric", typmod(precision, scale))
    assert kind.conversion == "decimal"
    assert kind.arrow_type == pa.decimal128(precision, scale)
    assert kind.hint == {"data_type": "decimal", "precision": precision, "scale": scale}


@pytest.mark.parametrize("modifier", [
    -1,                                # numeric without precision
    typmod(MAX_DECIMAL_PRECISION + 1, 0),  # p > 38
    typmod(39, 2),
    typmod(1000, 0),
    typmod(5, -2),                     # negative scale (PostgreSQL 15)
    typmod(10, -1000),
    typmod(2, 5),                      # scale > precision (PostgreSQL 15)
], ids=["none", "39,0", "39,2", "1000,0", "5,-2", "10,-1000", "2,5"])
def test_other_numeric_is_text(modifier):
    assert kind_of("numeric", modifier) == TEXT_KIND


def test_numeric_typmods_from_the_server(source):
    with source.cursor() as cur:
        cur.execute("CREATE TABLE n (a numeric(5,-2), b numeric(2,5), c numeric(10,2), "
                    "d numeric(39,0), e numeric)")
        cur.execute("SELECT atttypmod FROM pg_attribute WHERE attrelid = 'n'::regclass "
                    "AND attnum > 0 ORDER BY attnum")
        mods = [r[0] for r in cur.fetchall()]
    assert mods == [typmod(5, -2), typmod(2, 5), typmod(10, 2), typmod(39, 0), -1]
    assert mods[0] == 329730
    kinds = [resolve_kind(1700, m, {}) for m in mods]
    assert kinds[0] == kinds[1] == kinds[3] == kinds[4] == TEXT_KIND
    assert kinds[2].arrow_type == pa.decimal128(10, 2)


# catalog rows as pg_type holds them: domains, an enum, arrays
NUMERIC_ROW = row(1700, "numeric", category="N")
CATALOG = {
    1700: NUMERIC_ROW,
    23: row(23, "int4", category="N"),
    701: row(701, "float8", category="N"),
    1007: row(1007, "_int4", element=23, category="A"),
    90001: row(90001, "price", "d", base=1700, base_mod=typmod(10, 2), category="N"),
    90002: row(90002, "price2", "d", base=90001, category="N"),         # domain over a domain
    90003: row(90003, "price3", "d", base=90002, category="N"),         # and once more
    90004: row(90004, "posint", "d", base=23, category="N"),
    90005: row(90005, "mood", "e", category="E"),
    90006: row(90006, "_mood", element=90005, category="A"),
    90007: row(90007, "mood_d", "d", base=90005, category="E"),
    90008: row(90008, "intlist", "d", base=1007, category="A"),        # domain over int[]
    90009: row(90009, "_posint", element=90004, category="A"),          # array of a domain
    90010: row(90010, "anynum", "d", base=1700, category="N"),          # numeric, no typmod
    90011: row(90011, "ratio", "d", base=701, category="N"),
    90012: row(90012, "_ratio", element=90011, category="A"),
    90013: row(90013, "big_price", "d", base=1700, base_mod=typmod(50, 2), category="N"),
}


def test_domains_take_their_base_type():
    assert resolve_kind(90004, -1, CATALOG) == kind_of("integer")
    assert resolve_kind(90011, -1, CATALOG) == kind_of("double precision")
    for oid in (90001, 90002, 90003):  # nested domains keep the innermost typmod
        kind = resolve_kind(oid, -1, CATALOG)
        assert kind.conversion == "decimal" and kind.arrow_type == pa.decimal128(10, 2)
    assert resolve_kind(90010, -1, CATALOG) == TEXT_KIND
    assert resolve_kind(90013, -1, CATALOG) == TEXT_KIND
    assert resolve_kind(90007, -1, CATALOG) == TEXT_KIND  # domain over an enum


def test_enums_are_text():
    assert resolve_kind(90005, -1, CATALOG) == TEXT_KIND


@pytest.mark.parametrize("type_name, element", [
    ("smallint[]", "int"), ("integer[]", "int"), ("bigint[]", "int"), ("oid[]", "int"),
    ("real[]", "float"), ("double precision[]", "float"), ("boolean[]", "bool"),
    ("text[]", "text"), ("numeric[]", "text"), ("date[]", "text"),
])
def test_builtin_arrays(type_name, element):
    oid = OIDS[type_name]
    element_oid = {"smallint[]": 21, "integer[]": 23, "bigint[]": 20, "oid[]": 26, "real[]": 700,
                   "double precision[]": 701, "boolean[]": 16, "text[]": 25, "numeric[]": 1700,
                   "date[]": 1082}[type_name]
    kind = resolve_kind(oid, -1, {oid: row(oid, "_x", element=element_oid, category="A")})
    assert kind.conversion == "array"
    assert kind.arrow_type == pa.string()
    assert kind.hint == {"data_type": "json"}
    assert kind.element == element


def test_arrays_of_domains_enums_and_domains_over_arrays():
    assert resolve_kind(90006, -1, CATALOG).element == "text"       # mood[]
    assert resolve_kind(90009, -1, CATALOG).element == "int"        # posint[]
    assert resolve_kind(90012, -1, CATALOG).element == "float"      # ratio[]
    intlist = resolve_kind(90008, -1, CATALOG)                      # domain over int[]
    assert (intlist.conversion, intlist.element) == ("array", "int")


def test_builtin_oids_match_the_server(source):
    with source.cursor() as cur:
        for name, oid in OIDS.items():
            cur.execute("SELECT %s::regtype::oid::int", (name,))
            assert cur.fetchone()[0] == oid, name


def test_resolve_with_the_real_catalog(source):
    with source.cursor() as cur:
        cur.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        cur.execute("CREATE DOMAIN price AS numeric(10,2)")
        cur.execute("CREATE DOMAIN price2 AS price CHECK (VALUE > 0)")
        cur.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
        cur.execute("CREATE DOMAIN intlist AS bigint[]")
        cur.execute("CREATE TABLE t (a price2, b mood, c mood[], d posint[], e intlist, "
                    "f float8[], g numeric(12,3)[], h posint)")
        cur.execute("SELECT atttypid, atttypmod FROM pg_attribute WHERE attrelid = 't'::regclass "
                    "AND attnum > 0 ORDER BY attnum")
        columns = cur.fetchall()
    catalog = load_type_catalog(source)
    kinds = [resolve_kind(oid, mod, catalog) for oid, mod in columns]
    assert kinds[0].arrow_type == pa.decimal128(10, 2)
    assert kinds[1] == TEXT_KIND
    assert [(k.conversion, k.element) for k in kinds[2:7]] == [
        ("array", "text"), ("array", "int"), ("array", "int"), ("array", "float"),
        ("array", "text")]
    assert kinds[7] == kind_of("integer")


# ---- text_to_arrow ------------------------------------------------------------------------------


def test_integers():
    assert arrow(["-9223372036854775808", "0", None, "9223372036854775807"],
                 kind_of("bigint")) == [-(2**63), 0, None, 2**63 - 1]
    assert arrow(["4294967295"], kind_of("oid")) == [4294967295]
    result = text_to_arrow(pa.array(["-32768", "32767"]), kind_of("smallint"))
    assert result.type == pa.int64() and result.to_pylist() == [-32768, 32767]


def test_floats_including_nan_and_infinities():
    result = arrow(["1.5", "-0", "1e-320", "3.4028235e+38", "NaN", "Infinity", "-Infinity", None],
                   kind_of("double precision"))
    assert result[:4] == [1.5, 0.0, 1e-320, 3.4028235e38]
    assert math.copysign(1, result[1]) == -1
    assert math.isnan(result[4])
    assert result[5:] == [math.inf, -math.inf, None]
    assert arrow(["NaN", "0.1"], kind_of("real"))[1] == 0.1


def test_decimals_with_nan_as_null():
    kind = kind_of("numeric", typmod(10, 2))
    result = text_to_arrow(pa.array(["1.50", "NaN", None, "-99999999.99", "0.00"]), kind)
    assert result.type == pa.decimal128(10, 2)
    assert result.to_pylist() == [Decimal("1.50"), None, None, Decimal("-99999999.99"),
                                  Decimal("0.00")]
    assert str(result[0].as_py()) == "1.50"
    assert arrow(["99999999999999999999999999999999999999", "NaN"],
                 kind_of("numeric", typmod(38, 0))) == [Decimal("9" * 38), None]
    assert arrow(["0.12345678901234567890123456789012345678"],
                 kind_of("numeric", typmod(38, 38))) == [
        Decimal("0.12345678901234567890123456789012345678")]
    assert arrow(["NaN", "NaN"], kind_of("numeric", typmod(5, 1))) == [None, None]


def test_unconstrained_numeric_stays_exact_text():
    values = ["1.234567890123456789012345678901234567890123", "NaN", "Infinity", "-Infinity",
              "12300"]
    assert arrow(values, kind_of("numeric")) == values


def test_booleans():
    result = text_to_arrow(pa.array(["t", "f", None]), kind_of("boolean"))
    assert result.type == pa.bool_()
    assert result.to_pylist() == [True, False, None]


def test_dates_with_infinities_bc_and_five_digit_years():
    result = text_to_arrow(pa.array(["2024-02-29", "infinity", "-infinity", "0044-03-15 BC",
                                     "0001-01-01 BC", "10000-01-01", "294276-12-31", None,
                                     "0001-01-01", "9999-12-31", "0099-06-30"]), kind_of("date"))
    assert result.type == pa.date32()
    assert result.to_pylist() == [
        date(2024, 2, 29), date(9999, 12, 31), date(1, 1, 1), date(1, 1, 1), date(1, 1, 1),
        date(9999, 12, 31), date(9999, 12, 31), None, date(1, 1, 1), date(9999, 12, 31),
        date(99, 6, 30)]


MAX_TS = datetime(9999, 12, 31, 23, 59, 59, 999999)
MIN_TS = datetime(1, 1, 1)


def test_timestamps_with_infinities_bc_and_five_digit_years():
    result = text_to_arrow(pa.array([
        "2024-02-29 23:59:59.999999", "2024-01-15 10:20:30", "2024-01-15 10:20:30.5",
        "infinity", "-infinity", "0044-03-15 10:00:00 BC", "10000-01-01 00:00:00",
        "294276-12-31 23:59:59.999999", None, "0099-12-31 12:00:00"]), kind_of("timestamp"))
    assert result.type == pa.timestamp("us")
    assert result.to_pylist() == [
        datetime(2024, 2, 29, 23, 59, 59, 999999), datetime(2024, 1, 15, 10, 20, 30),
        datetime(2024, 1, 15, 10, 20, 30, 500000), MAX_TS, MIN_TS, MIN_TS, MAX_TS, MAX_TS, None,
        datetime(99, 12, 31, 12)]


def test_timestamptz_offsets_infinities_bc_and_five_digit_years():
    result = text_to_arrow(pa.array([
        "2024-01-15 10:20:30+00", "2024-01-15 10:20:30.5+05:30", "2024-01-15 10:20:30-08",
        "2024-01-15 10:20:30.123456-03:30", "infinity", "-infinity",
        "0044-03-15 10:00:00+00 BC", "10000-01-01 00:00:00+00", "10000-01-01 05:30:00+05:30",
        None]), kind_of("timestamptz"))
    assert result.type == pa.timestamp("us", tz="UTC")
    assert [v and v.astimezone(UTC) for v in result.to_pylist()] == [
        datetime(2024, 1, 15, 10, 20, 30, tzinfo=UTC),
        datetime(2024, 1, 15, 4, 50, 30, 500000, tzinfo=UTC),
        datetime(2024, 1, 15, 18, 20, 30, tzinfo=UTC),
        datetime(2024, 1, 15, 13, 50, 30, 123456, tzinfo=UTC),
        MAX_TS.replace(tzinfo=UTC), MIN_TS.replace(tzinfo=UTC), MIN_TS.replace(tzinfo=UTC),
        MAX_TS.replace(tzinfo=UTC), MAX_TS.replace(tzinfo=UTC), None]


def test_bytea_hex():
    result = text_to_arrow(pa.array(["\\x00ff10", "\\x", None, "\\x616263"]), kind_of("bytea"))
    assert result.type == pa.binary()
    assert result.to_pylist() == [b"\x00\xff\x10", b"", None, b"abc"]


def test_text_and_json_pass_through():
    values = ["", "héllo", None, "a\tb\nc", "NULL"]
    assert arrow(values, TEXT_KIND) == values
    assert arrow(['{"a": [1, 2.5]}', None], kind_of("jsonb")) == ['{"a": [1, 2.5]}', None]


@pytest.mark.parametrize("name, conversion, arrow_type, hint", BUILTIN_KINDS,
                         ids=[k[0] for k in BUILTIN_KINDS])
def test_empty_and_all_null_columns(name, conversion, arrow_type, hint):
    kind = kind_of(name)
    empty = text_to_arrow(pa.array([], pa.string()), kind)
    assert empty.type == arrow_type and len(empty) == 0
    nulls = text_to_arrow(pa.array([None, None], pa.string()), kind)
    assert nulls.type == arrow_type and nulls.to_pylist() == [None, None]


def test_raw_pgoutput_values():
    assert raw_values_to_arrow([b"1", None, b"-2"], kind_of("integer")).to_pylist() == [1, None, -2]
    assert raw_values_to_arrow(["é".encode()], TEXT_KIND).to_pylist() == ["é"]
    assert raw_values_to_arrow([], kind_of("date")).type == pa.date32()


def _array_kind(element: str) -> ColumnKind:
    return ColumnKind("array", pa.string(), {"data_type": "json"}, element=element)


def test_arrays_to_json_lists():
    assert arrow(["{1,2,NULL}", "{}", None, "{{1,2},{3,4}}", "[0:1]={7,8}"],
                 _array_kind("int")) == ["[1,2,null]", "[]", None, "[[1,2],[3,4]]", "[7,8]"]
    assert arrow(["{1.5,-0.25,1e+300,NaN,Infinity,-Infinity,NULL}"], _array_kind("float")) == [
        "[1.5,-0.25,1e+300,null,null,null,null]"]
    assert arrow(["{t,f,NULL}"], _array_kind("bool")) == ["[true,false,null]"]
    assert arrow(['{"a b","c\\"d","NULL",NULL,héllo,"",1.50}'], _array_kind("text")) == [
        '["a b","c\\"d","NULL",null,"héllo","","1.50"]']
    assert json.loads(arrow(['{"x,y","{z}","back\\\\slash"}'], _array_kind("text"))[0]) == [
        "x,y", "{z}", "back\\slash"]


def test_empty_array_column():
    for element in ("int", "float", "bool", "text"):
        result = text_to_arrow(pa.array([], pa.string()), _array_kind(element))
        assert result.type == pa.string() and len(result) == 0
        assert arrow(["{}"], _array_kind(element)) == ["[]"]


# ---- parse_array --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, convert, expected", [
    ("{}", str, []),
    ("{1,2,NULL}", int, [1, 2, None]),
    ("{1,2,NULL}", str, ["1", "2", None]),
    ('{"a b","c\\"d","NULL",NULL}', str, ["a b", 'c"d', "NULL", None]),
    ("{{1,2},{3,4}}", int, [[1, 2], [3, 4]]),
    ("{{{1},{2}},{{3},{4}}}", int, [[[1], [2]], [[3], [4]]]),
    ("{{NULL,2},{3,NULL}}", int, [[None, 2], [3, None]]),
    ("[0:1]={7,8}", int, [7, 8]),
    ("[-2:-1]={7,8}", int, [7, 8]),
    ("[1:2][0:1]={{1,2},{3,4}}", int, [[1, 2], [3, 4]]),
    ('{"a,b","{c}","d}","e\\\\f","g\\\\\\"h",""}', str,
     ["a,b", "{c}", "d}", "e\\f", 'g\\"h', ""]),
    ('{" lead","trail ","tab\there"}', str, [" lead", "trail ", "tab\there"]),
    ('{"(1,\\"x y\\")","(2,)"}', str, ['(1,"x y")', "(2,)"]),
    ("{NULL}", str, [None]),
    ('{""}', str, [""]),
    ("{héllo,wörld}", str, ["héllo", "wörld"]),
    ("{t,f}", lambda t: t == "t", [True, False]),
])
def test_parse_array(text, convert, expected):
    assert parse_array(text, convert) == expected


@pytest.mark.parametrize("text", ["1,2", "{1,2", "{\"a}", "", "{{1,2}"])
def test_parse_array_rejects_malformed_literals(text):
    with pytest.raises((ValueError, IndexError)):
        parse_array(text)


# ---- against the real server --------------------------------------------------------------------

# Values per type, as SQL literals (None is NULL). Each goes into a column of that type; its text
# output (read raw, as COPY and pgoutput send it) is converted and compared with psycopg2's value.
ROUND_TRIP = [
    ("smallint", ["-32768", "0", "32767", None]),
    ("integer", ["-2147483648", "42", "2147483647"]),
    ("bigint", ["-9223372036854775808", "9223372036854775807"]),
    ("oid", ["0", "4294967295"]),
    ("real", ["1.5", "-0", "0.1", "3.4028235e38", "1e-45", "NaN", "Infinity", "-Infinity"]),
    ("double precision", ["0.1", "1e308", "-2.2250738585072014e-308", "5e-324", "1234567.891",
                          "NaN", "Infinity", "-Infinity", None]),
    ("numeric(10,2)", ["1.5", "-99999999.99", "0", "NaN", None]),
    ("numeric(38,0)", ["99999999999999999999999999999999999999", "-1"]),
    ("numeric(38,38)", ["0.12345678901234567890123456789012345678"]),
    ("numeric(3,3)", ["0.5", "-0.999"]),
    ("numeric", ["1.234567890123456789012345678901234567890123", "NaN", "Infinity", "-1e-20"]),
    ("numeric(5,-2)", ["12345", "-99"]),
    ("numeric(40,2)", ["12345678901234567890123456789012345678.12"]),
    ("boolean", ["true", "false", None]),
    ("date", ["2024-02-29", "1970-01-01", "0001-01-01", "9999-12-31", "0099-06-30", "infinity",
              "-infinity"]),
    ("timestamp", ["2024-02-29 23:59:59.999999", "1970-01-01 00:00:00", "0099-12-31 12:00:00",
                   "9999-12-31 23:59:59.999999", "infinity", "-infinity"]),
    ("timestamp(0)", ["2024-02-29 23:59:59.6"]),
    ("timestamptz", ["2024-06-01 12:00:00+00", "2024-06-01 12:00:00.5-08", "2000-01-01 00:00:00",
                     "1999-12-31 23:59:59.999999+05:30", "infinity", "-infinity"]),
    ("bytea", ["\\x", "\\x00ff0a", "abc"]),
    ("json", ['{"b": [1, 2.5, null, "x"], "a": {}}', "[]", '"s"', "null"]),
    ("jsonb", ['{"b": [1, 2.5, null, "x"], "a": {}}', '"é"']),
    ("integer[]", ["{1,NULL,3}", "{{1,2},{3,4}}", "{}", "[0:1]={7,8}", None]),
    ("bigint[]", ["{-9223372036854775808,9223372036854775807}"]),
    ("double precision[]", ["{1.5,-0.25,1e300,NaN,Infinity}"]),
    ("real[]", ["{0.1,1e-45}"]),
    ("boolean[]", ["{t,f,NULL}", "{{t},{f}}"]),
    ("text[]", ['{"a b","c\\"d","NULL",NULL,"","x,y","{z}","back\\\\slash",héllo}',
                "{{a,b},{c,d}}"]),
    ("varchar(5)[]", ["{ab,NULL}"]),
    ("numeric[]", ["{1.50,NaN,-3}"]),
    ("numeric(5,2)", ["1"]),
    ("text", ["", "héllo", "a\tb\nc", "NULL"]),
    ("char(5)", ["ab"]),
    ("varchar(20)", ["xyz"]),
    ("uuid", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
    ("inet", ["192.168.0.1/24", "::1"]),
    ("time", ["12:34:56.789", "00:00:00"]),
    ("mood", ["happy"]),
    ("price2", ["12.5", "NaN"], "numeric(10,2)"),
    ("posint", ["7"], "int"),
    ("posint[]", ["{1,2}"], "int[]"),
]

SESSION = ["SET DateStyle = ISO", "SET IntervalStyle = postgres", "SET bytea_output = hex",
           "SET extra_float_digits = 1"]


def _raw_text(conn, query: str) -> List[Optional[str]]:
    """The column's text output, untouched by psycopg2's typecasters."""
    with conn.cursor() as cur:
        cur.execute(query)
        # the result's type OID (for a domain the server reports its base type)
        type_oid = cur.description[0].type_code
    raw = psycopg2.extensions.new_type((type_oid,), "RAW_TEXT", lambda value, cur: value)
    with conn.cursor() as cur:
        psycopg2.extensions.register_type(raw, cur)
        cur.execute(query)
        return [r[0] for r in cur.fetchall()]


def _want(value: Any, kind: ColumnKind) -> Any:
    """What the destination should hold for psycopg2's value, per the README's type table."""
    if value is None:
        return None
    if kind.conversion == "decimal":
        return None if value.is_nan() else value  # NaN -> NULL
    if kind.conversion == "bytea":
        return bytes(value)
    if kind.conversion == "timestamptz":
        return value.astimezone(UTC)
    if kind.conversion == "array":
        return _want_elements(value, kind.element)
    return value


def _want_elements(value: Any, element: str) -> Any:
    if isinstance(value, list):
        return [_want_elements(v, element) for v in value]
    if value is None:
        return None
    if element == "float":  # JSON has no NaN / Infinity
        return None if math.isnan(value) or math.isinf(value) else value
    if element == "text":  # numeric elements stay exact strings
        return str(value)
    return value


def _have(converted: Any, kind: ColumnKind, want: Any) -> Any:
    if converted is None:
        return None
    if kind.conversion in ("json", "array"):
        return json.loads(converted)
    if kind.conversion == "timestamptz":
        return converted.astimezone(UTC)
    if kind.conversion == "text" and isinstance(want, Decimal):
        return Decimal(converted)
    if kind.conversion == "text" and isinstance(want, time):
        return time.fromisoformat(converted)
    return converted


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return str(a) == str(b)  # same digits and scale (NaN included)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("time_zone", ["UTC", "Asia/Kolkata"])
def test_text_output_round_trip_against_psycopg2(source, time_zone):
    with source.cursor() as cur:
        for statement in SESSION + [f"SET TimeZone = '{time_zone}'"]:
            cur.execute(statement)
        cur.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        cur.execute("CREATE DOMAIN price AS numeric(10,2)")
        cur.execute("CREATE DOMAIN price2 AS price")
        cur.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    catalog = load_type_catalog(source)

    problems = []
    checked = 0
    for number, (type_sql, literals, *rest) in enumerate(ROUND_TRIP):
        read_as = rest[0] if rest else None
        table = f"rt{number}"
        with source.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (i int, v {type_sql})")
            for i, literal in enumerate(literals):
                cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, literal))
            cur.execute("SELECT atttypid, atttypmod FROM pg_attribute "
                        "WHERE attrelid = %s::regclass AND attname = 'v'", (table,))
            type_oid, type_mod = cur.fetchone()
            # psycopg2 does not know domain OIDs (it returns their text): read them as the base
            cur.execute(f"SELECT v::{read_as or type_sql} FROM {table} ORDER BY i")
            py_values = [r[0] for r in cur.fetchall()]
        kind = resolve_kind(type_oid, type_mod, catalog)
        texts = _raw_text(source, f"SELECT v FROM {table} ORDER BY i")
        converted = text_to_arrow(pa.array(texts, pa.string()), kind)
        assert converted.type == kind.arrow_type
        for literal, text, got, py_value in zip(literals, texts, converted.to_pylist(), py_values):
            want = _want(py_value, kind)
            have = _have(got, kind, want)
            checked += 1
            if not _same(have, want):
                problems.append(f"{type_sql} {literal!r}: output {text!r} -> {have!r}, "
                                f"psycopg2 {py_value!r} -> expected {want!r}")
    assert not problems, "\n".join(problems)
    assert checked > 100


@pytest.mark.parametrize("type_sql, literal, expected", [
    ("date", "0044-03-15 BC", date(1, 1, 1)),
    ("date", "10000-01-01", date(9999, 12, 31)),
    ("timestamp", "0044-03-15 10:00:00 BC", MIN_TS),
    ("timestamp", "12345-06-07 08:09:10", MAX_TS),
    ("timestamptz", "0044-03-15 10:00:00+00 BC", MIN_TS.replace(tzinfo=UTC)),
    ("timestamptz", "10000-01-01 00:00:00+00", MAX_TS.replace(tzinfo=UTC)),
])
def test_server_output_outside_python_range_is_clamped(source, type_sql, literal, expected):
    """psycopg2 cannot represent these values ("year is out of range"); the clamp must apply."""
    with source.cursor() as cur:
        cur.execute("SET DateStyle = ISO")
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute(f"SELECT %s::{type_sql}::text", (literal,))
        text = cur.fetchone()[0]
    assert text.endswith(" BC") or text[:5].isdigit()
    assert arrow([text], kind_of(type_sql)) == [expected]


# ---- regressions found by these tests ----------------------------------------------------------------


def test_box_array_uses_its_semicolon_delimiter(source):
    catalog = load_type_catalog(source)
    kind = resolve_kind(1020, -1, catalog)  # box[]
    assert (kind.conversion, kind.element) == ("array", "text")
    with source.cursor() as cur:
        cur.execute("SELECT ARRAY['(1,1),(0,0)'::box, '(2,2),(1,1)'::box]::text")
        text = cur.fetchone()[0]
    assert text == "{(1,1),(0,0);(2,2),(1,1)}"
    assert json.loads(arrow([text], kind)[0]) == ["(1,1),(0,0)", "(2,2),(1,1)"]


def test_int2vector_column_converts(source):
    with source.cursor() as cur:
        cur.execute("CREATE TABLE v (a int2vector, b oidvector)")
        cur.execute("INSERT INTO v VALUES ('1 2', '23 25')")
        cur.execute("SELECT a::text, b::text FROM v")
        texts = cur.fetchone()
    catalog = load_type_catalog(source)
    for oid, text in zip((22, 30), texts):
        converted = arrow([text], resolve_kind(oid, -1, catalog))[0]
        assert converted in (text, json.dumps([int(x) for x in text.split()],
                                              separators=(",", ":")))
