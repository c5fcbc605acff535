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
    """Every relation with rows of its own: tables, partitions and materialized views."""
    rows = conn.execute("""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg_%'
         ORDER BY 1, 2""").fetchall()
    return [(r[0], r[1]) for r in rows]


def table_rows(conn, schema, table):
    """Every row of a table as its text form, sorted: equal lists mean equal contents (duplicates included). A
    materialized view that was never refreshed has no rows to read: ['<not populated>']."""
    conn.execute("SET extra_float_digits = 3")
    conn.execute("SET TimeZone = 'UTC'")
    populated = conn.execute('SELECT c.relispopulated FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace '
                             'WHERE n.nspname = %s AND c.relname = %s', (schema, table)).fetchone()
    if populated is not None and not populated[0]:
        return ['<not populated>']
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


def large_objects(cluster, dbname):
    """oid -> (owner, md5 of the data, size) of every large object of the database."""
    with cluster.connect(dbname) as conn:
        rows = conn.execute("""
            SELECT m.oid::bigint, pg_get_userbyid(m.lomowner)::text, md5(x.d), octet_length(x.d)
              FROM pg_largeobject_metadata m CROSS JOIN LATERAL (SELECT lo_get(m.oid) AS d) x""").fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


# Definitions of the objects of a database, with the catalog's own functions, keyed by name. search_path is only
# pg_catalog so that every name comes out schema-qualified on both sides; NOT NULL is read from attnotnull (and the
# NOT NULL constraints of PostgreSQL 18, contype 'n', are left out) so that servers of different majors agree.
_USER = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
_NO_EXTENSION = ("NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{}'::regclass AND e.objid = {}.oid "
                 "AND e.deptype = 'e')")
CATALOG_QUERIES = {
    'columns': """
        SELECT n.nspname || '.' || c.relname || '.' || a.attname,
               concat_ws(' ', format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN 'not null' END,
                         nullif(a.attidentity, ''), nullif(a.attgenerated, ''), pg_get_expr(d.adbin, d.adrelid))
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped AND """ + _USER + """
           AND """ + _NO_EXTENSION.format('pg_class', 'c'),
    'indexes': """
        SELECT n.nspname || '.' || c.relname || '.' || i.relname,
               pg_get_indexdef(x.indexrelid) || CASE WHEN x.indisvalid THEN '' ELSE ' invalid' END
          FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE """ + _USER + " AND " + _NO_EXTENSION.format('pg_class', 'c'),
    'constraints': """
        SELECT n.nspname || '.' || c.relname || '.' || k.conname, k.contype::text || ' ' || pg_get_constraintdef(k.oid)
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE k.contype <> 'n' AND """ + _USER + " AND " + _NO_EXTENSION.format('pg_class', 'c'),
    'triggers': """
        SELECT n.nspname || '.' || c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT t.tgisinternal AND """ + _USER,
    'views': """
        SELECT n.nspname || '.' || c.relname, c.relkind::text || ' ' || pg_get_viewdef(c.oid)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('v', 'm') AND """ + _USER + " AND " + _NO_EXTENSION.format('pg_class', 'c'),
    'functions': """
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE md5(pg_get_functiondef(p.oid)) END
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE """ + _USER + " AND " + _NO_EXTENSION.format('pg_proc', 'p'),
    'sequences': """
        SELECT n.nspname || '.' || c.relname, concat_ws(' ', format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
                                                        s.seqmin, s.seqmax, s.seqcycle)
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE """ + _USER + " AND " + _NO_EXTENSION.format('pg_class', 'c'),
    'extensions': "SELECT e.extname::text, n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace",
}


def database_catalog(cluster, dbname):
    """{kind: {name: normalised definition}} of the user objects of a database (see CATALOG_QUERIES)."""
    out = {}
    with cluster.connect(dbname) as conn:
        conn.execute("SELECT set_config('search_path', 'pg_catalog', false)")
        for kind, query in CATALOG_QUERIES.items():
            out[kind] = {name: ' '.join((text or '').split()) for name, text in conn.execute(query).fetchall()}
    return out


def _major(cluster):
    with cluster.connect('postgres') as conn:
        return conn.info.server_version // 10000


def _view_rows(cluster, dbname, name):
    schema_name, view = name.split('.', 1)
    with cluster.connect(dbname) as conn:
        rows = conn.execute(sql.SQL('SELECT t::text FROM {} t').format(
            sql.Identifier(schema_name, view))).fetchall()
    return sorted(r[0] for r in rows)


def assert_same_catalogs(source, destination, dbname, dest_dbname=None, skip=()):
    """Every column, index, constraint, trigger, view, function, sequence definition and extension of the database
    equal on both sides; `skip`: 'schema.table' names of the destination's own tables (their objects are ignored)."""
    src = database_catalog(source, dbname)
    dst = database_catalog(destination, dest_dbname or dbname)
    for kind in src:
        theirs = {k: v for k, v in dst[kind].items() if not any(k == s or k.startswith(s + '.') for s in skip)}
        missing = sorted(set(src[kind]) - set(theirs))
        extra = sorted(set(theirs) - set(src[kind]))
        different = sorted(k for k in set(src[kind]) & set(theirs) if src[kind][k] != theirs[k])
        if kind == 'views' and different and _major(source) != _major(destination):
            # pg_get_viewdef words the same query differently across majors (16 stopped qualifying columns): there a
            # view or matview is equal when it is of the same kind and gives the same rows on both sides
            different = [k for k in different if src[kind][k][:1] != theirs[k][:1]
                         or _view_rows(source, dbname, k) != _view_rows(destination, dest_dbname or dbname, k)]
        assert not (missing or extra or different), '%s differ: missing on the destination %s, extra %s, different %s' % (
            kind, missing, extra, [(k, src[kind][k], theirs[k]) for k in different[:3]])
    return sum(len(v) for v in src.values())


def assert_same_database(source, destination, dbname, dest_dbname=None, skip=(), owners=True):
    """The independent proof that a database arrived whole, reading both catalogs itself (no pgdts code): every table,
    partition and materialized view row for row, every sequence value, every large object (oid, data and, with
    `owners`, owner) and the definitions of assert_same_catalogs. Returns the number of rows compared."""
    rows = assert_same_contents(source, destination, dbname, dest_dbname, skip)
    src_seq, dst_seq = sequence_values(source, dbname), sequence_values(destination, dest_dbname or dbname)
    assert src_seq == dst_seq, 'sequences differ: %s' % sorted(
        (k, src_seq.get(k), dst_seq.get(k)) for k in set(src_seq) | set(dst_seq) if src_seq.get(k) != dst_seq.get(k))
    src_lo, dst_lo = large_objects(source, dbname), large_objects(destination, dest_dbname or dbname)
    if not owners:
        src_lo = {oid: value[1:] for oid, value in src_lo.items()}
        dst_lo = {oid: value[1:] for oid, value in dst_lo.items()}
    assert src_lo == dst_lo, 'large objects differ: missing %s, extra %s, different %s' % (
        sorted(set(src_lo) - set(dst_lo))[:5], sorted(set(dst_lo) - set(src_lo))[:5],
        sorted(o for o in set(src_lo) & set(dst_lo) if src_lo[o] != dst_lo[o])[:5])
    assert_same_catalogs(source, destination, dbname, dest_dbname, skip)
    return rows
