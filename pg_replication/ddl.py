"""Schema changes: what the change stream carries of a DDL, what it cannot, and the check that
finds the rest by comparing the catalog with what the pipeline recorded.

pgoutput describes a table (a Relation message: its column names and types, in order) before the
first change after a DDL, as of that change. It carries nothing of what a DDL did to rows that did
not change, and nothing that links a column's old name to its new one. So, per table, the state
records the catalog as the pipeline last checked it (a *shape*: each column's attnum, every name it
had since the copy, its destination column and type; the key; each partition's storage), and every
`cdc` run compares the catalog with it before it reads (`check_tables`):

- exact through the stream, recorded and carried on:
  - a column added without a value for existing rows (NULL in the source and the destination);
  - a column dropped (the destination column stays; rows changed later get NULL there);
  - a column renamed: its destination column keeps the name it had at the copy; every name the
    column had since maps to it (`ColumnMap`), so values are never split;
  - a type changed without rewriting the table (varchar(10) -> varchar(20)) where the destination
    type stays the same;
  - a partition created (rows written into it after are in the stream), or attached or
    detached while empty; a TRUNCATE.
- not exact (the table's rows changed without WAL, or the destination cannot tell two columns
  apart): the table needs a new copy, and `cdc` refuses until `snapshot --tables <table>` made one:
  - a column added with a value for existing rows (a DEFAULT, an identity, a generated column);
  - a column added or renamed under a name the destination already uses for another column
    (a drop and re-add, a swap of names);
  - a type changed with a rewrite (values may have changed: `USING`), or to another destination
    type;
  - a different key;
  - a partition attached holding rows written before the attach, or one detached holding rows,
    or dropped;
  - a partition truncated on its own, or rewritten (VACUUM FULL, CLUSTER): under
    `publish_via_partition_root` pgoutput sends nothing for a TRUNCATE of a partition, so its rows
    would stay in the destination (see `_check_leaves`);
  - an enum value renamed, or attributes of a composite type added, dropped or changed (ALTER
    TYPE), for a type a column uses, also inside an array, a domain or another composite: stored
    values read differently without a row written (`_check_user_types`).

A table renamed or dropped is handled by the hand-offs (handoff.py, integrity.py): renamed, it
needs a copy under its new name; dropped, its destination table stays as the stream left it.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from psycopg2 import sql

from .catalog import table_key
from .dlt_compat import destination_identifier
from .hints import RESERVED_COLUMNS, type_signature
from .types import PgTypeRow, resolve_kind

@dataclass
class CatalogColumn:
    attnum: int
    name: str
    type_oid: int
    type_modifier: int
    fills_rows: bool  # an identity or generated column, or a value stored for existing rows
    has_default: bool


@dataclass
class CatalogTable:
    """A table as the catalog describes it now."""

    oid: int
    schema: str
    name: str
    columns: Dict[int, CatalogColumn]  # by attnum
    key: List[int]  # attnums of the merge key (TableInfo.merge_key)
    storage: Dict[int, Tuple[str, int]]  # leaf OID -> (name, relfilenode); the table itself if plain
    # Enum and composite types the columns use, also inside arrays, domains and other composites:
    # type OID (as text) -> {"name", and "labels" (pg_enum OID -> label) or "attributes"}.
    user_types: Dict[str, Dict[str, Any]] = field(default_factory=dict)


# The leaves of partitioned tables: their relfilenode, and the transaction that last wrote their
# pg_class row (a TRUNCATE gives a partition a new relfilenode in the truncating transaction).
_LEAVES_SQL = """
SELECT r.oid, l.oid, l.relfilenode, l.xmin::text::bigint
FROM pg_class r
JOIN LATERAL pg_partition_tree(r.oid) t ON t.isleaf
JOIN pg_class l ON l.oid = t.relid
WHERE r.oid = ANY (%s) AND r.relkind = 'p'
"""

Leaves = Dict[int, Dict[int, Tuple[int, int]]]  # root OID -> leaf OID -> (relfilenode, xmin)


def read_leaves(conn, oids: Sequence[int]) -> Leaves:
    """The partitions of the partitioned tables among `oids` (plain tables have none)."""
    leaves: Leaves = {}
    with conn.cursor() as cur:
        cur.execute(_LEAVES_SQL, (list(oids),))
        for root, leaf, filenode, xmin in cur.fetchall():
            leaves.setdefault(root, {})[leaf] = (filenode, xmin)
    return leaves


_COLUMNS_SQL = """
SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, a.atttypid, a.atttypmod,
       a.attidentity <> '' OR a.attgenerated <> '', a.atthasdef,
       COALESCE(CASE WHEN c.relreplident = 'i'
                     THEN (SELECT i.indkey::int2[] FROM pg_index i
                           WHERE i.indrelid = c.oid AND i.indisreplident)
                     WHEN c.relreplident IN ('d', 'f')
                     THEN (SELECT k.conkey FROM pg_constraint k
                           WHERE k.conrelid = c.oid AND k.contype = 'p'
                             AND (c.relreplident = 'f' OR NOT k.condeferrable)) END, '{}')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.oid = ANY (%s) AND c.relkind IN ('r', 'p')
ORDER BY c.oid, a.attnum
"""

# Where a table's rows are stored: its partitions (leaves) for a partitioned table, else itself.
_STORAGE_SQL = """
SELECT r.oid, l.oid, l.relname, l.relfilenode,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = l.oid AND a.atthasmissing AND NOT a.attisdropped)
FROM pg_class r
JOIN LATERAL (SELECT t.relid FROM pg_partition_tree(r.oid) t WHERE t.isleaf
              UNION ALL SELECT r.oid WHERE r.relkind = 'r') leaf ON true
JOIN pg_class l ON l.oid = leaf.relid
WHERE r.oid = ANY (%s)
"""


# Every enum and composite type reachable from the column types (through arrays, domains, ranges
# and composites' attributes), with what its stored values' text depends on. An ALTER TYPE that
# renames an enum value or changes a composite's attributes changes how existing rows read,
# without writing them: the stream carries nothing of it.
_USER_TYPES_SQL = """
WITH RECURSIVE used(root, oid) AS (
    SELECT r, r FROM unnest(%s::oid[]) AS r
    UNION
    SELECT u.root, child.oid
    FROM used u
    JOIN pg_type t ON t.oid = u.oid
    CROSS JOIN LATERAL (
        SELECT e.oid FROM pg_type e WHERE e.typarray = t.oid
        UNION ALL SELECT t.typbasetype WHERE t.typtype = 'd'
        UNION ALL SELECT r.rngsubtype FROM pg_range r
                  WHERE r.rngtypid = t.oid OR r.rngmultitypid = t.oid
        UNION ALL SELECT a.atttypid FROM pg_attribute a
                  WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0
                    AND NOT a.attisdropped) AS child(oid)
)
SELECT u.root, t.oid, format_type(t.oid, NULL), t.typtype,
       CASE t.typtype
         WHEN 'e' THEN (SELECT json_object_agg(e.oid::text, e.enumlabel) FROM pg_enum e
                        WHERE e.enumtypid = t.oid)
         ELSE (SELECT json_agg(json_build_array(a.attname, a.atttypid, a.atttypmod)
                               ORDER BY a.attnum)
               FROM pg_attribute a
               WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) END
FROM used u
JOIN pg_type t ON t.oid = u.oid
WHERE t.typtype IN ('e', 'c')
"""


def _read_user_types(cur, tables: Dict[int, CatalogTable]) -> None:
    roots = sorted({c.type_oid for table in tables.values() for c in table.columns.values()})
    if not roots:
        return
    cur.execute(_USER_TYPES_SQL, (roots,))
    by_root: Dict[int, Dict[str, Dict[str, Any]]] = {}
    for root, oid, name, type_type, detail in cur.fetchall():
        entry = ({"name": name, "labels": detail or {}} if type_type == "e"
                 else {"name": name, "attributes": detail or []})
        by_root.setdefault(root, {})[str(oid)] = entry
    for table in tables.values():
        for column in table.columns.values():
            table.user_types.update(by_root.get(column.type_oid, {}))


def read_catalog(conn, oids: Sequence[int]) -> Dict[int, CatalogTable]:
    """The tables with these OIDs that still exist, by OID."""
    tables: Dict[int, CatalogTable] = {}
    with conn.cursor() as cur:
        cur.execute(_COLUMNS_SQL, (list(oids),))
        for (oid, schema, name, attnum, attname, type_oid, typmod, fills, has_default,
             key) in cur.fetchall():
            table = tables.setdefault(oid, CatalogTable(oid, schema, name, {}, list(key), {}))
            table.columns[attnum] = CatalogColumn(attnum, attname, type_oid, typmod, fills,
                                                  has_default)
        cur.execute(_STORAGE_SQL, (list(tables),))
        for root, leaf, leaf_name, filenode, missing in cur.fetchall():
            table = tables[root]
            table.storage[leaf] = (leaf_name, filenode)
            # A DEFAULT given to ADD COLUMN is stored once per leaf (atthasmissing), not per row.
            for column in table.columns.values():
                if column.name in missing:
                    column.fills_rows = True
        _read_user_types(cur, tables)
    return tables


def shape_of(table: CatalogTable, leaves: Optional[Leaves] = None) -> Dict[str, Any]:
    """The shape recorded with a copy: every column under its own name."""
    shape = {
        "columns": [{"attnum": c.attnum, "names": [c.name], "destination": c.name,
                     "type": [c.type_oid, c.type_modifier], "dropped": False}
                    for c in table.columns.values()],
        "key": list(table.key),
        "storage": {str(leaf): [name, filenode] for leaf, (name, filenode) in table.storage.items()},
        "types": table.user_types,
    }
    if leaves is not None and table.oid in leaves:
        shape["leaves"] = {str(leaf): filenode for leaf, (filenode, _) in leaves[table.oid].items()}
    return shape


@dataclass
class TableCheck:
    """The outcome of comparing one table's recorded shape with the catalog."""

    shape: Dict[str, Any]  # the shape to record from now on
    needs_copy: List[str] = field(default_factory=list)  # why the stream cannot keep it exact
    notes: List[str] = field(default_factory=list)  # what changed and is carried on
    # A transaction that gave every partition new storage: a TRUNCATE of the table itself only
    # if the stream carries it (its xid is then in the shape's `truncated_by`); see _check_leaves.
    expected_truncate: Optional[int] = None
    needs_rename: bool = False  # a column collides with another: a copy is refused until renamed


def check_table(recorded: Mapping[str, Any], now: CatalogTable, types: Mapping[int, PgTypeRow],
                partition_has_rows, leaves: Optional[Dict[int, Tuple[int, int]]] = None
                ) -> TableCheck:
    """Compares a recorded shape with the catalog (the rules are in the module docstring).

    Args:
        recorded: The shape last recorded (shape_of, then earlier checks).
        now: The catalog now.
        types: pg_type rows, for the destination type of a changed column.
        partition_has_rows: (leaf OID, from_before_attach) -> whether that partition (or
            detached table) has rows, or None when it no longer exists (partition_rows_probe).
        leaves: A partitioned table's partitions as read before the run's stop position was
            taken (read_leaves), to tell a partition's own TRUNCATE.
    """
    check = TableCheck(shape={"key": list(now.key), "storage": {
        str(leaf): [name, filenode] for leaf, (name, filenode) in now.storage.items()}})
    old_storage = {int(leaf): tuple(entry) for leaf, entry in recorded.get("storage", {}).items()}
    rewritten = any(leaf in old_storage and old_storage[leaf][1] != filenode
                    for leaf, (_, filenode) in now.storage.items())
    _check_partitions(check, old_storage, now, partition_has_rows)
    if sorted(recorded.get("key", [])) != sorted(now.key):
        check.needs_copy.append("its key changed")
    check.shape["columns"] = _check_columns(check, recorded.get("columns", []), now, types,
                                            rewritten)
    _check_user_types(check, recorded.get("types"), now)
    if leaves or recorded.get("leaves"):
        _check_leaves(check, recorded, now, leaves or {})
    return check


def _check_leaves(check: TableCheck, recorded: Mapping[str, Any], now: CatalogTable,
                  leaves: Dict[int, Tuple[int, int]]) -> None:
    """Finds partitions truncated (or rewritten) on their own since the shape was recorded.

    With `publish_via_partition_root` pgoutput sends a TRUNCATE of the root, but nothing for a
    TRUNCATE of one partition: the catalog has to tell. A TRUNCATE gives the partition a new
    relfilenode, and its pg_class row the truncating transaction as xmin. A new relfilenode is
    accepted when that transaction is a TRUNCATE of the table the stream carried (its xid is in
    `truncated_by`, added as the stream carries it). When every partition got new storage in one
    transaction the stream has not carried yet, that may be a TRUNCATE of the table still ahead
    in the stream: the run reads on and `expected_truncate` must be carried by the stop position
    (the leaves are read before the stop is taken, so the transaction is before it); until then
    the old relfilenodes stay recorded. Anything else (a partition truncated alone, VACUUM FULL or
    CLUSTER of a partition, which cannot be told from a TRUNCATE) needs a new copy.
    """
    carried = list(recorded.get("truncated_by", []))
    old = {int(leaf): filenode for leaf, filenode in recorded.get("leaves", {}).items()}
    check.shape["leaves"] = {str(leaf): filenode for leaf, (filenode, _) in leaves.items()}
    if carried:
        check.shape["truncated_by"] = carried[-_KEPT_TRUNCATES:]
    if not old:
        return  # recorded before partitions were tracked: from now on
    changed = {leaf: xmin for leaf, (filenode, xmin) in leaves.items()
               if leaf in old and old[leaf] != filenode and xmin not in carried}
    if not changed:
        return
    names = sorted(now.storage[leaf][0] if leaf in now.storage else str(leaf) for leaf in changed)
    every_partition = set(changed) == set(old) & set(leaves)
    if every_partition and len(set(changed.values())) == 1:
        check.expected_truncate = next(iter(changed.values()))
        for leaf in changed:
            check.shape["leaves"][str(leaf)] = old[leaf]
        return
    check.needs_copy.append(
        f"{'partition' if len(names) == 1 else 'partitions'} {', '.join(names)} truncated or "
        "rewritten on their own (TRUNCATE, VACUUM FULL, CLUSTER of a partition), which the change "
        "stream does not carry")


def _check_user_types(check: TableCheck, recorded: Optional[Mapping[str, Any]],
                      now: CatalogTable) -> None:
    """An enum value renamed, or a composite type's attributes added, dropped or changed: every
    stored value of it now reads differently, and no row was written (ALTER TYPE). Adding an
    enum value changes nothing stored, and is carried."""
    check.shape["types"] = now.user_types
    for oid, old in (recorded or {}).items():  # None: recorded before types were tracked
        new = now.user_types.get(oid)
        if new is None:  # no column uses it any more: the columns' check judged that
            continue
        if "labels" in old:
            renamed = [f"{label!r} to {new['labels'][enum]!r}"
                       for enum, label in old["labels"].items()
                       if new.get("labels", {}).get(enum, label) != label]
            if renamed:
                check.needs_copy.append(f"enum type {new['name']} had value "
                                        f"{', '.join(renamed)} renamed")
        elif old.get("attributes") != new.get("attributes"):
            check.needs_copy.append(f"composite type {new['name']} had attributes added, "
                                    "dropped or changed")


_KEPT_TRUNCATES = 20  # carried TRUNCATE xids kept per table: a few runs' worth


def _check_columns(check: TableCheck, recorded: List[Dict[str, Any]], now: CatalogTable,
                   types: Mapping[int, PgTypeRow], rewritten: bool) -> List[Dict[str, Any]]:
    old = {entry["attnum"]: entry for entry in recorded if not entry.get("dropped")}
    # Names the destination uses or may still hold values under, by attnum, also as dlt's
    # snake_case spells them ("Id" lands on "id").
    taken = {}
    for entry in recorded:
        names = set(entry["names"]) | {entry["destination"]}
        taken[entry["attnum"]] = names | {destination_identifier(name) for name in names}
    columns = [dict(entry) for entry in recorded if entry.get("dropped")]
    for attnum, entry in old.items():
        if attnum not in now.columns:
            columns.append(dict(entry, dropped=True))
            check.notes.append(f"column {entry['names'][-1]} dropped")
    for attnum, column in now.columns.items():
        elsewhere = set(RESERVED_COLUMNS).union(
            *(names for other, names in taken.items() if other != attnum))
        entry = old.get(attnum)
        if entry is None:
            columns.append(_added(check, column, elsewhere, now, rewritten))
            continue
        entry = dict(entry)
        if column.name != entry["names"][-1]:
            twin = _destination_twin(column, now)
            if twin is not None:
                check.needs_copy.append(f"column {entry['names'][-1]} was renamed to "
                                        f"{column.name}, which lands in the same destination "
                                        f"column as {twin}")
                check.needs_rename = True
            elif column.name in elsewhere or destination_identifier(column.name) in elsewhere:
                check.needs_copy.append(f"column {entry['names'][-1]} was renamed to "
                                        f"{column.name}, a name another column had")
            check.notes.append(f"column {entry['names'][-1]} renamed to {column.name}")
            entry["names"] = entry["names"] + [column.name]
        if [column.type_oid, column.type_modifier] != list(entry["type"]):
            _type_changed(check, entry, column, types, rewritten)
            entry["type"] = [column.type_oid, column.type_modifier]
        columns.append(entry)
    return sorted(columns, key=lambda e: e["attnum"])


def _added(check: TableCheck, column: CatalogColumn, elsewhere: set, now: CatalogTable,
           rewritten: bool) -> Dict[str, Any]:
    twin = _destination_twin(column, now)
    if twin is not None:
        check.needs_copy.append(f"column {column.name} was added beside {twin}, and both would "
                                f"land in destination column {destination_identifier(twin)}")
        check.needs_rename = True
    elif column.fills_rows or (column.has_default and rewritten):
        check.needs_copy.append(f"column {column.name} was added with values for existing rows")
    elif column.name in elsewhere or destination_identifier(column.name) in elsewhere:
        check.needs_copy.append(f"column {column.name} was added under a name the destination "
                                "uses or holds older values in (dropped and added again? a name "
                                "that differs only in case?)")
    else:
        check.notes.append(f"column {column.name} added")
    return {"attnum": column.attnum, "names": [column.name], "destination": column.name,
            "type": [column.type_oid, column.type_modifier], "dropped": False}


def _destination_twin(column: CatalogColumn, now: CatalogTable) -> Optional[str]:
    """Another column of the table now that dlt's snake_case gives the same destination name
    ("Notify" beside "notify"), or the name of a column the pipeline adds: no copy can tell the
    two apart until one is renamed."""
    target = destination_identifier(column.name)
    if target in RESERVED_COLUMNS:
        return f"{target} (a column the pipeline adds)"
    for other in now.columns.values():
        if other.attnum != column.attnum and destination_identifier(other.name) == target:
            return other.name
    return None


def _type_changed(check: TableCheck, entry: Dict[str, Any], column: CatalogColumn,
                  types: Mapping[int, PgTypeRow], rewritten: bool) -> None:
    before = type_signature(resolve_kind(entry["type"][0], entry["type"][1], types).hint)
    after = type_signature(resolve_kind(column.type_oid, column.type_modifier, types).hint)
    if rewritten or before != after:
        check.needs_copy.append(f"the type of column {column.name} changed")
    else:
        check.notes.append(f"the type of column {column.name} changed")


def _check_partitions(check: TableCheck, old_storage: Dict[int, Tuple[str, int]],
                      now: CatalogTable, partition_has_rows) -> None:
    if not old_storage:
        return
    for leaf, (name, _) in now.storage.items():
        if leaf not in old_storage and leaf != now.oid:
            if partition_has_rows(leaf, from_before_attach=True):
                check.needs_copy.append(f"partition {name} was attached holding rows")
            else:
                check.notes.append(f"partition {name} added")
    for leaf, (name, _) in old_storage.items():
        if leaf not in now.storage and leaf != now.oid:
            if partition_has_rows(leaf) is False:
                check.notes.append(f"partition {name} detached")
            else:
                check.needs_copy.append(f"partition {name} was detached or dropped with its rows")


def partition_rows_probe(conn):
    """(leaf OID, from_before_attach) -> whether the table has rows (only rows written before it
    became a partition of the tree, with `from_before_attach`); None when it no longer exists.

    A row written after the attach was published and is in the stream; one written before (an
    ATTACH of a filled table) is not. Told by transaction age: a row strictly younger than the
    youngest pg_inherits row on the way up to the root came later. (Frozen rows count as older.)
    """

    def has_rows(oid: int, from_before_attach: bool = False) -> Optional[bool]:
        with conn.cursor() as cur:
            cur.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE c.oid = %s", (oid,))
            found = cur.fetchone()
            if found is None:
                return None
            table = sql.Identifier(*found)
            if not from_before_attach:
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM ONLY {})").format(table))
                return bool(cur.fetchone()[0])
            cur.execute("SELECT min(age(i.xmin)) FROM pg_inherits i WHERE i.inhrelid IN "
                        "(SELECT relid FROM pg_partition_ancestors(%s))", (oid,))
            attached_age = cur.fetchone()[0]
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM ONLY {} WHERE age(xmin) >= %s)")
                        .format(table), (attached_age,))
            return bool(cur.fetchone()[0])

    return has_rows


@dataclass
class ColumnMap:
    """How the column names in the stream of one table map to the destination and the catalog.

    `destination`: every name a column had since the copy -> its destination column.
    `current`: the same names -> the column's name in the catalog now (None: dropped since).
    """

    destination: Dict[str, str]
    current: Dict[str, Optional[str]]

    @classmethod
    def from_shape(cls, shape: Mapping[str, Any]) -> "ColumnMap":
        destination: Dict[str, str] = {}
        current: Dict[str, Optional[str]] = {}
        for entry in shape.get("columns", []):
            now = None if entry.get("dropped") else entry["names"][-1]
            for name in entry["names"]:
                destination[name] = entry["destination"]
                current[name] = now
        return cls(destination, current)


def check_tables(conn, recorded: Mapping[str, Tuple[int, Optional[Mapping[str, Any]]]],
                 types: Mapping[int, PgTypeRow], leaves: Optional[Leaves] = None
                 ) -> Dict[str, TableCheck]:
    """Checks every copied table (table_key -> (OID, recorded shape or None)) that still exists
    under the same name. A table copied before shapes were recorded gets its first one here.
    `leaves`: read before the run's stop position was taken (read_leaves); read now if None."""
    oids = [oid for oid, _ in recorded.values()]
    if leaves is None:
        leaves = read_leaves(conn, oids)
    catalog = read_catalog(conn, oids)
    has_rows = partition_rows_probe(conn)
    checks: Dict[str, TableCheck] = {}
    for key, (oid, shape) in recorded.items():
        now = catalog.get(oid)
        if now is None or table_key(now.schema, now.name) != key:
            continue  # dropped, or renamed: a copy under the new name is needed (integrity.py)
        checks[key] = (check_table(shape, now, types, has_rows, leaves.get(oid, {}))
                       if shape else TableCheck(shape_of(now, leaves)))
    return checks
