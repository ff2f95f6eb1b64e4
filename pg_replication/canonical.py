"""One text per value, computed the same in PostgreSQL, DuckDB and Databricks SQL: what
`verify --data` hashes on both sides, so that a row compares equal exactly when the destination
holds what the pipeline should have written for it (types.py). Pure: builds SQL, runs nothing.

A value's canonical text, by how its column travels (`ColumnKind.conversion`):

| conversion | canonical text | e.g. |
|---|---|---|
| int, decimal, bool | the destination's own text of the number or boolean | `42`, `3.50`, `true` |
| text, json | the text PostgreSQL outputs (COPY and pgoutput send it) | `ab   ` (char(5)) |
| array | the JSON list types.py writes | `[1,null]`, `["a","b"]` |
| float | 15 significant digits, `NaN`, `Infinity`, `-Infinity`; zero is `0` | `1.10000000000000e+00` |
| date | ISO date, clamped to 0001-01-01..9999-12-31 like types.py | `2024-01-31` |
| timestamp(tz) | microseconds since 1970-01-01 (UTC for timestamptz), clamped | `1706659200000000` |
| bytea | lower-case hex | `deadbeef` |

Floats compare to 15 significant digits: the digits every engine prints the same (Java, which
Databricks' `format_string` uses, rounds its shortest text, C rounds the exact value; they can
differ only in the 17th). Arrays of floats have no such text on both sides: their columns are not
compared, and the report names them (`comparable`).

A row's text is its columns' texts in order, joined by `,`: a number, date or boolean as it is
(NULL as nothing), any other text as `<length>:<text>` (NULL as `:`), so no two rows share one.
Its md5 gives the row hash; 56 bits of it become an integer the sides sum per chunk (`hash_int`,
`sum_ints`): in a 128-bit sum on PostgreSQL and DuckDB, a decimal(38) one on Databricks.
"""

from typing import List, Optional, Sequence

from .types import BYTEA, FLOAT4, ColumnKind

# PostgreSQL types whose plain cast to text is their output (what COPY and pgoutput send); any
# other type of the "text" conversion goes through format('%s'), which calls the output function
# (a cast would drop char(n)'s padding and print inet's /32).
TEXT, VARCHAR = 25, 1043

NULL_PART = "'-'"
EMPTY = "''"
MAX_ARGUMENTS = 90
# Conversions whose canonical text is never empty and never holds a `,` (Dialect.row_text).
PLAIN = ("int", "decimal", "float", "date", "timestamp", "timestamptz", "bool")
HEX_DIGITS = 14  # 56 bits: a positive bigint
SHOWN_CHARACTERS = 60  # of a value in a report


class Dialect:
    """The SQL of one engine for the canonical texts and the hashes."""

    name = ""

    def value_text(self, column: str, kind: ColumnKind, type_oid: int) -> Optional[str]:
        """The canonical text of quoted `column`, or None when this kind has none."""
        raise NotImplementedError

    def md5(self, text: str) -> str:
        return f"md5({text})"

    def hash_int(self, hex_text: str) -> str:
        """The first `HEX_DIGITS` hex digits of `hex_text` as an integer."""
        raise NotImplementedError

    def sum_ints(self, values: str) -> str:
        return f"sum({values})"

    def as_text(self, value: str) -> str:
        """A cast to text."""
        raise NotImplementedError

    def hex_of(self, integer: str) -> str:
        """A non-negative integer in lower-case hex digits."""
        raise NotImplementedError

    def key_range(self, column: str, low: int, high: int, digits: int) -> str:
        """An integer key's place in key order: the hex digits of its offset from `low`, for
        keys in low..high; other keys (only the destination, or rows newer than the bounds,
        can hold them) get `~` and their decimal text, a chunk of their own."""
        offset = self.hex_of(f"{self.as_bigint(column)} - ({low})")
        outside = self.concat(["'~'", self.as_text(column)])
        return (f"CASE WHEN {column} BETWEEN {low} AND {high} THEN lpad({offset}, {digits}, '0') "
                f"ELSE {outside} END")

    def as_bigint(self, column: str) -> str:
        return f"CAST({column} AS BIGINT)"

    def length_text(self, text: str) -> str:
        return self.as_text(f"length({text})")

    def display(self, column: str) -> str:
        """A column's value as text for the report (not compared): its first SHOWN_CHARACTERS,
        and one more to tell that it goes on."""
        return f"left({self.as_text(column)}, {SHOWN_CHARACTERS + 1})"

    def part(self, text: str) -> str:
        """One column's text, alone (`columns_of`)."""
        return f"coalesce({self.length_text(text)} || ':' || {text}, {NULL_PART})"

    def concat(self, pieces: Sequence[str]) -> str:
        """The pieces joined, a NULL one as empty text; nested in calls of at most
        `MAX_ARGUMENTS` (PostgreSQL takes 100 arguments a call)."""
        if len(pieces) > MAX_ARGUMENTS:
            pieces = [self.concat(pieces[i:i + MAX_ARGUMENTS])
                      for i in range(0, len(pieces), MAX_ARGUMENTS)]
            return self.concat(pieces)
        return f"concat({', '.join(pieces)})"

    def length(self, text: str) -> str:
        return f"length({text})"

    def row_text(self, texts: Sequence[str], plain: Sequence[bool]) -> str:
        """One text for a row (or a key) from its columns' canonical texts, in one concat call
        (PostgreSQL spends more on calling `||` thirty times than on the md5 of the result).

        A `plain` text (a number, a date, a boolean) is never empty and never holds a `,`: it
        goes as it is, NULL as empty. Any other goes as `<length>:<text>`, NULL as `:`."""
        pieces: List[str] = []
        for text, is_plain in zip(texts, plain):
            if pieces:
                pieces.append("','")
            pieces += [text] if is_plain else [self.length(text), "':'", text]
        return self.concat(pieces) if pieces else "''"


class PostgresDialect(Dialect):
    name = "postgres"

    def __init__(self, utf8: bool = True, server_version: int = 140000) -> None:
        self.utf8 = utf8  # md5 of the UTF-8 bytes, as the destinations compute it
        self.server_version = server_version

    def value_text(self, column: str, kind: ColumnKind, type_oid: int) -> Optional[str]:
        c, conversion = column, kind.conversion
        if conversion in ("int", "json"):
            return f"{c}::text"
        if conversion == "bool":
            return f"CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END"
        if conversion == "text":
            if type_oid in (TEXT, VARCHAR):
                return f"{c}::text"
            # num_nulls: `IS NOT NULL` of a composite value is false when any field is NULL
            return f"CASE WHEN num_nulls({c}) = 0 THEN format('%s', {c}) END"
        if conversion == "decimal":  # numeric(p, s) prints s digits; NaN lands as NULL
            return f"CASE WHEN {c} <> 'NaN' THEN {c}::text END"
        if conversion == "float":
            value = f"{c}::text::float8" if type_oid == FLOAT4 else c  # a real lands as its text
            return (f"CASE WHEN {value} = 'NaN' THEN 'NaN' WHEN {value} = 'Infinity' THEN "
                    f"'Infinity' WHEN {value} = '-Infinity' THEN '-Infinity' WHEN {value} = 0 "
                    f"THEN '0' ELSE ltrim(to_char({value}, '9.99999999999999EEEE')) END")
        if conversion == "date":
            return (f"CASE WHEN {c} > '9999-12-31' THEN '9999-12-31' WHEN {c} < '0001-01-01' "
                    f"THEN '0001-01-01' ELSE {c}::text END")
        if conversion in ("timestamp", "timestamptz"):
            # (least and greatest skip NULLs: a NULL would be clamped to a value)
            clamped = (f"CASE WHEN {c} IS NOT NULL THEN least(greatest({c}, "
                       "'0001-01-01 00:00:00'), '9999-12-31 23:59:59.999999') END")
            if self.server_version >= 140000:  # extract returns an exact numeric
                return f"(extract(epoch FROM {clamped}) * 1000000)::bigint::text"
            # Before 14 it returns a double: whole seconds, then the microseconds within them.
            return (f"(extract(epoch FROM date_trunc('second', {clamped}))::bigint * 1000000 + "
                    f"extract(microseconds FROM {clamped})::bigint % 1000000)::text")
        if conversion == "bytea" or type_oid == BYTEA:
            return f"encode({c}, 'hex')"
        if conversion == "array":
            if kind.element == "int":  # through numeric: JSON prints an oid[]'s elements quoted
                return f"array_to_json({c}::text::numeric[])::text"
            if kind.element == "bool":
                return f"array_to_json({c})::text"
            if kind.element == "text" and kind.delimiter == ",":
                # Through the array's own text: each element as its output function prints it,
                # as the pipeline reads it. A cast to text[] would cast each element instead, and
                # some casts differ from the output (char(n) drops its padding, inet adds /32).
                return f"array_to_json({c}::text::text[])::text"
            if kind.element == "text":  # box: its elements hold commas, its arrays split at ';'
                return f"array_to_json({c}::text[])::text"
            return None
        return None

    def md5(self, text: str) -> str:
        return f"md5({text})" if self.utf8 else f"md5(convert_to({text}, 'UTF8'))"

    def as_text(self, value: str) -> str:
        return f"({value})::text"

    def hex_of(self, integer: str) -> str:
        return f"to_hex({integer})"

    def hash_int(self, hex_text: str) -> str:
        return f"('x' || substr({hex_text}, 1, {HEX_DIGITS}))::bit({4 * HEX_DIGITS})::bigint"

    def display(self, column: str) -> str:  # the output function, as COPY and pgoutput send
        # (format prints NULL as ''; num_nulls: a composite with NULL fields is not NULL)
        return (f"CASE WHEN num_nulls({column}) = 0 THEN "
                f"left(format('%s', {column}), {SHOWN_CHARACTERS + 1}) END")


class DuckDBDialect(Dialect):
    """DuckDB, also over a local Delta table read with deltalake."""

    name = "duckdb"

    def value_text(self, column: str, kind: ColumnKind, type_oid: int) -> Optional[str]:
        c, conversion = column, kind.conversion
        if conversion == "float":
            return (f"CASE WHEN isnan({c}) THEN 'NaN' WHEN isinf({c}) AND {c} > 0 THEN 'Infinity' "
                    f"WHEN isinf({c}) THEN '-Infinity' WHEN {c} = 0 THEN '0' "
                    f"ELSE printf('%.14e', {c}) END")
        if conversion in ("timestamp", "timestamptz"):
            return f"CAST(epoch_us({c}) AS VARCHAR)"
        if conversion == "bytea":
            return f"lower(hex({c}))"
        if conversion == "array" and kind.element not in ("int", "bool", "text"):
            return None
        return f"CAST({c} AS VARCHAR)"

    def hash_int(self, hex_text: str) -> str:
        return f"CAST('0x' || substr({hex_text}, 1, {HEX_DIGITS}) AS BIGINT)"

    def as_text(self, value: str) -> str:
        return f"CAST({value} AS VARCHAR)"

    def hex_of(self, integer: str) -> str:
        return f"lower(to_hex({integer}))"


class DatabricksDialect(Dialect):
    """Databricks SQL (Spark 3.5's functions: the tests run it on a local Spark)."""

    name = "databricks"

    def value_text(self, column: str, kind: ColumnKind, type_oid: int) -> Optional[str]:
        c, conversion = column, kind.conversion
        if conversion == "float":
            return (f"CASE WHEN isnan({c}) THEN 'NaN' WHEN {c} = double('inf') THEN 'Infinity' "
                    f"WHEN {c} = double('-inf') THEN '-Infinity' WHEN {c} = 0 THEN '0' "
                    f"ELSE format_string('%.14e', {c}) END")
        if conversion == "timestamptz":
            return f"CAST(unix_micros({c}) AS STRING)"
        if conversion == "timestamp":  # TIMESTAMP_NTZ: no session time zone involved
            return (f"CAST(timestampdiff(MICROSECOND, TIMESTAMP_NTZ'1970-01-01 00:00:00', {c}) "
                    "AS STRING)")
        if conversion == "bytea":
            return f"lower(hex({c}))"
        if conversion == "array" and kind.element not in ("int", "bool", "text"):
            return None
        return f"CAST({c} AS STRING)"

    def hash_int(self, hex_text: str) -> str:
        return f"CAST(conv(substr({hex_text}, 1, {HEX_DIGITS}), 16, 10) AS BIGINT)"

    def sum_ints(self, values: str) -> str:  # a bigint sum would overflow
        return f"sum(CAST({values} AS DECIMAL(38, 0)))"

    def as_text(self, value: str) -> str:
        return f"CAST({value} AS STRING)"

    def hex_of(self, integer: str) -> str:
        return f"lower(hex({integer}))"

    def concat(self, pieces: Sequence[str]) -> str:  # Spark's concat of a NULL is NULL
        return super().concat([f"coalesce({piece}, {EMPTY})" for piece in pieces])

    def length(self, text: str) -> str:
        return self.length_text(text)


def is_plain(kind: ColumnKind) -> bool:
    return kind.conversion in PLAIN


def comparable(kind: ColumnKind) -> bool:
    """Whether a column of this kind has a canonical text on every side."""
    return PostgresDialect().value_text("c", kind, 0) is not None


def texts(dialect: Dialect, columns: Sequence[str], kinds: Sequence[ColumnKind],
          type_oids: Sequence[int]) -> List[str]:
    """The canonical texts of quoted columns (a column missing on a side: pass `NULL`)."""
    return [("NULL" if column == "NULL" else dialect.value_text(column, kind, oid)) or "NULL"
            for column, kind, oid in zip(columns, kinds, type_oids)]
