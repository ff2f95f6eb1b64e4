"""`verify --data`: does the destination hold, row for row, what the source holds?

Each table is compared in chunks on both sides, by SQL that returns two numbers per chunk:

- a chunk is a range of the key order when the key is one integer column (the hex digits of
  the key's offset from the smallest key), else a range of the key's md5 (a table without a key
  is a multiset: the md5 of the whole row). A key lands in the same chunk on PostgreSQL, DuckDB
  and Databricks whatever their collations and type orders, and each side reads its table in
  one sequential scan, without a sort. About 256 rows a chunk: 16^3 chunks for a million rows;
- per chunk each side returns its row count and the sum of 56 bits of each row's md5 (of its
  canonical text, canonical.py). Equal numbers: the chunk is equal, and no row travelled. A
  chunk that differs is split 256 ways (two more hex digits) until few enough rows are left to
  fetch their identities and hashes (never their values); the differing rows are then named:
  missing (only in the source), extra (only in the destination), different (with the columns
  that differ).

Memory stays bounded whatever the table's size: one entry per chunk, at most `FETCH_ROWS` row
hashes, and at most `max_keys` chunks followed down per table.

Comparing under live writes is left to the caller (verify_data.py): chunks that differ are
compared again once the destination holds exactly what a source snapshot holds.
"""

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from collections import Counter
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple,
                    TypeVar)

import dlt

from .canonical import (SHOWN_CHARACTERS, DatabricksDialect, Dialect, DuckDBDialect,
                        PostgresDialect, comparable, is_plain, texts)
from .catalog import TableInfo, load_type_catalog
from .dlt_compat import (DestinationTables, destination_identifier, destination_table_identifier,
                         destination_tables, filesystem_dataset_root)
from .destinations import destination_name
from .hints import DELETED_AT_COLUMN, ExistingColumn, output_column_names
from .state import LoadedState, table_key
from .types import ColumnKind, PgTypeRow, base_oid, resolve_kind

# Rows a chunk may hold for its row hashes to be fetched rather than split further.
FETCH_ROWS = 20_000
SPLIT_DIGITS = 2  # a differing chunk splits into 16^2
MAX_DIGITS = 12
KEYLESS_HASH_START = 17  # a keyless row's chunk: hex digits of its hash beyond the summed ones
SHOWN_COLUMNS = 6  # a row of a table without a key is named by its first columns

Query = Callable[[str], List[Tuple[Any, ...]]]
T = TypeVar("T")
Sums = Dict[str, Tuple[int, int]]  # chunk prefix -> (rows, sum of 56 bits of the row hashes)
Chunks = Tuple[int, Sequence[str]]  # the chunks of one level: its hex digits, their prefixes


@dataclass
class ColumnPlan:
    name: str  # in the source
    destination: str  # in the destination (dlt's snake_case, or the name the copy gave it)
    kind: ColumnKind
    type_oid: int  # the base type's OID
    loaded: bool = False  # dlt's schema has it: a load created it in the destination


@dataclass(frozen=True)
class KeyRange:
    """The chunks of a table with one integer key: ranges of key values, `16^digits` values
    from `low` split by their leading hex digits."""

    low: int
    digits: int

    @property
    def high(self) -> int:
        return self.low + 16 ** self.digits - 1


@dataclass
class TablePlan:
    """What is compared of one table."""

    table: TableInfo
    key: List[str]  # source columns; [] compares as a multiset
    columns: List[ColumnPlan]  # compared (key columns included)
    not_compared: List[str]  # columns without a canonical text on both sides
    target: str  # the destination table, as dlt names it
    key_range: Optional[KeyRange] = None  # else chunks of the key's hash (`_key_range`)

    @property
    def label(self) -> str:
        return self.table.label

    def column(self, name: str) -> ColumnPlan:
        return next(c for c in self.columns if c.name == name)


@dataclass
class RowDifference:
    # missing (only in the source), extra (only in the destination), different, duplicate (a key
    # the destination holds more than once)
    kind: str
    row: str  # the key (`id=5`), or a row of a table without a key
    columns: List[str] = field(default_factory=list)  # different: the columns that differ
    # tables without a key: how many more copies one side holds; duplicate: how many the
    # destination holds
    count: int = 1

    def line(self) -> str:
        text = f"{self.kind} {self.row}"
        if self.columns:
            text += f" (columns {', '.join(self.columns)})"
        if self.kind == "duplicate":
            text += f" ({self.count} rows in the destination)"
        elif self.count > 1:
            text += f" ×{self.count}"
        return text


@dataclass
class TableResult:
    table: str
    destination: str
    source_rows: int = 0
    destination_rows: int = 0
    chunks: int = 0
    differing_chunks: int = 0
    differences: List[RowDifference] = field(default_factory=list)
    not_compared: List[str] = field(default_factory=list)
    problem: Optional[str] = None  # the table could not be compared, and why

    @property
    def equal(self) -> bool:
        return self.problem is None and self.differing_chunks == 0

    def line(self) -> str:
        unchecked = (f"; columns not compared: {', '.join(self.not_compared)}"
                     if self.not_compared else "")
        if self.problem:
            return f"✗ {self.table}: {self.problem}"
        if self.equal:
            return (f"✓ {self.table}: {self.source_rows} rows equal in {self.chunks} chunks"
                    f"{unchecked}")
        named = "; ".join(d.line() for d in self.differences)
        return (f"✗ {self.table}: {self.differing_chunks} of {self.chunks} chunks differ "
                f"(source {self.source_rows} rows, destination {self.destination_rows})"
                f"{': ' + named if named else ''}{unchecked}")

    def as_dict(self) -> Dict[str, Any]:
        found = asdict(self)
        found["equal"] = self.equal
        return found


# -- what is compared ---------------------------------------------------------------------------

def table_plans(conn, tables: Sequence[TableInfo], loaded: LoadedState,
                existing: Optional[ExistingColumn] = None) -> List[TablePlan]:
    """What is compared of each table (its key range is read from the source now); `existing`:
    the destination's columns as the pipeline's schema knows them (variants of changed types)."""
    catalog = load_type_catalog(conn)
    plans = []
    for table in tables:
        plan = _table_plan(table, catalog, loaded.shapes.get(table_key(table.schema, table.name)),
                           existing)
        plan.key_range = _key_range(conn, plan)
        plans.append(plan)
    return plans


def _table_plan(table: TableInfo, catalog: Mapping[int, PgTypeRow],
                shape: Optional[Dict[str, Any]], existing: Optional[ExistingColumn]) -> TablePlan:
    destinations = _destination_columns(shape)
    key = table.merge_key
    columns, not_compared = [], []
    for column in table.columns:
        if column.generated and not key:
            continue  # a table without a key leaves them out (copies._copied_columns)
        kind = resolve_kind(column.type_oid, column.type_modifier, catalog)
        if not comparable(kind):
            not_compared.append(column.name)
            continue
        # (the shape records a column's destination name as the copy wrote it, before dlt's
        # snake_case: `txt_` lands in `txtx`)
        held_in = destination_identifier(destinations.get(column.name, column.name))
        # A column whose type changed since its destination column was made goes on in a
        # variant (hints.output_column_names), as the stream writes it: `a__v_bigint`.
        held_in = output_column_names(table.target, [(held_in, kind)], existing)[0]
        loaded = bool(existing and existing(table.target, held_in))
        columns.append(ColumnPlan(column.name, held_in, kind, base_oid(column.type_oid, catalog),
                                  loaded))
    return TablePlan(table, list(key), columns, not_compared,
                     destination_table_identifier(table.target))


def _destination_columns(shape: Optional[Dict[str, Any]]) -> Dict[str, str]:
    """Current source column name -> its destination column, from the shape the copy recorded
    (a renamed column keeps its destination name: ddl.py)."""
    found = {}
    for entry in (shape or {}).get("columns", []):
        if not entry.get("dropped") and entry.get("names"):
            found[entry["names"][-1]] = entry["destination"]
    return found


def _key_range(conn, plan: TablePlan) -> Optional[KeyRange]:
    """Chunks by ranges of the key for a table with one integer key: cheaper than its hash (the
    key's md5, which costs PostgreSQL as much as the row's), and in key order. Both sides of a
    table must chunk alike: the plan decides, once."""
    if len(plan.key) != 1 or plan.column(plan.key[0]).kind.conversion != "int":
        return None
    column = _pg_quote(plan.key[0])
    with conn.cursor() as cur:
        cur.execute(f"SELECT min({column}), max({column}) FROM {_table_sql(plan.table)}")
        low, high = cur.fetchone()
    if low is None or high - low >= 1 << 60:  # empty, or offsets beyond a bigint's hex digits
        return None
    return KeyRange(low, len(f"{high - low:x}"))


def chunk_digits(plan: TablePlan, rows: int) -> int:
    """Hex digits of a table's first chunks: about 256 rows or fewer per chunk, 16^4 at most
    (a key range has no more digits than its offsets)."""
    digits = 1
    while 16 ** digits * 256 < rows and digits < 4:
        digits += 1
    return min(digits, plan.key_range.digits) if plan.key_range else digits


# -- one side's queries -------------------------------------------------------------------------

class Side:
    """The SQL of one side (source or destination) for one table."""

    def __init__(self, plan: TablePlan, dialect: Dialect, query: Query, table_sql: str,
                 quote: Callable[[str], str], present: Optional[Sequence[str]] = None,
                 where: str = "TRUE", destination: bool = False) -> None:
        self.plan, self.dialect, self.query = plan, dialect, query
        self.table_sql, self.where = table_sql, where

        def quoted(column: ColumnPlan) -> str:
            name = column.destination if destination else column.name
            return quote(name) if present is None or name in present else "NULL"

        # A column dlt loaded that the destination no longer has was dropped there by hand: no
        # load adds it back (dlt's schema says it exists). One not loaded yet reads as NULL.
        self.missing = [c.name for c in plan.columns if destination and present is not None
                        and c.loaded and c.destination not in present]

        self.columns = {c.name: quoted(c) for c in plan.columns}
        column_texts = texts(dialect, list(self.columns.values()),
                             [c.kind for c in plan.columns], [c.type_oid for c in plan.columns])
        # Each column's text once, in a subquery; the row's and the key's hashes over them.
        self.texts = {name: f"t_{i}" for i, name in enumerate(self.columns)}
        shown = plan.key or [c.name for c in plan.columns[:SHOWN_COLUMNS]]
        self.shown = [f"shown_{i}" for i in range(len(shown))]
        selected = [f"{text} AS {self.texts[name]}" for name, text in
                    zip(self.columns, column_texts)]
        selected += [f"{dialect.display(self.columns[name])} AS {alias}"
                     for name, alias in zip(shown, self.shown)]
        keys = plan.key_range
        if keys is not None:
            place = dialect.key_range(self.columns[plan.key[0]], keys.low, keys.high, keys.digits)
            selected.append(f"{place} AS key_place")
        # The engines merge these subqueries into their callers (and PostgreSQL then reads in
        # parallel): each caller uses `k` and `r` once, and no text twice but a non-plain one.
        self.inner = (f"SELECT 1 AS one{''.join(', ' + s for s in selected)} FROM {table_sql} "
                      f"WHERE {where}")
        plain = {c.name: is_plain(c.kind) for c in plan.columns}
        row = dialect.md5(dialect.row_text(list(self.texts.values()), list(plain.values())))
        if keys is not None:
            self.key_identity = "v.key_place"
        elif plan.key:
            self.key_identity = dialect.md5(dialect.row_text([self.texts[k] for k in plan.key],
                                                             [plain[k] for k in plan.key]))
        else:
            self.key_identity = row
        self.start = 1 if plan.key else KEYLESS_HASH_START
        self.hashed = (f"SELECT {self.key_identity} AS k, {row} AS r"
                       f"{''.join(f', v.{alias}' for alias in self.shown)} FROM ({self.inner}) v")

    def _within(self, chunks: Optional["Chunks"]) -> str:
        """Rows in `chunks`: (hex digits, prefixes) of one level. The digits, not each prefix's
        length: a key shorter than them (`~5`) is a chunk of its own."""
        if not chunks or not chunks[1]:
            return "TRUE"
        digits, prefixes = chunks
        listed = ", ".join(f"'{p}'" for p in prefixes)
        return f"substr(h.k, {self.start}, {digits}) IN ({listed})"

    def chunk_sums(self, digits: int, within: Optional["Chunks"] = None) -> Sums:
        d = self.dialect
        rows = self.query(
            f"SELECT substr(h.k, {self.start}, {digits}), count(*), "
            f"{d.sum_ints(d.hash_int('h.r'))} FROM ({self.hashed}) h "
            f"WHERE {self._within(within)} GROUP BY 1")
        return {prefix: (int(n), int(total)) for prefix, n, total in rows}

    def row_hashes(self, within: "Chunks") -> Dict[str, Tuple[Any, Tuple[Any, ...]]]:
        """identity -> (row hashes, shown values) of the rows in the chunks `within` (a key
        held twice, which only a destination can, has two hashes); for a table without a key:
        row hash -> (rows, shown values)."""
        if self.plan.key:
            shown = "".join(f", h.{alias}" for alias in self.shown)
            rows = self.query(f"SELECT h.k, h.r{shown} FROM ({self.hashed}) h "
                              f"WHERE {self._within(within)}")
            found: Dict[str, Tuple[Any, Tuple[Any, ...]]] = {}
            for k, r, *values in rows:
                found[k] = (found[k][0] + (r,) if k in found else (r,), tuple(values))
            return found
        shown = "".join(f", min(h.{alias})" for alias in self.shown)
        rows = self.query(f"SELECT h.r, count(*){shown} FROM ({self.hashed}) h "
                          f"WHERE {self._within(within)} GROUP BY h.r")
        return {r: (int(n), tuple(values)) for r, n, *values in rows}

    def columns_of(self, identities: Sequence[str]) -> Dict[str, Tuple[str, ...]]:
        """identity -> the hash of each compared column's text, for the rows named."""
        d = self.dialect
        listed = ", ".join(f"'{k}'" for k in identities)
        hashes = ", ".join(d.md5(d.part(f"h.{alias}")) for alias in self.texts.values())
        rows = self.query(f"SELECT h.k, {hashes} FROM (SELECT {self.key_identity} AS k, v.* FROM "
                          f"({self.inner}) v) h WHERE h.k IN ({listed})")
        return {k: tuple(found) for k, *found in rows}


# -- the comparison -----------------------------------------------------------------------------

def both(source: "Side", destination: "Side", read: Callable[["Side"], T]) -> Tuple[T, T]:
    """`read` of both sides at once: the source's in a thread (the server works while psycopg2
    waits, without the GIL), the destination's here (DuckDB releases the GIL too)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        ours = pool.submit(read, source)
        theirs = read(destination)
        return ours.result(), theirs


def differing(source: Sums, destination: Sums) -> List[str]:
    return sorted(p for p in set(source) | set(destination) if source.get(p) != destination.get(p))


@dataclass
class ChunkSums:
    """Both sides' sums of every chunk of one table."""

    plan: TablePlan
    digits: int
    source: Sums
    destination: Sums

    @classmethod
    def read(cls, plan: TablePlan, source: "Side", destination: "Side", digits: int) -> "ChunkSums":
        return cls(plan, digits, *both(source, destination, lambda side: side.chunk_sums(digits)))

    @property
    def differing(self) -> List[str]:
        return differing(self.source, self.destination)

    def reread(self, source: "Side", destination: "Side", chunks: Sequence[str]) -> "ChunkSums":
        """These sums with `chunks` read again (the others as they were)."""
        ours, theirs = dict(self.source), dict(self.destination)
        for sums in (ours, theirs):
            for prefix in chunks:
                sums.pop(prefix, None)
        again = both(source, destination,
                     lambda side: side.chunk_sums(self.digits, (self.digits, chunks)))
        ours.update(again[0])
        theirs.update(again[1])
        return ChunkSums(self.plan, self.digits, ours, theirs)

    def result(self) -> TableResult:
        return TableResult(self.plan.label, self.plan.target,
                           sum(v[0] for v in self.source.values()),
                           sum(v[0] for v in self.destination.values()), 16 ** self.digits,
                           len(self.differing), not_compared=list(self.plan.not_compared))


def compare(plan: TablePlan, source: "Side", destination: "Side", max_keys: int,
            sums: ChunkSums) -> TableResult:
    """The result of `sums`, with the rows of the differing chunks named."""
    result = sums.result()
    if not result.equal:
        result.differences = find_rows(plan, source, destination, (sums.digits, sums.differing),
                                       sums.source, sums.destination, max_keys)
    return result


def find_rows(plan: TablePlan, source: Side, destination: Side, chunks: Chunks,
              ours: Sums, theirs: Sums, max_keys: int) -> List[RowDifference]:
    """Splits differing chunks until their rows can be fetched, and names up to `max_keys`."""
    digits, prefixes = chunks[0], list(chunks[1])[:max_keys]
    while _rows(prefixes, ours, theirs) > FETCH_ROWS and digits + SPLIT_DIGITS <= MAX_DIGITS:
        within = (digits, prefixes)
        digits += SPLIT_DIGITS
        ours, theirs = both(source, destination, lambda side: side.chunk_sums(digits, within))
        prefixes = differing(ours, theirs)[:max_keys]
    if not prefixes:
        return []
    if plan.key:
        return _keyed_differences(plan, source, destination, (digits, prefixes), max_keys)
    return _multiset_differences(plan, source, destination, (digits, prefixes), max_keys)


def _rows(chunks: Sequence[str], ours: Sums, theirs: Sums) -> int:
    return sum(max(ours.get(p, (0,))[0], theirs.get(p, (0,))[0]) for p in chunks)


def _keyed_differences(plan: TablePlan, source: Side, destination: Side, chunks: Chunks,
                       max_keys: int) -> List[RowDifference]:
    ours, theirs = both(source, destination, lambda side: side.row_hashes(chunks))
    found: List[Tuple[str, str, Tuple[Any, ...], int]] = []
    for identity in sorted(set(ours) | set(theirs)):
        copies = len(theirs[identity][0]) if identity in theirs else 0
        if not copies:
            found.append(("missing", identity, ours[identity][1], 1))
        elif copies > 1:
            found.append(("duplicate", identity, theirs[identity][1], copies))
        elif identity not in ours:
            found.append(("extra", identity, theirs[identity][1], 1))
        elif ours[identity][0] != theirs[identity][0]:
            found.append(("different", identity, ours[identity][1], 1))
    found = found[:max_keys]
    changed = [identity for kind, identity, _, _ in found if kind == "different"]
    columns = _differing_columns(plan, source, destination, changed) if changed else {}
    return [RowDifference(kind, _shown(plan.key, shown), columns.get(identity, []), count)
            for kind, identity, shown, count in found]


def _differing_columns(plan: TablePlan, source: Side, destination: Side,
                       identities: Sequence[str]) -> Dict[str, List[str]]:
    ours, theirs = source.columns_of(identities), destination.columns_of(identities)
    names = [c.name for c in plan.columns]
    return {k: [name for name, a, b in zip(names, ours.get(k, ()), theirs.get(k, ())) if a != b]
            for k in identities}


def _multiset_differences(plan: TablePlan, source: Side, destination: Side,
                          chunks: Chunks, max_keys: int) -> List[RowDifference]:
    ours, theirs = both(source, destination, lambda side: side.row_hashes(chunks))
    counts = Counter({r: n for r, (n, _) in ours.items()})
    counts.subtract({r: n for r, (n, _) in theirs.items()})
    shown_columns = [c.name for c in plan.columns[:SHOWN_COLUMNS]]
    found = []
    for row_hash in sorted(r for r, n in counts.items() if n):
        n = counts[row_hash]
        shown = (ours if n > 0 else theirs)[row_hash][1]
        found.append(RowDifference("missing" if n > 0 else "extra", _shown(shown_columns, shown),
                                   count=abs(n)))
    return found[:max_keys]


def _shown(names: Sequence[str], values: Sequence[Any]) -> str:
    pairs = [f"{name}={_value(value)}" for name, value in zip(names, values)]
    return ", ".join(pairs) if len(pairs) == 1 else "(" + ", ".join(pairs) + ")"


def _value(value: Any) -> str:
    """A value as a report shows it: NULL, '' and text with spaces at its ends stand out, a line
    break or another control character is escaped (a report's line stays one line), and a value
    longer than SHOWN_CHARACTERS is cut with `…`."""
    if value is None:
        return "NULL"
    text = str(value)
    cut = text[:SHOWN_CHARACTERS]
    if cut != cut.strip() or not cut or not cut.isprintable():
        cut = repr(cut)
    return cut + ("…" if len(text) > SHOWN_CHARACTERS else "")


# -- the sides ---------------------------------------------------------------------------------

def source_side(plan: TablePlan, conn, utf8: bool) -> Side:
    table = plan.table
    return Side(plan, PostgresDialect(utf8, conn.server_version), postgres_query(conn),
                _table_sql(table), _pg_quote,
                where=f"({table.row_filter})" if table.row_filter else "TRUE")


def postgres_query(conn) -> Query:
    def query(statement: str) -> List[Tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall()
    return query


def _table_sql(table: TableInfo) -> str:
    return _pg_quote(table.schema) + "." + _pg_quote(table.name)


def _pg_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DestinationReader:
    """Opens each table of the destination for comparison (one dialect per destination)."""

    def side(self, plan: TablePlan) -> Optional[Side]:
        raise NotImplementedError


class SqlDestination(DestinationReader):
    """DuckDB or Databricks, summing their own tables."""

    def __init__(self, tables: DestinationTables, dialect: Dialect) -> None:
        self.tables, self.dialect = tables, dialect

    def side(self, plan: TablePlan) -> Optional[Side]:
        present = self.tables.columns(plan.target)
        if present is None:
            return None
        quote = self.tables.quote
        return Side(plan, self.dialect, self.tables.query, self.tables.qualified(plan.target),
                    quote, present, live_rows(present, quote), True)


class DeltaDestination(DestinationReader):
    """Local Delta tables, read with deltalake and compared by an in-process DuckDB."""

    def __init__(self, root: str) -> None:
        import duckdb

        self.root = root
        self.con = duckdb.connect(config={"memory_limit": "256MB", "threads": 1})

    def query(self, statement: str) -> List[Tuple[Any, ...]]:
        return self.con.execute(statement).fetchall()

    def side(self, plan: TablePlan) -> Optional[Side]:
        from deltalake import DeltaTable

        path = f"{self.root.rstrip('/')}/{plan.target}"
        if not DeltaTable.is_deltatable(path):
            return None
        dataset = DeltaTable(path).to_pyarrow_dataset()
        view = f"delta_{len(self.con.execute('SHOW TABLES').fetchall())}"
        self.con.register(view, dataset)
        present = dataset.schema.names
        return Side(plan, DuckDBDialect(), self.query, view, _pg_quote, present,
                    live_rows(present, _pg_quote), True)

    def close(self) -> None:
        self.con.close()


def live_rows(present: Sequence[str], quote: Callable[[str], str]) -> str:
    """Rows the source still holds: soft-deleted rows stay in the destination, marked.
    `_pg_deleted` marks a delete only on its way to the merge, which removes the row: a row
    marked so in the destination is not left out but compared (an extra row, found)."""
    if DELETED_AT_COLUMN in present:
        return f"{quote(DELETED_AT_COLUMN)} IS NULL"
    return "TRUE"


@contextmanager
def destination_reader(pipeline: dlt.Pipeline) -> Iterator[DestinationReader]:
    name = destination_name(pipeline)
    if name == "filesystem":
        reader = DeltaDestination(filesystem_dataset_root(pipeline))
        try:
            yield reader
        finally:
            reader.close()
        return
    dialect = DatabricksDialect() if name == "databricks" else DuckDBDialect()
    with destination_tables(pipeline) as tables:
        yield SqlDestination(tables, dialect)
