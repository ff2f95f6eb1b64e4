"""The initial copy, as building blocks: which tables, the publication and slot they need, and a
dlt source that copies them inside an exported snapshot with an exact hand-off (handoff.py).

The callers (sources.init_replication for the library, jobs.run_snapshot for the CLI) have
checked the settings and the server and hold a connection; the blocks here assume both.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import dlt
import pyarrow as pa

from .catalog import (TableInfo, column_kinds, describe_schema_tables, list_schema_tables,
                      list_tables, load_type_catalog, unreplicable_schema_tables)
from .connect import connect
from .copy_workers import (BLOCK_BYTES, CopyPart, default_workers, plan_parts, read_parts,
                           table_sizes)
from .ddl import read_catalog, read_leaves, shape_of
from .dlt_compat import destination_identifier, destination_table_identifier, make_source
from .exceptions import ConfigError, SourceNotReadyError
from .failover import align_failover, wanted_failover
from .filters import published_filters, published_record, with_filters
from .hints import (META_ARROW_TYPES, RESERVED_COLUMNS, delete_marker, existing_destination_column,
                    mark_batch, name_collisions, output_column_names, released_columns,
                    snapshot_hints, table_hints, with_column_hints, with_delta_options)
from .insert_only import updated_or_deleted_rows
from .settings import PgReplicationConfiguration as Settings
from .slots import (INSERT_ONLY_SUFFIX, check_partition_root_publishing, check_slot_usable, copy_slot_name,
                    create_slot, create_slot_with_snapshot, current_database, current_wal_lsn,
                    drop_publications,
                    drop_slot, ensure_publications, existing_publications, get_slot,
                    publication_statements, publication_tables, unpublished_tables)
from .snapshot import begin_snapshot_transaction, read_table
from .sql_reader import SqlDatabaseReader
from .standby import primary_connection, standby_snapshots, wait_for_replay
from .state import SOURCE_NAME, record_copy, start_snapshot

ColumnsByTable = Optional[Dict[str, Sequence[str]]]
HintsByTable = Optional[Dict[str, Dict[str, Any]]]


def select_tables(conn, settings: Settings) -> Dict[str, TableInfo]:
    """The tables to replicate, by TableInfo.label: those named (`table_names`), or every table of
    the configured schemas; UNLOGGED and foreign tables are left out (`unreplicable_tables`,
    which the CLI names in a warning)."""
    if settings.table_names:
        pairs = [settings.source_table(name) for name in settings.table_names]
        _refuse_unknown_schemas(conn, settings, pairs)
    else:
        pairs = list_schema_tables(conn, settings.schema_names)
    skipped = set(unreplicable_schema_tables(conn, settings.schema_names))
    pairs = [pair for pair in pairs if pair not in skipped]
    if not pairs:
        raise ConfigError(f"no tables to replicate in schema {', '.join(settings.schema_names)}")
    refuse_unknown_filtered_tables(conn, settings)
    return with_filters(describe_schema_tables(conn, pairs, settings.schema_name),
                        conn.server_version, settings.table_filters)


def refuse_unknown_filtered_tables(conn, settings: Settings) -> None:
    """A table named in exclude_columns or row_filters that is not a table of the schemas (a
    typo would let a column leave the source that was meant to stay)."""
    known = set(list_schema_tables(conn, settings.schema_names))
    unknown = [f"{schema}.{name}" for schema, name in settings.table_filters
               if (schema, name) not in known]
    if unknown:
        raise ConfigError(f"exclude_columns or row_filters name {', '.join(unknown)}, not a "
                          f"table of schema {', '.join(settings.schema_names)}")


def _refuse_unknown_schemas(conn, settings: Settings, pairs: List[Tuple[str, str]]) -> None:
    """A configured schema that does not exist, named plainly (not as an unknown table)."""
    for schema in dict.fromkeys(schema for schema, _ in pairs):
        list_tables(conn, schema)  # raises ConfigError naming the schema when it does not exist


def refuse_colliding_names(tables, replicated: Sequence[TableInfo] = ()) -> None:
    """Raises ConfigError when two source tables (of `tables` and the `replicated` ones), or two
    columns of one table, would land under one destination name after dlt's snake_case (they
    would be silently merged), a column takes a name the pipeline adds (`_pg_lsn`, ...), or a
    table's key has a generated column."""
    tables = list(tables)
    landed: Dict[str, TableInfo] = {}
    unique = {(t.schema, t.name): t for t in [*replicated, *tables]}
    for pair in sorted(unique):
        table = unique[pair]
        landing = destination_table_identifier(table.target)
        first = landed.setdefault(landing, table)
        if first is not table:
            raise ConfigError(
                f"tables {first.label!r} and {table.label!r} would both land in destination "
                f"table {landing!r}: replicate one of them (`--tables`) or rename it")
    for table in tables:
        _refuse_generated_key(table)
        clashes = name_collisions([c.name for c in table.columns], destination_identifier,
                                  RESERVED_COLUMNS)
        for first, second in clashes:
            what = ("a column the pipeline adds" if first in RESERVED_COLUMNS
                    else f"column {first!r}")
            raise ConfigError(
                f"table {table.label!r}: column {second!r} would land in destination column "
                f"{destination_identifier(second)!r}, the same as {what}: rename it, or leave "
                "the table out (`--tables`)")


def _refuse_generated_key(table: TableInfo) -> None:
    """pgoutput does not send generated columns: an insert would come without its key, and
    every cdc would fail on it."""
    generated = [name for name in table.merge_key
                 if (column := table.column(name)) is not None and column.generated]
    if generated:
        raise ConfigError(
            f"table {table.label!r}: its key includes the generated column {generated[0]!r}, "
            "which the change stream does not send: key it on stored columns (REPLICA IDENTITY "
            "USING INDEX on a unique index of them), or leave the table out (`--tables`)")


def addable_tables(conn, settings: Settings,
                   pairs: Sequence[Tuple[str, str]]) -> Tuple[List[str], List[str]]:
    """Of tables not replicated yet ((schema, table) pairs), those `snapshot --tables` can add (by
    label), and one line for each of the others saying why not (its name, or a column's,
    collides after snake_case)."""
    accepted = published_tables(conn, settings)
    addable, refused = [], []
    for label, table in sorted(describe_schema_tables(conn, pairs, settings.schema_name).items()):
        try:
            refuse_colliding_names([table], accepted)
        except ConfigError as e:
            refused.append(str(e))
            continue
        addable.append(label)
        accepted.append(table)
    return addable, refused


def published_tables(conn, settings: Settings) -> List[TableInfo]:
    """The tables of the configured schemas in the pipeline's publications (an admin's
    publication may list partitions instead of their root: check_partition_root_publishing
    refuses it, they are left out here)."""
    pairs = sorted({(schema, name) for pub in existing_publications(conn, settings.pub_name)
                    for schema, name in publication_tables(conn, pub)
                    if schema in settings.schema_names})
    return list(describe_schema_tables(conn, pairs, settings.schema_name, strict=False).values())


@dataclass
class CopyPlan:
    """What a copy needs once the publication and the slot are ready."""

    tables: List[TableInfo]
    types: Dict[int, Any]  # pg_type rows (catalog.load_type_catalog)
    new_stream: bool  # the slot is created with the copy: a new stream starts at its hand-off
    # Insert-only tables: rows updated or deleted before the copy, by OID (insert_only.py).
    write_counts: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    # Keyed tables copied online (chunks.py): here they are only emptied and get their hand-off.
    online_tables: List[str] = field(default_factory=list)
    # What the copy reads (the other tables, whole or in CTID ranges), over how many connections.
    parts: List[CopyPart] = field(default_factory=list)
    workers: int = 1
    failover: bool = False  # a slot created with the copy is a failover slot (failover.py)


def prepare_copy(conn, *, settings: Settings, tables: Dict[str, TableInfo],
                 reset: bool = False, create_slot_now: bool = False,
                 online: Sequence[str] = ()) -> CopyPlan:
    """Publishes `tables` and checks the slot (dropping it first with `reset`, or when it was
    invalidated and a copy follows). With `create_slot_now` a missing slot is created here (no
    copy follows); otherwise the copy creates it with its exported snapshot. The keyed tables
    named in `online` are to be copied online; the others are copied whole."""
    refuse_colliding_names(tables.values(), published_tables(conn, settings))
    # A column list or row filter the configuration does not ask for is an admin's (or left
    # from an earlier configuration): refused with the statements, never silently replaced (an
    # admin's column list may keep PII on the source).
    check_partition_root_publishing(conn, settings.pub_name, settings.table_filters,
                                    settings.schema_name)
    if reset:
        drop_slot(conn, settings.slot_name)
    with primary_connection(conn, settings.primary_dsn) as primary:
        _publish(conn, primary, settings, list(tables.values()), reset)
        slot = get_slot(conn, settings.slot_name)
        if slot is not None and slot.wal_status == "lost" and not create_slot_now:
            drop_slot(conn, settings.slot_name)  # a new copy starts over: a new slot goes with it
            slot = None
        failover = wanted_failover(conn, settings.failover)
        if slot is not None:
            check_slot_usable(slot, settings.slot_name, current_database(conn))
            align_failover(conn, settings.dsn, settings.slot_name, settings.failover)
        elif create_slot_now:
            with standby_snapshots(conn, settings.primary_dsn):
                create_slot(conn, settings.slot_name, failover)
        # Read before the slot's consistent point: every UPDATE or DELETE after it counts (only
        # a copy records them).
        write_counts = {} if create_slot_now else _write_counts(conn, primary, tables)
    online_tables = [name for name in online if name in tables and tables[name].merge_key]
    parts, workers = _plan_reading(conn, [t for t in tables.values() if t.label not in online_tables],
                                   settings)
    return CopyPlan(list(tables.values()), load_type_catalog(conn), slot is None, write_counts,
                    online_tables, parts, workers, failover)


def _publish(conn, primary, settings: Settings, tables: List[TableInfo], reset: bool) -> None:
    """Publishes the tables, through the primary when the source is a standby (standby.py);
    a standby without `primary_credentials` needs them published already."""
    if primary is None:
        missing = unpublished_tables(conn, settings.pub_name, tables)
        # An admin's column list is checked by name; a row filter cannot be compared with the
        # configured one, so the pipeline must set it itself, on the primary.
        published = published_filters(conn, [settings.pub_name,
                                             settings.pub_name + INSERT_ONLY_SUFFIX])
        missing += [t for t in tables if t not in missing and (t.row_filter or (
            published.get((t.schema, t.name), (None,))[0] or None) != t.column_list)]
        if reset:
            raise SourceNotReadyError("the source is a standby (read-only), where the "
                                      "publications cannot be made again: set "
                                      "primary_credentials to the primary")
        if missing:
            raise SourceNotReadyError(
                f"the source is a standby (read-only), and publication {settings.pub_name!r} "
                f"does not publish {', '.join(t.label for t in missing)} as configured (the "
                "table, its column list; a row filter only the pipeline can set): set "
                "primary_credentials to the primary, or have an admin run on the primary: "
                f"{'; '.join(publication_statements(conn, settings.pub_name, missing))}")
        return
    if reset:
        drop_publications(primary, settings.pub_name)
    ensure_publications(primary, settings.pub_name, tables)
    if primary is not conn and not wait_for_replay(conn, current_wal_lsn(primary)):
        raise SourceNotReadyError("the standby did not replay the publication change of the "
                                  "primary in time: is it streaming? (run the command again)")


def _write_counts(conn, primary, tables: Dict[str, TableInfo]) -> Dict[int, Dict[str, Any]]:
    """The UPDATE and DELETE counts of the tables without a key (insert_only.py), from the
    primary: a standby's statistics do not count the primary's writes. They must be read before
    the copy's consistent point: on a standby, which replays behind the primary, the slot is
    created only once the standby has replayed past the moment they were read."""
    keyless = [table for table in tables.values() if not table.merge_key]
    if not keyless:
        return {}
    if primary is None:
        raise SourceNotReadyError(
            f"{', '.join(t.label for t in keyless)}: a table without a key takes only inserts "
            "through the stream, and its updates and deletes are found in the primary's "
            "statistics, which a standby does not have: set primary_credentials to the primary, "
            "or leave the table out (`--tables`)")
    counts = updated_or_deleted_rows(primary, [table.oid for table in keyless])
    if primary is not conn and not wait_for_replay(conn, current_wal_lsn(primary)):
        raise SourceNotReadyError("the standby did not replay the primary's WAL in time (the "
                                  "copy must start after the counts it records): is it "
                                  "streaming? (run the command again)")
    return counts


def _plan_reading(conn, tables: List[TableInfo], settings: Settings
                  ) -> Tuple[List[CopyPart], int]:
    """The parts the copy reads and the number of connections reading them (`snapshot_workers`,
    or a default from the tables' sizes). dlt's sql_database reads whole tables, one at a time."""
    sizes = table_sizes(conn, tables) if tables else {}
    by_copy = settings.snapshot_reader == "copy"
    workers = (settings.snapshot_workers or default_workers(sizes)) if by_copy else 1
    parts = plan_parts(tables, sizes, workers,
                       ctid_ranges=by_copy and conn.server_version >= 140000,
                       part_blocks=max(1, settings.snapshot_part_bytes // BLOCK_BYTES))
    return parts, max(1, min(workers, len(parts)))


def copy_source(*, settings: Settings, plan: CopyPlan,
                include_columns: ColumnsByTable = None, columns: HintsByTable = None) -> Any:
    """A `pg_replication` source whose one resource copies the planned tables inside a snapshot
    exported at a slot's consistent point, and records their hand-off (handoff.py) in the source
    state, with the rows updated or deleted before it of the insert-only ones."""
    with_sql_database = settings.snapshot_reader == "sql_database"
    readers, handoff_lsn, exporter = _open_snapshot_readers(
        settings.dsn, settings.slot_name, plan.new_stream, settings.snapshot_max_wait,
        plan.workers, plan.failover, settings.primary_dsn, keep_exporter=with_sql_database)
    copy = _Copy(readers, plan, handoff_lsn, settings, include_columns, columns)
    if exporter is not None:
        copy.read_with_sql_database(exporter)
    # Each table carries its own `replace` hint. The resource itself must not be `replace`: dlt
    # would then also truncate every other table this resource loaded before (a later
    # `snapshot --tables b` would empty table a).
    def snapshot_rows() -> Iterator[Any]:
        yield from copy.rows()

    resource = dlt.resource(snapshot_rows, name="snapshot", write_disposition="append")
    return make_source(SOURCE_NAME, [resource()])


def _open_snapshot_readers(dsn: str, slot_name: str, new_stream: bool,
                           max_wait: Optional[float] = None, count: int = 1,
                           failover: bool = False, primary_dsn: Optional[str] = None,
                           keep_exporter: bool = False):
    """`count` connections inside one exported snapshot, that snapshot's hand-off LSN, and the
    exporting connection with `keep_exporter` (else None).

    With `new_stream` the pipeline's slot is created here and exports it; otherwise a temporary
    slot does. The snapshot is imported before the exporting connection closes (which also drops a
    temporary slot): the importing transactions keep it alive. Kept open, the exporter lets other
    connections import the snapshot later (`ExportedSnapshot`: sql_reader.py).
    """
    readers: List[Any] = []
    try:
        readers += [connect(dsn) for _ in range(count)]
        with standby_snapshots(readers[0], primary_dsn):
            exporter, handoff_lsn, snapshot_name = create_slot_with_snapshot(
                dsn, slot_name if new_stream else copy_slot_name(slot_name),
                temporary=not new_stream, max_wait=max_wait, failover=failover and new_stream)
        try:
            for reader in readers:
                begin_snapshot_transaction(reader, snapshot_name)
        except BaseException:
            exporter.close()
            raise
        if not keep_exporter:
            exporter.close()
            return readers, handoff_lsn, None
        return readers, handoff_lsn, ExportedSnapshot(exporter, snapshot_name)
    except Exception:
        for reader in readers:
            reader.close()
        raise


class _Copy:
    """The copy of the planned tables on the readers' snapshot (copy_workers.py reads the parts);
    each table's hand-off is recorded once all its parts are read."""

    def __init__(self, readers, plan: CopyPlan, handoff_lsn: int,
                 settings: Settings, include_columns: ColumnsByTable,
                 columns: HintsByTable) -> None:
        self.readers, self.plan, self.handoff_lsn = readers, plan, handoff_lsn
        self.settings, self.include_columns, self.columns = settings, include_columns, columns
        self.marker = delete_marker(settings.deletes)
        self.exported: Optional[ExportedSnapshot] = None
        self.sql_reader: Optional[SqlDatabaseReader] = None

    def read_with_sql_database(self, exported: "ExportedSnapshot") -> None:
        """Reads the tables with dlt's sql_database (sql_reader.py) in the exported snapshot,
        which stays importable until the copy ends."""
        self.exported = exported
        settings = self.settings
        self.sql_reader = SqlDatabaseReader(settings.dsn, exported.name, self.readers[0],
                                            settings.sql_database_backend)

    def rows(self) -> Iterator[Any]:
        try:
            state = dlt.current.source_state()
            start_snapshot(state, self.settings.slot_name, self.handoff_lsn, self.plan.new_stream)
            oids = [table.oid for table in self.plan.tables]
            # The catalog as of the hand-off: cdc compares later catalogs with it (ddl.py).
            shapes, leaves = read_catalog(self.readers[0], oids), read_leaves(self.readers[0], oids)
            # Before the readers start: the column list and row filter each copy is made with.
            publications = [self.settings.pub_name, self.settings.pub_name + INSERT_ONLY_SUFFIX]
            published = {table.oid: published_record(self.readers[0], publications, table)
                         for table in self.plan.tables}

            def record(table: TableInfo, online: bool) -> None:
                shape = shape_of(shapes[table.oid], leaves) if table.oid in shapes else None
                record_copy(state, table.schema, table.name, table.oid, self.handoff_lsn, shape,
                            self.plan.write_counts.get(table.oid), online, published[table.oid])

            for table in self.plan.tables:
                if table.label in self.plan.online_tables:  # emptied now, copied in chunks later
                    yield self._output(table).empty_batch()
                    record(table, online=True)
            yield from self._read_parts(lambda table: record(table, online=False))
        finally:
            if self.sql_reader is not None:
                self.sql_reader.close()
            if self.exported is not None:
                self.exported.close()
            for reader in self.readers:
                reader.close()

    def _read_parts(self, record: Callable[[TableInfo], None]) -> Iterator[Any]:
        """The planned parts' batches, in the order they arrive; a table is recorded when its
        last part is read (an empty table yields one empty batch, to replace what the
        destination holds)."""
        parts_left: Dict[int, int] = {}
        for part in self.plan.parts:
            parts_left[part.table.oid] = parts_left.get(part.table.oid, 0) + 1
        outputs: Dict[int, _TableOutput] = {}
        for part, data in read_parts(self.readers, self.plan.parts, self._read_part):
            table = part.table
            output = outputs.get(table.oid) or outputs.setdefault(table.oid, self._output(table))
            if data is not None:
                yield output.batch(data)
                continue
            parts_left[table.oid] -= 1
            if parts_left[table.oid] == 0:
                if output.first:
                    yield output.empty_batch()
                record(table)

    def _read_part(self, conn, part: CopyPart) -> Iterator[pa.Table]:
        kinds = column_kinds(part.table, self.plan.types)
        if self.sql_reader is not None:  # whole tables (the plan has no CTID ranges then)
            return self.sql_reader.read_table(part.table, kinds, self.handoff_lsn, self.marker)
        return read_table(conn, part.table, kinds, self.handoff_lsn, self.marker, part.blocks)

    def _output(self, table: TableInfo) -> "_TableOutput":
        kinds = column_kinds(table, self.plan.types)
        names = _included(table.label, _copied_columns(table), self.include_columns)
        outputs = output_column_names(table.target, [(n, kinds[n]) for n in names],
                                      existing_destination_column())
        renames = dict(zip(names, outputs))
        hints = table_hints(table.target, [(renames[n], kinds[n]) for n in names],
                            [renames.get(k, k) for k in table.merge_key], self.settings.deletes)
        hints = with_delta_options(hints, self.settings.delta_options)
        hints = snapshot_hints(with_column_hints(hints, self.columns))
        released = released_columns(table.target, list(hints["columns"]))
        return _TableOutput(hints, renames, {renames.get(n, n): kind for n, kind in kinds.items()},
                            released)


@dataclass
class ExportedSnapshot:
    """A snapshot exported by a replication connection kept open and idle, so that connections
    opened later can still import it (`SET TRANSACTION SNAPSHOT name`)."""

    exporter: Any
    name: str

    def close(self) -> None:
        self.exporter.close()


@dataclass
class _TableOutput:
    """How a table's rows go to dlt: its hints (on its first batch), destination names."""

    hints: Dict[str, Any]
    renames: Dict[str, str]
    kinds: Dict[str, Any]  # destination column -> ColumnKind
    released: Dict[str, Dict[str, Any]]  # columns the copy leaves NULL (hints.released_columns)
    first: bool = True

    @property
    def table_hints(self) -> Dict[str, Any]:
        """What dlt is told on the first batch: the copied columns, and the released ones."""
        return dict(self.hints, columns={**self.released, **self.hints["columns"]})

    def batch(self, data: pa.Table) -> Any:
        data = data.rename_columns([self.renames.get(n, n) for n in data.column_names])
        data = data.select([n for n in data.column_names if n in self.hints["columns"]])
        marked = mark_batch(data, self.table_hints, self.first)
        self.first = False
        return marked

    def empty_batch(self) -> Any:
        """No rows: still replaces what the destination holds."""
        self.first = False
        return mark_batch(_empty_like(self.hints, self.kinds), self.table_hints, True)


def _copied_columns(table: TableInfo) -> List[str]:
    """A table without a key leaves out its generated columns: the change stream cannot read
    them back by key (relation_buffer.RelationShapes)."""
    return [c.name for c in table.columns if table.merge_key or not c.generated]


def _included(table_name: str, names: List[str], include_columns: ColumnsByTable) -> List[str]:
    if not include_columns or table_name not in include_columns:
        return names
    wanted = set(include_columns[table_name])
    return [n for n in names if n in wanted]


def _empty_like(hints: Dict[str, Any], kinds) -> pa.Table:
    fields = []
    for name in hints["columns"]:
        arrow_type = kinds[name].arrow_type if name in kinds else META_ARROW_TYPES[name]
        fields.append(pa.field(name, arrow_type))
    return pa.schema(fields).empty_table()
