"""A generated multi-table schema covering the types the pipeline maps (used by tests and the demo)."""

SAMPLE_DDL = """
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
CREATE DOMAIN positive_qty AS integer CHECK (VALUE > 0);

CREATE TABLE customers (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    email varchar(200),
    country char(2),
    active boolean,
    signup_date date,
    created_at timestamptz,
    local_time timestamp,
    notes text,
    profile jsonb,
    raw_json json,
    score real,
    balance double precision
);

CREATE TABLE products (
    sku varchar(20) PRIMARY KEY,
    title text,
    price numeric(10, 2),
    weight numeric,
    tags text[],
    sizes int[],
    picture bytea,
    uid uuid,
    opening time,
    warranty interval,
    small smallint
);

CREATE TABLE orders (
    order_id integer NOT NULL,
    line_no smallint NOT NULL,
    customer_id bigint,
    sku varchar(20),
    qty positive_qty,
    status order_status,
    ordered_at timestamptz,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE events (
    id bigint NOT NULL,
    happened_on date NOT NULL,
    kind text,
    PRIMARY KEY (id, happened_on)
) PARTITION BY RANGE (happened_on);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');

CREATE TABLE audit_log (at timestamptz DEFAULT now(), message text);

CREATE VIEW paid_orders AS SELECT * FROM orders WHERE status = 'paid';
CREATE MATERIALIZED VIEW order_counts AS SELECT customer_id, count(*) FROM orders GROUP BY 1;
"""

SAMPLE_DATA = """
INSERT INTO customers
SELECT g, 'customer ' || g, 'c' || g || '@example.com', (ARRAY['DE','FR','US'])[1 + g % 3],
       g % 2 = 0, date '2020-01-01' + g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',
       timestamp '2024-06-01 12:00:00' + g * interval '1 minute',
       CASE WHEN g % 7 = 0 THEN NULL WHEN g % 5 = 0 THEN '' ELSE 'line one' || chr(10) || 'line "two", ' || g END,
       jsonb_build_object('level', g % 4, 'tags', jsonb_build_array('a', g)),
       '{"b": 1,  "a": [1, 2]}',
       g / 3.0, g * 1.25
FROM generate_series(1, %(rows)s) g;

INSERT INTO products
SELECT 'SKU-' || g, 'Product ' || g, g * 1.99, CASE WHEN g % 3 = 0 THEN 'NaN'::numeric ELSE g / 7.0 END,
       ARRAY['tag' || g, 'with space', 'quote"d'], ARRAY[g, g + 1, NULL],
       decode(lpad(to_hex(g), 8, '0'), 'hex'), md5(g::text)::uuid, time '08:30' + g * interval '1 minute',
       g * interval '1 day 2 hours', (g % 30000)::smallint
FROM generate_series(1, greatest(%(rows)s / 10, 5)) g;

INSERT INTO orders
SELECT g, 1 + g % 3, 1 + g % %(rows)s, 'SKU-' || (1 + g % greatest(%(rows)s / 10, 5)), 1 + g % 9,
       (ARRAY['new','paid','shipped'])[1 + g % 3]::order_status,
       timestamptz '2024-03-01 00:00:00+00' + g * interval '1 second'
FROM generate_series(1, %(rows)s * 2) g;

INSERT INTO events
SELECT g, date '2024-01-01' + (g % 700), 'kind-' || (g % 5) FROM generate_series(1, %(rows)s) g;

INSERT INTO audit_log (message) SELECT 'boot ' || g FROM generate_series(1, 5) g;
REFRESH MATERIALIZED VIEW order_counts;
"""

SAMPLE_TABLES = ["audit_log", "customers", "events", "orders", "products"]


def create_sample_schema(conn, rows: int = 200) -> None:
    """Creates the sample tables in the connection's database and fills them."""
    with conn.cursor() as cur:
        cur.execute(SAMPLE_DDL)
        cur.execute(SAMPLE_DATA.replace("%(rows)s", str(int(rows))))
