"""The merge of a load's changes into a keyed destination table, and the atomic replace of a
table by its new copy: the statements the SQL destinations run (Databricks, DuckDB) and the same
semantics on a local Delta table through `deltalake`'s merge API.

One MERGE per table and load, one Delta commit on Databricks:

1. the latest change of each key: highest `_pg_lsn` (the commit LSN of its transaction), ties
   broken by `_pg_change_lsn` (its place in the transaction);
2. matched, deleted and newer than the destination row: the row is deleted (soft deletes: only
   the `_pg_*` columns are updated, the row keeps its last values);
3. matched and newer: the row is updated;
4. not matched and not deleted: the row is inserted.

So a change never overwrites a newer row (replays after a re-snapshot or a retried load are
harmless) and a delete of a key the destination lacks leaves nothing. The aliases contain a `-`,
which no destination column name can (dlt normalizes names to snake_case), so a column named
`d`, `s` or `source` never collides with them. dlt_compat.with_own_merge plugs these into dlt's
load step.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .hints import CHANGE_LSN_COLUMN, COMMIT_TS_COLUMN, DELETED_AT_COLUMN, DELETED_COLUMN, LSN_COLUMN

Quote = Callable[[str], str]

TARGET, SOURCE, RANKED, RANK = "pg-target", "pg-source", "pg-ranked", "pg-rank"


@dataclass(frozen=True)
class MergePlan:
    """What the merge of one table needs to know, read from its dlt table schema."""

    columns: Sequence[str]  # destination column names, in the table's order
    keys: Sequence[str]
    delete_column: str  # `_pg_deleted` (hard deletes) or `_pg_deleted_at` (soft)

    @property
    def hard_deletes(self) -> bool:
        return self.delete_column == DELETED_COLUMN

    @property
    def markers(self) -> List[str]:
        """The delete markers a staged row may carry: the table's own and, in a table that has
        both columns (its `deletes` setting was switched), the other one too."""
        if self.hard_deletes and DELETED_AT_COLUMN in self.columns:
            return [DELETED_COLUMN, DELETED_AT_COLUMN]
        return [self.delete_column]

    @property
    def meta_columns(self) -> List[str]:
        """The columns a soft delete updates."""
        return [c for c in (LSN_COLUMN, CHANGE_LSN_COLUMN, COMMIT_TS_COLUMN, DELETED_AT_COLUMN)
                if c in self.columns]

    @classmethod
    def for_table(cls, table: Dict[str, Any]) -> Optional["MergePlan"]:
        """The plan for a table of this pipeline that merges on a key; None for any other table
        (dlt's own tables, a keyless table, a table of another source)."""
        columns = {name: column for name, column in table.get("columns", {}).items()
                   if column.get("data_type")}
        keys = [name for name, column in columns.items() if column.get("primary_key")]
        if LSN_COLUMN not in columns or not keys:
            return None
        hard = DELETED_COLUMN in columns and columns[DELETED_COLUMN].get("hard_delete")
        if not hard and DELETED_AT_COLUMN not in columns:
            return None
        return cls(list(columns), keys, DELETED_COLUMN if hard else DELETED_AT_COLUMN)


# -- SQL destinations ---------------------------------------------------------------------------

def merge_statement(plan: MergePlan, target: str, staging: str, quote: Quote) -> str:
    """The one MERGE statement that applies the staged changes of a table (see the module's
    docstring). `target` and `staging` are qualified and quoted; `quote` quotes an identifier."""
    t, s = quote(TARGET), quote(SOURCE)
    columns = ", ".join(quote(c) for c in plan.columns)
    on = " AND ".join(f"{t}.{quote(k)} = {s}.{quote(k)}" for k in plan.keys)
    newer = _newer_sql(f"{s}.", f"{t}.", quote)
    values = [c for c in plan.columns if c not in plan.keys]
    update_all = ", ".join(f"{quote(c)} = {s}.{quote(c)}" for c in values)
    soft_delete = "UPDATE SET " + ", ".join(f"{quote(c)} = {s}.{quote(c)}"
                                            for c in plan.meta_columns)
    on_delete = ""
    for marker in plan.markers:
        action = "DELETE" if marker == DELETED_COLUMN else soft_delete
        on_delete += f" WHEN MATCHED AND {_deleted_sql(marker, f'{s}.{quote(marker)}')} AND" \
                     f" {newer} THEN {action}"
    live = " AND ".join(f"NOT {_deleted_sql(m, f'{s}.{quote(m)}')}" for m in plan.markers)
    return (f"MERGE INTO {target} AS {t} USING ({latest_changes_sql(plan, staging, quote)}) AS {s}"
            f" ON {on}{on_delete}"
            f" WHEN MATCHED AND {newer} THEN UPDATE SET {update_all}"
            f" WHEN NOT MATCHED AND {live} THEN INSERT ({columns})"
            f" VALUES ({', '.join(f'{s}.{quote(c)}' for c in plan.columns)})")


def latest_changes_sql(plan: MergePlan, staging: str, quote: Quote) -> str:
    """The staged changes, one per key: the latest."""
    columns = ", ".join(quote(c) for c in plan.columns)
    keys = ", ".join(quote(k) for k in plan.keys)
    order = f"{quote(LSN_COLUMN)} DESC, {quote(CHANGE_LSN_COLUMN)} DESC"
    return (f"SELECT {columns} FROM (SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY {keys}"
            f" ORDER BY {order}) AS {quote(RANK)} FROM {staging}) AS {quote(RANKED)}"
            f" WHERE {quote(RANK)} = 1")


def _deleted_sql(marker: str, value: str) -> str:
    """`value` (the marker column `marker` of a row) says the row is a delete."""
    return f"COALESCE({value}, FALSE)" if marker == DELETED_COLUMN else f"({value} IS NOT NULL)"


def _newer_sql(source: str, target: str, quote: Quote) -> str:
    """The source change comes after the target row. Rows written before `_pg_change_lsn`
    existed have it NULL: their `_pg_lsn` alone orders them."""
    lsn, change = quote(LSN_COLUMN), quote(CHANGE_LSN_COLUMN)
    return (f"({source}{lsn} > {target}{lsn} OR ({source}{lsn} = {target}{lsn}"
            f" AND COALESCE({source}{change}, 0) > COALESCE({target}{change}, 0)))")


def overwrite_statement(columns: Sequence[str], target: str, staging: str, quote: Quote) -> str:
    """The replace of a table by its staged copy in one statement: one Delta commit on
    Databricks, so readers see the old rows or the new ones, never an empty or partial table."""
    names = ", ".join(quote(c) for c in columns)
    return f"INSERT OVERWRITE TABLE {target} ({names}) SELECT {names} FROM {staging}"


# -- local Delta (deltalake) --------------------------------------------------------------------

def latest_per_key(data: pa.Table, plan: MergePlan) -> pa.Table:
    """The latest change of each key among `data`'s rows (step 1)."""
    if data.num_rows == 0:
        return data
    ordered = data.sort_by([(LSN_COLUMN, "descending"), (CHANGE_LSN_COLUMN, "descending")])
    position = "pg_position_"  # a helper column for the group-by only
    with_position = ordered.append_column(position, pa.array(range(ordered.num_rows), pa.int64()))
    firsts = with_position.group_by(list(plan.keys), use_threads=False).aggregate(
        [(position, "min")])
    return ordered.take(firsts[f"{position}_min"])


def first_rows(data: pa.Table, plan: MergePlan) -> pa.Table:
    """The rows a table that does not exist yet starts with: the latest changes but deletes."""
    latest = latest_per_key(data, plan)
    for marker in plan.markers:
        if marker in latest.column_names:
            values = latest[marker]
            deleted = (pc.fill_null(values, False) if marker == DELETED_COLUMN
                       else pc.is_valid(values))
            latest = latest.filter(pc.invert(deleted))
    return latest


def merge_into_delta(table: Any, data: pa.Table, plan: MergePlan) -> None:
    """Steps 1-4 on a `deltalake.DeltaTable`, in one Delta commit."""
    latest = latest_per_key(data, plan)
    if latest.num_rows == 0:
        return
    t, s = "target", "source"  # deltalake's aliases; its SQL quotes names with backticks

    def col(alias: str, name: str) -> str:
        return f"{alias}.{_backtick(name)}"

    newer = _newer_sql(f"{s}.", f"{t}.", _backtick)
    markers = [m for m in plan.markers if m in latest.column_names]
    merge = table.merge(source=latest, source_alias=s, target_alias=t,
                        predicate=" AND ".join(f"{col(t, k)} = {col(s, k)}" for k in plan.keys))
    for marker in markers:
        deleted = f"{_deleted_sql(marker, col(s, marker))} AND {newer}"
        if marker == DELETED_COLUMN:
            merge = merge.when_matched_delete(predicate=deleted)
        else:
            merge = merge.when_matched_update(
                updates={_backtick(c): col(s, c) for c in plan.meta_columns
                         if c in latest.column_names}, predicate=deleted)
    updates = {_backtick(c): col(s, c) for c in latest.column_names if c not in plan.keys}
    merge = merge.when_matched_update(updates=updates, predicate=newer)
    merge = merge.when_not_matched_insert(
        updates={_backtick(c): col(s, c) for c in latest.column_names},
        predicate=" AND ".join(f"NOT {_deleted_sql(m, col(s, m))}" for m in markers) or None)
    merge.execute()


def _backtick(name: str) -> str:
    return f"`{name}`"

