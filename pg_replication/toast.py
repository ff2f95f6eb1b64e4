"""Unchanged TOASTed values read back by key: owns `ToastFiller`, which reads the current values
of the columns an UPDATE left unchanged (and of generated columns the server does not send), in
parts whose size adapts to the bytes read (FIRST_FILL_ROWS, MAX_FILL_ROWS)."""

from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .catalog import TableInfo
from .protocol import UNCHANGED_TOAST, TupleValue
from .relation_buffer import BufferTotals, Key, Meta, RelationBuffer

# (table, key column names, keys, wanted column names) -> {key: values of the wanted columns}
FetchCurrent = Callable[[TableInfo, List[str], List[Key], List[str]], Dict[Key, List[Optional[bytes]]]]
# Rows whose unchanged TOASTed values are read back at once: the first part, and at most.
FIRST_FILL_ROWS = 8
MAX_FILL_ROWS = 50_000

Rows = List[List[TupleValue]]
Metas = List[Meta]


class ToastFiller:
    """Reads unchanged TOASTed values back, about `fill_bytes` of them at a time."""

    def __init__(self, fetch_current: FetchCurrent, fill_bytes: int, totals: BufferTotals) -> None:
        self.fetch_current = fetch_current
        self.fill_bytes = fill_bytes
        self.totals = totals  # its `unfilled` rows await a read-back
        # Bytes of values read back per row, as the last part measured (None: nothing read yet).
        self.filled_row_bytes: Optional[float] = None

    def due(self) -> bool:
        """True when the rows awaiting a read-back are likely to read about `fill_bytes`: their
        values are not in the stream, so the stream's bytes cannot tell (a mass update that left
        190 KB values unchanged sends a few bytes per row). Until a first part has been read the
        guess is small."""
        if self.filled_row_bytes is None:
            return self.totals.unfilled >= FIRST_FILL_ROWS
        return self.totals.unfilled * self.filled_row_bytes >= self.fill_bytes

    def filled_parts(self, state: RelationBuffer, rows: Rows, meta: Metas
                     ) -> Iterator[Tuple[Rows, Metas]]:
        """The rows with their unchanged TOASTed values read back, in parts whose values read
        stay near `fill_bytes`: a mass update that left 190 KB values unchanged would otherwise
        read them all into memory at once. Part sizes adapt to the bytes the last part read."""
        start, size = 0, FIRST_FILL_ROWS
        while start < len(rows):
            part_rows, part_meta, read_bytes, found = self._fill_unchanged_toast(
                state, rows[start:start + size], meta[start:start + size])
            if found:  # rows deleted since read nothing and tell nothing about the others
                self.filled_row_bytes = read_bytes / found
            yield part_rows, part_meta
            start += size
            grown = size * 2 if read_bytes * 2 < self.fill_bytes else size
            size = max(1, min(grown, size * self.fill_bytes // max(read_bytes, 1), MAX_FILL_ROWS))

    def _fill_unchanged_toast(self, state: RelationBuffer, rows: Rows, meta: Metas
                              ) -> Tuple[Rows, Metas, int, int]:
        """Gives every UPDATE that left a TOASTed column unchanged that column's value; returns
        the rows kept, their metadata, the bytes of values read and the number of rows found.

        pgoutput does not send a TOASTed value an UPDATE did not change (marker 'u'), and the
        merge writes whole rows, so sending NULL would wipe the column in the destination. The
        value is read from the source table by key instead. It is the *current* value; should a
        later transaction have changed it, that change is in the stream after this one and is
        applied after it, so the destination still ends equal to the source. A row that no longer
        exists at the source was deleted (or re-keyed) later, and that change is also in the
        stream: the update is dropped instead of writing a NULL.
        """
        readable, current = self._read_current(state, rows, meta)
        read_bytes = sum(len(v) for found in (current or {}).values() for v in found if v)
        kept_rows, kept_meta = [], []
        for row, row_meta in zip(rows, meta):
            if UNCHANGED_TOAST in row:
                found = current.get(state.key_of(row)) if current is not None else []
                if found is None:
                    continue
                values = dict(zip(readable, found))
                row = [values.get(i) if v is UNCHANGED_TOAST else v for i, v in enumerate(row)]
            kept_rows.append(row)
            kept_meta.append(row_meta)
        return kept_rows, kept_meta, read_bytes, len(current or {})

    def _read_current(self, state: RelationBuffer, rows: Rows, meta: Metas
                      ) -> Tuple[List[int], Optional[Dict[Key, List[Optional[bytes]]]]]:
        """The columns that can be read back, and their current values by key (None: no column
        to read; {}: the rows cannot be found)."""
        names = state.current_names
        wanted = sorted({i for row, (_, _, deleted) in zip(rows, meta) if not deleted
                         for i, v in enumerate(row) if v is UNCHANGED_TOAST})
        keys = list({state.key_of(row) for row in rows if UNCHANGED_TOAST in row})
        in_catalog = {c.name for c in state.table.columns}
        key_names = [names[i] for i in state.key_indexes]
        # A column dropped since cannot be read: it gets NULL, as rows changed after a drop do.
        readable = [i for i in wanted if names[i] in in_catalog]
        if state.key_indexes and all(n in in_catalog for n in key_names):
            current = self.fetch_current(state.table, key_names, keys,
                                         [names[i] for i in readable]) if readable else None
        else:
            # A table the catalog no longer has (dropped since), or whose key cannot be read:
            # its updates are dropped like those of rows deleted since.
            current = {}
        return readable, current
