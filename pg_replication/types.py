"""PostgreSQL types to dlt column hints and Arrow arrays. Pure: no I/O, no database access.

Both paths into the destination meet here: the snapshot reads each column as PostgreSQL's text
output (COPY ... CSV) and CDC receives the same text output from pgoutput, so one function,
`text_to_arrow`, converts both. The same source value therefore lands with the same type and value
whichever path carried it.

Documented choices (README "Types"):
- smallint, integer, bigint: bigint (so widening a column later changes nothing downstream).
- `time`, `timetz`, `interval`, `money`, `uuid`, enums, `tsvector`, network and geometric types: text.
- `numeric(p, s)` with p <= 38 and 0 <= s <= p: decimal(p, s), with `NaN` as NULL. Any other
  `numeric` (no precision, p > 38, negative scale): text, so no digit is ever lost.
- Arrays: JSON lists (nested for several dimensions). Integer and float elements are JSON numbers,
  booleans JSON booleans, everything else (numeric included, to stay exact) JSON strings.
- `infinity` / `-infinity` dates and timestamps, years after 9999 and BC years are clamped to
  9999-12-31 23:59:59.999999 and 0001-01-01 00:00:00, the range every destination (Databricks
  included) can store. In a key column such a value (or a numeric NaN, which becomes NULL) is
  refused instead (`refuse_inexact_keys`): it would land on another key.
- Domains take their base type.
"""

import json
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from .exceptions import CopyMissingError, snapshot_command


class PgTypeRow(NamedTuple):
    """The pg_type fields type mapping needs."""

    oid: int
    name: str
    type_type: str  # b(ase), d(omain), e(num), c(omposite), r(ange), m(ultirange), p(seudo)
    base_type_oid: int  # domains: the type underneath
    base_type_modifier: int  # domains: the typmod underneath
    element_oid: int  # arrays: the element type
    category: str  # A for arrays
    delimiter: str = ","  # between array elements (box uses ';')


# Built-in type OIDs (pg_type.dat). Everything else resolves through the catalog.
BOOL, BYTEA, INT8, INT2, INT4, OID, FLOAT4, FLOAT8 = 16, 17, 20, 21, 23, 26, 700, 701
JSON, JSONB, NUMERIC, DATE, TIMESTAMP, TIMESTAMPTZ = 114, 3802, 1700, 1082, 1114, 1184
# In the array category, but printed space-separated ('1 2'), not as array literals.
INT2VECTOR, OIDVECTOR = 22, 30

MAX_DECIMAL_PRECISION = 38  # Databricks and parquet decimal128


@dataclass(frozen=True)
class ColumnKind:
    """How one column travels: its conversion and its destination type."""

    conversion: str  # one of _CONVERTERS
    arrow_type: pa.DataType
    hint: Dict[str, Any]  # dlt column hint without name/nullable
    element: Optional[str] = None  # arrays: conversion of the elements
    delimiter: str = ","  # arrays: between elements

    def column_schema(self, name: str, nullable: bool = True) -> Dict[str, Any]:
        return {"name": name, "nullable": nullable, **self.hint}


TEXT_KIND = ColumnKind("text", pa.string(), {"data_type": "text"})
# Every integer lands as bigint: the most common type change, int -> bigint, then needs nothing.
_INTEGER = ColumnKind("int", pa.int64(), {"data_type": "bigint"})

_BASE_KINDS: Dict[int, ColumnKind] = {
    BOOL: ColumnKind("bool", pa.bool_(), {"data_type": "bool"}),
    BYTEA: ColumnKind("bytea", pa.binary(), {"data_type": "binary"}),
    INT2: _INTEGER,
    INT4: _INTEGER,
    INT8: _INTEGER,
    OID: _INTEGER,
    FLOAT4: ColumnKind("float", pa.float64(), {"data_type": "double"}),
    FLOAT8: ColumnKind("float", pa.float64(), {"data_type": "double"}),
    JSON: ColumnKind("json", pa.string(), {"data_type": "json"}),
    JSONB: ColumnKind("json", pa.string(), {"data_type": "json"}),
    DATE: ColumnKind("date", pa.date32(), {"data_type": "date"}),
    TIMESTAMP: ColumnKind(
        "timestamp", pa.timestamp("us"), {"data_type": "timestamp", "timezone": False, "precision": 6}
    ),
    TIMESTAMPTZ: ColumnKind(
        "timestamptz",
        pa.timestamp("us", tz="UTC"),
        {"data_type": "timestamp", "timezone": True, "precision": 6},
    ),
}

_ELEMENT_CONVERSIONS = {INT2: "int", INT4: "int", INT8: "int", OID: "int", FLOAT4: "float",
                        FLOAT8: "float", BOOL: "bool"}


def _numeric_kind(type_modifier: int) -> ColumnKind:
    if type_modifier < 4:
        return TEXT_KIND
    precision = ((type_modifier - 4) >> 16) & 0xFFFF
    scale = (type_modifier - 4) & 0xFFFF
    if scale > 0x3FF:  # PostgreSQL 15 stores negative scales as 11-bit two's complement
        return TEXT_KIND
    if not 0 < precision <= MAX_DECIMAL_PRECISION or scale > precision:
        return TEXT_KIND
    return ColumnKind(
        "decimal",
        pa.decimal128(precision, scale),
        {"data_type": "decimal", "precision": precision, "scale": scale},
    )


def resolve_kind(type_oid: int, type_modifier: int, catalog: Mapping[int, PgTypeRow]) -> ColumnKind:
    """Chooses the conversion and destination type of a column.

    Args:
        type_oid (int): `atttypid` / the Relation message's type OID.
        type_modifier (int): `atttypmod` / the Relation message's type modifier (-1 for none).
        catalog (Mapping[int, PgTypeRow]): pg_type rows by OID, for domains and arrays.

    Returns:
        ColumnKind: How the column converts and lands. Unknown types become text.
    """
    seen = 0
    row = catalog.get(type_oid)
    while row is not None and row.type_type == "d" and seen < 16:  # domains over domains
        type_oid, type_modifier = row.base_type_oid, row.base_type_modifier
        row = catalog.get(type_oid)
        seen += 1
    if type_oid == NUMERIC:
        return _numeric_kind(type_modifier)
    if type_oid in _BASE_KINDS:
        return _BASE_KINDS[type_oid]
    if row is not None and row.category == "A" and row.element_oid and type_oid not in (
            INT2VECTOR, OIDVECTOR):
        element_row = catalog.get(row.element_oid)
        return ColumnKind(
            "array", pa.string(), {"data_type": "json"},
            element=_ELEMENT_CONVERSIONS.get(base_oid(row.element_oid, catalog), "text"),
            delimiter=element_row.delimiter if element_row is not None else ",",
        )
    return TEXT_KIND


def base_oid(type_oid: int, catalog: Mapping[int, PgTypeRow]) -> int:
    row = catalog.get(type_oid)
    while row is not None and row.type_type == "d":
        type_oid = row.base_type_oid
        row = catalog.get(type_oid)
    return type_oid


# ---- text to Arrow --------------------------------------------------------------------------

MAX_DATE, MIN_DATE = "9999-12-31", "0001-01-01"
MAX_TIMESTAMP, MIN_TIMESTAMP = "9999-12-31 23:59:59.999999", "0001-01-01 00:00:00"


def _clamped(values: pa.Array) -> Tuple[pa.Array, pa.Array]:
    """Masks of the date or timestamp texts clamped to the upper and to the lower bound."""
    is_max = pc.or_(pc.equal(values, "infinity"), pc.match_substring_regex(values, r"^\d{5,}-"))
    return is_max, pc.or_(pc.equal(values, "-infinity"), pc.ends_with(values, " BC"))


def _clamp_datetime_text(values: pa.Array, max_text: str, min_text: str) -> pa.Array:
    """Replaces infinities, BC years and years past 9999 by the clamped bounds (see module doc)."""
    is_max, is_min = _clamped(values)
    if not (pc.any(is_max).as_py() or pc.any(is_min).as_py()):
        return values
    values = pc.if_else(is_max, pa.scalar(max_text), values)
    return pc.if_else(is_min, pa.scalar(min_text), values)


def _to_date(values: pa.Array, kind: ColumnKind) -> pa.Array:
    return _clamp_datetime_text(values, MAX_DATE, MIN_DATE).cast(kind.arrow_type)


def _to_timestamp(values: pa.Array, kind: ColumnKind) -> pa.Array:
    return _clamp_datetime_text(values, MAX_TIMESTAMP, MIN_TIMESTAMP).cast(kind.arrow_type)


def _to_timestamptz(values: pa.Array, kind: ColumnKind) -> pa.Array:
    clamped = _clamp_datetime_text(values, MAX_TIMESTAMP + "+00", MIN_TIMESTAMP + "+00")
    # A BC value carries its offset before " BC": the clamp above already replaced it.
    return clamped.cast(kind.arrow_type)


def _to_decimal(values: pa.Array, kind: ColumnKind) -> pa.Array:
    values = pc.if_else(pc.equal(values, "NaN"), pa.scalar(None, pa.string()), values)
    return values.cast(kind.arrow_type)


def _to_bool(values: pa.Array, kind: ColumnKind) -> pa.Array:
    return pc.equal(values, "t")


def _to_bytes(values: pa.Array, kind: ColumnKind) -> pa.Array:
    # bytea_output = hex: '\x' followed by two hex digits a byte.
    return pa.array(
        [None if v is None else bytes.fromhex(v[2:]) for v in values.to_pylist()], pa.binary()
    )


def _to_json_list(values: pa.Array, kind: ColumnKind) -> pa.Array:
    convert = _ELEMENT_PARSERS[kind.element or "text"]
    return pa.array(
        [
            None if v is None else json.dumps(parse_array(v, convert, kind.delimiter),
                                               ensure_ascii=False, separators=(",", ":"))
            for v in values.to_pylist()
        ],
        pa.string(),
    )


def _cast(values: pa.Array, kind: ColumnKind) -> pa.Array:
    return values.cast(kind.arrow_type)


def _unchanged(values: pa.Array, kind: ColumnKind) -> pa.Array:
    return values


_CONVERTERS = {
    "text": _unchanged,
    "json": _unchanged,
    "int": _cast,
    "float": _cast,
    "decimal": _to_decimal,
    "bool": _to_bool,
    "date": _to_date,
    "timestamp": _to_timestamp,
    "timestamptz": _to_timestamptz,
    "bytea": _to_bytes,
    "array": _to_json_list,
}


def inexact_key_value(values: pa.Array, kind: ColumnKind) -> Optional[str]:
    """The first value (PostgreSQL text) of a key column that the destination cannot hold apart
    from other keys: numeric NaN becomes NULL, and clamped dates and timestamps (infinities, BC
    years, years past 9999) land on one bound. Two such keys would be merged into one row."""
    if kind.conversion == "decimal":
        inexact = pc.equal(values, "NaN")
    elif kind.conversion in ("date", "timestamp", "timestamptz"):
        inexact = pc.or_(*_clamped(values))
    else:
        return None
    found = values.filter(pc.fill_null(inexact, False))
    return found[0].as_py() if len(found) else None


def refuse_inexact_keys(table: str, key_columns: Iterable[Tuple[str, pa.Array, ColumnKind]]
                        ) -> None:
    """Raises CopyMissingError when a key column (name, text values, kind) holds a value the
    destination cannot tell apart from another key (inexact_key_value)."""
    for name, values, kind in key_columns:
        value = inexact_key_value(values, kind)
        if value is not None:
            raise CopyMissingError(
                f"table {table}: key column {name} holds {value!r}, which the destination cannot "
                "tell apart from other keys (numeric NaN becomes NULL; dates and timestamps are "
                "clamped to 0001-01-01 .. 9999-12-31), so rows would be merged: change that row in "
                f"the source (or leave the table out), then run {snapshot_command([table])}")


def text_to_arrow(values: pa.Array, kind: ColumnKind) -> pa.Array:
    """Converts a column of PostgreSQL text output (a string array) to its destination Arrow type."""
    if len(values) == 0:
        return pa.array([], kind.arrow_type)
    if values.null_count == len(values):
        return pa.nulls(len(values), kind.arrow_type)
    return _CONVERTERS[kind.conversion](values, kind)


def raw_values_to_arrow(values: Sequence[Optional[bytes]], kind: ColumnKind) -> pa.Array:
    """Converts pgoutput text values (bytes, or None for NULL) of one column."""
    return text_to_arrow(pa.array(values, pa.string()), kind)


# ---- array literals -------------------------------------------------------------------------


def _float_element(text: str) -> Optional[float]:
    value = float(text)
    return value if value == value and value not in (float("inf"), float("-inf")) else None


_ELEMENT_PARSERS = {
    "int": int,
    "float": _float_element,
    "bool": lambda text: text == "t",
    "text": str,
}


def parse_array(text: str, convert=str, delimiter: str = ",") -> List[Any]:
    """Parses PostgreSQL's array output (`{1,2}`, `{{"a b",NULL}}`, `[0:1]={x,y}`) to nested lists.

    Args:
        text (str): The array's text output.
        convert: Applied to each non-NULL element's text.
        delimiter (str): Between elements: the element type's typdelim (',' but for box, ';').

    Returns:
        List[Any]: The elements, nested per dimension; NULL elements are None.
    """
    if text.startswith("["):  # explicit lower bounds: "[0:2]={...}"
        text = text[text.index("=") + 1 :]
    values, pos = _parse_array_level(text, 0, convert, delimiter)
    return values


def _parse_array_level(text: str, pos: int, convert, delimiter: str) -> tuple:
    if text[pos] != "{":
        raise ValueError(f"array literal expected '{{' at {pos}: {text!r}")
    pos += 1
    items: List[Any] = []
    if text[pos] == "}":
        return items, pos + 1
    while True:
        char = text[pos]
        if char == "{":
            item, pos = _parse_array_level(text, pos, convert, delimiter)
            items.append(item)
        elif char == '"':
            pos += 1
            chunk = []
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                chunk.append(text[pos])
                pos += 1
            pos += 1
            items.append(convert("".join(chunk)))
        else:
            end = pos
            while text[end] != delimiter and text[end] != "}":
                end += 1
            token = text[pos:end]
            items.append(None if token == "NULL" else convert(token))
            pos = end
        if text[pos] == delimiter:
            pos += 1
            continue
        if text[pos] == "}":
            return items, pos + 1
        raise ValueError(f"unexpected {text[pos]!r} at {pos} in array literal {text!r}")
