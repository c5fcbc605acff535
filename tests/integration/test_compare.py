"""Data comparison (compare.py) against two real servers: matches, exact mismatch keys and chunks, modes, edge cases."""

from __future__ import annotations

import threading
import time

import pytest
from psycopg import sql

from ansible_collections.pgdts.migration.plugins.module_utils import catalog
from ansible_collections.pgdts.migration.plugins.module_utils import compare
from ansible_collections.pgdts.migration.plugins.module_utils import connection as pgconn

DB = 'cmp'

QUOTED_SCHEMA = 'Schéma Ü'
QUOTED_TABLE = 'Tabelle "Größe"'

# One DDL script, run on both servers (the schema step of a migration gives both sides the same tables).
SCHEMA_SQL = r'''
CREATE TABLE public.types_t (
    id int PRIMARY KEY,
    t text, n numeric, f8 double precision, f4 real, ts timestamptz, tsn timestamp, d date, iv interval,
    j jsonb, js json, arr int[], tarr text[], farr float8[], b bytea, u uuid, bo boolean, m money,
    g text GENERATED ALWAYS AS (t || '/' || id) STORED
);
CREATE TABLE public.comp (region text, n int, val text, PRIMARY KEY (region, n));
CREATE TABLE public.tkey (k text PRIMARY KEY, v int);
CREATE TABLE public.nokey (a int, b text);
CREATE TABLE public.empty_t (id int PRIMARY KEY, v text);
CREATE TABLE public.nul (a int, b text, v text, UNIQUE (a, b));
CREATE TABLE public.parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (0) TO (100);
CREATE TABLE public.parted_2 PARTITION OF public.parted FOR VALUES FROM (100) TO (200);
CREATE SCHEMA "Schéma Ü";
CREATE TABLE "Schéma Ü"."Tabelle ""Größe""" ("ID" int PRIMARY KEY, "wert x" text, "naïve" numeric);
'''

DATA_SQL = r'''
SET TimeZone = 'America/New_York';
INSERT INTO public.types_t (id, t, n, f8, f4, ts, tsn, d, iv, j, js, arr, tarr, farr, b, u, bo, m) VALUES
 (1, 'plain', 1.5, 0.1, 0.1, '2024-03-10 02:30:00-05', '2024-01-01 00:00:00.123456', '2024-02-29', '1 day 02:03:04',
  '{"a": [1, 2, {"b": null}]}', '{"x" : 1,  "y":2}', '{1,2,3}', '{a,"b c",NULL}', '{0.1,1e-300,NaN}',
  '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, 12.34),
 (2, 'NaN numeric and float', 'NaN', 'NaN', 'NaN', 'infinity', '-infinity', '0001-01-01', '-1 mon', '[]', '[]',
  '{}', '{}', '{}', '', '00000000-0000-0000-0000-000000000000', false, -0.01),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, '', 0, '-0', '-0', '1970-01-01 00:00:00+00', '2000-01-01', '2000-01-01', '0', 'null', 'null', '{NULL}',
  '{""}', '{-0}', '\x', NULL, NULL, 0),
 (5, E'quotes '' " , ( ) \\ tab\t newline\n ünïcødé 😀', 123456789012345678901234567890.123456789, 1.7976931348623157e308,
  3.4028235e38, '2024-06-30 23:59:59.999999+14', '2024-06-30 23:59:59.999999', '9999-12-31', '1 year 2 mons -3 days',
  '{"ü": "😀", "n": 1.000}', '{"n": 1.000}', '{-2147483648,2147483647}', '{"(x,y)","{}"}', '{Infinity,-Infinity}',
  '\xdeadbeef', NULL, true, 92233720368547758.07),
 (6, 'Infinity', 'Infinity', 'Infinity', '-Infinity', '2024-01-01 12:00:00.5+05:30', NULL, NULL, '-1 day +1 hour',
  '1.5e3', '1.5e3', NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO public.types_t (id, t, n, f8, f4, ts, j, arr)
  SELECT g, 'row ' || g, g / 7.0, g / 3.0, g / 3.0, '2020-01-01 00:00:00+00'::timestamptz + g * interval '37 min',
         jsonb_build_object('g', g, 'half', g / 2.0), ARRAY[g, g * 2]
    FROM generate_series(7, 500) g;
INSERT INTO public.comp SELECT r, n, r || '-' || n FROM unnest(ARRAY['north', 'South', 'öst', 'west side']) r,
  generate_series(1, 300) n;
INSERT INTO public.tkey SELECT k, ord FROM unnest(ARRAY['a', 'B', 'ä', 'Z', 'z', '', ' space', 'é', 'ß', '😀', 'a b',
  'A', '0', '10', '9']) WITH ORDINALITY AS x(k, ord);
INSERT INTO public.tkey SELECT 'key ' || g, g FROM generate_series(1, 200) g;
INSERT INTO public.nokey SELECT g % 50, 'v' || (g % 7) FROM generate_series(1, 400) g;
INSERT INTO public.nul VALUES (1, 'a', 'x'), (1, NULL, 'y'), (1, NULL, 'y2'), (NULL, 'a', 'z'), (NULL, NULL, 'w'),
  (2, 'b', 'v');
INSERT INTO public.nul SELECT g, 'k' || g, 'v' || g FROM generate_series(3, 300) g;
INSERT INTO public.parted SELECT g, 'p' || g FROM generate_series(0, 199) g;
INSERT INTO "Schéma Ü"."Tabelle ""Größe""" SELECT g, 'Wert ' || g, g * 1.25 FROM generate_series(1, 250) g;
'''

TABLES = [('public', 'types_t'), ('public', 'comp'), ('public', 'tkey'), ('public', 'nokey'), ('public', 'empty_t'),
          ('public', 'nul'), ('public', 'parted'), ('public', 'parted_1'), ('public', 'parted_2'),
          (QUOTED_SCHEMA, QUOTED_TABLE)]


def spec_of(cluster):
    return pgconn.ServerSpec.from_options(cluster.spec(), environ={})


def copy_table(src, dst, schema, name, dbname=DB, dst_dbname=None):
    """Copy a table's rows the way a migration does: COPY text out of the source, COPY text into the destination."""
    with src.connect(dbname) as sconn:
        columns = [r[0] for r in sconn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "AND attgenerated = '' ORDER BY attnum",
            (sql.Identifier(schema, name).as_string(sconn),)).fetchall()]
        cols = sql.SQL(', ').join(sql.Identifier(c) for c in columns)
        out_q = sql.SQL('COPY (SELECT {} FROM {}) TO STDOUT').format(cols, sql.Identifier(schema, name))
        in_q = sql.SQL('COPY {} ({}) FROM STDIN').format(sql.Identifier(schema, name), cols)
        with dst.connect(dst_dbname or dbname) as dconn:
            with sconn.cursor().copy(out_q) as reader, dconn.cursor().copy(in_q) as writer:
                for block in reader:
                    writer.write(block)


def run_both(src, dst, query, dbname=DB):
    for cluster in (src, dst):
        with cluster.connect(dbname) as conn:
            conn.execute(query)


def source_tables(src, wanted, dbname=DB):
    with pgconn.connect(spec_of(src), dbname=dbname) as conn:
        tables = catalog.load_tables(conn, dbname)
    by_name = {(t.schema, t.name): t for t in tables}
    return [by_name[w] for w in wanted]


def compare_sessions_gone(cluster):
    """Closed connections end their backends asynchronously: wait (bounded) until none of ours is left."""
    deadline = time.time() + 10
    while True:
        left = cluster.value("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgdts-compare'")
        if left == 0 or time.time() > deadline:
            return left == 0
        time.sleep(0.1)


def by_table(results):
    return {(r['schema'], r['table']): r for r in results}


@pytest.fixture(scope='module')
def servers(source_pg, dest_pg):
    for cluster in (source_pg, dest_pg):
        cluster.create_database(DB)
    run_both(source_pg, dest_pg, SCHEMA_SQL)
    with source_pg.connect(DB) as conn:
        conn.execute(DATA_SQL)
        conn.execute('ANALYZE')
    for schema, name in TABLES:
        if name != 'parted':
            copy_table(source_pg, dest_pg, schema, name)
    # Destination sessions default to other output settings: the comparison must not depend on them.
    with dest_pg.connect(DB) as conn:
        for setting, value in (('TimeZone', 'Asia/Kolkata'), ('extra_float_digits', '-3'), ('DateStyle', 'SQL, DMY'),
                               ('IntervalStyle', 'sql_standard'), ('bytea_output', 'escape')):
            query = sql.SQL('ALTER DATABASE {} SET {} = {}')
            conn.execute(query.format(sql.Identifier(DB), sql.Identifier(setting), sql.Literal(value)))
    return source_pg, dest_pg


def compare_now(servers, tables, **kwargs):
    src, dst = servers
    return compare.compare_tables(spec_of(src), spec_of(dst), DB, tables, **kwargs)


@pytest.fixture
def mut(servers):
    """A fresh 1000-row table on both sides (ids 1..1000) for tests that change the destination."""
    src, dst = servers
    run_both(src, dst, 'DROP TABLE IF EXISTS public.mut; CREATE TABLE public.mut (id int PRIMARY KEY, v text, n numeric)')
    with src.connect(DB) as conn:
        conn.execute("INSERT INTO public.mut SELECT g, 'value ' || g, g * 0.5 FROM generate_series(1, 1000) g")
    copy_table(src, dst, 'public', 'mut')
    return source_tables(src, [('public', 'mut')])


def test_identical_data_matches(servers):
    src, dst = servers
    tables = source_tables(src, TABLES)
    nul = [t for t in tables if t.name == 'nul'][0]
    nul.key_columns, nul.key_kind = ['a', 'b'], 'index'     # a unique index on nullable columns as the key
    results = compare_now(servers, tables, chunk_rows=50, jobs=3)
    found = by_table(results)
    # The partitioned parent has no storage: its partitions are compared instead.
    assert ('public', 'parted') not in found
    assert len(results) == len(TABLES) - 1
    for key, result in found.items():
        assert result['result'] == 'match', (key, result)
        assert result['mismatched_chunks'] == [] and result['sample_keys'] == []
        assert result['source_rows'] == result['destination_rows']
        assert result['database'] == DB and result['mode'] == 'checksum'
    for (schema, name), result in found.items():
        expected = src.value(sql.SQL('SELECT count(*) FROM {}').format(sql.Identifier(schema, name)).as_string(None),
                             dbname=DB)
        assert result['source_rows'] == expected
    assert found[('public', 'types_t')]['source_rows'] == 500
    assert found[('public', 'types_t')]['chunks'] == 10
    assert found[('public', 'comp')]['chunks'] == 24          # 1200 rows / 50
    assert found[('public', 'nul')]['chunks'] == 7            # 300 rows with full keys / 50 + the NULL-key chunk
    assert found[('public', 'empty_t')]['source_rows'] == 0 and found[('public', 'empty_t')]['chunks'] == 1
    assert found[('public', 'nokey')]['chunks'] == 1
    assert found[(QUOTED_SCHEMA, QUOTED_TABLE)]['source_rows'] == 250
    assert compare.summarize(results) == {'tables': 9, 'match': 9, 'mismatch': 0, 'error': 0,
                                          'rows': sum(r['source_rows'] for r in results)}
    # Every worker connection is gone afterwards.
    assert compare_sessions_gone(src) and compare_sessions_gone(dst)


def test_identical_data_matches_with_md5_and_one_job(servers):
    src, _dst = servers
    results = compare_now(servers, source_tables(src, TABLES), chunk_rows=1000, jobs=1, hash_method='md5')
    assert {r['result'] for r in results} == {'match'}
    assert by_table(results)[('public', 'comp')]['chunks'] == 2


def test_type_values_really_differ_when_changed(servers):
    """Each kind of value is part of the row hash: changing only its text makes the row differ."""
    src, dst = servers
    changes = ["f8 = 0.30000000000000004 WHERE id = 1", "n = 1.50 WHERE id = 1", "ts = ts + interval '1 microsecond' WHERE id = 1",
               "j = '{\"a\": [1, 2, {\"b\": 0}]}' WHERE id = 1", "b = '\\x00ff11' WHERE id = 1", "t = NULL WHERE id = 4",
               "t = '' WHERE id = 3", "f8 = 0 WHERE id = 4", "arr = '{NULL,NULL}' WHERE id = 4", "tarr = '{\"b c\",a,NULL}' WHERE id = 1"]
    tables = source_tables(src, [('public', 'types_t')])
    for change in changes:
        key = change.rsplit('= ', 1)[1]
        with dst.connect(DB) as conn:
            conn.execute('CREATE TABLE public.types_backup AS SELECT * FROM public.types_t WHERE false')
            conn.execute('INSERT INTO public.types_backup SELECT * FROM public.types_t WHERE id = %s', (int(key),))
            conn.execute('UPDATE public.types_t SET ' + change)
        try:
            result = compare_now(servers, tables, chunk_rows=100)[0]
            assert result['result'] == 'mismatch', change
            assert result['samples'] == [{'key': {'id': key}, 'problem': 'different'}], change
        finally:
            with dst.connect(DB) as conn:
                conn.execute('DELETE FROM public.types_t WHERE id = %s', (int(key),))
                conn.execute('INSERT INTO public.types_t SELECT id, t, n, f8, f4, ts, tsn, d, iv, j, js, arr, tarr, '
                             'farr, b, u, bo, m FROM public.types_backup')
                conn.execute('DROP TABLE public.types_backup')
    assert compare_now(servers, tables)[0]['result'] == 'match'


def test_updated_row_names_key_and_chunk(servers, mut):
    _src, dst = servers
    dst.execute("UPDATE public.mut SET v = 'changed' WHERE id = 437", dbname=DB)
    result = compare_now(servers, mut, chunk_rows=100)[0]
    assert result['result'] == 'mismatch'
    assert result['chunks'] == 10
    assert result['source_rows'] == result['destination_rows'] == 1000
    assert [(c['from'], c['to']) for c in result['mismatched_chunks']] == [({'id': '401'}, {'id': '501'})]
    assert result['sample_keys'] == [{'id': '437'}]
    assert result['samples'] == [{'key': {'id': '437'}, 'problem': 'different'}]
    assert '1 of 10 chunks differ' in result['message']


def test_deleted_row_is_missing_on_destination(servers, mut):
    _src, dst = servers
    dst.execute('DELETE FROM public.mut WHERE id = 1', dbname=DB)
    result = compare_now(servers, mut, chunk_rows=100)[0]
    assert result['result'] == 'mismatch'
    assert (result['source_rows'], result['destination_rows']) == (1000, 999)
    assert [(c['from'], c['to']) for c in result['mismatched_chunks']] == [(None, {'id': '101'})]
    assert result['samples'] == [{'key': {'id': '1'}, 'problem': 'missing'}]


def test_extra_row_on_destination(servers, mut):
    _src, dst = servers
    dst.execute("INSERT INTO public.mut VALUES (5000, 'extra', 1)", dbname=DB)
    result = compare_now(servers, mut, chunk_rows=100)[0]
    assert result['result'] == 'mismatch'
    assert (result['source_rows'], result['destination_rows']) == (1000, 1001)
    assert [(c['from'], c['to']) for c in result['mismatched_chunks']] == [({'id': '901'}, None)]
    assert result['samples'] == [{'key': {'id': '5000'}, 'problem': 'extra'}]


def test_several_differences_and_sample_limit(servers, mut):
    _src, dst = servers
    dst.execute("UPDATE public.mut SET n = n + 1 WHERE id IN (5, 250, 251, 999); DELETE FROM public.mut WHERE id = 600",
                dbname=DB)
    result = compare_now(servers, mut, chunk_rows=100, sample_limit=3)[0]
    assert result['mismatched_chunk_count'] == 4
    assert [c['from'] for c in result['mismatched_chunks']] == [None, {'id': '201'}, {'id': '501'}, {'id': '901'}]
    # Samples come from the chunks in key order and stop at the limit.
    assert result['sample_keys'] == [{'id': '5'}, {'id': '250'}, {'id': '251'}]
    full = compare_now(servers, mut, chunk_rows=100)[0]
    assert full['samples'] == [{'key': {'id': '5'}, 'problem': 'different'}, {'key': {'id': '250'}, 'problem': 'different'},
                               {'key': {'id': '251'}, 'problem': 'different'}, {'key': {'id': '600'}, 'problem': 'missing'},
                               {'key': {'id': '999'}, 'problem': 'different'}]


def test_count_mode(servers, mut):
    _src, dst = servers
    dst.execute("UPDATE public.mut SET v = 'changed' WHERE id = 10", dbname=DB)
    result = compare_now(servers, mut, mode='count')[0]
    # Counting cannot see a changed value; the checksum can.
    assert result['result'] == 'match' and result['mode'] == 'count'
    assert result['source_rows'] == result['destination_rows'] == 1000
    assert compare_now(servers, mut)[0]['result'] == 'mismatch'
    dst.execute('DELETE FROM public.mut WHERE id = 10', dbname=DB)
    result = compare_now(servers, mut, mode='count')[0]
    assert result['result'] == 'mismatch'
    assert (result['source_rows'], result['destination_rows']) == (1000, 999)
    assert result['message'] == 'row counts differ: 1000 on the source, 999 on the destination'


def test_table_without_key(servers):
    src, dst = servers
    tables = source_tables(src, [('public', 'nokey')])
    assert tables[0].key_kind is None
    with dst.connect(DB) as conn:
        conn.execute("UPDATE public.nokey SET b = 'other' WHERE ctid = (SELECT min(ctid) FROM public.nokey)")
        result = compare_now(servers, tables)[0]
        assert result['result'] == 'mismatch'
        assert result['source_rows'] == result['destination_rows'] == 400
        assert result['sample_keys'] == []
        assert result['mismatched_chunks'][0]['from'] is None and result['mismatched_chunks'][0]['to'] is None
        assert 'no key' in result['message']
        # Duplicate rows count: one copy of a duplicated row missing is a difference too.
        conn.execute('TRUNCATE public.nokey')
    copy_table(src, dst, 'public', 'nokey')
    assert compare_now(servers, tables)[0]['result'] == 'match'
    dst.execute("DELETE FROM public.nokey WHERE ctid = (SELECT min(ctid) FROM public.nokey WHERE a = 1 AND b = 'v1')",
                dbname=DB)
    try:
        result = compare_now(servers, tables)[0]
        assert result['result'] == 'mismatch' and result['destination_rows'] == 399
    finally:
        dst.execute('TRUNCATE public.nokey', dbname=DB)
        copy_table(src, dst, 'public', 'nokey')


def test_large_table_many_parallel_chunks_one_row_differs(servers):
    src, dst = servers
    create = ('DROP TABLE IF EXISTS public.big; CREATE TABLE public.big (id bigint PRIMARY KEY, a text, b numeric, '
              'c timestamptz, d float8)')
    fill = ("INSERT INTO public.big SELECT g, md5(g::text), g * 1.5, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 s', "
            "g / 7.0 FROM generate_series(1, 300000) g")
    run_both(src, dst, create + '; ' + fill + '; ANALYZE public.big')
    tables = source_tables(src, [('public', 'big')])
    try:
        assert compare_now(servers, tables, chunk_rows=20000, jobs=4)[0]['result'] == 'match'
        dst.execute("UPDATE public.big SET d = d + 1e-9 WHERE id = 150001", dbname=DB)
        result = compare_now(servers, tables, chunk_rows=20000, jobs=4)[0]
        assert result['result'] == 'mismatch'
        assert result['chunks'] == 15
        assert result['source_rows'] == result['destination_rows'] == 300000
        assert [(c['from'], c['to']) for c in result['mismatched_chunks']] == [({'id': '140001'}, {'id': '160001'})]
        assert result['samples'] == [{'key': {'id': '150001'}, 'problem': 'different'}]
    finally:
        run_both(src, dst, 'DROP TABLE public.big')


def test_composite_and_text_keys(servers):
    src, dst = servers
    tables = source_tables(src, [('public', 'comp'), ('public', 'tkey')])
    with dst.connect(DB) as conn:
        conn.execute("UPDATE public.comp SET val = 'x' WHERE region = 'öst' AND n = 77")
        conn.execute("DELETE FROM public.tkey WHERE k = 'ä'")
        conn.execute("INSERT INTO public.tkey VALUES ('Ä', 1)")
    try:
        found = by_table(compare_now(servers, tables, chunk_rows=40))
        comp = found[('public', 'comp')]
        assert comp['samples'] == [{'key': {'region': 'öst', 'n': '77'}, 'problem': 'different'}]
        assert len(comp['mismatched_chunks']) == 1
        chunk = comp['mismatched_chunks'][0]
        assert chunk['from']['region'] == 'öst' and int(chunk['from']['n']) <= 77 < int(chunk['to']['n'])
        tkey = found[('public', 'tkey')]
        assert sorted(tkey['samples'], key=lambda s: s['problem']) == [
            {'key': {'k': 'Ä'}, 'problem': 'extra'}, {'key': {'k': 'ä'}, 'problem': 'missing'}]
    finally:
        for name in ('comp', 'tkey'):
            dst.execute(sql.SQL('TRUNCATE {}').format(sql.Identifier('public', name)).as_string(None), dbname=DB)
            copy_table(src, dst, 'public', name)


def test_nullable_unique_key(servers):
    src, dst = servers
    table = source_tables(src, [('public', 'nul')])[0]
    # A unique index on nullable columns used as the key: rows with NULL in it are compared in their own chunk.
    table.key_columns, table.key_kind = ['a', 'b'], 'index'
    assert compare_now(servers, [table], chunk_rows=100)[0]['result'] == 'match'
    dst.execute("UPDATE public.nul SET v = 'changed' WHERE a = 1 AND b IS NULL AND v = 'y2'; "
                "UPDATE public.nul SET v = 'changed' WHERE a = 150", dbname=DB)
    try:
        result = compare_now(servers, [table], chunk_rows=100)[0]
        assert result['result'] == 'mismatch'
        kinds = sorted((c['kind'], c['from']) for c in result['mismatched_chunks'])
        assert kinds == [('nulls', None), ('range', {'a': '101', 'b': 'k101'})]
        assert sorted(result['sample_keys'], key=str) == sorted([{'a': '1', 'b': None}, {'a': '150', 'b': 'k150'}], key=str)
    finally:
        dst.execute('TRUNCATE public.nul', dbname=DB)
        copy_table(src, dst, 'public', 'nul')


def test_quoted_names(servers):
    src, dst = servers
    tables = source_tables(src, [(QUOTED_SCHEMA, QUOTED_TABLE)])
    assert tables[0].key_columns == ['ID']
    dst.execute(sql.SQL('UPDATE {} SET {} = 0 WHERE {} = 3').format(
        sql.Identifier(QUOTED_SCHEMA, QUOTED_TABLE), sql.Identifier('naïve'), sql.Identifier('ID')).as_string(None), dbname=DB)
    try:
        result = compare_now(servers, tables, chunk_rows=100)[0]
        assert result['schema'] == QUOTED_SCHEMA and result['table'] == QUOTED_TABLE
        assert result['samples'] == [{'key': {'ID': '3'}, 'problem': 'different'}]
    finally:
        dst.execute(sql.SQL('UPDATE {} SET {} = 3.75 WHERE {} = 3').format(
            sql.Identifier(QUOTED_SCHEMA, QUOTED_TABLE), sql.Identifier('naïve'), sql.Identifier('ID')).as_string(None),
            dbname=DB)
    assert compare_now(servers, tables)[0]['result'] == 'match'


def test_key_collation_differs(servers):
    src, dst = servers
    run_both(src, dst, 'DROP TABLE IF EXISTS public.coll')
    src.execute('CREATE TABLE public.coll (k text PRIMARY KEY, v int)', dbname=DB)
    dst.execute('CREATE TABLE public.coll (k text COLLATE "C" PRIMARY KEY, v int)', dbname=DB)
    src.execute("INSERT INTO public.coll SELECT x, ord FROM unnest(ARRAY['b', 'A', 'a', 'é', 'E', '10', '9']) "
                "WITH ORDINALITY AS t(x, ord)", dbname=DB)
    copy_table(src, dst, 'public', 'coll')
    tables = source_tables(src, [('public', 'coll')])
    try:
        result = compare_now(servers, tables, chunk_rows=2)[0]
        assert result['result'] == 'match' and result['chunks'] == 1
        assert 'collation differs' in result['message']
        dst.execute("UPDATE public.coll SET v = 0 WHERE k = 'é'", dbname=DB)
        result = compare_now(servers, tables, chunk_rows=2)[0]
        assert result['samples'] == [{'key': {'k': 'é'}, 'problem': 'different'}]
    finally:
        run_both(src, dst, 'DROP TABLE public.coll')


def test_key_without_index_on_destination(servers):
    """A destination whose indexes are not built yet: one chunk instead of one full scan per key range."""
    src, dst = servers
    run_both(src, dst, 'DROP TABLE IF EXISTS public.noidx')
    src.execute('CREATE TABLE public.noidx (id int PRIMARY KEY, v text)', dbname=DB)
    dst.execute('CREATE TABLE public.noidx (id int, v text)', dbname=DB)
    src.execute("INSERT INTO public.noidx SELECT g, 'v' || g FROM generate_series(1, 500) g", dbname=DB)
    copy_table(src, dst, 'public', 'noidx')
    tables = source_tables(src, [('public', 'noidx')])
    try:
        result = compare_now(servers, tables, chunk_rows=100)[0]
        assert result['result'] == 'match' and result['chunks'] == 1 and result['source_rows'] == 500
        assert 'no btree index on the key on the destination' in result['message']
        dst.execute("UPDATE public.noidx SET v = 'x' WHERE id = 321", dbname=DB)
        result = compare_now(servers, tables, chunk_rows=100)[0]
        assert result['samples'] == [{'key': {'id': '321'}, 'problem': 'different'}]
    finally:
        run_both(src, dst, 'DROP TABLE public.noidx')


def test_workers_of_a_side_share_one_snapshot(servers):
    """Rows committed after the comparison started are invisible to every worker of that side, not just the first."""
    src, _dst = servers
    src.execute('DROP TABLE IF EXISTS public.snap; CREATE TABLE public.snap AS SELECT generate_series(1, 10) AS id',
                dbname=DB)
    side = compare._Side('source', spec_of(src), DB, 3)  # pylint: disable=protected-access
    side.start()
    try:
        assert side.snapshot
        src.execute('INSERT INTO public.snap SELECT generate_series(11, 20)', dbname=DB)
        barrier = threading.Barrier(3, timeout=60)

        def count(conn):
            barrier.wait()      # three tasks at once: one on each worker connection
            return conn.execute('SELECT count(*) FROM public.snap').fetchone()[0]

        futures = [side.submit(count) for _task in range(3)]
        assert [f.result(timeout=120) for f in futures] == [10, 10, 10]
    finally:
        side.close()
        src.execute('DROP TABLE public.snap', dbname=DB)


def test_destination_database_name(servers):
    src, dst = servers
    dst.create_database('cmp_renamed')
    dst.execute('CREATE TABLE public.mut2 (id int PRIMARY KEY, v text)', dbname='cmp_renamed')
    run_both(src, dst, 'DROP TABLE IF EXISTS public.mut2; CREATE TABLE public.mut2 (id int PRIMARY KEY, v text)')
    src.execute("INSERT INTO public.mut2 SELECT g, 'v' || g FROM generate_series(1, 30) g", dbname=DB)
    copy_table(src, dst, 'public', 'mut2', dst_dbname='cmp_renamed')
    tables = source_tables(src, [('public', 'mut2')])
    try:
        result = compare.compare_tables(spec_of(src), spec_of(dst), DB, tables, dest_dbname='cmp_renamed')[0]
        assert result['result'] == 'match' and result['database'] == DB and result['source_rows'] == 30
        # The same-named database on the destination has an empty copy: that comparison fails.
        assert compare_now(servers, tables)[0]['result'] == 'mismatch'
    finally:
        run_both(src, dst, 'DROP TABLE public.mut2')


def test_missing_table_or_column_is_an_error_for_that_table_only(servers, mut):
    src, dst = servers
    run_both(src, dst, 'DROP TABLE IF EXISTS public.gone; CREATE TABLE public.gone (id int PRIMARY KEY)')
    tables = source_tables(src, [('public', 'gone'), ('public', 'mut')])
    dst.execute('DROP TABLE public.gone', dbname=DB)
    try:
        results = compare_now(servers, tables)
        assert [r['table'] for r in results] == ['gone', 'mut']
        assert results[0]['result'] == 'error'
        assert results[0]['message'] == 'table public.gone does not exist on the destination'
        assert results[1]['result'] == 'match'
        assert compare.summarize(results) == {'tables': 2, 'match': 1, 'mismatch': 0, 'error': 1, 'rows': 1000}
        dst.execute('ALTER TABLE public.mut DROP COLUMN n', dbname=DB)
        result = compare_now(servers, mut)[0]
        assert result['result'] == 'error' and result['message'] == 'column n missing on the destination'
    finally:
        src.execute('DROP TABLE public.gone', dbname=DB)


@pytest.mark.parametrize('kwargs, message', [
    ({'mode': 'rows'}, 'mode must be one of count, checksum'),
    ({'jobs': 0}, 'jobs must be a whole number of at least 1'),
    ({'chunk_rows': 'many'}, 'chunk_rows must be a whole number'),
    ({'hash_method': 'sha1'}, 'hash_method must be one of'),
])
def test_bad_arguments(servers, kwargs, message):
    src, _dst = servers
    with pytest.raises(compare.CompareError) as info:
        compare_now(servers, source_tables(src, [('public', 'comp')]), **kwargs)
    assert message in str(info.value)


def test_unreachable_destination_raises_connection_failure(servers):
    src, _dst = servers
    from tests.harness.cluster import free_port
    bad = pgconn.ServerSpec.from_options(dict(src.spec(), port=free_port()), environ={})
    with pytest.raises(pgconn.ConnectionFailure) as info:
        compare.compare_tables(spec_of(src), bad, DB, source_tables(src, [('public', 'comp')]))
    assert info.value.kind == 'unreachable'
    assert compare_sessions_gone(src)
