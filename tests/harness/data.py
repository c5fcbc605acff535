"""Sample data sets and the row-for-row comparison the tests use to judge a migration (independent of compare.py)."""

from __future__ import annotations

from psycopg import sql

# Every kind of object and value the full copy must carry exactly.
TRICKY_SCHEMA = r'''
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (left_part text, right_part integer);
CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."Order Lines" (
    "Id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "Qty" positive_int NOT NULL,
    price numeric(12,2),
    total numeric GENERATED ALWAYS AS (price * "Qty") STORED
);
CREATE TABLE public.kinds (
    id integer PRIMARY KEY,
    feeling mood,
    feelings mood[],
    p pair,
    r int4range,
    ts tstzrange,
    j jsonb,
    arr integer[],
    txt_arr text[],
    b bytea,
    n numeric,
    f double precision,
    big text,
    at timestamptz,
    "ünïcödé" text
);
CREATE TABLE public.no_pk (a integer, b text);
ALTER TABLE public.no_pk REPLICA IDENTITY FULL;
CREATE TABLE public.events (id bigserial, happened date NOT NULL, payload text, PRIMARY KEY (id, happened))
    PARTITION BY RANGE (happened);
CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE public.events_2026 PARTITION OF public.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE public.parent (id integer PRIMARY KEY, name text UNIQUE);
CREATE TABLE public.child (id integer PRIMARY KEY, parent_id integer REFERENCES public.parent (id), note text);
CREATE INDEX child_note_idx ON public.child (note);
CREATE SEQUENCE public.free_seq START 100;
CREATE VIEW public.child_view AS SELECT c.id, p.name FROM public.child c JOIN public.parent p ON p.id = c.parent_id;
'''

TRICKY_DATA = r'''
INSERT INTO "Sales Dept"."Order Lines" ("Qty", price) SELECT g, g * 1.5 FROM generate_series(1, 200) g;
INSERT INTO public.kinds VALUES
  (1, 'happy', '{sad,happy}', ROW('a,b', 1), '[1,10)', '[2025-01-01 00:00+00,2025-02-01 00:00+00)',
   '{"a": [1, 2, {"b": null}], "c": "ü"}', '{1,2,3}', '{"x y","z,\"q\""}', '\x00ff10', 'NaN', 'NaN',
   repeat('toast-me ', 5000), '2025-06-01 12:34:56.789+02', 'grüße'),
  (2, 'sad', '{}', ROW(NULL, NULL), 'empty', NULL, '[]', '{}', NULL, '', 'Infinity', '-Infinity',
   NULL, '1999-12-31 23:59:59.999999+00', ''),
  (3, NULL, NULL, NULL, NULL, NULL, 'null', NULL, '{NULL}', NULL, '-Infinity', 'Infinity', 'short', NULL, NULL),
  (4, 'ok', '{ok}', ROW('', 0), '(,5]', '(,)', '{"deep": {"deeper": [true, false]}}', '{-1}', '{""}',
   '\x5c30', 123456789012345678901234567890.123456789, 1.0000000000000002, md5('x'), 'infinity', 'tab	and
newline');
INSERT INTO public.no_pk VALUES (1, 'dup'), (1, 'dup'), (2, NULL), (NULL, NULL);
INSERT INTO public.events (happened, payload) SELECT date '2025-03-01' + (g % 600), 'e' || g FROM generate_series(1, 1000) g;
INSERT INTO public.parent SELECT g, 'parent ' || g FROM generate_series(1, 50) g;
INSERT INTO public.child SELECT g, 1 + g % 50, 'note ' || g FROM generate_series(1, 500) g;
SELECT setval('public.free_seq', 4242);
'''


def create_tricky_database(cluster, dbname='shop'):
    cluster.create_database(dbname)
    with cluster.connect(dbname) as conn:
        conn.execute(TRICKY_SCHEMA)
        conn.execute(TRICKY_DATA)


def user_tables(conn):
    rows = conn.execute("""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%'
         ORDER BY 1, 2""").fetchall()
    return [(r[0], r[1]) for r in rows]


def table_rows(conn, schema, table):
    """Every row of a table as its text form, sorted: equal lists mean equal contents (duplicates included)."""
    conn.execute("SET extra_float_digits = 3")
    conn.execute("SET TimeZone = 'UTC'")
    query = sql.SQL('SELECT t::text FROM {} t ORDER BY 1').format(sql.Identifier(schema, table))
    return [r[0] for r in conn.execute(query).fetchall()]


def database_contents(cluster, dbname):
    with cluster.connect(dbname) as conn:
        return {'%s.%s' % t: table_rows(conn, *t) for t in user_tables(conn)}


def sequence_values(cluster, dbname):
    with cluster.connect(dbname) as conn:
        rows = conn.execute("SELECT schemaname, sequencename FROM pg_sequences ORDER BY 1, 2").fetchall()
        out = {}
        for schema, name in rows:
            out['%s.%s' % (schema, name)] = conn.execute(
                sql.SQL('SELECT last_value, is_called FROM {}').format(sql.Identifier(schema, name))).fetchone()
        return out


def assert_same_contents(source, destination, dbname, dest_dbname=None, skip=()):
    """Every table equal on both sides; `skip`: 'schema.table' names of the destination's own tables (not copied)."""
    src = database_contents(source, dbname)
    dst = database_contents(destination, dest_dbname or dbname)
    for name in skip:
        dst.pop(name)
    assert sorted(src) == sorted(dst), 'tables differ: source %s, destination %s' % (sorted(src), sorted(dst))
    for name in src:
        assert src[name] == dst[name], 'table %s differs: %d source rows, %d destination rows; first differences: %s' % (
            name, len(src[name]), len(dst[name]),
            sorted(set(src[name]) ^ set(dst[name]))[:3])
    return sum(len(v) for v in src.values())
