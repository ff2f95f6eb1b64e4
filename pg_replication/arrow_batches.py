"""Buffered rows to Arrow: owns `TableBatch` and turns a relation's raw text rows into a
`pa.Table` with the metadata columns (`_pg_lsn`, `_pg_commit_ts`, the delete marker), or into
the empty table that carries a truncate."""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import pyarrow as pa

from .hints import (CHANGE_LSN_COLUMN, COMMIT_TS_COLUMN, DELETED_AT_COLUMN, LSN_COLUMN,
                    META_ARROW_TYPES, DeleteMode, copied_row_meta, meta_columns)
from .protocol import TupleValue
from .relation_buffer import Meta, RelationBuffer
from .types import raw_values_to_arrow, refuse_inexact_keys, text_to_arrow


@dataclass
class TableBatch:
    table_name: str  # the destination table (before snake_case): TableInfo.target
    hints: Dict[str, Any]
    data: pa.Table
    replace: bool = False  # the truncate of a table: load it as an empty replace
    xid: Optional[int] = None  # a truncate's transaction (ddl._check_leaves)
    key: str = ""  # the source table (state.table_key), and as users write it (names.py)
    label: str = ""


class ArrowBuilder:
    """Turns buffered rows into Arrow tables; `deletes` chooses the delete marker column."""

    def __init__(self, deletes: DeleteMode) -> None:
        self.deletes = deletes
        self.meta_names = meta_columns(deletes)

    def batch(self, state: RelationBuffer, rows: List[List[TupleValue]],
              meta: List[Meta]) -> TableBatch:
        """The rows (values as raw text) with their commit LSN, own LSN, commit time and delete
        marker."""
        columns = list(zip(*rows))
        refuse_inexact_keys(state.label, [
            (state.current_names[i] or state.relation.columns[i].name,
             pa.array(columns[i], pa.string()), state.kinds[i]) for i in state.key_indexes])
        arrays = [raw_values_to_arrow(columns[i], kind) for i, kind in enumerate(state.kinds)]
        change_lsns, commits, deleted = zip(*meta)
        commit_lsns, commit_ts = zip(*commits)
        arrays.append(pa.array(commit_lsns, META_ARROW_TYPES[LSN_COLUMN]))
        arrays.append(pa.array(change_lsns, META_ARROW_TYPES[CHANGE_LSN_COLUMN]))
        arrays.append(pa.array(commit_ts, pa.int64()).cast(META_ARROW_TYPES[COMMIT_TS_COLUMN]))
        arrays.append(self._delete_markers(commit_ts, deleted))
        data = pa.Table.from_arrays(arrays, names=state.output_names + self.meta_names)
        return TableBatch(state.hints["table_name"], state.hints, data, key=state.table_key,
                          label=state.label)

    def copied_batch(self, state: RelationBuffer, strings: pa.Table, lsn: int) -> TableBatch:
        """Rows read from the table (an online copy's chunk: every column as PostgreSQL's text,
        in the buffer's column order) as a batch of the relation, as if committed at `lsn`."""
        columns = [pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], pa.string())
                   for column in strings.columns]
        refuse_inexact_keys(state.label, [(state.current_names[i], columns[i], state.kinds[i])
                                               for i in state.key_indexes])
        arrays = [text_to_arrow(column, kind) for column, kind in zip(columns, state.kinds)]
        arrays += copied_row_meta(strings.num_rows, lsn, self.meta_names[-1])
        data = pa.Table.from_arrays(arrays, names=state.output_names + self.meta_names)
        return TableBatch(state.hints["table_name"], state.hints, data, key=state.table_key,
                          label=state.label)

    def _delete_markers(self, commit_ts: Sequence[int], deleted: Sequence[bool]) -> pa.Array:
        """Hard deletes: True on deleted rows; soft deletes: when the row was deleted."""
        if self.deletes == "hard":
            return pa.array(deleted, pa.bool_())
        return pa.array([ts if d else None for ts, d in zip(commit_ts, deleted)],
                        pa.int64()).cast(META_ARROW_TYPES[DELETED_AT_COLUMN])

    def truncate(self, state: RelationBuffer, xid: int) -> TableBatch:
        """The truncate of the relation's table: an empty `replace` of it."""
        hints = dict(state.hints, write_disposition="replace")
        return TableBatch(hints["table_name"], hints, self._empty_table(state), replace=True,
                          xid=xid, key=state.table_key, label=state.label)

    def _empty_table(self, state: RelationBuffer) -> pa.Table:
        fields = [pa.field(name, kind.arrow_type)
                  for name, kind in zip(state.output_names, state.kinds)]
        fields += [pa.field(n, META_ARROW_TYPES[n]) for n in self.meta_names]
        return pa.schema(fields).empty_table()
