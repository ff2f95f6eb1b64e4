"""The same source value lands with the same type and value through snapshot and through CDC."""

import pytest

from tests.tools import Project

ALL_TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN year AS integer CHECK (VALUE BETWEEN 1901 AND 2155);
CREATE TABLE everything (
    id int PRIMARY KEY,
    c_smallint smallint, c_integer integer, c_bigint bigint, c_real real, c_double double precision,
    c_numeric numeric, c_numeric_ps numeric(12, 3), c_text text, c_varchar varchar(30),
    c_char char(5), c_bool boolean, c_date date, c_timestamp timestamp, c_timestamptz timestamptz,
    c_time time, c_timetz timetz, c_interval interval, c_uuid uuid, c_json json, c_jsonb jsonb,
    c_bytea bytea, c_int_array int[], c_text_array text[], c_enum mood, c_domain year,
    c_tsvector tsvector, c_money money, c_inet inet, c_2d int[][]
)
"""

VALUES = """
INSERT INTO everything VALUES
({id}, -32768, 2147483647, -9223372036854775808, 3.25, 1.0000000000000002,
 123456789012345678901234567890.123456789, 123456789.125, 'tab	and
newline, "quotes" and ''apostrophes''', 'varchar', 'ab', true, '2024-02-29',
 '2024-02-29 23:59:59.999999', '1999-12-31 23:00:00-05', '23:59:59.5', '10:00+02', '1 year 2 mons 3 days 04:05:06.5',
 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"b": [1, 2.5, null], "a": "x"}}', '{{"b": [1, 2.5, null], "a": "x"}}',
 '\\x00ff10', '{{1,NULL,-3}}', '{{"a b","c,d","e\\"f",NULL,""}}', 'happy', 2006,
 to_tsvector('english', 'The quick brown foxes'), '12.34', '192.168.0.1/24', '{{{{1,2}},{{3,4}}}}'),
({nulls_id}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
({special_id}, 0, 0, 0, 'NaN', '-Infinity', 'NaN', 'NaN', '', '', ' ', false, 'infinity',
 '-infinity', 'infinity', '00:00', '00:00+00', '-1 days', '00000000-0000-0000-0000-000000000000',
 'null', '[]', '\\x', '{{}}', '{{}}', 'sad', 1901, '', '0', '::1', '{{}}')
"""


@pytest.fixture(params=["duckdb", "filesystem"])
def project(request, tmp_path, source_url) -> Project:
    return Project(tmp_path, source_url, destination=request.param)


def _without_meta(row):
    nan_free = {k: "NaN" if isinstance(v, float) and v != v else v for k, v in row.items()}
    return {k: v for k, v in nan_free.items() if k != "id" and not k.startswith(("_pg_", "_dlt_"))}


def test_snapshot_and_cdc_give_identical_values(source, project):
    with source.cursor() as cur:
        cur.execute(ALL_TYPES)
        cur.execute(VALUES.format(id=1, nulls_id=2, special_id=3))
    project.run("snapshot")
    with source.cursor() as cur:
        cur.execute(VALUES.format(id=11, nulls_id=12, special_id=13))
    project.run("cdc")
    rows = {r["id"]: r for r in project.dest_rows("everything")}
    assert sorted(rows) == [1, 2, 3, 11, 12, 13]
    for snapshot_id in (1, 2, 3):
        assert _without_meta(rows[snapshot_id]) == _without_meta(rows[snapshot_id + 10])
    if project.destination == "duckdb":
        types = project.dest_column_types("everything")
        assert types["c_time"] == "VARCHAR" and types["c_interval"] == "VARCHAR"
        assert types["c_numeric_ps"] == "DECIMAL(12,3)" and types["c_numeric"] == "VARCHAR"
        assert types["c_int_array"] == "JSON" and types["c_domain"] == "BIGINT"


def test_documented_values_of_special_cases(source, project):
    with source.cursor() as cur:
        cur.execute(ALL_TYPES)
    project.run("snapshot")
    with source.cursor() as cur:
        cur.execute(VALUES.format(id=1, nulls_id=2, special_id=3))
    project.run("cdc")
    rows = {r["id"]: r for r in project.dest_rows("everything")}
    full, nulls, special = rows[1], rows[2], rows[3]
    assert all(v is None for v in _without_meta(nulls).values())
    assert full["c_char"] == "ab   "  # char(n) keeps its padding
    assert full["c_int_array"] == "[1,null,-3]"
    assert full["c_text_array"] == '["a b","c,d","e\\"f",null,""]'
    assert full["c_2d"] == "[[1,2],[3,4]]"
    assert full["c_bytea"] == b"\x00\xff\x10"
    assert full["c_enum"] == "happy" and full["c_domain"] == 2006
    assert str(full["c_numeric"]) == "123456789012345678901234567890.123456789"
    assert full["c_timestamptz"].isoformat().startswith("2000-01-01T04:00:00")
    assert special["c_real"] != special["c_real"]  # NaN stays NaN in a double
    assert special["c_numeric"] == "NaN" and special["c_numeric_ps"] is None
    assert special["c_date"].isoformat() == "9999-12-31"
    assert special["c_timestamp"].isoformat() == "0001-01-01T00:00:00"
    assert special["c_timestamptz"].isoformat().startswith("9999-12-31T23:59:59.999999")
    assert special["c_text"] == "" and special["c_bytea"] == b""
    assert special["c_int_array"] == "[]"
