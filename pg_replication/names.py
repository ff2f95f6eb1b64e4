"""How a source table is named where a user or the destination sees it, with several schemas.

The tables of the *default schema* (`schema_name`, else the first of `schema_names`) keep their
own names everywhere: in `--tables`, in messages, and as destination tables. A table of another
configured schema is written `schema.table` by the user and in messages, and lands in the
destination table `schema__table` (dlt's snake_case keeps the double underscore in table names),
so `sales.orders` and `public.orders` never share a destination table. Two names that still land
in one destination table after snake_case are refused before anything is copied
(copies.refuse_colliding_names).

The dlt state keys tables by `schema.table` whatever the default (state.table_key).
"""

from typing import Sequence, Tuple

SCHEMA_SEPARATOR = "__"


def destination_table(schema: str, name: str, default_schema: str) -> str:
    """The destination table (before dlt's snake_case) of a source table."""
    return name if schema == default_schema else f"{schema}{SCHEMA_SEPARATOR}{name}"


def display_name(schema: str, name: str, default_schema: str) -> str:
    """A source table as a user writes it in `--tables` and reads it in messages."""
    return name if schema == default_schema else f"{schema}.{name}"


def split_table_name(written: str, schemas: Sequence[str], default_schema: str) -> Tuple[str, str]:
    """(schema, table) of a name as a user writes it: `schema.table` when the part before the
    first dot is one of the configured `schemas`, else a table of the default schema (whose
    name may itself hold a dot)."""
    schema, dot, name = written.partition(".")
    if dot and schema in schemas and name:
        return schema, name
    return default_schema, written
